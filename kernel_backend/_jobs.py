"""Background cells: the queue of jobs and the monitor that runs them.

A :class:`~._celljob.CellJob` runs one cell on one free engine.  Jobs beyond
the free engines wait in a client-side queue ordered by priority, then
submission.  A monitor thread dispatches queued jobs, watches running ones
(completion, engine death, timeouts) and tells an observer when a job ends;
*when* its names land in the notebook is the IPython layer's decision
(between cells), made through :meth:`JobManager.deliver`.

The manager reaches engines only through a :class:`~._pool.JobPool`
(:class:`~._session.ClusterSession` on a cluster; an in-process fake in
the tests).  What a finished task means for its job is :mod:`._jobend`'s;
bringing names back is :mod:`._jobdelivery`'s.
"""

from __future__ import annotations

import contextlib
import itertools
import threading
import time
from collections.abc import Callable, Iterable, Mapping, MutableMapping, Sequence
from typing import Any, cast

from ._cachedcell import CellCache
from ._celljob import CellJob, JobError, JobState, Stop
from ._engine import TaskSpec
from ._errors import InvalidRequest
from ._jobdelivery import (
    Deliveries,
    Delivery,
    bound_names,
    deliverable,
    modules_already_here,
    snapshot,
    wanted_names,
)
from ._jobqueue import JobQueue
from ._names import cell_reads, check_syntax
from ._pool import JobPool, require_engines, send_to_free_engines, why_no_engines
from ._seeding import fresh_entropy
from ._shipment import Shipment, prepare_shipment
from ._signal import Signal
from ._waiting import finished

__all__ = [
    "CellJob",
    "Delivery",
    "JobError",
    "JobManager",
    "Stop",
    "bound_names",
    "default_jobs",
    "modules_already_here",
]


