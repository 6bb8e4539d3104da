"""How long statements take, and where they should run: list scheduling.

Pure functions of a :class:`~._taskgraph.TaskGraph` and measured costs, as
Sinnen describes list scheduling: order the statements by *bottom level*
(the longest path from a statement to the end of the graph, counting its
own cost and the transfer of the values it hands on) and put each on the
engine where it can start earliest, counting where its inputs already live.
The same rule plans a whole schedule ahead (``--plan``, and the planned bars
of a timeline) and, one decision at a time, drives the run itself.

A statement's cost comes from earlier runs of the same statement with the
same inputs (:class:`CostBook`, keyed by the statement's AST and its inputs'
identity); statements never run count as the mean of those that did, or all
alike when none did.
"""

from __future__ import annotations

import ast
import hashlib
import threading
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from ._taskgraph import TaskGraph

__all__ = [
    "CostBook",
    "Estimates",
    "PlannedTask",
    "TaskBar",
    "TaskPlan",
    "TaskTimeline",
    "bottom_levels",
    "critical_path",
    "default_costs",
    "plan_schedule",
    "statement_keys",
    "transfer_seconds",
]

#: Assumed engine-to-engine bandwidth (bytes/s) and per-transfer latency (s).
BANDWIDTH = 1e9
LATENCY = 0.002
#: What a statement never run counts as, when no statement of the cell ran.
UNIT_COST = 1.0


def transfer_seconds(nbytes: int) -> float:
    """Planned time to move ``nbytes`` from one engine to another."""
    return LATENCY + nbytes / BANDWIDTH if nbytes else 0.0


def statement_keys(graph: TaskGraph, digests: Mapping[str, str]) -> list[str]:
    """A key per statement: its AST and the identity of what it reads.

    A name from the notebook is identified by ``digests`` (its content digest
    as shipped, or its module), a name made in the cell by the key of the
    statement that made it, so a statement's key changes when anything
    upstream changes.
    """
    tree = ast.parse(graph.source)
    keys: list[str] = []
    for statement, node in zip(graph.statements, tree.body, strict=True):
        h = hashlib.blake2b(ast.dump(node).encode(), digest_size=12)
        for name in sorted(statement.needs):
            producer = graph.producer(statement.index, name)
            origin = keys[producer] if producer is not None else digests.get(name, "")
            h.update(f"\0{name}={origin}".encode())
        keys.append(h.hexdigest())
    return keys


class CostBook:
    """Seconds and output sizes of statements run before, by key (bounded)."""

    def __init__(self, limit: int = 10_000) -> None:
        self._entries: OrderedDict[str, tuple[float, dict[str, int]]] = OrderedDict()
        self._limit = limit
        self._lock = threading.Lock()

    def record(self, key: str, seconds: float, sizes: Mapping[str, int]) -> None:
        with self._lock:
            self._entries[key] = (seconds, dict(sizes))
            self._entries.move_to_end(key)
            while len(self._entries) > self._limit:
                self._entries.popitem(last=False)

    def get(self, key: str) -> tuple[float, dict[str, int]] | None:
        with self._lock:
            return self._entries.get(key)


@dataclass(frozen=True)
class Estimates:
    """Per statement: expected seconds and bytes of each name it writes."""

    costs: tuple[float, ...]
    sizes: tuple[dict[str, int], ...]
    measured: int  # how many statements had a recorded cost
    known: tuple[bool, ...] = ()  # which ones

    def is_known(self, index: int) -> bool:
        return index < len(self.known) and self.known[index]

    def edge_bytes(self, graph: TaskGraph, i: int, j: int) -> int:
        """Bytes statement ``j`` needs from statement ``i``."""
        if not self.sizes[i]:
            return 0
        return sum(
            self.sizes[i].get(name, 0)
            for name in graph.statements[j].needs
            if graph.producer(j, name) == i
        )


def default_costs(graph: TaskGraph, book: CostBook, keys: Sequence[str]) -> Estimates:
    """Costs from ``book``; the rest count as the mean of the known ones."""
    known = [book.get(key) for key in keys]
    seconds = [entry[0] for entry in known if entry is not None]
    fallback = sum(seconds) / len(seconds) if seconds else UNIT_COST
    return Estimates(
        costs=tuple(fallback if e is None else e[0] for e in known),
        sizes=tuple({} if e is None else e[1] for e in known),
        measured=len(seconds),
        known=tuple(e is not None for e in known),
    )


def bottom_levels(graph: TaskGraph, est: Estimates) -> list[float]:
    """Longest path from each statement to the end, its own cost included."""
    levels = [0.0] * len(graph)
    for i in range(len(graph) - 1, -1, -1):
        tail = max(
            (
                transfer_seconds(est.edge_bytes(graph, i, j)) + levels[j]
                for j in graph.succs[i]
            ),
            default=0.0,
        )
        levels[i] = est.costs[i] + tail
    return levels


def critical_path(graph: TaskGraph, est: Estimates) -> list[int]:
    """The statements on the longest path through the graph, in order."""
    if not len(graph):
        return []
    levels = bottom_levels(graph, est)
    current = max(
        (i for i in range(len(graph)) if not graph.deps[i]), key=levels.__getitem__
    )
    path = [current]
    while graph.succs[current]:
        current = max(
            graph.succs[current],
            key=lambda j: (
                transfer_seconds(est.edge_bytes(graph, path[-1], j)) + levels[j]
            ),
        )
        path.append(current)
    return path


