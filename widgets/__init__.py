"""Views of paracell's state: ipywidgets where a widget front end is there,
rich reprs and text everywhere else.

Views render what ``paracell.kernel_backend`` reports (its events and
records); the panel's buttons call the backend, never ipyparallel.  The
ipywidgets views live in modules imported only when widgets are used, so a
terminal, a script or an engine never imports ipywidgets.
"""

from __future__ import annotations

from ._frontend import use_widgets
from ._jobreprs import JobsTable, JobView
from ._progress import TextProgress, format_progress, progress_facts
from ._tables import CacheView, ClusterStatusView, html_table, text_table
from ._tasks import (
    TaskPlanView,
    task_graph_html,
    task_graph_text,
    task_timeline_html,
    task_timeline_text,
)
from ._timeline import timeline_html, timeline_text
from ._views import (
    TimelineView,
    cluster_panel,
    job_view,
    jobs_panel,
    map_observers,
    map_view,
    register_formatters,
    show_job,
    unregister_formatters,
)

__all__ = [
    "CacheView",
    "ClusterStatusView",
    "JobView",
    "JobsTable",
    "TaskPlanView",
    "TextProgress",
    "TimelineView",
    "cluster_panel",
    "format_progress",
    "html_table",
    "job_view",
    "jobs_panel",
    "map_observers",
    "map_view",
    "progress_facts",
    "register_formatters",
    "show_job",
    "task_graph_html",
    "task_graph_text",
    "task_timeline_html",
    "task_timeline_text",
    "text_table",
    "timeline_html",
    "timeline_text",
    "unregister_formatters",
    "use_widgets",
]
