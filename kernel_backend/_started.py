"""The engines of a cluster paracell started: launching, waiting, removing.

:class:`StartedCluster` holds the ipyparallel ``Cluster`` and its launch plan,
and does what changes its engine processes: starting the controller and the
first engines, launching more (SSH engines placed on their hosts), waiting
until they register (failing early when the launcher died), removing some,
restarting all, and asking a batch queue what still waits there.  The session
decides when; this module knows how.
"""

from __future__ import annotations

import contextlib
import logging
import time
from typing import Any

import ipyparallel as ipp

from ._batch import Waiting, waiting_engines
from ._errors import ClusterStartError, InvalidRequest
from ._ippclient import IppClient
from ._ippstate import (
    _cancel_waiting,
    _check_engines_configured,
    _engine_processes,
    _engine_set_exited,
    _late_engines_report,
    _launcher_failure,
    _launcher_pids,
    _queue_status,
    _tail,
    _wait_for,
)
from ._launchers import LaunchPlan, configure
from ._ledger import EngineLedger
from ._reaping import _reap_processes, _with_descendants
from ._sshhosts import place_engines, ssh_engines_running

__all__ = ["DEFAULT_START_TIMEOUT", "StartedCluster"]

_log = logging.getLogger("paracell.cluster")

DEFAULT_START_TIMEOUT = 60.0

#: Seconds a local engine may stay unregistered after the last of its
#: fellows registered before it is taken for stuck, killed and launched anew
#: (once per wait; the wait's own timeout still holds).
STALLED_AFTER = 15.0
_STOP_GRACE = 10.0


