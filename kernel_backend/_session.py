"""The one cluster a kernel works with: started here, or connected to.

``ClusterSession`` owns the ipyparallel ``Cluster`` (when paracell started it)
and the ``Client``.  Everything else in paracell asks the session for engines;
nothing else touches launchers or controller processes.
"""

from __future__ import annotations

import atexit
import concurrent.futures
import contextlib
import logging
import math
import os
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import ipyparallel as ipp
import psutil

from . import _pickling
from ._clock import ClockOffset, measure_offsets
from ._demand import DEFAULT_IDLE_TIMEOUT, Demand, check_demand
from ._engine import engine_identity
from ._errors import ClusterStartError, InvalidRequest, NoCluster
from ._launchers import (
    LauncherOptions,
    LaunchPlan,
    configure,
    place_engines,
    plan,
    ssh_engines_running,
    waiting_engines,
)
from ._limits import check_engine_count
from ._processes import (
    LAUNCHERS,
    _cancel_waiting,
    _check_count,
    _check_engines_configured,
    _check_launcher,
    _cluster_pids,
    _count,
    _engine_output,
    _engine_set_exited,
    _find_connection_file,
    _launcher_failure,
    _launcher_pids,
    _make_cluster,
    _pid_alive,
    _queue_status,
    _reap_processes,
    _shared_arrays,
    _tail,
    _teardown,
    _thread_env,
    _wait_for,
    _with_descendants,
)
from ._profiles import check_profile_name
from ._shipping import NameShipper
from ._signal import Signal
from ._stale import StaleWork
from ._status import (
    ClusterStatus,
    EngineRow,
    EngineState,
    Ownership,
    StartReport,
    StopReport,
)
from ._watchdog import start_watchdog

__all__ = ["LAUNCHERS", "ClusterSession", "default_session"]

_DEFAULT_START_TIMEOUT = 60.0
_PROBE_TIMEOUT = 10.0
_STOP_GRACE = 10.0
_HOSTNAME = socket.gethostname()

_log = logging.getLogger("paracell.cluster")
_log.addHandler(logging.NullHandler())
_log.setLevel(logging.ERROR)
# a view's failure is a bug to see, not to hide: no NullHandler here, so
# without logging set up it reaches stderr (logging's last resort)


