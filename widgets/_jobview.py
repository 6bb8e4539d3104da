"""Background jobs as ipywidgets: one job's live view, and the jobs panel.

Imported only where a widget front end is there (see ``_frontend``).  Both
follow :class:`~paracell.kernel_backend.CellJob` events; an elapsed time
ticks on paracell's ticker thread, which only sets widget traits.
"""

from __future__ import annotations

import threading
import time
from html import escape
from typing import Any

import ipywidgets as w

from ..kernel_backend import CellJob, JobManager
from ._frontend import TICKER, PlainText
from ._jobreprs import _TAIL, JobView, badge_html, delivery_notes, names_line

__all__ = ["JobWidget", "JobsPanel"]

_MIN_INTERVAL = 0.1


class JobWidget(PlainText, w.VBox):  # type: ignore[misc]
    """A ``%%parallel`` job: state badge, engine, elapsed time, streamed
    output, the final value (rich display kept), Cancel while it runs, and
    the remote traceback if it failed."""

    def __init__(self, job: CellJob) -> None:
        self.job = job
        self.header = w.HTML()
        self.cancel_button = w.Button(
            description="Cancel",
            button_style="warning",
            tooltip="cancel this job (a running job is interrupted on its engine)",
            layout=w.Layout(width="auto"),
        )
        self.cancel_button.on_click(self._cancel)
        self.names = w.HTML()
        self.stdout = w.HTML()
        self.stderr = w.HTML()
        self.value = w.Output()
        self.error = w.HTML()
        self._shown_value = False
        self._drawn = 0.0
        self._lock = threading.Lock()
        super().__init__(
            [
                w.HBox(
                    [self.header, self.cancel_button],
                    layout=w.Layout(align_items="center"),
                ),
                self.names,
                self.stdout,
                self.stderr,
                self.value,
                self.error,
            ]
        )
        self.add_class("paracell-job")
        self._draw()
        job.subscribe(self._on_event)
        if not job.done():
            TICKER.add(self, JobWidget._tick)

    # -- events --------------------------------------------------------------

    def _on_event(self, job: CellJob) -> None:
        now = time.monotonic()
        if job.done() or now - self._drawn >= _MIN_INTERVAL:
            self._draw()

    def _tick(self) -> bool:
        self._draw()
        return not self.job.done()

    def _draw(self) -> None:
        with self._lock:
            self._drawn = time.monotonic()
            job = self.job
            done = job.done()
            engine = "" if job.engine is None else f" · engine {job.engine}"
            if job.from_cache:
                engine = " · from cache"
            with self.hold_sync():
                self.header.value = (
                    f"<b>{escape(job.name)}</b> {badge_html(job.state)}"
                    f'<span class="paracell-job-facts">{escape(engine)}'
                    f" · {job.elapsed:.1f} s</span>"
                )
                self.cancel_button.layout.display = "none" if done else ""
                self.names.value = self._names_html()
                self.stdout.value = _pre(job.stdout, "stdout")
                self.stderr.value = _pre(job.stderr, "stderr")
                remote = getattr(job.error, "remote_traceback", "")
                if job.state == "failed":
                    self.error.value = (
                        '<pre class="paracell-error" style="color:#b02a37">'
                        f"{escape(str(job.error))}\n{escape(remote)}</pre>"
                    )
            if job.state == "done" and job.bundle and not self._shown_value:
                self._shown_value = True
                # the engine computed the value's rich forms already
                self.value.outputs = (
                    {
                        "output_type": "display_data",
                        "data": dict(job.bundle),
                        "metadata": {},
                    },
                )

    def _names_html(self) -> str:
        names = names_line(self.job)
        progress = self.job.progress_line()
        lines = [line for line in (progress, names) if line]
        lines += delivery_notes(self.job)
        return "".join(f"<div>{escape(line)}</div>" for line in lines)

    def _cancel(self, _: Any = None) -> None:
        if self.job.done():
            return
        self.cancel_button.disabled = True
        self.cancel_button.description = "Cancelling…"
        self.job.cancel()
        self._draw()

    def __repr__(self) -> str:
        return JobView(self.job).text()


