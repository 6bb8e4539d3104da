"""Everything that talks to ipyparallel; knows nothing of display.

The cluster lives behind :class:`ClusterSession`; facts about it come back as
plain records (:class:`ClusterStatus`, :class:`StartReport`, ...).
"""

from __future__ import annotations

from ._errors import (
    ClusterStartError,
    InvalidRequest,
    NoCluster,
    ParacellError,
    ParacellWarning,
)
from ._session import LAUNCHERS, ClusterSession, default_session
from ._status import ClusterStatus, EngineRow, StartReport, StopReport

__all__ = [
    "LAUNCHERS",
    "ClusterSession",
    "ClusterStartError",
    "ClusterStatus",
    "EngineRow",
    "InvalidRequest",
    "NoCluster",
    "ParacellError",
    "ParacellWarning",
    "StartReport",
    "StopReport",
    "default_session",
]
