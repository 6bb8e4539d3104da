"""A cluster outlives no kernel: a small process that stops it when its kernel dies.

A kernel that exits normally stops its cluster (``atexit``).  One that is
killed — a crash, the out-of-memory killer, ``restart_kernel(now=True)``, a
JupyterLab server shut down under it — runs no Python at all, and the
controller, its schedulers, the engines and their nannies would keep running
with parent 1 for ever.  So every cluster paracell starts gets a watchdog: a
separate process, in a session of its own (a signal to the kernel's process
group does not reach it), that polls the kernel.  When the kernel is gone it
kills every process carrying the cluster's mark in its environment, removes
the cluster's connection files (so a new kernel's ``%cluster connect`` sees no
ghost) and its shared-memory segments, and exits.  When the cluster is
stopped normally the session ends the watchdog first.  Clusters paracell
only connected to get none.

Run as ``python -m paracell.kernel_backend._watchdog KERNEL_PID CREATED
CLUSTER_ID SECURITY_DIR``.
"""

from __future__ import annotations

import contextlib
import glob
import os
import subprocess
import sys
import time

import psutil

__all__ = ["start_watchdog"]

_POLL = 0.5
_MARK = "PARACELL_CLUSTER_ID"


def start_watchdog(cluster_id: str, security_dir: str) -> subprocess.Popen[bytes]:
    """Start the watchdog of this process's cluster ``cluster_id``."""
    me = psutil.Process()
    env = {k: v for k, v in os.environ.items() if k != _MARK}
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "paracell.kernel_backend._watchdog",
            str(me.pid),
            repr(me.create_time()),
            cluster_id,
            security_dir,
        ],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=env,
        start_new_session=True,
        close_fds=True,
    )


def _alive(pid: int, created: float) -> bool:
    try:
        proc = psutil.Process(pid)
        # a recycled pid is another process, not our kernel
        if abs(proc.create_time() - created) > 1.0:
            return False
        return bool(proc.status() != psutil.STATUS_ZOMBIE)
    except psutil.Error:
        return False


def _marked(cluster_id: str) -> list[psutil.Process]:
    found = []
    for proc in psutil.process_iter(["pid"]):
        if proc.pid == os.getpid():
            continue
        with contextlib.suppress(psutil.Error):
            if proc.environ().get(_MARK) == cluster_id:
                found.append(proc)
    return found


def _stop_cluster(cluster_id: str, security_dir: str) -> None:
    procs = _marked(cluster_id)
    for proc in procs:
        with contextlib.suppress(psutil.Error):
            proc.terminate()
    _, alive = psutil.wait_procs(procs, timeout=3)
    for proc in alive + _marked(cluster_id):
        with contextlib.suppress(psutil.Error):
            proc.kill()
    for path in glob.glob(os.path.join(security_dir, f"*{cluster_id}*.json")):
        with contextlib.suppress(OSError):
            os.remove(path)
    # the arrays the kernel shared with its engines
    from ._sharedmem import remove_segments

    remove_segments(cluster_id)


def main(argv: list[str]) -> int:
    pid, created, cluster_id, security_dir = argv
    while _alive(int(pid), float(created)):
        time.sleep(_POLL)
    _stop_cluster(cluster_id, security_dir)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
