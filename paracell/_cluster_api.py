"""The twins of ``%cluster``: start, connect, stop, scale, restart, status, panel."""

from __future__ import annotations

from typing import Any

from .kernel_backend import (
    ClusterStatus,
    LauncherOptions,
    StartReport,
    StopReport,
    default_session,
)
from .widgets import cluster_panel

__all__ = ["connect", "panel", "restart", "scale", "start", "status", "stop"]


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


def panel() -> Any:
    """The cluster control panel (``%cluster panel``): state, Start / Stop /
    Scale, launcher, idle timeout and a live table of engines.

    A widget in a notebook; in a terminal, the cluster's status.
    """
    return cluster_panel(default_session())
