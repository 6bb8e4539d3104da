"""The Python twins of the magics: the same operations, for scripts and tests."""

from __future__ import annotations

from .kernel_backend import (
    ClusterStatus,
    StartReport,
    StopReport,
    default_session,
)

__all__ = ["connect", "restart", "scale", "start", "status", "stop"]


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
