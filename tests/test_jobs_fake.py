"""The background-job manager (``JobManager``) over in-process fake engines:
the queue, priorities, cancelling, timeouts, errors, engines dying, bringing
names back, naming.

No cluster: cells run with the engines' own ``run_cell`` on the fake's
threads, and each test takes milliseconds.  What only a cluster shows
(interrupting a real engine, streamed output, a kernel's namespace) is
tested against one in test_parallel.py, test_tasks.py and
test_parallel_kernel.py.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from paracell.kernel_backend import (
    CellJob,
    InvalidRequest,
    JobError,
    JobManager,
    _jobqueue,
)

from _fake_engines import FakePool, FakeTask

#: What cells wait on, and the order they ran in (the fake engines are
#: threads of this process: cells reach these through ``hold`` and ``mark``).
GATE = threading.Event()
RAN: list[str] = []
POOL: list[FakePool] = []
DIED = threading.Event()


def hold() -> None:
    """Block the engine until the test opens the gate."""
    GATE.wait(5)


def mark(name: str) -> None:
    RAN.append(name)


def die_once() -> None:
    """The engine running this dies, the first time only."""
    if not DIED.is_set():
        DIED.set()
        POOL[0].kill_this_engine()


@pytest.fixture
def pool(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakePool]:
    monkeypatch.setattr(_jobqueue, "_TICK", 0.005)
    monkeypatch.setattr(_jobqueue, "_MONITOR_LINGER", 0.05)
    GATE.clear()
    DIED.clear()
    RAN.clear()
    fake = FakePool(2)
    POOL[:] = [fake]
    yield fake
    GATE.set()  # cells still holding an engine end
    fake.close()


@pytest.fixture
def jobs(pool: FakePool) -> Iterator[JobManager]:
    manager = JobManager(pool)
    yield manager
    manager.close()


def ns(**names: Any) -> dict[str, Any]:
    return {"hold": hold, "mark": mark, "die_once": die_once, **names}


def finished(job: CellJob) -> CellJob:
    """``job``, once it has ended (within a second)."""
    for _ in range(200):
        if job.done():
            return job
        time.sleep(0.005)
    raise AssertionError(f"{job.summary()} did not end")


def test_a_cell_runs_on_an_engine_and_its_names_come_back(jobs, pool):
    here = ns(x=20)
    job = jobs.submit("y = x * 2\ny + 1", here)
    assert job.result(timeout=2) == 41
    assert job.state == "done" and job.engine in (0, 1)
    assert ("run_cell" in {name for _, name in pool.tasks}) and pool.shipped
    (delivered,) = jobs.deliver(here)
    assert delivered[1].pulled == ["y"] and here["y"] == 40
    assert pool.reserved == set()  # its engine is free again


def test_jobs_beyond_the_free_engines_wait_in_the_queue(jobs, pool):
    first = jobs.submit("hold()\nmark('first')", ns())
    second = jobs.submit("hold()\nmark('second')", ns())
    third = jobs.submit("mark('third')", ns())
    time.sleep(0.05)
    assert (first.state, second.state, third.state) == ("running",) * 2 + ("queued",)
    assert pool.wanted  # engines on demand are asked for the waiting job
    GATE.set()
    assert finished(third).state == "done"
    assert third.engine in (first.engine, second.engine)


def test_queued_jobs_start_by_priority_then_submission(jobs, pool):
    pool.kill(1)  # one engine
    blocker = jobs.submit("hold()", ns())
    low = jobs.submit("mark('low')", ns(), priority=0)
    high = jobs.submit("mark('high')", ns(), priority=5)
    high_too = jobs.submit("mark('high too')", ns(), priority=5)
    GATE.set()
    for job in (blocker, low, high, high_too):
        finished(job)
    assert RAN == ["high", "high too", "low"]


def test_cancelling_a_queued_job_removes_it_before_it_is_sent(jobs, pool):
    pool.kill(1)
    blocker = jobs.submit("hold()", ns())
    queued = jobs.submit("mark('never')", ns())
    assert queued.cancel() is True
    assert queued.state == "cancelled" and queued.cancelled()
    GATE.set()
    finished(blocker)
    assert len(pool.tasks) == 1 and RAN == []
    assert queued.cancel() is False  # already ended


def test_cancelling_a_running_job_that_does_not_stop_ends_it_and_frees_its_engine(
    jobs, pool
):
    job = jobs.submit("hold()", ns())
    finished_jobs: list[CellJob] = []
    jobs.on_finished = finished_jobs.append
    time.sleep(0.02)
    assert job.state == "running" and pool.reserved == {job.engine}
    job.cancel()
    assert finished(job).state == "cancelled"
    assert pool.interrupted  # its task was interrupted
    assert pool.reserved == set() and finished_jobs == [job]


def test_a_job_past_its_timeout_fails_saying_so(jobs):
    job = jobs.submit("hold()", ns(), timeout=0.02)
    assert finished(job).state == "failed"
    assert "ran past its timeout of 0.02 s" in str(job.error)
    with pytest.raises(JobError, match="timeout"):
        job.result()


def test_an_error_in_the_cell_is_the_jobs_error_with_its_traceback(jobs):
    job = jobs.submit("a = 1\nb = a / 0", ns())
    with pytest.raises(JobError, match="ZeroDivisionError") as info:
        job.result(timeout=2)
    assert "failed on engine" in str(info.value)
    assert "ZeroDivisionError" in info.value.remote_traceback
    assert job.pending_names == []  # a failed cell brings nothing back


def test_an_engine_dying_mid_job_runs_it_again_elsewhere(jobs, pool):
    job = jobs.submit("die_once()\nz = 3", ns(), retries=1)
    assert finished(job).state == "done"
    assert job.attempts == 2 and job.values["z"] == 3
    (dead,) = pool.forgotten
    assert job.engine != dead


def test_an_engine_dying_without_retries_left_fails_the_job(jobs, pool):
    job = jobs.submit("die_once()\nz = 3", ns())
    assert finished(job).state == "failed"
    assert f"engine {job.engine} died while running job" in str(job.error)


def test_names_are_pending_until_delivered_and_a_reassignment_is_kept(jobs):
    here = ns(b="before")
    job = jobs.submit("hold()\na = 1\nb = 2", here)
    assert jobs.pending_names() == {"a": job, "b": job}
    here["b"] = "mine"  # the user's, after submitting
    GATE.set()
    finished(job)
    assert jobs.deliver({}) == []  # only into the namespace it came from
    delivery = jobs.deliver_job(job, here)
    assert delivery is not None
    assert (delivery.pulled, delivery.kept) == (["a"], ["b"])
    assert here["a"] == 1 and here["b"] == "mine"
    assert "did not overwrite 'b'" in delivery.notes(job.name)[0]
    assert jobs.pending_names() == {} and jobs.deliver(here) == []


def test_the_later_submitted_job_wins_a_name_whatever_order_they_end_in(jobs):
    here = ns()
    older = jobs.submit("hold()\nv = 'older'", here)
    newer = jobs.submit("v = 'newer'", here)
    finished(newer)
    jobs.deliver(here)
    assert here["v"] == "newer"
    GATE.set()
    finished(older)
    (delivered,) = jobs.deliver(here)
    assert delivered[1].pulled == [] and here["v"] == "newer"


def test_only_the_out_names_come_back_and_they_must_be_assigned(jobs):
    here = ns()
    job = jobs.submit("p = 1\nq = 2", here, outputs=["q"])
    finished(job)
    jobs.deliver(here)
    assert "q" in here and "p" not in here
    with pytest.raises(InvalidRequest, match="--out names 'r'"):
        jobs.submit("p = 1", here, outputs=["r"])


def test_jobs_are_named_in_turn_and_a_name_in_use_is_refused(jobs):
    first = jobs.submit("hold()", ns())
    second = jobs.submit("pass", ns())
    assert (first.name, second.name) == ("job-1", "job-2")
    with pytest.raises(InvalidRequest, match=r"job 'job-1' is still (queued|running)"):
        jobs.submit("pass", ns(), name="job-1")
    finished(second)
    again = jobs.submit("pass", ns(), name="job-2")  # an ended job's name is free
    assert jobs.get("job-2") is again
    GATE.set()
    finished(first)
    finished(again)
    assert sorted(jobs.clear()) == ["job-1", "job-2"] and jobs.jobs() == []


def test_stopping_the_cluster_cancels_every_job(jobs, pool):
    pool.kill(1)
    running = jobs.submit("hold()", ns())
    queued = jobs.submit("pass", ns())
    time.sleep(0.02)
    pool.stop()
    assert running.state == queued.state == "cancelled"
    assert pool.reserved == set()


def test_a_controller_that_stops_answering_fails_the_running_jobs(jobs, pool):
    job = jobs.submit("hold()", ns())
    time.sleep(0.02)
    pool.controller_up = False
    assert finished(job).state == "failed"
    assert "controller stopped answering" in str(job.error)


def test_dropped_arrays_are_released_only_while_no_job_runs(jobs, pool, monkeypatch):
    calls: list[bool] = []
    monkeypatch.setattr(pool, "release_dropped_arrays", lambda: calls.append(True))
    job = jobs.submit("hold()", ns())
    time.sleep(0.05)
    assert job.state == "running"
    jobs.release_dropped_arrays()
    assert calls == [], "a running job may still read them"
    GATE.set()
    finished(job)
    jobs.release_dropped_arrays()
    assert calls == [True]


def test_waiting_for_a_finished_tasks_last_output_holds_up_nothing(
    jobs, pool, monkeypatch
):
    """A task's output can come after its result (or never: an engine
    interrupted as its request ended); meanwhile the notebook's next cell,
    which delivers under the manager's lock, must not wait for it."""
    waiting, arrived = threading.Event(), threading.Event()

    def slow_output(self, timeout=None):
        waiting.set()
        return arrived.wait(timeout)

    monkeypatch.setattr(FakeTask, "wait_for_output", slow_output)
    monkeypatch.setattr(_jobqueue, "OUTPUT_WAIT", 30.0)
    here = ns()
    job = jobs.submit("y = 1", here)
    assert waiting.wait(5), "the finished task's output is waited for"
    delivering = threading.Thread(target=jobs.deliver, args=(ns(),), daemon=True)
    delivering.start()
    delivering.join(5)  # a bound against hanging: it returns at once
    try:
        assert not delivering.is_alive(), "delivery waited for another job's output"
        assert not job.done()  # its output is still awaited
    finally:
        arrived.set()
    assert finished(job).state == "done"
    assert [job for job, _ in jobs.deliver(here)] == [job]
    assert here["y"] == 1


def test_waiting_for_a_job_never_takes_its_lock(jobs):
    """``wait`` runs in the notebook's main thread, where an interrupt can
    land just as a lock is taken and leave it taken; it asks whether the
    job ended without taking the job's lock, so a lock held elsewhere (here,
    by another thread for the whole wait) holds nothing up."""
    job = finished(jobs.submit("y = 1", ns()))
    held, release = threading.Event(), threading.Event()

    def hold_the_lock() -> None:
        with job._condition:
            held.set()
            release.wait(10)

    holder = threading.Thread(target=hold_the_lock, daemon=True)
    holder.start()
    assert held.wait(5)
    waiter = threading.Thread(target=jobs.wait, args=([job], 5.0), daemon=True)
    try:
        waiter.start()
        waiter.join(5)  # a bound against hanging: it returns at once
        assert not waiter.is_alive(), "wait took the job's lock"
    finally:
        release.set()
    holder.join(5)
