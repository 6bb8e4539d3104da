"""Task graphs drawn: the dependency graph and the Gantt chart of a run.

Static pictures (SVG inside HTML) with a text form for terminals, like the
map timeline (``_timeline``): ``%%parallel --tasks --plan`` shows the graph
and the planned schedule; ``job.timeline()`` (and ``--timeline``) a bar per
statement on its engine, the critical path marked, the plan beside it.
"""

from __future__ import annotations

import itertools
from html import escape
from typing import Any

from ..kernel_backend import TaskGraph, TaskPlan, TaskTimeline
from ._timeline import _PALETTE, _ticks

__all__ = [
    "TaskPlanView",
    "task_graph_html",
    "task_graph_text",
    "task_timeline_html",
    "task_timeline_text",
]

_CRITICAL = "#d62728"
_BOX_W, _BOX_H, _GAP_X, _GAP_Y = 210, 26, 18, 34
_WIDTH, _LANE, _LEFT = 720, 16, 70
_STATE_COLOR = {"failed": "#dc3545", "cancelled": "#9e9e9e"}


def _depths(graph: TaskGraph) -> list[int]:
    depth = [0] * len(graph)
    for j, preds in enumerate(graph.deps):
        depth[j] = 1 + max((depth[i] for i in preds), default=-1)
    return depth


def task_graph_html(graph: TaskGraph, critical: tuple[int, ...] = ()) -> str:
    """The statements as boxes in layers, an arrow per dependency."""
    depth = _depths(graph)
    layers: dict[int, list[int]] = {}
    for i, d in enumerate(depth):
        layers.setdefault(d, []).append(i)
    where: dict[int, tuple[float, float]] = {}
    for d, members in layers.items():
        for k, i in enumerate(members):
            where[i] = (10 + k * (_BOX_W + _GAP_X), 10 + d * (_BOX_H + _GAP_Y))
    width = (
        20 + max(len(m) for m in layers.values()) * (_BOX_W + _GAP_X) if layers else 40
    )
    height = 20 + len(layers) * (_BOX_H + _GAP_Y)
    on_path = set(itertools.pairwise(critical))
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}"'
        ' style="font:11px monospace">'
        '<defs><marker id="paracell-arrow" viewBox="0 0 10 10" refX="10" refY="5"'
        ' markerWidth="6" markerHeight="6" orient="auto-start-reverse">'
        '<path d="M 0 0 L 10 5 L 0 10 z" fill="#777"/></marker></defs>'
    ]
    for i, j in graph.edges():
        (x1, y1), (x2, y2) = where[i], where[j]
        color = _CRITICAL if (i, j) in on_path else "#777"
        parts.append(
            f'<line x1="{x1 + _BOX_W / 2}" y1="{y1 + _BOX_H}" x2="{x2 + _BOX_W / 2}"'
            f' y2="{y2}" stroke="{color}" marker-end="url(#paracell-arrow)"/>'
        )
    for statement in graph.statements:
        x, y = where[statement.index]
        stroke = _CRITICAL if statement.index in critical else "#555"
        label = f"{statement.lineno}: {statement.label}"
        parts.append(
            f'<g class="paracell-task"><title>{escape(statement.typed)}</title>'
            f'<rect x="{x}" y="{y}" width="{_BOX_W}" height="{_BOX_H}" rx="4"'
            f' fill="#f4f8fd" stroke="{stroke}"'
            f' stroke-width="{2 if statement.index in critical else 1}"/>'
            f'<text x="{x + 6}" y="{y + 17}">{escape(_clip(label, 30))}</text></g>'
        )
    parts.append("</svg>")
    return f'<div class="paracell-task-graph">{"".join(parts)}</div>'


def task_graph_text(graph: TaskGraph, critical: tuple[int, ...] = ()) -> str:
    """One line per statement: its line, first line, what it waits for."""
    edges = graph.edges()
    lines = [f"task graph: {len(graph)} statements, {len(edges)} dependencies"]
    for statement in graph.statements:
        preds = sorted(i for i, j in edges if j == statement.index)
        after = (
            "after " + ", ".join(f"line {graph.statements[i].lineno}" for i in preds)
            if preds
            else "starts at once"
        )
        mark = " *" if statement.index in critical else ""
        lines.append(
            f"  line {statement.lineno:>3}: {_clip(statement.label, 40):<40}"
            f"  {after}{mark}"
        )
    if critical:
        lines.append("  (* on the critical path)")
    return "\n".join(lines)


