"""``%%parallel --tasks``: a background cell whose statements run as a graph.

A :class:`TaskJob` is a :class:`CellJob` (same name, waits, delivery of
names between cells, ``%jobs``) driven by a :class:`~._taskrun.TaskRunner`
on a thread of its own instead of the job queue.  It takes engines that no
other job holds, one statement at a time, and yields them to background
cells of higher priority that wait.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import threading
import time
import types
from collections.abc import Mapping, Sequence
from typing import Any

from ._celljob import CellJob, JobError, JobState
from ._engine import TaskSpec
from ._errors import InvalidRequest
from ._jobdelivery import snapshot, wanted_names
from ._jobs import JobManager
from ._names import cell_reads, check_syntax
from ._seeding import fresh_entropy
from ._shipment import Shipment, prepare_shipment
from ._taskbackends import ClusterEngines, StatementEngines
from ._taskgraph import TaskGraph, analyze_cell
from ._taskplan import (
    CostBook,
    Estimates,
    TaskBar,
    TaskPlan,
    TaskTimeline,
    critical_path,
    default_costs,
    plan_schedule,
    statement_keys,
)
from ._taskrun import TaskRunner

__all__ = ["TaskJob", "plan_tasks", "submit_tasks"]

#: Costs of statements run before in this process, for the next plans.
COSTS = CostBook()
_OUTPUT_TAIL = 3  # running statements named in a job's summary


class TaskJob(CellJob):
    """A cell run as a task graph; ``state``, ``stdout`` (in program
    order), ``statements`` (each one's state and engine) are live.
    ``missing`` names what a failure kept from coming back;
    :meth:`timeline` draws the run."""

    partial_delivery = True

    def __init__(
        self,
        manager: JobManager,
        name: str,
        source: str,
        graph: TaskGraph,
        estimates: Estimates,
        **options: Any,
    ) -> None:
        super().__init__(manager, name, source, **options)
        self.graph = graph
        self.estimates = estimates
        self.planned: list[Any] = []
        self.missing: list[str] = []
        self.runner: TaskRunner | None = None
        self._thread: threading.Thread | None = None

    # -- live facts ------------------------------------------------------

    @property
    def stdout(self) -> str:
        return self.runner.stdout() if self.runner is not None else ""

    @property
    def stderr(self) -> str:
        return self.runner.stderr() if self.runner is not None else ""

    @property
    def statements(self) -> list[Any]:
        """Each statement's :class:`~._taskrun.StatementRun`."""
        return list(self.runner.runs) if self.runner is not None else []

    @property
    def kernel_bytes(self) -> int:
        """Bytes of values that passed through the notebook's process."""
        return self.runner.kernel_bytes if self.runner is not None else 0

    @property
    def moved_bytes(self) -> int:
        """Bytes engines fetched from one another directly."""
        return self.runner.moved_bytes if self.runner is not None else 0

    def progress_line(self) -> str:
        """E.g. ``3/5 statements done; running: line 4 on engine 1``."""
        runs = self.statements
        done = sum(r.state == "done" for r in runs)
        text = f"{done}/{len(self.graph)} statements done"
        running = [r for r in runs if r.state == "running"]
        if running:
            shown = ", ".join(
                f"line {self.graph.statements[r.index].lineno}"
                f" `{self.graph.statements[r.index].label}` on engine {r.engine}"
                for r in running[:_OUTPUT_TAIL]
            )
            text += f"; running: {shown}"
        queued = sum(r.state == "sent" for r in runs)
        if queued:
            text += f"; {queued} queued on their engines"
        failed = sum(r.state == "failed" for r in runs)
        if failed:
            text += f"; {failed} failed"
        return text

    def summary(self) -> str:
        base = f"job '{self.name}' (tasks)"
        if self.state == "queued":
            return f"{base}: queued"
        if self.state == "running":
            return f"{base}: running, {self.elapsed:.1f} s, {self.progress_line()}"
        text = f"{base}: {self.state} in {self.elapsed:.1f} s, {self.progress_line()}"
        if self.state == "failed" and self.error is not None:
            text += f": {self.error}"
        return text

    def error_for(self, names: Sequence[str]) -> BaseException | None:
        """The failure that kept any of ``names`` from coming back, if any."""
        if self.state == "failed" and any(n in self.missing for n in names):
            return self.error
        return None

    # -- control -----------------------------------------------------------

    def cancel(self) -> bool:
        """Stop every running statement (within about 2 s); engines freed."""
        if self.done():
            return False
        runner = self.runner
        if runner is not None and runner.cancel_reason is None:
            runner.cancel_reason = "cancelled"
        return True

    def stop_running(self) -> None:
        self.cancel()

    def timeline(self) -> TaskTimeline:
        """The run as a Gantt chart, the plan beside it (draws in a notebook)."""
        runs = self.statements
        origin = self.started or time.time()
        bars = tuple(
            TaskBar(r.index, r.engine, r.started - origin, r.seconds, r.state)
            for r in runs
            if r.started is not None
            and r.engine is not None
            and r.state in ("done", "failed", "cancelled")
        )
        return TaskTimeline(
            labels=tuple(s.label for s in self.graph.statements),
            lines=tuple(s.lineno for s in self.graph.statements),
            actual=bars,
            planned=tuple(self.planned),
            critical=tuple(critical_path(self.graph, self.estimates)),
            wall=self.elapsed if self.done() else None,
            measured=self.estimates.measured,
        )

    # -- the run -------------------------------------------------------------

    def start_run(self, engines: StatementEngines) -> None:
        """Run the graph on ``engines`` in a thread of its own."""
        self._thread = threading.Thread(
            target=self._run,
            args=(engines,),
            name=f"paracell-tasks-{self.name}",
            daemon=True,
        )
        self._thread.start()

    def _run(self, engines: StatementEngines) -> None:
        runner = self.runner
        assert runner is not None
        values: dict[str, Any] = {}
        failed: dict[str, str] = {}
        try:
            runner.run()
            if runner.cancel_reason is None:
                values, failed, missing = runner.collect_names(self.outputs)
            else:  # stopped: nothing comes back (an engine may still be busy)
                missing = [n for n in self.outputs if n in self._made_by_unfinished()]
        except Exception as err:  # the cluster went away, say
            values, failed, missing = {}, {}, list(self.outputs)
            runner.cancel_reason = runner.cancel_reason or f"stopped: {err}"
        finally:
            engines.close()
        self.values.update(values)
        self.failed_names = failed
        self.missing = missing
        if runner.value is not None:
            import cloudpickle

            with contextlib.suppress(Exception):
                self.values["__value__"] = cloudpickle.loads(runner.value)
        self.bundle = runner.bundle
        self._end(runner)

    def _made_by_unfinished(self) -> set[str]:
        """Names whose last writer did not finish."""
        runs = self.statements
        return {
            name
            for name in self.outputs
            if (writer := self.graph.last_writer(name)) is not None
            and runs[writer].state != "done"
        }

    def _end(self, runner: TaskRunner) -> None:
        failed = [r for r in runner.runs if r.state == "failed"]
        reason = runner.cancel_reason
        state: JobState = "done"
        error: BaseException | None = None
        if failed:
            state, error = "failed", self._failure(failed)
        elif reason in ("cancelled", "was interrupted"):
            state = "cancelled"
        elif reason is not None:
            state, error = "failed", JobError(f"job '{self.name}' {reason}")
        self._manager.end(self, state, error)

    def _failure(self, failed: list[Any]) -> JobError:
        first = failed[0]
        statement = self.graph.statements[first.index]
        more = f" ({len(failed) - 1} more statements failed)" if len(failed) > 1 else ""
        missing = (
            f"; missing because of it: {', '.join(self.missing)}"
            if self.missing
            else ""
        )
        return JobError(
            f"job '{self.name}': statement {first.index + 1} (line"
            f" {statement.lineno}: {statement.label}) failed on engine"
            f" {first.engine}: {first.error}{more}{missing}",
            first.traceback,
        )


def _module_names(namespace: Mapping[str, Any]) -> set[str]:
    return {n for n, v in namespace.items() if isinstance(v, types.ModuleType)}


def _digests(shipment: Shipment | None) -> dict[str, str]:
    if shipment is None:
        return {}
    return {
        **shipment.digests,
        **{n: f"module:{m}" for n, m in shipment.modules.items()},
    }


def plan_tasks(
    source: str, namespace: Mapping[str, Any], *, engines: int | None = None
) -> TaskPlan:
    """The graph of ``source`` and its planned schedule; runs nothing.

    ``engines``: how many to plan for (default: the cluster's engines, or
    as many as a cluster started now would have).
    """
    from ._session import default_session

    graph = analyze_cell(source, _module_names(namespace))
    if engines is None:
        session = default_session()
        engines = len(session.engine_ids()) or os.cpu_count() or 1
    try:
        shipment: Shipment | None = prepare_shipment(
            cell_reads(source, namespace), namespace, ship_large=True
        )
    except Exception:  # a name that cannot ship only matters when it runs
        shipment = None
    estimates = default_costs(graph, COSTS, statement_keys(graph, _digests(shipment)))
    planned = plan_schedule(graph, list(range(engines)), estimates)
    timeline = TaskTimeline(
        labels=tuple(s.label for s in graph.statements),
        lines=tuple(s.lineno for s in graph.statements),
        actual=(),
        planned=tuple(planned),
        critical=tuple(critical_path(graph, estimates)),
        measured=estimates.measured,
    )
    return TaskPlan(graph, timeline, engines, estimates.measured)


def submit_tasks(
    manager: JobManager,
    source: str,
    namespace: Mapping[str, Any],
    *,
    name: str | None = None,
    outputs: Sequence[str] | None = None,
    pull: bool = True,
    seed: int | None = None,
    timeout: float | None = None,
    priority: float = 0.0,
    ship_large: bool = False,
) -> TaskJob:
    """Start ``source`` as a task graph in the background; returns its job.

    Raises ``SyntaxError`` (the user's) before anything is sent, and
    ``InvalidRequest`` for names that cannot be shipped.
    """
    check_syntax(source, name or "<cell>")  # the user's SyntaxError, here
    graph = analyze_cell(source, _module_names(namespace))
    wanted = wanted_names(source, list(graph.bound), namespace, outputs)
    session = manager.pool
    # busy: from shipping until the job is known and its statements are
    # on their way, nothing the shipment relies on is released
    with session.busy():
        shipment = _shipment(session, source, namespace, ship_large)
        keys = statement_keys(graph, _digests(shipment))
        estimates = default_costs(graph, COSTS, keys)
        name = manager.claim_name(name)
        spec = TaskSpec(
            key=f"tasks-{name}-{time.time()}",
            **shipment.spec_names(),
            seed=seed,
            entropy=fresh_entropy(),
        )
        job = TaskJob(
            manager,
            name,
            source,
            graph,
            estimates,
            outputs=wanted,
            pull=pull,
            priority=priority,
            retries=0,
            timeout=timeout,
            spec=spec,
            filename=f"<{name}>",
            snapshot=snapshot(namespace, wanted),
        )
        manager.add(job, namespace)
        job.planned = plan_schedule(graph, session.engine_ids(), estimates)
        engines = ClusterEngines(
            session,
            job_name=name,
            job_key=spec.key,
            spec=spec,
            source=source,
            filename=job.filename,
            shipment=shipment,
            authkey=_authkey(),
        )
        _start(job, engines, keys, manager)
        return job


def _shipment(
    session: Any, source: str, namespace: Mapping[str, Any], ship_large: bool
) -> Shipment:
    """What the cell reads from the notebook, checked on the free engines."""
    shipment = prepare_shipment(
        cell_reads(source, namespace), namespace, ship_large=ship_large
    )
    session.require_controller()
    if not session.engine_ids():
        raise InvalidRequest(
            "the cluster has no engines; add some with %cluster scale N"
        )
    stale = session.stale_engines()
    free = [e for e in session.unreserved_engine_ids() if e not in stale]
    if free:  # names and imports checked now, on the engines free now
        shipment = session.send_names(free, shipment)
    return shipment


def _start(
    job: TaskJob, engines: StatementEngines, keys: list[str], manager: JobManager
) -> None:
    job.runner = TaskRunner(
        job.graph,
        engines,
        job.estimates,
        keys=keys,
        book=COSTS,
        on_change=job.notify,
        may_take=lambda: not manager.waiting_above(job.priority),
    )
    if job.timeout is not None:
        _arm_timeout(job)
    job.state = "running"
    job.started = time.time()
    job.notify()
    job.start_run(engines)


def _arm_timeout(job: TaskJob) -> None:
    def expire() -> None:
        runner = job.runner
        if runner is not None and not job.done() and runner.cancel_reason is None:
            runner.cancel_reason = f"ran past its timeout of {job.timeout:g} s"

    timer = threading.Timer(job.timeout or 0.0, expire)
    timer.daemon = True
    timer.start()
    job.add_done_callback(lambda _: timer.cancel())


_VALUES_KEY = secrets.token_bytes(32)


def _authkey() -> bytes:
    """The key engines check before handing values to one another."""
    return _VALUES_KEY
