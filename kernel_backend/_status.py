"""Plain records describing a cluster: what ``status()`` and ``start()`` return.

They carry facts only; how they look in a notebook or a terminal is the
business of ``paracell.widgets``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

__all__ = [
    "ClusterState",
    "ClusterStatus",
    "EngineRow",
    "EngineState",
    "Ownership",
    "StartReport",
    "StopReport",
]

EngineState = Literal["idle", "busy", "dead"]
ClusterState = Literal["running", "stopped"]
Ownership = Literal["started", "connected"]


@dataclass(frozen=True)
class EngineRow:
    """One engine as ``status()`` sees it."""

    id: int
    host: str | None
    pid: int | None
    state: EngineState
    tasks_done: int
    current: str | None = None  # a background job's name, "pmap", or None


@dataclass(frozen=True)
class ClusterStatus:
    """The active cluster's state and one row per engine.

    ``engines`` lists live engines and engines that died (``state == "dead"``);
    engines removed on purpose (scale down, idle timeout) are not listed.
    """

    state: ClusterState
    ownership: Ownership | None = None
    launcher: str | None = None
    profile: str | None = None
    cluster_id: str | None = None
    location: str | None = None
    target_engines: int = 0
    idle_timeout: float | None = None
    idle_stopped: int = 0
    engines: tuple[EngineRow, ...] = field(default_factory=tuple)
    #: False when the controller did not answer (it died or hangs)
    controller_answers: bool = True
    #: the BLAS/OpenMP thread limit of each engine, if paracell set one
    threads_per_engine: int | None = None
    # engines asked for but not registered yet, and where they wait, e.g.
    # "13 waiting (queued in Slurm, job 1234)"
    waiting: str | None = None
    #: engines on demand: the limits (None for a fixed count) ...
    min_engines: int | None = None
    max_engines: int | None = None
    #: ... and why the count is what it is, e.g. "4 engines for a map of 40
    #: items", "2 engines stopped after 120 s idle, down to --min"
    demand: str | None = None

    @property
    def live_engines(self) -> int:
        """How many engines are up (idle or busy)."""
        return sum(1 for e in self.engines if e.state != "dead")

    @property
    def dead_engines(self) -> int:
        """How many engines died (and were not removed on purpose)."""
        return sum(1 for e in self.engines if e.state == "dead")

    def summary(self) -> str:
        """The state in one sentence, e.g. ``running: 2 engines (local, 127.0.0.1)``."""
        if self.state == "stopped":
            return "stopped: no cluster active"
        how = "started here" if self.ownership == "started" else "connected"
        where = f"{self.launcher or 'unknown launcher'}, {self.location or '?'}"
        if not self.controller_answers:
            return (
                f"unreachable: the controller does not answer ({how}; {where});"
                " %cluster stop cleans up, then %cluster start"
            )
        waiting = f", {self.waiting}" if self.waiting else ""
        text = f"running: {_engines(self.live_engines)}{waiting} ({how}; {where})"
        if self.threads_per_engine is not None:
            n = self.threads_per_engine
            text += f", {n} BLAS thread{'s' * (n != 1)} per engine"
        if self.dead_engines:
            text += f", {self.dead_engines} dead"
        if self.idle_stopped:
            text += (
                f", {self.idle_stopped} stopped after {self.idle_timeout:g} s idle"
                " (they restart on the next call)"
            )
        if self.max_engines is not None:
            text += f"; on demand, {self.min_engines} to {self.max_engines}"
            if self.demand:
                text += f": {self.demand}"
        return text


@dataclass(frozen=True)
class StartReport:
    """What ``start()`` or ``connect()`` did, for the one line a user reads."""

    engines: int
    launcher: str
    location: str
    profile: str
    cluster_id: str
    seconds: float
    ownership: Ownership
    waiting: str | None = None  # engines still queued, e.g. "2 waiting (...)"
    note: str | None = None  # e.g. why fewer engines were started than asked
    demand: str | None = None  # engines on demand: limits and idle timeout

    def __str__(self) -> str:
        if self.ownership == "connected":
            return (
                f"paracell: connected to {_engines(self.engines)} at {self.location}"
                f" (profile '{self.profile}', cluster id '{self.cluster_id}')"
                f" in {self.seconds:.1f} s"
            )
        waiting = f", {self.waiting}" if self.waiting else ""
        note = f"; {self.note}" if self.note else ""
        if self.demand:
            note += f"; {self.demand}"
        return (
            f"paracell: started {_engines(self.engines)}{waiting} on {self.location}"
            f" ({self.launcher} launcher, profile '{self.profile}')"
            f" in {self.seconds:.1f} s{note}"
        )

    def started_on_demand(self) -> str:
        """The line said when a call started this cluster by itself."""
        return f"{self} (no cluster was active; %cluster stop ends it)"


@dataclass(frozen=True)
class StopReport:
    """What ``stop()`` did."""

    action: Literal["stopped", "disconnected", "nothing"]
    engines: int = 0
    seconds: float = 0.0

    def __str__(self) -> str:
        if self.action == "nothing":
            return "paracell: no cluster to stop"
        if self.action == "disconnected":
            return (
                "paracell: disconnected (the cluster was not started here,"
                " so it keeps running)"
            )
        return (
            f"paracell: stopped the controller and {_engines(self.engines)}"
            f" in {self.seconds:.1f} s"
        )


def _engines(n: int) -> str:
    return f"{n} engine" if n == 1 else f"{n} engines"
