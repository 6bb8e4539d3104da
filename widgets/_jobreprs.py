"""Views of background jobs: one job (live), and the ``%jobs`` table.

Rich reprs with a readable ``text/plain``; the IPython layer refreshes a job's
view through a display id while the job runs.
"""

from __future__ import annotations

import time
from html import escape
from typing import Any

from ..kernel_backend import CellJob
from ._tables import html_table, text_table

__all__ = ["JobView", "JobsTable"]

_COLORS = {
    "queued": "#6c757d",
    "running": "#0d6efd",
    "done": "#198754",
    "failed": "#dc3545",
    "cancelled": "#6c757d",
}
_TAIL = 4000  # characters of streamed output kept in a view


def badge_html(state: str) -> str:
    """A job's state as a coloured badge."""
    color = _COLORS.get(state, "#6c757d")
    return (
        f'<span class="paracell-badge" data-state="{escape(state)}"'
        f' style="background:{color};color:white;border-radius:4px;'
        f'padding:0 6px">{escape(state)}</span>'
    )


def names_line(job: CellJob) -> str | None:
    """The names a job will bring back, or has brought back, in words."""
    if job.pending_names and job.state in ("queued", "running"):
        return "will bring back: " + ", ".join(job.pending_names)
    if job.delivery is not None and job.delivery.pulled:
        return "names now in the notebook: " + ", ".join(job.delivery.pulled)
    return None


def delivery_notes(job: CellJob) -> list[str]:
    """What delivery has to say: names kept as the user left them, or lost."""
    delivery = job.delivery
    return delivery.notes(job.name) if delivery is not None else []


class JobView:
    """A job's state, engine, elapsed time, streamed output and final value."""

    def __init__(self, job: CellJob) -> None:
        self.job = job

    def _value_bundle(self) -> dict[str, Any]:
        bundle = self.job.bundle or {}
        return bundle if self.job.state == "done" else {}

    def text(self) -> str:
        job = self.job
        lines = [job.summary()]
        names = names_line(job)
        if names:
            lines.append(names)
        for stream in (job.stdout, job.stderr):
            if stream:
                lines.append(stream[-_TAIL:].rstrip("\n"))
        value = self._value_bundle().get("text/plain")
        if value:
            lines.append(str(value))
        remote = getattr(job.error, "remote_traceback", "")
        if job.state == "failed" and remote:
            lines.append(remote.rstrip("\n"))
        lines += delivery_notes(job)
        return "\n".join(lines)

    def html(self) -> str:
        job = self.job
        engine = "" if job.engine is None else f" · engine {job.engine}"
        parts = [
            f'<div class="paracell-job" data-state="{job.state}">',
            f"<b>{escape(job.name)}</b> {badge_html(job.state)}"
            f"{escape(engine)} · {job.elapsed:.1f} s",
        ]
        for line in (job.progress_line(), names_line(job)):
            if line:
                parts.append(f"<div>{escape(line)}</div>")
        for stream, cls in ((job.stdout, "stdout"), (job.stderr, "stderr")):
            if stream:
                parts.append(
                    f'<pre class="paracell-{cls}">{escape(stream[-_TAIL:])}</pre>'
                )
        bundle = self._value_bundle()
        if "text/html" in bundle:
            parts.append(f'<div class="paracell-value">{bundle["text/html"]}</div>')
        elif "text/plain" in bundle:
            parts.append(
                f'<pre class="paracell-value">{escape(str(bundle["text/plain"]))}</pre>'
            )
        remote = getattr(job.error, "remote_traceback", "")
        if job.state == "failed":
            parts.append(
                f'<pre class="paracell-error">{escape(str(job.error))}\n'
                f"{escape(remote)}</pre>"
            )
        parts += [f"<div>{escape(note)}</div>" for note in delivery_notes(job)]
        parts.append("</div>")
        return "".join(parts)

    def _repr_mimebundle_(self, **kwargs: Any) -> dict[str, Any]:
        bundle = {"text/plain": self.text(), "text/html": self.html()}
        # keep the value's other rich forms (images, JSON, ...) too
        for mime, data in self._value_bundle().items():
            bundle.setdefault(mime, data)
        return bundle

    def __repr__(self) -> str:
        return self.text()


class JobsTable:
    """The ``%jobs`` table: name, state, engine, priority, times, names."""

    columns = ("name", "state", "engine", "priority", "submitted", "elapsed", "returns")

    def __init__(self, jobs: list[CellJob]) -> None:
        self.jobs = jobs

    def _rows(self) -> list[tuple[Any, ...]]:
        return [
            (
                job.name,
                job.state,
                job.engine,
                f"{job.priority:g}",
                time.strftime("%H:%M:%S", time.localtime(job.submitted)),
                f"{job.elapsed:.1f} s",
                ", ".join(job.outputs) if job.pull else "(nothing)",
            )
            for job in self.jobs
        ]

    def __repr__(self) -> str:
        if not self.jobs:
            return "no jobs"
        return text_table(self.columns, self._rows())

    def _repr_pretty_(self, p: Any, cycle: bool) -> None:
        p.text(repr(self))

    def _repr_html_(self) -> str:
        if not self.jobs:
            return "<p>no jobs</p>"
        return html_table(self.columns, self._rows())
