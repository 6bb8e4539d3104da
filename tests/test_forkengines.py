"""Local engines forked from one process, and the controller without its
start-up pause (kernel_backend/_forkengines.py, _quickcontroller.py).

What every test shows anyway (maps, jobs, interrupts, faults, teardown) runs
on these engines; here: that they are forked, from one parent, each with a
nanny of its own that relays signals; that they do not share random state;
that a profile saying how engines start keeps ipyparallel's launcher.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import time

import psutil
import pytest
from traitlets.config import Config

from paracell.kernel_backend._forkengines import (
    FORK_ENV,
    PROCESS_NAMES,
    ForkingEngineSetLauncher,
    can_fork_engines,
    main,
)
from paracell.kernel_backend._quickcontroller import PROGRAM, command

from conftest import cluster_processes, wait_until


def _engine_pids(session):
    client = session.client

    def pid():
        import os

        return os.getpid()

    return {eid: client[eid].apply_sync(pid) for eid in client.ids}


@pytest.mark.cluster
def test_local_engines_are_forked_from_one_parent_each_with_a_nanny(shared_cluster):
    pids = _engine_pids(shared_cluster)
    engines = [psutil.Process(p) for p in pids.values()]
    assert {e.name() for e in engines} == {PROCESS_NAMES["engine"]}
    parents = {e.ppid() for e in engines}
    assert len(parents) == 1
    parent = psutil.Process(parents.pop())
    assert parent.name() == PROCESS_NAMES["parent"]
    # one nanny per engine, forked by the same parent, in its own session
    nannies = [c for c in parent.children() if c.name() == PROCESS_NAMES["nanny"]]
    assert len(nannies) == len(engines)
    assert all(os.getsid(n.pid) == n.pid for n in nannies)
    # the controller runs ipcontroller through paracell's program
    roles = cluster_processes()
    assert roles[parent.pid] == "paracell.forkengines"
    controllers = [p for p, r in roles.items() if r == "ipyparallel.controller"]
    assert controllers
    assert all(PROGRAM in psutil.Process(p).cmdline() for p in controllers)


@pytest.mark.cluster
def test_forked_engines_draw_different_random_numbers(shared_cluster):
    client = shared_cluster.client

    def draws():
        import random

        import numpy as np

        return random.random(), float(np.random.random())

    got = [client[eid].apply_sync(draws) for eid in client.ids]
    assert len(got) == 2
    assert got[0][0] != got[1][0]
    assert got[0][1] != got[1][1]


@pytest.mark.cluster
def test_a_signal_reaches_a_forked_engine_through_its_nanny(shared_cluster):
    client = shared_cluster.client
    eid = client.ids[0]

    def nap():
        import time

        time.sleep(60)
        return "slept"

    task = client[eid].apply_async(nap)
    # an engine ignores SIGINT until the task runs: signal until it lands
    deadline = time.monotonic() + 30
    while not task.ready() and time.monotonic() < deadline:
        client.send_signal(signal.SIGINT, targets=[eid], block=True)
        task.wait(0.5)
    assert task.ready()
    with pytest.raises(Exception, match="KeyboardInterrupt"):
        task.get(0)
    assert client[eid].apply_sync(int, "7") == 7  # and it works on


def test_only_a_profile_without_its_own_engine_command_gets_forked_engines(
    monkeypatch,
):
    monkeypatch.delenv(FORK_ENV, raising=False)
    config = Config()
    config.LocalEngineSetLauncher.delay = 0  # paracell's own setting
    config.EngineLauncher.engine_args = ["--IPEngine.timeout=30"]
    assert can_fork_engines(config)
    for own in (
        "c.LocalEngineSetLauncher.engine_args = ['--log-level=DEBUG']",
        "c.LocalEngineLauncher.engine_cmd = ['/opt/py/bin/python', '-m', 'x']",
        "c.EngineLauncher.engine_cmd = ['ipengine']",
    ):
        profile = Config()
        exec(own, {"c": profile})
        assert not can_fork_engines(profile), own
    monkeypatch.setenv(FORK_ENV, "0")
    assert not can_fork_engines(Config())


def test_a_profile_with_its_own_controller_command_keeps_it():
    assert command(Config()) is not None
    profile = Config()
    profile.LocalControllerLauncher.controller_cmd = ["ipcontroller"]
    assert command(profile) is None


def test_configure_picks_the_launchers(monkeypatch, tmp_path):
    import ipyparallel as ipp

    from paracell.kernel_backend._launchers import LauncherOptions, configure, plan

    monkeypatch.delenv(FORK_ENV, raising=False)
    launch = plan("local", 2, LauncherOptions())

    def cluster(profile_lines: str = "") -> ipp.Cluster:
        config = Config()
        if profile_lines:
            exec(profile_lines, {"c": config})
        made = ipp.Cluster(
            engines="local", profile_dir=str(tmp_path), config=config, log_level=40
        )
        configure(made, launch)
        return made

    fresh = cluster()
    assert fresh.engine_launcher_class is ForkingEngineSetLauncher
    assert fresh.config.LocalControllerLauncher.controller_cmd[-1] == PROGRAM
    own = cluster("c.LocalEngineSetLauncher.engine_args = ['--log-level=DEBUG']")
    assert own.engine_launcher_class is not ForkingEngineSetLauncher


def test_the_forking_program_says_how_to_call_it(capsys):
    assert main(["two", "--"]) == 2
    assert main(["2"]) == 2
    assert "N -- ARGS" in capsys.readouterr().err


@pytest.mark.cluster
def test_with_forking_off_engines_start_as_their_own_processes(
    monkeypatch, no_other_cluster
):
    from paracell.kernel_backend import ClusterSession

    monkeypatch.setenv(FORK_ENV, "0")
    session = ClusterSession()
    session.start(2)
    try:
        pids = _engine_pids(session)
        names = {psutil.Process(p).name() for p in pids.values()}
        assert PROCESS_NAMES["engine"] not in names
        assert len(names) == 1  # ipyparallel's own: python -m ipyparallel.engine
        roles = cluster_processes()
        assert {roles[p] for p in pids.values()} == {"ipyparallel.engine"}
    finally:
        session.stop()
    assert wait_until(lambda: not cluster_processes(), 10)


def test_engines_are_forked_only_on_linux(monkeypatch):
    monkeypatch.delenv(FORK_ENV, raising=False)
    monkeypatch.setattr(sys, "platform", "darwin")
    assert not can_fork_engines(Config())
    monkeypatch.setattr(sys, "platform", "linux")
    assert can_fork_engines(Config())


@pytest.mark.cluster
@pytest.mark.parametrize("forked", ["1", "0"], ids=["forked", "spawned"])
def test_an_engine_stuck_before_registering_is_killed_and_started_again(
    monkeypatch, no_other_cluster, forked
):
    from paracell.kernel_backend import ClusterSession, _started

    monkeypatch.setenv(FORK_ENV, forked)
    monkeypatch.setattr(_started, "STALLED_AFTER", 2.0)
    session = ClusterSession()
    session.start(1)
    try:
        before = set(cluster_processes())
        stopped: list[int] = []

        def stop_the_first_new_engine() -> None:
            # frozen before it registers: what a stuck engine looks like
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                for pid, role in cluster_processes().items():
                    if role == "ipyparallel.engine" and pid not in before:
                        os.kill(pid, signal.SIGSTOP)
                        stopped.append(pid)
                        return
                time.sleep(0.005)

        freezer = threading.Thread(target=stop_the_first_new_engine)
        freezer.start()
        session.scale(3)
        freezer.join()
        assert stopped, "no new engine process was seen"
        pids = _engine_pids(session)
        assert len(pids) == 3
        assert stopped[0] not in pids.values()
        assert wait_until(lambda: stopped[0] not in cluster_processes(), 10)
    finally:
        session.stop()
    assert wait_until(lambda: not cluster_processes(), 10)


def test_a_start_that_falls_short_reports_each_engines_last_word():
    from types import SimpleNamespace

    from paracell.kernel_backend._ippstate import _late_engines_report

    engines = "\n".join(
        [
            "2026-11-28 16:27:19.9 [IPEngine] Registering with controller",
            "2026-11-28 16:27:20.1 [IPEngine.1] Starting nanny",
            "2026-11-28 16:27:20.1 [IPEngine.0] Starting nanny",
            "[ipengine-fork] engine process 4242 was killed by SIGSEGV",
            "2026-11-28 16:27:20.2 [IPEngine.0] Completed registration with id 0",
        ]
    )
    controller = "\n".join(
        [
            "2026-11-28 16:27:20.0 [IPController] registration::accepting 1:ab",
            "2026-11-28 16:27:50.0 [IPController] WARNING |"
            " registration::purging stalled registration 1:ab",
        ]
    )
    cluster = SimpleNamespace(
        engines={"set": SimpleNamespace(get_output=lambda: engines)},
        controller=SimpleNamespace(get_output=lambda: controller),
    )
    report = _late_engines_report(cluster)
    expected = [
        "[IPEngine.0] Completed registration with id 0",
        "[IPEngine.1] Starting nanny",
        "[ipengine-fork] engine process 4242 was killed by SIGSEGV",
        "registration::purging stalled registration 1:ab",
    ]
    # each engine's last line, in engine order, then the parent, then the hub
    at = [report.find(piece) for piece in expected]
    assert -1 not in at and at == sorted(at), report
    assert "[IPEngine.0] Starting nanny" not in report
    assert "accepting" not in report
