"""Engines on a second host over SSH (``scripts/hpc ssh-start``).

The host is a network namespace with an address of its own and an sshd;
engines started there reach the controller across a veth pair.  It shares
this machine's filesystem, so the engines' Python is the same virtualenv.
"""

from __future__ import annotations

import contextlib
import os
import signal
from collections.abc import Iterator

import ipyparallel as ipp
import psutil
import pytest
from IPython.core.error import UsageError

import paracell
from paracell.kernel_backend import default_session

from conftest import SSH_HOST_SIDE, cluster_processes, netns_processes, wait_until

pytestmark = [pytest.mark.hpc, pytest.mark.cluster]


@pytest.fixture(autouse=True)
def nothing_left_on_the_other_host(
    ssh_host: str, no_other_cluster: None
) -> Iterator[None]:
    """A test must leave no process behind on the second host."""
    assert wait_until(lambda: not netns_processes(), 15), netns_processes()
    yield
    default_session().stop()
    if not wait_until(lambda: not netns_processes(), 15):
        left = netns_processes()
        for pid in left:
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)
        pytest.fail(f"test left processes on the second host: {left}")


def _network_namespace(_: int = 0) -> str:
    import os

    return os.readlink("/proc/self/ns/net")


@ipp.interactive
def _engine_pid() -> int:
    import os

    return os.getpid()


def _slow_item(i: int) -> int:
    import time

    time.sleep(0.3)
    return i * i


def test_ssh_engines_run_on_the_other_host_and_stop_there(ip, ssh_host, capsys):
    # one cluster for the whole story: each start over ssh takes seconds
    ip.run_line_magic(
        "cluster", f"start --launcher ssh --profile hpc --hosts root@{ssh_host}:2"
    )
    report = capsys.readouterr().out
    assert f"started 2 engines on {SSH_HOST_SIDE} (ssh launcher" in report
    here = _network_namespace()
    places = paracell.pmap(_network_namespace, range(6), progress=False)
    assert len(places) == 6
    assert here not in places and len(set(places)) == 1
    # the controller listens on the address that routes to that host (and on
    # loopback for its own processes), never on every interface
    controller = [p for p, m in cluster_processes().items() if "controller" in m]
    listening = {
        conn.laddr.ip
        for pid in controller
        for conn in psutil.Process(pid).net_connections(kind="tcp")
        if conn.status == psutil.CONN_LISTEN
    }
    assert SSH_HOST_SIDE in listening
    assert listening <= {SSH_HOST_SIDE, "127.0.0.1"}
    engines = [p for p, cmd in netns_processes().items() if "ipyparallel.engine" in cmd]
    assert len(engines) >= 2
    session = default_session()
    # clocks measured at registration: that host shares this machine's clock
    for eid in session.engine_ids():
        clock = session.clock_offset(eid)
        assert clock is not None and abs(clock.offset) <= clock.uncertainty + 1e-6

    # scaling keeps the host's count; --force places past it, round-robin
    with pytest.raises(UsageError) as info:
        ip.run_line_magic("cluster", "scale 3")
    assert str(info.value) == (
        f"3 engines do not fit --hosts root@{ssh_host}:2 (room for 2); list more"
        " hosts, leave one without a :count, or use --force to place the rest"
        " round-robin"
    )
    assert len(session.engine_ids()) == 2
    ip.run_line_magic("cluster", "scale 3 --force")
    assert "scaled from 2 to 3 engines" in capsys.readouterr().out
    places = paracell.pmap(_network_namespace, range(6), progress=False)
    assert here not in places and len(places) == 6

    # an engine lost there mid-map: its items run again on the others
    job = paracell.pmap(_slow_item, range(16), chunksize=1, block=False, progress=False)
    assert wait_until(lambda: job.progress.done >= 2, 60)
    victim = session.client[session.engine_ids()[0]].apply_sync(_engine_pid)
    os.kill(victim, signal.SIGKILL)  # the other host's process (same kernel)
    assert job.result(timeout=120) == [i * i for i in range(16)]

    ip.run_line_magic("cluster", "stop")
    assert "stopped the controller" in capsys.readouterr().out
    assert wait_until(lambda: not netns_processes(), 15), netns_processes()


def test_a_host_that_refuses_ssh_is_a_one_line_error(ip, ssh_host):
    # the host comes from the profile's c.SSHEngineSetLauncher.engines
    with pytest.raises(UsageError) as info:
        ip.run_line_magic(
            "cluster",
            'start --launcher ssh --profile hpc_hosts --extra "-p 2222" --timeout 30',
        )
    message = str(info.value)
    assert "\n" not in message
    assert f"ssh root@{ssh_host}" in message
    assert "Connection refused" in message
    assert not default_session().active
