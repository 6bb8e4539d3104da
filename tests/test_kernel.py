"""``%cluster`` in a real Jupyter kernel, as a notebook front end sees it."""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterator

import psutil
import pytest

from _kernel import Kernel
from conftest import cluster_processes, wait_for_no_new_processes

pytestmark = [pytest.mark.kernel, pytest.mark.usefixtures("no_other_cluster")]


@pytest.fixture
def kernel() -> Iterator[Kernel]:
    k = Kernel()
    yield k
    k.shutdown()


@pytest.mark.cluster
def test_cluster_lifecycle_in_a_kernel(kernel: Kernel):
    assert kernel.run("%load_ext paracell").ok

    started = kernel.run("%cluster start -n 2")
    assert started.ok, started.error
    assert started.stdout.startswith("paracell: started 2 engines on 127.0.0.1")

    status = kernel.run("%cluster status")
    (data,) = status.displays
    assert "<table>" in data["text/html"]
    assert data["text/plain"].startswith("running: 2 engines")
    assert data["text/plain"].count("idle") == 2

    assert "scaled from 2 to 3" in kernel.run("%cluster scale 3").stdout
    assert "scaled from 3 to 1" in kernel.run("%cluster scale 1").stdout
    assert kernel.run("%cluster status").displays[0]["text/plain"].count("idle") == 1

    stopped = kernel.run("%cluster stop")
    assert stopped.stdout.startswith("paracell: stopped the controller")
    assert not cluster_processes()
    assert kernel.run("%cluster stop").stdout.strip() == "paracell: no cluster to stop"


def test_a_mistake_is_a_one_line_usage_error_in_the_kernel(kernel: Kernel):
    kernel.run("%load_ext paracell")
    bad = kernel.run("%cluster start -n abc")
    assert not bad.ok
    assert bad.reply["ename"] == "UsageError"
    assert "must be a whole number >= 1, not 'abc'" in bad.reply["evalue"]
    # the front end gets one line, no traceback
    shown = bad.stderr + "".join(bad.error["traceback"] if bad.error else [])
    assert "Traceback" not in shown
    assert "kernel_backend" not in shown


@pytest.mark.cluster
def test_shutting_the_kernel_down_stops_its_cluster(kernel: Kernel):
    kernel.run("%load_ext paracell")
    assert kernel.run("%cluster start -n 2").ok
    started = cluster_processes()
    assert len([m for m in started.values() if m == "ipyparallel.engine"]) == 2
    kernel_pid = kernel.pid
    kernel.shutdown()
    with contextlib.suppress(psutil.NoSuchProcess):
        psutil.Process(kernel_pid).wait(timeout=30)
    assert wait_for_no_new_processes(set(), timeout=30) == {}


@pytest.mark.cluster
def test_the_first_pmap_starts_a_cluster_and_says_so(kernel: Kernel):
    kernel.run("%load_ext paracell")
    first = kernel.run("r = %pmap x * x for x in range(5)\nprint(r)")
    assert first.ok, first.error
    lines = first.stdout.splitlines()
    assert lines[0].startswith(f"paracell: started {os.cpu_count()} engine")
    assert lines[0].endswith("(no cluster was active; %cluster stop ends it)")
    assert lines[-1] == "[0, 1, 4, 9, 16]"
    assert "started" not in kernel.run("%pmap x for x in range(2)").stdout
    kernel.run("%cluster stop")


@pytest.mark.cluster
def test_interrupting_a_blocking_pmap_stops_the_work_and_frees_the_cluster(
    kernel: Kernel,
):
    kernel.run("%load_ext paracell")
    assert kernel.run("%cluster start -n 2").ok
    kernel.run("import time")
    msg_id = kernel.client.execute("r = %pmap time.sleep(1) for _ in range(60)")
    kernel.wait_started(msg_id)
    time.sleep(2.5)
    tic = time.monotonic()
    reply = kernel.interrupt(msg_id)
    waited = time.monotonic() - tic
    assert reply["content"]["status"] == "error"
    assert reply["content"]["ename"] == "KeyboardInterrupt"
    # one line saying what had finished, none of paracell's frames
    (shown,) = reply["content"]["traceback"]
    assert shown.startswith("KeyboardInterrupt: pmap stopped")
    assert waited < 10  # a bound against hanging; the benchmark measures it
    # the progress widget ended red, and its saved text says so
    final = None
    while final is None:
        msg = kernel.client.get_iopub_msg(timeout=10)
        if (
            msg["parent_header"].get("msg_id") == msg_id
            and msg["msg_type"] == "update_display_data"
        ):
            final = msg["content"]["data"]
    assert "application/vnd.jupyter.widget-view+json" in final
    assert " cancelled in " in final["text/plain"]
    # the engines are idle again, and the next map runs straight away
    status = kernel.run("%cluster status").displays[0]["text/plain"]
    assert "busy" not in status
    after = kernel.run("r2 = %pmap --no-progress x for x in range(4)\nprint(r2)")
    assert after.stdout.strip() == "[0, 1, 2, 3]"
    kernel.run("%cluster stop")


@pytest.mark.cluster
def test_an_item_error_shows_the_users_traceback_in_the_kernel(kernel: Kernel):
    kernel.run("%load_ext paracell")
    kernel.run("%cluster start -n 2")
    kernel.run("def check(x):\n    assert x != 3, f'bad: {x}'\n    return x")
    failed = kernel.run("%pmap --no-progress check(x) for x in range(6)")
    assert failed.reply["ename"] == "ItemError"
    shown = "\n".join(failed.error["traceback"])
    assert "item 3 (input 3) failed on engine" in shown
    assert "AssertionError: bad: 3" in shown
    assert "assert x != 3, f'bad: {x}'" in shown  # the notebook cell's source
    assert "kernel_backend" not in shown
    kernel.run("%cluster stop")
