"""A map's progress as an ipywidget: bar, counts, rate, ETA, engines, Cancel.

Imported only where a widget front end is there (see ``_frontend``).  The
widget is an observer of :class:`~paracell.kernel_backend.MapProgress`
events; its ``text/plain`` is the map's state in words.
"""

from __future__ import annotations

import concurrent.futures
import time
from dataclasses import replace
from html import escape
from typing import Any

import ipywidgets as w

from ..kernel_backend import MapJob, MapProgress
from ._frontend import PlainText
from ._progress import LineBudget, progress_facts

__all__ = ["MapProgressWidget"]

_MIN_INTERVAL = 0.1  # at most ~10 redraws a second
_STYLES = {"done": "success", "failed": "danger", "cancelled": "danger"}


def _bar_style(event: MapProgress) -> str:
    if event.state == "done" and event.failed:
        return "danger"
    return _STYLES.get(event.state, "info")


def engines_html(per_engine: dict[int, int]) -> str:
    """Items done per engine, each with a small bar of its share."""
    if not per_engine:
        return ""
    most = max(per_engine.values()) or 1
    cells = []
    for eid, count in sorted(per_engine.items()):
        width = max(1, round(40 * count / most))
        name = "local" if eid < 0 else f"engine {eid}"
        cells.append(
            f'<span class="paracell-engine" title="{escape(name)}: {count} items"'
            ' style="display:inline-block;margin-right:10px">'
            f"{escape(name)} "
            f'<span style="display:inline-block;width:{width}px;height:8px;'
            'background:#4a90d9;vertical-align:middle"></span>'
            f" {count}</span>"
        )
    return '<div style="font-size:85%;color:#555">' + "".join(cells) + "</div>"


def output_html(warnings: tuple[str, ...], budget: LineBudget, *, final: bool) -> str:
    """The items' warnings and printed lines, in a fold that starts open."""
    shown = len(budget.shown) + budget.hidden
    parts = [
        f'<div class="paracell-warning" style="color:#8a6d3b">{escape(text)}</div>'
        for text in warnings
    ]
    if budget.shown:
        note = budget.note() if final else ""
        body = "\n".join(budget.shown) + ("\n" + note if note else "")
        parts.append(
            '<pre style="max-height:16em;overflow:auto;margin:2px 0;'
            f'font-size:85%">{escape(body)}</pre>'
        )
    label = f"output: {shown:,} line{'s' * (shown != 1)}"
    if warnings:
        label += f", {len(warnings)} warning{'s' * (len(warnings) != 1)}"
    return f"<details open><summary>{escape(label)}</summary>{''.join(parts)}</details>"


class MapProgressWidget(PlainText, w.VBox):  # type: ignore[misc]
    """Live progress of one map.

    Call it with each :class:`MapProgress` (it is an observer).  With a
    ``job``, it follows that job and offers a Cancel button while it runs;
    without one it is fed by whoever owns it (a blocking ``%pmap``).
    """

    def __init__(
        self, total: int | None = None, job: MapJob | None = None, quiet: bool = False
    ) -> None:
        self.title = w.HTML("<b>pmap</b>")
        self.bar = w.FloatProgress(
            value=0.0,
            min=0.0,
            max=float(total or 1),
            bar_style="info",
            layout=w.Layout(width="280px"),
        )
        # counts, rate, times and the per-engine row in one widget: one
        # message per redraw for all the text
        self.label = w.HTML("")
        self.cancel_button = w.Button(
            description="Cancel",
            button_style="warning",
            tooltip="cancel this map: queued chunks are dropped,"
            " running ones interrupted",
            layout=w.Layout(width="auto", display="" if job else "none"),
        )
        self.cancel_button.on_click(self._cancel)
        row = w.HBox(
            [self.title, self.bar, self.label, self.cancel_button],
            layout=w.Layout(align_items="center"),
        )
        # what the items print and warn, below the bar, folded by the reader
        self.output = w.HTML("", layout=w.Layout(display="none"))
        self.output.add_class("paracell-map-output")
        super().__init__([row, self.output])
        self.add_class("paracell-map")
        self.job = job
        self.quiet = quiet
        self.event = MapProgress("queued", 0, 0, total, 0.0, {})
        self._budget = LineBudget()
        self._warnings: tuple[str, ...] = ()
        self._output_changed = False
        self._drawn = 0.0
        self.draws = 0
        if job is not None:
            # subscribe first: an event between the two lines is not lost
            job.subscribe(self)
            self(job.progress, force=True)
            job.add_done_callback(self._ended)

    def __call__(self, event: MapProgress, force: bool = False) -> None:
        self.event = event
        if not self.quiet and (event.lines or event.warnings):
            # taken from every event, drawn or not
            self._budget.take(event.lines)
            self._warnings = event.warnings or self._warnings
            self._output_changed = True
        final = event.state in ("done", "failed", "cancelled")
        now = time.monotonic()
        if not (final or force) and now - self._drawn < _MIN_INTERVAL:
            return
        self._drawn = now
        self._draw(event, final)

    def _draw(self, event: MapProgress, final: bool) -> None:
        with self.hold_sync():
            total = event.total
            if total:
                self.bar.max = float(total)
                self.bar.value = float(min(total, event.done + event.running_fraction))
            else:
                self.bar.max = float(event.done + 1)
                self.bar.value = float(event.done)
            self.bar.bar_style = _bar_style(event)
            self.label.value = (
                '<span class="paracell-progress-text">'
                + escape(" · ".join(progress_facts(event)))
                + "</span>"
                + engines_html(event.per_engine)
            )
            if final:
                self.cancel_button.layout.display = "none"
            if self._output_changed or (final and self._budget.hidden):
                self._output_changed = False
                self.output.value = output_html(
                    self._warnings, self._budget, final=final
                )
                self.output.layout.display = ""
        self.draws += 1

    def _ended(self, job: concurrent.futures.Future[Any]) -> None:
        # also when the map ended without a final event (it never started)
        self.cancel_button.layout.display = "none"
        if job.cancelled() and self.event.state not in ("failed", "cancelled"):
            self(replace(self.event, state="cancelled"), force=True)

    def _cancel(self, _: Any = None) -> None:
        job = self.job
        if job is None or job.done():
            return
        self.cancel_button.disabled = True
        self.cancel_button.description = "Cancelling…"
        job.cancel()  # the map's thread sends the final "cancelled" event

    def __repr__(self) -> str:
        return self.event.summary()
