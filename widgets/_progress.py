"""Progress of a map as text: one line, redrawn in place (tqdm-style).

Works in a terminal and in a notebook's output area alike (both honour the
carriage return); updates are throttled, and the last state stays on screen.
"""

from __future__ import annotations

import sys
import time
from typing import TextIO

from ..kernel_backend import MapProgress

__all__ = ["TextProgress", "format_progress", "progress_facts"]

_BAR = 20


def progress_facts(event: MapProgress) -> list[str]:
    """``done/total``, rate, elapsed, ETA, failures and how many results came
    from the result store, as short phrases."""
    done, total = event.done, event.total
    shown = done + event.partial
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
        shown = event.done + event.partial
        filled = int(_BAR * min(1.0, shown / event.total))
        bar.append("[" + "#" * filled + "." * (_BAR - filled) + "]")
    return "pmap: " + " ".join(bar + progress_facts(event))


class TextProgress:
    """Observer that draws :class:`MapProgress` events on a text stream."""

    def __init__(self, stream: TextIO | None = None, min_interval: float = 0.1) -> None:
        self._stream = stream
        self._min_interval = min_interval
        self._last = 0.0
        self._width = 0
        self.lines_drawn = 0

    def __call__(self, event: MapProgress) -> None:
        final = event.state in ("done", "failed", "cancelled")
        now = time.monotonic()
        if not final and now - self._last < self._min_interval:
            return
        self._last = now
        stream = self._stream or sys.stdout
        line = format_progress(event)
        pad = " " * max(0, self._width - len(line))
        self._width = len(line)
        stream.write("\r" + line + pad + ("\n" if final else ""))
        stream.flush()
        self.lines_drawn += 1
