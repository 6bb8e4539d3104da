"""The Python twins of the magics: the same operations, for scripts and tests.

One module per magic family (``_cluster_api``, ``_map_api``, ``_jobs_api``,
``_cache_api``); the magics call these, so a magic and its twin take one path.
"""

from __future__ import annotations

from ._cache_api import cache_dir, cache_info, cache_limit, clear_cache
from ._cluster_api import connect, panel, restart, scale, start, status, stop
from ._jobs_api import cancel, clear_jobs, jobs, jobs_panel, parallel, wait
from ._map_api import pmap, pmap_comprehension, start_pmap

__all__ = [
    "cache_dir",
    "cache_info",
    "cache_limit",
    "cancel",
    "clear_cache",
    "clear_jobs",
    "connect",
    "jobs",
    "jobs_panel",
    "panel",
    "parallel",
    "pmap",
    "pmap_comprehension",
    "restart",
    "scale",
    "start",
    "start_pmap",
    "status",
    "stop",
    "wait",
]
