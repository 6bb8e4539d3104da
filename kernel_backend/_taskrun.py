"""Running a task graph: dynamic list scheduling, data left where it was made.

As statements finish, the ready statement with the highest bottom level goes
to the engine where it can start earliest, counting where its inputs live
(:func:`._taskplan.earliest_engine`).  A value stays in the namespace of the
engine that made it; another engine that needs it fetches it from there
directly when both are on one host (:func:`._enginetasks.run_statement`), else
through the notebook.  Names the cell assigns come to the notebook at the end.

The scheduler knows which version of each name every engine holds: the
version of ``x`` a statement needs is that of the last earlier statement
writing ``x``, and since every later writer of ``x`` depends on the readers
before it, that version is also the newest one made so far.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ._enginetasks import StatementOutcome
from ._taskbackends import EngineLost, StatementCall, StatementEngines
from ._taskdata import Holdings
from ._taskgraph import TaskGraph
from ._taskplan import (
    CostBook,
    Estimates,
    bottom_levels,
    earliest_engine,
)

__all__ = ["StatementRun", "TaskRunner"]

_POLL = 0.1  # how often a run looks at cancellation while statements run
#: A statement may be sent to an engine still busy with one whose measured
#: cost says it ends within this many seconds: it starts there without a
#: round trip through the notebook in between.
_QUEUE_AHEAD = 0.05
#: At most this many statements wait on one engine behind the one it runs,
#: sent there because everything they need is, or is being made, there.
_CHAIN_DEPTH = 8


@dataclass
class StatementRun:
    """One statement's part in a run."""

    index: int
    #: waiting, ready, running, sent (queued on its engine behind what it
    #: depends on), done, failed, skipped, cancelled
    state: str = "waiting"
    engine: int | None = None
    started: float | None = None  # time.time() on the engine
    seconds: float = 0.0
    stdout: str = ""
    stderr: str = ""
    error: str | None = None
    traceback: str = ""
    fetched: int = 0  # bytes it received from other engines
    fetch_seconds: float = 0.0  # how long receiving them took
    sent: float | None = None  # time.time() here when it was sent


