"""The one cluster a kernel works with: started here, or connected to.

``ClusterSession`` owns the ipyparallel ``Cluster`` (when paracell started it)
and the ``Client``.  Everything else in paracell asks the session for engines;
nothing else touches launchers or controller processes.
"""

from __future__ import annotations

import atexit
import concurrent.futures
import contextlib
import glob
import json
import logging
import os
import secrets
import signal
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import ipyparallel as ipp
import psutil
from traitlets.config import Config

from ._engine import engine_identity
from ._errors import ClusterStartError, InvalidRequest, NoCluster
from ._profiles import check_profile_name
from ._shipping import NameShipper
from ._status import ClusterStatus, EngineRow, Ownership, StartReport, StopReport

__all__ = ["LAUNCHERS", "ClusterSession", "default_session"]

#: Engine launchers ``start`` accepts (ipyparallel's names for them).
LAUNCHERS = ("local", "mpi", "ssh", "slurm", "pbs", "sge", "lsf", "htcondor")

# ipyparallel's controller beats every 3 s and only finishes an engine's
# registration on its first heartbeat; with its 1 s start delay that makes a
# 2-engine cluster take ~6.5 s.  A 100 ms beat registers engines at once; 30
# missed beats (3 s) before an engine counts as dead keeps busy machines safe.
_HEARTBEAT_MS = 100
_HEARTBEAT_MISSES = 30
_DEFAULT_START_TIMEOUT = 60.0
_MARK = "PARACELL_CLUSTER_ID"
_PROBE_TIMEOUT = 10.0
_STOP_GRACE = 10.0

_log = logging.getLogger("paracell.cluster")
_log.addHandler(logging.NullHandler())
_log.setLevel(logging.ERROR)


@dataclass
class _EngineRecord:
    """What the session remembers of an engine it has seen registered."""

    host: str | None = None
    pid: int | None = None
    probes: int = 0
    tasks_done: int = 0
    pending_probe: Any = None


