"""Waiting on futures in a way an interrupt cannot wedge.

``concurrent.futures.wait`` takes the lock of every future it waits on, one
after the other, before it waits.  A KeyboardInterrupt that lands between
two of those takes leaves the locks taken so far held for ever: the next
thread to finish one of those futures (ipyparallel's, with a task's reply)
blocks on it, and with it every reply after.  An interrupt at that moment
froze the kernel's next map.  :func:`wait_for` lets go of what such an
interrupted wait held, then lets the interrupt go on.
"""

from __future__ import annotations

import concurrent.futures
from collections.abc import Iterable
from typing import Any

__all__ = ["wait_for"]


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
