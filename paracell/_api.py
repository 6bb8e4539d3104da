"""The Python twins of the magics: the same operations, for scripts and tests."""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from .kernel_backend import (
    CacheReport,
    CellJob,
    ClusterStatus,
    InvalidRequest,
    LauncherOptions,
    MapJob,
    MapOptions,
    StartReport,
    StopReport,
    default_jobs,
    default_session,
    map_comprehension,
    map_function,
    plan_tasks,
    run_everywhere,
    set_cache_dir,
    set_cache_limit,
    submit_tasks,
)
from .kernel_backend import cache_info as _cache_info
from .kernel_backend import clear_cache as _clear_cache
from .kernel_backend._comprehension import parse_comprehension
from .kernel_backend._seeding import validate_seed
from .widgets import cluster_panel, map_observers, register_formatters
from .widgets import jobs_panel as jobs_panel_view

__all__ = [
    "cache_dir",
    "cache_info",
    "cache_limit",
    "cancel",
    "clear_cache",
    "clear_jobs",
    "connect",
    "jobs",
    "jobs_panel",
    "panel",
    "parallel",
    "pmap",
    "pmap_comprehension",
    "restart",
    "scale",
    "start",
    "status",
    "stop",
    "wait",
]


def start(
    n: int | None = None,
    *,
    min: int | None = None,
    max: int | None = None,
    launcher: str = "local",
    profile: str | None = None,
    idle_timeout: float | None = None,
    timeout: float = 60.0,
    force: bool = False,
    threads: int | None = None,
    hosts: str | None = None,
    queue: str | None = None,
    time: str | None = None,
    account: str | None = None,
    mem: str | None = None,
    extra: str | None = None,
    ip: str | None = None,
    mem_per_engine: str | None = None,
) -> StartReport:
    """Start a cluster of ``n`` engines (default: one per CPU); ``%cluster start``.

    Parameters
    ----------
    n
        Number of engines.
    min, max
        Engines on demand, instead of ``n``: ``min`` (default 0) start at
        once; more start as work waits for an engine (a map, a background
        job), up to ``max`` (default: the launcher's default count); engines
        idle for ``idle_timeout`` seconds (default 60) stop, down to ``min``.
        ``status()`` says why the count is what it is.
    launcher
        ipyparallel engine launcher: local, mpi, ssh, slurm, pbs, sge, lsf or
        htcondor.  The profile's ``ipcluster_config.py`` applies; the options
        below override it.
    profile
        IPython profile holding the cluster's files and configuration.
    idle_timeout
        Stop engines idle this many seconds; the next call restarts them.
    timeout
        Give up (and clean up) if the engines are not up by then.  Batch
        launchers return once the first engine is up, or at the timeout
        with the others still queued (``status()`` says where).
    hosts
        ssh: ``[user@]host[:count],...``; hosts without a count share the
        rest of ``n`` (one each when ``n`` is not given).
    queue
        Batch queue (Slurm partition).
    time, account, mem
        Slurm: time limit (``1:00:00``), account, memory per engine (``4G``).
    extra
        More options for ``sbatch``, ``mpiexec`` or ``ssh``.
    ip
        Remote launchers: the address engines reach the controller at
        (default: the one routing to the first ssh host; batch: all
        interfaces).  Local clusters always listen on 127.0.0.1.
    mem_per_engine
        Local: start no more engines than available memory holds, this much
        each (``"500MB"``); the report says when it capped ``n``.
    force
        Start more engines than the launcher is thought able to place (a
        small multiple of the cores, and what memory allows, for local ones).
    threads
        BLAS/OpenMP threads per engine (default for local engines: cores //
        engines, so numpy work in every engine does not oversubscribe).
    """
    options = LauncherOptions(
        hosts=hosts,
        queue=queue,
        time=time,
        account=account,
        mem=mem,
        extra=extra,
        ip=ip,
        mem_per_engine=mem_per_engine,
    )
    return default_session().start(
        n,
        launcher=launcher,
        profile=profile,
        idle_timeout=idle_timeout,
        timeout=timeout,
        force=force,
        threads=threads,
        options=options,
        min_engines=min,
        max_engines=max,
    )


def connect(
    *,
    profile: str | None = None,
    cluster_id: str | None = None,
    file: str | None = None,
) -> StartReport:
    """Use a cluster that is already running; ``%cluster connect``."""
    return default_session().connect(profile=profile, cluster_id=cluster_id, file=file)


