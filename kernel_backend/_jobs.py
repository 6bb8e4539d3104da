"""Background cells: jobs, their queue, and bringing their names back.

A :class:`CellJob` runs one cell on one free engine.  Jobs beyond the free
engines wait in a client-side queue ordered by priority, then submission.  A
monitor thread dispatches queued jobs, watches running ones (completion,
engine death, timeouts) and tells an observer when a job ends; *when* its
names land in the notebook is the IPython layer's decision (between cells),
made through :meth:`JobManager.deliver`.
"""

from __future__ import annotations

import ast
import asyncio
import concurrent.futures
import contextlib
import enum
import heapq
import itertools
import symtable
import threading
import time
import types
from collections.abc import Callable, Generator, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from ._cachedcell import CellCache
from ._engine import CellOutcome, ItemFailure, TaskSpec, run_cell
from ._errors import EnginesDied, InvalidRequest, is_engine_death
from ._names import free_names
from ._pool import OUTPUT_WAIT, SETTLE
from ._seeding import fresh_entropy
from ._shipping import prepare_shipment
from ._signal import Signal

__all__ = [
    "CellJob",
    "Delivery",
    "JobError",
    "JobManager",
    "bound_names",
    "default_jobs",
]

JobState = Literal["queued", "running", "done", "failed", "cancelled"]
_ABSENT = object()


class Stop(enum.Enum):
    """Why a job was stopped before it ended by itself."""

    CANCELLED = "cancelled"  # job.cancel(), %jobs cancel, the cluster stopping
    TIMED_OUT = "timed out"  # --timeout


_TICK = 0.25  # how often running jobs are looked at (and their views refreshed)
#: How long an idle monitor waits for the next job before its thread ends:
#: cells run one after another should not start a thread each.
_MONITOR_LINGER = 2.0


def bound_names(source: str) -> list[str]:
    """Names a cell binds at top level, in order of first appearance.

    Assignments, ``for``/``with`` targets, walrus, ``def``, ``class`` and
    imports all count; attribute and item assignments do not.
    """
    table = symtable.symtable(source, "<cell>", "exec")
    bound = {
        s.get_name()
        for s in table.get_symbols()
        if (s.is_assigned() or s.is_imported()) and not s.get_name().startswith("__")
    }
    first_seen: dict[str, tuple[int, int]] = {}
    for node in ast.walk(ast.parse(source)):
        name = None
        if isinstance(node, ast.Name):
            name = node.id
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            name = node.name
        elif isinstance(node, ast.alias):
            name = (node.asname or node.name).split(".")[0]
        if name in bound:
            where = (getattr(node, "lineno", 0), getattr(node, "col_offset", 0))
            first_seen[name] = min(first_seen.get(name, where), where)
    return sorted(first_seen, key=first_seen.__getitem__)


def modules_already_here(source: str, namespace: Mapping[str, Any]) -> set[str]:
    """Names the cell only imports, that are modules in ``namespace`` already."""
    table = symtable.symtable(source, "<cell>", "exec")
    return {
        s.get_name()
        for s in table.get_symbols()
        if s.is_imported()
        and not s.is_assigned()
        and isinstance(namespace.get(s.get_name()), types.ModuleType)
    }


class JobError(Exception):
    """A background cell failed; shows the cell's remote traceback."""

    def __init__(self, message: str, remote_traceback: str = "") -> None:
        super().__init__(message)
        self.remote_traceback = remote_traceback

    def _render_traceback_(self) -> list[str]:
        lines = [f"{type(self).__name__}: {self}"]
        if self.remote_traceback:
            lines += ["", *self.remote_traceback.rstrip("\n").splitlines()]
        return lines


@dataclass
class Delivery:
    """What bringing a job's names into the notebook did."""

    pulled: list[str] = field(default_factory=list)
    kept: list[str] = field(default_factory=list)  # re-assigned here meanwhile
    failed: dict[str, str] = field(default_factory=dict)  # could not come back

    def notes(self, job_name: str) -> list[str]:
        lines = [
            f"paracell: job '{job_name}' did not overwrite '{name}': it was"
            " re-assigned in the notebook after the job was submitted"
            for name in self.kept
        ]
        lines += [
            f"paracell: job '{job_name}' could not send back '{name}': {why}"
            for name, why in self.failed.items()
        ]
        return lines


