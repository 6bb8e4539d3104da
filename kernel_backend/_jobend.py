"""What a background cell's task came to, as the job's end.

Pure interpretation: given a job (its name, engine, attempts, why it was
stopped) and what its task returned or raised, a :class:`Verdict` says the
state the job ends in and why; :meth:`~._celljob.CellJob.conclude` applies
it and :class:`~._jobs.JobManager` acts on it (a job ``queued`` again goes
back in the queue).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Any

from ._celljob import CellJob, JobError, JobState, Stop
from ._enginecell import CellOutcome
from ._errors import is_engine_death

__all__ = ["Verdict", "stop_text", "verdict_of_error", "verdict_of_outcome"]


@dataclass(frozen=True)
class Verdict:
    """The state a job's task leaves it in (``queued``: run it again) and
    what came back with it."""

    state: JobState
    error: BaseException | None = None
    values: dict[str, Any] = field(default_factory=dict)
    failed_names: dict[str, str] = field(default_factory=dict)
    bundle: dict[str, Any] | None = None
    seconds: float | None = None  # how long the cell ran on its engine


def stop_text(job: CellJob) -> str:
    """Why ``job`` stopped, as the end of ``job 'name' ...``."""
    if job.stopped is Stop.TIMED_OUT:
        return f"ran past its timeout of {job.timeout:g} s"
    if job.stopped is Stop.CANCELLED:
        return "was cancelled"
    return "was interrupted"


def stopped_verdict(job: CellJob) -> Verdict:
    """A job that was stopped: cancelled, or failed past its timeout."""
    if job.stopped is Stop.TIMED_OUT:
        return Verdict("failed", JobError(f"job '{job.name}' {stop_text(job)}"))
    return Verdict("cancelled")


def verdict_of_error(job: CellJob, err: BaseException) -> Verdict:
    """The task raised ``err`` instead of returning an outcome."""
    import ipyparallel as ipp

    if is_engine_death(err):
        if job.attempts <= job.retries and job.stopped is None:
            return Verdict("queued")
        error = JobError(
            f"engine {job.engine} died while running job '{job.name}'"
            + (f" (after {job.attempts} attempts)" if job.attempts > 1 else "")
        )
    elif isinstance(err, ipp.error.RemoteError) and err.ename == "KeyboardInterrupt":
        error = JobError(f"job '{job.name}' {stop_text(job)}")
    else:
        error = JobError(
            f"job '{job.name}' could not run on engine {job.engine}: {err}",
            getattr(err, "traceback", "") or "",
        )
    if job.stopped is Stop.CANCELLED:
        return Verdict("cancelled")
    return Verdict("failed", error)


def verdict_of_outcome(job: CellJob, outcome: CellOutcome) -> Verdict:
    """The cell ran on its engine and sent back ``outcome``."""
    if outcome.interrupted or job.stopped is not None:
        return stopped_verdict(job)
    failure = outcome.failure
    if failure is not None:
        error = JobError(
            f"job '{job.name}' failed on engine {job.engine}:"
            f" {failure.type_name}: {failure.message}",
            failure.traceback,
        )
        return Verdict("failed", error, bundle=outcome.bundle)
    values, failed = _unpickled(outcome)
    return Verdict(
        "done",
        values=values,
        failed_names=failed,
        bundle=outcome.bundle,
        seconds=outcome.seconds,
    )


def _unpickled(outcome: CellOutcome) -> tuple[dict[str, Any], dict[str, str]]:
    """The names that came back, and why the others could not."""
    import cloudpickle

    failed = dict(outcome.unpicklable)
    values: dict[str, Any] = {}
    for name, data in outcome.values.items():
        try:
            values[name] = cloudpickle.loads(data)
        except Exception as err:
            failed[name] = f"{type(err).__name__}: {err}"
    if outcome.value is not None:
        # the value of the last expression is a display, not a name: one
        # that does not unpickle here is only not shown
        with contextlib.suppress(Exception):
            values["__value__"] = cloudpickle.loads(outcome.value)
    return values, failed