def _clip(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


def task_timeline_html(timeline: TaskTimeline) -> str:
    """Per engine, the planned bars (light) above the actual ones; the
    critical path outlined in red; each bar titled with its statement."""
    summary = f"<div>{escape(timeline.summary())}</div>"
    engines = timeline.engines
    if not engines:
        return f'<div class="paracell-task-timeline">{summary}</div>'
    scale = _WIDTH / timeline.span
    row = _LANE * 2 + 8
    rows = {e: i for i, e in enumerate(engines)}
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{_LEFT + _WIDTH + 10}"'
        f' height="{row * len(engines) + 24}" style="font:10px sans-serif">'
    ]
    for engine, r in rows.items():
        parts.append(
            f'<text x="{_LEFT - 6}" y="{r * row + row / 2 + 4}" text-anchor="end">'
            f"engine {engine}</text>"
        )
    parts += _lanes(timeline, rows, row, scale)
    unit = " s" if timeline.measured or timeline.actual else ""
    parts.append(_axis(timeline.span, row * len(engines) + 2, scale, unit))
    parts.append("</svg>")
    legend = (
        "<div style='font-size:90%'>upper lane: planned · lower lane: actual ·"
        f" <span style='color:{_CRITICAL}'>red outline</span>: critical path</div>"
    )
    return (
        f'<div class="paracell-task-timeline">{summary}{"".join(parts)}{legend}</div>'
    )


def _lanes(
    timeline: TaskTimeline, rows: dict[int, int], row: int, scale: float
) -> list[str]:
    """Each engine's bars: the planned ones above, the actual ones below."""
    bars = []
    for p in timeline.planned:
        y = rows[p.engine] * row + 2
        width = (p.end - p.start) * scale
        x = _LEFT + p.start * scale
        bars.append(_bar(timeline, p.index, x, y, width, "#cfd8e3", "planned"))
    for b in timeline.actual:
        y = rows[b.engine] * row + 4 + _LANE
        color = _STATE_COLOR.get(b.state, _PALETTE[b.index % len(_PALETTE)])
        title = f"{b.state}, {b.seconds:.3f} s from {b.start:.3f} s"
        x = _LEFT + b.start * scale
        bars.append(_bar(timeline, b.index, x, y, b.seconds * scale, color, title))
    return bars


def _bar(
    timeline: TaskTimeline,
    index: int,
    x: float,
    y: float,
    width: float,
    color: str,
    note: str,
) -> str:
    critical = index in timeline.critical
    label = f"line {timeline.lines[index]}: {timeline.labels[index]}"
    stroke = f' stroke="{_CRITICAL}" stroke-width="1.5"' if critical else ""
    text = _clip(timeline.labels[index], max(int(width / 6), 0))
    return (
        f'<g class="paracell-task-bar"><title>{escape(label)} ({escape(note)})</title>'
        f'<rect x="{x:.1f}" y="{y}" width="{max(width, 1.0):.1f}" height="{_LANE}"'
        f' fill="{color}"{stroke}/>'
        + (f'<text x="{x + 3:.1f}" y="{y + 12}">{escape(text)}</text>' if text else "")
        + "</g>"
    )


def _axis(span: float, y: float, scale: float, unit: str) -> str:
    parts = [
        f'<line x1="{_LEFT}" y1="{y}" x2="{_LEFT + _WIDTH}" y2="{y}" stroke="#999"/>'
    ]
    for tick in _ticks(span):
        x = _LEFT + tick * scale
        parts.append(
            f'<line x1="{x:.1f}" y1="{y}" x2="{x:.1f}" y2="{y + 4}" stroke="#999"/>'
            f'<text x="{x:.1f}" y="{y + 16}" text-anchor="middle">{tick:g}{unit}</text>'
        )
    return "".join(parts)


def task_timeline_text(timeline: TaskTimeline) -> str:
    """A line per statement: engine and times, actual and planned."""
    lines = [timeline.summary()]
    actual = {b.index: b for b in timeline.actual}
    planned = {p.index: p for p in timeline.planned}
    for index, label in enumerate(timeline.labels):
        parts = [f"  line {timeline.lines[index]:>3}: {_clip(label, 34):<34}"]
        if index in actual:
            b = actual[index]
            end = b.start + b.seconds
            parts.append(f" engine {b.engine} {b.start:6.2f}-{end:6.2f} s {b.state}")
        if index in planned:
            p = planned[index]
            parts.append(f" (planned: engine {p.engine} {p.start:.2f}-{p.end:.2f} s)")
        if index in timeline.critical:
            parts.append(" *")
        lines.append("".join(parts))
    lines.append("  (* on the critical path)")
    return "\n".join(lines)


class TaskPlanView:
    """``--plan``: the graph and the planned Gantt chart (HTML or text)."""

    def __init__(self, plan: TaskPlan) -> None:
        self.plan = plan

    def _repr_html_(self) -> str:
        plan = self.plan
        return (
            f"<div class='paracell-task-plan'><div>{escape(plan.summary())}</div>"
            f"{task_graph_html(plan.graph, plan.timeline.critical)}"
            f"{task_timeline_html(plan.timeline)}</div>"
        )

    def __repr__(self) -> str:
        plan = self.plan
        return "\n".join(
            [
                plan.summary(),
                task_graph_text(plan.graph, plan.timeline.critical),
                task_timeline_text(plan.timeline),
            ]
        )

    def _repr_pretty_(self, p: Any, cycle: bool) -> None:
        p.text(repr(self))
