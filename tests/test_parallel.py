"""``%%parallel`` and ``%jobs`` in a real in-process IPython shell."""

from __future__ import annotations

import gc
import time

import psutil
import pytest

import paracell
from paracell.kernel_backend import default_jobs

from conftest import settle_jobs, wait_until

pytestmark = pytest.mark.cluster


def cell(ip, code: str):
    """Run a cell as a notebook would; return its result object."""
    return ip.run_cell(code, store_history=True)


def ok(ip, code: str):
    result = cell(ip, code)
    result.raise_error()
    return result.result


@pytest.fixture(autouse=True)
def settled_jobs(ip):
    yield
    settle_jobs(ip)


def test_block_runs_the_cell_brings_names_back_and_shows_the_value(
    ip, shared_cluster, capsys
):
    ok(ip, "import numpy as np\nX = np.arange(10)")
    value = ok(
        ip,
        "%%parallel --block\nimport os\ns = int(X.sum())\nprint('on', os.getpid())\ns * 2",
    )
    assert value == 90
    assert ip.user_ns["s"] == 45
    out = capsys.readouterr().out
    engine_pids = {e.pid for e in shared_cluster.status().engines}
    assert any(f"on {pid}" in out for pid in engine_pids)


def test_a_background_cell_returns_at_once_and_a_reader_waits_for_it(
    ip, shared_cluster, capsys
):
    ok(ip, "import time")
    tic = time.monotonic()
    ok(
        ip,
        "%%parallel --name slowjob\ntime.sleep(1.5)\nmodel = [1, 2, 3]\nscore = sum(model)",
    )
    assert time.monotonic() - tic < 1.0
    assert "model" not in ip.user_ns
    assert ok(ip, "score * 10") == 60
    out = capsys.readouterr().out
    assert "waiting for job 'slowjob' (score)…" in out
    assert ip.user_ns["model"] == [1, 2, 3]


def test_cells_that_do_not_read_pending_names_never_wait(ip, shared_cluster, capsys):
    ok(ip, "import time")
    ok(ip, "%%parallel --name sleeper\ntime.sleep(3)\nlater = 1")
    tic = time.monotonic()
    assert ok(ip, "2 + 2") == 4
    assert time.monotonic() - tic < 1.0
    assert "waiting" not in capsys.readouterr().out


def test_a_name_reassigned_meanwhile_is_not_overwritten(
    ip, shared_cluster, capsys, tmp_path
):
    ok(ip, "import os, time\nvalue = 'before'")
    go = tmp_path / "go"  # the job ends only after the notebook's assignment
    ok(
        ip,
        f"%%parallel --name clobber\nwhile not os.path.exists({str(go)!r}):\n"
        "    time.sleep(0.02)\nvalue = 'from the job'\nother = 1",
    )
    ok(ip, "value = 'mine'")
    go.touch()
    ok(ip, "%jobs wait clobber")
    assert ip.user_ns["value"] == "mine"
    assert ip.user_ns["other"] == 1
    err = capsys.readouterr().err
    assert "job 'clobber' did not overwrite 'value'" in err


def test_later_jobs_win_over_earlier_ones_for_the_same_name(ip, shared_cluster):
    ok(ip, "import time")
    ok(ip, "%%parallel --name first\ntime.sleep(0.2)\nshared_name = 1")
    ok(ip, "%%parallel --name second\ntime.sleep(0.6)\nshared_name = 2")
    ok(ip, "%jobs wait")
    assert ip.user_ns["shared_name"] == 2


def test_out_and_no_pull_choose_what_comes_back(ip, shared_cluster):
    for name in ("a", "b", "c"):  # the shell is shared by the whole run
        ip.user_ns.pop(name, None)
    ok(ip, "%%parallel --block --out a\na = 1\nb = 2")
    assert ip.user_ns["a"] == 1 and "b" not in ip.user_ns
    ok(ip, "%%parallel --block --no-pull\nc = 3")
    assert "c" not in ip.user_ns