class StartedCluster:
    """A cluster paracell started, and the count of engines it aims for.

    Not thread-safe by itself: the session calls it under its lock (a launch
    on demand waits for registration outside it).
    """

    def __init__(
        self,
        cluster: ipp.Cluster,
        launch: LaunchPlan,
        ledger: EngineLedger,
        engines: IppClient,
    ) -> None:
        self.cluster = cluster
        self.launch = launch
        self.target = 0  # engines paracell means to have
        self._ledger = ledger
        self._engines = engines
        self._queued: tuple[float, int] = (0.0, 0)  # (asked when, count)

    @property
    def local(self) -> bool:
        """Whether the engines are plain processes on this machine."""
        return self.launch.local

    @property
    def controller_pid(self) -> int | None:
        """The controller's pid, when it runs here."""
        pid = getattr(self.cluster.controller, "pid", None)
        return pid if isinstance(pid, int) and self.local else None

    def owned_pids(self, engines_only: bool = False) -> list[int]:
        """Every local process of the cluster, children too."""
        roots = _launcher_pids(self.cluster, engines_only=engines_only)
        if self.local:
            roots += self._ledger.pids().values()
        return _with_descendants(roots)

    # -- starting ------------------------------------------------------------

    def start(self, count: int | None, timeout: float) -> ipp.Client:
        """Start the controller and ``count`` engines (None: the plan's)."""
        self.launch = configure(self.cluster, self.launch)
        cluster = self.cluster
        n = self.launch.n if count is None else count
        try:
            cluster.start_controller_sync()
            if n > 0:
                self.start_engines(n)
                _check_engines_configured(cluster)
            client = cluster.connect_client_sync()
        except (ClusterStartError, InvalidRequest):
            raise
        except Exception as err:
            raise ClusterStartError(_launcher_failure(cluster, err)) from None
        try:
            self.wait_for_engines(client, set(), n, timeout)
        except BaseException:
            with contextlib.suppress(Exception):
                client.close(linger=0)
            raise
        return client

    def wait_for_engines(
        self, client: ipp.Client, before: set[int], n: int, timeout: float
    ) -> None:
        """Wait until ``n`` engines are up; fail early if the launcher died.

        Engines from a batch queue arrive when the queue lets them: waiting
        ends with the first new one, or quietly at the timeout.
        """
        removed = self._ledger.removed
        deadline = time.monotonic() + timeout
        queued = self.launch.batch
        if queued:
            n = min(n, len(set(client.ids) - removed) + 1)
        first = len(set(before) - removed)
        seen, progress, relaunched = first, time.monotonic(), False
        while (up := len(set(client.ids) - removed)) < n:
            self._check_launchers()
            now = time.monotonic()
            if up != seen:
                seen, progress = up, now
            elif (
                self.local
                and not relaunched
                and up > first
                and now - progress > STALLED_AFTER
            ):
                # others registered long ago: the rest are stuck, not slow
                relaunched = self._relaunch_stuck(client, n - up)
                progress = now
            if now > deadline:
                if queued:
                    break
                raise ClusterStartError(
                    f"only {up} of {n} engines registered within {timeout:g} s;"
                    f" the logs say: {_late_engines_report(self.cluster)}"
                )
            time.sleep(0.02)
        new = [eid for eid in client.ids if eid not in before]
        self._engines.probe(new, None, client, same_clock=self.local)

    def _relaunch_stuck(self, client: ipp.Client, missing: int) -> bool:
        """Kill the local engines that have not registered and launch
        ``missing`` new ones; whether that was done.

        The engines that did register tell their pids; the others of the
        cluster's engine processes are the stuck ones.
        """
        # the processes first: one that registers meanwhile is then known
        processes = _engine_processes(self.cluster)
        registered = self._ledger.available(client.ids)
        self._engines.probe(registered, 5.0, client, same_clock=True)
        known = {self._ledger.record(eid).pid for eid in registered}
        if None in known:
            return False  # a registered engine did not say who it is
        stuck = [pid for pid in processes if pid not in known]
        _reap_processes(_with_descendants(stuck), grace=0.0)
        _log.warning(
            "%d engine(s) had not registered %g s after the others did;"
            " started %d new one(s) in their place",
            len(stuck),
            STALLED_AFTER,
            missing,
        )
        self.launch_engines(missing)
        return True

    def _check_launchers(self) -> None:
        """Raise ``ClusterStartError`` if the controller or every engine
        launcher exited."""
        controller = self.cluster.controller
        if controller is None or controller.state == "after":
            raise ClusterStartError(
                "the controller exited while engines were starting:"
                f" {_tail(controller.get_output() if controller else '')}"
            )
        sets = list(self.cluster.engines.values())
        if sets and all(_engine_set_exited(es) for es in sets):
            raise ClusterStartError(_launcher_failure(self.cluster, None))

    def add_engines(
        self, client: ipp.Client, count: int, timeout: float, *, force: bool = False
    ) -> None:
        """Launch ``count`` more engines and wait for them."""
        before = set(client.ids)
        live = len(before - self._ledger.removed)
        self.launch_engines(count, force=force)
        self.wait_for_engines(client, before, live + count, timeout)

    def launch_engines(self, count: int, *, force: bool = False) -> str:
        """:meth:`start_engines`, a launcher's failure told in its own words."""
        try:
            return self.start_engines(count, force=force)
        except InvalidRequest:
            raise
        except Exception as err:
            raise ClusterStartError(_launcher_failure(self.cluster, err)) from None

    def start_engines(self, count: int, *, force: bool = False) -> str:
        """Launch ``count`` more engines; returns their engine set's id.

        SSH engines go where :func:`place_engines` says: the hosts' counts
        hold across scaling, not only at the start (``force``, or a start
        with ``force``: past them, round-robin).
        """
        launch, cluster = self.launch, self.cluster
        kwargs: dict[str, Any] = {}
        if launch.launcher == "ssh" and launch.hosts:
            live = self._engines.engine_ids()
            records = self._ledger.records
            pids = {rec.pid for e in live if (rec := records.get(e)) and rec.pid}
            running = ssh_engines_running(cluster, pids)
            placed = place_engines(
                launch.hosts, running, count, force=force or launch.force
            )
            # a profile's per-host settings ({"n": 2, ...}) go with its hosts
            profile = cluster.config.SSHEngineSetLauncher.get("engines") or {}
            kwargs["engines"] = {
                loc: {**profile[loc], "n": k}
                if isinstance(profile.get(loc), dict)
                else k
                for loc, k in placed.items()
            }
        return str(cluster.start_engines_sync(n=count, **kwargs))

    def await_registration(
        self, client: ipp.Client, before: set[int], count: int, engine_set: str
    ) -> None:
        """Wait for ``count`` engines launched as ``engine_set`` to register
        (a launch on demand: a launcher that fails says so)."""
        deadline = time.monotonic() + DEFAULT_START_TIMEOUT
        while len(set(client.ids) - before) < count:
            launched = self.cluster.engines.get(engine_set)
            if launched is None or _engine_set_exited(launched):
                raise ClusterStartError(_launcher_failure(self.cluster, None))
            if time.monotonic() > deadline:
                up = len(set(client.ids) - before)
                raise ClusterStartError(
                    f"only {up} of {count} engines registered within"
                    f" {DEFAULT_START_TIMEOUT:g} s"
                )
            time.sleep(0.02)
        self._engines.engine_ids()  # learn who they are before they take work

    def restart_engines(self, client: ipp.Client, n: int, timeout: float) -> None:
        """Replace every engine with ``n`` fresh ones."""
        old_pids = self.owned_pids(engines_only=True)
        self.cluster.stop_engines_sync()
        _reap_processes(old_pids)
        self._ledger.remove_all()
        _wait_for(lambda: not client.ids, 10.0)
        before = set(client.ids)
        self.cluster.start_engines_sync(n=n)
        self.wait_for_engines(client, before, n, timeout)

    # -- scaling down ----------------------------------------------------------

    def scale_to(
        self, client: ipp.Client, n: int, timeout: float, *, force: bool
    ) -> int:
        """Add or remove engines until there are ``n``; returns the change."""
        self._ledger.forget_dead(client.ids)
        live = self._ledger.available(client.ids)
        change = n - len(live)
        if self.launch.batch:
            # engines still queued count as coming: submit or cancel only
            # the difference, and cancel queued ones before running ones
            queue = waiting_engines(self.cluster, self.target, len(live))
            waiting = queue.count if queue is not None else 0
            if n - len(live) - waiting < 0 and waiting:
                _cancel_waiting(self.cluster, waiting - max(0, n - len(live)))
                waiting = max(0, n - len(live))
            change = n - len(live) - waiting
        if change > 0:
            self.add_engines(client, change, timeout, force=force)
        elif change < 0:
            self.remove_engines(client, self._pick_removals(client, -change))
        self.target = n
        return change

    def _pick_removals(self, client: ipp.Client, count: int) -> list[int]:
        queues = _queue_status(client, None, timeout=5.0) or {}

        def busy(eid: int) -> int:
            q = queues.get(eid, {})
            return int(q.get("queue", 0) + q.get("tasks", 0) > 0)

        live = self._ledger.available(client.ids)
        # idle engines first; among equals the newest (highest id) first
        return sorted(live, key=lambda eid: (busy(eid), -eid))[:count]

    def remove_engines(self, client: ipp.Client, ids: list[int]) -> None:
        """Shut engines ``ids`` down, and their processes here with them."""
        if not ids:
            return
        pids = _with_descendants(self._ledger.pids_here(ids))
        self._ledger.removed.update(ids)
        with contextlib.suppress(Exception):
            # not block=True: it waits for replies without a timeout, and an
            # engine that never replies would hang the scale for ever
            client.shutdown(targets=ids, block=False)
        _wait_for(lambda: not set(ids) & set(client.ids), _STOP_GRACE)
        _reap_processes(pids)

    # -- the batch queue ---------------------------------------------------------

    def waiting(self, ids: list[int]) -> Waiting | None:
        """Engines asked for, ``ids`` registered, that wait in a batch queue."""
        if not self.launch.batch:
            return None
        live = len(self._ledger.available(ids))
        return waiting_engines(self.cluster, self.target, live)

    def queued(self, client: ipp.Client | None) -> int:
        """Engines waiting in a batch queue (the queue asked at most once a
        second); 0 for launchers without one."""
        if client is None or not self.launch.batch:
            return 0
        now = time.monotonic()
        if now - self._queued[0] > 1.0:
            live = len(set(client.ids) - self._ledger.removed)
            waiting = waiting_engines(self.cluster, self.target, live)
            self._queued = (now, 0 if waiting is None else waiting.count)
        return self._queued[1]

    def forget_queue(self) -> None:
        """Ask the batch queue afresh next time."""
        self._queued = (0.0, 0)