@dataclass(frozen=True)
class PlannedTask:
    """Where and when the plan puts a statement (seconds from the start)."""

    index: int
    engine: int
    start: float
    end: float


def earliest_engine(
    engines: Sequence[int],
    free_at: Mapping[int, float],
    inputs: Sequence[tuple[set[int], int, float]],
) -> tuple[int, float]:
    """The engine where a statement can start earliest, and when.

    ``inputs``: per value it needs, (engines holding it, its bytes, when it
    is ready).  Ties go to the engine holding more of the input bytes, then
    to the lower id.
    """

    def start(engine: int) -> tuple[float, int, int]:
        ready = free_at.get(engine, 0.0)
        held = 0
        for holders, nbytes, at in inputs:
            if engine in holders:
                held += nbytes
                ready = max(ready, at)
            else:
                ready = max(ready, at + transfer_seconds(nbytes))
        return ready, -held, engine

    best = min(engines, key=start)
    return best, start(best)[0]


def plan_schedule(
    graph: TaskGraph, engines: Sequence[int], est: Estimates
) -> list[PlannedTask]:
    """A whole schedule, planned ahead: statements by bottom level, each on
    the engine where it can start earliest."""
    if not engines:
        return []
    levels = bottom_levels(graph, est)
    free_at = dict.fromkeys(engines, 0.0)
    placed: dict[int, PlannedTask] = {}
    unplaced = [len(preds) for preds in graph.deps]
    ready = {i for i, n in enumerate(unplaced) if not n}
    while ready:
        index = max(ready, key=lambda i: (levels[i], -i))
        ready.discard(index)
        for succ in graph.succs[index]:
            unplaced[succ] -= 1
            if not unplaced[succ]:
                ready.add(succ)
        statement = graph.statements[index]
        producers = {
            p
            for name in statement.needs
            if (p := graph.producer(index, name)) is not None
        }
        inputs = [
            ({placed[i].engine}, est.edge_bytes(graph, i, index), placed[i].end)
            for i in producers | graph.deps[index]
        ]
        engine, start = earliest_engine(engines, free_at, inputs)
        task = PlannedTask(index, engine, start, start + est.costs[index])
        placed[index] = task
        free_at[engine] = task.end
    return [placed[i] for i in sorted(placed)]


# -- what a run or a plan looked like (drawn by paracell.widgets) ------------


@dataclass(frozen=True)
class TaskBar:
    """One statement as it ran: engine, start (s from the job's start)."""

    index: int
    engine: int
    start: float
    seconds: float
    state: str  # done, failed, cancelled


@dataclass(frozen=True)
class TaskTimeline:
    """A task graph's run as a Gantt chart: a bar per statement on its
    engine, labelled with its first line; the critical path marked; the
    planned schedule beside what happened."""

    labels: tuple[str, ...]
    lines: tuple[int, ...]  # each statement's line in the cell
    actual: tuple[TaskBar, ...]
    planned: tuple[PlannedTask, ...]
    critical: tuple[int, ...]
    wall: float | None = None  # the run's wall time, when it ran
    #: statements whose planned cost was measured before (none: all alike,
    #: one unit each, and the planned times are units, not seconds)
    measured: int = 0

    @property
    def engines(self) -> list[int]:
        return sorted(
            {b.engine for b in self.actual} | {p.engine for p in self.planned}
        )

    @property
    def span(self) -> float:
        ends = [b.start + b.seconds for b in self.actual]
        ends += [p.end for p in self.planned]
        return max([*ends, self.wall or 0.0, 1e-9])

    def summary(self) -> str:
        """E.g. ``tasks: 5 statements on 2 engines in 2.1 s (planned 2.0 s)``."""
        planned = max((p.end for p in self.planned), default=0.0)
        span = f"{planned:.2f} s" if self.measured else f"{planned:g} equal steps"
        if not self.actual:
            return (
                f"plan: {len(self.labels)} statements on"
                f" {_count(len({p.engine for p in self.planned}), 'engine')},"
                f" {span} (critical path: {len(self.critical)} statements)"
            )
        wall = self.wall if self.wall is not None else self.span
        engines = len({b.engine for b in self.actual})
        return (
            f"tasks: {len(self.actual)} of {len(self.labels)} statements on"
            f" {engines} engine{'s' if engines != 1 else ''} in {wall:.2f} s"
            f" (planned {span})"
        )


@dataclass(frozen=True)
class TaskPlan:
    """What ``%%parallel --tasks --plan`` shows: the graph and the schedule
    planned for it, run nowhere."""

    graph: TaskGraph
    timeline: TaskTimeline
    engines: int
    measured: int  # statements whose cost came from an earlier run

    def summary(self) -> str:
        costs = (
            "costs from earlier runs"
            if self.measured == len(self.graph)
            else f"{self.measured} of {len(self.graph)} costs from earlier runs,"
            " the rest counted alike"
        )
        return f"{self.timeline.summary()}; {costs}"


def _count(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"
