"""Stopping engines that sat idle (crew's ``seconds_idle``).

:class:`IdleReaper` is a thread that watches the engines' queues and hands
those idle for the timeout to the session, which decides which of them stop
(none while work holds the engines; with engines on demand, down to the
minimum).
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable

import ipyparallel as ipp

from ._ippstate import _queue_status

__all__ = ["IdleReaper"]


class IdleReaper(threading.Thread):
    """Stops engines that sat idle for ``timeout`` seconds.

    It polls with a client of its own (from ``connection_file``): ipyparallel
    clients are not thread-safe, and the user's work must never share sockets
    with this thread.  ``busy()`` says work holds the engines (nothing is
    idle meanwhile); ``stop(due, still_wanted)`` stops what may stop of the
    engines ``due`` and returns those it stopped, doing nothing once
    ``still_wanted()`` is false (the reaper was closed meanwhile).
    """

    def __init__(
        self,
        connection_file: str | None,
        timeout: float,
        *,
        busy: Callable[[], bool],
        stop: Callable[[list[int], Callable[[], bool]], list[int]],
    ) -> None:
        super().__init__(name="paracell-idle-reaper", daemon=True)
        self._path = connection_file
        self._timeout = timeout
        self._busy = busy
        self._stop_due = stop  # not _stop: threading.Thread has one
        self._stopping = threading.Event()

    def close(self) -> None:
        self._stopping.set()
        if self.is_alive() and threading.current_thread() is not self:
            self.join(timeout=5)

    def run(self) -> None:
        try:
            client = ipp.Client(self._path, timeout=10)
        except Exception:
            return
        idle_since: dict[int, float] = {}
        period = min(1.0, self._timeout / 4)
        try:
            while not self._stopping.wait(period):
                if self._busy():
                    idle_since.clear()
                    continue
                due = self._due(client, idle_since)
                if due:
                    stopped = self._stop_due(due, self._open)
                    for eid in stopped:
                        idle_since.pop(eid, None)
        finally:
            with contextlib.suppress(Exception):
                client.close(linger=0)

    def _open(self) -> bool:
        return not self._stopping.is_set()

    def _due(self, client: ipp.Client, idle_since: dict[int, float]) -> list[int]:
        """Engines idle for the timeout (``idle_since`` kept up to date)."""
        queues = _queue_status(client, None, timeout=2.0)
        if queues is None:
            return []
        now = time.monotonic()
        due = []
        for eid, q in queues.items():
            if not isinstance(eid, int):
                continue
            if q.get("queue", 0) + q.get("tasks", 0) > 0:
                idle_since.pop(eid, None)
            elif now - idle_since.setdefault(eid, now) >= self._timeout:
                due.append(eid)
        return due
