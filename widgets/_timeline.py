"""A map's timeline as a Gantt chart: which engine ran which chunk when.

A static picture (SVG inside HTML), not a widget: it is drawn once after the
map, reads the same in nbconvert output, and has a text form for terminals.
Idle engines show as gaps, stragglers as the bar that ends last.
"""

from __future__ import annotations

import math
from html import escape

from ..kernel_backend import Timeline

__all__ = ["timeline_html", "timeline_text"]

_WIDTH = 720  # px of the time axis
_ROW = 22
_LEFT = 70
_PALETTE = ("#4a90d9", "#e0803a", "#4caf7a", "#b05fc4", "#d9a441", "#5fb7c4")


def _ticks(seconds: float) -> list[float]:
    """About five round tick values from 0 to ``seconds``."""
    if seconds <= 0:
        return [0.0]
    raw = seconds / 5
    step = 10 ** math.floor(math.log10(raw))
    for mult in (1, 2, 5, 10):
        if raw <= step * mult:
            step *= mult
            break
    count = int(seconds / step) + 1
    return [i * step for i in range(count)]


def _name(engine: int) -> str:
    return "local" if engine < 0 else f"engine {engine}"


def timeline_html(timeline: Timeline) -> str:
    """An SVG Gantt chart with a one-line summary above it."""
    summary = f"<div>{escape(timeline.summary())}</div>"
    if not timeline.chunks:
        return f'<div class="paracell-timeline">{summary}</div>'
    first, last = timeline.span
    total = max(last - first, 1e-9)
    engines = timeline.engines
    rows = {e: i for i, e in enumerate(engines)}
    height = _ROW * len(engines) + 24
    scale = _WIDTH / total
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{_LEFT + _WIDTH + 10}"'
        f' height="{height}" style="font:11px sans-serif">'
    ]
    for engine, row in rows.items():
        y = row * _ROW
        parts.append(
            f'<text x="{_LEFT - 6}" y="{y + 15}" text-anchor="end">'
            f"{escape(_name(engine))}</text>"
            f'<rect x="{_LEFT}" y="{y + 2}" width="{_WIDTH}" height="{_ROW - 4}"'
            ' fill="#f3f3f3"/>'
        )
    for chunk in timeline.chunks:
        y = rows[chunk.engine] * _ROW
        x = _LEFT + (chunk.started - first) * scale
        width = max(1.0, chunk.seconds * scale)
        color = _PALETTE[rows[chunk.engine] % len(_PALETTE)]
        label = (
            f"{_name(chunk.engine)}: items {chunk.first} to "
            f"{chunk.first + chunk.count - 1} ({chunk.count}),"
            f" {chunk.seconds:.3f} s from {chunk.started - first:.3f} s"
        )
        parts.append(
            f'<rect class="paracell-chunk" x="{x:.1f}" y="{y + 3}"'
            f' width="{width:.1f}" height="{_ROW - 6}" fill="{color}"'
            f' stroke="white" stroke-width="0.5"><title>{escape(label)}</title></rect>'
        )
    axis = len(engines) * _ROW + 2
    parts.append(
        f'<line x1="{_LEFT}" y1="{axis}" x2="{_LEFT + _WIDTH}" y2="{axis}"'
        ' stroke="#999"/>'
    )
    for tick in _ticks(total):
        x = _LEFT + tick * scale
        parts.append(
            f'<line x1="{x:.1f}" y1="{axis}" x2="{x:.1f}" y2="{axis + 4}"'
            ' stroke="#999"/>'
            f'<text x="{x:.1f}" y="{axis + 16}" text-anchor="middle">{tick:g} s</text>'
        )
    parts.append("</svg>")
    return f'<div class="paracell-timeline">{summary}{"".join(parts)}</div>'


def timeline_text(timeline: Timeline, width: int = 60) -> str:
    """The same chart in characters: ``#`` where an engine ran a chunk."""
    lines = [timeline.summary()]
    if not timeline.chunks:
        return lines[0]
    first, last = timeline.span
    total = max(last - first, 1e-9)
    label = max(len(_name(e)) for e in timeline.engines)
    for engine in timeline.engines:
        cells = [" "] * width
        for chunk in timeline.chunks:
            if chunk.engine != engine:
                continue
            start = int((chunk.started - first) / total * width)
            end = math.ceil((chunk.started + chunk.seconds - first) / total * width)
            for i in range(max(0, start), min(width, max(end, start + 1))):
                cells[i] = "#"
        lines.append(f"{_name(engine).rjust(label)} |{''.join(cells)}|")
    lines.append(f"{'':>{label}}  0 s{f'{total:.2f} s':>{width - 2}}")
    return "\n".join(lines)