def _pre(text: str, cls: str) -> str:
    if not text:
        return ""
    color = "#b02a37" if cls == "stderr" else "inherit"
    return (
        f'<pre class="paracell-{cls}" style="margin:2px 0;color:{color};'
        f'max-height:16em;overflow:auto">{escape(text[-_TAIL:])}</pre>'
    )


class JobsPanel(PlainText, w.VBox):  # type: ignore[misc]
    """The ``%jobs`` table, live, with a Cancel button per running job."""

    columns = ("name", "state", "engine", "elapsed", "returns", "")

    def __init__(self, manager: JobManager) -> None:
        self.manager = manager
        self.title = w.HTML()
        self.grid = w.GridBox(
            layout=w.Layout(
                grid_template_columns="auto auto auto auto auto auto",
                grid_gap="2px 14px",
                align_items="center",
            )
        )
        self._header = [w.HTML(f"<b>{escape(c)}</b>") for c in self.columns]
        self._rows: dict[str, tuple[CellJob, list[w.Widget]]] = {}
        self._lock = threading.Lock()
        self._drawn = 0.0
        super().__init__([self.title, self.grid])
        self.add_class("paracell-jobs-panel")
        self._ticking = False
        self._unsubscribe = manager.subscribe(self._on_change)
        self._draw()
        self._tick_while_active()

    def _tick_while_active(self) -> None:
        # elapsed times tick only while a job runs: an idle panel costs nothing
        if not self._ticking and self._active():
            self._ticking = True
            TICKER.add(self, JobsPanel._tick)

    def _on_change(self) -> None:
        now = time.monotonic()
        if now - self._drawn >= _MIN_INTERVAL or not self._active():
            self._draw()
        self._tick_while_active()

    def _active(self) -> bool:
        return any(not job.done() for job in self.manager.jobs())

    def _tick(self) -> bool:
        self._draw()
        self._ticking = self._active()
        return self._ticking

    def _draw(self) -> None:
        # the manager's lock before (never inside) the panel's: the manager
        # calls observers while holding its lock
        jobs = self.manager.jobs()
        with self._lock:
            self._drawn = time.monotonic()
            running = sum(1 for j in jobs if j.state == "running")
            queued = sum(1 for j in jobs if j.state == "queued")
            summary = (
                f"{len(jobs)} job{'s' * (len(jobs) != 1)}: {running} running,"
                f" {queued} queued"
                if jobs
                else "no jobs"
            )
            cells: list[w.Widget] = list(self._header)
            seen = set()
            for job in jobs:
                seen.add(job.name)
                row = self._rows.get(job.name)
                if row is None or row[0] is not job:
                    row = (job, self._new_row(job))
                    self._rows[job.name] = row
                self._fill_row(job, row[1])
                cells += row[1]
            for name in [n for n in self._rows if n not in seen]:
                del self._rows[name]
            with self.hold_sync():
                self.title.value = (
                    f'<span class="paracell-jobs-summary">{escape(summary)}</span>'
                )
                if list(self.grid.children) != cells:
                    self.grid.children = cells

    def _new_row(self, job: CellJob) -> list[w.Widget]:
        button = w.Button(
            description="Cancel",
            button_style="warning",
            layout=w.Layout(width="auto"),
            tooltip=f"cancel job '{job.name}'",
        )

        def cancel(_: Any) -> None:
            if not job.done():
                button.disabled = True
                job.cancel()
                self._draw()

        button.on_click(cancel)
        cells = [w.HTML() for _ in range(5)]
        cells[0].add_class("paracell-job-name")
        cells[1].add_class("paracell-job-state")
        return [*cells, button]

    def _fill_row(self, job: CellJob, row: list[w.Widget]) -> None:
        values = (
            escape(job.name),
            badge_html(job.state),
            "-" if job.engine is None else str(job.engine),
            f"{job.elapsed:.1f} s",
            escape(", ".join(job.outputs) if job.pull else "(nothing)"),
        )
        for cell, value in zip(row[:5], values, strict=True):
            if cell.value != value:
                cell.value = value
        row[5].layout.visibility = "hidden" if job.done() else "visible"

    def close(self) -> None:
        self._unsubscribe()
        super().close()

    def __repr__(self) -> str:
        from ._jobreprs import JobsTable

        return repr(JobsTable(self.manager.jobs()))