class ClusterSession:
    """One kernel's cluster: start, connect, scale, restart, stop, status.

    All methods are thread-safe.  Errors a user can fix raise
    :class:`~paracell.kernel_backend.InvalidRequest`; a launcher that fails
    raises :class:`~paracell.kernel_backend.ClusterStartError` with the
    launcher's own error text, after cleaning up what it started.
    """

    def __init__(self) -> None:
        self._lock = threading.RLock()
        self._cluster: ipp.Cluster | None = None
        self._client: ipp.Client | None = None
        self._ownership: Ownership | None = None
        self._launcher: str | None = None
        self._profile: str | None = None
        self._cluster_id: str | None = None
        self._location: str | None = None
        self._connection_file: str | None = None
        self._target = 0
        self._idle_timeout: float | None = None
        self._records: dict[int, _EngineRecord] = {}
        self._removed: set[int] = set()
        self._idle_stopped: set[int] = set()
        self._reaper: _IdleReaper | None = None
        self._in_use = 0
        self._atexit_registered = False
        self._stale: dict[int, list[Any]] = {}
        self.shipper = NameShipper(self.purge)
        self._stop_callbacks: list[Callable[[], None]] = []
        self._reserved: dict[int, str] = {}  # engine -> background job's name
        self._mapping: dict[int, int] = {}  # engine -> maps using it
        self._phases: list[str] = []  # changes under way, oldest first
        self._observers: list[Callable[[], None]] = []
        # guards the bookkeeping above that threads touch without the
        # session lock (never held while waiting on anything)
        self._books = threading.Lock()

    # -- queries -----------------------------------------------------------

    @property
    def active(self) -> bool:
        """Whether a cluster is started or connected."""
        return self._client is not None

    @property
    def client(self) -> ipp.Client:
        """The connected ``ipyparallel.Client``; raises ``NoCluster`` if none."""
        if self._client is None:
            raise NoCluster("no cluster is active: start one with %cluster start")
        return self._client

    @property
    def ownership(self) -> Ownership | None:
        """``"started"`` if paracell started the cluster, ``"connected"`` if not."""
        return self._ownership

    def engine_ids(self) -> list[int]:
        """Ids of the engines available for work (not being removed)."""
        client = self._client
        if client is None:
            return []
        removed = self._removed
        return [eid for eid in client.ids if eid not in removed]

    def unreserved_engine_ids(self) -> list[int]:
        """Engines not running a background job (maps use these first)."""
        reserved = self._reserved
        return [eid for eid in self.engine_ids() if eid not in reserved]

    def reserve(self, engine: int, label: str = "job") -> None:
        """Mark ``engine`` as running a background job (``label``: its name)."""
        self._reserved[engine] = label

    def release(self, engine: int) -> None:
        """``engine`` finished its background job."""
        self._reserved.pop(engine, None)

    def mapping(self, engines: Iterable[int]) -> Callable[[], None]:
        """Note that a map runs on ``engines``; call the result when it ends."""
        engines = list(engines)
        with self._books:
            for eid in engines:
                self._mapping[eid] = self._mapping.get(eid, 0) + 1
        ended = [False]

        def done(*_: Any) -> None:
            with self._books:
                if ended[0]:
                    return
                ended[0] = True
                for eid in engines:
                    left = self._mapping.get(eid, 0) - 1
                    if left > 0:
                        self._mapping[eid] = left
                    else:
                        self._mapping.pop(eid, None)

        return done

    def current_work(self, engine: int) -> str | None:
        """What ``engine`` is doing: a background job's name, ``pmap``, or None."""
        if engine in self._reserved:
            return self._reserved[engine]
        return "pmap" if self._mapping.get(engine) else None

    # -- change events -------------------------------------------------------

    @property
    def phase(self) -> str | None:
        """A change under way: ``starting``, ``stopping``, ``scaling``,
        ``restarting``, ``connecting``, or None."""
        phases = self._phases
        return phases[0] if phases else None

    def subscribe(self, observer: Callable[[], None]) -> Callable[[], None]:
        """Call ``observer()`` when the cluster starts, stops or changes size,
        in the thread that changed it.  Returns a function that unsubscribes.
        """
        self._observers.append(observer)

        def unsubscribe() -> None:
            with contextlib.suppress(ValueError):
                self._observers.remove(observer)

        return unsubscribe

    def _changed(self) -> None:
        for observer in list(self._observers):
            with contextlib.suppress(Exception):
                observer()

    @contextlib.contextmanager
    def _changing(self, phase: str) -> Iterator[None]:
        """Announce ``phase`` while a change runs; the phase ends when every
        change under way (in any thread) has ended."""
        with self._books:
            self._phases.append(phase)
            first = len(self._phases) == 1
        if first:
            self._changed()
        try:
            yield
        finally:
            with self._books:
                self._phases.remove(phase)
                last = not self._phases
            if last:
                self._changed()

    def try_status(self) -> ClusterStatus | None:
        """:meth:`status`, or None at once when a change holds the session
        (for views that refresh on a timer and must never wait)."""
        if not self._lock.acquire(blocking=False):
            return None
        try:
            return self.status()
        finally:
            self._lock.release()

    def engine_pids(self) -> dict[int, int]:
        """Engine id -> pid for every engine whose pid is known."""
        with self._lock:
            return {
                eid: rec.pid
                for eid, rec in self._records.items()
                if rec.pid is not None and eid not in self._removed
            }

    def status(self) -> ClusterStatus:
        """The cluster's state and one row per engine (live or dead)."""
        with self._lock:
            client = self._client
            if client is None:
                return ClusterStatus(state="stopped")
            ids = client.ids
            self._probe(ids, wait=0.5)
            try:
                queues = client.queue_status(targets=ids) if ids else {}
            except Exception:  # a controller in trouble still gets a status
                queues = {}
            rows = []
            for eid in sorted(set(ids) | set(self._records)):
                if eid in self._removed:
                    continue
                rec = self._records.setdefault(eid, _EngineRecord())
                queue = queues.get(eid)
                alive = eid in ids and self._process_alive(rec)
                if alive and isinstance(queue, dict):
                    rec.tasks_done = max(0, queue.get("completed", 0) - rec.probes)
                    busy = queue.get("queue", 0) + queue.get("tasks", 0) > 0
                    state = "busy" if busy else "idle"
                else:
                    state = "idle" if alive else "dead"
                rows.append(
                    EngineRow(
                        eid,
                        rec.host,
                        rec.pid,
                        state,
                        rec.tasks_done,
                        self.current_work(eid) if state != "dead" else None,
                    )
                )
            return ClusterStatus(
                state="running",
                ownership=self._ownership,
                launcher=self._launcher,
                profile=self._profile,
                cluster_id=self._cluster_id,
                location=self._location,
                target_engines=self._target,
                idle_timeout=self._idle_timeout,
                idle_stopped=len(self._idle_stopped),
                engines=tuple(rows),
            )

    # -- lifecycle ---------------------------------------------------------

    def start(
        self,
        n: int | None = None,
        *,
        launcher: str = "local",
        profile: str | None = None,
        idle_timeout: float | None = None,
        timeout: float = _DEFAULT_START_TIMEOUT,
    ) -> StartReport:
        """Start a controller and ``n`` engines (default: the CPU count).

        Returns once every engine is registered and usable.  A local cluster
        listens on 127.0.0.1 only.  ``idle_timeout`` stops engines that sat
        idle that many seconds; :meth:`ensure_engines` brings them back.
        """
        n = (os.cpu_count() or 1) if n is None else n
        _check_count(n, "number of engines", minimum=1)
        profile = check_profile_name(profile)
        launcher = _check_launcher(launcher)
        if idle_timeout is not None and not idle_timeout > 0:
            raise InvalidRequest(
                "--idle-timeout must be a positive number of seconds,"
                f" not {idle_timeout}"
            )
        if not timeout > 0:
            raise InvalidRequest(f"timeout must be positive, not {timeout}")
        with self._lock:
            if self._client is not None:
                raise InvalidRequest(
                    f"a cluster is already active ({self.status().summary()});"
                    " use %cluster stop first, or %cluster scale N to resize it"
                )
        with self._changing("starting"), self._lock:
            if self._client is not None:
                raise InvalidRequest("a cluster was started meanwhile")
            tic = time.perf_counter()
            cluster = _make_cluster(launcher, profile)
            try:
                client = self._start_cluster(cluster, n, timeout)
            except BaseException:
                _teardown(cluster, _cluster_pids(cluster))
                raise
            self._adopt(client, cluster, "started", launcher, n)
            self._idle_timeout = idle_timeout
            if idle_timeout is not None:
                self._reaper = _IdleReaper(self, idle_timeout)
                self._reaper.start()
            self._register_atexit()
            return self._report(len(client.ids), time.perf_counter() - tic)

    def connect(
        self,
        *,
        profile: str | None = None,
        cluster_id: str | None = None,
        file: str | None = None,
        timeout: float = 10.0,
    ) -> StartReport:
        """Use a cluster that is already running (ipcluster, JupyterLab, batch).

        With neither ``cluster_id`` nor ``file``, the profile's only running
        cluster is used.  ``stop`` later disconnects without stopping it.
        """
        if cluster_id is not None and file is not None:
            raise InvalidRequest("give --cluster-id or --file, not both")
        profile = check_profile_name(profile)
        with self._changing("connecting"), self._lock:
            if self._client is not None:
                raise InvalidRequest(
                    f"a cluster is already active ({self.status().summary()});"
                    " use %cluster stop first"
                )
            tic = time.perf_counter()
            path = _find_connection_file(profile, cluster_id, file)
            try:
                client = ipp.Client(path, timeout=timeout)
            except (TimeoutError, OSError, ValueError) as err:
                raise InvalidRequest(
                    f"no controller answers for {path} ({err});"
                    " is that cluster still running?"
                ) from None
            self._adopt(client, None, "connected", None, len(client.ids))
            self._connection_file = path
            self._probe(client.ids, wait=2.0)
            return self._report(len(client.ids), time.perf_counter() - tic)

    def stop(self) -> StopReport:
        """Stop what paracell started, or disconnect from what it connected to.

        Stopping with nothing active is not an error: the report says so.
        """
        if self._client is None:
            return StopReport("nothing")
        with self._changing("stopping"):
            return self._stop()

    def _stop(self) -> StopReport:
        # Outside the session lock: callbacks take locks of their own (the
        # job monitor takes its lock, then this one).
        for callback in list(self._stop_callbacks):
            with contextlib.suppress(Exception):
                callback()
        with self._lock:
            if self._client is None:
                return StopReport("nothing")
            tic = time.perf_counter()
            if self._reaper is not None:
                self._reaper.close()
                self._reaper = None
            client, cluster = self._client, self._cluster
            engines = len(client.ids)
            ownership = self._ownership
            pids = self._owned_pids()
            self._forget()
            with contextlib.suppress(Exception):
                client.close(linger=0)
            if cluster is None:
                return StopReport("disconnected", engines)
            _teardown(cluster, pids)
            assert ownership == "started"
            return StopReport("stopped", engines, time.perf_counter() - tic)

    def scale(self, n: int, *, timeout: float = _DEFAULT_START_TIMEOUT) -> int:
        """Add or remove engines until there are ``n``; returns the change.

        New engines come from the same launcher.  Engines are removed idle
        ones first, newest first; the others are not disturbed.
        """
        _check_count(n, "engine count", minimum=0)
        with self._changing("scaling"), self._lock:
            client, cluster = self._require_owned("scale")
            self._forget_dead(client)
            live = [eid for eid in client.ids if eid not in self._removed]
            change = n - len(live)
            if change > 0:
                self._add_engines(cluster, client, change, timeout)
            elif change < 0:
                self._remove_engines(client, self._pick_removals(client, -change))
            self._target = n
            self._idle_stopped.clear()
            return change

    def restart(self, *, timeout: float = _DEFAULT_START_TIMEOUT) -> StartReport:
        """Replace every engine with a fresh one (clean namespaces), same count."""
        with self._changing("restarting"), self._lock:
            client, cluster = self._require_owned("restart")
            n = max(self._target, len(client.ids))
            tic = time.perf_counter()
            old_pids = self._owned_pids(engines_only=True)
            cluster.stop_engines_sync()
            _reap_processes(old_pids)
            self._removed.update(self._records)
            _wait_for(lambda: not client.ids, 10.0)
            self._idle_stopped.clear()
            before = set(client.ids)
            cluster.start_engines_sync(n=n)
            self._wait_for_engines(cluster, client, before, n, timeout)
            return self._report(len(client.ids), time.perf_counter() - tic)

    def ensure_engines(self) -> StartReport | None:
        """Make engines available for work, the way later calls need them.

        With no cluster, starts the embedded default (a local cluster, one
        engine per CPU) and returns its report.  With engines stopped by the
        idle timeout, starts them again and returns a report.  Otherwise
        returns ``None``.
        """
        with self._lock:
            if self._client is None:
                return self.start()
            if not self._idle_stopped or self._cluster is None:
                return None
        with self._changing("starting"), self._lock:
            if not self._idle_stopped or self._cluster is None or self._client is None:
                return None
            tic = time.perf_counter()
            missing = len(self._idle_stopped)
            self._idle_stopped.clear()
            self._add_engines(self._cluster, self._client, missing, 60.0)
            return self._report(len(self._client.ids), time.perf_counter() - tic)

    def on_stop(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` before the cluster stops (work on it is ending)."""
        self._stop_callbacks.append(callback)

    def stale_engines(self) -> set[int]:
        """Engines still busy with work that was cancelled but would not stop.

        New work stays off them until that work ends, so the next call never
        queues behind stale tasks.
        """
        with self._lock:
            for eid in list(self._stale):
                self._stale[eid] = [ar for ar in self._stale[eid] if not ar.done()]
                if not self._stale[eid]:
                    del self._stale[eid]
            return set(self._stale)

    def mark_stale(self, engine: int, result: Any) -> None:
        """Note a cancelled task still running on ``engine``."""
        with self._lock:
            self._stale.setdefault(engine, []).append(result)

    def purge(self, result: Any, client: ipp.Client | None = None) -> None:
        """Drop a finished task from ipyparallel's client-side caches.

        Results are paracell's once taken; the client would otherwise keep
        every task's result for the life of the kernel.
        """
        client = client or self._client
        if client is None:
            return
        for msg_id in result.msg_ids:
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
        running after the grace period keep their engine out of new work
        (see :meth:`stale_engines`); they are returned.
        """
        client = self._client
        if client is None or not tasks:
            return []
        engines = sorted(set(tasks.values()))
        msg_ids = [m for ar in tasks for m in ar.msg_ids]
        with contextlib.suppress(Exception):
            client.abort(jobs=msg_ids, targets=engines, block=False)
        with contextlib.suppress(Exception):
            client.send_signal(signal.SIGINT, targets=engines, block=False)
        concurrent.futures.wait(list(tasks), timeout=grace)
        left = []
        for ar, engine in tasks.items():
            if ar.done():
                self.purge(ar)
            else:
                self.mark_stale(engine, ar)
                left.append(ar)
        return left

    def forget_engines(self, ids: Iterable[int]) -> None:
        """Engines that died: nothing shipped to them survives."""
        self.shipper.forget(ids)

    @contextlib.contextmanager
    def in_use(self) -> Iterator[ipp.Client]:
        """Hold the engines for work: the idle timeout does not fire meanwhile."""
        with self._lock:
            self._in_use += 1
        try:
            self.ensure_engines()
            yield self.client
        finally:
            with self._lock:
                self._in_use -= 1

    # -- internals ---------------------------------------------------------

    def _start_cluster(
        self, cluster: ipp.Cluster, n: int, timeout: float
    ) -> ipp.Client:
        try:
            cluster.start_controller_sync()
            cluster.start_engines_sync(n=n)
            _check_engines_configured(cluster)
            client = cluster.connect_client_sync()
        except ClusterStartError:
            raise
        except Exception as err:
            raise ClusterStartError(_launcher_failure(cluster, err)) from None
        try:
            self._wait_for_engines(cluster, client, set(), n, timeout)
        except BaseException:
            with contextlib.suppress(Exception):
                client.close(linger=0)
            raise
        return client

    def _wait_for_engines(
        self,
        cluster: ipp.Cluster,
        client: ipp.Client,
        before: set[int],
        n: int,
        timeout: float,
    ) -> None:
        """Wait until ``n`` engines are up; fail early if the launcher died."""
        deadline = time.monotonic() + timeout
        while len(set(client.ids) - self._removed) < n:
            controller = cluster.controller
            if controller is None or controller.state == "after":
                raise ClusterStartError(
                    "the controller exited while engines were starting:"
                    f" {_tail(controller.get_output() if controller else '')}"
                )
            sets = list(cluster.engines.values())
            if sets and all(es.state == "after" for es in sets):
                raise ClusterStartError(_launcher_failure(cluster, None))
            if time.monotonic() > deadline:
                up = len(set(client.ids) - self._removed)
                raise ClusterStartError(
                    f"only {up} of {n} engines registered within {timeout:g} s;"
                    f" launcher output: {_tail(_engine_output(cluster)) or '(none)'}"
                )
            time.sleep(0.02)
        self._probe([eid for eid in client.ids if eid not in before], None, client)

    def _add_engines(
        self, cluster: ipp.Cluster, client: ipp.Client, count: int, timeout: float
    ) -> None:
        before = set(client.ids)
        live = len(before - self._removed)
        try:
            cluster.start_engines_sync(n=count)
        except Exception as err:
            raise ClusterStartError(_launcher_failure(cluster, err)) from None
        self._wait_for_engines(cluster, client, before, live + count, timeout)

    def _pick_removals(self, client: ipp.Client, count: int) -> list[int]:
        queues = client.queue_status()

        def busy(eid: int) -> int:
            q = queues.get(eid, {})
            return int(q.get("queue", 0) + q.get("tasks", 0) > 0)

        live = [eid for eid in client.ids if eid not in self._removed]
        # idle engines first; among equals the newest (highest id) first
        return sorted(live, key=lambda eid: (busy(eid), -eid))[:count]

    def _remove_engines(self, client: ipp.Client, ids: list[int]) -> None:
        if not ids:
            return
        pids = _with_descendants(
            rec.pid for e in ids if (rec := self._records.get(e)) and rec.pid
        )
        self._removed.update(ids)
        with contextlib.suppress(Exception):
            client.shutdown(targets=ids, block=True)
        _wait_for(lambda: not set(ids) & set(client.ids), _STOP_GRACE)
        _reap_processes(pids)

    def _forget_dead(self, client: ipp.Client) -> None:
        """Drop dead engines from the records: scaling replaces them."""
        ids = set(client.ids)
        for eid, rec in self._records.items():
            if eid not in ids or not self._process_alive(rec):
                self._removed.add(eid)

    def _probe(
        self, ids: list[int], wait: float | None, client: ipp.Client | None = None
    ) -> None:
        """Learn host and pid of engines not seen before (a tiny task each)."""
        client = client or self._client
        if client is None:
            return
        for eid in ids:
            rec = self._records.setdefault(eid, _EngineRecord())
            if rec.pid is None and rec.pending_probe is None:
                rec.pending_probe = client[eid].apply_async(engine_identity)
                rec.probes += 1
        deadline = time.monotonic() + (_PROBE_TIMEOUT if wait is None else wait)
        for eid in ids:
            rec = self._records[eid]
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

    def _process_alive(self, rec: _EngineRecord) -> bool:
        """For engines started here, ask the process table, not the heartbeat."""
        if self._ownership != "started" or self._launcher != "local" or not rec.pid:
            return True
        try:
            return psutil.Process(rec.pid).status() != psutil.STATUS_ZOMBIE
        except psutil.NoSuchProcess:
            return False

    def _owned_pids(self, engines_only: bool = False) -> list[int]:
        """Every local process of the cluster paracell started, children too."""
        if self._cluster is None:
            return []
        pids = _cluster_pids(self._cluster, engines_only=engines_only)
        if self._launcher == "local":
            pids = _with_descendants([*pids, *self.engine_pids().values()])
        return pids

    def _require_owned(self, action: str) -> tuple[ipp.Client, ipp.Cluster]:
        if self._client is None:
            raise NoCluster(
                f"no cluster to {action}: start one with %cluster start [-n N]"
            )
        if self._cluster is None:
            raise InvalidRequest(
                f"cannot {action} a cluster paracell did not start"
                " (it was connected to); use the tool that started it"
            )
        return self._client, self._cluster

    def _adopt(
        self,
        client: ipp.Client,
        cluster: ipp.Cluster | None,
        ownership: Ownership,
        launcher: str | None,
        target: int,
    ) -> None:
        self._client, self._cluster, self._ownership = client, cluster, ownership
        self._launcher = launcher
        self._target = target
        profile_dir = client._profile_dir
        if cluster is not None:
            profile_dir = cluster.profile_dir
        base = os.path.basename(str(getattr(profile_dir, "location", profile_dir)))
        self._profile = base.removeprefix("profile_") or None
        info = getattr(client, "_config", {}) or {}
        self._cluster_id = cluster.cluster_id if cluster else info.get("cluster_id")
        interface = str(info.get("interface", "") or info.get("location", ""))
        self._location = interface.rpartition("//")[2] or info.get("location")
        if cluster is not None:
            self._connection_file = os.path.join(
                cluster.profile_dir,
                "security",
                f"ipcontroller-{cluster.cluster_id}-client.json"
                if cluster.cluster_id
                else "ipcontroller-client.json",
            )

    def _forget(self) -> None:
        self.shipper = NameShipper(self.purge)
        self._reserved.clear()
        self._stale.clear()
        self._client = self._cluster = None
        self._ownership = self._launcher = self._profile = None
        self._cluster_id = self._location = self._connection_file = None
        self._target = 0
        self._idle_timeout = None
        self._records.clear()
        self._removed.clear()
        self._idle_stopped.clear()

    def _report(self, engines: int, seconds: float) -> StartReport:
        assert self._ownership is not None
        return StartReport(
            engines=engines,
            launcher=self._launcher or "unknown",
            location=self._location or "?",
            profile=self._profile or "default",
            cluster_id=self._cluster_id or "",
            seconds=seconds,
            ownership=self._ownership,
        )

    def _register_atexit(self) -> None:
        # The kernel shutting down stops the cluster paracell started.
        if not self._atexit_registered:
            atexit.register(self._stop_at_exit)
            self._atexit_registered = True

    def _stop_at_exit(self) -> None:
        with contextlib.suppress(Exception):
            self.stop()

    # called by the idle reaper, under the lock
    def _stop_idle(self, ids: list[int]) -> None:
        if self._client is None or self._in_use:
            return
        self._idle_stopped.update(ids)
        self._remove_engines(self._client, ids)


class _IdleReaper(threading.Thread):
    """Stops engines that sat idle for ``timeout`` seconds (crew's seconds_idle).

    It polls with a client of its own: ipyparallel clients are not thread-safe,
    and the user's work must never share sockets with this thread.
    """

    def __init__(self, session: ClusterSession, timeout: float) -> None:
        super().__init__(name="paracell-idle-reaper", daemon=True)
        self._session = session
        self._timeout = timeout
        self._stopping = threading.Event()
        self._path = session._connection_file

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
                if self._session._in_use:
                    idle_since.clear()
                    continue
                try:
                    queues = client.queue_status()
                except Exception:
                    continue
                now = time.monotonic()
                due = []
                for eid, q in queues.items():
                    if not isinstance(eid, int):
                        continue
                    if q.get("queue", 0) + q.get("tasks", 0) > 0:
                        idle_since.pop(eid, None)
                    elif now - idle_since.setdefault(eid, now) >= self._timeout:
                        due.append(eid)
                if due:
                    with self._session._lock:
                        if not self._stopping.is_set():
                            self._session._stop_idle(due)
                    self._session._changed()
                    for eid in due:
                        idle_since.pop(eid, None)
        finally:
            with contextlib.suppress(Exception):
                client.close(linger=0)


# -- helpers ---------------------------------------------------------------


def _check_count(n: object, what: str, *, minimum: int) -> None:
    if isinstance(n, bool) or not isinstance(n, int) or n < minimum:
        raise InvalidRequest(f"{what} must be a whole number >= {minimum}, not {n!r}")


def _check_launcher(launcher: str) -> str:
    name = str(launcher).lower()
    if name not in LAUNCHERS:
        raise InvalidRequest(
            f"unknown launcher {launcher!r}; choose one of {', '.join(LAUNCHERS)}"
        )
    return name


def _make_cluster(launcher: str, profile: str | None) -> ipp.Cluster:
    config = Config()
    # ipyparallel sleeps 0.1 s between local engines; they need no pacing here.
    config.LocalEngineSetLauncher.delay = 0
    # Every process the launchers start carries the cluster's id, so teardown
    # can find all of them, even children a dying controller left behind.
    cluster_id = f"{int(time.time())}-{secrets.token_hex(2)}"
    config.BaseLauncher.environment = {_MARK: cluster_id}
    kwargs: dict[str, Any] = {}
    if launcher == "local":
        kwargs["controller_ip"] = "127.0.0.1"
        # Engines start while the controller does and wait for its connection
        # file themselves, instead of starting only once it is written.
        kwargs["send_engines_connection_env"] = False
    if profile:
        kwargs["profile"] = profile
    return ipp.Cluster(
        cluster_id=cluster_id,
        engines=launcher,
        delay=0,
        controller_args=[
            f"--HeartMonitor.period={_HEARTBEAT_MS}",
            f"--HeartMonitor.max_heartmonitor_misses={_HEARTBEAT_MISSES}",
        ],
        shutdown_atexit=False,
        log=_log,
        config=config,
        **kwargs,
    )


def _find_connection_file(
    profile: str | None, cluster_id: str | None, file: str | None
) -> str:
    if file is not None:
        path = os.path.expanduser(file)
        if not os.path.isfile(path):
            raise InvalidRequest(f"no connection file at {path!r}")
        return path
    from IPython.core.profiledir import ProfileDir, ProfileDirError
    from IPython.paths import get_ipython_dir

    name = profile or "default"
    try:
        profile_dir = ProfileDir.find_profile_dir_by_name(get_ipython_dir(), name)
    except ProfileDirError:
        raise InvalidRequest(
            f"unknown profile {name!r} (no profile_{name} in {get_ipython_dir()})"
        ) from None
    security = profile_dir.security_dir
    running = _running_cluster_ids(security)
    if cluster_id is not None:
        path = os.path.join(security, f"ipcontroller-{cluster_id}-client.json")
        if not os.path.isfile(path):
            known = ", ".join(running) or "none"
            raise InvalidRequest(
                f"no cluster {cluster_id!r} in profile {name!r}"
                f" (clusters there: {known})"
            )
        return path
    default = os.path.join(security, "ipcontroller-client.json")
    if os.path.isfile(default):
        return default
    if len(running) == 1:
        return os.path.join(security, f"ipcontroller-{running[0]}-client.json")
    if not running:
        raise InvalidRequest(
            f"no running cluster found in profile {name!r};"
            " start one with %cluster start, or pass --file PATH"
        )
    raise InvalidRequest(
        f"several clusters in profile {name!r} ({', '.join(running)});"
        " choose one with --cluster-id ID"
    )


def _running_cluster_ids(security: str) -> list[str]:
    """Cluster ids with a client file, less those whose controller is known dead.

    A controller killed without cleaning up leaves its files behind; its
    cluster file still names its pid, so the process table can tell.
    """
    ids = []
    for path in glob.glob(os.path.join(security, "ipcontroller-*-client.json")):
        cid = os.path.basename(path)[len("ipcontroller-") : -len("-client.json")]
        try:
            with open(os.path.join(security, f"cluster-{cid}.json")) as f:
                pid = json.load(f)["controller"]["state"]["pid"]
        except (OSError, ValueError, KeyError, TypeError):
            pid = None
        if isinstance(pid, int) and pid > 0 and not psutil.pid_exists(pid):
            continue
        ids.append(cid)
    return sorted(ids)


def _check_engines_configured(cluster: ipp.Cluster) -> None:
    # ipyparallel's ssh launcher takes its hosts from configuration and quietly
    # starts nothing without them; say so instead of waiting for the timeout.
    for es in cluster.engines.values():
        if hasattr(es, "engines") and not es.engines:
            raise ClusterStartError(
                f"{type(es).__name__} has no hosts: set"
                f" c.{type(es).__name__}.engines in the profile's ipcluster_config.py"
            )


def _launchers_of(engine_set: Any) -> list[Any]:
    launchers = getattr(engine_set, "launchers", None)
    if isinstance(launchers, dict) and launchers:
        return list(launchers.values())
    return [engine_set]


def _engine_output(cluster: ipp.Cluster) -> str:
    chunks = []
    for es in cluster.engines.values():
        for el in _launchers_of(es):
            with contextlib.suppress(Exception):
                chunks.append(el.get_output() or "")
    return "\n".join(c for c in chunks if c)


def _launcher_failure(cluster: ipp.Cluster, err: BaseException | None) -> str:
    launcher = getattr(cluster.engine_launcher_class, "__name__", "launcher")
    text = str(err) if err is not None else _engine_output(cluster)
    if err is None:
        output = _tail(text) or "(no output)"
        return f"engines exited before registering ({launcher}): {output}"
    return f"{launcher} failed to start: {_tail(text) or type(err).__name__}"


def _tail(text: str, lines: int = 3) -> str:
    kept = [line.strip() for line in str(text).strip().splitlines() if line.strip()]
    return " | ".join(kept[-lines:])


def _cluster_pids(cluster: ipp.Cluster, engines_only: bool = False) -> list[int]:
    """Pids of the processes the cluster's launchers started, children too."""
    pids: list[Any] = []
    if not engines_only and cluster.controller is not None:
        pids.append(getattr(cluster.controller, "pid", None))
    for es in cluster.engines.values():
        pids.extend(getattr(el, "pid", None) for el in _launchers_of(es))
    return _with_descendants(p for p in pids if isinstance(p, int) and p > 0)


def _teardown(cluster: ipp.Cluster, pids: list[int]) -> None:
    """Stop the cluster through its launchers, then make sure nothing is left.

    The controller's schedulers are child processes that can outlive a
    controller stopped mid-start, and engines leave nanny processes; the
    process table, not the launchers' word, decides when we are done.
    """
    with contextlib.suppress(Exception):
        cluster.stop_cluster_sync()
    _reap_processes(pids)
    _reap_processes(_marked_processes(cluster.cluster_id))


def _marked_processes(cluster_id: str) -> list[int]:
    """Local processes started for the cluster ``cluster_id`` (by environment)."""
    found = []
    for proc in psutil.process_iter(["pid"]):
        with contextlib.suppress(psutil.Error):
            if proc.environ().get(_MARK) == cluster_id:
                found.append(proc.info["pid"])
    return found


def _wait_for(predicate: Any, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


def _with_descendants(pids: Iterable[int]) -> list[int]:
    """The pids and their children's (an engine's nanny process among them)."""
    found = set()
    for pid in pids:
        with contextlib.suppress(psutil.Error):
            proc = psutil.Process(pid)
            found.add(pid)
            found.update(child.pid for child in proc.children(recursive=True))
    return sorted(found)


def _reap_processes(pids: list[int], grace: float = 0.3) -> None:
    """Wait for processes to exit; terminate, then kill, what is left.

    Once its engine is gone, an engine's nanny only lingers (it polls its
    parent every few seconds), so a short grace before SIGTERM is enough.
    """
    procs = []
    for pid in pids:
        with contextlib.suppress(psutil.Error):
            procs.append(psutil.Process(pid))
    _, alive = psutil.wait_procs(procs, timeout=grace)
    for sig in ("terminate", "kill"):
        for proc in alive:
            with contextlib.suppress(psutil.Error):
                getattr(proc, sig)()
        _, alive = psutil.wait_procs(alive, timeout=3)


def is_engine_death(err: BaseException) -> bool:
    """Whether a task failed because its engine died (not because of its code).

    ipyparallel reports it as ``EngineError`` raised here, or wrapped in a
    ``RemoteError`` when the hub reports the death.
    """
    return isinstance(err, ipp.error.EngineError) or (
        isinstance(err, ipp.error.RemoteError) and err.ename == "EngineError"
    )


_default: ClusterSession | None = None
_default_lock = threading.Lock()


def default_session() -> ClusterSession:
    """The process-wide session the magics and ``paracell``'s API share."""
    global _default
    with _default_lock:
        if _default is None:
            _default = ClusterSession()
        return _default
