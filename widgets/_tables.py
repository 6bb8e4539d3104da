"""Rich reprs for tables: HTML in a notebook, aligned text everywhere else.

Tables are not widgets: they are snapshots, displayed once, and must read the
same in a terminal, in nbconvert output and in a screen reader.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from html import escape
from typing import Any

from ..kernel_backend import CacheReport, ClusterStatus, format_size

__all__ = [
    "CACHE_COLUMNS",
    "ENGINE_COLUMNS",
    "CacheView",
    "ClusterStatusView",
    "engine_rows",
    "html_table",
    "text_table",
]

CACHE_COLUMNS = ("store", "entries", "size", "last used", "folder")
ENGINE_COLUMNS = ("id", "host", "pid", "state", "tasks done", "current job")


def text_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """Left-aligned columns separated by two spaces."""
    cells = [[str(h) for h in headers]] + [
        ["-" if c is None else str(c) for c in r] for r in rows
    ]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    lines = [
        "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip()
        for row in cells
    ]
    return "\n".join(lines)


def html_table(
    headers: Sequence[str], rows: Sequence[Sequence[Any]], *, padded: bool = False
) -> str:
    """A plain HTML table; every cell escaped.

    ``padded`` spaces the columns itself, for places (inside a widget) where
    the notebook's own table style does not reach.
    """
    style = ' style="padding:1px 14px 1px 0;text-align:left"' if padded else ""
    head = "".join(f"<th{style}>{escape(str(h))}</th>" for h in headers)
    body = "".join(
        "<tr>"
        + "".join(f"<td{style}>{escape('-' if c is None else str(c))}</td>" for c in r)
        + "</tr>"
        for r in rows
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def engine_rows(status: ClusterStatus) -> list[tuple[Any, ...]]:
    """One row per engine, in the order of :data:`ENGINE_COLUMNS`."""
    return [
        (e.id, e.host, e.pid, e.state, e.tasks_done, e.current) for e in status.engines
    ]


class ClusterStatusView:
    """Displays a :class:`~paracell.kernel_backend.ClusterStatus`.

    ``status`` holds the underlying record, so ``s = %cluster status`` keeps
    the facts at hand (``s.status.engines``).
    """

    def __init__(self, status: ClusterStatus) -> None:
        self.status = status

    def _rows(self) -> list[tuple[Any, ...]]:
        return engine_rows(self.status)

    def __repr__(self) -> str:
        text = self.status.summary()
        if self.status.engines:
            text += "\n" + text_table(ENGINE_COLUMNS, self._rows())
        return text

    def _repr_pretty_(self, p: Any, cycle: bool) -> None:
        p.text(repr(self))

    def _repr_html_(self) -> str:
        html = f"<p><b>cluster</b> {escape(self.status.summary())}</p>"
        if self.status.engines:
            html += html_table(ENGINE_COLUMNS, self._rows())
        return f'<div class="paracell-cluster-status">{html}</div>'


class CacheView:
    """Displays a :class:`~paracell.kernel_backend.CacheReport`: one row per
    store.  ``report`` holds the record (``c = %cache; c.report.stores``)."""

    def __init__(self, report: CacheReport) -> None:
        self.report = report

    def _rows(self) -> list[tuple[Any, ...]]:
        return [
            (
                s.name,
                f"{s.entries:,}",
                format_size(s.size),
                _when(s.last_used),
                s.folder,
            )
            for s in self.report.stores
        ]

    def __repr__(self) -> str:
        text = self.report.summary()
        if self.report.stores:
            text += "\n" + text_table(CACHE_COLUMNS, self._rows())
        return text

    def _repr_pretty_(self, p: Any, cycle: bool) -> None:
        p.text(repr(self))

    def _repr_html_(self) -> str:
        html = f"<p><b>cache</b> {escape(self.report.summary())}</p>"
        if self.report.stores:
            html += html_table(CACHE_COLUMNS, self._rows())
        return f'<div class="paracell-cache">{html}</div>'


def _when(stamp: float | None) -> str:
    if stamp is None:
        return "-"
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(stamp))
