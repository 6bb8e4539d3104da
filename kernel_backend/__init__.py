"""Everything that talks to ipyparallel; knows nothing of display.

The cluster lives behind :class:`ClusterSession`; facts about it come back as
plain records (:class:`ClusterStatus`, :class:`StartReport`, ...).
"""

from __future__ import annotations

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
