"""What the session knows of each engine, and what each engine is doing.

:class:`EngineLedger` keeps one :class:`EngineRecord` per engine seen
registered (host, pid, clock, tasks done; its row in the status), the
engines being removed, the engines running a background job (reservations)
or a map, and cancelled work still running (:class:`~._stale.StaleWork`).
It talks to no engine: the client adapter (:mod:`._ippclient`) fills the
records in, the session and the schedulers read them.
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import psutil

from ._clock import ClockOffset
from ._stale import StaleWork
from ._status import EngineRow, EngineState

__all__ = ["EngineLedger", "EngineRecord"]

_HOSTNAME = socket.gethostname()


@dataclass
class EngineRecord:
    """What the session remembers of an engine it has seen registered."""

    host: str | None = None
    pid: int | None = None
    probes: int = 0
    tasks_done: int = 0
    pending_probe: Any = None
    clock: ClockOffset | None = None  # its clock against the kernel's


class EngineLedger:
    """Per engine: its record, whether it is being removed, its work.

    ``lock`` is the session's: records and stale work change under it.  The
    maps' bookkeeping has a lock of its own, never held while waiting on
    anything (maps end in callbacks of ipyparallel's threads).
    """

    def __init__(self, lock: threading.RLock) -> None:
        self.lock = lock
        self.records: dict[int, EngineRecord] = {}
        self.removed: set[int] = set()  # being (or been) removed: not for work
        self.stale = StaleWork()
        #: engines are processes on this machine that paracell started: their
        #: liveness is asked of the process table, not the heartbeat
        self.watch_processes = False
        self._reserved: dict[int, str] = {}  # engine -> background job's name
        self._mapping: dict[int, int] = {}  # engine -> maps using it
        self._books = threading.Lock()

    # -- records -------------------------------------------------------------

    def record(self, engine: int) -> EngineRecord:
        """``engine``'s record (a blank one for an engine not seen before)."""
        return self.records.setdefault(engine, EngineRecord())

    def available(self, ids: Iterable[int]) -> list[int]:
        """Those of ``ids`` not being removed."""
        removed = self.removed
        return [eid for eid in ids if eid not in removed]

    def unknown(self, ids: Iterable[int]) -> list[int]:
        """Those of ``ids`` not probed yet (no record)."""
        return [eid for eid in ids if eid not in self.records]

    def host(self, engine: int) -> str | None:
        """The host ``engine`` runs on, once its first answer said so."""
        rec = self.records.get(engine)
        return rec.host if rec is not None else None

    def is_local(self, engine: int) -> bool:
        """Whether ``engine`` runs on this machine (it said so when probed;
        an engine not probed yet counts as remote)."""
        rec = self.records.get(engine)
        return rec is not None and rec.host is not None and rec.host == _HOSTNAME

    def clock_offset(self, engine: int) -> ClockOffset | None:
        """How far ``engine``'s clock runs ahead of the kernel's, if measured."""
        rec = self.records.get(engine)
        return None if rec is None else rec.clock

    def pids(self) -> dict[int, int]:
        """Engine id -> pid for every engine whose pid is known."""
        with self.lock:
            return {
                eid: rec.pid
                for eid, rec in self.records.items()
                if rec.pid is not None and eid not in self.removed
            }

    def pids_here(self, ids: Iterable[int]) -> list[int]:
        """The pids of those of ``ids`` that run on this host (an engine's
        pid means a process here only then)."""
        here = socket.gethostname()
        return [
            rec.pid
            for e in ids
            if (rec := self.records.get(e)) and rec.pid and rec.host == here
        ]

    def alive(self, rec: EngineRecord) -> bool:
        """For engines started here, ask the process table, not the heartbeat."""
        if not self.watch_processes or not rec.pid:
            return True
        try:
            return bool(psutil.Process(rec.pid).status() != psutil.STATUS_ZOMBIE)
        except psutil.NoSuchProcess:
            return False

    def forget_dead(self, registered: Iterable[int]) -> None:
        """Count engines no longer ``registered``, or dead, as removed."""
        ids = set(registered)
        for eid, rec in self.records.items():
            if eid not in ids or not self.alive(rec):
                self.removed.add(eid)

    def rows(self, ids: list[int], queues: dict[Any, Any]) -> tuple[EngineRow, ...]:
        """One status row per engine, live or dead (not those removed):
        ``ids`` registered, ``queues`` the hub's counts per engine."""
        rows = []
        for eid in sorted(set(ids) | set(self.records)):
            if eid in self.removed:
                continue
            rec = self.record(eid)
            queue = queues.get(eid)
            alive = eid in ids and self.alive(rec)
            if alive and isinstance(queue, dict):
                rec.tasks_done = max(0, queue.get("completed", 0) - rec.probes)
                # the hub still counts tasks whose replies were lost
                lost = self.stale.lost.get(eid, 0)
                busy = queue.get("queue", 0) + queue.get("tasks", 0) > lost
                state: EngineState = "busy" if busy else "idle"
            else:
                state = "idle" if alive else "dead"
            work = self.current_work(eid) if state != "dead" else None
            rows.append(EngineRow(eid, rec.host, rec.pid, state, rec.tasks_done, work))
        return tuple(rows)

    def remove_all(self) -> None:
        """Every engine seen so far is going (a restart)."""
        self.removed.update(self.records)

    # -- work ------------------------------------------------------------------

    def reserve(self, engine: int, label: str = "job") -> None:
        """Mark ``engine`` as running a background job (``label``: its name)."""
        self._reserved[engine] = label

    def release(self, engine: int) -> None:
        """``engine`` finished its background job."""
        self._reserved.pop(engine, None)

    def reserved(self, engine: int) -> bool:
        """Whether a background job runs on ``engine``."""
        return engine in self._reserved

    def unreserved(self, ids: Iterable[int]) -> list[int]:
        """Those of ``ids`` not running a background job."""
        reserved = self._reserved
        return [eid for eid in ids if eid not in reserved]

    def mapping(self, engines: Iterable[int]) -> Callable[[], None]:
        """Note that a map runs on ``engines``; call the result when it ends."""
        engines = list(engines)
        with self._books:
            for eid in engines:
                self._mapping[eid] = self._mapping.get(eid, 0) + 1
        ended = [False]

        def done(*_: Any) -> None:
            with self._books:
                if ended[0]:
                    return
                ended[0] = True
                for eid in engines:
                    left = self._mapping.get(eid, 0) - 1
                    if left > 0:
                        self._mapping[eid] = left
                    else:
                        self._mapping.pop(eid, None)

        return done

    def current_work(self, engine: int) -> str | None:
        """What ``engine`` is doing: a background job's name, ``pmap``,
        ``cancelled work`` (still stopping), or None."""
        if engine in self._reserved:
            return self._reserved[engine]
        if self._mapping.get(engine):
            return "pmap"
        return "cancelled work" if self.stale.holds(engine) else None

    def mark_stale(self, engine: int, task: Any) -> None:
        """Note a cancelled task still running on ``engine``."""
        with self.lock:
            self.stale.add(engine, task)

    def mark_signalling(self, engine: int, future: Any) -> None:
        """Note a signal to ``engine`` not yet confirmed delivered."""
        with self.lock:
            self.stale.signalling(engine, future)

    def clear(self) -> None:
        """The cluster is gone: forget its engines (maps under way still end
        by their own ``done``)."""
        self._reserved.clear()
        self.stale.clear()
        self.records.clear()
        self.removed.clear()
        self.watch_processes = False
