"""How many engines a launcher can place: refuse absurd counts before launching.

A typo such as ``%cluster scale 99999999999999999999`` must not start
engines until the machine falls over.  Counts past what the launcher can
place are refused with one line naming the limit; ``force=True`` (``--force``)
insists, up to :data:`ABSOLUTE_MAX`, which nothing can mean.  Local engines
given ``--mem-per-engine`` are as many as the available memory holds
(:func:`capped_by_memory`).
"""

from __future__ import annotations

import os

import psutil

from ._errors import InvalidRequest
from ._sizes import parse_size

__all__ = [
    "ABSOLUTE_MAX",
    "capped_by_memory",
    "check_engine_count",
    "engine_limit",
    "memory_bytes",
]

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


def memory_bytes(text: str) -> int:
    """``500MB``, ``4G``, ``2GiB`` -> bytes (K, M, G, T are powers of 1024)."""
    return parse_size(text, binary=True, what="an amount of memory", example="500M")


def capped_by_memory(n: int, per_engine: str, explicit: bool) -> tuple[int, str | None]:
    """At most as many engines as available memory holds, ``per_engine`` each.

    Returns the count and, when it capped, the sentence that says so.
    """
    need = memory_bytes(per_engine)
    available = int(psutil.virtual_memory().available)
    fits = available // max(1, need)
    gib = available / 1024**3
    if fits < 1:
        raise InvalidRequest(
            f"not enough memory for one engine of {per_engine}"
            f" ({gib:.1f} GiB available)"
        )
    if n <= fits:
        return n, None
    asked = f"-n {n}" if explicit else f"one per CPU: {n}"
    return fits, (
        f"capped at {fits} engine{'' if fits == 1 else 's'} ({asked}):"
        f" {gib:.1f} GiB available, {per_engine.strip()} each"
    )