class TaskRunner:
    """Runs one task graph on a :class:`StatementEngines`; call :meth:`run`."""

    def __init__(
        self,
        graph: TaskGraph,
        engines: StatementEngines,
        estimates: Estimates,
        *,
        keys: list[str] | None = None,
        book: CostBook | None = None,
        direct: bool = True,
        on_change: Callable[[], None] = lambda: None,
        may_take: Callable[[], bool] = lambda: True,
    ) -> None:
        self.graph = graph
        self.engines = engines
        self.estimates = estimates
        self.levels = bottom_levels(graph, estimates)
        self.runs = [StatementRun(i) for i in range(len(graph))]
        self.keys = keys
        self.book = book
        self.direct = direct
        self._names_bytes = 0  # bytes of the names brought to the notebook
        self.moved_bytes = 0  # bytes engines fetched from one another
        self.cancel_reason: str | None = None
        self.started = time.time()
        self.finished: float | None = None
        self._on_change = on_change
        self._may_take = may_take
        self._holdings = Holdings()
        #: per statement: (name, version) of the values it needs from others
        self._needs = [
            [
                (name, version)
                for name in sorted(statement.needs)
                if (version := graph.producer(statement.index, name)) is not None
            ]
            for statement in graph.statements
        ]
        self._unfinished = [len(preds) for preds in graph.deps]
        self._running: dict[Any, int] = {}  # handle -> engine
        self._index: dict[int, int] = {}  # id(handle) -> statement
        #: the cell's last expression: its value, pickled, and rich display
        self.value: bytes | None = None
        self.bundle: dict[str, Any] | None = None
        last = len(graph) - 1
        self._last_value = last if last >= 0 and _is_expression(graph, last) else None

    # -- the loop ------------------------------------------------------------

    def run(self) -> None:
        """Run every statement that can run; returns when none is left."""
        for run in self.runs:
            if not self.graph.deps[run.index]:
                run.state = "ready"
        try:
            while self.cancel_reason is None:
                self._dispatch()
                if not self._running:
                    if not any(r.state == "ready" for r in self.runs):
                        break
                    time.sleep(_POLL)  # no engine free for us: look again
                    continue
                for handle in self.engines.wait(list(self._running), _POLL):
                    self._collect(handle)
        finally:
            if self.cancel_reason is not None:
                self._stop()
            self.finished = time.time()

    def _stop(self) -> None:
        running = dict(self._running)
        self._running.clear()
        if running:
            self.engines.interrupt(running)
        for run in self.runs:
            if run.state in ("waiting", "ready", "running", "sent"):
                run.state = "cancelled"
        self._on_change()

    def _dispatch(self) -> None:
        """Ready statements, highest bottom level first, each to the engine
        where it can start earliest, if that engine can take it now."""
        available = self.engines.engines()
        if not available or not self._may_take():
            return
        now = time.time()
        flights: dict[int, list[int]] = {e: [] for e in available}
        for handle, engine in self._running.items():
            flights.setdefault(engine, []).append(self._index[id(handle)])
        free_at = {e: self._free_at(flights[e], now) for e in available}
        ready = sorted(
            (r.index for r in self.runs if r.state == "ready"),
            key=lambda i: (-self.levels[i], i),
        )
        for index in ready:
            taking = [e for e in available if self._takes(flights[e], free_at[e], now)]
            if not taking:
                break
            lost = self._holdings.lost(self._inputs(index))
            if lost is not None:
                self._fail(index, f"its input {lost!r} was lost with its engine", "")
                continue
            inputs = [
                (self._holdings.holders(name, version), size, now)
                for name, version, size in self._inputs(index)
            ]
            pinned = {
                self._holdings.pinned[(name, version)]
                for name, version, _ in self._inputs(index)
                if (name, version) in self._holdings.pinned
            }
            if len(pinned) > 1:
                self._fail(
                    index,
                    "it needs values that cannot travel, made on"
                    f" engines {sorted(pinned)}",
                    "",
                )
                continue
            candidates = sorted(pinned) or available
            if not set(candidates) <= set(available):
                continue  # its engine is not free for it: wait
            engine, _ = earliest_engine(candidates, free_at, inputs)
            if engine not in taking:
                continue  # it starts sooner where its data is, once that is free
            self._start(index, engine)
            flights[engine].append(index)
            free_at[engine] = max(free_at[engine], now) + self.estimates.costs[index]
        self._chain(available, flights)

    def _chain(self, available: list[int], flights: dict[int, list[int]]) -> None:
        """Send on statements whose unfinished predecessors all run on one
        engine, where everything else they need is too: that engine runs
        them right after, without a round trip through the notebook
        between (and skips them if a predecessor fails there)."""
        on = {index: engine for engine, flight in flights.items() for index in flight}
        waiting = sorted(
            (r.index for r in self.runs if r.state == "waiting"),
            key=lambda i: (-self.levels[i], i),
        )
        for index in waiting:
            pending = [
                p for p in self.graph.deps[index] if self.runs[p].state != "done"
            ]
            engines = {on.get(p) for p in pending}
            if len(engines) != 1 or None in engines:
                continue
            engine = engines.pop()
            if engine is None or engine not in available:
                continue
            flight = flights[engine]
            # only right behind what it waits for: a second statement
            # waiting for the same one may start sooner on another engine
            if flight[-1] not in pending or len(flight) > _CHAIN_DEPTH:
                continue
            if not self._all_there(index, engine, on):
                continue
            self._start(index, engine, after=tuple(sorted(pending)))
            flights[engine].append(index)
            on[index] = engine

    def _all_there(self, index: int, engine: int, on: dict[int, int]) -> bool:
        """Whether every value statement ``index`` needs is on ``engine``,
        or made by a statement running there."""
        return all(
            on.get(version) == engine or engine in self._holdings.holders(name, version)
            for name, version in self._needs[index]
        )

    def _free_at(self, flight: list[int], now: float) -> float:
        """When an engine running (then holding) ``flight`` is expected free."""
        at = now
        for position, index in enumerate(flight):
            cost = self.estimates.costs[index]
            run = self.runs[index]
            if position == 0:
                # one sent behind others starts when they end: not before now
                started = run.started if run.state == "running" else None
                started = started or now
                # overdue: it may well take as long again
                at = max(
                    started + cost,
                    now + (0.0 if self.estimates.is_known(index) else 0.5 * cost),
                )
            else:
                at += cost
        return at

    def _takes(self, flight: list[int], free_at: float, now: float) -> bool:
        """Whether an engine takes another statement now: when idle, or
        about to be (its one statement's measured cost says so)."""
        if not flight:
            return True
        known = all(self.estimates.is_known(i) for i in flight)
        return len(flight) == 1 and known and free_at - now <= _QUEUE_AHEAD

    def _inputs(self, index: int) -> list[tuple[str, int, int]]:
        """(name, version, bytes) of the values statement ``index`` needs
        from earlier statements."""
        sizes = self._holdings.sizes
        return [(n, v, sizes.get((n, v), 0)) for n, v in self._needs[index]]

    # -- one statement -------------------------------------------------------

    def _start(self, index: int, engine: int, after: tuple[int, ...] = ()) -> None:
        statement = self.graph.statements[index]
        wanted = [(n, v) for n, v, _ in self._inputs(index)]
        held = self._holdings.held.get(engine, {})
        missing = [(n, v) for n, v in wanted if held.get(n) != v]
        together = statement.modifies & {n for n, _ in wanted}
        if together and any(n in together for n, _ in missing):
            # names modified together must arrive together (shared objects)
            missing = [(n, v) for n, v in wanted if n in together or held.get(n) != v]
        fetch, relay = self._holdings.plan_fetch(
            engine, missing, self.engines, self.direct
        )
        call = StatementCall(
            index=index,
            fetch=tuple(fetch),
            relay=tuple(relay),
            writes=tuple(sorted(statement.writes)),
            last_value=index == self._last_value,
            after=after,
        )
        run = self.runs[index]
        run.state, run.engine = ("sent" if after else "running"), engine
        run.started = run.sent = time.time()
        handle = self.engines.submit(engine, call)
        self._running[handle] = engine
        self._index[id(handle)] = index
        self._on_change()

    def _collect(self, handle: Any) -> None:
        engine = self._running.pop(handle)
        index = self._index.pop(id(handle))
        run = self.runs[index]
        try:
            outcome = self.engines.outcome(handle)
            if run.state == "skipped":  # a statement it depends on failed
                return
        except EngineLost as err:
            self._holdings.held.pop(engine, None)  # what it held is gone
            if run.state != "skipped":
                self._fail(index, f"{err} while running it", "")
            return
        except Exception as err:
            if run.state != "skipped":
                self._fail(index, f"could not run on engine {engine}: {err}", "")
            return
        run.started, run.seconds = outcome.started, outcome.seconds
        run.stdout, run.stderr = outcome.stdout, outcome.stderr
        run.fetched, run.fetch_seconds = outcome.fetched, outcome.fetch_seconds
        self.moved_bytes += outcome.fetched
        self._holdings.address[engine] = outcome.address
        self._holdings.host[engine] = outcome.host
        if outcome.skipped:  # a statement it followed there did not finish
            if run.state in ("running", "sent"):
                run.state = "skipped"
            return
        if outcome.interrupted:
            run.state = "cancelled"
            self.cancel_reason = self.cancel_reason or "was interrupted"
            self._on_change()
            return
        if outcome.failure is not None:
            failure = outcome.failure
            self._fail(
                index, f"{failure.type_name}: {failure.message}", failure.traceback
            )
            return
        self._done(index, engine, outcome)

    def _done(self, index: int, engine: int, outcome: StatementOutcome) -> None:
        run = self.runs[index]
        run.state = "done"
        statement = self.graph.statements[index]
        held = self._holdings.held.setdefault(engine, {})
        for name, version, _ in self._inputs(index):
            held[name] = version  # fetched: now here too
        for name in statement.writes:
            if name in outcome.sizes:
                held[name] = index
                self._holdings.sizes[(name, index)] = outcome.sizes[name]
            else:
                held.pop(name, None)
        for name in outcome.pinned:
            self._holdings.pinned[(name, index)] = engine
        if self.book is not None and self.keys is not None:
            work = max(outcome.seconds - outcome.fetch_seconds, 0.0)
            self.book.record(self.keys[index], work, outcome.sizes)
        if outcome.value is not None or outcome.bundle is not None:
            self.value, self.bundle = outcome.value, outcome.bundle
        for succ in self.graph.succs[index]:
            self._unfinished[succ] -= 1
            if not self._unfinished[succ] and self.runs[succ].state == "waiting":
                self.runs[succ].state = "ready"
        self._on_change()

    def _fail(self, index: int, error: str, traceback: str) -> None:
        run = self.runs[index]
        run.state, run.error, run.traceback = "failed", error, traceback
        for later in self.graph.descendants(index):
            self.runs[later].state = "skipped"
        self._on_change()

    # -- the end -------------------------------------------------------------

    def collect_names(
        self, names: list[str]
    ) -> tuple[dict[str, Any], dict[str, str], list[str]]:
        """Bring ``names`` from the engines holding their final versions.

        Returns (values, names that could not come back and why, names
        missing because the statement making them did not run).
        """
        import cloudpickle

        by_engine: dict[int, list[str]] = {}
        missing = []
        for name in names:
            writer = self.graph.last_writer(name)
            if writer is None:
                continue
            if self.runs[writer].state != "done":
                missing.append(name)
                continue
            holders = self._holdings.holders(name, writer)
            if holders:
                by_engine.setdefault(min(holders), []).append(name)
        values: dict[str, Any] = {}
        failed: dict[str, str] = {}
        for engine, wanted in by_engine.items():
            data, why = self.engines.results(engine, wanted)
            failed.update(why)
            for name, blob in data.items():
                self._names_bytes += len(blob)
                try:
                    values[name] = cloudpickle.loads(blob)
                except Exception as err:
                    failed[name] = f"{type(err).__name__}: {err}"
        return values, failed, missing

    @property
    def kernel_bytes(self) -> int:
        """Bytes of values that passed through the notebook's process."""
        return self._names_bytes + self.engines.relayed_bytes

    def stdout(self) -> str:
        """What the statements printed, in program order: up to the first
        statement not finished, so the text only ever grows at its end."""
        return "".join(r.stdout for r in self._finished_prefix())

    def stderr(self) -> str:
        return "".join(r.stderr for r in self._finished_prefix())

    def _finished_prefix(self) -> list[StatementRun]:
        runs = []
        for run in self.runs:
            if run.state in ("waiting", "ready", "running", "sent"):
                break
            runs.append(run)
        return runs


def _is_expression(graph: TaskGraph, index: int) -> bool:
    import ast

    node = ast.parse(graph.source).body[index]
    return isinstance(node, ast.Expr)
