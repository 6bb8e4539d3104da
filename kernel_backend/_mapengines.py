"""The engines one map runs on, as the cluster changes under it."""

from __future__ import annotations

from typing import Any

from ._pool import EnginePool

__all__ = ["MapEngines"]


class MapEngines:
    """Which of ``pool``'s engines a map sends its chunks to.

    The map starts on ``engines``.  Unless they are ``fixed`` (``--targets``),
    engines that register while it runs join it, sent ``shipment`` (the
    names its chunks need) first; an engine that died leaves it.
    """

    def __init__(
        self,
        pool: EnginePool,
        engines: list[int],
        *,
        fixed: bool,
        shipment: Any = None,
    ) -> None:
        self._pool = pool
        self._engines = engines
        self._fixed = fixed
        self._shipment = shipment

    def __len__(self) -> int:
        return len(self._engines)

    def usable(self) -> list[int]:
        """The map's live engines that may take a chunk now: not stopping
        cancelled work, and not reserved by a background job unless no other
        is left (such an engine would run chunks only after the job)."""
        live = set(self._pool.engine_ids())
        if not self._fixed:
            for eid in sorted(live):
                if eid not in self._engines:
                    self._join(eid)
                    self._engines.append(eid)
        stale = self._pool.stale_engines()
        usable = [e for e in self._engines if e in live and e not in stale]
        unreserved = set(self._pool.unreserved_engine_ids())
        return [e for e in usable if e in unreserved] or usable

    def recovering(self) -> bool:
        """Whether an engine of this map is live but still stopping cancelled
        work (it is freed or replaced within seconds: see ``_stale``)."""
        stale = self._pool.stale_engines()
        live = set(self._pool.engine_ids())
        return any(e in live and e in stale for e in self._engines)

    def died(self, eid: int) -> None:
        """``eid`` died: the map and the pool forget it."""
        if eid in self._engines:
            self._engines.remove(eid)
        self._pool.forget_engines([eid])

    def _join(self, eid: int) -> None:
        """Send an engine that joins the map the names its chunks need (no
        wait: the engine runs them before the chunks sent after)."""
        if self._shipment is not None:
            self._pool.join(eid, self._shipment)
