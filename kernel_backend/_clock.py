"""Engine clocks against the kernel's: timelines drawn on one clock.

Engines on other hosts keep their own time; a chunk an engine says it started
at 12:00:03.200 may have started at 12:00:02.900 on the kernel's clock.  When
an engine registers, the session asks it the time a few times (Cristian's
method): a round trip sent at ``t0`` and answered at ``t1`` on the kernel's
clock, with the engine's reading ``te`` in between, puts the engine's clock
``te - (t0 + t1) / 2`` ahead, give or take half the round trip.  The round
trip with the least delay bounds the error best; that one is kept.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

__all__ = ["ClockOffset", "estimate_offset", "measure_offsets"]

#: Round trips per engine: the least delayed of a few is close to the best.
ROUNDS = 5


@dataclass(frozen=True)
class ClockOffset:
    """How far an engine's clock is ahead of the kernel's (seconds, may be
    negative), within ``± uncertainty``."""

    offset: float
    uncertainty: float

    def to_kernel(self, engine_time: float) -> float:
        """An engine's ``time.time()`` reading on the kernel's clock."""
        return engine_time - self.offset


def estimate_offset(samples: Iterable[tuple[float, float, float]]) -> ClockOffset:
    """The offset from round trips ``(t0, te, t1)``: sent at ``t0`` and
    answered at ``t1`` (kernel's clock), read ``te`` on the engine's clock.

    The round trip with the least delay wins: the engine read its clock
    somewhere between ``t0`` and ``t1``, so the midpoint is wrong by at most
    half the round trip.  Raises ``ValueError`` without a usable sample.
    """
    best: tuple[float, float, float] | None = None
    for t0, te, t1 in samples:
        if t1 < t0:  # the kernel's clock stepped back meanwhile: unusable
            continue
        if best is None or t1 - t0 < best[2] - best[0]:
            best = (t0, te, t1)
    if best is None:
        raise ValueError("no round trip to estimate a clock offset from")
    t0, te, t1 = best
    return ClockOffset(te - (t0 + t1) / 2, (t1 - t0) / 2)


def measure_offsets(
    client: Any,
    engines: Sequence[int],
    *,
    rounds: int = ROUNDS,
    timeout: float = 2.0,
    clock: Callable[[], float] = time.time,
    on_sent: Callable[[int], None] | None = None,
    on_done: Callable[[Any], None] | None = None,
) -> dict[int, ClockOffset]:
    """Each engine's clock offset, from ``rounds`` round trips each.

    ``clock`` is what runs on the engines (the engine's ``time.time``).  The
    engines are asked together, one round at a time; an engine that does not
    answer within ``timeout`` is left out.  ``on_sent(engine)`` hears of each
    task sent, ``on_done(task)`` gets each task once it is done and read (to
    purge it from the client's caches).
    """
    samples: dict[int, list[tuple[float, float, float]]] = {e: [] for e in engines}
    deadline = time.monotonic() + timeout
    asked = list(engines)
    for _ in range(rounds):
        pending = []
        for eid in asked:
            answered: list[float] = []
            t0 = time.time()
            ar = client[eid].apply_async(clock)
            # the reply's arrival, stamped in the client's receiving thread
            # (waiting here would add the wait for the other engines)
            ar.add_done_callback(lambda _, a=answered: a.append(time.time()))
            if on_sent is not None:
                on_sent(eid)
            pending.append((eid, t0, ar, answered))
        for eid, t0, ar, answered in pending:
            with contextlib.suppress(Exception):
                ar.wait(max(0.0, deadline - time.monotonic()))
            # (the callback runs just after the task counts as done)
            settle = time.monotonic() + 0.05
            while ar.ready() and not answered and time.monotonic() < settle:
                time.sleep(0.0005)
            if ar.ready() and answered:
                with contextlib.suppress(Exception):
                    samples[eid].append((t0, float(ar.get(0)), answered[0]))
            if on_done is not None:
                ar.add_done_callback(on_done)  # at once if done already
        # an engine that did not answer is not asked again
        asked = [eid for eid, _, ar, _ in pending if ar.ready()]
        if not asked or time.monotonic() > deadline:
            break
    offsets = {}
    for eid, taken in samples.items():
        with contextlib.suppress(ValueError):
            offsets[eid] = estimate_offset(taken)
    return offsets
