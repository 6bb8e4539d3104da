"""Where a task graph's statements run: engines behind one small interface.

The scheduler (:mod:`._taskrun`) submits a statement to an engine, waits for
whichever finishes, reads its outcome, asks an engine for values, and
interrupts.  :class:`ClusterEngines` does that on the ipyparallel cluster;
:class:`InProcessEngines` runs the statements here, each "engine" with a
namespace of its own and values moved between them by pickling, finishing
them in a random order — for tests that need no cluster, and to check that
no dependency is missing.  :func:`run_sequentially` is the reference both
must equal: the statements top to bottom in one namespace, seeded alike.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import pickle
import random
import socket
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

import numpy as np

from ._engine import TaskSpec
from ._enginetasks import (
    _TASK_NS,
    StatementOutcome,
    _pack_values,
    forget_task_job,
    run_statement,
    task_results,
    task_values,
)
from ._errors import is_engine_death
from ._pool import SETTLE
from ._taskgraph import TaskGraph
from ._waiting import wait_for

__all__ = [
    "ClusterEngines",
    "InProcessEngines",
    "StatementCall",
    "StatementEngines",
    "run_sequentially",
]


@dataclass(frozen=True)
class StatementCall:
    """One statement to run on one engine, and the values it needs first."""

    index: int
    fetch: tuple[tuple[tuple[str, int], str, tuple[str, ...]], ...] = ()
    #: (engine, names) to bring through the notebook first
    relay: tuple[tuple[int, tuple[str, ...]], ...] = ()
    given: bytes | None = None
    writes: tuple[str, ...] = ()
    last_value: bool = False
    #: statements sent to the same engine before it, that it depends on
    after: tuple[int, ...] = ()


class EngineLost(Exception):
    """The engine died while running a statement."""


class StatementEngines(Protocol):
    """What the task scheduler needs of the engines.

    ``submit`` brings the values of ``call.relay`` through the notebook to
    the engine first; ``relayed_bytes`` counts what that moved (in and out).
    """

    relayed_bytes: int

    def engines(self) -> list[int]: ...
    def host(self, engine: int) -> str | None: ...
    def key(self, engine: int) -> str: ...
    def submit(self, engine: int, call: StatementCall) -> Any: ...
    def wait(self, handles: Sequence[Any], timeout: float) -> list[Any]: ...
    def outcome(self, handle: Any) -> StatementOutcome: ...
    def values(self, engine: int, names: Sequence[str]) -> bytes: ...
    def results(
        self, engine: int, names: Sequence[str]
    ) -> tuple[dict[str, bytes], dict[str, str]]: ...
    def interrupt(self, handles: Mapping[Any, int]) -> None: ...
    def close(self) -> None: ...


def _gather_relayed(engines: StatementEngines, call: StatementCall) -> bytes:
    """The values ``call`` needs from engines it cannot fetch from itself,
    through the notebook, packed to send with it; ``relayed_bytes`` counts
    them in and out."""
    values: dict[str, Any] = {}
    for source, names in call.relay:
        data = engines.values(source, names)
        engines.relayed_bytes += len(data)
        values.update(pickle.loads(data))
    given = _pack_values(values, list(values), False)[0]
    engines.relayed_bytes += len(given)
    return given


class ClusterEngines:
    """Statements on the ipyparallel cluster of a :class:`ClusterSession`.

    An engine runs one statement of the job at a time; while it does, the
    session counts it reserved under the job's name, so background cells
    and maps keep off it.
    """

    def __init__(
        self,
        session: Any,
        *,
        job_name: str,
        job_key: str,
        spec: TaskSpec,
        source: str,
        filename: str,
        shipment: Any,
        authkey: bytes,
    ) -> None:
        self._session = session
        self._job_name = job_name
        self._job_key = job_key
        self._spec = spec
        self._source = source
        self._filename = filename
        self._shipment = shipment
        self._authkey = authkey
        self._used: set[int] = set()
        self._in_flight: dict[int, int] = {}  # engine -> statements sent there
        self.relayed_bytes = 0

    def engines(self) -> list[int]:
        session = self._session
        if not session.active:
            return []
        stale = session.stale_engines()
        mine = {
            e for e in session.engine_ids() if session.current_work(e) == self._job_name
        }
        free = set(session.unreserved_engine_ids()) | mine
        return sorted(e for e in free if e not in stale)

    def key(self, engine: int) -> str:
        return self._job_key

    def host(self, engine: int) -> str | None:
        return self._session.engine_host(engine)  # type: ignore[no-any-return]

    def submit(self, engine: int, call: StatementCall) -> Any:
        self._session.reserve(engine, self._job_name)
        self._in_flight[engine] = self._in_flight.get(engine, 0) + 1
        if not call.relay:
            return self._send(engine, call)
        # the values wait on busy engines: fetch them on a thread of their
        # own, so the scheduler goes on meanwhile
        relayed = _Relayed()
        relayed._paracell_engine = engine  # type: ignore[attr-defined]
        threading.Thread(
            target=self._relay, args=(engine, call, relayed), daemon=True
        ).start()
        return relayed

    def _relay(self, engine: int, call: StatementCall, relayed: _Relayed) -> None:
        try:
            given = _gather_relayed(self, call)
            if relayed.stopped:
                raise RuntimeError("cancelled before it was sent")
            relayed.ar = self._send(engine, replace(call, relay=(), given=given))
            relayed.ar.add_done_callback(lambda _: relayed.set_result(None))
        except BaseException as err:
            relayed.set_exception(err)

    def _send(self, engine: int, call: StatementCall) -> Any:
        session = self._session
        client = session.client
        first = engine not in self._used
        if first:
            # queued on the engine ahead of the statement: no waiting here
            session.shipper.ship(client, [engine], self._shipment, block=False)
            self._used.add(engine)
        ar = client[engine].apply_async(
            run_statement,
            self._spec if first else None,
            self._job_key,
            self._source if first else None,
            self._filename,
            call.index,
            list(call.fetch),
            call.given,
            list(call.writes),
            self._authkey,
            call.last_value,
            call.after,
        )
        ar._paracell_engine = engine
        return ar

    def wait(self, handles: Sequence[Any], timeout: float) -> list[Any]:
        done, _ = wait_for(handles, timeout, first=True)
        return [h for h in handles if h in done]

    def outcome(self, handle: Any) -> StatementOutcome:
        engine = handle._paracell_engine
        self._in_flight[engine] -= 1
        if not self._in_flight[engine]:  # none queued behind it there
            self._session.release(engine)
        if isinstance(handle, _Relayed):
            handle.result()  # the relay's own error, if it failed
            handle = handle.ar
        try:
            outcome: StatementOutcome = handle.get(SETTLE)
        except Exception as err:
            if is_engine_death(err):
                self._session.forget_engines([engine])
                raise EngineLost(f"engine {engine} died") from None
            raise
        finally:
            self._session.purge(handle)
        return outcome

    def values(self, engine: int, names: Sequence[str]) -> bytes:
        return self._ask(engine, task_values, list(names))  # type: ignore[no-any-return]

    def results(
        self, engine: int, names: Sequence[str]
    ) -> tuple[dict[str, bytes], dict[str, str]]:
        return self._ask(engine, task_results, list(names))  # type: ignore[no-any-return]

    def _ask(self, engine: int, func: Any, *args: Any) -> Any:
        ar = self._session.client[engine].apply_async(func, self._job_key, *args)
        try:
            return ar.get()
        finally:
            self._session.purge(ar)

    def interrupt(self, handles: Mapping[Any, int]) -> None:
        tasks = {}
        for handle, engine in handles.items():
            if isinstance(handle, _Relayed):
                handle.stopped = True
                handle = handle.ar
            if handle is not None:
                tasks[handle] = engine
        self._session.interrupt(tasks)
        for engine in handles.values():
            self._in_flight[engine] = 0
            self._session.release(engine)

    def close(self) -> None:
        session = self._session
        if not session.active:
            return
        for engine in self._used:
            if session.current_work(engine) == self._job_name:
                session.release(engine)
            with contextlib.suppress(Exception):
                ar = session.client[engine].apply_async(forget_task_job, self._job_key)
                ar.add_done_callback(session.purge)


class _Relayed(concurrent.futures.Future):  # type: ignore[type-arg]
    """A statement whose values come through the notebook before it is sent:
    done when the statement is (``ar``), or failed if the relay did."""

    ar: Any = None
    stopped = False


@dataclass(eq=False)
class _Pending:
    engine: int
    call: StatementCall
    outcome: StatementOutcome | None = None


@dataclass
class InProcessEngines:
    """``count`` pretend engines in this process: a namespace each (starting
    from a pickled copy of the names the cell reads), values moved between
    them by pickling, statements finished in an order drawn from ``seed``."""

    namespace: Mapping[str, Any]
    names: Sequence[str]
    spec: TaskSpec
    source: str
    filename: str = "<cell>"
    count: int = 3
    seed: int = 0
    job_key: str = "in-process"
    relayed_bytes: int = 0
    _pending: list[_Pending] = field(default_factory=list)
    _rng: random.Random = field(init=False)

    def __post_init__(self) -> None:
        import cloudpickle

        self._rng = random.Random(self.seed)
        shipped = {n: self.namespace[n] for n in self.names if n in self.namespace}
        for engine in range(self.count):
            ns = cloudpickle.loads(cloudpickle.dumps(shipped))
            _TASK_NS[self.key(engine)] = {"__builtins__": __builtins__, **ns}

    def engines(self) -> list[int]:
        return list(range(self.count))

    def key(self, engine: int) -> str:
        return f"{self.job_key}@{engine}"

    def host(self, engine: int) -> str | None:
        return socket.gethostname()

    def submit(self, engine: int, call: StatementCall) -> Any:
        if call.relay:
            call = replace(call, relay=(), given=_gather_relayed(self, call))
        pending = _Pending(engine, call)
        self._pending.append(pending)
        return pending

    def wait(self, handles: Sequence[Any], timeout: float) -> list[Any]:
        waiting = [h for h in handles if h.outcome is None]
        if waiting:
            # engines finish in a random order; each runs its own in order
            engine = self._rng.choice(sorted({h.engine for h in waiting}))
            chosen = next(
                h for h in self._pending if h.engine == engine and h.outcome is None
            )
            chosen.outcome = self._run(chosen)
        return [h for h in handles if h.outcome is not None]

    def _run(self, pending: _Pending) -> StatementOutcome:
        from ._seeding import seeded

        call = pending.call
        # the statement reseeds; this process's own random state stays as it was
        with seeded(np.random.SeedSequence(0)):
            return self._run_statement(pending, call)

    def _run_statement(
        self, pending: _Pending, call: StatementCall
    ) -> StatementOutcome:
        return run_statement(
            self.spec,
            self.key(pending.engine),
            self.source,
            self.filename,
            call.index,
            call.fetch,
            call.given,
            call.writes,
            b"in-process",
            call.last_value,
            call.after,
        )

    def outcome(self, handle: Any) -> StatementOutcome:
        self._pending.remove(handle)
        return handle.outcome  # type: ignore[no-any-return]

    def values(self, engine: int, names: Sequence[str]) -> bytes:
        return task_values(self.key(engine), names)

    def results(
        self, engine: int, names: Sequence[str]
    ) -> tuple[dict[str, bytes], dict[str, str]]:
        return task_results(self.key(engine), names)

    def interrupt(self, handles: Mapping[Any, int]) -> None:
        for handle in handles:
            with contextlib.suppress(ValueError):
                self._pending.remove(handle)

    def close(self) -> None:
        for engine in range(self.count):
            forget_task_job(self.key(engine))


def run_sequentially(
    graph: TaskGraph,
    namespace: dict[str, Any],
    *,
    seed: int | None = None,
    filename: str = "<cell>",
) -> str:
    """Run the statements top to bottom in ``namespace``, each seeded as a
    task run seeds it (stream ``index`` of ``seed``); returns what they
    printed.  The reference a task run must equal."""
    import ast
    import contextlib
    import io
    import linecache

    from ._engineawait import compile_code, run_code
    from ._seeding import item_seed_sequence, seed_item, seeded

    lines = graph.source.splitlines(keepends=True)
    linecache.cache[filename] = (len(graph.source), None, lines, filename)
    out = io.StringIO()
    with contextlib.redirect_stdout(out), seeded(item_seed_sequence(0, 0)):
        for index, node in enumerate(ast.parse(graph.source).body):
            seed_item(item_seed_sequence(seed, index, entropy=0))
            run_code(compile_code(ast.Module([node], []), filename, "exec"), namespace)
    return out.getvalue()
