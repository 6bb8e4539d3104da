"""Exceptions raised by paracell's backend.

Hierarchy::

    ParacellError                     every error paracell raises on purpose
    ├── InvalidRequest (ValueError)   the caller asked for something impossible:
    │                                 bad option value, unknown profile, ...
    ├── NoCluster (RuntimeError)      the call needs a cluster and none is active
    └── ClusterStartError (RuntimeError)
                                      a launcher failed; the message carries the
                                      launcher's own error text

    ParacellWarning (UserWarning)     something worth one line, not an error

    EnginesDied (Exception)           engines died while names were shipped to
                                      them; the caller goes on without them

The IPython layer turns every ``ParacellError`` into a one-line ``UsageError``;
from plain Python they are ordinary exceptions with a message that names the
problem and the fix.
"""

from __future__ import annotations

__all__ = [
    "ClusterStartError",
    "EnginesDied",
    "InvalidRequest",
    "NoCluster",
    "ParacellError",
    "ParacellWarning",
    "is_engine_death",
]


class ParacellError(Exception):
    """Base class of every error paracell raises on purpose."""


class InvalidRequest(ParacellError, ValueError):
    """The request cannot be carried out as given (bad value, unknown name)."""


class NoCluster(ParacellError, RuntimeError):
    """The call needs an active cluster and there is none."""


class ClusterStartError(ParacellError, RuntimeError):
    """A cluster or some of its engines failed to start."""


class ParacellWarning(UserWarning):
    """A one-line notice from paracell."""


class EnginesDied(Exception):
    """Engines died while paracell got them ready; ``engines`` are their ids.

    Not a user error: the caller retries on the engines that are left.
    """

    def __init__(self, engines: set[int]) -> None:
        super().__init__(f"engines {sorted(engines)} died")
        self.engines = engines


def is_engine_death(err: BaseException) -> bool:
    """Whether a task failed because its engine died (not because of its code).

    ipyparallel reports it as ``EngineError`` raised here, or wrapped in a
    ``RemoteError`` when the hub reports the death.
    """
    import ipyparallel as ipp

    return isinstance(err, ipp.error.EngineError) or (
        isinstance(err, ipp.error.RemoteError) and err.ename == "EngineError"
    )
