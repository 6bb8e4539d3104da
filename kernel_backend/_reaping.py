"""Finding and stopping processes: a cluster's processes and their
children, those that carry its mark, waiting for them to exit and killing
what is left.  Only the process table counts: launchers may not know about
children a dying controller or engine left behind."""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterable

import psutil

#: The environment variable every process of a cluster paracell starts
#: carries, its value the cluster's id.
CLUSTER_MARK = "PARACELL_CLUSTER_ID"


def _pid_alive(pid: int) -> bool:
    try:
        return bool(psutil.Process(pid).status() != psutil.STATUS_ZOMBIE)
    except psutil.Error:
        return False


def _kill_processes(pids: list[int], timeout: float = 3.0, grace: float = 0.0) -> None:
    """SIGKILL ``pids`` all at once and wait until they have exited; with a
    ``grace``, only those still running that long after the call."""
    procs = []
    for pid in pids:
        with contextlib.suppress(psutil.Error):
            procs.append(psutil.Process(pid))
    if grace:
        procs = _wait_exited(procs, grace)
    for proc in procs:
        with contextlib.suppress(psutil.Error):
            proc.kill()
    _wait_exited(procs, timeout)


def _marked_processes(cluster_id: str) -> list[int]:
    """Local processes started for the cluster ``cluster_id`` (by environment).

    Only processes started since the cluster was (its id begins with that
    time) have their environment read: reading every process's is what
    made this slow on a busy machine.
    """
    started = _cluster_started(cluster_id)
    found = []
    for proc in psutil.process_iter(["pid", "create_time"]):
        with contextlib.suppress(psutil.Error):
            created = proc.info["create_time"]
            if started is not None and created is not None and created < started:
                continue
            if proc.environ().get(CLUSTER_MARK) == cluster_id:
                found.append(proc.info["pid"])
    return found


def _cluster_started(cluster_id: str) -> float | None:
    """When the cluster ``cluster_id`` was made (its id starts with the time
    in whole seconds; a second's slack for clock rounding), if it says."""
    head = cluster_id.partition("-")[0]
    return float(head) - 1.0 if head.isdigit() else None


def _with_descendants(pids: Iterable[int]) -> list[int]:
    """The pids and their children's (an engine's nanny process among them).

    One pass over the process table for all of them (``children()`` reads
    the whole table once per process asked about).
    """
    children: dict[int, list[int]] = {}
    for proc in psutil.process_iter(["pid", "ppid"]):
        children.setdefault(proc.info["ppid"], []).append(proc.info["pid"])
    found: set[int] = set()
    todo = [pid for pid in pids if psutil.pid_exists(pid)]
    while todo:
        pid = todo.pop()
        if pid not in found:
            found.add(pid)
            todo.extend(children.get(pid, ()))
    return sorted(found)


def _reap_processes(pids: list[int], grace: float = 0.3) -> None:
    """Wait for processes to exit; terminate, then kill, what is left.

    Once its engine is gone, an engine's nanny only lingers (it polls its
    parent every few seconds), so a short grace before SIGTERM is enough.
    """
    procs = []
    for pid in pids:
        with contextlib.suppress(psutil.Error):
            procs.append(psutil.Process(pid))
    alive = _wait_exited(procs, grace)
    for sig in ("terminate", "kill"):
        for proc in alive:
            with contextlib.suppress(psutil.Error):
                getattr(proc, sig)()
        alive = _wait_exited(alive, 3.0)


def _wait_reaped(pids: list[int], timeout: float = 1.0) -> None:
    """Wait until those of ``pids`` that are exited children of this process
    have been reaped (by whoever waits on them here: ipyparallel's
    launchers do, on threads of their own); after ``timeout``, reap them."""
    me = os.getpid()
    deadline = time.monotonic() + timeout
    while True:
        zombies = [pid for pid in pids if _zombie_child(pid, me)]
        if not zombies:
            return
        if time.monotonic() >= deadline:
            for pid in zombies:
                # its waiter, if any, then finds it gone (ECHILD), which
                # subprocess and psutil both take as an exit
                with contextlib.suppress(ChildProcessError):
                    os.waitpid(pid, os.WNOHANG)
            return
        time.sleep(0.005)


def _zombie_child(pid: int, parent: int) -> bool:
    try:
        proc = psutil.Process(pid)
        return bool(proc.ppid() == parent and proc.status() == psutil.STATUS_ZOMBIE)
    except psutil.Error:
        return False


def _wait_exited(procs: list[psutil.Process], timeout: float) -> list[psutil.Process]:
    """Wait until ``procs`` have exited; returns those still running.

    An exited process whose parent is gone stays a zombie until the init
    process reaps it, which some containers' init does late or never:
    ``psutil.wait_procs`` waits for the reaping, so a stop would wait out
    its whole timeout for processes that ended in milliseconds.
    """
    deadline = time.monotonic() + timeout
    while True:
        alive = [proc for proc in procs if _running(proc)]
        if not alive or time.monotonic() >= deadline:
            return alive
        time.sleep(0.01)


def _running(proc: psutil.Process) -> bool:
    try:
        return bool(proc.status() != psutil.STATUS_ZOMBIE)
    except psutil.NoSuchProcess:
        return False
    except psutil.Error:
        return True
