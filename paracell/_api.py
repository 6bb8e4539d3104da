"""The Python twins of the magics: the same operations, for scripts and tests."""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from .kernel_backend import (
    ClusterStatus,
    MapJob,
    MapOptions,
    StartReport,
    StopReport,
    default_session,
    map_function,
)
from .widgets import TextProgress

__all__ = ["connect", "pmap", "restart", "scale", "start", "status", "stop"]


def start(
    n: int | None = None,
    *,
    launcher: str = "local",
    profile: str | None = None,
    idle_timeout: float | None = None,
    timeout: float = 60.0,
) -> StartReport:
    """Start a cluster of ``n`` engines (default: one per CPU); ``%cluster start``.

    Parameters
    ----------
    n
        Number of engines.
    launcher
        ipyparallel engine launcher: local, mpi, ssh, slurm, pbs, sge, lsf or
        htcondor.  Non-local launchers take their settings from the profile's
        ``ipcluster_config.py``.
    profile
        IPython profile holding the cluster's files and configuration.
    idle_timeout
        Stop engines idle this many seconds; the next call restarts them.
    timeout
        Give up (and clean up) if the engines are not up by then.
    """
    return default_session().start(
        n,
        launcher=launcher,
        profile=profile,
        idle_timeout=idle_timeout,
        timeout=timeout,
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


def scale(n: int) -> int:
    """Add or remove engines to reach ``n``; returns the change; ``%cluster scale``."""
    return default_session().scale(n)


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
    """
    options = MapOptions(
        chunksize=chunksize,  # type: ignore[arg-type]
        ordered=ordered,
        seed=seed,
        retries=retries,
        timeout=timeout,
        on_error=on_error,  # type: ignore[arg-type]
        targets=None if targets is None else tuple(targets),
    ).validated()
    session = default_session()
    if not local:
        _announce(session.ensure_engines())
    observers = [TextProgress()] if _show_progress(progress, block) else []
    job = map_function(
        session, func, iterable, options, block=block, local=local, observers=observers
    )
    return job.result() if block else job


def _announce(report: StartReport | None) -> None:
    """Say in one line that a cluster was started on the caller's behalf."""
    if report is not None:
        print(f"{report} (no cluster was active; %cluster stop ends it)")


def _show_progress(progress: bool | str, block: bool) -> bool:
    if progress == "auto":
        if not block:
            return False
        from IPython import get_ipython

        return get_ipython() is not None or sys.stdout.isatty()
    return bool(progress)
