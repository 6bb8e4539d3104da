"""The one cluster a kernel works with: started here, or connected to.

``ClusterSession`` owns the ipyparallel ``Cluster`` (when paracell started it)
and the ``Client``.  Everything else in paracell asks the session for engines;
nothing else touches launchers or controller processes.

The session keeps the lifecycle (start, connect, scale, restart, stop, the
phases its observers see) and composes the parts that do the work:
:class:`~._ledger.EngineLedger` (what is known of each engine, reservations),
:class:`~._ippclient.IppClient` (tasks to and from the engines),
:class:`~._started.StartedCluster` (the engine processes of a cluster it
started), :class:`~._ondemand.OnDemand` and :class:`~._idle.IdleReaper`.
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import os
import subprocess
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import ipyparallel as ipp

from . import _pickling
from ._clock import ClockOffset
from ._demand import Demand
from ._errors import InvalidRequest, NoCluster
from ._idle import IdleReaper
from ._ippclient import IppClient
from ._ippstate import _cluster_pids, _queue_status
from ._launchers import LauncherOptions
from ._ledger import EngineLedger
from ._limits import check_engine_count
from ._ondemand import OnDemand
from ._processes import (
    LAUNCHERS,
    _check_count,
    _find_connection_file,
    _make_cluster,
    _shared_arrays,
    _teardown,
    _thread_env,
)
from ._profiles import check_profile_name
from ._reaping import _reap_processes, _with_descendants
from ._release import SoonRelease
from ._shipping import NameShipper
from ._signal import Signal
from ._started import DEFAULT_START_TIMEOUT, StartedCluster
from ._startplan import StartPlan, plan_start
from ._status import ClusterStatus, Ownership, StartReport, StopReport
from ._watchdog import start_watchdog

__all__ = ["LAUNCHERS", "ClusterSession", "default_session"]

#: How long a release the notebook's drop asked for waits for the session
#: (a cluster starting or stopping holds it longer: that release is left to
#: the next cell's end or shipment).
_RELEASE_WAIT = 0.5
#: How long a cell's end waits for it (such a release takes milliseconds).
_CELL_END_WAIT = 0.05

_log = logging.getLogger("paracell.cluster")
_log.addHandler(logging.NullHandler())
_log.setLevel(logging.ERROR)
# a view's failure is a bug to see, not to hide: no NullHandler here, so
# without logging set up it reaches stderr (logging's last resort)


class ClusterSession:
    """One kernel's cluster: start, connect, scale, restart, stop, status.

    All methods are thread-safe.  Errors a user can fix raise
    :class:`~paracell.kernel_backend.InvalidRequest`; a launcher that fails
    raises :class:`~paracell.kernel_backend.ClusterStartError` with the
    launcher's own error text, after cleaning up what it started.
    """

    def __init__(self) -> None:
        self._lock = threading.RLock()
        self._ledger = EngineLedger(self._lock)
        # the notebook dropping a large array lets engines free it soon
        self._soon = SoonRelease(self._release_when_quiet)
        self._engines = IppClient(
            self._ledger, self._lock, on_dropped=self._soon.request
        )
        # say whether work that may read shipped names is under way
        self._work_checks: list[Callable[[], bool]] = []
        self._started: StartedCluster | None = None  # None: connected, or none
        self._on_demand: OnDemand | None = None
        self._ownership: Ownership | None = None
        self._launcher: str | None = None
        self._profile: str | None = None
        self._cluster_id: str | None = None
        self._location: str | None = None
        self._connection_file: str | None = None
        self._connected_engines = 0  # a connected cluster's count, at connect
        self._idle_timeout: float | None = None
        self._idle_stopped: set[int] = set()
        self._reaper: IdleReaper | None = None
        self._in_use = 0
        self._atexit_registered = False
        self._to_replace: set[int] = set()  # stuck engines killed, to restart
        self._threads: int | None = None  # BLAS/OpenMP threads per engine
        self._stop_callbacks: list[Callable[[], None]] = []
        self._phases: list[str] = []  # changes under way, oldest first
        self._changes: Signal[[]] = Signal("the cluster")
        # guards the phases, which threads touch without the session lock
        # (never held while waiting on anything)
        self._books = threading.Lock()
        # bumped whenever the cluster goes away: work started on an older
        # epoch knows its cluster is gone
        self._epoch = 0
        self._watchdog: subprocess.Popen[bytes] | None = None

    # -- queries -----------------------------------------------------------

    @property
    def _client(self) -> ipp.Client | None:
        return self._engines.client

    @property
    def _cluster(self) -> ipp.Cluster | None:
        return None if self._started is None else self._started.cluster

    @property
    def active(self) -> bool:
        """Whether a cluster is started or connected."""
        return self._client is not None

    @property
    def client(self) -> ipp.Client:
        """The connected ``ipyparallel.Client``; raises ``NoCluster`` if none."""
        return self._engines.require()

    @property
    def shipper(self) -> NameShipper:
        """Sends names to the engines, once per engine per version."""
        return self._engines.shipper

    @property
    def ledger(self) -> EngineLedger:
        """What is known of each engine, and what each engine is doing."""
        return self._ledger

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
        started = self._started
        pid = None if started is None else started.controller_pid
        return self._engines.controller_responds(max_age=max_age, local_pid=pid)

    def engines_expected(self) -> bool:
        """Whether engines not up now will come by themselves (engines the
        idle timeout stopped start again on the next call)."""
        return bool(self._owed()) and self._started is not None

    def require_controller(self) -> None:
        """Raise ``NoCluster`` if the controller is gone (before new work)."""
        if self._client is not None and not self.controller_responds():
            raise NoCluster(
                "the cluster's controller does not answer (did it die?);"
                " %cluster stop cleans up, then %cluster start"
            )

    def engine_ids(self) -> list[int]:
        """Ids of the engines available for work (not being removed)."""
        return self._engines.engine_ids()

    def unreserved_engine_ids(self) -> list[int]:
        """Engines not running a background job (maps use these first)."""
        return self._ledger.unreserved(self.engine_ids())

    def engine_host(self, engine: int) -> str | None:
        """The host ``engine`` runs on, once its first answer said so."""
        return self._ledger.host(engine)

    def is_local(self, engine: int) -> bool:
        """Whether engine ``engine`` runs on this machine (it said so when
        probed; an engine not probed yet counts as remote)."""
        return self._ledger.is_local(engine)

    def process_ids(self) -> list[int]:
        """Every process of the cluster paracell started here (controller,
        engines and their children); none for a connected cluster."""
        with self._lock:
            started = self._started
            return [] if started is None else started.owned_pids()

    def engine_pids(self) -> dict[int, int]:
        """Engine id -> pid for every engine whose pid is known."""
        return self._ledger.pids()

    def clock_offset(self, engine: int) -> ClockOffset | None:
        """How far ``engine``'s clock runs ahead of the kernel's, if measured
        (at registration: see :mod:`._clock`)."""
        return self._ledger.clock_offset(engine)

    def to_kernel_clock(self, engine: int | None, engine_time: float) -> float:
        """An engine's ``time.time()`` reading on the kernel's clock."""
        clock = None if engine is None else self.clock_offset(engine)
        return engine_time if clock is None else clock.to_kernel(engine_time)

    def reserve(self, engine: int, label: str = "job") -> None:
        """Mark ``engine`` as running a background job (``label``: its name)."""
        self._ledger.reserve(engine, label)

    def release(self, engine: int) -> None:
        """``engine`` finished its background job."""
        self._ledger.release(engine)

    def mapping(self, engines: Iterable[int]) -> Callable[[], None]:
        """Note that a map runs on ``engines``; call the result when it ends."""
        return self._ledger.mapping(engines)

    def current_work(self, engine: int) -> str | None:
        """What ``engine`` is doing: a background job's name, ``pmap``,
        ``cancelled work`` (still stopping), or None."""
        return self._ledger.current_work(engine)

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

    # -- status ----------------------------------------------------------------

    def try_status(self) -> ClusterStatus | None:
        """:meth:`status`, or None at once when a change holds the session
        (for views that refresh on a timer and must never wait)."""
        if not self._lock.acquire(blocking=False):
            return None
        try:
            return self.status()
        finally:
            self._lock.release()

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
                self._engines.probe(ids, wait=0.5)
                queues = _queue_status(client, ids, timeout=2.0)
                answering = queues is not None
            od = self._on_demand
            return ClusterStatus(
                state="running",
                ownership=self._ownership,
                launcher=self._launcher,
                profile=self._profile,
                cluster_id=self._cluster_id,
                location=self._location,
                target_engines=self._target(),
                idle_timeout=self._idle_timeout,
                idle_stopped=len(self._idle_stopped),
                engines=self._ledger.rows(ids, queues or {}),
                controller_answers=answering,
                threads_per_engine=self._threads,
                waiting=self._waiting(ids),
                min_engines=None if od is None else od.demand.minimum,
                max_engines=None if od is None else od.demand.maximum,
                demand=None if od is None else od.why,
            )

    def _target(self) -> int:
        """Engines paracell means to have (a connected cluster: those it had)."""
        started = self._started
        return self._connected_engines if started is None else started.target

    def _waiting(self, ids: list[int]) -> str | None:
        """Engines asked for that have not registered yet, and where they wait."""
        started, od = self._started, self._on_demand
        if started is None:
            return None
        if od is not None and od.launching and not started.launch.batch:
            return f"{od.launching} starting"
        waiting = started.waiting(ids)
        return None if waiting is None else str(waiting)

    # -- lifecycle ---------------------------------------------------------

    def start(
        self,
        n: int | None = None,
        *,
        launcher: str = "local",
        profile: str | None = None,
        idle_timeout: float | None = None,
        timeout: float = DEFAULT_START_TIMEOUT,
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
        planned = plan_start(
            n,
            launcher=launcher,
            profile=profile,
            idle_timeout=idle_timeout,
            timeout=timeout,
            force=force,
            threads=threads,
            options=options,
            min_engines=min_engines,
            max_engines=max_engines,
        )
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
            started, client, watchdog = self._launch(planned, timeout)
            self._watchdog = watchdog
            self._take_started(started, client, planned)
            self._register_atexit()
            return self._report(len(client.ids), time.perf_counter() - tic)

    def _launch(
        self, planned: StartPlan, timeout: float
    ) -> tuple[StartedCluster, ipp.Client, subprocess.Popen[bytes]]:
        """Start the planned controller and first engines, and the cluster's
        watchdog before them (a kernel killed while they start leaves none
        running); on any failure (Ctrl-C included), stop what started, batch
        jobs still queued too."""
        launch = planned.launch
        env = _thread_env(planned.threads, planned.threads_given)
        cluster = _make_cluster(launch, planned.profile, env)
        watchdog = start_watchdog(
            cluster.cluster_id, os.path.join(cluster.profile_dir, "security")
        )
        started = StartedCluster(cluster, launch, self._ledger, self._engines)
        try:
            client = started.start(planned.first, timeout)
        except BaseException:
            _end_watchdog(watchdog)
            _teardown(cluster, _cluster_pids(cluster), local=launch.local)
            raise
        return started, client, watchdog

    def _take_started(
        self, started: StartedCluster, client: ipp.Client, planned: StartPlan
    ) -> None:
        """Make the cluster just started the session's, with its settings."""
        launch = started.launch  # completed from the profile
        demand = planned.demand
        if demand is not None and not planned.max_given:
            # the profile's hosts may say how many there can be
            demand = Demand(demand.minimum, max(demand.minimum, launch.n))
        started.target = launch.n if demand is None else demand.minimum
        self._started = started
        self._adopt(client, "started", launch.launcher)
        self._location = launch.location
        self._idle_timeout = idle_timeout = planned.idle_timeout
        self._threads = planned.threads
        if demand is not None:
            self._on_demand = OnDemand(
                demand,
                idle_timeout,
                started=started,
                engines=self._engines,
                ledger=self._ledger,
                lock=self._lock,
                changed=self._changed,
            )
        if idle_timeout is not None:
            self._reaper = IdleReaper(
                self._connection_file,
                idle_timeout,
                busy=lambda: bool(self._in_use),
                stop=self._reap,
            )
            self._reaper.start()

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
            self._adopt(client, "connected", None)
            self._connected_engines = len(client.ids)
            self._connection_file = path
            self._engines.probe(client.ids, wait=2.0)
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
            client = self._client
            if client is None:
                return StopReport("nothing")
            tic = time.perf_counter()
            if self._reaper is not None:
                self._reaper.close()
                self._reaper = None
            started = self._started
            engines = len(client.ids)
            pids = [] if started is None else started.owned_pids()
            self._end_watchdog()
            self._forget()
            with contextlib.suppress(Exception):
                client.close(linger=0)
            if started is None:
                return StopReport("disconnected", engines)
            _teardown(started.cluster, pids, local=started.local)
            return StopReport("stopped", engines, time.perf_counter() - tic)

    def scale(
        self, n: int, *, timeout: float = DEFAULT_START_TIMEOUT, force: bool = False
    ) -> int:
        """Add or remove engines until there are ``n``; returns the change.

        New engines come from the same launcher.  Engines are removed idle
        ones first, newest first; the others are not disturbed.  More engines
        than the launcher can place are refused, unless ``force``.
        """
        _check_count(n, "engine count", minimum=0)
        with self._changing("scaling"), self._lock:
            client, started = self._require_owned("scale")
            check_engine_count(n, self._launcher or "local", force=force)
            od = self._on_demand
            demand = None if od is None else od.demand
            if demand is not None and not demand.minimum <= n <= demand.maximum:
                raise InvalidRequest(
                    f"scale {n} is outside --min {demand.minimum} and --max"
                    f" {demand.maximum} (engines on demand); scale within them,"
                    " or stop and start again with other limits"
                )
            change = started.scale_to(client, n, timeout, force=force)
            self._idle_stopped.clear()
            if od is not None:
                od.why = f"scaled to {n}"
            return change

    def restart(self, *, timeout: float = DEFAULT_START_TIMEOUT) -> StartReport:
        """Replace every engine with a fresh one (clean namespaces), same count."""
        with self._changing("restarting"), self._lock:
            client, started = self._require_owned("restart")
            n = max(started.target, len(client.ids))
            tic = time.perf_counter()
            self._idle_stopped.clear()
            started.restart_engines(client, n, timeout)
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
            od = self._on_demand
            if od is not None and od.demand.minimum:
                # engines that died are replaced up to the minimum
                self.want(od.demand.minimum, "--min", retry=True)
            if not self._owed() or self._started is None:
                return None
        with self._changing("starting"), self._lock:
            client, started = self._client, self._started
            if not self._owed() or started is None or client is None:
                return None
            tic = time.perf_counter()
            missing = self._owed()
            self._idle_stopped.clear()
            self._to_replace.clear()
            started.add_engines(client, missing, 60.0)
            return self._report(len(client.ids), time.perf_counter() - tic)

    @contextlib.contextmanager
    def in_use(self) -> Iterator[ipp.Client]:
        """Hold the engines for work: the idle timeout does not fire meanwhile."""
        with self.busy():
            self.ensure_engines()
            yield self.client

    @contextlib.contextmanager
    def busy(self) -> Iterator[None]:
        """Work is being sent: engines keep what was shipped to them (no
        release of dropped arrays) and the idle timeout does not fire.

        Wraps the time from names being shipped to the tasks that read them
        being sent, where a release could take names from under the tasks.
        """
        with self._lock:
            self._in_use += 1
        try:
            yield
        finally:
            with self._lock:
                self._in_use -= 1

    def add_work_check(self, check: Callable[[], bool]) -> None:
        """``check()`` says whether work that reads shipped names is under
        way (a background job): no release of dropped arrays then.  Called
        with the session's lock held, so it must not take locks of its own."""
        with self._lock:
            self._work_checks.append(check)

    def on_stop(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` before the cluster stops (work on it is ending)."""
        self._stop_callbacks.append(callback)

    # -- engines on demand ------------------------------------------------

    @property
    def demand(self) -> Demand | None:
        """The limits of engines on demand, or None for a fixed count."""
        od = self._on_demand
        return None if od is None else od.demand

    @property
    def launch_error(self) -> str | None:
        """Why the last launch on demand failed (None: it did not)."""
        od = self._on_demand
        return None if od is None else od.error

    def can_launch(self) -> bool:
        """Whether work waiting for an engine makes one start (engines on
        demand, and the last launch did not fail)."""
        od = self._on_demand
        return od is not None and od.can_launch()

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
        od = self._on_demand
        return 0 if od is None else od.want(engines, why, retry=retry)

    def await_engines(self) -> list[int]:
        """The engines for work, after waiting (interruptibly) for the first
        while engines are on their way; raises ``InvalidRequest`` saying why
        when none are up and none are coming."""
        while True:
            ids = self.engine_ids()
            if ids or not self.engines_coming():
                break
            time.sleep(0.05)
        error = self.launch_error
        if not ids and error is not None:
            raise InvalidRequest(
                f"the cluster has no engines: launching on demand failed ({error})"
            )
        return ids

    def engines_coming(self) -> bool:
        """Whether engines asked for are still to register (e.g. queued).

        Asks the batch system at most once a second: maps call this in a loop
        while they wait.
        """
        od, started = self._on_demand, self._started
        if od is not None and od.launching > 0:
            return True
        return started is not None and started.queued(self._client) > 0

    def _owed(self) -> int:
        """Engines stopped by paracell that the next call starts again."""
        return len(self._idle_stopped) + len(self._to_replace)

    def _reap(self, ids: list[int], still_wanted: Callable[[], bool]) -> list[int]:
        """The idle reaper's due engines ``ids``: stop those that may stop
        (unless the reaper was closed meanwhile); returns those stopped."""
        with self._lock:
            client, started = self._client, self._started
            if not still_wanted() or client is None or started is None:
                return []
            if self._in_use:
                return []
            if self._on_demand is not None:
                # on demand: down to the minimum, and none while work waits
                stopped = self._on_demand.stop_idle(client, ids)
            else:
                self._idle_stopped.update(ids)
                started.remove_engines(client, ids)
                stopped = ids
        if stopped:
            self._changed()
        return stopped

    # -- cancelled work and the engines' tasks ------------------------------------

    def stale_engines(self) -> set[int]:
        """Engines still busy with work that was cancelled but would not stop.

        New work stays off them until that work ends, so the next call never
        queues behind stale tasks.  An engine whose stale task lost its reply
        is free again within seconds; one stuck for good is replaced (see
        :mod:`._stale`).
        """
        with self._lock:
            review = self._ledger.stale.review(self._client)
            for task in review.finished:
                self.purge(task)
            for eid in review.stuck:
                self._replace_stuck(eid)
            return review.engines - review.stuck

    def mark_stale(self, engine: int, result: Any) -> None:
        """Note a cancelled task still running on ``engine``."""
        self._ledger.mark_stale(engine, result)

    def _replace_stuck(self, eid: int) -> None:
        """Kill an engine that does not answer (its tasks fail on the hub and
        are retried elsewhere); the next call starts a replacement."""
        ledger = self._ledger
        if ledger.reserved(eid):
            # a background job runs there: the probe waits behind it, which
            # says nothing about the engine being stuck
            return
        ledger.stale.forget_engine(eid)
        rec = ledger.records.get(eid)
        if self._started is None or not self._started.local or rec is None:
            return
        if not rec.pid:
            return
        _reap_processes(_with_descendants([rec.pid]), grace=0.0)
        ledger.removed.add(eid)
        self._to_replace.add(eid)  # ensure_engines() brings one back

    #: tasks an engine holds at once: the next chunk waits on the engine
    depth = 2

    def join(self, engine: int, shipment: Any) -> None:
        """Send ``engine``, joining a map under way, the names it needs (no
        wait: the engine runs them before the chunks sent after)."""
        self._engines.join(engine, shipment)

    def pack(self, obj: Any) -> Any:
        """``obj`` pickled once for the many tasks that send it."""
        return self._engines.pack(obj)

    def submit(self, engine: int, func: Callable[..., Any], *args: Any) -> Any:
        """Run ``func(*args)`` on ``engine``; returns its ``AsyncResult``."""
        return self._engines.submit(engine, func, *args)

    def purge(self, result: Any, client: ipp.Client | None = None) -> None:
        """Drop a finished task from ipyparallel's client-side caches.

        Results are paracell's once taken; the client would otherwise keep
        every task's result for the life of the kernel.
        """
        self._engines.purge(result, client)

    def interrupt(self, tasks: dict[Any, int], grace: float = 1.5) -> list[Any]:
        """Stop tasks: abort the queued, SIGINT the running, wait ``grace`` s.

        ``tasks`` maps each task's AsyncResult to its engine.  Tasks still
        running after the grace period keep their engine out of new work
        (see :meth:`stale_engines`); they are returned.
        """
        return self._engines.interrupt(tasks, grace)

    def forget_engines(self, ids: Iterable[int]) -> None:
        """Engines that died: nothing shipped to them survives."""
        self._engines.forget_engines(ids)

    # -- internals ---------------------------------------------------------

    def _require_owned(self, action: str) -> tuple[ipp.Client, StartedCluster]:
        if self._client is None:
            raise NoCluster(
                f"no cluster to {action}: start one with %cluster start [-n N]"
            )
        if self._started is None:
            raise InvalidRequest(
                f"cannot {action} a cluster paracell did not start"
                " (it was connected to); use the tool that started it"
            )
        return self._client, self._started

    def _adopt(
        self, client: ipp.Client, ownership: Ownership, launcher: str | None
    ) -> None:
        # task arguments and results pickled by value where needed (notebook
        # classes), with code that keeps its file name (tracebacks)
        _pickling.install()
        cluster = self._cluster
        self._ownership, self._launcher = ownership, launcher
        self._ledger.watch_processes = ownership == "started" and launcher == "local"
        profile_dir = client._profile_dir
        if cluster is not None:
            profile_dir = cluster.profile_dir
        base = os.path.basename(str(getattr(profile_dir, "location", profile_dir)))
        self._profile = base.removeprefix("profile_") or None
        info = getattr(client, "_config", {}) or {}
        self._cluster_id = cluster.cluster_id if cluster else info.get("cluster_id")
        self._engines.attach(client, _shared_arrays(self._cluster_id))
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
            _end_watchdog(watchdog)

    def _forget(self) -> None:
        self._epoch += 1
        self._engines.detach()
        self._ledger.clear()
        if self._on_demand is not None:
            self._on_demand.close()
        self._started = self._on_demand = None
        self._ownership = self._launcher = self._profile = None
        self._cluster_id = self._location = self._connection_file = None
        self._connected_engines = 0
        self._idle_timeout = None
        self._threads = None
        self._idle_stopped.clear()
        self._to_replace.clear()  # a new cluster owes none of these

    def _report(self, engines: int, seconds: float) -> StartReport:
        assert self._ownership is not None
        client, started, od = self._client, self._started, self._on_demand
        return StartReport(
            engines=engines,
            launcher=self._launcher or "unknown",
            location=self._location or "?",
            profile=self._profile or "default",
            cluster_id=self._cluster_id or "",
            seconds=seconds,
            ownership=self._ownership,
            waiting=None if client is None else self._waiting(client.ids),
            note=None if started is None else started.launch.note,
            demand=None if od is None else od.words(),
        )

    def _register_atexit(self) -> None:
        # The kernel shutting down stops the cluster paracell started.
        if not self._atexit_registered:
            atexit.register(self._stop_at_exit)
            self._atexit_registered = True

    def _stop_at_exit(self) -> None:
        with contextlib.suppress(Exception):
            self.stop()

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

    def release_dropped_arrays(self) -> None:
        """Let engines free the large arrays the notebook dropped (their
        shared memory, or the copies sent to them) now; nothing while work
        is being sent or runs, or while the cluster is busy changing (they
        are freed at a later call)."""
        # a moment's wait: a release the drop asked for may hold the lock,
        # and the cell ends only after the engines have been told
        self._release_within(_CELL_END_WAIT)

    def _release_when_quiet(self) -> None:
        """:meth:`release_dropped_arrays`, from the thread of a release the
        notebook's drop asked for."""
        self._release_within(_RELEASE_WAIT)

    def _release_within(self, wait: float) -> None:
        if self._lock.acquire(timeout=wait):
            try:
                self._release_if_quiet()
            finally:
                self._lock.release()

    def _release_if_quiet(self) -> None:
        # under the lock: work that ships names takes it first (busy)
        client = self._client
        if client is None or self._in_use:
            return
        if not any(check() for check in self._work_checks):
            self.shipper.release_dropped(client)


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


def _end_watchdog(watchdog: subprocess.Popen[bytes]) -> None:
    """Stop a watchdog: its cluster is stopped (or never started)."""
    with contextlib.suppress(Exception):
        watchdog.kill()
        watchdog.wait(5)
