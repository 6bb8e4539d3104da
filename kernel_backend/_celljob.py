"""A background cell as the user holds it: :class:`CellJob`, its states,
why it was stopped, and :class:`JobError`.

The job only records; :class:`~._jobs.JobManager` decides.  What the
manager changes on a job goes through the methods under "what the manager
does" (sent to an engine, back in the queue, stopped, finished), so the
job's invariants (a finished job holds no task and none of the notebook's
objects) live here, in one place.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import enum
import time
from collections.abc import Callable, Generator, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Literal

from ._engine import TaskSpec
from ._pool import task_output
from ._signal import Signal

if TYPE_CHECKING:
    from ._jobdelivery import Delivery
    from ._jobend import Verdict
    from ._jobs import JobManager

__all__ = ["CellJob", "JobError", "JobState", "Stop"]

JobState = Literal["queued", "running", "done", "failed", "cancelled"]


class Stop(enum.Enum):
    """Why a job was stopped before it ended by itself."""

    CANCELLED = "cancelled"  # job.cancel(), %jobs cancel, the cluster stopping
    TIMED_OUT = "timed out"  # --timeout


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
        shipment: Any = None,
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
        #: the notebook's objects under ``outputs`` when the job was submitted
        #: (a name changed since then was re-assigned by the user)
        self.snapshot = snapshot
        #: what the cell reads from the notebook, sent with it to its engine
        self.shipment = shipment
        self.state: JobState = "queued"
        self.engine: int | None = None
        self.host: str | None = None
        self.submitted = time.time()
        self.started: float | None = None
        self.finished: float | None = None
        self.attempts = 0
        self.values: dict[str, Any] = {}
        #: names that ran but could not come back, and why
        self.failed_names: dict[str, str] = {}
        self.bundle: dict[str, Any] | None = None
        self.error: BaseException | None = None
        self.delivery: Delivery | None = None
        #: brought back from the result store, run on no engine (--cache)
        self.from_cache = False
        self._task: Any = None
        self._stdout = self._stderr = ""  # what it printed, once it ended
        self._updates: Signal[[CellJob]] = Signal(f"job {name!r}")
        self._stopped: Stop | None = None
        self._namespace: Mapping[str, Any] | None = None
        self._order = 0

    # -- live facts --------------------------------------------------------

    @property
    def stdout(self) -> str:
        task = self._task
        return task_output(task, "stdout") if task is not None else self._stdout

    @property
    def stderr(self) -> str:
        task = self._task
        return task_output(task, "stderr") if task is not None else self._stderr

    @property
    def elapsed(self) -> float:
        if self.started is None:
            return 0.0
        return (self.finished or time.time()) - self.started

    @property
    def task(self) -> Any:
        """The task running the cell on its engine, while there is one."""
        return self._task

    @property
    def stopped(self) -> Stop | None:
        """Why the job was stopped before it ended by itself, if it was."""
        return self._stopped

    @property
    def namespace(self) -> Mapping[str, Any] | None:
        """The namespace the job was submitted from; its names come back there."""
        return self._namespace

    @property
    def order(self) -> int:
        """The job's place among the manager's submissions (later: larger)."""
        return self._order

    @property
    def pending_names(self) -> list[str]:
        """Names this job will bring back and has not yet."""
        if not self.pull or self.delivery is not None:
            return []
        if self.state in ("failed", "cancelled"):
            return []
        return list(self.outputs)

    def overdue(self) -> bool:
        """Running past its ``--timeout``, and not stopped for it yet."""
        return (
            self.timeout is not None
            and self.elapsed > self.timeout
            and self._stopped is None
        )

    def progress_line(self) -> str | None:
        """Progress in words beyond state and time (a task graph's), or None."""
        return None

    def error_for(self, names: Sequence[str]) -> BaseException | None:
        """The error that kept ``names`` from coming back, if any."""
        return self.error if self.state == "failed" else None

    def subscribe(self, observer: Callable[[CellJob], None]) -> Callable[[], None]:
        """Call ``observer(job)`` on state changes and while it runs; returns a
        function that unsubscribes."""
        return self._updates.subscribe(observer)

    def notify(self) -> None:
        """Tell the job's observers it changed (or that time went by)."""
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

    # -- what the manager does (under its lock) ---------------------------

    def registered(self, namespace: Mapping[str, Any], order: int) -> None:
        """The manager took the job in, submitted from ``namespace``."""
        self._namespace = namespace
        self._order = order

    def assign(self, engine: int) -> None:
        """About to be sent to ``engine``: one more attempt."""
        self.attempts += 1
        self.engine = engine
        self.started = self.started or time.time()

    def mark_running(self, task: Any) -> None:
        """Sent: ``task`` runs the cell on the job's engine."""
        self._task = task
        self.state = "running"

    def requeue(self) -> None:
        """Back in the queue (its engine died; a retry is left)."""
        self._task = None
        self.state = "queued"

    def stop(self, reason: Stop) -> None:
        """Note why the job is being stopped (the interrupt is the manager's)."""
        self._stopped = reason

    def stop_running(self) -> None:
        """The cluster is going away: stop what runs (the manager's job here;
        a job that runs itself stops itself)."""

    def restore(self, record: Mapping[str, Any]) -> None:
        """Take a stored outcome (``--cache``): done without running."""
        self.from_cache = True
        self.values = dict(record["values"])
        self.failed_names = dict(record["failed"])
        self.bundle = record["bundle"]
        self._stdout, self._stderr = record["stdout"], record["stderr"]
        self.started = time.time()

    def conclude(self, verdict: Verdict) -> None:
        """End as ``verdict`` says (see :mod:`._jobend`)."""
        if verdict.bundle is not None:
            self.bundle = verdict.bundle
        self.values.update(verdict.values)
        self.failed_names.update(verdict.failed_names)
        self.finish(verdict.state, verdict.error)
        if verdict.seconds is not None and self.started:
            # the time it ran on its engine, not until its result was seen
            self.finished = self.started + verdict.seconds

    def finish(self, state: JobState, error: BaseException | None = None) -> None:
        """End the job: ``done`` (its value the cell's last expression),
        ``failed`` with ``error``, or ``cancelled``."""
        self.state = state
        self.finished = time.time()
        # what it shipped holds the notebook's objects (a large array, its
        # shared-memory segment): an ended job must not keep them alive
        self.shipment = None
        task, self._task = self._task, None
        if task is not None:
            # what arrived: a finished task's last output was waited for
            # before this (see ``JobQueue``), never under the manager's lock
            self._stdout = task_output(task, "stdout")
            self._stderr = task_output(task, "stderr")
            self._manager.purge(task)
        if state == "cancelled":
            super().cancel()
        elif error is not None:
            self.error = error
            self.set_exception(error)
        else:
            self.set_result(self.values.get("__value__"))
