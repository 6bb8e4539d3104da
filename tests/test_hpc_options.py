"""Launcher options: parsed, checked, and refused in one line before anything starts.

These need no cluster; the launchers themselves are tested against the real
things in test_hpc_slurm.py, test_hpc_ssh.py and test_hpc_mpi.py.
"""

from __future__ import annotations

import psutil
import pytest
from IPython.core.error import UsageError

import paracell
from paracell.kernel_backend import InvalidRequest, LauncherOptions, default_session
from paracell.kernel_backend._launchers import plan
from paracell.kernel_backend._limits import memory_bytes
from paracell.kernel_backend._sshhosts import Host, engines_per_host, parse_hosts

pytestmark = pytest.mark.hpc


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("--launcher ssh -n 2", "the ssh launcher needs --hosts"),
        ("--launcher slurm --time banana", "--time 'banana' is not a Slurm time"),
        ("--launcher ssh --hosts node1,,node2", "--hosts has an empty host name"),
        ("--launcher ssh --hosts alice@", "--hosts has an empty host name"),
        ("--launcher ssh --hosts node1:0", "must be a whole number >= 1, not '0'"),
        ("--launcher ssh --hosts a:2,b:2 -n 5", "-n 5 does not fit --hosts"),
        ("--launcher local --queue short", "the local launcher ignores --queue"),
        ("--launcher ssh --hosts n1 --time 10", "the ssh launcher ignores --time"),
        ("--launcher mpi --hosts n1", "the mpi launcher ignores --hosts"),
        ("--launcher local --ip 10.0.0.1", "the local launcher ignores --ip"),
        (
            "--launcher slurm --mem-per-engine 1G",
            "the slurm launcher ignores --mem-per-engine (only local use it)",
        ),
        ("--mem-per-engine lots", "--mem-per-engine 'lots' is not an amount"),
        ("--mem-per-engine 1000T", "not enough memory for one engine of 1000T"),
        ("--launcher slurm --mem lots", "--mem 'lots' is not an amount of memory"),
    ],
)
def test_bad_launcher_options_are_one_line_usage_errors(ip, line, message):
    with pytest.raises(UsageError) as info:
        ip.run_line_magic("cluster", f"start {line}")
    text = str(info.value)
    assert message in text
    assert "\n" not in text
    assert not default_session().active


def test_the_python_twin_takes_the_same_options():
    with pytest.raises(InvalidRequest, match="ignores --account"):
        paracell.start(1, launcher="mpi", account="proj")
    with pytest.raises(InvalidRequest, match="needs --hosts"):
        paracell.start(1, launcher="ssh")
    with pytest.raises(InvalidRequest, match="No closing quotation"):
        paracell.start(1, launcher="slurm", extra='--comment "x')
    assert not default_session().active


def test_hosts_take_a_user_and_an_engine_count():
    assert parse_hosts("alice@node1,node2:4") == (
        Host("node1", "alice", None),
        Host("node2", None, 4),
    )


def test_hosts_without_a_count_share_the_rest_of_n():
    hosts = parse_hosts("alice@node1,node2:4")
    assert engines_per_host(hosts, 6) == ({"alice@node1": 2, "node2": 4}, 6)
    assert engines_per_host(parse_hosts("a,b,c"), 7) == ({"a": 3, "b": 2, "c": 2}, 7)
    # without -n: the counts, and one engine per host without one
    assert engines_per_host(hosts, None) == ({"alice@node1": 1, "node2": 4}, 5)


def test_slurm_options_go_on_the_sbatch_command_line():
    launch = plan(
        "slurm",
        16,
        LauncherOptions(
            queue="short",
            time="1:00:00",
            account="proj",
            mem="4GB",
            extra="--qos=high --gres gpu:1",
        ),
    )
    assert launch.batch
    assert launch.config.SlurmArrayEngineSetLauncher.sbatch_options == [
        "--partition=short",
        "--time=1:00:00",
        "--account=proj",
        "--mem=4G",
        "--qos=high",
        "--gres",
        "gpu:1",
    ]


@pytest.mark.parametrize(
    "limit", ["30", "30:00", "1:00:00", "2-0", "2-12:30", "UNLIMITED"]
)
def test_slurm_time_limits_in_every_format_sbatch_takes(limit):
    plan("slurm", 1, LauncherOptions(time=limit))


def test_where_the_controller_listens():
    assert plan("local", 2, LauncherOptions()).controller_ip == "127.0.0.1"
    assert plan("mpi", 2, LauncherOptions()).controller_ip == "127.0.0.1"
    assert plan("slurm", 2, LauncherOptions()).controller_ip == "*"
    assert plan("slurm", 2, LauncherOptions(ip="10.1.2.3")).controller_ip == "10.1.2.3"
    # ssh: the address of the interface that routes to the first host
    ssh = plan("ssh", None, LauncherOptions(hosts="localhost:2"))
    assert ssh.controller_ip == "127.0.0.1"
    assert ssh.n == 2


def test_memory_amounts_count_in_powers_of_1024():
    assert memory_bytes("500MB") == 500 * 1024**2
    assert memory_bytes("4G") == memory_bytes("4 GiB") == 4 * 1024**3
    assert memory_bytes("2048") == 2048


@pytest.mark.cluster
def test_memory_per_engine_caps_a_local_cluster_and_says_so(no_other_cluster):
    # room for one engine, not two
    per_engine = psutil.virtual_memory().available * 2 // 3 // 1024**2
    report = paracell.start(2, mem_per_engine=f"{per_engine}M")
    try:
        assert report.engines == 1
        assert "capped at 1 engine (-n 2): " in str(report)
        assert f"{per_engine}M each" in str(report)
    finally:
        paracell.stop()


def test_engines_wait_for_their_registration_unless_the_profile_says_otherwise():
    from traitlets.config import Config

    from paracell.kernel_backend._launchers import (
        ENGINE_REGISTRATION_TIMEOUT,
        _patient_engines,
    )

    config = Config()
    _patient_engines(config)
    assert config.EngineLauncher.engine_args == [
        f"--IPEngine.timeout={ENGINE_REGISTRATION_TIMEOUT}"
    ]
    for own in ("c.IPEngine.timeout = 2", "c.LocalEngineSetLauncher.engine_args = []"):
        profile = Config()
        exec(own, {"c": profile})
        _patient_engines(profile)
        assert "engine_args" not in profile.EngineLauncher
