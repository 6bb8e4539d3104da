"""Everything that talks to ipyparallel; knows nothing of display.

The cluster lives behind :class:`ClusterSession`; facts about it come back as
plain records (:class:`ClusterStatus`, :class:`StartReport`, ...).
"""

from __future__ import annotations

from ._engine import progress
from ._errors import (
    ClusterStartError,
    InvalidRequest,
    NoCluster,
    ParacellError,
    ParacellWarning,
)
from ._jobs import (
    CellJob,
    Delivery,
    EngineRun,
    JobError,
    JobManager,
    bound_names,
    default_jobs,
    run_everywhere,
)
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
from ._status import ClusterStatus, EngineRow, StartReport, StopReport

__all__ = [
    "LAUNCHERS",
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
    "Timeline",
    "bound_names",
    "default_jobs",
    "default_session",
    "map_comprehension",
    "map_function",
    "progress",
    "rng",
    "run_everywhere",
]
