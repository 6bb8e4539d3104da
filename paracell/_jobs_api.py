"""The twins of ``%%parallel`` and ``%jobs``: background cells, cells on
every engine, task graphs, and job control."""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import Any

from ._common import _announce, _display_hooks, _user_namespace
from .kernel_backend import (
    CellJob,
    InvalidRequest,
    default_jobs,
    default_session,
    plan_tasks,
    run_everywhere,
    submit_tasks,
)
from .kernel_backend._seeding import validate_seed
from .widgets import jobs_panel as jobs_panel_view

__all__ = ["cancel", "clear_jobs", "jobs", "jobs_panel", "parallel", "wait"]


def parallel(
    code: str,
    *,
    name: str | None = None,
    out: Sequence[str] | None = None,
    pull: bool = True,
    seed: int | None = None,
    retries: int = 2,
    timeout: float | None = None,
    priority: float = 0.0,
    block: bool = False,
    targets: Sequence[int] | str | None = None,
    namespace: dict[str, Any] | None = None,
    cache: bool | str = False,
    ship_large: bool = False,
    tasks: bool = False,
    plan: bool = False,
) -> Any:
    """Run ``code`` on the cluster in the background; ``%%parallel``'s twin.

    Returns a :class:`CellJob` at once (``block=True``: waits, brings the
    names back and returns the value of the last expression).  Names ``code``
    reads come from ``namespace`` (default: the IPython user namespace, or
    ``__main__``); the names it assigns come back there when you
    :func:`wait` for it (in IPython, by themselves between cells).

    ``targets="all"`` or a list of engine ids runs ``code`` on each of those
    engines in the engine's own namespace instead (setup), blocking; it
    returns a list of :class:`EngineRun`.

    ``cache=True`` (or a store's name) keeps the outcome in the result store;
    the same code with the same inputs is then done at once, from the store
    (``%%parallel --cache``).  ``ship_large=True`` ships names larger than
    ``PARACELL_SHIP_LIMIT`` (default 1 GB), which are refused otherwise.

    ``tasks=True`` runs each top-level statement as a task on the engine
    that can start it earliest once the statements it depends on are done
    (``%%parallel --tasks``); it returns a :class:`TaskJob`.  ``plan=True``
    (with ``tasks``) returns the graph and its planned schedule, a
    :class:`TaskPlan`, and runs nothing.
    """
    ns = _user_namespace() if namespace is None else namespace
    if plan or tasks:
        return _parallel_tasks(
            code,
            ns,
            name=name,
            out=out,
            pull=pull,
            seed=seed,
            timeout=timeout,
            priority=priority,
            block=block,
            targets=targets,
            cache=cache,
            ship_large=ship_large,
            tasks=tasks,
            plan=plan,
        )
    _display_hooks()
    if targets is not None:
        if cache:
            raise InvalidRequest(
                "cache keeps a background cell's outcome; it does not go with targets"
            )
        return _everywhere(code, ns, targets, out, seed, ship_large)
    job = default_jobs().submit(
        code,
        ns,
        name=name,
        outputs=out,
        pull=pull,
        seed=validate_seed(seed),
        retries=retries,
        timeout=timeout,
        priority=priority,
        cache=cache,
        ship_large=ship_large,
        announce=_announce,
    )
    if not block:
        return job
    wait(job)
    return job.result()


def _everywhere(
    code: str,
    ns: dict[str, Any],
    targets: Sequence[int] | str,
    out: Sequence[str] | None,
    seed: int | None,
    ship_large: bool,
) -> Any:
    """``parallel(code, targets=...)``: the cell on each of those engines."""
    session = default_session()
    _announce(session.ensure_engines())
    chosen = None if targets == "all" else [int(t) for t in targets]
    return run_everywhere(
        session,
        code,
        ns,
        targets=chosen,
        outputs=out or (),
        seed=seed,
        ship_large=ship_large,
    )


def _parallel_tasks(
    code: str, ns: dict[str, Any], *, tasks: bool, plan: bool, **options: Any
) -> Any:
    """``parallel(code, tasks=True)`` and ``parallel(code, tasks=True, plan=True)``."""
    if not tasks:
        raise InvalidRequest("plan=True shows a task graph: use it with tasks=True")
    if options["targets"] is not None or options["cache"]:
        raise InvalidRequest("tasks=True does not go with targets or cache")
    if plan:
        if options["block"]:
            raise InvalidRequest("plan=True runs nothing, so it does not go with block")
        return plan_tasks(code, ns)
    _display_hooks()
    _announce(default_session().ensure_engines())
    job = submit_tasks(
        default_jobs(),
        code,
        ns,
        name=options["name"],
        outputs=options["out"],
        pull=options["pull"],
        seed=validate_seed(options["seed"]),
        timeout=options["timeout"],
        priority=options["priority"],
        ship_large=options["ship_large"],
    )
    if not options["block"]:
        return job
    wait(job)
    return job.result()


def jobs() -> list[CellJob]:
    """Every background job not cleared, oldest first; ``%jobs``."""
    return default_jobs().jobs()


def wait(*jobs_or_names: CellJob | str) -> None:
    """Wait for these jobs (all when none given) and bring their names back.

    Raises the error of a job that failed; ``%jobs wait``.
    """
    manager = default_jobs()
    chosen = [
        manager.get(j) if isinstance(j, str) else j for j in jobs_or_names
    ] or manager.jobs()
    manager.wait(chosen)
    for job in chosen:
        delivery = manager.deliver_job(job, job.namespace)
        if delivery is not None:
            for note in delivery.notes(job.name):
                print(note, file=sys.stderr)
    for job in chosen:
        if job.state == "failed" and job.error is not None:
            raise job.error


def cancel(job: CellJob | str) -> bool:
    """Cancel a job: queued ones are removed, running ones interrupted."""
    return (default_jobs().get(job) if isinstance(job, str) else job).cancel()


def clear_jobs() -> list[str]:
    """Forget finished jobs; returns their names; ``%jobs clear``."""
    return default_jobs().clear()


def jobs_panel() -> Any:
    """Every background job, live, with Cancel per job (``%jobs panel``)."""
    return jobs_panel_view(default_jobs())