def test_a_value_that_cannot_come_back_is_named_and_the_rest_arrive(
    ip, shared_cluster, capsys
):
    ip.user_ns.pop("guard", None)  # another test's 'guard' must not hide a bug
    ok(ip, "%%parallel --block\nimport threading\nguard = threading.Lock()\nfine = 5")
    assert ip.user_ns["fine"] == 5
    assert "guard" not in ip.user_ns
    assert "could not send back 'guard'" in capsys.readouterr().err


def test_jobs_run_in_fresh_namespaces_over_engine_setup(ip, shared_cluster, capsys):
    ok(ip, "%%parallel --all\nsetup_value = 7")
    out = capsys.readouterr().out
    assert "[engine 0]" in out and "[engine 1]" in out
    ok(ip, "%%parallel --block --no-pull\nleftover = 1")
    assert (
        ok(ip, "%%parallel --block\nuse = setup_value * 2\n'leftover' in dir()")
        is False
    )
    assert ip.user_ns["use"] == 14


def test_all_with_out_gives_one_value_per_engine(ip, shared_cluster):
    pids = ok(ip, "%%parallel --all --out pid\nimport os\npid = os.getpid()")
    assert sorted(pids) == sorted(shared_cluster.client.ids)
    assert set(pids.values()) == {e.pid for e in shared_cluster.status().engines}
    one = ok(ip, "%%parallel --targets 0 --out pid\nimport os\npid = os.getpid()")
    assert list(one) == [0]


def test_seeded_cells_repeat_and_match_pmap_item_zero(ip, shared_cluster):
    ok(ip, "import numpy as np")
    first = ok(
        ip, "%%parallel --block --seed 3\nimport numpy as np\nfloat(np.random.rand())"
    )
    again = ok(
        ip, "%%parallel --block --seed 3\nimport numpy as np\nfloat(np.random.rand())"
    )
    (item0,) = ok(
        ip,
        "%pmap --local --seed 3 --no-progress float(np.random.rand()) for _ in range(1)",
    )
    assert first == again == item0


def test_a_failing_job_shows_the_cells_traceback(ip, shared_cluster):
    result = cell(ip, "%%parallel --name broken\nx = 1\n\nraise ValueError('nope')")
    assert result.success  # submitting worked; the job fails later
    wait = cell(ip, "%jobs wait broken")
    err = wait.error_in_exec
    assert isinstance(err, paracell.JobError)
    assert "job 'broken' failed on engine" in str(err)
    assert 'File "<broken>", line 4' in err.remote_traceback
    assert "raise ValueError('nope')" in err.remote_traceback
    assert "kernel_backend" not in err.remote_traceback


def test_a_reader_of_a_failed_jobs_name_fails_with_its_error(ip, shared_cluster):
    ok(ip, "import time")
    ok(ip, "%%parallel --name doomed\ntime.sleep(0.5)\nresult_name = 1 / 0")
    reader = cell(ip, "print(result_name)")
    assert isinstance(reader.error_in_exec, paracell.JobError)
    assert "ZeroDivisionError" in str(reader.error_in_exec)


def test_cancel_removes_queued_jobs_and_interrupts_running_ones(ip, shared_cluster):
    ok(ip, "import time")
    for name in ("run1", "run2", "queued3"):
        ok(ip, f"%%parallel --name {name}\ntime.sleep(8)\n{name}_done = True")
    manager = default_jobs()
    assert wait_until(lambda: manager.get("run2").state == "running")
    assert manager.get("queued3").state == "queued"
    ok(ip, "%jobs cancel queued3")
    assert manager.get("queued3").state == "cancelled"
    tic = time.monotonic()
    ok(ip, "%jobs cancel run1")
    ok(ip, "%jobs cancel run2")
    assert manager.get("run1").state == "cancelled"
    assert time.monotonic() - tic < 10
    # the engines are free: a new job runs straight away
    assert ok(ip, "%%parallel --block\n1 + 1") == 2