@dataclass
class _EngineRecord:
    """What the session remembers of an engine it has seen registered."""

    host: str | None = None
    pid: int | None = None
    probes: int = 0
    tasks_done: int = 0
    pending_probe: Any = None
    clock: ClockOffset | None = None  # its clock against the kernel's


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
        self._launch: LaunchPlan | None = None  # how paracell started the engines
        self._idle_timeout: float | None = None
        self._records: dict[int, _EngineRecord] = {}
        self._removed: set[int] = set()
        self._idle_stopped: set[int] = set()
        self._reaper: _IdleReaper | None = None
        self._in_use = 0
        self._atexit_registered = False
        self._stale = StaleWork()
        self._to_replace: set[int] = set()  # stuck engines killed, to restart
        self._threads: int | None = None  # BLAS/OpenMP threads per engine
        self.shipper = NameShipper(self.purge)
        self._stop_callbacks: list[Callable[[], None]] = []
        self._reserved: dict[int, str] = {}  # engine -> background job's name
        self._mapping: dict[int, int] = {}  # engine -> maps using it
        self._phases: list[str] = []  # changes under way, oldest first
        self._changes: Signal[[]] = Signal("the cluster")
        # guards the bookkeeping above that threads touch without the
        # session lock (never held while waiting on anything)
        self._books = threading.Lock()
        # bumped whenever the cluster goes away: work started on an older
        # epoch knows its cluster is gone
        self._epoch = 0
        self._watchdog: subprocess.Popen[bytes] | None = None
        self._controller_seen: tuple[float, bool] = (0.0, True)
        # engines on demand: the limits, why the count is what it is, how
        # many launched engines have not registered yet, a launch's failure
        self._demand: Demand | None = None
        self._demand_why = ""
        self._launching = 0
        self._launch_error: str | None = None
        self._queued: tuple[float, int] = (0.0, 0)  # (asked when, count)

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

    @property
    def epoch(self) -> int:
        """Changes every time the cluster stops or is lost (for running work)."""
        return self._epoch

    def controller_responds(self, *, max_age: float = 2.0) -> bool:
        """Whether the controller is alive and answering (asked at most every
        ``max_age`` seconds; a local controller is looked up in the process
        table, others are sent a query that may wait up to 2 s)."""
        client, cluster = self._client, self._cluster
        if client is None:
            return False
        checked, ok = self._controller_seen
        if time.monotonic() - checked < max_age:
            return ok
        pid = getattr(cluster.controller, "pid", None) if cluster else None
        if isinstance(pid, int) and self._launcher == "local":
            ok = _pid_alive(pid)
        else:
            ok = _queue_status(client, None, timeout=2.0) is not None
        self._controller_seen = (time.monotonic(), ok)
        return ok

    def engines_expected(self) -> bool:
        """Whether engines not up now will come by themselves (engines the
        idle timeout stopped start again on the next call)."""
        return bool(self._owed()) and self._cluster is not None

    def require_controller(self) -> None:
        """Raise ``NoCluster`` if the controller is gone (before new work)."""
        if self._client is not None and not self.controller_responds():
            raise NoCluster(
                "the cluster's controller does not answer (did it die?);"
                " %cluster stop cleans up, then %cluster start"
            )

    def engine_ids(self) -> list[int]:
        """Ids of the engines available for work (not being removed)."""
        client = self._client
        if client is None:
            return []
        removed = self._removed
        ids = [eid for eid in client.ids if eid not in removed]
        if any(eid not in self._records for eid in ids):
            # engines that registered by themselves (a batch queue let them
            # run, a launch on demand): learn who they are and how their
            # clock runs before work lands on them
            with self._lock:
                if self._client is client:
                    self._probe([e for e in ids if e not in self._records], 2.0)
        return ids

    def unreserved_engine_ids(self) -> list[int]:
        """Engines not running a background job (maps use these first)."""
        reserved = self._reserved
        return [eid for eid in self.engine_ids() if eid not in reserved]

    def engine_host(self, engine: int) -> str | None:
        """The host ``engine`` runs on, once its first answer said so."""
        rec = self._records.get(engine)
        return rec.host if rec is not None else None

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
        """What ``engine`` is doing: a background job's name, ``pmap``,
        ``cancelled work`` (still stopping), or None."""
        if engine in self._reserved:
            return self._reserved[engine]
        if self._mapping.get(engine):
            return "pmap"
        return "cancelled work" if self._stale.holds(engine) else None

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
        return self._changes.subscribe(observer)

    def _changed(self) -> None:
        self._changes.emit()

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
            answering = self.controller_responds(max_age=0.0)
            queues: dict[Any, Any] | None = {}
            if answering and ids:
                self._probe(ids, wait=0.5)
                queues = _queue_status(client, ids, timeout=2.0)
                answering = queues is not None
            queues = queues or {}
            rows = []
            for eid in sorted(set(ids) | set(self._records)):
                if eid in self._removed:
                    continue
                rec = self._records.setdefault(eid, _EngineRecord())
                queue = queues.get(eid)
                alive = eid in ids and self._process_alive(rec)
                if alive and isinstance(queue, dict):
                    rec.tasks_done = max(0, queue.get("completed", 0) - rec.probes)
                    # the hub still counts tasks whose replies were lost
                    lost = self._stale.lost.get(eid, 0)
                    busy = queue.get("queue", 0) + queue.get("tasks", 0) > lost
                    state: EngineState = "busy" if busy else "idle"
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
                controller_answers=answering,
                threads_per_engine=self._threads,
                waiting=self._waiting(ids),
                min_engines=None if self._demand is None else self._demand.minimum,
                max_engines=None if self._demand is None else self._demand.maximum,
                demand=self._demand_why if self._demand is not None else None,
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
        force: bool = False,
        threads: int | None = None,
        options: LauncherOptions | None = None,
        min_engines: int | None = None,
        max_engines: int | None = None,
    ) -> StartReport:
        """Start a controller and ``n`` engines (default: the CPU count).

        Returns once every engine is registered and usable; with a batch
        launcher, once the first one is (or after ``timeout``, the others
        still queued: :meth:`status` says where they wait).  A local cluster
        listens on 127.0.0.1 only; remote launchers where their engines can
        reach it (``options``: see :class:`LauncherOptions`).  ``idle_timeout``
        stops engines that sat idle that many seconds; :meth:`ensure_engines`
        brings them back.  More engines than the launcher can place are
        refused before anything starts, unless ``force``.  ``threads`` caps
        BLAS/OpenMP threads per engine; local engines get ``max(1, cores //
        n)`` by default, so ``n`` engines doing numpy work do not
        oversubscribe the cores.

        ``min_engines``/``max_engines`` (instead of ``n``) start engines on
        demand: ``min_engines`` (default 0) at once, more as work waits for
        an engine, up to ``max_engines`` (default: the launcher's default
        count); engines idle for ``idle_timeout`` seconds (default 60) stop,
        down to ``min_engines`` (see :mod:`._demand`).
        """
        on_demand = min_engines is not None or max_engines is not None
        if n is not None:
            _check_count(n, "number of engines", minimum=1)
        launcher = _check_launcher(launcher)
        profile = check_profile_name(profile)
        if on_demand:
            # the arguments alone; the maximum is known once the plan is
            low = min_engines if isinstance(min_engines, int) else 0
            check_demand(min_engines, max_engines, n=n, default_max=max(1, low))
            n = max_engines
        if n is not None:
            # before planning: a plan for an absurd count is itself costly
            check_engine_count(n, launcher, force=force)
        launch = plan(launcher, n, options or LauncherOptions(), force=force)
        n = launch.n
        check_engine_count(n, launcher, force=force)
        demand = None
        if on_demand:
            demand = check_demand(
                min_engines,
                n if max_engines is not None else None,
                n=None,
                default_max=n,
            )
            if idle_timeout is None:
                idle_timeout = DEFAULT_IDLE_TIMEOUT
        explicit = threads is not None
        if explicit:
            _check_count(threads, "--threads", minimum=1)
        per_engine = threads
        if per_engine is None and launcher == "local":
            per_engine = max(1, (os.cpu_count() or 1) // n)
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
            cluster = _make_cluster(launch, profile, _thread_env(per_engine, explicit))
            self._launch = launch
            first = None if demand is None else demand.minimum
            try:
                client = self._start_cluster(cluster, first, timeout)
            except BaseException:
                # Ctrl-C included: batch jobs still queued are cancelled too
                self._launch = None
                _teardown(cluster, _cluster_pids(cluster), local=launcher == "local")
                raise
            launch = self._launch or launch  # completed from the profile
            if demand is not None and max_engines is None:
                # the profile's hosts may say how many there can be
                demand = Demand(demand.minimum, max(demand.minimum, launch.n))
            target = launch.n if demand is None else demand.minimum
            self._adopt(client, cluster, "started", launcher, target)
            self._location = launch.location
            self._watchdog = start_watchdog(
                cluster.cluster_id, os.path.join(cluster.profile_dir, "security")
            )
            self._idle_timeout = idle_timeout
            self._threads = per_engine
            self._demand = demand
            if demand is not None:
                self._demand_why = (
                    f"{_count(demand.minimum)} kept (--min)"
                    if demand.minimum
                    else "none until work waits"
                )
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
            local = self._launcher == "local"
            pids = self._owned_pids()
            self._end_watchdog()
            self._forget()
            with contextlib.suppress(Exception):
                client.close(linger=0)
            if cluster is None:
                return StopReport("disconnected", engines)
            _teardown(cluster, pids, local=local)
            assert ownership == "started"
            return StopReport("stopped", engines, time.perf_counter() - tic)

    def scale(
        self, n: int, *, timeout: float = _DEFAULT_START_TIMEOUT, force: bool = False
    ) -> int:
        """Add or remove engines until there are ``n``; returns the change.

        New engines come from the same launcher.  Engines are removed idle
        ones first, newest first; the others are not disturbed.  More engines
        than the launcher can place are refused, unless ``force``.
        """
        _check_count(n, "engine count", minimum=0)
        with self._changing("scaling"), self._lock:
            client, cluster = self._require_owned("scale")
            check_engine_count(n, self._launcher or "local", force=force)
            demand = self._demand
            if demand is not None and not demand.minimum <= n <= demand.maximum:
                raise InvalidRequest(
                    f"scale {n} is outside --min {demand.minimum} and --max"
                    f" {demand.maximum} (engines on demand); scale within them,"
                    " or stop and start again with other limits"
                )
            self._forget_dead(client)
            live = [eid for eid in client.ids if eid not in self._removed]
            change = n - len(live)
            if self._launch is not None and self._launch.batch:
                # engines still queued count as coming: submit or cancel only
                # the difference, and cancel queued ones before running ones
                queue = waiting_engines(cluster, self._target, len(live))
                waiting = queue.count if queue is not None else 0
                if n - len(live) - waiting < 0 and waiting:
                    _cancel_waiting(cluster, waiting - max(0, n - len(live)))
                    waiting = max(0, n - len(live))
                change = n - len(live) - waiting
            if change > 0:
                self._add_engines(cluster, client, change, timeout, force=force)
            elif change < 0:
                self._remove_engines(client, self._pick_removals(client, -change))
            self._target = n
            self._idle_stopped.clear()
            if demand is not None:
                self._demand_why = f"scaled to {n}"
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
        idle timeout, or stuck ones that were replaced, starts them again and
        returns a report.  Otherwise returns ``None``.
        """
        with self._lock:
            if self._client is None:
                return self.start()
            if self._demand is not None and self._demand.minimum:
                # engines that died are replaced up to the minimum
                self.want(self._demand.minimum, "--min", retry=True)
            if not self._owed() or self._cluster is None:
                return None
        with self._changing("starting"), self._lock:
            if not self._owed() or self._cluster is None or self._client is None:
                return None
            tic = time.perf_counter()
            missing = self._owed()
            self._idle_stopped.clear()
            self._to_replace.clear()
            self._add_engines(self._cluster, self._client, missing, 60.0)
            return self._report(len(self._client.ids), time.perf_counter() - tic)

    # -- engines on demand ------------------------------------------------

    @property
    def demand(self) -> Demand | None:
        """The limits of engines on demand, or None for a fixed count."""
        return self._demand

    @property
    def launch_error(self) -> str | None:
        """Why the last launch on demand failed (None: it did not)."""
        return self._launch_error

    def can_launch(self) -> bool:
        """Whether work waiting for an engine makes one start (engines on
        demand, and the last launch did not fail)."""
        return (
            self._demand is not None
            and self._cluster is not None
            and self._launch_error is None
        )

    def want(self, engines: int, why: str, *, retry: bool = False) -> int:
        """Engines on demand: launch engines so that ``engines`` are up or
        on their way, within the minimum and maximum.

        ``why`` says for what (e.g. ``"a map of 40 items"``); status shows
        it.  After a launch failed, nothing more is launched unless
        ``retry`` (new work tries again; a map waiting does not).  Returns
        how many engines were launched: 0 for a fixed count, or when enough
        are up or coming.  Launching does not wait: engines join the work
        as they register (``engines_coming()`` meanwhile).
        """
        demand = self._demand
        if demand is None:
            return 0
        with self._lock:
            client, cluster = self._client, self._cluster
            if demand is not self._demand or client is None or cluster is None:
                return 0
            if self._launch_error is not None and not retry:
                return 0
            up = len(self.engine_ids())
            coming = self._launching + self._queued_engines()
            add = demand.to_launch(engines, up, coming)
            if add <= 0:
                return 0
            self._launch_error = None
            self._launching += add
            self._target = up + coming + add
            capped = " (--max)" if demand.target(engines) < engines else ""
            self._demand_why = f"{_count(self._target)} for {why}{capped}"
            threading.Thread(
                target=self._launch_on_demand,
                args=(client, cluster, add, self._epoch),
                name="paracell-launch",
                daemon=True,
            ).start()
        self._changed()
        return add

    def await_engines(self) -> list[int]:
        """The engines for work, after waiting (interruptibly) for the first
        while engines are on their way; raises ``InvalidRequest`` saying why
        when none are up and none are coming."""
        while True:
            ids = self.engine_ids()
            if ids or not self.engines_coming():
                break
            time.sleep(0.05)
        if not ids and self._launch_error is not None:
            raise InvalidRequest(
                f"the cluster has no engines: launching on demand failed"
                f" ({self._launch_error})"
            )
        return ids

    def _launch_on_demand(
        self, client: ipp.Client, cluster: ipp.Cluster, count: int, epoch: int
    ) -> None:
        """Start ``count`` engines and see them register (a thread of its own:
        the work that wanted them goes on meanwhile)."""
        error = None
        try:
            with self._lock:
                if self._epoch != epoch:
                    return
                before = set(client.ids)
                try:
                    engine_set = self._start_engines(cluster, count)
                except InvalidRequest:
                    raise
                except Exception as err:
                    raise ClusterStartError(_launcher_failure(cluster, err)) from None
            if not (self._launch is not None and self._launch.batch):
                # batch engines arrive when the queue lets them; others are
                # waited for, so that a launcher that fails says so
                self._await_registration(cluster, client, before, count, engine_set)
        except Exception as err:
            error = str(err) or type(err).__name__
        finally:
            with self._lock:
                if self._epoch == epoch:
                    self._launching -= count
                    self._queued = (0.0, 0)  # ask the queue afresh
                    if error is not None:
                        self._launch_error = error
                        self._demand_why = f"launching failed: {error}"
                        self._target = len(self.engine_ids()) + self._launching
            self._changed()

    def _await_registration(
        self,
        cluster: ipp.Cluster,
        client: ipp.Client,
        before: set[int],
        count: int,
        engine_set: str,
    ) -> None:
        deadline = time.monotonic() + _DEFAULT_START_TIMEOUT
        while len(set(client.ids) - before) < count:
            launched = cluster.engines.get(engine_set)
            if launched is None or _engine_set_exited(launched):
                raise ClusterStartError(_launcher_failure(cluster, None))
            if time.monotonic() > deadline:
                up = len(set(client.ids) - before)
                raise ClusterStartError(
                    f"only {up} of {count} engines registered within"
                    f" {_DEFAULT_START_TIMEOUT:g} s"
                )
            time.sleep(0.02)
        self.engine_ids()  # learn who they are before they take work

    def _owed(self) -> int:
        """Engines stopped by paracell that the next call starts again."""
        return len(self._idle_stopped) + len(self._to_replace)

    def on_stop(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` before the cluster stops (work on it is ending)."""
        self._stop_callbacks.append(callback)

    def stale_engines(self) -> set[int]:
        """Engines still busy with work that was cancelled but would not stop.

        New work stays off them until that work ends, so the next call never
        queues behind stale tasks.  An engine whose stale task lost its reply
        is free again within seconds; one stuck for good is replaced (see
        :mod:`._stale`).
        """
        with self._lock:
            review = self._stale.review(self._client)
            for task in review.finished:
                self.purge(task)
            for eid in review.stuck:
                self._replace_stuck(eid)
            return review.engines - review.stuck

    def mark_stale(self, engine: int, result: Any) -> None:
        """Note a cancelled task still running on ``engine``."""
        with self._lock:
            self._stale.add(engine, result)

    def _replace_stuck(self, eid: int) -> None:
        """Kill an engine that does not answer (its tasks fail on the hub and
        are retried elsewhere); the next call starts a replacement."""
        if eid in self._reserved:
            # a background job runs there: the probe waits behind it, which
            # says nothing about the engine being stuck
            return
        self._stale.forget_engine(eid)
        rec = self._records.get(eid)
        if self._cluster is None or self._launcher != "local" or rec is None:
            return
        if not rec.pid:
            return
        _reap_processes(_with_descendants([rec.pid]), grace=0.0)
        self._removed.add(eid)
        self._to_replace.add(eid)  # ensure_engines() brings one back

    #: tasks an engine holds at once: the next chunk waits on the engine
    depth = 2

    def join(self, engine: int, shipment: Any) -> None:
        """Send ``engine``, joining a map under way, the names it needs (no
        wait: the engine runs them before the chunks sent after)."""
        with contextlib.suppress(Exception):  # a dead engine fails its chunk
            self.shipper.ship(self.client, [engine], shipment, block=False)

    def pack(self, obj: Any) -> Any:
        """``obj`` pickled once for the many tasks that send it."""
        from ipyparallel.serialize import PrePickled

        return PrePickled(obj)

    def submit(self, engine: int, func: Callable[..., Any], *args: Any) -> Any:
        """Run ``func(*args)`` on ``engine``; returns its ``AsyncResult``."""
        return self.client[engine].apply_async(func, *args)

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
        ids = list(ids)
        self.shipper.forget(ids)
        for eid in ids:
            self._stale.forget_engine(eid)

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
        self, cluster: ipp.Cluster, count: int | None, timeout: float
    ) -> ipp.Client:
        """Start the controller and ``count`` engines (None: the plan's)."""
        assert self._launch is not None
        self._launch = configure(cluster, self._launch)
        n = self._launch.n if count is None else count
        try:
            cluster.start_controller_sync()
            if n > 0:
                self._start_engines(cluster, n)
                _check_engines_configured(cluster)
            client = cluster.connect_client_sync()
        except (ClusterStartError, InvalidRequest):
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
        """Wait until ``n`` engines are up; fail early if the launcher died.

        Engines from a batch queue arrive when the queue lets them: waiting
        ends with the first new one, or quietly at the timeout.
        """
        deadline = time.monotonic() + timeout
        queued = self._launch is not None and self._launch.batch
        if queued:
            n = min(n, len(set(client.ids) - self._removed) + 1)
        while len(set(client.ids) - self._removed) < n:
            controller = cluster.controller
            if controller is None or controller.state == "after":
                raise ClusterStartError(
                    "the controller exited while engines were starting:"
                    f" {_tail(controller.get_output() if controller else '')}"
                )
            sets = list(cluster.engines.values())
            if sets and all(_engine_set_exited(es) for es in sets):
                raise ClusterStartError(_launcher_failure(cluster, None))
            if time.monotonic() > deadline:
                if queued:
                    break
                up = len(set(client.ids) - self._removed)
                raise ClusterStartError(
                    f"only {up} of {n} engines registered within {timeout:g} s;"
                    f" launcher output: {_tail(_engine_output(cluster)) or '(none)'}"
                )
            time.sleep(0.02)
        self._probe([eid for eid in client.ids if eid not in before], None, client)

    def _add_engines(
        self,
        cluster: ipp.Cluster,
        client: ipp.Client,
        count: int,
        timeout: float,
        *,
        force: bool = False,
    ) -> None:
        before = set(client.ids)
        live = len(before - self._removed)
        try:
            self._start_engines(cluster, count, force=force)
        except InvalidRequest:
            raise
        except Exception as err:
            raise ClusterStartError(_launcher_failure(cluster, err)) from None
        self._wait_for_engines(cluster, client, before, live + count, timeout)

    def _start_engines(
        self, cluster: ipp.Cluster, count: int, *, force: bool = False
    ) -> str:
        """Launch ``count`` more engines; returns their engine set's id.

        SSH engines go where :func:`place_engines` says: the hosts' counts
        hold across scaling, not only at the start (``force``, or a start
        with ``force``: past them, round-robin).
        """
        launch = self._launch
        kwargs: dict[str, Any] = {}
        if launch is not None and launch.launcher == "ssh" and launch.hosts:
            live = self.engine_ids()
            pids = {rec.pid for e in live if (rec := self._records.get(e)) and rec.pid}
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

    def _pick_removals(self, client: ipp.Client, count: int) -> list[int]:
        queues = _queue_status(client, None, timeout=5.0) or {}

        def busy(eid: int) -> int:
            q = queues.get(eid, {})
            return int(q.get("queue", 0) + q.get("tasks", 0) > 0)

        live = [eid for eid in client.ids if eid not in self._removed]
        # idle engines first; among equals the newest (highest id) first
        return sorted(live, key=lambda eid: (busy(eid), -eid))[:count]

    def _remove_engines(self, client: ipp.Client, ids: list[int]) -> None:
        if not ids:
            return
        # an engine's pid means a process here only if it runs on this host
        here = socket.gethostname()
        pids = _with_descendants(
            rec.pid
            for e in ids
            if (rec := self._records.get(e)) and rec.pid and rec.host == here
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

    def clock_offset(self, engine: int) -> ClockOffset | None:
        """How far ``engine``'s clock runs ahead of the kernel's, if measured
        (at registration: see :mod:`._clock`)."""
        rec = self._records.get(engine)
        return None if rec is None else rec.clock

    def to_kernel_clock(self, engine: int | None, engine_time: float) -> float:
        """An engine's ``time.time()`` reading on the kernel's clock."""
        clock = None if engine is None else self.clock_offset(engine)
        return engine_time if clock is None else clock.to_kernel(engine_time)

    def _probe(
        self, ids: list[int], wait: float | None, client: ipp.Client | None = None
    ) -> None:
        """Learn host, pid and clock offset of engines not seen before
        (a few tiny tasks each)."""
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
        # engines that answered, their clocks not yet measured: measured now,
        # before other work queues on them and delays the answers
        answering = [
            eid
            for eid in ids
            if (rec := self._records[eid]).pid is not None and rec.clock is None
        ]
        if answering:
            self._measure_clocks(client, answering)

    def _measure_clocks(self, client: ipp.Client, ids: list[int]) -> None:
        def sent(eid: int) -> None:
            self._records[eid].probes += 1

        offsets = measure_offsets(
            client,
            ids,
            on_sent=sent,
            on_done=lambda ar: self.purge(ar, client),
        )
        for eid in ids:
            # not measured (no answer in time): taken as the kernel's clock
            self._records[eid].clock = offsets.get(eid, ClockOffset(0.0, math.inf))

    def _waiting(self, ids: list[int]) -> str | None:
        """Engines asked for that have not registered yet, and where they wait."""
        if self._launching and self._launch is not None and not self._launch.batch:
            return f"{self._launching} starting"
        if self._cluster is None or self._launch is None or not self._launch.batch:
            return None
        live = len([eid for eid in ids if eid not in self._removed])
        waiting = waiting_engines(self._cluster, self._target, live)
        return None if waiting is None else str(waiting)

    def engines_coming(self) -> bool:
        """Whether engines asked for are still to register (e.g. queued).

        Asks the batch system at most once a second: maps call this in a loop
        while they wait.
        """
        return self._launching > 0 or self._queued_engines() > 0

    def _queued_engines(self) -> int:
        """Engines waiting in a batch queue (the queue asked at most once a
        second); 0 for launchers without one."""
        client, launch, cluster = self._client, self._launch, self._cluster
        if client is None or launch is None or cluster is None or not launch.batch:
            return 0
        now = time.monotonic()
        if now - self._queued[0] > 1.0:
            live = len(set(client.ids) - self._removed)
            waiting = waiting_engines(cluster, self._target, live)
            self._queued = (now, 0 if waiting is None else waiting.count)
        return self._queued[1]

    def is_local(self, engine: int) -> bool:
        """Whether engine ``engine`` runs on this machine (it said so when
        probed; an engine not probed yet counts as remote)."""
        rec = self._records.get(engine)
        return rec is not None and rec.host is not None and rec.host == _HOSTNAME

    def _process_alive(self, rec: _EngineRecord) -> bool:
        """For engines started here, ask the process table, not the heartbeat."""
        if self._ownership != "started" or self._launcher != "local" or not rec.pid:
            return True
        try:
            return bool(psutil.Process(rec.pid).status() != psutil.STATUS_ZOMBIE)
        except psutil.NoSuchProcess:
            return False

    def _owned_pids(self, engines_only: bool = False) -> list[int]:
        """Every local process of the cluster paracell started, children too."""
        if self._cluster is None:
            return []
        roots = _launcher_pids(self._cluster, engines_only=engines_only)
        if self._launcher == "local":
            roots += self.engine_pids().values()
        return _with_descendants(roots)

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
        # task arguments and results pickled by value where needed (notebook
        # classes), with code that keeps its file name (tracebacks)
        _pickling.install()
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
        self.shipper.close()
        self.shipper = NameShipper(
            self.purge, shared=_shared_arrays(self._cluster_id), is_local=self.is_local
        )
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

    def _end_watchdog(self) -> None:
        watchdog, self._watchdog = self._watchdog, None
        if watchdog is not None:
            with contextlib.suppress(Exception):
                watchdog.kill()
                watchdog.wait(5)

    def _forget(self) -> None:
        self._epoch += 1
        self._controller_seen = (0.0, True)
        self.shipper.close()
        self.shipper = NameShipper(self.purge)
        self._reserved.clear()
        self._stale.clear()
        self._client = self._cluster = None
        self._ownership = self._launcher = self._profile = None
        self._cluster_id = self._location = self._connection_file = None
        self._target = 0
        self._launch = None
        self._idle_timeout = None
        self._threads = None
        self._records.clear()
        self._removed.clear()
        self._idle_stopped.clear()
        self._demand = None
        self._demand_why = ""
        self._launching = 0
        self._launch_error = None
        self._queued = (0.0, 0)

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
            waiting=None if self._client is None else self._waiting(self._client.ids),
            note=self._launch.note if self._launch is not None else None,
            demand=self._demand_words(),
        )

    def _demand_words(self) -> str | None:
        demand = self._demand
        if demand is None:
            return None
        return (
            f"{demand}: more start as work waits, idle ones stop after"
            f" {self._idle_timeout:g} s"
        )

    def _register_atexit(self) -> None:
        # The kernel shutting down stops the cluster paracell started.
        if not self._atexit_registered:
            atexit.register(self._stop_at_exit)
            self._atexit_registered = True

    def _stop_at_exit(self) -> None:
        with contextlib.suppress(Exception):
            self.stop()

    # called by the idle reaper, under the lock; returns the engines stopped
    def _stop_idle(self, ids: list[int]) -> list[int]:
        if self._client is None or self._in_use:
            return []
        demand = self._demand
        if demand is None:
            self._idle_stopped.update(ids)
            self._remove_engines(self._client, ids)
            return ids
        # on demand: down to the minimum, and none while work waits for one
        if self._launching:
            return []
        live = self.engine_ids()
        ids = [e for e in ids if e in live and e not in self._reserved]
        up = len(live)
        ids = demand.to_stop(ids, up)
        if ids:
            self._remove_engines(self._client, ids)
            self._target = up - len(ids)
            floor = ", down to --min" if self._target == demand.minimum else ""
            self._demand_why = (
                f"{_count(len(ids))} stopped after {self._idle_timeout:g} s idle{floor}"
            )
        return ids

    # -- names for background jobs (JobPool, see _pool.py) -----------------
    # Delegates to the shipper, so that the job manager needs no client.

    def send_names(self, engines: Iterable[int], shipment: Any) -> Any:
        """Check ``shipment`` on ``engines`` and send what they lack; returns
        the shipment as sent (raises ``EnginesDied`` for engines that died)."""
        return self.shipper.send(self.client, list(engines), shipment)

    def ship_names(
        self, engines: Iterable[int], shipment: Any, *, block: bool = True
    ) -> None:
        """Send ``engines`` what they lack of ``shipment``, unchecked."""
        self.shipper.ship(self.client, engines, shipment, block=block)

    # -- end of names for background jobs ----------------------------------


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
                queues = _queue_status(client, None, timeout=2.0)
                if queues is None:
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
                    stopped = []
                    with self._session._lock:
                        if not self._stopping.is_set():
                            stopped = self._session._stop_idle(due)
                    if stopped:
                        self._session._changed()
                    for eid in stopped:
                        idle_since.pop(eid, None)
        finally:
            with contextlib.suppress(Exception):
                client.close(linger=0)


# -- helpers ---------------------------------------------------------------


_default: ClusterSession | None = None
_default_lock = threading.Lock()


def default_session() -> ClusterSession:
    """The process-wide session the magics and ``paracell``'s API share."""
    global _default
    with _default_lock:
        if _default is None:
            _default = ClusterSession()
        return _default
