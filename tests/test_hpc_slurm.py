"""Engines as Slurm jobs, on a real one-node Slurm (``scripts/hpc slurm-start``)."""

from __future__ import annotations

import _thread
import json
import os
import stat
import subprocess
import sys
import threading
from collections.abc import Iterator

import ipyparallel as ipp
import pytest

import paracell
from paracell.kernel_backend import default_session

from conftest import IPYTHONDIR, slurm_jobs, wait_until

pytestmark = [pytest.mark.hpc, pytest.mark.cluster]


@pytest.fixture(autouse=True)
def empty_queue(slurm: str, no_other_cluster: None) -> Iterator[None]:
    """Each test starts with an empty queue and must leave it empty."""
    assert wait_until(lambda: not slurm_jobs(), 30), slurm_jobs()
    yield
    default_session().stop()
    left = slurm_jobs()
    if left:
        subprocess.run(["scancel", "--user=root"], check=False)
        pytest.fail(f"test left Slurm jobs in the queue: {left}")


def _job_of_item(_: int) -> str | None:
    import os
    import time

    time.sleep(0.05)
    return os.environ.get("SLURM_JOB_ID")


def test_slurm_engines_run_items_inside_slurm_jobs(ip, capsys):
    ip.run_line_magic(
        "cluster",
        "start --launcher slurm -n 2 --queue debug --time 10 --mem 100M",
    )
    report = capsys.readouterr().out
    assert "slurm launcher" in report
    assert "on all interfaces of" in report
    assert wait_until(lambda: len(default_session().engine_ids()) == 2, 60)
    ip.user_ns["job_of_item"] = _job_of_item
    jobs = ip.run_line_magic("pmap", "--no-progress [job_of_item(i) for i in range(8)]")
    assert len(jobs) == 8
    assert all(job and job.isdigit() for job in jobs)
    assert len(set(jobs)) == 2, "each engine is a Slurm job of its own"
    status = paracell.status()
    assert status.summary().startswith("running: 2 engines (started here; slurm,")
    # listening on every interface, the connection files stay private and keyed
    security = os.path.join(IPYTHONDIR, "profile_default", "security")
    for kind in ("client", "engine"):
        path = os.path.join(security, f"ipcontroller-{status.cluster_id}-{kind}.json")
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
        with open(path) as f:
            assert json.load(f)["key"]


def test_scaling_submits_and_stopping_cancels_slurm_jobs(ip, capsys):
    paracell.start(2, launcher="slurm", time="10")
    session = default_session()
    assert wait_until(lambda: len(session.engine_ids()) == 2, 60)
    ip.run_line_magic("cluster", "scale 3")
    assert "scaled from 2 to 3 engines" in capsys.readouterr().out
    assert wait_until(lambda: len(session.engine_ids()) == 3, 60)
    jobs = paracell.pmap(_job_of_item, range(12), progress=False)
    assert len(set(jobs)) == 3
    assert len(slurm_jobs()) == 3
    ip.run_line_magic("cluster", "stop")
    assert "stopped the controller and 3 engines" in capsys.readouterr().out
    assert slurm_jobs() == []


@ipp.interactive
def _engine_job() -> str:
    import os

    # an engine's own job: its task of the array (the array's first task
    # shares its job id with the whole array)
    return f"{os.environ['SLURM_ARRAY_JOB_ID']}_{os.environ['SLURM_ARRAY_TASK_ID']}"


def _slow_job_of_item(i: int) -> tuple[int, str | None]:
    import os
    import time

    time.sleep(0.4)
    return i, os.environ.get("SLURM_JOB_ID")


def test_a_cancelled_slurm_job_loses_no_items():
    paracell.start(2, launcher="slurm", time="10")
    session = default_session()
    assert wait_until(lambda: len(session.engine_ids()) == 2, 60)
    job = paracell.pmap(
        _slow_job_of_item, range(24), chunksize=1, block=False, progress=False
    )
    assert wait_until(lambda: job.progress.done >= 2, 60)
    victim = session.client[session.engine_ids()[0]].apply_sync(_engine_job)
    subprocess.run(["scancel", victim], check=True)
    results = job.result(timeout=120)
    assert [i for i, _ in results] == list(range(24))
    assert wait_until(lambda: len(session.engine_ids()) == 1, 30)


