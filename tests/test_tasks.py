"""``%%parallel --tasks`` on a real 2-engine cluster, in a real IPython shell:
scheduling, where values live, errors, cancelling, and the timeline."""

from __future__ import annotations

import os
import signal
import threading

import numpy as np
import pytest

import paracell
from paracell.kernel_backend import TaskJob, analyze_cell, default_jobs
from paracell.kernel_backend._taskbackends import run_sequentially
from paracell.widgets import task_timeline_html

from _shell import run_cell
from conftest import settle_jobs, wait_until

pytestmark = pytest.mark.cluster

EXAMPLE = """%%parallel --tasks --block --name example
def load(name):
    time.sleep(0.3)
    return [len(name), 2, 3]
def fit(data):
    time.sleep(0.3)
    return sum(data) / len(data)
a = load("a.csv")
b = load("bb.csv")
fa = fit(a)
fb = fit(b)
print("fitted", fa, fb)
report = {"a": fa, "b": fb, "better": "a" if fa > fb else "b"}
report
"""


def ok(ip, code: str):
    result = ip.run_cell(code, store_history=True)
    result.raise_error()
    return result.result


@pytest.fixture(autouse=True)
def settled_jobs(ip):
    """Jobs ended, and the shell's names as they were (the shell is shared
    with other test files)."""
    before = set(ip.user_ns)
    ok(ip, "import time\nimport numpy as np")
    yield
    settle_jobs(ip)
    for name in set(ip.user_ns) - before:
        if not name.startswith("_"):
            del ip.user_ns[name]


def test_the_example_runs_on_both_engines_and_its_names_come_back(
    ip, shared_cluster, capsys
):
    value = ok(ip, EXAMPLE)
    assert value == {"a": 10 / 3, "b": 11 / 3, "better": "b"}
    assert ip.user_ns["report"] == value
    assert ip.user_ns["a"] == [5, 2, 3] and ip.user_ns["fb"] == 11 / 3
    assert f"fitted {10 / 3} {11 / 3}" in capsys.readouterr().out
    job = default_jobs().get("example")
    assert isinstance(job, TaskJob)
    runs = {job.graph.statements[r.index].label: r for r in job.statements}
    # the two loads start together, one on each engine
    assert {runs['a = load("a.csv")'].engine, runs['b = load("bb.csv")'].engine} == {
        0,
        1,
    }
    timeline = job.timeline()
    assert len(timeline.actual) == len(job.graph) == len(timeline.planned)
    assert timeline.critical[-1] == len(job.graph) - 1
    text = ip.display_formatter.format(timeline)[0]["text/plain"]
    assert "fa = fit(a)" in text and "planned: engine" in text
    html = task_timeline_html(timeline)
    assert html.count('class="paracell-task-bar"') == 2 * len(job.graph)


def test_in_the_background_a_later_cell_waits_for_a_name_it_reads(
    ip, shared_cluster, capsys
):
    ok(ip, "%%parallel --tasks --name later\nslow = (time.sleep(0.5), 7)[1]\nquick = 1")
    assert ok(ip, "slow * 6") == 42
    assert "waiting for job 'later' (slow)" in capsys.readouterr().out
    assert ip.user_ns["quick"] == 1


def count_received(client):
    """Bytes of every message the notebook's client receives from now on."""
    session = client.session
    original = session.deserialize
    received = [0]

    def counting(msg_list, *args, **kwargs):
        received[0] += sum(memoryview(frame).nbytes for frame in msg_list)
        return original(msg_list, *args, **kwargs)

    session.deserialize = counting
    return received, lambda: setattr(session, "deserialize", original)


def test_a_large_array_made_and_used_on_one_engine_never_passes_the_kernel(
    ip, shared_cluster
):
    received, restore = count_received(shared_cluster.client)
    try:
        ok(
            ip,
            "%%parallel --tasks --block --out total --name local-data\n"
            "big = np.ones(5_000_000)\n"  # 40 MB
            "total = float(big.sum())\n",
        )
    finally:
        restore()
    assert ip.user_ns["total"] == 5_000_000.0
    job = default_jobs().get("local-data")
    made, used = job.statements
    assert made.engine == used.engine
    assert received[0] < 1_000_000, received[0]
    assert job.kernel_bytes < 1_000 and job.moved_bytes < 1_000