class CellJob(concurrent.futures.Future):  # type: ignore[type-arg]
    """A background cell: ``Future``-like (``result()`` is the value of the
    cell's last expression) and awaitable; ``state``, ``engine``, ``stdout``,
    ``stderr`` and ``elapsed`` are live.
    """

    #: whether a failed job still brings back the names it made
    partial_delivery = False

    def __init__(
        self,
        manager: JobManager,
        name: str,
        source: str,
        *,
        outputs: list[str],
        pull: bool,
        priority: float,
        retries: int,
        timeout: float | None,
        spec: TaskSpec,
        filename: str,
        snapshot: dict[str, Any],
    ) -> None:
        super().__init__()
        self._manager = manager
        self.name = name
        self.source = source
        self.outputs = outputs
        self.pull = pull
        self.priority = priority
        self.retries = retries
        self.timeout = timeout
        self.spec = spec
        self.filename = filename
        self._snapshot = snapshot
        self.state: JobState = "queued"
        self.engine: int | None = None
        self.host: str | None = None
        self.submitted = time.time()
        self.started: float | None = None
        self.finished: float | None = None
        self.attempts = 0
        self.values: dict[str, Any] = {}
        self.bundle: dict[str, Any] | None = None
        self.error: BaseException | None = None
        self.delivery: Delivery | None = None
        self._ar: Any = None
        self._stdout = ""
        self._stderr = ""
        self._updates: Signal[[CellJob]] = Signal(f"job {name!r}")
        #: why the job was stopped before it ended by itself, if it was
        self._stopped: Stop | None = None
        self._failed_names: dict[str, str] = {}
        self._seq = 0
        #: the namespace the job's names come back into
        self._namespace: Mapping[str, Any] | None = None
        self._shipment: Any = None
        #: brought back from the result store, run on no engine (--cache)
        self.from_cache = False

    # -- live facts --------------------------------------------------------

    @property
    def stdout(self) -> str:
        ar = self._ar
        return _task_output(ar, "stdout") if ar is not None else self._stdout

    @property
    def stderr(self) -> str:
        ar = self._ar
        return _task_output(ar, "stderr") if ar is not None else self._stderr

    @property
    def elapsed(self) -> float:
        if self.started is None:
            return 0.0
        return (self.finished or time.time()) - self.started

    @property
    def pending_names(self) -> list[str]:
        """Names this job will bring back and has not yet."""
        if (
            not self.pull
            or self.delivery is not None
            or self.state
            in (
                "failed",
                "cancelled",
            )
        ):
            return []
        return list(self.outputs)

    def progress_line(self) -> str | None:
        """Progress in words beyond state and time (a task graph's), or None."""
        return None

    def error_for(self, names: Sequence[str]) -> BaseException | None:
        """The error that kept ``names`` from coming back, if any."""
        return self.error if self.state == "failed" else None

    def _stop_running(self) -> None:
        """The cluster is going away: stop what runs (the monitor's job)."""

    def subscribe(self, observer: Callable[[CellJob], None]) -> Callable[[], None]:
        """Call ``observer(job)`` on state changes and while it runs; returns a
        function that unsubscribes."""
        return self._updates.subscribe(observer)

    def _notify(self) -> None:
        self._updates.emit(self)

    def summary(self) -> str:
        """E.g. ``job 'cell-7': done on engine 1 in 2.3 s``."""
        where = f" on engine {self.engine}" if self.engine is not None else ""
        if self.from_cache:
            return f"job '{self.name}': {self.state} from cache"
        if self.state == "queued":
            return f"job '{self.name}': queued (priority {self.priority:g})"
        if self.state == "running":
            return f"job '{self.name}': running{where}, {self.elapsed:.1f} s"
        text = f"job '{self.name}': {self.state}{where} in {self.elapsed:.1f} s"
        if self.state == "failed" and self.error is not None:
            text += f": {self.error}"
        return text

    # -- Future ----------------------------------------------------------

    def cancel(self) -> bool:
        """Queued: removed.  Running: interrupted on its engine, engine freed."""
        return self._manager.cancel(self)

    def running(self) -> bool:
        return self.state == "running"

    def __await__(self) -> Generator[Any, None, Any]:
        return asyncio.wrap_future(self).__await__()

    def __repr__(self) -> str:
        return self.summary()

    def _repr_pretty_(self, p: Any, cycle: bool) -> None:
        p.text(self.summary())

    # -- bookkeeping (under the manager's lock) ---------------------------

    def _finish(self, state: JobState, error: BaseException | None = None) -> None:
        self.state = state
        self.finished = time.time()
        # what it shipped holds the notebook's objects (a large array, its
        # shared-memory segment): an ended job must not keep them alive
        self._shipment = None
        if self._ar is not None:
            # the result can arrive before the last of the cell's output
            with contextlib.suppress(Exception):
                self._ar.wait_for_output(OUTPUT_WAIT)
            self._stdout = _task_output(self._ar, "stdout")
            self._stderr = _task_output(self._ar, "stderr")
            self._manager._purge(self._ar)
            self._ar = None
        if state == "cancelled":
            super().cancel()
        elif error is not None:
            self.error = error
            self.set_exception(error)
        else:
            value = self.values.get("__value__")
            self.set_result(value)


