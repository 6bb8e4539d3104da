"""One door to every view: a widget where a widget front end is there, text
otherwise.  The magics and the Python API call these and never choose.
"""

from __future__ import annotations

import contextlib
import time
import weakref
from collections.abc import Callable
from typing import Any

from ..kernel_backend import (
    CellJob,
    ClusterSession,
    JobManager,
    MapJob,
    MapProgress,
    TaskPlan,
    TaskTimeline,
    Timeline,
)
from ._frontend import in_kernel, use_widgets
from ._jobreprs import JobsTable, JobView
from ._progress import TextLines, TextProgress
from ._tables import ClusterStatusView
from ._tasks import TaskPlanView, task_timeline_html, task_timeline_text
from ._timeline import timeline_html, timeline_text

__all__ = [
    "TimelineView",
    "cluster_panel",
    "job_view",
    "jobs_panel",
    "map_observers",
    "map_view",
    "register_formatters",
    "show_job",
    "unregister_formatters",
]

_REFRESH = 0.25  # seconds between redraws of a text job view


class _DisplayedProgress:
    """Shows a map's progress widget on the first event, then feeds it.

    On the final event the display is replaced once more, so the output saved
    in the notebook carries the final state in its ``text/plain`` too.
    """

    def __init__(self, quiet: bool = False) -> None:
        self.widget: Any = None
        self._handle: Any = None
        self._quiet = quiet

    def __call__(self, event: MapProgress) -> None:
        if self.widget is None:
            from IPython.display import display

            from ._mapview import MapProgressWidget

            self.widget = MapProgressWidget(event.total, quiet=self._quiet)
            self._handle = display(self.widget, display_id=True)
        self.widget(event)
        if event.state in ("done", "failed", "cancelled") and self._handle:
            self._handle.update(self.widget)


def map_observers(
    show: bool, *, quiet: bool = False
) -> list[Callable[[MapProgress], None]]:
    """Observers for a blocking map: a widget bar, a text line, or none; the
    items' output shows below the bar (or as plain lines without one) unless
    ``quiet``."""
    if not show:
        return [] if quiet else [TextLines()]
    if use_widgets():
        return [_DisplayedProgress(quiet=quiet)]
    return [TextProgress(quiet=quiet)]


_MAP_VIEWS: weakref.WeakKeyDictionary[MapJob, Any] = weakref.WeakKeyDictionary()


def map_view(job: MapJob) -> Any:
    """The live view of ``job`` (with Cancel), or None without widgets.

    One view per job, however often the job is displayed.
    """
    if not use_widgets():
        return None
    view = _MAP_VIEWS.get(job)
    if view is None:
        from ._mapview import MapProgressWidget

        view = _MAP_VIEWS[job] = MapProgressWidget(job.total, job=job)
    return view


def job_view(job: CellJob) -> Any:
    """A live widget of a ``%%parallel`` job, or its rich-repr snapshot."""
    if use_widgets():
        from ._jobview import JobWidget

        return JobWidget(job)
    return JobView(job)


def show_job(job: CellJob) -> None:
    """Display ``job`` live in the notebook; in a terminal, print its state."""
    from IPython.display import display

    if use_widgets():
        from ._jobview import JobWidget

        widget = JobWidget(job)
        handle = display(widget, display_id=True)
        finalized = [False]

        def finalize(job: CellJob) -> None:
            # once more at the very end (names delivered, or none to come),
            # so the output saved in the notebook carries the final text
            if job.done() and not job.pending_names and not finalized[0]:
                finalized[0] = True
                handle.update(widget)

        job.subscribe(finalize)
        finalize(job)  # it may have ended before the line above
        return
    if not in_kernel():
        print(job.summary())
        return
    view = JobView(job)
    handle = display(view, display_id=True)
    last = [0.0]

    def refresh(job: CellJob) -> None:
        now = time.monotonic()
        if job.done() or now - last[0] >= _REFRESH:
            last[0] = now
            handle.update(view)

    job.subscribe(refresh)


