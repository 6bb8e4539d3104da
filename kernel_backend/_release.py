"""Engines let go of a large array soon after the notebook drops it.

An array shipped to engines stays in their memory (a mapping of its
shared-memory segment, or a copy) until they are told to drop it: at the
end of the cell that dropped it, or with the next names shipped to them.
Code that is not run as cells (a script, a loop inside one cell) would keep
a dropped array on the engines until its next map, perhaps for good.

So the notebook's drop itself asks for a release.  It is noticed by a
finalizer, which runs wherever the last reference went: on any thread, at
any moment, perhaps inside paracell's own code holding its locks.  There
:meth:`SoonRelease.request` only notes the request; a short-lived thread of
its own then calls the release, which tells the engines only when no work
is under way (see :meth:`~._session.ClusterSession.release_dropped_arrays`).

The thread first waits a moment (:data:`DELAY`).  Code that makes an array
again and maps it at once (``X = np.load(path)`` run again, then a map)
ships the same content: the map, under way by then, keeps it on the engines
instead of writing and mapping it anew (see ``NameShipper.ship``).
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections.abc import Callable
from typing import Any

__all__ = ["DELAY", "SoonRelease", "noting"]

#: Seconds between a request and its release.
DELAY = 0.1


def noting(
    dropped: list[str], digest: str, notify: Callable[[], None] | None
) -> Callable[[Any], None]:
    """A weakref callback for an object shipped as ``digest``: it notes the
    digest in ``dropped``, then calls ``notify()`` (if given)."""

    def note(_ref: Any) -> None:
        dropped.append(digest)
        if notify is not None:
            notify()

    return note


class SoonRelease:
    """Calls ``release()`` on a thread of its own, ``delay`` seconds after a
    request.

    Requests made meanwhile, or while a release runs, lead to one more; the
    thread ends when none is left.  Requests in a forked child
    (multiprocessing in the notebook) are ignored: the engines are the
    parent's.
    """

    def __init__(self, release: Callable[[], None], delay: float = DELAY) -> None:
        self._release = release
        self.delay = delay
        self._pid = os.getpid()
        # re-entrant: a finalizer can run (and request) while this thread
        # holds it, in the middle of making the thread
        self._books = threading.RLock()
        self._wanted = False
        self._thread: threading.Thread | None = None

    def request(self) -> None:
        """Ask for a release (cheap; safe from a finalizer on any thread)."""
        if os.getpid() != self._pid:
            return
        with self._books:
            self._wanted = True
            if self._thread is not None:
                return
            thread = threading.Thread(
                target=self._run, name="paracell-release", daemon=True
            )
            self._thread = thread
        try:
            thread.start()
        except RuntimeError:  # the interpreter is shutting down
            with self._books:
                if self._thread is thread:
                    self._thread = None

    def _run(self) -> None:
        while True:
            time.sleep(self.delay)
            with self._books:
                if not self._wanted:
                    self._thread = None
                    return
                self._wanted = False
            # a release that fails (the cluster going away) is not retried:
            # the next cell's end or shipment lets the engines know
            with contextlib.suppress(Exception):
                self._release()
