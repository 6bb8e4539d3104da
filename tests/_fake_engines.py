"""An in-process pool of engines for fast tests of the schedulers.

Implements :class:`paracell.kernel_backend._pool.JobPool` (an
:class:`~paracell.kernel_backend._pool.EnginePool` with what background
jobs need besides) with one thread
per engine, each running its tasks in order, as an ipyparallel engine does.
An engine can be killed (its queued and running tasks fail with
ipyparallel's ``EngineError``, as the hub reports a dead engine), added,
reserved by a background job or left holding cancelled work; the pool
records what was sent where.  Names shipped to the fake engines are
installed with the engines' own code, into this process (every fake engine
sees them), so a background cell runs with ``run_cell`` as on an engine.  Like ``httpx.MockTransport`` or joblib's
sequential backend, it stands in for the real thing only in tests of logic —
what only a cluster shows is tested on a cluster.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import queue
import threading
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import ipyparallel as ipp

from paracell.kernel_backend import _enginenames

_here = threading.local()  # which fake engine the current thread is


class FakeTask(concurrent.futures.Future):  # type: ignore[type-arg]
    def __init__(self, engine: int, args: tuple[Any, ...]) -> None:
        super().__init__()
        self.engine = engine
        self.args = args
        self.stdout = ""
        self.stderr = ""

    def get(self, timeout: float | None = None) -> Any:
        return self.result(timeout)

    def wait_for_output(self, timeout: float | None = None) -> bool:
        return True

    def settle(self, value: Any = None, error: BaseException | None = None) -> None:
        """Finish the task unless it already ended (killed, aborted)."""
        try:
            if error is not None:
                self.set_exception(error)
            else:
                self.set_result(value)
        except concurrent.futures.InvalidStateError:
            pass


class _Engine:
    def __init__(self, eid: int) -> None:
        self.eid = eid
        self.alive = True
        self.tasks: queue.Queue[tuple[FakeTask, Callable[..., Any]] | None] = (
            queue.Queue()
        )
        self.running: FakeTask | None = None
        self.thread = threading.Thread(target=self._work, daemon=True)
        self.thread.start()

    def _work(self) -> None:
        _here.engine = self.eid
        while True:
            entry = self.tasks.get()
            if entry is None:
                return
            task, func = entry
            if task.done():  # aborted while queued
                continue
            self.running = task
            try:
                value = func(*task.args)
            except BaseException as err:  # an engine reports whatever it raised
                task.settle(error=ipp.error.RemoteError(type(err).__name__, str(err)))
            else:
                task.settle(value)
            finally:
                self.running = None


class FakePool:
    """``n`` engines in threads; see the module's docstring."""

    depth = 2

    def __init__(self, n: int = 2) -> None:
        self.epoch = 0
        self._engines = {eid: _Engine(eid) for eid in range(n)}
        self.reserved: set[int] = set()
        self.stale: set[int] = set()
        #: (engine, first index, number of items) of every chunk sent
        self.sent: list[tuple[int, int, int]] = []
        self.forgotten: set[int] = set()
        self.interrupted: list[FakeTask] = []
        self.purged = 0
        self.joined: list[int] = []
        #: (engine, function's name) of every task submitted
        self.tasks: list[tuple[int, str]] = []
        #: engines names were shipped to, checked (send_names) or not
        self.shipped: list[int] = []
        self.wanted: list[int] = []
        self.active = True
        self.controller_up = True
        self.launch_error: str | None = None
        self._stop_callbacks: list[Callable[[], None]] = []
        self._lock = threading.Lock()

    # -- what a test does to the engines ---------------------------------

    def kill(self, eid: int) -> None:
        """The engine dies: what it holds fails as a dead engine's tasks do."""
        engine = self._engines[eid]
        engine.alive = False
        death = ipp.error.EngineError(f"engine {eid} died")
        if engine.running is not None:
            engine.running.settle(error=death)
        while True:
            try:
                entry = engine.tasks.get_nowait()
            except queue.Empty:
                break
            if entry is not None:
                entry[0].settle(error=death)
        engine.tasks.put(None)

    def kill_this_engine(self) -> None:
        """Called from an item: the engine running it dies."""
        self.kill(_here.engine)

    def add_engine(self) -> int:
        eid = max(self._engines) + 1
        self._engines[eid] = _Engine(eid)
        return eid

    def stop(self) -> None:
        """The cluster stops: what was told so first is told."""
        for callback in self._stop_callbacks:
            callback()
        self.active = False

    def close(self) -> None:
        for engine in self._engines.values():
            engine.tasks.put(None)

    def engines_used(self) -> set[int]:
        return {eid for eid, _, _ in self.sent}

    # -- EnginePool ------------------------------------------------------

    def engine_ids(self) -> list[int]:
        return sorted(eid for eid, e in self._engines.items() if e.alive)

    def unreserved_engine_ids(self) -> list[int]:
        return [eid for eid in self.engine_ids() if eid not in self.reserved]

    def stale_engines(self) -> set[int]:
        return set(self.stale)

    def engines_coming(self) -> bool:
        return False

    def engines_expected(self) -> bool:
        return False

    def ensure_engines(self) -> None:
        return None

    def want(self, engines: int, why: str, *, retry: bool = False) -> int:
        self.wanted.append(engines)
        return 0

    def join(self, engine: int, shipment: Any) -> None:
        self.joined.append(engine)

    def to_kernel_clock(self, engine: int, engine_time: float) -> float:
        return engine_time

    def controller_responds(self) -> bool:
        return self.controller_up

    def pack(self, obj: Any) -> Any:
        return obj

    def submit(self, engine: int, func: Callable[..., Any], *args: Any) -> Any:
        task = FakeTask(engine, args)
        with self._lock:
            self.tasks.append((engine, func.__name__))
            if func.__name__ == "run_chunk":
                self.sent.append((engine, args[1], len(args[2])))
        target = self._engines[engine]
        if not target.alive:
            task.settle(error=ipp.error.EngineError(f"engine {engine} is dead"))
        else:
            target.tasks.put((task, func))
        return task

    def interrupt(self, tasks: dict[Any, int], grace: float = 0.0) -> list[Any]:
        aborted = ipp.error.TaskAborted("aborted")
        left = []
        for task in tasks:
            self.interrupted.append(task)
            if task is self._engines[tasks[task]].running:
                left.append(task)  # threads cannot be interrupted: still out
            else:
                task.settle(error=aborted)
        return left

    def purge(self, task: Any) -> None:
        self.purged += 1

    def forget_engines(self, ids: Iterable[int]) -> None:
        self.forgotten.update(ids)

    # -- JobPool -----------------------------------------------------------

    def require_controller(self) -> None:
        if not self.controller_up:
            raise RuntimeError("the fake controller is down")

    def can_launch(self) -> bool:
        return False

    def reserve(self, engine: int, label: str = "job") -> None:
        self.reserved.add(engine)

    def release(self, engine: int) -> None:
        self.reserved.discard(engine)

    def send_names(self, engines: Sequence[int], shipment: Any) -> Any:
        self.ship_names(engines, shipment)
        return shipment

    def ship_names(
        self, engines: Sequence[int], shipment: Any, *, block: bool = True
    ) -> None:
        if shipment is None:
            return
        entries: dict[str, tuple[str, Any]] = {}
        arrays: list[Any] = []
        for payload in shipment.names.values():
            if payload.kind == "array":
                entries[payload.digest] = ("array", len(arrays))
                arrays.append(payload.payload)
            else:
                entries[payload.digest] = (payload.kind, payload.payload)
        with self._lock:
            self.shipped.extend(engines)
        _enginenames.install_names(entries, (), shipment.sources, *arrays)

    def release_dropped_arrays(self) -> None:
        """Nothing to free: the fake's engines share the test's memory."""

    def on_stop(self, callback: Callable[[], None]) -> None:
        self._stop_callbacks.append(callback)

    def busy(self) -> contextlib.AbstractContextManager[None]:
        """Nothing is ever released here (see release_dropped_arrays)."""
        return contextlib.nullcontext()

    def add_work_check(self, check: Callable[[], bool]) -> None:
        """Nothing is ever released here: no need to ask."""
