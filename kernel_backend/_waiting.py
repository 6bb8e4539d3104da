"""Waiting on futures in a way an interrupt cannot wedge.

``concurrent.futures.wait`` takes the lock of every future it waits on, one
after the other, before it waits.  A KeyboardInterrupt that lands between
two of those takes leaves the locks taken so far held for ever: the next
thread to finish one of those futures (ipyparallel's, with a task's reply)
blocks on it, and with it every reply after.  An interrupt at that moment
froze the kernel's next map.  :func:`wait_for` lets go of what such an
interrupted wait held, then lets the interrupt go on.

For the same reason :func:`finished` asks whether a future is done without
taking its lock: ``Future.done()`` takes it, and an interrupt landing just
as it has leaves it taken for good.
"""

from __future__ import annotations

import concurrent.futures
from collections.abc import Iterable
from typing import Any

__all__ = ["finished", "wait_for"]


def wait_for(
    futures: Iterable[Any], timeout: float | None, *, first: bool = False
) -> tuple[set[Any], set[Any]]:
    """``concurrent.futures.wait(futures, timeout)`` (``first``: until one is
    done): the done and the not done."""
    futures = list(futures)
    when = (
        concurrent.futures.FIRST_COMPLETED
        if first
        else concurrent.futures.ALL_COMPLETED
    )
    try:
        done, pending = concurrent.futures.wait(futures, timeout, return_when=when)
    except BaseException:
        for future in futures:
            condition = getattr(future, "_condition", None)
            owned = getattr(condition, "_is_owned", None)
            if owned is not None and owned():
                condition.release()  # type: ignore[union-attr]
        raise
    return done, pending


#: ``concurrent.futures.Future`` states in which it is done.
_DONE_STATES = frozenset({"CANCELLED", "CANCELLED_AND_NOTIFIED", "FINISHED"})


def finished(future: Any) -> bool:
    """``future.done()``, read without taking the future's lock (for the
    notebook's main thread, where an interrupt can land anywhere)."""
    state = getattr(future, "_state", None)
    if isinstance(state, str):
        return state in _DONE_STATES
    return bool(future.done())
