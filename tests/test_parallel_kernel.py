"""``%%parallel`` in a real Jupyter kernel, as a notebook front end sees it."""

from __future__ import annotations

import contextlib
import os
import signal
import time
from collections.abc import Iterator

import pytest

from _kernel import Kernel

pytestmark = [pytest.mark.kernel, pytest.mark.cluster]


@pytest.fixture
def kernel() -> Iterator[Kernel]:
    k = Kernel()
    assert k.run("%load_ext paracell").ok
    assert k.run("%cluster start -n 2").ok
    k.run("import time, os, paracell")
    yield k
    k.run("%cluster stop")
    k.shutdown()


def _iopub_until(kernel: Kernel, predicate, timeout: float = 30.0) -> list[dict]:
    """Collect iopub messages until one satisfies ``predicate``."""
    seen = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            msg = kernel.client.get_iopub_msg(timeout=0.5)
        except Exception:
            continue
        seen.append(msg)
        if predicate(msg):
            return seen
    raise AssertionError(f"no matching iopub message in {timeout} s")


def _plain(msg: dict) -> str:
    return msg["content"].get("data", {}).get("text/plain", "")


@pytest.mark.parametrize("front_end", ["widgets", "text"])
def test_the_cell_returns_at_once_its_view_goes_live_and_names_arrive(
    kernel, front_end
):
    if front_end == "text":
        kernel.run("os.environ['PARACELL_WIDGETS'] = '0'")
    tic = time.monotonic()
    submitted = kernel.run(
        "%%parallel --name fit\nprint('fitting')\ntime.sleep(1.5)\nmodel = {'w': 3}\nscore = 0.9\nscore"
    )
    assert time.monotonic() - tic < 3
    assert submitted.ok, submitted.error
    (first_view,) = submitted.displays
    assert first_view["text/plain"].startswith("job 'fit': ")
    assert "will bring back: model, score" in first_view["text/plain"]
    widget = "application/vnd.jupyter.widget-view+json"
    assert (widget in first_view) == (front_end == "widgets")
    # the view updates itself while the job runs, then shows the value
    updates = _iopub_until(
        kernel,
        lambda m: (
            m["msg_type"] == "update_display_data"
            and "names now in the notebook: model, score" in _plain(m)
        ),
    )
    if front_end == "text":
        texts = [_plain(m) for m in updates if m["msg_type"] == "update_display_data"]
        assert any("running on engine" in t for t in texts)
    else:
        # the widget's own messages: its header said "running" while it ran;
        # its last ones may follow the display update on a busy machine
        late = []
        with contextlib.suppress(AssertionError):
            late = _iopub_until(kernel, lambda m: False, timeout=1.0)
        states = [
            str(m["content"].get("data", {}).get("state", {}))
            for m in submitted.messages + updates + late
            if m["msg_type"] == "comm_msg"
        ]
        assert any('data-state="running"' in s for s in states)
        assert any("fitting" in s for s in states)
    final = _plain(updates[-1])
    assert "done on engine" in final and "fitting" in final and "0.9" in final
    # delivered between cells: the next cell needs no wait
    after = kernel.run("print(model['w'] * 2, score)")
    assert after.stdout.strip() == "6 0.9"


def test_a_reader_waits_and_interrupting_the_wait_leaves_the_job_running(kernel):
    kernel.run("%%parallel --name long\ntime.sleep(4)\nresult = 'finished'")
    msg_id = kernel.client.execute("print(result)")
    _iopub_until(
        kernel,
        lambda m: (
            m["msg_type"] == "stream"
            and "waiting for job 'long' (result)…" in m["content"]["text"]
        ),
    )
    reply = kernel.interrupt(msg_id)
    assert reply["content"]["ename"] == "KeyboardInterrupt"
    table = kernel.run("%jobs").displays[0]["text/plain"]
    assert "long" in table and "running" in table
    waited = kernel.run("print(result)")
    assert "waiting for job 'long'" in waited.stdout
    assert waited.stdout.strip().endswith("finished")