def test_start_returns_while_engines_wait_in_the_queue(capsys):
    # jobs that may only begin in an hour: the queue holds them
    report = paracell.start(2, launcher="slurm", extra="--begin=now+3600", timeout=2)
    assert report.engines == 0
    assert "2 waiting (queued in Slurm, job " in str(report)
    summary = paracell.status().summary()
    assert summary.startswith("running: 0 engines, 2 waiting (queued in Slurm, job ")
    assert len(slurm_jobs()) == 2
    assert all(line.endswith("PENDING") for line in slurm_jobs())
    # scaling down cancels queued engines first
    paracell.scale(1)
    assert wait_until(lambda: len(slurm_jobs()) == 1, 30)
    assert "1 waiting (queued in Slurm" in paracell.status().summary()
    paracell.stop()
    assert slurm_jobs() == []


def test_ctrl_c_during_a_start_cancels_the_batch_job():
    if threading.current_thread() is not threading.main_thread():
        pytest.skip("Ctrl-C reaches the main thread only")
    timer = threading.Timer(3.0, _thread.interrupt_main)
    timer.start()
    try:
        with pytest.raises(KeyboardInterrupt):
            paracell.start(2, launcher="slurm", extra="--begin=now+3600", timeout=60)
    finally:
        timer.cancel()
    assert not default_session().active
    assert slurm_jobs() == []


def test_connect_works_with_a_cluster_ipcluster_started_on_slurm(ip, tmp_path, capsys):
    env = dict(os.environ, IPYTHONDIR=IPYTHONDIR)
    cluster = [sys.executable, "-m", "ipyparallel.cluster"]
    subprocess.run(
        [
            *cluster,
            "start",
            "--engines=slurm",
            "-n",
            "2",
            "--cluster-id=from-shell",
            "--daemonize",
        ],
        cwd=tmp_path,
        env=env,
        check=True,
        capture_output=True,
        timeout=120,
    )
    try:
        # ipyparallel's own Slurm template: one job, one task per engine
        assert wait_until(lambda: len(slurm_jobs()) == 1, 60)
        ip.run_line_magic("cluster", "connect --cluster-id from-shell")
        assert "connected to" in capsys.readouterr().out
        session = default_session()
        assert wait_until(lambda: len(session.client.ids) == 2, 60)
        jobs = paracell.pmap(_job_of_item, range(4), progress=False)
        assert all(job and job.isdigit() for job in jobs)
        ip.run_line_magic("cluster", "stop")
        assert "keeps running" in capsys.readouterr().out
        assert len(slurm_jobs()) == 1
    finally:
        subprocess.run(
            [*cluster, "stop", "--cluster-id=from-shell"],
            cwd=tmp_path,
            env=env,
            check=False,
            capture_output=True,
            timeout=120,
        )
    assert wait_until(lambda: not slurm_jobs(), 30)


def test_engines_on_demand_hold_slurm_jobs_only_while_there_is_work():
    report = paracell.start(launcher="slurm", min=0, max=2, idle_timeout=2, time="10")
    assert report.engines == 0
    assert slurm_jobs() == []  # nothing submitted before there is work
    # a map with no engine: its engines are submitted, and it runs to the end
    jobs = paracell.pmap(_job_of_item, range(8), progress=False)
    assert len(jobs) == 8 and all(job and job.isdigit() for job in jobs)
    session = default_session()
    assert (
        "on demand, 0 to 2: 2 engines for a map of 8 items"
        in session.status().summary()
    )
    # idle for the timeout: the engines stop and their jobs leave the queue
    assert wait_until(lambda: not slurm_jobs() and not session.engine_ids(), 60)
    assert session.status().summary().endswith("idle, down to --min")