class JobManager:
    """The kernel's background jobs, their queue and their monitor."""

    def __init__(self, pool: JobPool) -> None:
        self._pool = pool
        self._lock = threading.RLock()
        self._jobs: dict[str, CellJob] = {}
        self._queue = JobQueue(pool, self._lock, ended=self._ended, lost=self._lose_all)
        self._order = itertools.count()
        self._counter = itertools.count(1)
        self._deliveries = Deliveries()
        #: called (from the monitor thread) when a job ends
        self.on_finished: Callable[[CellJob], None] | None = None
        self._changes: Signal[[]] = Signal("the jobs")
        pool.on_stop(self.close)
        # arrays the notebook drops stay on engines while a job may read them
        pool.add_work_check(self._work_under_way)

    @property
    def pool(self) -> JobPool:
        """The engines jobs run on."""
        return self._pool

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
            return self._queue.waiting_above(priority)

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
        announce: Callable[[Any], None] | None = None,
    ) -> CellJob:
        """Queue ``source`` (plain Python) to run on a free engine.

        ``cache``: ``True`` or a store's name: a cell run before with the
        same code and inputs is done at once, its outcome from the store,
        and no engine is started for it; otherwise its outcome is stored
        when it finishes.  ``announce`` gets the report of engines started
        for the job (the embedded local cluster when none was active).

        Raises ``SyntaxError`` (the user's) before anything is sent, and
        ``InvalidRequest`` for names that cannot be shipped.
        """
        check_syntax(source, name or "<cell>")  # the user's SyntaxError, here
        wanted = wanted_names(source, bound_names(source), namespace, outputs)
        stored = CellCache.for_cell(
            cache, source, namespace, seed=seed, outputs=wanted, pull=pull
        )
        record = None if stored is None else stored.lookup()
        if record is not None:
            return self._from_store(name, source, namespace, record, wanted, pull)
        report = self._pool.ensure_engines()
        if report is not None and announce is not None:
            announce(report)
        # busy: from the digest to the job being known (it then counts as
        # work under way) nothing the shipment relies on is released
        with self._pool.busy():
            shipment = self._checked_shipment(source, namespace, ship_large)
            name = self.claim_name(name)
            # sent without the manager's lock (it waits on the network); the
            # engine the job lands on gets what it lacks when the job is sent
            shipment = send_to_free_engines(self._pool, shipment)
            job = CellJob(
                self,
                name,
                source,
                outputs=wanted,
                pull=pull,
                priority=priority,
                retries=retries,
                timeout=timeout,
                spec=_spec(f"job-{name}-{time.time()}", shipment, seed),
                filename=f"<{name}>",
                snapshot=snapshot(namespace, wanted),
                shipment=shipment,
            )
            self.add(job, namespace, queue=True)
        if stored is not None:
            job.add_done_callback(stored.save)
        return job

    def _checked_shipment(
        self, source: str, namespace: Mapping[str, Any], ship_large: bool
    ) -> Shipment:
        """What the cell reads from the notebook, once engines are there for it
        (raises ``InvalidRequest`` for a name that cannot be shipped)."""
        shipment = prepare_shipment(
            cell_reads(source, namespace), namespace, ship_large=ship_large
        )
        require_engines(self._pool)
        return shipment

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
            name = self.claim_name(name)
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
                snapshot=snapshot(namespace, wanted),
            )
            job.restore(record)
            job.finish("done")
            self.add(job, namespace)
        return job

    def _work_under_way(self) -> bool:
        """Whether a job is queued or running.  Read without the manager's
        lock: the session asks while holding its own, and elsewhere this
        lock is taken first (taking it here could deadlock)."""
        return any(
            job.state in ("queued", "running") for job in list(self._jobs.values())
        )

    def release_dropped_arrays(self) -> None:
        """Between cells: let engines free the large arrays the notebook
        dropped, unless a job is queued or running (its tasks may read them;
        the pool asks the same of releases the drop itself asks for)."""
        if not self._work_under_way():
            self._pool.release_dropped_arrays()

    def claim_name(self, name: str | None) -> str:
        """``name``, if no job of that name is still going; a fresh name
        (``job-N``) for None.  Raises ``InvalidRequest`` naming the job."""
        with self._lock:
            if name is None:
                return self._fresh_name()
            self._check_name_free(name)
            return name

    def add(
        self, job: CellJob, namespace: Mapping[str, Any], *, queue: bool = False
    ) -> None:
        """Make ``job`` the one of its name (newest last), submitted from
        ``namespace``; ``queue``: waiting for an engine (else it runs itself,
        as a task graph does)."""
        with self._lock:
            self._check_name_free(job.name)
            job.registered(namespace, next(self._order))
            self._jobs.pop(job.name, None)
            self._jobs[job.name] = job
            if queue:
                self._queue.push(job)
        if queue:
            # sent now if an engine is free (no hand-off to the monitor, which
            # is not woken: it would only compete with this thread); if none
            # is, the monitor sends it when a task ends, or at its next tick
            self._queue.dispatch()
            with self._lock:
                self._queue.want_engines(retry=True)
        else:
            self._queue.wake()
        job.subscribe(self._changed)
        self._changed()

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
            # not job.done(): it takes the job's lock, and an interrupt landing
            # just as it has (this runs in the notebook's main thread) would
            # leave it taken, and the job could never end
            while not finished(job):
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    raise TimeoutError(f"job {job.name!r} still {job.state}")
                self.check_startable(job)
                # short waits keep KeyboardInterrupt responsive
                self.wait_briefly(job, min(0.1, left or 0.1))

    def wait_briefly(self, job: CellJob, timeout: float) -> None:
        """Wait up to ``timeout`` s for ``job`` to end (it may not have when
        this returns); a finished task's outcome is taken in this thread."""
        self._queue.wait(job, timeout)

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
        return why_no_engines(self._pool)

    def cancel(self, job: CellJob) -> bool:
        with self._lock:
            if job.done():
                return False
            if job.state == "queued":
                self._queue.remove(job)
                job.finish("cancelled")
                job.notify()
                self._ended(job)
                return True
            self._queue.stop(job, Stop.CANCELLED)  # also over a timeout under way
        return True

    def end(
        self, job: CellJob, state: JobState, error: BaseException | None = None
    ) -> None:
        """End a job that runs itself (a task graph), unless it has ended."""
        with self._lock:
            if job.done():  # the cluster stopped meanwhile: already cancelled
                return
            job.finish(state, error)
        job.notify()
        self._ended(job)

    def deliver(self, namespace: dict[str, Any]) -> list[tuple[CellJob, Delivery]]:
        """Bring finished jobs' names into ``namespace`` (call between cells).

        A name the user re-assigned after submitting the job is kept as the
        user left it.
        """
        with self._lock:
            ready = [job for job in self._jobs.values() if job.namespace is namespace]
            done = []
            for job in ready:
                delivery = self.deliver_job(job, namespace)
                if delivery is not None:
                    done.append((job, delivery))
        return done

    def deliver_job(
        self, job: CellJob, namespace: Mapping[str, Any] | None
    ) -> Delivery | None:
        """Deliver one job now (after an explicit or implicit wait), into the
        namespace it was submitted from."""
        with self._lock:
            if not deliverable(job) or not job.pull or job.delivery is not None:
                return None
            if namespace is None or namespace is not job.namespace:
                return None
            still_pending = {
                n for j in self._jobs.values() if j is not job for n in j.pending_names
            }
            # the namespace the job came from: the notebook's, a dict
            target = cast("MutableMapping[str, Any]", namespace)
            job.delivery = self._deliveries.pull(job, target, still_pending)
            return job.delivery

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
            for job in active:
                job.stop(Stop.CANCELLED)
                job.stop_running()
                job.finish("cancelled")
        for job in active:
            job.notify()
            self._ended(job)
        self._queue.wake()

    def _lose_all(self, why: str) -> list[CellJob]:
        """End every job that has not ended: the cluster is lost."""
        with self._lock:
            active = [job for job in self._jobs.values() if not job.done()]
            self._queue.clear()
            for job in active:
                job.finish("failed", JobError(f"job '{job.name}' ended: {why}"))
        return active

    def _ended(self, job: CellJob) -> None:
        callback = self.on_finished
        if callback is not None:
            with contextlib.suppress(Exception):
                callback(job)

    def purge(self, task: Any) -> None:
        """Forget a task whose outcome its job has taken."""
        self._pool.purge(task)


def _spec(key: str, shipment: Shipment, seed: int | None) -> TaskSpec:
    return TaskSpec(
        key=key, **shipment.spec_names(), seed=seed, entropy=fresh_entropy()
    )


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