def test_a_large_array_another_engine_needs_goes_there_without_the_kernel(
    ip, shared_cluster
):
    received, restore = count_received(shared_cluster.client)
    try:
        ok(
            ip,
            "%%parallel --tasks --block --out total --name moved-data\n"
            "left = np.ones(2_500_000)\n"
            "right = np.full(2_500_000, 2.0)\n"
            "total = float(left.sum() + right.sum())\n",
        )
    finally:
        restore()
    assert ip.user_ns["total"] == 7_500_000.0
    job = default_jobs().get("moved-data")
    assert {job.statements[0].engine, job.statements[1].engine} == {0, 1}
    assert job.moved_bytes >= 20_000_000  # one array went engine to engine
    assert received[0] < 1_000_000, received[0]


def test_seeded_draws_equal_the_sequential_run(ip, shared_cluster):
    cell = (
        "r1 = random.random()\n"
        "r2 = np.random.rand(3)\n"
        "r3 = paracell.rng().integers(0, 10**6, 3)\n"
        "r4 = r1 + r2.sum()\n"
    )
    ok(ip, "import random, numpy as np, paracell")
    ok(ip, f"%%parallel --tasks --block --seed 5\n{cell}")
    expected = {"random": __import__("random"), "np": np, "paracell": paracell}
    run_sequentially(analyze_cell("\n" + cell), expected, seed=5)
    for name in ("r1", "r2", "r3", "r4"):
        assert np.array_equal(ip.user_ns[name], expected[name]), name


def test_an_error_names_its_statement_and_the_rest_still_come_back(ip, shared_cluster):
    for name in ("fine", "broken", "after", "also_fine"):
        ip.user_ns.pop(name, None)
    shown = run_cell(
        ip,
        "%%parallel --tasks --block --name failing\n"
        "fine = 1\n"
        "broken = {}['no such key']\n"
        "after = broken + 1\n"
        "also_fine = fine + 1\n",
    )
    assert type(shown.error).__name__ == "JobError"
    assert "statement 2 (line 3: broken = {}['no such key'])" in str(shown.error)
    assert "KeyError" in shown.text and "line 3" in shown.text
    assert "missing because of it: broken, after" in str(shown.error)
    assert ip.user_ns["fine"] == 1 and ip.user_ns["also_fine"] == 2
    job = default_jobs().get("failing")
    assert job.missing == ["broken", "after"]
    assert [r.state for r in job.statements] == ["done", "failed", "skipped", "done"]
    assert type(run_cell(ip, "after").error) is NameError


def test_cancel_stops_every_running_statement_and_frees_the_engines(ip, shared_cluster):
    ok(
        ip,
        "%%parallel --tasks --name stuck\n"
        "s1 = time.sleep(30)\n"
        "s2 = time.sleep(30)\n"
        "s3 = s1",
    )
    job = default_jobs().get("stuck")
    assert wait_until(lambda: sum(r.state == "running" for r in job.statements) == 2)
    job.cancel()
    assert wait_until(job.done, timeout=5)
    assert job.state == "cancelled"
    assert {r.state for r in job.statements} == {"cancelled"}
    # both engines take new work at once
    assert ok(ip, "%%parallel --tasks --block\nx1 = 1\nx2 = 2\nx1 + x2") == 3


def test_plan_shows_the_graph_and_the_schedule_and_runs_nothing(ip, shared_cluster):
    ip.user_ns.pop("planned_a", None)
    plan = ok(ip, "%%parallel --tasks --plan\nplanned_a = 1\nplanned_b = planned_a + 1")
    assert "planned_a" not in ip.user_ns
    text = ip.display_formatter.format(plan)[0]["text/plain"]
    assert "task graph: 2 statements, 1 dependencies" in text
    assert plan._repr_html_().count("<svg") == 2


