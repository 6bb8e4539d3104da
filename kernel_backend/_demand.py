"""Engines on demand: launched as work waits, stopped when idle (crew's controller).

A cluster started with ``min_engines``/``max_engines`` keeps at least the
minimum running and launches more, up to the maximum, when work waits for an
engine: a map with no engines for its items, a background job with no free
engine.  Engines idle for the idle timeout stop again, down to the minimum,
so a batch allocation is held only while there is work.

This module holds the policy, as pure functions of counts;
:class:`~paracell.kernel_backend.ClusterSession` does the launching and
stopping, and remembers why the count is what it is (:class:`Demand.why`).
"""

from __future__ import annotations

from dataclasses import dataclass

from ._errors import InvalidRequest

__all__ = ["DEFAULT_IDLE_TIMEOUT", "Demand", "check_demand"]

#: Seconds an engine on demand may sit idle before it stops, when the start
#: names no ``idle_timeout`` (engines on demand that never stop would hold a
#: batch allocation for nothing).
DEFAULT_IDLE_TIMEOUT = 60.0


@dataclass(frozen=True)
class Demand:
    """At least ``minimum`` engines, at most ``maximum``, launched as work waits."""

    minimum: int
    maximum: int

    def target(self, wanted: int) -> int:
        """How many engines there should be when work wants ``wanted``."""
        return max(self.minimum, min(self.maximum, wanted))

    def to_launch(self, wanted: int, up: int, coming: int) -> int:
        """Engines to launch now: work wants ``wanted``, ``up`` are registered
        and ``coming`` were launched and have not registered yet."""
        return max(0, self.target(wanted) - up - coming)

    def to_stop(self, idle: list[int], up: int) -> list[int]:
        """Which of the ``idle`` engines (due to stop) may stop, keeping the
        minimum: the newest (highest id) first."""
        room = max(0, up - self.minimum)
        return sorted(idle, reverse=True)[:room]

    def __str__(self) -> str:
        return f"on demand, {self.minimum} to {self.maximum}"


def check_demand(
    minimum: object, maximum: object, *, n: int | None, default_max: int
) -> Demand:
    """Validate ``min_engines``/``max_engines`` (raises ``InvalidRequest``).

    ``default_max`` stands for a maximum not given (the launcher's default
    engine count); ``n``, a fixed count, does not go with either.
    """
    if n is not None:
        raise InvalidRequest(
            "give -n (a fixed number of engines) or --min/--max (engines on"
            " demand), not both"
        )
    for flag, value in (("--min", minimum), ("--max", maximum)):
        if value is None:
            continue
        least = 0 if flag == "--min" else 1
        if isinstance(value, bool) or not isinstance(value, int) or value < least:
            raise InvalidRequest(
                f"{flag} must be a whole number >= {least}, not {value!r}"
            )
    low = minimum if isinstance(minimum, int) else 0
    high = maximum if isinstance(maximum, int) else default_max
    if low > high:
        given = "--max" if maximum is not None else "the default maximum"
        raise InvalidRequest(f"--min {low} is more than {given} {high}")
    return Demand(low, high)
