"""Engines on demand for one started cluster: launching as work waits,
stopping idle ones down to the minimum.

:class:`OnDemand` applies the policy of :mod:`._demand` to a
:class:`~._started.StartedCluster`: it launches engines in a thread of their
own (the work that wanted them goes on meanwhile), remembers why the count
is what it is (for status), and a launch's failure.  The session makes one
when it starts a cluster with ``min_engines``/``max_engines`` and closes it
when the cluster goes.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

import ipyparallel as ipp

from ._demand import Demand
from ._ippclient import IppClient
from ._ledger import EngineLedger
from ._processes import _count
from ._started import StartedCluster

__all__ = ["OnDemand"]


class OnDemand:
    """Launching and stopping engines of ``started`` within ``demand``.

    ``lock`` is the session's; ``changed`` tells the session's observers that
    the cluster changed.  Every method but :meth:`want` is called under the
    lock.
    """

    def __init__(
        self,
        demand: Demand,
        idle_timeout: float | None,
        *,
        started: StartedCluster,
        engines: IppClient,
        ledger: EngineLedger,
        lock: threading.RLock,
        changed: Callable[[], None],
    ) -> None:
        self.demand = demand
        #: why the count is what it is (status shows it)
        self.why = (
            f"{_count(demand.minimum)} kept (--min)"
            if demand.minimum
            else "none until work waits"
        )
        self.launching = 0  # engines launched that have not registered yet
        self.error: str | None = None  # why the last launch failed
        self._idle_timeout = idle_timeout
        self._started = started
        self._engines = engines
        self._ledger = ledger
        self._lock = lock
        self._changed = changed
        self._closed = False

    def close(self) -> None:
        """The cluster is gone: launches under way change nothing more."""
        self._closed = True

    def can_launch(self) -> bool:
        """Whether work waiting for an engine makes one start."""
        return not self._closed and self.error is None

    def words(self) -> str:
        """The start report's line on engines on demand."""
        return (
            f"{self.demand}: more start as work waits, idle ones stop after"
            f" {self._idle_timeout:g} s"
        )

    def want(self, engines: int, why: str, *, retry: bool = False) -> int:
        """Launch engines so that ``engines`` are up or on their way (see
        ``ClusterSession.want``); returns how many were launched."""
        with self._lock:
            client = self._engines.client
            if self._closed or client is None:
                return 0
            if self.error is not None and not retry:
                return 0
            up = len(self._engines.engine_ids())
            coming = self.launching + self._started.queued(client)
            add = self.demand.to_launch(engines, up, coming)
            if add <= 0:
                return 0
            self.error = None
            self.launching += add
            self._started.target = up + coming + add
            capped = " (--max)" if self.demand.target(engines) < engines else ""
            self.why = f"{_count(self._started.target)} for {why}{capped}"
            threading.Thread(
                target=self._launch,
                args=(client, add),
                name="paracell-launch",
                daemon=True,
            ).start()
        self._changed()
        return add

    def _launch(self, client: ipp.Client, count: int) -> None:
        """Start ``count`` engines and see them register."""
        error = None
        try:
            with self._lock:
                if self._closed:
                    return
                before = set(client.ids)
                engine_set = self._started.launch_engines(count)
            if not self._started.launch.batch:
                # batch engines arrive when the queue lets them; others are
                # waited for, so that a launcher that fails says so
                self._started.await_registration(client, before, count, engine_set)
        except Exception as err:
            error = str(err) or type(err).__name__
        finally:
            with self._lock:
                if not self._closed:
                    self.launching -= count
                    self._started.forget_queue()
                    if error is not None:
                        self.error = error
                        self.why = f"launching failed: {error}"
                        up = len(self._engines.engine_ids())
                        self._started.target = up + self.launching
            self._changed()

    def stop_idle(self, client: ipp.Client, ids: list[int]) -> list[int]:
        """Stop those of the idle engines ``ids`` that may stop: down to the
        minimum, none running a background job, and none while work waits
        for an engine.  Returns those stopped."""
        if self.launching:
            return []
        live = self._engines.engine_ids()
        ids = [e for e in ids if e in live and not self._ledger.reserved(e)]
        up = len(live)
        ids = self.demand.to_stop(ids, up)
        if ids:
            self._started.remove_engines(client, ids)
            self._started.target = up - len(ids)
            floor = (
                ", down to --min" if self._started.target == self.demand.minimum else ""
            )
            self.why = (
                f"{_count(len(ids))} stopped after {self._idle_timeout:g} s idle{floor}"
            )
        return ids