def test_the_python_twin_runs_a_task_graph(shared_cluster):
    ns = {"np": np}
    value = paracell.parallel(
        "x = np.arange(4)\ny = x * 2\nint(y.sum())",
        tasks=True,
        block=True,
        namespace=ns,
    )
    assert value == 12 and ns["y"].tolist() == [0, 2, 4, 6]
    plan = paracell.parallel("a = 1\nb = 2", tasks=True, plan=True, namespace={})
    assert len(plan.timeline.planned) == 2


def test_a_timeout_stops_the_running_statements_and_fails_the_job(ip, shared_cluster):
    shown = run_cell(
        ip,
        "%%parallel --tasks --block --timeout 0.5 --name slowpoke\n"
        "t1 = time.sleep(30)\n"
        "t2 = 2\n",
    )
    assert type(shown.error).__name__ == "JobError"
    assert "ran past its timeout of 0.5 s" in str(shown.error)
    job = default_jobs().get("slowpoke")
    assert [r.state for r in job.statements] == ["cancelled", "done"]
    assert job.missing == ["t1"]


def test_an_interrupt_stops_a_blocking_task_graph_and_frees_the_engines(
    ip, shared_cluster
):
    def running_both() -> bool:
        jobs = [j for j in default_jobs().jobs() if j.name == "interrupted"]
        return bool(jobs) and sum(r.state == "running" for r in jobs[0].statements) == 2

    def interrupt() -> None:
        if wait_until(running_both, 30):
            os.kill(os.getpid(), signal.SIGINT)

    threading.Thread(target=interrupt, daemon=True).start()
    shown = run_cell(
        ip,
        "%%parallel --tasks --block --name interrupted\n"
        "i1 = time.sleep(30)\n"
        "i2 = time.sleep(30)\n",
    )
    assert type(shown.error) is KeyboardInterrupt
    job = default_jobs().get("interrupted")
    assert wait_until(job.done, timeout=3)
    assert job.state == "cancelled"
    assert ok(ip, "%%parallel --tasks --block\ny1 = 1\ny2 = 2\ny1 + y2") == 3


def test_across_hosts_values_are_relayed_through_the_notebook(
    ip, shared_cluster, monkeypatch
):
    import functools

    from paracell.kernel_backend import _taskjob

    # engines on different hosts cannot fetch from one another: as if so
    relaying = functools.partial(_taskjob.TaskRunner, direct=False)
    monkeypatch.setattr(_taskjob, "TaskRunner", relaying)
    ok(
        ip,
        "%%parallel --tasks --block --out total --name relayed\n"
        "left = np.ones(1_000_000)\n"
        "right = np.full(1_000_000, 2.0)\n"
        "total = float(left.sum() + right.sum())\n",
    )
    assert ip.user_ns["total"] == 3_000_000.0
    job = default_jobs().get("relayed")
    assert {job.statements[0].engine, job.statements[1].engine} == {0, 1}
    assert job.moved_bytes >= 8_000_000  # the engine that summed received one
    assert job.kernel_bytes >= 16_000_000  # in from one engine, out to the other


def test_a_waiting_cell_of_higher_priority_gets_the_next_free_engine(
    ip, shared_cluster
):
    ok(
        ip,
        "%%parallel --tasks --name low --priority 0\n"
        + "".join(f"p{i} = time.sleep(0.4)\n" for i in range(6)),
    )
    tasks = default_jobs().get("low")
    assert wait_until(lambda: sum(r.state == "running" for r in tasks.statements) == 2)
    ok(ip, "%%parallel --name high --priority 5\nh = 1")
    high = default_jobs().get("high")
    default_jobs().wait([tasks, high], timeout=30)
    assert high.state == "done" and tasks.state == "done"
    # it started before the task graph's last statements
    last_start = max(r.started for r in tasks.statements)
    assert high.started < last_start


def test_timeline_in_the_background_shows_the_plan_then_the_run(ip, shared_cluster):
    ok(ip, "%%parallel --tasks --timeline --name drawn\nd1 = 1\nd2 = d1 + 1")
    job = default_jobs().get("drawn")
    default_jobs().wait([job], timeout=30)
    assert job.state == "done"
    assert len(job.timeline().actual) == 2