def _task_output(ar: Any, stream: str) -> str:
    """What a task has written to ``stream`` (stdout or stderr) so far.

    Read from the task's record of what arrived: ``ar.stdout`` first parses
    every timestamp of the task with dateutil (half a millisecond of a
    trivial cell's round trip, and a live view asks several times).
    """
    try:
        return str(ar._metadata[0].get(stream, "") or "")
    except (AttributeError, IndexError, KeyError, TypeError):
        return str(getattr(ar, stream, "") or "")


class JobManager:
    """The kernel's background jobs, their queue and their monitor."""

    def __init__(self, session: Any) -> None:
        self._session = session
        self._lock = threading.RLock()
        self._jobs: dict[str, CellJob] = {}
        self._queue: list[tuple[float, int, CellJob]] = []
        self._order = itertools.count()
        self._running: dict[int, CellJob] = {}  # engine -> job
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self._counter = itertools.count(1)
        # name -> (object, submission order) of the last value a job delivered
        self._delivered: dict[str, tuple[Any, int]] = {}
        #: called (from the monitor thread) when a job ends
        self.on_finished: Callable[[CellJob], None] | None = None
        self._changes: Signal[[]] = Signal("the jobs")
        session.on_stop(self.close)

    # -- change events -------------------------------------------------------

    def subscribe(self, observer: Callable[[], None]) -> Callable[[], None]:
        """Call ``observer()`` when a job is added, changes or is cleared (in
        the thread that changed it).  Returns a function that unsubscribes."""
        return self._changes.subscribe(observer)

    def _changed(self, *_: Any) -> None:
        self._changes.emit()

    # -- queries -----------------------------------------------------------

    def jobs(self) -> list[CellJob]:
        """Every job not cleared, oldest first."""
        with self._lock:
            return list(self._jobs.values())

    def get(self, name: str) -> CellJob:
        with self._lock:
            job = self._jobs.get(name)
        if job is None:
            known = ", ".join(self._jobs) or "none"
            raise InvalidRequest(f"no job named {name!r} (jobs: {known})")
        return job

    def waiting_above(self, priority: float) -> bool:
        """Whether a queued background cell has a priority above ``priority``."""
        with self._lock:
            return any(
                -entry[0] > priority and not entry[2].done() for entry in self._queue
            )

    def pending_names(self) -> dict[str, CellJob]:
        """Name -> the newest job that will bring it back."""
        with self._lock:
            found: dict[str, CellJob] = {}
            for job in self._jobs.values():
                for name in job.pending_names:
                    found[name] = job
            return found

    # -- submitting --------------------------------------------------------

    def submit(
        self,
        source: str,
        namespace: Mapping[str, Any],
        *,
        name: str | None = None,
        outputs: Sequence[str] | None = None,
        pull: bool = True,
        seed: int | None = None,
        retries: int = 0,
        timeout: float | None = None,
        priority: float = 0.0,
        cache: bool | str | None = None,
        ship_large: bool = False,
    ) -> CellJob:
        """Queue ``source`` (plain Python) to run on a free engine.

        ``cache``: ``True`` or a store's name: a cell run before with the
        same code and inputs is done at once, its outcome from the store;
        otherwise its outcome is stored when it finishes.

        Raises ``SyntaxError`` (the user's) before anything is sent, and
        ``InvalidRequest`` for names that cannot be shipped.
        """
        compile(source, name or "<cell>", "exec")  # the user's SyntaxError, here
        bound = bound_names(source)
        if outputs is not None:
            unknown = [n for n in outputs if n not in bound]
            if unknown:
                raise InvalidRequest(
                    f"--out names {unknown[0]!r}, which the cell does not assign"
                    f" (it assigns: {', '.join(bound) or 'nothing'})"
                )
        if outputs is not None:
            wanted = list(outputs)
        else:
            # ``import time`` in a job brings nothing new where the notebook
            # has that module already: no name to wait for, nothing to send
            here = modules_already_here(source, namespace)
            wanted = [n for n in bound if n not in here]
        stored = CellCache.for_cell(
            cache, source, namespace, seed=seed, outputs=wanted, pull=pull
        )
        record = None if stored is None else stored.lookup()
        if record is not None:
            return self._from_store(name, source, namespace, record, wanted, pull)
        shipment = prepare_shipment(
            free_names(source, "exec"), namespace, ship_large=ship_large
        )
        session = self._session
        client = session.client
        session.require_controller()
        if (
            not session.engine_ids()
            and not session.can_launch()
            and not session.engines_coming()
        ):
            raise InvalidRequest(
                "the cluster has no engines; add some with %cluster scale N"
            )
        with self._lock:
            if name is None:
                name = self._fresh_name()
            self._check_name_free(name)
        # Check names and imports on the engines that are free now, without
        # the manager's lock (it waits on the network) and without waiting
        # behind engines busy with other jobs; the engine the job lands on
        # gets what it lacks when the job is sent (_dispatch).
        free = [
            e
            for e in session.unreserved_engine_ids()
            if e not in session.stale_engines()
        ]
        while free:
            try:
                shipment = session.shipper.send(client, free, shipment)
                break
            except EnginesDied as err:  # the engine that runs it ships again
                session.forget_engines(err.engines)
                free = [e for e in free if e not in err.engines]
        spec = TaskSpec(
            key=f"job-{name}-{time.time()}",
            **shipment.spec_names(),
            seed=seed,
            entropy=fresh_entropy(),
        )
        with self._lock:
            self._check_name_free(name)
            job = CellJob(
                self,
                name,
                source,
                outputs=wanted,
                pull=pull,
                priority=priority,
                retries=retries,
                timeout=timeout,
                spec=spec,
                filename=f"<{name}>",
                snapshot={n: namespace.get(n, _ABSENT) for n in wanted},
            )
            job._shipment = shipment
            self._register(job, namespace)
            heapq.heappush(self._queue, (-priority, next(self._order), job))
            self._ensure_monitor()
            # engines on demand: one per job, if none is free
            session.want(
                len(self._running) + len(self._queue), "background jobs", retry=True
            )
        if stored is not None:
            job.add_done_callback(stored.save)
        job.subscribe(self._changed)
        self._changed()
        self._wake.set()
        return job

    def _from_store(
        self,
        name: str | None,
        source: str,
        namespace: Mapping[str, Any],
        record: dict[str, Any],
        wanted: list[str],
        pull: bool,
    ) -> CellJob:
        """A job done at once with a stored outcome (``--cache``)."""
        with self._lock:
            name = name or self._fresh_name()
            self._check_name_free(name)
            job = CellJob(
                self,
                name,
                source,
                outputs=wanted,
                pull=pull,
                priority=0.0,
                retries=0,
                timeout=None,
                spec=TaskSpec(key=f"job-{name}-stored"),
                filename=f"<{name}>",
                snapshot={n: namespace.get(n, _ABSENT) for n in wanted},
            )
            job.from_cache = True
            job.values = dict(record["values"])
            job._failed_names = dict(record["failed"])
            job.bundle = record["bundle"]
            job._stdout, job._stderr = record["stdout"], record["stderr"]
            job.started = time.time()
            self._register(job, namespace)
            job._finish("done")
        job.subscribe(self._changed)
        self._changed()
        return job

    def _register(self, job: CellJob, namespace: Mapping[str, Any]) -> None:
        """Make ``job`` the one of its name (newest last), under the lock."""
        job._namespace = namespace
        job._seq = next(self._order)
        self._jobs.pop(job.name, None)
        self._jobs[job.name] = job

    def _check_name_free(self, name: str) -> None:
        old = self._jobs.get(name)
        if old is not None and not old.done():
            raise InvalidRequest(
                f"job {name!r} is still {old.state};"
                f" choose another --name, or %jobs cancel {name}"
            )

    def _fresh_name(self) -> str:
        while True:
            name = f"job-{next(self._counter)}"
            if name not in self._jobs:
                return name

    # -- waiting, cancelling, delivering ---------------------------------

    def wait(self, jobs: Iterable[CellJob], timeout: float | None = None) -> None:
        """Block until ``jobs`` end (interruptible: only the waiting stops).

        Raises ``InvalidRequest`` instead of waiting on a queued job that
        nothing can start (no engines, and none coming), saying why.
        """
        for job in jobs:
            deadline = None if timeout is None else time.monotonic() + timeout
            while not job.done():
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    raise TimeoutError(f"job {job.name!r} still {job.state}")
                self.check_startable(job)
                # short waits keep KeyboardInterrupt responsive
                concurrent.futures.wait([job], timeout=min(0.1, left or 0.1))

    def check_startable(self, job: CellJob) -> None:
        """Raise ``InvalidRequest`` saying why, if nothing can start ``job``."""
        why = self.why_stuck(job)
        if why is not None:
            raise InvalidRequest(
                f"job '{job.name}' is queued, but {why}; it runs once there are engines"
            )

    def why_stuck(self, job: CellJob) -> str | None:
        """Why a queued ``job`` cannot start now nor by itself later, or None."""
        if job.state != "queued":
            return None
        session = self._session
        if not session.active:
            return "no cluster is active: start one with %cluster start"
        if not session.controller_responds():
            return (
                "the cluster's controller does not answer:"
                " %cluster stop, then %cluster start"
            )
        if (
            not session.engine_ids()
            and not session.engines_expected()
            and not session.engines_coming()
            and not session.can_launch()
        ):
            if session.launch_error is not None:
                return f"launching engines on demand failed ({session.launch_error})"
            return "the cluster has no engines: start or scale it (%cluster scale N)"
        return None

    def cancel(self, job: CellJob) -> bool:
        with self._lock:
            if job.done():
                return False
            if job.state == "queued":
                self._queue = [entry for entry in self._queue if entry[2] is not job]
                heapq.heapify(self._queue)
                job._finish("cancelled")
                job._notify()
                self._ended(job)
                return True
            job._stopped = Stop.CANCELLED  # also over a timeout under way
            self._interrupt(job)
        return True

    def deliver(self, namespace: dict[str, Any]) -> list[tuple[CellJob, Delivery]]:
        """Bring finished jobs' names into ``namespace`` (call between cells).

        A name the user re-assigned after submitting the job is kept as the
        user left it.
        """
        done = []
        with self._lock:
            ready = [
                job
                for job in self._jobs.values()
                if _deliverable(job)
                and job.pull
                and job.delivery is None
                and job._namespace is namespace
            ]
            for job in ready:
                job.delivery = self._pull(job, namespace)
                done.append((job, job.delivery))
        return done

    def deliver_job(
        self, job: CellJob, namespace: Mapping[str, Any] | None
    ) -> Delivery | None:
        """Deliver one job now (after an explicit or implicit wait), into the
        namespace it was submitted from."""
        with self._lock:
            if not _deliverable(job) or not job.pull or job.delivery is not None:
                return None
            if namespace is None or namespace is not job._namespace:
                return None
            job.delivery = self._pull(job, namespace)
            return job.delivery

    def _pull(self, job: CellJob, namespace: Any) -> Delivery:
        delivery = Delivery()
        for name in job.outputs:
            if name in job._failed_names:
                delivery.failed[name] = job._failed_names[name]
                continue
            if name not in job.values:
                continue
            before = job._snapshot.get(name, _ABSENT)
            now = namespace.get(name, _ABSENT)
            if now is not before:
                # Changed since submission: by the user (keep theirs), or by
                # delivering another job (the later-submitted job wins).
                source = self._delivered.get(name)
                by_job = source is not None and source[0] is now
                if source is None or not by_job or source[1] > job._seq:
                    if not by_job:
                        delivery.kept.append(name)
                    continue
            namespace[name] = job.values[name]
            self._delivered[name] = (job.values[name], job._seq)
            delivery.pulled.append(name)
        # remember delivered values only while another job may still need
        # the comparison: never keep a user's big object alive for nothing
        waiting = {
            n for j in self._jobs.values() if j is not job for n in j.pending_names
        }
        for name in [n for n in self._delivered if n not in waiting]:
            del self._delivered[name]
        return delivery

    def clear(self) -> list[str]:
        """Forget finished jobs; returns their names."""
        with self._lock:
            gone = [n for n, j in self._jobs.items() if j.done()]
            for name in gone:
                del self._jobs[name]
        if gone:
            self._changed()
        return gone

    def close(self) -> None:
        """Cancel every job that has not ended (the cluster is going away)."""
        with self._lock:
            active = [job for job in self._jobs.values() if not job.done()]
            self._queue.clear()
            for engine in self._running:
                self._session.release(engine)
            self._running.clear()
            for job in active:
                job._stopped = Stop.CANCELLED
                job._stop_running()
                job._finish("cancelled")
        for job in active:
            job._notify()
            self._ended(job)
        self._wake.set()

    # -- the monitor -------------------------------------------------------

    def _ensure_monitor(self) -> None:
        if self._thread is None or not self._thread.is_alive():
            self._thread = threading.Thread(
                target=self._monitor, name="paracell-jobs", daemon=True
            )
            self._thread.start()

    def _monitor(self) -> None:
        last_busy = time.monotonic()
        while True:
            self._wake.wait(_TICK)
            self._wake.clear()
            with self._lock:
                busy = bool(self._queue or self._running)
            if busy:
                last_busy = time.monotonic()
            elif time.monotonic() - last_busy > _MONITOR_LINGER:
                # nothing to watch for a while: stop until the next submit
                with self._lock:
                    if not (self._queue or self._running):
                        self._thread = None
                        return
            try:
                self._step()
            except Exception:  # the monitor must not die; try again next tick
                time.sleep(_TICK)

    def _step(self) -> None:
        ended: list[CellJob] = []
        try:
            if self._running and not self._session.controller_responds():
                ended += self._fail_all("the cluster's controller stopped answering")
            with self._lock:
                for engine, job in list(self._running.items()):
                    ar = job._ar
                    if ar is not None and ar.done():
                        del self._running[engine]
                        self._session.release(engine)
                        if self._collect(job, ar):
                            ended.append(job)
                    elif (
                        job.timeout is not None
                        and job.elapsed > job.timeout
                        and job._stopped is None
                    ):
                        job._stopped = Stop.TIMED_OUT
                        self._interrupt(job)
                ended += self._dispatch()
                running = list(self._running.values())
        finally:
            for job in ended:
                job._notify()
                self._ended(job)
        for job in running:
            job._notify()  # live views: elapsed time, streamed output

    def _fail_all(self, why: str) -> list[CellJob]:
        """End every job that has not ended: the cluster is lost."""
        with self._lock:
            active = [job for job in self._jobs.values() if not job.done()]
            self._queue.clear()
            for engine in self._running:
                self._session.release(engine)
            self._running.clear()
            for job in active:
                job._finish("failed", JobError(f"job '{job.name}' ended: {why}"))
        return active

    def _dispatch(self) -> list[CellJob]:
        """Send queued jobs to free engines; returns jobs that failed to go."""
        session = self._session
        if not session.active:
            return []
        client = session.client
        stale = session.stale_engines()
        # engines a task graph's statements run on are reserved too
        free = [
            eid
            for eid in session.unreserved_engine_ids()
            if eid not in self._running and eid not in stale
        ]
        failed = []
        while self._queue and free:
            _, _, job = heapq.heappop(self._queue)
            if job.done():
                continue
            engine = free.pop(0)
            job.attempts += 1
            job.engine = engine
            job.started = job.started or time.time()
            try:
                # queued on the engine ahead of the cell: no waiting here
                session.shipper.ship(client, [engine], job._shipment, block=False)
                job._ar = client[engine].apply_async(
                    run_cell, job.spec, job.source, job.filename, job.outputs
                )
            except Exception as err:
                job._finish(
                    "failed", JobError(f"job '{job.name}' could not be sent: {err}")
                )
                failed.append(job)
                continue
            job.state = "running"
            session.reserve(engine, job.name)
            # wake the monitor the moment the task ends, not at the next tick
            job._ar.add_done_callback(lambda _: self._wake.set())
            self._running[engine] = job
            job._notify()
        if self._queue and not free:
            # jobs wait for an engine: engines on demand start for them
            session.want(len(self._running) + len(self._queue), "background jobs")
        return failed

    def _collect(self, job: CellJob, ar: Any) -> bool:
        """Take a finished task's outcome; False if the job was re-queued."""
        import cloudpickle
        import ipyparallel as ipp

        try:
            outcome: CellOutcome = ar.get(SETTLE)
        except Exception as err:
            if is_engine_death(err):
                self._session.forget_engines([job.engine])
                if job.attempts <= job.retries and job._stopped is None:
                    self._purge(ar)
                    job._ar = None
                    job.state = "queued"
                    heapq.heappush(self._queue, (-job.priority, next(self._order), job))
                    return False
                error: BaseException = JobError(
                    f"engine {job.engine} died while running job '{job.name}'"
                    + (f" (after {job.attempts} attempts)" if job.attempts > 1 else "")
                )
            elif (
                isinstance(err, ipp.error.RemoteError)
                and err.ename == "KeyboardInterrupt"
            ):
                error = JobError(f"job '{job.name}' {_stop_text(job)}")
            else:
                error = JobError(
                    f"job '{job.name}' could not run on engine {job.engine}: {err}",
                    getattr(err, "traceback", "") or "",
                )
            if job._stopped is Stop.CANCELLED:
                job._finish("cancelled")
            else:
                job._finish("failed", error)
            return True
        job.host = outcome.host
        # the engine's clock, read on the kernel's (engines elsewhere run
        # their own clocks: see _clock)
        job.started = self._session.to_kernel_clock(job.engine, outcome.started)
        if outcome.interrupted or job._stopped is not None:
            _finish_stopped(job)
            return True
        job.bundle = outcome.bundle
        if outcome.failure is not None:
            failure: ItemFailure = outcome.failure
            job._finish(
                "failed",
                JobError(
                    f"job '{job.name}' failed on engine {job.engine}:"
                    f" {failure.type_name}: {failure.message}",
                    failure.traceback,
                ),
            )
            return True
        job._failed_names = dict(outcome.unpicklable)
        for name, data in outcome.values.items():
            try:
                job.values[name] = cloudpickle.loads(data)
            except Exception as err:
                job._failed_names[name] = f"{type(err).__name__}: {err}"
        if outcome.value is not None:
            with contextlib.suppress(Exception):
                job.values["__value__"] = cloudpickle.loads(outcome.value)
        job._finish("done")
        job.finished = job.started + outcome.seconds if job.started else job.finished
        return True

    def _interrupt(self, job: CellJob) -> None:
        """Stop a running job's task on its engine, without blocking."""
        ar, engine = job._ar, job.engine
        if ar is None or engine is None:
            return

        def stop() -> None:
            still_running = self._session.interrupt({ar: engine})
            ended = False
            if still_running:
                # it would not stop (the session keeps new work off that
                # engine meanwhile); the job ends here all the same
                with self._lock:
                    if self._running.get(engine) is job:
                        del self._running[engine]
                        self._session.release(engine)
                        _finish_stopped(job)
                        ended = True
            if ended:
                job._notify()
                self._ended(job)
            self._wake.set()

        threading.Thread(target=stop, name="paracell-cancel", daemon=True).start()

    def _ended(self, job: CellJob) -> None:
        callback = self.on_finished
        if callback is not None:
            with contextlib.suppress(Exception):
                callback(job)

    def _purge(self, ar: Any) -> None:
        self._session.purge(ar)


def _stop_text(job: CellJob) -> str:
    """Why ``job`` stopped, as the end of ``job 'name' ...``."""
    if job._stopped is Stop.TIMED_OUT:
        return f"ran past its timeout of {job.timeout:g} s"
    if job._stopped is Stop.CANCELLED:
        return "was cancelled"
    return "was interrupted"


def _finish_stopped(job: CellJob) -> None:
    """End a job that was stopped: cancelled, or failed past its timeout."""
    if job._stopped is Stop.TIMED_OUT:
        job._finish("failed", JobError(f"job '{job.name}' {_stop_text(job)}"))
    else:
        job._finish("cancelled")


def _deliverable(job: CellJob) -> bool:
    return job.state == "done" or (job.state == "failed" and job.partial_delivery)


_default: JobManager | None = None
_default_lock = threading.Lock()


def default_jobs() -> JobManager:
    """The jobs of the process-wide session (what ``%jobs`` lists)."""
    global _default
    from ._session import default_session

    with _default_lock:
        if _default is None:
            _default = JobManager(default_session())
        return _default
