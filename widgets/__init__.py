"""Views of paracell's state: rich reprs and (later) ipywidgets.

Renders what ``paracell.kernel_backend`` reports; never talks to the cluster.
"""

from __future__ import annotations

from ._jobs import JobsTable, JobView
from ._progress import TextProgress, format_progress
from ._tables import ClusterStatusView, html_table, text_table

__all__ = [
    "ClusterStatusView",
    "JobView",
    "JobsTable",
    "TextProgress",
    "format_progress",
    "html_table",
    "text_table",
]
