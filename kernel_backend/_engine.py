"""Code that runs on the engines.

Engines import this module by name (functions sent with ``apply`` travel by
reference), so it must stay importable without IPython display machinery and
cheap to import.
"""

from __future__ import annotations

import os
import socket

__all__ = ["engine_identity"]


def engine_identity() -> tuple[str, int]:
    """Return ``(hostname, pid)`` of the engine this runs on."""
    return socket.gethostname(), os.getpid()
