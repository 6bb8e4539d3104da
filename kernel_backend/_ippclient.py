"""paracell's side of the ipyparallel ``Client``: the one place tasks go out.

:class:`IppClient` sends tasks to engines, takes finished ones out of the
client's caches, interrupts tasks, sends names to engines joining a map,
asks whether the controller answers, and probes new engines for their host,
pid and clock (filling in the :class:`~._ledger.EngineLedger`).  The session
attaches it to a client when a cluster starts or is connected to, and
detaches it when the cluster goes.
"""

from __future__ import annotations

import contextlib
import math
import signal
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any

import ipyparallel as ipp
from ipyparallel import AsyncResult

from ._clock import ClockOffset, measure_offsets
from ._engine import engine_identity
from ._errors import NoCluster
from ._ippstate import _queue_status
from ._ledger import EngineLedger
from ._reaping import _pid_alive
from ._sharedmem import SharedArrays
from ._shipping import NameShipper
from ._waiting import finished, wait_for

__all__ = ["IppClient"]

_PROBE_TIMEOUT = 10.0
#: Seconds between the interrupts sent to a task that has not stopped yet.
_RESIGNAL = 0.25
#: How long past the grace an interrupt waits for the engines' nannies to
#: confirm its signals (an engine that died never does).
_SIGNAL_SETTLE = 0.25