def cluster_panel(session: ClusterSession) -> Any:
    """The cluster control panel, or (text front ends) the cluster's status."""
    if use_widgets():
        from ._panel import ClusterPanel

        return ClusterPanel(session)
    return ClusterStatusView(session.status())


def jobs_panel(manager: JobManager) -> Any:
    """The live jobs panel, or (text front ends) the ``%jobs`` table."""
    if use_widgets():
        from ._jobview import JobsPanel

        return JobsPanel(manager)
    return JobsTable(manager.jobs())


class TimelineView:
    """Displays a :class:`~paracell.kernel_backend.Timeline`: SVG or text."""

    def __init__(self, timeline: Timeline) -> None:
        self.timeline = timeline

    def _repr_html_(self) -> str:
        return timeline_html(self.timeline)

    def __repr__(self) -> str:
        return timeline_text(self.timeline)

    def _repr_pretty_(self, p: Any, cycle: bool) -> None:
        p.text(repr(self))


def _map_job_bundle(job: MapJob) -> dict[str, Any] | None:
    widget = map_view(job)
    if widget is None:
        return {"text/plain": repr(job)}
    return widget._repr_mimebundle_()  # type: ignore[no-any-return]


def _cell_job_bundle(job: CellJob) -> dict[str, Any]:
    view = job_view(job)
    return view._repr_mimebundle_()  # type: ignore[no-any-return]


def register_formatters(shell: Any) -> None:
    """Teach IPython's display how to show paracell's backend objects.

    A displayed ``MapJob`` or ``CellJob`` becomes its live view; a
    ``Timeline`` its chart.  (``kernel_backend`` knows nothing of display.)
    """
    formatter = getattr(shell, "display_formatter", None)
    if formatter is None or _registered(formatter):
        return  # asked by every cell that starts a job; once is enough
    formatter.mimebundle_formatter.for_type(MapJob, _map_job_bundle)
    formatter.mimebundle_formatter.for_type(CellJob, _cell_job_bundle)
    formatter.formatters["text/html"].for_type(Timeline, timeline_html)
    formatter.formatters["text/plain"].for_type(
        Timeline, lambda tl, p, cycle: p.text(timeline_text(tl))
    )
    formatter.formatters["text/html"].for_type(TaskTimeline, task_timeline_html)
    formatter.formatters["text/plain"].for_type(
        TaskTimeline, lambda tl, p, cycle: p.text(task_timeline_text(tl))
    )
    formatter.formatters["text/html"].for_type(
        TaskPlan, lambda plan: TaskPlanView(plan)._repr_html_()
    )
    formatter.formatters["text/plain"].for_type(
        TaskPlan, lambda plan, p, cycle: p.text(repr(TaskPlanView(plan)))
    )


def _registered(formatter: Any) -> bool:
    """Whether :func:`register_formatters` did its work on ``formatter`` (the
    first and the last type it registers are there)."""
    try:
        return (
            formatter.mimebundle_formatter.type_printers.get(MapJob) is _map_job_bundle
            and TaskPlan in formatter.formatters["text/plain"].type_printers
        )
    except (AttributeError, KeyError, TypeError):
        return False


def unregister_formatters(shell: Any) -> None:
    """Undo :func:`register_formatters` (``%unload_ext paracell``)."""
    formatter = getattr(shell, "display_formatter", None)
    if formatter is None:
        return
    for kind, cls in (
        (formatter.mimebundle_formatter, MapJob),
        (formatter.mimebundle_formatter, CellJob),
        (formatter.formatters["text/html"], Timeline),
        (formatter.formatters["text/plain"], Timeline),
        (formatter.formatters["text/html"], TaskTimeline),
        (formatter.formatters["text/plain"], TaskTimeline),
        (formatter.formatters["text/html"], TaskPlan),
        (formatter.formatters["text/plain"], TaskPlan),
    ):
        with contextlib.suppress(KeyError):
            kind.pop(cls)
