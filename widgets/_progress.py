"""Progress of a map as text: one line, redrawn in place (tqdm-style).

Works in a terminal and in a notebook's output area alike (both honour the
carriage return); updates are throttled, and the last state stays on screen.
"""

from __future__ import annotations

import sys
import time
from dataclasses import replace
from typing import TextIO

from ..kernel_backend import MapProgress

__all__ = [
    "LineBudget",
    "TextLines",
    "TextProgress",
    "format_progress",
    "progress_facts",
]

_BAR = 20

#: Lines of item output a view shows per map; ``job.output()`` has them all.
SHOWN_LINES = 200


class LineBudget:
    """The first ``limit`` lines of a map's output, and a count of the rest."""

    def __init__(self, limit: int = SHOWN_LINES) -> None:
        self.limit = limit
        self.shown: list[str] = []
        self.hidden = 0

    def take(self, lines: tuple[str, ...]) -> list[str]:
        """Keep what fits; returns the lines newly shown."""
        room = max(0, self.limit - len(self.shown))
        fresh = list(lines[:room])
        self.shown += fresh
        self.hidden += len(lines) - len(fresh)
        return fresh

    def note(self) -> str:
        """``… 4,812 more lines; job.output() has them all``, or ""."""
        if not self.hidden:
            return ""
        return f"… {self.hidden:,} more lines; job.output() has them all"


class TextLines:
    """Observer that prints a map's output lines and warnings as plain text
    (for maps shown without a progress bar)."""

    def __init__(self, stream: TextIO | None = None) -> None:
        self._stream = stream
        self._budget = LineBudget()
        self._warned: dict[str, str] = {}

    def __call__(self, event: MapProgress) -> None:
        stream = self._stream or sys.stdout
        text = lines_to_print(event, self._budget, self._warned)
        if text:
            stream.write(text)
            stream.flush()


def lines_to_print(
    event: MapProgress, budget: LineBudget, warned: dict[str, str]
) -> str:
    """The new output lines (within the budget), each warning when first
    seen (and again at the map's end if more items raised it since), and at
    the end the count of lines not shown."""
    out = budget.take(event.lines)
    final = event.state != "running"
    for summary in event.warnings:
        key = summary.rsplit(" (", 1)[0]
        before = warned.get(key)
        if before is None or (final and before != summary):
            warned[key] = summary
            out.append(summary)
    if final and budget.note():
        out.append(budget.note())
        budget.hidden = 0
    return "".join(line + "\n" for line in out)


def progress_facts(event: MapProgress) -> list[str]:
    """``done/total``, rate, elapsed, ETA, failures and how many results came
    from the result store, as short phrases."""
    done, total = event.done, event.total
    shown = done + event.running_fraction
    parts = [f"{done}/{total}" if total else f"{done} done"]
    parts.append(f"{event.rate:.1f} items/s")
    parts.append(f"{event.elapsed:.1f} s")
    computed = shown - event.cached  # results from the store took no time
    if total and event.state == "running" and computed > 0 and shown < total:
        eta = event.elapsed * (total - shown) / computed
        parts.append(f"ETA {eta:.1f} s")
    if event.failed:
        parts.append(f"{event.failed} failed")
    if event.cached:
        parts.append(f"{event.cached:,} from cache")
    if event.state in ("failed", "cancelled"):
        parts.append(event.state.upper())
    return parts


def format_progress(event: MapProgress) -> str:
    """One line: bar, ``done/total``, rate, elapsed, ETA, failures."""
    bar = []
    if event.total:
        shown = event.done + event.running_fraction
        filled = int(_BAR * min(1.0, shown / event.total))
        bar.append("[" + "#" * filled + "." * (_BAR - filled) + "]")
    return "pmap: " + " ".join(bar + progress_facts(event))


class TextProgress:
    """Observer that draws :class:`MapProgress` events on a text stream."""

    def __init__(
        self,
        stream: TextIO | None = None,
        min_interval: float = 0.1,
        *,
        quiet: bool = False,
    ) -> None:
        self._stream = stream
        self._quiet = quiet
        self._min_interval = min_interval
        self._last = 0.0
        self._width = 0
        self.lines_drawn = 0
        self._budget = LineBudget()
        self._warned: dict[str, str] = {}
        self._pending: list[str] = []  # lines of events not drawn (throttled)
        self._pending_warnings: tuple[str, ...] = ()

    def __call__(self, event: MapProgress) -> None:
        final = event.state in ("done", "failed", "cancelled")
        now = time.monotonic()
        self._pending += event.lines
        self._pending_warnings = event.warnings or self._pending_warnings
        if not final and now - self._last < self._min_interval:
            return
        event = replace(
            event, lines=tuple(self._pending), warnings=self._pending_warnings
        )
        self._pending, self._pending_warnings = [], ()
        self._last = now
        stream = self._stream or sys.stdout
        printed = (
            "" if self._quiet else lines_to_print(event, self._budget, self._warned)
        )
        if printed:
            # the item's lines above the bar: clear it, print, draw it again
            stream.write("\r" + " " * self._width + "\r" + printed)
        line = format_progress(event)
        pad = " " * max(0, self._width - len(line))
        self._width = len(line)
        stream.write("\r" + line + pad + ("\n" if final else ""))
        stream.flush()
        self.lines_drawn += 1
