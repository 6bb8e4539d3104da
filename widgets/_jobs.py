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


class JobView:
    """A job's state, engine, elapsed time, streamed output and final value."""

    def __init__(self, job: CellJob) -> None:
        self.job = job

    def _value_bundle(self) -> dict[str, Any]:
        bundle = self.job.bundle or {}
        return bundle if self.job.state == "done" else {}

    def _notes(self) -> list[str]:
        delivery = self.job.delivery
        return delivery.notes(self.job.name) if delivery is not None else []

    def text(self) -> str:
        job = self.job
        lines = [job.summary()]
        if job.state == "done" and job.delivery is not None and job.delivery.pulled:
            lines.append("names now in the notebook: " + ", ".join(job.delivery.pulled))
        elif job.pending_names and job.state in ("queued", "running"):
            lines.append("will bring back: " + ", ".join(job.pending_names))
        for stream in (job.stdout, job.stderr):
            if stream:
                lines.append(stream[-_TAIL:].rstrip("\n"))
        value = self._value_bundle().get("text/plain")
        if value:
            lines.append(str(value))
        remote = getattr(job.error, "remote_traceback", "")
        if job.state == "failed" and remote:
            lines.append(remote.rstrip("\n"))
        lines += self._notes()
        return "\n".join(lines)

    def html(self) -> str:
        job = self.job
        color = _COLORS.get(job.state, "#6c757d")
        engine = "" if job.engine is None else f" · engine {job.engine}"
        parts = [
            f'<div class="paracell-job" data-state="{job.state}">',
            f"<b>{escape(job.name)}</b> "
            f'<span style="background:{color};color:white;border-radius:4px;'
            f'padding:0 6px">{job.state}</span>'
            f"{escape(engine)} · {job.elapsed:.1f} s",
        ]
        if job.pending_names and job.state in ("queued", "running"):
            parts.append(
                "<div>will bring back: "
                + escape(", ".join(job.pending_names))
                + "</div>"
            )
        if job.delivery is not None and job.delivery.pulled:
            parts.append(
                "<div>names now in the notebook: "
                + escape(", ".join(job.delivery.pulled))
                + "</div>"
            )
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
        parts += [f"<div>{escape(note)}</div>" for note in self._notes()]
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
