"""The cluster lifecycle against real local ipyparallel clusters.

Each test uses its own ``ClusterSession`` so that starting, scaling and
stopping never disturb another test's cluster.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from collections.abc import Iterator

import ipyparallel as ipp
import psutil
import pytest

from paracell.kernel_backend import (
    ClusterSession,
    ClusterStartError,
    InvalidRequest,
    LauncherOptions,
    MapOptions,
    NoCluster,
    map_function,
)
from paracell.kernel_backend._forkengines import PROCESS_NAMES

from conftest import cluster_processes, wait_until

pytestmark = [pytest.mark.cluster, pytest.mark.usefixtures("no_other_cluster")]


@ipp.interactive
def _nothing() -> None:
    return None


@ipp.interactive
def _seven() -> int:
    return 7


@ipp.interactive
def _has_leftover() -> bool:
    return "leftover" in globals()


@pytest.fixture
def session() -> Iterator[ClusterSession]:
    s = ClusterSession()
    yield s
    s.stop()


def test_start_registers_every_engine_and_reports_where(session: ClusterSession):
    report = session.start(2)
    assert report.engines == 2
    assert report.location == "127.0.0.1"
    assert report.ownership == "started"
    assert "started 2 engines on 127.0.0.1" in str(report)
    # usable at once: every engine answers
    assert sorted(session.client[:].apply_sync(os.getpid)) == sorted(
        e.pid for e in session.status().engines
    )


def test_local_controller_listens_on_loopback_only(session: ClusterSession):
    session.start(1)
    controller_pids = [p for p, m in cluster_processes().items() if "controller" in m]
    ports = [
        conn.laddr
        for pid in controller_pids
        for conn in psutil.Process(pid).net_connections(kind="tcp")
        if conn.status == psutil.CONN_LISTEN
    ]
    assert ports, "the controller listens on something"
    assert {addr.ip for addr in ports} == {"127.0.0.1"}


def test_status_rows_show_host_pid_state_and_tasks_done(session: ClusterSession):
    session.start(2)
    # an engine's pid comes with its first answer (later on a loaded machine)
    assert wait_until(lambda: all(e.pid for e in session.status().engines), 30)
    status = session.status()
    assert status.state == "running"
    assert [e.state for e in status.engines] == ["idle", "idle"]
    assert all(psutil.pid_exists(e.pid) for e in status.engines)
    assert all(e.host for e in status.engines)
    assert [e.tasks_done for e in status.engines] == [0, 0]

    first = status.engines[0].id
    session.client[first].apply_sync(_nothing)
    session.client[first].apply_sync(_nothing)

    def done() -> dict[int, int]:
        return {e.id: e.tasks_done for e in session.status().engines}

    # the hub's counts can trail the results by a moment
    assert wait_until(lambda: done()[first] == 2, 15), done()
    assert sum(done().values()) == 2


def test_status_shows_busy_engines(session: ClusterSession):
    session.start(2)
    ar = session.client[0].apply_async(time.sleep, 2)
    assert wait_until(lambda: session.status().engines[0].state == "busy", 5)
    assert session.status().engines[1].state == "idle"
    ar.get()


def test_scaling_down_an_engine_that_never_answers_kills_it(
    session: ClusterSession, monkeypatch
):
    from paracell.kernel_backend import _started

    monkeypatch.setattr(_started, "_STOP_GRACE", 2.0)
    session.start(2)
    assert wait_until(lambda: all(e.pid for e in session.status().engines), 30)
    pids = {e.id: e.pid for e in session.status().engines}
    newest = max(pids)  # an idle cluster loses its newest engine first
    frozen = psutil.Process(pids[newest])
    frozen.suspend()  # it will answer no shutdown request
    try:
        assert session.scale(1) == -1
        assert wait_until(lambda: not frozen.is_running(), 10)
        status = session.status()
        assert status.live_engines == 1
        assert [e.pid for e in status.engines] == [pids[min(pids)]]
    finally:
        with contextlib.suppress(psutil.Error):
            frozen.resume()


def test_scale_up_and_down_keeps_other_engines(session: ClusterSession):
    session.start(2)
    # an engine's pid is known once it answered a probe (later when loaded)
    assert wait_until(lambda: all(e.pid for e in session.status().engines), 30)
    original = {e.id: e.pid for e in session.status().engines}
    assert session.scale(3) == 1
    status = session.status()
    assert status.live_engines == 3
    assert {e.id: e.pid for e in status.engines if e.id in original} == original

    assert session.scale(1) == -2
    status = session.status()
    assert status.live_engines == 1
    survivor = status.engines[0]
    # the oldest engine survives, undisturbed (same process)
    assert survivor.id == min(original)
    assert survivor.pid == original[survivor.id]
    assert session.client[:].apply_sync(_seven) == [7]


def test_scale_down_removes_idle_engines_before_busy_ones(session: ClusterSession):
    session.start(3)
    busy = session.status().engines[-1].id  # the newest: removed first if idle
    ar = session.client[busy].apply_async(time.sleep, 3)
    assert wait_until(lambda: session.status().engines[-1].state == "busy", 5)
    session.scale(1)
    assert [e.id for e in session.status().engines] == [busy]
    assert ar.get(timeout=10) is None


def test_restart_gives_fresh_engines_with_clean_namespaces(session: ClusterSession):
    session.start(2)
    session.client[:].push({"leftover": 42}, block=True)
    old_pids = {e.pid for e in session.status().engines}
    report = session.restart()
    assert report.engines == 2
    status = session.status()
    assert status.live_engines == 2
    assert not old_pids & {e.pid for e in status.engines}
    assert session.client[:].apply_sync(_has_leftover) == [
        False,
        False,
    ]


def test_a_dead_engine_is_a_state_not_an_exception(session: ClusterSession):
    session.start(2)
    victim = session.status().engines[1]
    os.kill(victim.pid, signal.SIGKILL)
    assert wait_until(
        lambda: [e.state for e in session.status().engines] == ["idle", "dead"], 10
    )
    status = session.status()
    assert status.dead_engines == 1
    assert "1 dead" in status.summary()
    # scaling back up replaces the dead engine
    session.scale(2)
    assert session.status().live_engines == 2
    assert session.status().dead_engines == 0


def test_stop_leaves_no_process_and_stopping_twice_is_calm(session: ClusterSession):
    session.start(2)
    assert cluster_processes()
    report = session.stop()
    assert report.action == "stopped"
    assert report.engines == 2
    assert not cluster_processes()
    assert session.stop().action == "nothing"
    assert session.status().state == "stopped"


def test_stop_leaves_not_even_a_zombie(session: ClusterSession):
    # engines and nannies killed with the process that forked them, and the
    # controller's schedulers killed with it, were left to the init process
    # to reap, which some containers' init (this machine's among them) does
    # seconds later or never
    session.start(2)
    started = session._started
    assert started is not None
    names = {pid: psutil.Process(pid).name() for pid in started.owned_pids()}
    assert list(names.values()).count(PROCESS_NAMES["engine"]) == 2
    assert list(names.values()).count(PROCESS_NAMES["nanny"]) == 2
    assert len(names) > 6  # the controller and its schedulers too
    session.stop()
    left = {}
    for pid, name in names.items():
        with contextlib.suppress(psutil.NoSuchProcess):
            left[pid] = (name, psutil.Process(pid).status())
    assert not left, f"left in the process table after the stop: {left}"


def test_a_new_cluster_owes_nothing_for_the_last_ones_stuck_engines(
    session: ClusterSession,
):
    session.start(1)
    (stuck,) = session.engine_ids()
    session._replace_stuck(stuck)  # what the stale-work probe does to a hung one
    assert session.engines_expected()
    session.stop()

    session.start(1)
    assert not session.engines_expected()
    assert session.ensure_engines() is None
    assert session.status().live_engines == 1


def test_idle_timeout_stops_engines_and_next_use_restarts_them(
    session: ClusterSession,
):
    session.start(2, idle_timeout=1.0)
    assert wait_until(lambda: session.status().live_engines == 0, 15)
    status = session.status()
    assert status.state == "running"
    assert status.idle_stopped == 2
    assert "stopped after 1 s idle" in status.summary()
    assert not [m for m in cluster_processes().values() if m == "ipyparallel.engine"]

    with session.in_use() as client:  # the timeout cannot fire meanwhile
        assert session.status().live_engines == 2
        assert client[session.engine_ids()].apply_sync(_seven) == [7, 7]


def test_busy_engines_are_not_stopped_for_idleness(session: ClusterSession):
    session.start(1, idle_timeout=1.0)
    with session.in_use() as client:
        assert client[:].apply_sync(time.sleep, 2.5) == [None]
    assert session.status().live_engines == 1


def test_the_idle_timeout_cannot_stop_engines_while_a_maps_names_travel(
    session: ClusterSession, monkeypatch: pytest.MonkeyPatch
):
    session.start(2, idle_timeout=1.0)
    send = session.shipper.send
    live_after_shipping: list[int] = []

    def slow_send(*args: object, **kwargs: object) -> object:
        time.sleep(2.5)  # idle engines would time out meanwhile
        live_after_shipping.append(session.status().live_engines)
        return send(*args, **kwargs)

    monkeypatch.setattr(session.shipper, "send", slow_send)
    job = map_function(session, abs, range(-4, 0), MapOptions(), block=True)
    assert job.result() == [4, 3, 2, 1]
    assert live_after_shipping == [2]


def test_a_launcher_that_cannot_start_fails_fast_and_cleans_up(
    session: ClusterSession,
):
    tic = time.monotonic()
    # mpiexec refuses the option (or is not installed): either way it fails
    with pytest.raises(ClusterStartError, match="mpiexec"):
        session.start(
            2,
            launcher="mpi",
            options=LauncherOptions(extra="--paracell-no-such-option"),
            timeout=30,
        )
    assert time.monotonic() - tic < 30
    assert not cluster_processes()
    assert not session.active


def test_ssh_without_hosts_is_refused_before_anything_starts(session: ClusterSession):
    with pytest.raises(InvalidRequest, match="needs --hosts"):
        session.start(2, launcher="ssh", timeout=5)
    assert not cluster_processes()


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"n": 0}, "whole number >= 1"),
        ({"n": -3}, "whole number >= 1"),
        ({"launcher": "kubernetes"}, "unknown launcher 'kubernetes'; choose one of"),
        ({"idle_timeout": 0}, "--idle-timeout must be a positive"),
    ],
)
def test_impossible_start_requests_are_invalid(session, kwargs, message):
    with pytest.raises(InvalidRequest, match=message):
        session.start(**kwargs)
    assert not session.active


def test_scale_and_restart_need_a_cluster(session: ClusterSession):
    with pytest.raises(NoCluster):
        session.scale(2)
    with pytest.raises(NoCluster):
        session.restart()
    with pytest.raises(InvalidRequest, match=">= 0"):
        session.scale(-1)


def test_a_second_start_is_refused_while_one_is_active(session: ClusterSession):
    session.start(1)
    with pytest.raises(InvalidRequest, match="already active"):
        session.start(1)


def test_connect_to_a_cluster_started_elsewhere_and_disconnect(tmp_path):
    outside = ipp.Cluster(n=1, profile="elsewhere", log_level=40)
    outside.start_cluster_sync()
    try:
        first = ClusterSession()
        report = first.connect(profile="elsewhere")
        assert report.ownership == "connected"
        assert wait_until(lambda: first.status().live_engines == 1, 30)
        assert first.client[:].apply_sync(_seven) == [7]
        with pytest.raises(InvalidRequest, match="did not start"):
            first.scale(3)
        assert first.stop().action == "disconnected"

        second = ClusterSession()
        second.connect(profile="elsewhere", cluster_id=outside.cluster_id)
        assert second.status().ownership == "connected"
        second.stop()

        third = ClusterSession()
        path = os.path.join(
            outside.profile_dir,
            "security",
            f"ipcontroller-{outside.cluster_id}-client.json",
        )
        third.connect(file=path)
        assert wait_until(lambda: third.status().live_engines == 1, 30)
        third.stop()
        # disconnecting left the outside cluster running
        assert outside.controller.state == "running"
    finally:
        outside.stop_cluster_sync()


def test_connect_names_what_it_cannot_find():
    session = ClusterSession()
    with pytest.raises(InvalidRequest, match="unknown profile 'nowhere'"):
        session.connect(profile="nowhere")
    with pytest.raises(InvalidRequest, match="no cluster 'nope'"):
        session.connect(cluster_id="nope")
    with pytest.raises(InvalidRequest, match="no connection file"):
        session.connect(file="/nonexistent/ipcontroller-client.json")
