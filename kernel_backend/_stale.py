"""Cancelled work that did not stop, and getting its engines back.

When a map or job is cancelled, paracell aborts its queued tasks and sends
SIGINT to the running ones.  A task that has not answered after the grace
period keeps its engine out of new work (the next call must not queue behind
it).  Usually the task ends soon after.  Two things can keep it from ever
answering, and each would strand the engine for good:

* the SIGINT landed outside the user's code (while the engine was unpacking
  the task or sending its reply): the engine's kernel catches the
  ``KeyboardInterrupt``, drops that message, and no reply ever comes;
* the task is stuck where SIGINT does nothing (a long call in C).

So once a stale task is a little old, its engine gets a tiny probe task.  An
engine runs its tasks in order: a probe that comes back while the stale task
has not means the stale task's reply is lost, and the engine is free.  A probe
that does not come back either means the engine is stuck; the session then
replaces that engine (when it started it) so the cluster keeps its size.

A probe still out when the stale task ends takes the task's place: it may have
met a late SIGINT itself, and the hub would count a lost probe on its engine
for good.

A SIGINT whose delivery the engine's nanny has not confirmed when the
interrupt returns could still land on whatever the engine runs next (the next
map's chunk, dropped or interrupted for nothing), so that engine takes no new
work until the nanny confirms, or for ``STUCK_AFTER`` at most (an engine that
never confirms is gone, and its heartbeat says so).
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass, field
from typing import Any

from ._engine import engine_identity

__all__ = ["StaleWork"]

#: A stale task this old gets its engine probed.
PROBE_AFTER = 2.0
#: An engine whose probe has not come back by then is stuck.
STUCK_AFTER = 10.0


@dataclass
class StaleReview:
    """What one look at the stale work found."""

    engines: set[int] = field(default_factory=set)  # still kept out of new work
    stuck: set[int] = field(default_factory=set)  # to be replaced
    finished: list[Any] = field(default_factory=list)  # tasks to purge


class StaleWork:
    """Per engine: cancelled tasks still out, since when, and its probe."""

    def __init__(self) -> None:
        self._tasks: dict[int, list[Any]] = {}
        self._since: dict[int, float] = {}
        self._probes: dict[int, Any] = {}
        #: engine -> replies that will never come (the hub still counts them)
        self.lost: dict[int, int] = {}
        #: engine -> signals not yet confirmed delivered, and when sent
        self._signals: dict[int, list[tuple[Any, float]]] = {}

    def add(self, engine: int, task: Any) -> None:
        self._tasks.setdefault(engine, []).append(task)
        self._since.setdefault(engine, time.monotonic())
        # a probe sent before this task proves nothing about it: send anew
        self._probes.pop(engine, None)

    def signalling(self, engine: int, future: Any) -> None:
        """A signal sent to ``engine`` whose delivery is not confirmed yet."""
        self._signals.setdefault(engine, []).append((future, time.monotonic()))

    def holds(self, engine: int) -> bool:
        """Whether cancelled work (or a signal meant for it) may still hit
        ``engine``."""
        return engine in self._tasks or engine in self._signals

    def clear(self) -> None:
        self._signals.clear()
        self._tasks.clear()
        self._since.clear()
        self._probes.clear()
        self.lost.clear()

    def review(self, client: Any) -> StaleReview:
        """Drop what ended, probe old stale engines, settle lost replies."""
        review = StaleReview()
        now = time.monotonic()
        for eid, signals in list(self._signals.items()):
            signals = [
                (future, sent)
                for future, sent in signals
                if not future.done() and now - sent < STUCK_AFTER
            ]
            if signals:
                self._signals[eid] = signals
                review.engines.add(eid)
            else:
                del self._signals[eid]
        for eid in list(self._tasks):
            pending = [t for t in self._tasks[eid] if not t.done()]
            probe = self._probes.get(eid)
            if not pending and probe is not None and not probe.done():
                # the stale work ended while its probe is still out: the
                # probe is the engine's stale work now (a late SIGINT may
                # drop its reply too, and the hub would count it forever)
                review.finished += self._tasks[eid]
                self._tasks[eid], self._since[eid] = [probe], now
                del self._probes[eid]
                review.engines.add(eid)
                continue
            if not pending or (probe is not None and probe.done()):
                # ended, or the engine ran the later probe: replies are lost
                if pending:
                    self.lost[eid] = self.lost.get(eid, 0) + len(pending)
                review.finished += [t for t in self._tasks[eid] if t.done()]
                if probe is not None:
                    review.finished.append(probe)
                self._forget(eid)
                continue
            self._tasks[eid] = pending
            age = now - self._since[eid]
            if probe is None and age >= PROBE_AFTER and client is not None:
                # an engine that is gone raises: the hub says so in time
                with contextlib.suppress(Exception):
                    self._probes[eid] = client[eid].apply_async(engine_identity)
            elif probe is not None and age >= STUCK_AFTER:
                review.stuck.add(eid)
            review.engines.add(eid)
        return review

    def forget_engine(self, eid: int) -> None:
        """``eid`` is gone (died or replaced): nothing of it is pending."""
        self._forget(eid)
        self.lost.pop(eid, None)
        self._signals.pop(eid, None)

    def _forget(self, eid: int) -> None:
        self._tasks.pop(eid, None)
        self._since.pop(eid, None)
        self._probes.pop(eid, None)