class IppClient:
    """Tasks to and from the engines of one client at a time.

    ``lock`` is the session's: probes run under it, so that two threads do
    not probe the same engine.
    """

    def __init__(
        self,
        ledger: EngineLedger,
        lock: threading.RLock,
        *,
        on_dropped: Callable[[], None] | None = None,
    ) -> None:
        self.client: ipp.Client | None = None
        self.shipper = NameShipper(self.purge)
        # the notebook dropped a large array engines hold (any thread)
        self._on_dropped = on_dropped
        # one view per engine, made once: ``client[eid]`` builds a new
        # DirectView (traitlets and all) each time it is asked
        self._views: dict[int, Any] = {}
        self._ledger = ledger
        self._lock = lock
        self._controller_seen: tuple[float, bool] = (0.0, True)

    def attach(self, client: ipp.Client, shared: SharedArrays | None) -> None:
        """Work goes to ``client``'s engines from now on (``shared``: large
        arrays to engines on this machine through shared memory)."""
        self.client = client
        self._views = {}
        self.shipper.close()
        if shared is not None:
            shared.on_dropped = self._on_dropped
        self.shipper = NameShipper(
            self.purge,
            shared=shared,
            is_local=self._ledger.is_local,
            on_dropped=self._on_dropped,
        )

    def detach(self) -> None:
        """The cluster is gone: nothing shipped survives (the client itself
        is the session's to close)."""
        self._controller_seen = (0.0, True)
        self.shipper.close()
        self.shipper = NameShipper(self.purge)
        self.client = None
        self._views = {}

    # -- the controller and the engines -----------------------------------------

    def controller_responds(self, *, max_age: float, local_pid: int | None) -> bool:
        """Whether the controller is alive and answering (asked at most every
        ``max_age`` seconds; ``local_pid``, a controller on this machine, is
        looked up in the process table, others are sent a query that may
        wait up to 2 s)."""
        client = self.client
        if client is None:
            return False
        checked, ok = self._controller_seen
        if time.monotonic() - checked < max_age:
            return ok
        if local_pid is not None:
            ok = _pid_alive(local_pid)
        else:
            ok = _queue_status(client, None, timeout=2.0) is not None
        self._controller_seen = (time.monotonic(), ok)
        return ok

    def engine_ids(self) -> list[int]:
        """Ids of the engines available for work (not being removed)."""
        client = self.client
        if client is None:
            return []
        ids = self._ledger.available(client.ids)
        if self._ledger.unknown(ids):
            # engines that registered by themselves (a batch queue let them
            # run, a launch on demand): learn who they are and how their
            # clock runs before work lands on them
            with self._lock:
                if self.client is client:
                    self.probe(self._ledger.unknown(ids), 2.0)
        return ids

    def probe(
        self,
        ids: list[int],
        wait: float | None,
        client: ipp.Client | None = None,
        *,
        same_clock: bool = False,
    ) -> None:
        """Learn host, pid and clock offset of engines not seen before
        (a few tiny tasks each; ``wait``: how long for their answers, None
        for the default).  ``same_clock``: the engines run on this machine,
        so their clock is the kernel's and needs no measuring."""
        client = client or self.client
        if client is None:
            return
        for eid in ids:
            rec = self._ledger.record(eid)
            if rec.pid is None and rec.pending_probe is None:
                rec.pending_probe = client[eid].apply_async(engine_identity)
                rec.probes += 1
        deadline = time.monotonic() + (_PROBE_TIMEOUT if wait is None else wait)
        for eid in ids:
            rec = self._ledger.record(eid)
            ar = rec.pending_probe
            if ar is None:
                continue
            with contextlib.suppress(Exception):
                ar.wait(max(0.0, deadline - time.monotonic()))
            if ar.ready():
                rec.pending_probe = None
                with contextlib.suppress(Exception):
                    rec.host, rec.pid = ar.get(0)
                self.purge(ar, client)
        # engines that answered, their clocks not yet measured: measured now,
        # before other work queues on them and delays the answers
        answering = [
            eid
            for eid in ids
            if (rec := self._ledger.record(eid)).pid is not None and rec.clock is None
        ]
        if answering and same_clock:
            for eid in answering:
                self._ledger.record(eid).clock = ClockOffset(0.0, 0.0)
        elif answering:
            self._measure_clocks(client, answering)

    def _measure_clocks(self, client: ipp.Client, ids: list[int]) -> None:
        def sent(eid: int) -> None:
            self._ledger.record(eid).probes += 1

        offsets = measure_offsets(
            client,
            ids,
            on_sent=sent,
            on_done=lambda ar: self.purge(ar, client),
        )
        for eid in ids:
            # not measured (no answer in time): taken as the kernel's clock
            self._ledger.record(eid).clock = offsets.get(
                eid, ClockOffset(0.0, math.inf)
            )

    # -- tasks -------------------------------------------------------------------

    def join(self, engine: int, shipment: Any) -> None:
        """Send ``engine``, joining a map under way, the names it needs (no
        wait: the engine runs them before the chunks sent after)."""
        with contextlib.suppress(Exception):  # a dead engine fails its chunk
            self.shipper.ship(self.require(), [engine], shipment, block=False)

    def pack(self, obj: Any) -> Any:
        """``obj`` pickled once for the many tasks that send it."""
        from ipyparallel.serialize import PrePickled

        return PrePickled(obj)

    def submit(self, engine: int, func: Callable[..., Any], *args: Any) -> Any:
        """Run ``func(*args)`` on ``engine``; returns its ``AsyncResult``.

        The request a ``DirectView.apply_async`` sends, sent without the
        view's bookkeeping (its decorators bind their arguments by signature
        and sync the view's lists of results on every call): about 0.07 ms
        less of the kernel's time before each task leaves, an eighth of a
        trivial ``%%parallel`` cell's.  Raises ``IndexError`` for an engine
        that is gone, as the view does.
        """
        client = self.require()
        view = self._views.get(engine)
        if view is None or view.client is not client:
            view = self._views[engine] = client[engine]
        idents, targets = client._build_targets(engine)
        future = client.send_apply_request(
            view._socket, func, list(args), ident=idents[0], metadata={"label": None}
        )
        return AsyncResult(
            client, future, fname=_task_name(func), targets=targets, owner=True
        )

    def purge(self, result: Any, client: ipp.Client | None = None) -> None:
        """Drop a finished task from ipyparallel's client-side caches.

        Results are paracell's once taken; the client would otherwise keep
        every task's result for the life of the kernel.  A task whose output
        is still to come is left to ipyparallel, which drops it when it has.
        """
        client = client or self.client
        if client is None:
            return
        outputs = getattr(client, "_output_futures", {})
        for msg_id in result.msg_ids:
            output = outputs.get(msg_id)
            if output is not None and not output.done():
                # the task's ``idle`` (its output complete) can come after its
                # reply, and finds the task through these caches; ipyparallel
                # drops them itself once it has come
                continue
            for cache in (client.results, client.metadata):
                cache.pop(msg_id, None)
            for name in ("_futures", "_output_futures"):
                getattr(client, name, {}).pop(msg_id, None)
        # the client also lists every message id it ever sent
        history = getattr(client, "history", None)
        if isinstance(history, list) and len(history) > 20_000:
            del history[:-2_000]

    def interrupt(self, tasks: dict[Any, int], grace: float = 1.5) -> list[Any]:
        """Stop tasks: abort the queued, SIGINT the running, wait ``grace`` s.

        ``tasks`` maps each task's AsyncResult to its engine.  Tasks still
        running after the grace period are marked stale in the ledger (their
        engines stay out of new work); they are returned.
        """
        client = self.client
        if client is None or not tasks:
            return []
        engines = sorted(set(tasks.values()))
        msg_ids = [m for ar in tasks for m in ar.msg_ids]
        with contextlib.suppress(Exception):
            client.abort(jobs=msg_ids, targets=engines, block=False)
        # An engine ignores SIGINT between tasks, so a signal that lands
        # before a just-sent task starts is lost: it is sent again, to the
        # engines whose tasks still run, until they end or the grace is up.
        deadline = time.monotonic() + grace
        running = dict(tasks)
        sent = []  # (engine, future resolved when its nanny has signalled)
        while running:
            for eid in sorted(set(running.values())):
                with contextlib.suppress(Exception):
                    future = client.send_signal(signal.SIGINT, [eid], block=False)
                    sent.append((eid, future))
            wait = min(_RESIGNAL, deadline - time.monotonic())
            if wait <= 0:
                break
            wait_for(running, wait)
            running = {ar: e for ar, e in running.items() if not finished(ar)}
            if time.monotonic() >= deadline:
                break
        # A signal still on its way when this returns would land on whatever
        # the engine runs next (the next map's chunk, interrupted for
        # nothing): wait until every one sent has been delivered.
        # (within the grace, or a moment past it: an engine that died never
        # confirms, and an interrupt must still return promptly; an engine
        # whose signal is still on its way then takes no new work until it
        # lands: see ``_stale``)
        settle = max(deadline, time.monotonic() + _SIGNAL_SETTLE)
        for eid, future in sent:
            with contextlib.suppress(Exception):
                future.result(timeout=max(0.0, settle - time.monotonic()))
            if not finished(future):
                self._ledger.mark_signalling(eid, future)
        left = []
        for ar, engine in tasks.items():
            if finished(ar):
                self.purge(ar)
            else:
                self._ledger.mark_stale(engine, ar)
                left.append(ar)
        return left

    def forget_engines(self, ids: Iterable[int]) -> None:
        """Engines that died: nothing shipped to them survives."""
        ids = list(ids)
        self.shipper.forget(ids)
        for eid in ids:
            self._ledger.stale.forget_engine(eid)

    def require(self) -> ipp.Client:
        """The client; raises ``NoCluster`` if none is attached."""
        if self.client is None:
            raise NoCluster("no cluster is active: start one with %cluster start")
        return self.client


def _task_name(func: Any) -> str:
    """What an ``AsyncResult`` calls its function (a pre-pickled one has no
    name of its own)."""
    name = getattr(func, "__name__", None)
    return name if isinstance(name, str) else type(func).__name__