def test_no_clobber_failing_job_and_cancel(kernel, tmp_path):
    kernel.run("label = 'before'")
    go = tmp_path / "go"  # the job ends only after the notebook's assignment
    kernel.run(
        f"%%parallel --name slowlabel\nwhile not os.path.exists({str(go)!r}):"
        "\n    time.sleep(0.02)\nlabel = 'job'"
    )
    kernel.run("label = 'mine'")
    go.touch()
    kernel.run("%jobs wait slowlabel")
    kept = kernel.run("print(label)")
    assert kept.stdout.strip() == "mine"

    kernel.run("%%parallel --name broken\nvalue = 1\nraise RuntimeError('boom')")
    failed = kernel.run("%jobs wait broken")
    assert failed.reply["ename"] == "JobError"
    shown = "\n".join(failed.error["traceback"])
    assert "RuntimeError: boom" in shown
    assert 'File "<broken>", line 3' in shown
    assert "kernel_backend" not in shown

    kernel.run("%%parallel --name forever\ntime.sleep(60)\nnever = 1")
    time.sleep(0.5)
    cancelled = kernel.run("%jobs cancel forever")
    assert "job 'forever' cancelled" in cancelled.stdout
    assert kernel.run("%%parallel --block\n6 * 7").displays[0]["text/plain"] == "42"


def test_priority_orders_the_client_side_queue(kernel, tmp_path):
    kernel.run("%cluster scale 1")
    # the blocker holds the one engine until every job is queued, however
    # slowly the machine takes the cells
    go = tmp_path / "go"
    kernel.run(
        f"%%parallel --name blocker\nwhile not os.path.exists({str(go)!r}):"
        "\n    time.sleep(0.02)"
    )
    for name, priority in (("p1", 1), ("p9", 9), ("p5", 5)):
        kernel.run(
            f"%%parallel --name {name} --priority {priority}\nstart_{name} = time.time()"
        )
    go.touch()
    kernel.run("%jobs wait")
    order = kernel.run(
        "print(sorted(['p1', 'p9', 'p5'], key=lambda n: globals()['start_' + n]))"
    )
    assert order.stdout.strip() == "['p9', 'p5', 'p1']"


def test_all_runs_setup_on_every_engine_with_output_per_engine(kernel):
    setup = kernel.run(
        "%%parallel --all\nimport socket\nengine_setting = 5\nprint('ready')"
    )
    assert setup.stdout.count("ready") == 2
    assert "[engine 0]" in setup.stdout and "[engine 1]" in setup.stdout
    used = kernel.run("%%parallel --block\ndoubled = engine_setting * 2\ndoubled")
    assert used.displays[0]["text/plain"] == "10"


def test_engine_death_reruns_the_job_or_says_which_engine_died(kernel):
    kernel.run(
        "%%parallel --name survivor --retries 1\ntime.sleep(2)\nsurvived = os.getpid()"
    )
    time.sleep(0.7)
    pid = _engine_pid_of(kernel, "survivor")
    os.kill(pid, signal.SIGKILL)
    kernel.run("%jobs wait survivor")
    rerun = kernel.run(f"print(survived != {pid})")
    assert rerun.stdout.strip() == "True"

    kernel.run("%cluster scale 2")
    kernel.run("%%parallel --name victim --retries 0\ntime.sleep(30)\nlost = 1")
    time.sleep(0.7)
    pid = _engine_pid_of(kernel, "victim")
    os.kill(pid, signal.SIGKILL)
    failed = kernel.run("%jobs wait victim")
    assert failed.reply["ename"] == "JobError"
    assert "died while running job 'victim'" in failed.reply["evalue"]


def _engine_pid_of(kernel: Kernel, job: str) -> int:
    probe = kernel.run(
        f"j = [j for j in paracell.jobs() if j.name == {job!r}][0]\n"
        "print([e.pid for e in paracell.status().engines if e.id == j.engine][0])"
    )
    return int(probe.stdout.strip())


def test_interrupting_block_and_all_stops_the_cell_on_the_engines(kernel):
    for cell in (
        "%%parallel --block --name blocking\ntime.sleep(30)",
        "%%parallel --all\ntime.sleep(30)",
    ):
        msg_id = kernel.client.execute(cell)
        kernel.wait_started(msg_id)
        time.sleep(1.5)
        tic = time.monotonic()
        reply = kernel.interrupt(msg_id)
        assert reply["content"]["ename"] == "KeyboardInterrupt"
        assert time.monotonic() - tic < 10  # a bound against hanging
        status = kernel.run("%cluster status").displays[0]["text/plain"]
        assert "busy" not in status, status
    assert (
        kernel.run("%%parallel --block\n'free'").displays[0]["text/plain"] == "'free'"
    )
