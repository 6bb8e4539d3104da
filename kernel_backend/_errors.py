"""Exceptions raised by paracell's backend.

Hierarchy::

    ParacellError                     every error paracell raises on purpose
    ├── InvalidRequest (ValueError)   the caller asked for something impossible:
    │                                 bad option value, unknown profile, ...
    ├── NoCluster (RuntimeError)      the call needs a cluster and none is active
    └── ClusterStartError (RuntimeError)
                                      a launcher failed; the message carries the
                                      launcher's own error text

    MapInterrupted (KeyboardInterrupt)
                                      an interrupt stopped a map being waited
                                      for; says what had finished

    ParacellWarning (UserWarning)     something worth one line, not an error

    EnginesDied (Exception)           engines died while names were shipped to
                                      them; the caller goes on without them

The IPython layer turns every ``ParacellError`` into a one-line ``UsageError``;
from plain Python they are ordinary exceptions with a message that names the
problem and the fix.  ``MapInterrupted`` is no ``ParacellError``: it is an
interrupt, and stays one.  (A map's own failures, ``MapFailed`` and
``ItemError``, live with the map in ``_mapjob``.)
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "ClusterStartError",
    "EnginesDied",
    "InvalidRequest",
    "MapInterrupted",
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


class MapInterrupted(KeyboardInterrupt):
    """An interrupt stopped a map that was being waited for.

    Still a ``KeyboardInterrupt``, so the cell ends as any interrupted cell
    does; IPython shows it as one line saying what had finished.  ``partial``
    maps item index -> result for every item that had finished.
    """

    def __init__(self, message: str, partial: dict[int, Any]) -> None:
        super().__init__(message)
        self.partial = partial

    def _render_traceback_(self) -> list[str]:
        # paracell's frames say nothing about where the user's code was
        return [f"KeyboardInterrupt: {self}"]


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