def stop() -> StopReport:
    """Stop the cluster paracell started, or disconnect; ``%cluster stop``."""
    return default_session().stop()


def scale(n: int, *, force: bool = False) -> int:
    """Add or remove engines to reach ``n``; returns the change; ``%cluster scale``.

    ``force`` allows more engines than the launcher is thought able to place.
    """
    return default_session().scale(n, force=force)


def restart() -> StartReport:
    """Fresh engines with clean namespaces, same count; ``%cluster restart``."""
    return default_session().restart()


def status() -> ClusterStatus:
    """The cluster's state and a row per engine; ``%cluster status``."""
    return default_session().status()


def pmap(
    func: Callable[[Any], Any],
    iterable: Iterable[Any],
    *,
    chunksize: int | str = "auto",
    ordered: bool = True,
    seed: int | None = None,
    retries: int = 2,
    timeout: float | None = None,
    on_error: str = "raise",
    progress: bool | str = "auto",
    block: bool = True,
    targets: Sequence[int] | None = None,
    local: bool = False,
    quiet: bool = False,
    ship_large: bool = False,
    cache: bool | str = False,
) -> list[Any] | MapJob:
    """Call ``func`` on every item of ``iterable`` on the cluster; ``%pmap``'s twin.

    Returns the results as a list in input order (``ordered=False``: in
    completion order), or with ``block=False`` a :class:`MapJob` at once.
    Starts a local cluster if none is active.

    Parameters
    ----------
    func
        Called once per item.  A function defined in the notebook travels by
        value, with the globals it reads shipped once per engine.
    iterable
        Consumed lazily, with a bounded number of chunks in flight.
    chunksize
        ``"auto"`` (measure items, size chunks to ~0.2 s) or items per chunk.
    seed
        Item *i* gets its own random streams (``random``, ``numpy.random``,
        :func:`paracell.rng`) from ``SeedSequence(seed)`` and *i* alone: the
        same results for any engine count, chunking, order, retry or ``local``.
    retries
        How many times a chunk is re-run after its engine died.
    timeout
        Seconds one item may run; a slower item fails as a timeout.
    on_error
        ``"raise"`` (stop, raise :class:`ItemError` with finished results in
        ``.partial``), ``"collect"`` (the exception takes the item's place) or
        ``"skip"`` (the item is left out).
    progress
        Show a progress line: ``"auto"`` (when blocking in IPython or a
        terminal), ``True`` or ``False``.
    targets
        Engine ids to use (default: all).
    local
        Run here, sequentially, with the same seeding: for debugging and to
        check a parallel run against.
    quiet
        Do not show what the items print or warn (``job.output()`` keeps it).
        A job (``block=False``) shows it in its own view when displayed.
    ship_large
        Ship names larger than ``PARACELL_SHIP_LIMIT`` (default 1 GB), which
        are refused otherwise.
    cache
        ``True`` (the default store) or a store's name: keep each result as
        it arrives, and take the results of items stored before from the
        store instead of computing them (``%pmap --cache``).
    """
    options = MapOptions(
        chunksize=chunksize,  # type: ignore[arg-type]
        ordered=ordered,
        seed=seed,
        retries=retries,
        timeout=timeout,
        on_error=on_error,  # type: ignore[arg-type]
        targets=None if targets is None else tuple(targets),
        ship_large=ship_large,
    )
    _display_hooks()
    job = map_function(
        default_session(),
        func,
        iterable,
        options,
        block=block,
        local=local,
        observers=map_observers(
            _show_progress(progress, block), quiet=quiet or not block
        ),
        cache=cache,
        announce=_announce,
    )
    return job.result() if block else job


