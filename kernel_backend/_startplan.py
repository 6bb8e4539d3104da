"""A start's arguments, checked before anything starts.

:func:`plan_start` turns the arguments of
:meth:`~paracell.kernel_backend.ClusterSession.start` into a
:class:`StartPlan` (the launcher's plan, engines on demand, threads per
engine, the idle timeout), raising ``InvalidRequest`` for any mistake, so
that a start that would fail fails before it launches a process.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from ._demand import DEFAULT_IDLE_TIMEOUT, Demand, check_demand
from ._errors import InvalidRequest
from ._launchers import LauncherOptions, LaunchPlan, plan
from ._limits import check_engine_count
from ._processes import _check_count, _check_launcher
from ._profiles import check_profile_name

__all__ = ["StartPlan", "plan_start"]


@dataclass(frozen=True)
class StartPlan:
    """What a start will do, checked."""

    launch: LaunchPlan
    profile: str | None
    demand: Demand | None  # engines on demand, or None for a fixed count
    max_given: bool  # the maximum on demand came from the user
    idle_timeout: float | None
    threads: int | None  # BLAS/OpenMP threads per engine
    threads_given: bool

    @property
    def first(self) -> int | None:
        """Engines to start at once (None: the launch plan's count)."""
        return None if self.demand is None else self.demand.minimum


def plan_start(
    n: int | None,
    *,
    launcher: str,
    profile: str | None,
    idle_timeout: float | None,
    timeout: float,
    force: bool,
    threads: int | None,
    options: LauncherOptions | None,
    min_engines: int | None,
    max_engines: int | None,
) -> StartPlan:
    """Check a start's arguments (see ``ClusterSession.start``) and plan it."""
    on_demand = min_engines is not None or max_engines is not None
    if n is not None:
        _check_count(n, "number of engines", minimum=1)
    launcher = _check_launcher(launcher)
    profile = check_profile_name(profile)
    if on_demand:
        # the arguments alone; the maximum is known once the plan is
        low = min_engines if isinstance(min_engines, int) else 0
        check_demand(min_engines, max_engines, n=n, default_max=max(1, low))
        n = max_engines
    if n is not None:
        # before planning: a plan for an absurd count is itself costly
        check_engine_count(n, launcher, force=force)
    launch = plan(launcher, n, options or LauncherOptions(), force=force)
    n = launch.n
    check_engine_count(n, launcher, force=force)
    demand = None
    if on_demand:
        demand = check_demand(
            min_engines,
            n if max_engines is not None else None,
            n=None,
            default_max=n,
        )
        if idle_timeout is None:
            idle_timeout = DEFAULT_IDLE_TIMEOUT
    per_engine = _threads_per_engine(threads, launcher, n)
    if idle_timeout is not None and not idle_timeout > 0:
        raise InvalidRequest(
            f"--idle-timeout must be a positive number of seconds, not {idle_timeout}"
        )
    if not timeout > 0:
        raise InvalidRequest(f"timeout must be positive, not {timeout}")
    return StartPlan(
        launch,
        profile,
        demand,
        max_engines is not None,
        idle_timeout,
        per_engine,
        threads is not None,
    )


def _threads_per_engine(threads: int | None, launcher: str, n: int) -> int | None:
    """BLAS/OpenMP threads per engine: as given, or for local engines the
    cores shared out, so that ``n`` engines doing numpy work do not
    oversubscribe them."""
    if threads is not None:
        _check_count(threads, "--threads", minimum=1)
        return threads
    if launcher == "local":
        return max(1, (os.cpu_count() or 1) // n)
    return None