def test_jobs_beyond_free_engines_run_by_priority_then_submission(ip, shared_cluster):
    ok(ip, "import time")
    # both engines free (a task cancelled by an earlier test may still be
    # ending on one); the blockers take them, the rest queue
    assert wait_until(
        lambda: (
            not shared_cluster.stale_engines()
            and all(e.state == "idle" for e in shared_cluster.status().engines)
        ),
        30,
    )
    # one engine frees after 1 s, the other only after every queued job
    # has run on the first: the queue's order is the order they start in
    ok(ip, "%%parallel --name block1 --priority 100\ntime.sleep(1)\nb1 = 1")
    ok(ip, "%%parallel --name block2 --priority 100\ntime.sleep(4)\nb2 = 1")
    for name, priority in (("low", 1), ("high", 5), ("mid", 3), ("high2", 5)):
        ok(
            ip,
            f"%%parallel --name {name} --priority {priority}\nstart_{name} = time.time()\ntime.sleep(0.4)",
        )
    ok(ip, "%jobs wait")
    starts = {n: ip.user_ns[f"start_{n}"] for n in ("low", "high", "mid", "high2")}
    assert sorted(starts, key=starts.get) == ["high", "high2", "mid", "low"]


def test_a_job_over_its_timeout_fails_as_a_timeout(ip, shared_cluster):
    ok(ip, "import time")
    ok(ip, "%%parallel --name late --timeout 0.5\ntime.sleep(10)\nlate_value = 1")
    err = cell(ip, "%jobs wait late").error_in_exec
    assert isinstance(err, paracell.JobError)
    assert "ran past its timeout of 0.5 s" in str(err)


def test_jobs_table_result_and_clear(ip, shared_cluster):
    ok(ip, "%%parallel --block --name tabled\nt = 1\n'shown'")
    table = ok(ip, "%jobs")
    assert "tabled" in repr(table) and "<table>" in table._repr_html_()
    view = ok(ip, "%jobs result tabled")
    bundle = view._repr_mimebundle_()
    assert "done" in bundle["text/plain"] and "'shown'" in bundle["text/plain"]
    assert 'data-state="done"' in bundle["text/html"]
    ok(ip, "%jobs clear")
    assert repr(ok(ip, "%jobs")) == "no jobs"


@pytest.mark.parametrize(
    ("code", "message"),
    [
        ("%jobs frob", "unknown %jobs subcommand 'frob'; use one of: list, wait"),
        ("%jobs wait nosuchjob", "no job named 'nosuchjob'"),
        ("%jobs cancel nosuchjob", "no job named 'nosuchjob'"),
        ("%jobs result nosuchjob", "no job named 'nosuchjob'"),
        (
            "%%parallel --priority high\nx = 1",
            "--priority: must be a number, not 'high'",
        ),
        ("%%parallel --targets 99\nx = 1", "--targets names engine 99"),
        ("%%parallel --frob\nx = 1", "unrecognized arguments: --frob"),
        (
            "%%parallel --out q\nx = 1",
            "--out names 'q', which the cell does not assign",
        ),
        ("%%parallel --out 1x\nx = 1", "must be variable names"),
    ],
)
def test_mistakes_are_one_line_usage_errors(ip, shared_cluster, code, message):
    from IPython.core.error import UsageError

    err = cell(ip, code).error_in_exec
    assert isinstance(err, UsageError), err
    assert message in str(err)
    assert "\n" not in str(err)


def test_a_syntax_error_is_the_users_and_nothing_is_sent(ip, shared_cluster):
    before = len(default_jobs().jobs())
    err = cell(ip, "%%parallel\nx = (").error_in_exec
    assert type(err).__name__ == "CellSyntaxError"
    assert isinstance(err.error, SyntaxError)
    assert err._render_traceback_()[-1] == "SyntaxError: '(' was never closed"
    assert len(default_jobs().jobs()) == before


