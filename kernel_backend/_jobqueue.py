"""Background cells waiting for an engine, and the monitor that runs them.

Jobs beyond the free engines wait in a client-side queue ordered by
priority, then submission.  A monitor thread sends queued jobs to free
engines, watches running ones (completion, engine death, timeouts) and
says when a job ends.  Two shortcuts keep a cell that waits for its job
(``%%parallel --block``) at ipyparallel's own latency: a job submitted
while an engine is free is sent from the submitting thread
(:meth:`JobQueue.dispatch`), and a thread waiting for a job takes its
outcome itself (:meth:`JobQueue.wait`) — no hand-off to the monitor and
back on either side.  What a finished task means for its job is
:mod:`._jobend`'s.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import heapq
import itertools
import threading
import time
from collections.abc import Callable
from typing import Any

from ._celljob import CellJob, JobError, Stop
from ._enginecell import run_cell
from ._errors import is_engine_death
from ._jobend import stopped_verdict, verdict_of_error, verdict_of_outcome
from ._pool import OUTPUT_WAIT, SETTLE, JobPool
from ._waiting import finished, wait_for

__all__ = ["JobQueue"]

_TICK = 0.25  # how often running jobs are looked at (and their views refreshed)
#: How long an idle monitor waits for the next job before its thread ends:
#: cells run one after another should not start a thread each.
_MONITOR_LINGER = 2.0


class JobQueue:
    """Queued and running jobs, and their monitor thread.

    Shares its owner's lock (:class:`~._jobs.JobManager`'s): ``ended(job)``
    is called, outside it, for each job that ends here, and
    ``lost(why)`` ends every job when the cluster is lost.
    """

    def __init__(
        self,
        pool: JobPool,
        lock: threading.RLock,
        *,
        ended: Callable[[CellJob], None],
        lost: Callable[[str], list[CellJob]],
    ) -> None:
        self._pool = pool
        self._lock = lock
        self._ended = ended
        self._lost = lost
        self._heap: list[tuple[float, int, CellJob]] = []
        self._order = itertools.count()
        self._running: dict[int, CellJob] = {}  # engine -> job
        #: jobs a thread waits for in :meth:`wait`: it takes their outcome
        self._awaited: dict[CellJob, int] = {}
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self._run_cell: Any = None

    # -- the queue (under the lock) ------------------------------------------

    def __len__(self) -> int:
        """Jobs waiting and running."""
        return len(self._heap) + len(self._running)

    def push(self, job: CellJob) -> None:
        """``job`` waits for an engine (again, after its engine died)."""
        heapq.heappush(self._heap, (-job.priority, next(self._order), job))
        if self._thread is None or not self._thread.is_alive():
            self._thread = threading.Thread(
                target=self._monitor, name="paracell-jobs", daemon=True
            )
            self._thread.start()

    def want_engines(self, *, retry: bool = False) -> None:
        """Engines on demand: one per job, if none is free."""
        self._pool.want(len(self), "background jobs", retry=retry)

    def remove(self, job: CellJob) -> None:
        self._heap = [entry for entry in self._heap if entry[2] is not job]
        heapq.heapify(self._heap)

    def waiting_above(self, priority: float) -> bool:
        return any(-p > priority and not job.done() for p, _, job in self._heap)

    def clear(self) -> None:
        """Forget every job (they are ending); their engines are free."""
        self._heap.clear()
        for engine in self._running:
            self._pool.release(engine)
        self._running.clear()

    def wake(self) -> None:
        """Look at the jobs now, not at the next tick."""
        self._wake.set()

    def dispatch(self) -> None:
        """Send queued jobs to free engines now, from this thread.

        A job submitted while an engine is free starts without waiting for
        the monitor thread to wake (a thread hand-off on the way out).
        """
        with self._lock:
            failed = self._dispatch()
        for job in failed:
            job.notify()
            self._ended(job)

    def wait(self, job: CellJob, timeout: float) -> None:
        """Wait up to ``timeout`` s for ``job`` to end; if its task finished
        meanwhile, take the outcome in this thread.

        The monitor is not woken for a task a thread waits on, so the
        outcome is not handed to the monitor and back (a thread hand-off
        on the way back); it still looks at the job at its next tick, should
        this thread stop waiting (interrupted, or a timeout) before.
        """
        with self._lock:
            self._awaited[job] = self._awaited.get(job, 0) + 1
        try:
            task = job.task
            waiting: list[concurrent.futures.Future[Any]] = [job]
            if isinstance(task, concurrent.futures.Future):
                waiting.append(task)
            # only once something ended: in the notebook's main thread, where
            # an interrupt can land anywhere, the task's lock is not taken on
            # every turn of a waiting loop (an interrupt landing just as
            # ``task.done()`` has taken it leaves it taken, and ipyparallel's
            # IO thread, resolving the task, then waits for it for ever)
            done, _ = wait_for(waiting, timeout, first=True)
            if done:
                self._take(job)
        finally:
            with self._lock:
                left = self._awaited.pop(job, 1) - 1
                if left:
                    self._awaited[job] = left
                task = job.task
                ended = not left and task is not None and finished(task)
            if ended:
                self._wake.set()  # nobody waits on it now: the monitor takes it

    def _take(self, job: CellJob) -> None:
        """Take ``job``'s outcome here if its task has finished."""
        _settle_output(job.task)
        with self._lock:
            task, engine = job.task, job.engine
            if task is None or engine is None or self._running.get(engine) is not job:
                return
            if not finished(task):
                return
            del self._running[engine]
            self._pool.release(engine)
            ended = self._collect(job, task)
        if ended:
            job.notify()
            self._ended(job)
        else:  # back in the queue (its engine died): the monitor sends it
            self._wake.set()

    def _task_ended(self, job: CellJob) -> None:
        """A job's task ended (ipyparallel's thread): wake the monitor,
        unless a thread waiting for the job takes it.  That thread is woken
        already, but needs the GIL, which this thread would hold through the
        messages that follow the reply: it lets go now (0.1-0.2 ms sooner)."""
        if job not in self._awaited:
            self._wake.set()
        else:
            time.sleep(0)

    def stop(self, job: CellJob, reason: Stop) -> None:
        """Stop a running job's task on its engine, without blocking."""
        job.stop(reason)
        task, engine = job.task, job.engine
        if task is None or engine is None:
            return

        def interrupt() -> None:
            still_running = self._pool.interrupt({task: engine})
            ended = False
            if still_running:
                # it would not stop (the pool keeps new work off that
                # engine meanwhile); the job ends here all the same
                with self._lock:
                    if self._running.get(engine) is job:
                        del self._running[engine]
                        self._pool.release(engine)
                        job.conclude(stopped_verdict(job))
                        ended = True
            if ended:
                job.notify()
                self._ended(job)
            self._wake.set()

        threading.Thread(target=interrupt, name="paracell-cancel", daemon=True).start()

    # -- the monitor -------------------------------------------------------

    def _monitor(self) -> None:
        last_busy = time.monotonic()
        while True:
            self._wake.wait(_TICK)
            self._wake.clear()
            with self._lock:
                busy = bool(self._heap or self._running)
            if busy:
                last_busy = time.monotonic()
            elif time.monotonic() - last_busy > _MONITOR_LINGER:
                # nothing to watch for a while: stop until the next submit
                with self._lock:
                    if not (self._heap or self._running):
                        self._thread = None
                        return
            try:
                self._step()
            except Exception:  # the monitor must not die; try again next tick
                time.sleep(_TICK)

    def _step(self) -> None:
        ended: list[CellJob] = []
        try:
            if self._running and not self._pool.controller_responds():
                ended += self._lost("the cluster's controller stopped answering")
            for job in list(self._running.values()):
                _settle_output(job.task)
            with self._lock:
                for engine, job in list(self._running.items()):
                    task = job.task
                    if task is not None and task.done():
                        del self._running[engine]
                        self._pool.release(engine)
                        if self._collect(job, task):
                            ended.append(job)
                    elif job.overdue():
                        self.stop(job, Stop.TIMED_OUT)
                ended += self._dispatch()
                running = list(self._running.values())
        finally:
            for job in ended:
                job.notify()
                self._ended(job)
        for job in running:
            job.notify()  # live views: elapsed time, streamed output

    def _dispatch(self) -> list[CellJob]:
        """Send queued jobs to free engines; returns jobs that failed to go."""
        pool = self._pool
        if not pool.active:
            return []
        stale = pool.stale_engines()
        # engines a task graph's statements run on are reserved too
        free = [
            eid
            for eid in pool.unreserved_engine_ids()
            if eid not in self._running and eid not in stale
        ]
        failed = []
        while self._heap and free:
            _, _, job = heapq.heappop(self._heap)
            if job.done():
                continue
            engine = free.pop(0)
            if self._send(job, engine):
                self._running[engine] = job
                job.notify()
            else:
                failed.append(job)
        if self._heap and not free:
            # jobs wait for an engine: engines on demand start for them
            self.want_engines()
        return failed

    def _send(self, job: CellJob, engine: int) -> bool:
        """Start ``job`` on ``engine``; False if it failed to go (it ended)."""
        pool = self._pool
        job.assign(engine)
        try:
            # queued on the engine ahead of the cell: no waiting here
            pool.ship_names([engine], job.shipment, block=False)
            if self._run_cell is None:
                self._run_cell = pool.pack(run_cell)  # pickled once, not per job
            task = pool.submit(
                engine, self._run_cell, job.spec, job.source, job.filename, job.outputs
            )
        except Exception as err:
            job.finish("failed", JobError(f"job '{job.name}' could not be sent: {err}"))
            return False
        job.mark_running(task)
        pool.reserve(engine, job.name)
        # take the outcome the moment the task ends, not at the next tick
        task.add_done_callback(lambda _: self._task_ended(job))
        return True

    def _collect(self, job: CellJob, task: Any) -> bool:
        """Take a finished task's outcome; False if the job was re-queued."""
        try:
            outcome = task.get(SETTLE)
        except Exception as err:
            if is_engine_death(err) and job.engine is not None:
                self._pool.forget_engines([job.engine])
            verdict = verdict_of_error(job, err)
            if verdict.state == "queued":
                self._pool.purge(task)
                job.requeue()
                self.push(job)
                return False
            job.conclude(verdict)
            return True
        job.host = outcome.host
        if job.engine is not None:
            # the engine's clock, read on the kernel's (engines elsewhere run
            # their own clocks: see _clock)
            job.started = self._pool.to_kernel_clock(job.engine, outcome.started)
        job.conclude(verdict_of_outcome(job, outcome))
        return True


def _settle_output(task: Any) -> None:
    """If ``task`` has finished, wait (``OUTPUT_WAIT`` at most) for the last
    of its output, which can arrive after its result, unless the cell wrote
    nothing.  Called without the manager's lock: a task whose output never
    comes must not hold up the notebook, whose next cell delivers under
    that lock."""
    if task is None or not finished(task):
        return
    with contextlib.suppress(Exception):
        if not getattr(task.get(0), "wrote", True):
            return  # nothing was written: no output follows the reply
    with contextlib.suppress(Exception):
        task.wait_for_output(OUTPUT_WAIT)
