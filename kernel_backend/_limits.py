"""How many engines a launcher can place: refuse absurd counts before launching.

A typo such as ``%cluster scale 99999999999999999999`` must not start
engines until the machine falls over.  Counts past what the launcher can
place are refused with one line naming the limit; ``force=True`` (``--force``)
insists, up to :data:`ABSOLUTE_MAX`, which nothing can mean.
"""

from __future__ import annotations

import os

import psutil

from ._errors import InvalidRequest

__all__ = ["ABSOLUTE_MAX", "check_engine_count", "engine_limit"]

#: Local engines per core before more only compete for the same cores.
_PER_CORE = 4
#: What an idle engine costs in memory, with room for a little work.
_ENGINE_BYTES = 150 * 2**20
#: No launcher places more engines than this in one request.
_BATCH_MAX = 4096
#: Not even ``--force`` asks for more.
ABSOLUTE_MAX = 100_000


def engine_limit(launcher: str) -> tuple[int, str]:
    """The most engines ``launcher`` may have, and why, in words."""
    if launcher != "local":
        return _BATCH_MAX, f"{_BATCH_MAX} per request for the {launcher} launcher"
    cores = os.cpu_count() or 1
    by_cores = max(8, _PER_CORE * cores)
    available = psutil.virtual_memory().available
    by_memory = max(1, available // _ENGINE_BYTES)
    if by_memory < by_cores:
        free = available / 2**30
        return int(by_memory), f"{free:.1f} GiB of memory free for local engines"
    return by_cores, f"{_PER_CORE} local engines per core on {cores} cores"


def check_engine_count(n: int, launcher: str, *, force: bool = False) -> None:
    """Raise ``InvalidRequest`` if ``n`` engines are more than can be placed."""
    if n > ABSOLUTE_MAX:
        raise InvalidRequest(
            f"{n} engines is more than any cluster paracell starts"
            f" (at most {ABSOLUTE_MAX:,})"
        )
    if force:
        return
    limit, why = engine_limit(launcher)
    if n > limit:
        raise InvalidRequest(
            f"{n} engines is more than this cluster can place (at most {limit}:"
            f" {why}); use --force (force=True) to start them anyway"
        )
