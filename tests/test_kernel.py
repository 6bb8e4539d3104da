"""``%cluster`` in a real Jupyter kernel, as a notebook front end sees it."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import psutil
import pytest

from _kernel import Kernel
from conftest import cluster_processes, wait_for_no_new_processes

pytestmark = pytest.mark.kernel


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
    assert wait_for_no_new_processes(set(), timeout=15) == {}