def test_two_hundred_background_jobs_do_not_grow_memory(ip, shared_cluster):
    client = shared_cluster.client
    for _ in range(20):
        ok(ip, "%%parallel --no-pull\nx = 1")
    ok(ip, "%jobs wait")
    ok(ip, "%jobs clear")
    gc.collect()
    rss = psutil.Process().memory_info().rss
    cached = len(client.results) + len(client.metadata)
    for _ in range(200):
        ok(ip, "%%parallel --no-pull\nx = 1")
    ok(ip, "%jobs wait")
    ok(ip, "%jobs clear")
    gc.collect()
    assert psutil.Process().memory_info().rss - rss < 8 * 2**20
    assert len(client.results) + len(client.metadata) <= cached + 2


def test_the_python_twin_runs_code_and_brings_names_back(shared_cluster):
    ns = {"base": 20}
    job = paracell.parallel("answer = base + 22\nanswer", namespace=ns)
    paracell.wait(job)
    assert ns["answer"] == 42
    assert job.result() == 42
    assert paracell.parallel("q = 1\nq + 1", namespace={}, block=True) == 2
    assert job in paracell.jobs()


def test_stopping_the_cluster_cancels_its_jobs(ip, shared_cluster):
    ok(ip, "%%parallel --name orphan\nimport time\ntime.sleep(30)\nz = 1")
    ok(ip, "%%parallel --name orphan2\nimport time\ntime.sleep(30)\nz = 2")
    ok(ip, "%%parallel --name orphan3\nimport time\ntime.sleep(30)\nz = 3")
    manager = default_jobs()
    assert wait_until(lambda: manager.get("orphan").state == "running")
    ok(ip, "%cluster stop")
    for name in ("orphan", "orphan2", "orphan3"):
        assert manager.get(name).state == "cancelled"
        assert manager.get(name).cancelled()
    assert "z" not in ip.user_ns


def test_a_new_job_does_not_wait_behind_an_engine_busy_with_another(ip, shared_cluster):
    ok(ip, "import time")
    ok(ip, "%%parallel --name occupant\ntime.sleep(6)\noccupied = 1")
    manager = default_jobs()
    assert wait_until(lambda: manager.get("occupant").state == "running")
    ok(ip, "fresh_input = 21")
    tic = time.monotonic()
    assert (
        ok(ip, "%%parallel --block\nfresh_output = fresh_input * 2\nfresh_output") == 42
    )
    assert time.monotonic() - tic < 4  # the other engine took it at once
    # and a map uses the free engine rather than queue behind the job
    tic = time.monotonic()
    assert ok(ip, "%pmap --no-progress x + 1 for x in range(4)") == [1, 2, 3, 4]
    assert time.monotonic() - tic < 4


def test_the_python_twin_delivers_into_its_own_namespace(ip, shared_cluster):
    ns = {"base": 1}
    job = paracell.parallel("twin_only = base + 1", namespace=ns)
    default_jobs().wait([job])
    ok(ip, "pass")  # a cell boundary: the shell delivers its own jobs only
    assert "twin_only" not in ip.user_ns
    paracell.wait(job)
    assert ns["twin_only"] == 2


def test_modules_the_notebook_has_are_not_waited_for(ip, shared_cluster):
    ok(ip, "import json")
    ip.user_ns.pop("csv", None)
    ok(
        ip,
        "%%parallel --name imports\nimport json, csv\nimport time\ntime.sleep(0.5)\n"
        "out = json.dumps([1])",
    )
    job = default_jobs().get("imports")
    # json is the notebook's already; csv is not: it comes back
    assert "json" not in job.pending_names
    assert {"csv", "out"} <= set(job.pending_names)
    paracell.wait(job)
    ok(ip, "pass")
    assert ip.user_ns["out"] == "[1]" and ip.user_ns["csv"].__name__ == "csv"
