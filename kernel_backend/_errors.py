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
problem and the fix.
"""

from __future__ import annotations

__all__ = [
    "ClusterStartError",
    "InvalidRequest",
    "NoCluster",
    "ParacellError",
    "ParacellWarning",
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