def pmap_comprehension(
    comprehension: str,
    namespace: dict[str, Any] | None = None,
    *,
    chunksize: int | str = "auto",
    ordered: bool = True,
    seed: int | None = None,
    retries: int = 2,
    timeout: float | None = None,
    on_error: str = "raise",
    progress: bool | str = "auto",
    block: bool = True,
    targets: Sequence[int] | None = None,
    local: bool = False,
    quiet: bool = False,
    ship_large: bool = False,
    cache: bool | str = False,
) -> list[Any] | MapJob:
    """``%pmap``'s own twin: a comprehension's text, run as ``%pmap`` runs it.

    ``paracell.pmap_comprehension("f(x) for x in xs")`` equals
    ``%pmap f(x) for x in xs``: the iterables and ``if`` clauses run here in
    ``namespace`` (default: the IPython user namespace, or ``__main__``),
    the element on the engines, with the names it reads shipped by
    themselves.  The options are :func:`pmap`'s.
    """
    job = start_pmap(
        comprehension,
        namespace,
        chunksize=chunksize,
        ordered=ordered,
        seed=seed,
        retries=retries,
        timeout=timeout,
        on_error=on_error,
        progress=progress,
        block=block,
        targets=targets,
        local=local,
        quiet=quiet,
        ship_large=ship_large,
        cache=cache,
    )
    return job.result() if block else job


def start_pmap(
    comprehension: str,
    namespace: dict[str, Any] | None = None,
    *,
    chunksize: int | str = "auto",
    ordered: bool = True,
    seed: int | None = None,
    retries: int = 2,
    timeout: float | None = None,
    on_error: str = "raise",
    progress: bool | str = "auto",
    block: bool = True,
    targets: Sequence[int] | None = None,
    local: bool = False,
    quiet: bool = False,
    ship_large: bool = False,
    cache: bool | str = False,
) -> MapJob:
    """:func:`pmap_comprehension`, returning the map's job either way
    (finished when ``block``): ``%pmap --timeline`` draws it."""
    options = MapOptions(
        chunksize=chunksize,  # type: ignore[arg-type]
        ordered=ordered,
        seed=seed,
        retries=retries,
        timeout=timeout,
        on_error=on_error,  # type: ignore[arg-type]
        targets=None if targets is None else tuple(targets),
        ship_large=ship_large,
    )
    _display_hooks()
    return map_comprehension(
        default_session(),
        parse_comprehension(comprehension),
        _user_namespace() if namespace is None else namespace,
        options,
        block=block,
        local=local,
        observers=map_observers(
            _show_progress(progress, block), quiet=quiet or not block
        ),
        cache=cache,
        announce=_announce,
    )


def panel() -> Any:
    """The cluster control panel (``%cluster panel``): state, Start / Stop /
    Scale, launcher, idle timeout and a live table of engines.

    A widget in a notebook; in a terminal, the cluster's status.
    """
    return cluster_panel(default_session())


def jobs_panel() -> Any:
    """Every background job, live, with Cancel per job (``%jobs panel``)."""
    return jobs_panel_view(default_jobs())


def _display_hooks() -> None:
    """In IPython, show jobs and timelines as their views when displayed."""
    ipython = sys.modules.get("IPython")
    shell = ipython.get_ipython() if ipython is not None else None
    if shell is not None:
        register_formatters(shell)


def _announce(report: StartReport | None) -> None:
    """Say in one line that a cluster was started on the caller's behalf."""
    if report is not None:
        print(report.started_on_demand())


def _show_progress(progress: bool | str, block: bool) -> bool:
    if progress == "auto":
        if not block:
            return False
        from IPython import get_ipython

        return get_ipython() is not None or sys.stdout.isatty()
    return bool(progress)


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
    session = default_session()
    if targets is not None:
        if cache:
            raise InvalidRequest(
                "cache keeps a background cell's outcome; it does not go with targets"
            )
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


def _user_namespace() -> dict[str, Any]:
    from IPython import get_ipython

    shell = get_ipython()
    if shell is not None:
        namespace: dict[str, Any] = shell.user_ns
        return namespace
    import __main__

    return vars(__main__)


# -- the result store (%cache) ---------------------------------------------


def cache_info() -> CacheReport:
    """The result stores: entries, size and last use of each; ``%cache``."""
    return _cache_info()


def clear_cache(name: str | None = None) -> int:
    """Remove every entry of store ``name`` (all stores: ``None``); returns
    how many; ``%cache clear [NAME]``."""
    return int(_clear_cache(name))


def cache_limit(size: int | str | None) -> int:
    """Keep at most ``size`` (bytes, or ``"5GB"``; ``None``: no limit) in the
    stores, least recently used entries evicted first; returns how many were
    evicted; ``%cache limit``."""
    return int(set_cache_limit(size))


def cache_dir(path: str | None) -> str:
    """Keep the stores in ``path`` from now on (``None``: the default,
    ``.paracell`` in the working directory); ``%cache dir``."""
    return str(set_cache_dir(path))
