"""Everything that talks to ipyparallel; knows nothing of display.

The cluster lives behind :class:`ClusterSession`; facts about it come back as
plain records (:class:`ClusterStatus`, :class:`StartReport`, ...).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ._lazy import names_on_first_use

if TYPE_CHECKING:
    from ._cachedmap import (
        CacheReport,
        cache_info,
        clear_cache,
        set_cache_dir,
        set_cache_limit,
    )
    from ._engine import progress
    from ._errors import (
        ClusterStartError,
        InvalidRequest,
        NoCluster,
        ParacellError,
        ParacellWarning,
    )
    from ._everywhere import EngineRun, run_everywhere
    from ._jobs import (
        CellJob,
        Delivery,
        JobError,
        JobManager,
        bound_names,
        default_jobs,
    )
    from ._launchers import LauncherOptions, accepted_options
    from ._mapjob import (
        ChunkRecord,
        ItemError,
        MapFailed,
        MapJob,
        MapOptions,
        MapProgress,
        RemoteItemError,
        Timeline,
    )
    from ._maps import map_comprehension, map_function
    from ._seeding import rng
    from ._session import LAUNCHERS, ClusterSession, default_session
    from ._sizes import format_size
    from ._status import ClusterStatus, EngineRow, StartReport, StopReport
    from ._storeupkeep import StoreInfo
    from ._taskgraph import TaskGraph, analyze_cell
    from ._taskjob import TaskJob, plan_tasks, submit_tasks
    from ._taskplan import TaskPlan, TaskTimeline

# Names are imported on first use (PEP 562), not with the package: an engine
# imports paracell's engine modules, and ``import paracell.kernel_backend.X``
# runs this file first; importing every module here cost each engine 0.2 s.
_WHERE = {
    "accepted_options": "._launchers",
    "analyze_cell": "._taskgraph",
    "bound_names": "._jobs",
    "cache_info": "._cachedmap",
    "CacheReport": "._cachedmap",
    "CellJob": "._jobs",
    "ChunkRecord": "._mapjob",
    "clear_cache": "._cachedmap",
    "ClusterSession": "._session",
    "ClusterStartError": "._errors",
    "ClusterStatus": "._status",
    "default_jobs": "._jobs",
    "default_session": "._session",
    "Delivery": "._jobs",
    "EngineRow": "._status",
    "EngineRun": "._everywhere",
    "format_size": "._sizes",
    "InvalidRequest": "._errors",
    "ItemError": "._mapjob",
    "JobError": "._jobs",
    "JobManager": "._jobs",
    "LauncherOptions": "._launchers",
    "LAUNCHERS": "._session",
    "map_comprehension": "._maps",
    "map_function": "._maps",
    "MapFailed": "._mapjob",
    "MapJob": "._mapjob",
    "MapOptions": "._mapjob",
    "MapProgress": "._mapjob",
    "NoCluster": "._errors",
    "ParacellError": "._errors",
    "ParacellWarning": "._errors",
    "plan_tasks": "._taskjob",
    "progress": "._engine",
    "RemoteItemError": "._mapjob",
    "rng": "._seeding",
    "run_everywhere": "._everywhere",
    "set_cache_dir": "._cachedmap",
    "set_cache_limit": "._cachedmap",
    "StartReport": "._status",
    "StopReport": "._status",
    "StoreInfo": "._storeupkeep",
    "submit_tasks": "._taskjob",
    "TaskGraph": "._taskgraph",
    "TaskJob": "._taskjob",
    "TaskPlan": "._taskplan",
    "TaskTimeline": "._taskplan",
    "Timeline": "._mapjob",
}


__getattr__ = names_on_first_use(__name__, _WHERE, globals())


def __dir__() -> list[str]:
    return sorted(__all__)


__all__ = [
    "LAUNCHERS",
    "CacheReport",
    "CellJob",
    "ChunkRecord",
    "ClusterSession",
    "ClusterStartError",
    "ClusterStatus",
    "Delivery",
    "EngineRow",
    "EngineRun",
    "InvalidRequest",
    "ItemError",
    "JobError",
    "JobManager",
    "LauncherOptions",
    "MapFailed",
    "MapJob",
    "MapOptions",
    "MapProgress",
    "NoCluster",
    "ParacellError",
    "ParacellWarning",
    "RemoteItemError",
    "StartReport",
    "StopReport",
    "StoreInfo",
    "TaskGraph",
    "TaskJob",
    "TaskPlan",
    "TaskTimeline",
    "Timeline",
    "accepted_options",
    "analyze_cell",
    "bound_names",
    "cache_info",
    "clear_cache",
    "default_jobs",
    "default_session",
    "format_size",
    "map_comprehension",
    "map_function",
    "plan_tasks",
    "progress",
    "rng",
    "run_everywhere",
    "set_cache_dir",
    "set_cache_limit",
    "submit_tasks",
]
