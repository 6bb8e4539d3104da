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

The IPython layer turns every ``ParacellError`` into a one-line ``UsageError``;
from plain Python they are ordinary exceptions with a message that names the
problem and the fix.  A map stopped by an interrupt raises a plain
``KeyboardInterrupt`` made by :func:`map_interrupted`: an interrupt, and
nothing else, that says what had finished.  (A map's own failures,
``MapFailed`` and ``ItemError``, live with the map in ``_mapjob``.)
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "ClusterStartError",
    "InvalidRequest",
    "NoCluster",
    "ParacellError",
    "ParacellWarning",
    "map_interrupted",
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


def map_interrupted(message: str, partial: dict[int, Any]) -> KeyboardInterrupt:
    """The ``KeyboardInterrupt`` of a map stopped while it was waited for.

    A plain ``KeyboardInterrupt``, not a subclass: ``except
    KeyboardInterrupt``, the kernel and front ends (whose error reply names
    the type) all see an interrupt.  It carries ``partial`` (item index ->
    result of every item that had finished), and IPython shows it as the one
    line ``KeyboardInterrupt: <message>`` through the ``_render_traceback_``
    it finds on the instance, instead of paracell's frames.
    """
    error = KeyboardInterrupt(message)
    error.partial = partial  # type: ignore[attr-defined]
    line = f"KeyboardInterrupt: {message}"
    error._render_traceback_ = lambda: [line]  # type: ignore[attr-defined]
    return error
