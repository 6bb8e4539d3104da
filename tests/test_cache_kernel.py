"""``--cache`` in real Jupyter kernels: interrupted, killed, and shared.

Each kernel works in a temporary folder, so its store is the default
``.paracell`` there; items count their runs in a log file.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from _kernel import Kernel
from conftest import cluster_processes, kill_all, wait_until

pytestmark = [
    pytest.mark.kernel,
    pytest.mark.cluster,
    pytest.mark.usefixtures("no_other_cluster"),
]

SETUP = """
import os, time
os.chdir({folder!r})
LOG = {log!r}
def slow(p):
    time.sleep(0.1)
    with open(LOG, "a") as f:
        f.write(f"{{p}}\\n")
    return p * 10
params = list(range({n}))
"""


@pytest.fixture
def kernels() -> Iterator[list[Kernel]]:
    """Kernels started by the test, shut down (or reaped) after it."""
    started: list[Kernel] = []
    yield started
    for kernel in started:
        with contextlib.suppress(Exception):
            if kernel.manager.is_alive():
                kernel.run("%cluster stop", timeout=60)
        kernel.shutdown()


def start(kernels: list[Kernel], folder: Path, n: int, engines: int = 2) -> Kernel:
    kernel = Kernel()
    kernels.append(kernel)
    setup = kernel.run(SETUP.format(folder=str(folder), log=str(folder / "runs"), n=n))
    assert setup.ok, setup.error
    assert kernel.run("%load_ext paracell").ok
    started = kernel.run(f"%cluster start -n {engines}")
    assert started.ok, started.error
    return kernel


def runs(folder: Path) -> list[int]:
    """Items run since the last call (and forget them)."""
    log = folder / "runs"
    if not log.exists():
        return []
    done = sorted(int(line) for line in log.read_text().split())
    log.unlink()
    return done


def stored(kernel: Kernel) -> int:
    out = kernel.run("import paracell\nprint(paracell.cache_info().entries)")
    assert out.ok, out.error
    return int(out.stdout)


@pytest.mark.parametrize("chunks", ["", "--chunksize 80"], ids=["sized", "one-chunk"])
def test_after_an_interrupt_a_rerun_computes_only_the_rest(kernels, tmp_path, chunks):
    # one chunk of every item: what it finished comes back with the interrupt
    kernel = start(kernels, tmp_path, 80)
    msg_id = kernel.client.execute(
        f"r = %pmap --cache {chunks} slow(p) for p in params"
    )
    assert wait_until(lambda: len(runs_so_far(tmp_path)) >= 20, timeout=60)
    reply = kernel.interrupt(msg_id)
    assert reply["content"]["ename"] == "KeyboardInterrupt"
    time.sleep(0.5)  # an item interrupted mid-way never logs
    runs(tmp_path)
    kept = stored(kernel)
    assert 20 <= kept < 80
    assert (tmp_path / ".paracell" / "index.sqlite").exists()

    again = kernel.run(
        "job = %pmap --async --cache slow(p) for p in params\n"
        "r = job.result()\nprint(r[-1], job.progress.summary())"
    )
    assert again.ok, again.error
    assert again.stdout.strip().startswith("790 pmap: 80/80 done")
    assert again.stdout.strip().endswith(f"({kept:,} from cache)")
    assert len(runs(tmp_path)) == 80 - kept


def runs_so_far(folder: Path) -> list[str]:
    log = folder / "runs"
    return log.read_text().split() if log.exists() else []


def test_after_the_kernel_is_killed_a_new_kernel_computes_only_the_rest(
    kernels, tmp_path
):
    first = start(kernels, tmp_path, 80)
    processes = cluster_processes()
    first.client.execute("r = %pmap --cache slow(p) for p in params")
    assert wait_until(lambda: len(runs_so_far(tmp_path)) >= 20, timeout=60)
    pid = first.pid
    os.kill(pid, signal.SIGKILL)
    with contextlib.suppress(psutil.NoSuchProcess):
        psutil.Process(pid).wait(timeout=30)
    # the killed kernel's cluster has no one to stop it
    kill_all(processes)
    assert wait_until(lambda: not cluster_processes(), timeout=30)
    kernels.remove(first)
    first.client.stop_channels()
    time.sleep(0.5)
    runs(tmp_path)

    second = start(kernels, tmp_path, 80)
    kept = stored(second)
    assert 0 < kept < 80
    again = second.run(
        "r = %pmap --no-progress --cache slow(p) for p in params\nprint(r[-1])"
    )
    assert again.ok, again.error
    assert again.stdout.strip().endswith("790")
    assert len(runs(tmp_path)) == 80 - kept


def test_two_kernels_writing_one_store_at_once_lose_nothing(kernels, tmp_path):
    one = start(kernels, tmp_path, 120, engines=1)
    two = start(kernels, tmp_path, 120, engines=1)
    # one item per chunk: a write to the index for every item, from both
    ids = [
        one.client.execute(
            "r = %pmap --no-progress --cache --chunksize 1 slow(p) for p in params[:60]"
        ),
        two.client.execute(
            "r = %pmap --no-progress --cache --chunksize 1 slow(p) for p in params[60:]"
        ),
    ]
    for kernel, msg_id in zip((one, two), ids, strict=True):
        reply = kernel.client.get_shell_msg(timeout=120)
        while reply["parent_header"].get("msg_id") != msg_id:
            reply = kernel.client.get_shell_msg(timeout=120)
        assert reply["content"]["status"] == "ok", reply["content"]
    assert len(runs(tmp_path)) == 120
    assert stored(one) == 120
    # either kernel finds the other's results: the keys agree across kernels
    check = two.run(
        "r = %pmap --no-progress --cache slow(p) for p in params\nprint(sum(r))"
    )
    assert check.stdout.strip() == str(sum(p * 10 for p in range(120)))
    assert runs(tmp_path) == []
