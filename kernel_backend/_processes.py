"""The processes and files of a cluster paracell starts with ipyparallel:
making the ``Cluster``, finding connection files, and stopping every process
it started (the session decides when).  Finding and reaping processes is
:mod:`._reaping`; what ipyparallel's hub and launchers say, :mod:`._ippstate`."""

from __future__ import annotations

import contextlib
import glob
import json
import logging
import os
import secrets
import time
from typing import Any

import ipyparallel as ipp
import psutil
from traitlets.config import Config

from ._errors import InvalidRequest
from ._forkengines import PROCESS_NAMES
from ._launchers import LaunchPlan
from ._quickcontroller import PROGRAM as CONTROLLER_PROGRAM
from ._quickcontroller import REAP_SIGNAL
from ._reaping import (
    CLUSTER_MARK,
    _kill_processes,
    _marked_processes,
    _reap_processes,
    _wait_reaped,
    _with_descendants,
)
from ._sharedmem import SharedArrays, shared_memory_dir

#: Engine launchers ``start`` accepts (ipyparallel's names for them).
LAUNCHERS = ("local", "mpi", "ssh", "slurm", "pbs", "sge", "lsf", "htcondor")

# ipyparallel's controller beats every 3 s and only finishes an engine's
# registration on its first heartbeat; with its 1 s start delay that makes a
# 2-engine cluster take ~6.5 s.  A 100 ms beat registers engines at once; 30
# missed beats (3 s) before an engine counts as dead keeps busy machines safe.
_HEARTBEAT_MS = 100
_HEARTBEAT_MISSES = 30

_log = logging.getLogger("paracell.cluster")


def _count(n: int) -> str:
    return f"{n} engine" if n == 1 else f"{n} engines"


def _check_count(n: object, what: str, *, minimum: int) -> None:
    if isinstance(n, bool) or not isinstance(n, int) or n < minimum:
        raise InvalidRequest(f"{what} must be a whole number >= {minimum}, not {n!r}")


def _check_launcher(launcher: str) -> str:
    name = str(launcher).lower()
    if name not in LAUNCHERS:
        raise InvalidRequest(
            f"unknown launcher {launcher!r}; choose one of {', '.join(LAUNCHERS)}"
        )
    return name


#: What BLAS and OpenMP libraries read for their thread count at start.
_THREAD_VARS = (
    "OMP_NUM_THREADS",
    "OPENBLAS_NUM_THREADS",
    "MKL_NUM_THREADS",
    "BLIS_NUM_THREADS",
    "VECLIB_MAXIMUM_THREADS",
    "NUMEXPR_NUM_THREADS",
)


def _thread_env(threads: int | None, explicit: bool) -> dict[str, str]:
    """Thread limits for engines; a limit the user set in the kernel's own
    environment is kept unless ``--threads`` was given."""
    if threads is None:
        return {}
    return {
        var: str(threads) for var in _THREAD_VARS if explicit or var not in os.environ
    }


def _make_cluster(
    launch: LaunchPlan, profile: str | None, env: dict[str, str] | None = None
) -> ipp.Cluster:
    config = Config()
    # ipyparallel sleeps 0.1 s between local engines; they need no pacing here.
    config.LocalEngineSetLauncher.delay = 0
    # Every process the launchers start carries the cluster's id, so teardown
    # can find all of them, even children a dying controller left behind.
    cluster_id = f"{int(time.time())}-{secrets.token_hex(2)}"
    config.BaseLauncher.environment = {**(env or {}), CLUSTER_MARK: cluster_id}
    # (ssh hosts from the profile: configure() sets the address later)
    kwargs: dict[str, Any] = {"controller_ip": launch.controller_ip}
    if launch.local:
        # Engines start while the controller does and wait for its connection
        # file themselves, instead of starting only once it is written.
        kwargs["send_engines_connection_env"] = False
    if profile:
        kwargs["profile"] = profile
    return ipp.Cluster(
        cluster_id=cluster_id,
        engines=launch.engine_class,
        delay=0,
        controller_args=[
            f"--HeartMonitor.period={_HEARTBEAT_MS}",
            f"--HeartMonitor.max_heartmonitor_misses={_HEARTBEAT_MISSES}",
            # The hub's default task database keeps every request and result
            # (a 500 MB array shipped once stays in the controller for ever);
            # paracell takes results from its own tasks and never asks the
            # hub for old ones, so it keeps none.
            "--IPController.db_class=ipyparallel.controller.dictdb.NoDB",
        ],
        shutdown_atexit=False,
        log=_log,
        config=config,
        **kwargs,
    )


def _find_connection_file(
    profile: str | None, cluster_id: str | None, file: str | None
) -> str:
    if file is not None:
        path = os.path.expanduser(file)
        if not os.path.isfile(path):
            raise InvalidRequest(f"no connection file at {path!r}")
        return path
    from IPython.core.profiledir import ProfileDir, ProfileDirError
    from IPython.paths import get_ipython_dir

    name = profile or "default"
    try:
        profile_dir = ProfileDir.find_profile_dir_by_name(get_ipython_dir(), name)
    except ProfileDirError:
        raise InvalidRequest(
            f"unknown profile {name!r} (no profile_{name} in {get_ipython_dir()})"
        ) from None
    security = profile_dir.security_dir
    running = _running_cluster_ids(security)
    if cluster_id is not None:
        path = os.path.join(security, f"ipcontroller-{cluster_id}-client.json")
        if not os.path.isfile(path):
            known = ", ".join(running) or "none"
            raise InvalidRequest(
                f"no cluster {cluster_id!r} in profile {name!r}"
                f" (clusters there: {known})"
            )
        return path
    default = os.path.join(security, "ipcontroller-client.json")
    if os.path.isfile(default):
        return default
    if len(running) == 1:
        return os.path.join(security, f"ipcontroller-{running[0]}-client.json")
    if not running:
        raise InvalidRequest(
            f"no running cluster found in profile {name!r};"
            " start one with %cluster start, or pass --file PATH"
        )
    raise InvalidRequest(
        f"several clusters in profile {name!r} ({', '.join(running)});"
        " choose one with --cluster-id ID"
    )


def _running_cluster_ids(security: str) -> list[str]:
    """Cluster ids with a client file, less those whose controller is known dead.

    A controller killed without cleaning up leaves its files behind; its
    cluster file still names its pid, so the process table can tell.
    """
    ids = []
    for path in glob.glob(os.path.join(security, "ipcontroller-*-client.json")):
        cid = os.path.basename(path)[len("ipcontroller-") : -len("-client.json")]
        try:
            with open(os.path.join(security, f"cluster-{cid}.json")) as f:
                pid = json.load(f)["controller"]["state"]["pid"]
        except (OSError, ValueError, KeyError, TypeError):
            pid = None
        if isinstance(pid, int) and pid > 0 and not psutil.pid_exists(pid):
            continue
        ids.append(cid)
    return sorted(ids)


def _teardown(cluster: ipp.Cluster, pids: list[int], *, local: bool) -> None:
    """Stop the cluster, then make sure nothing is left.

    A local cluster is killed outright: its controller keeps nothing
    (``NoDB``) and its engines nothing the notebook has not taken, and
    ipyparallel's polite stop (SIGTERM, then waiting on every process, the
    controller's schedulers last) takes 1-2 s where this takes a tenth of
    that.  Then the launchers are stopped (they find their processes gone)
    and the controller's connection files removed (a killed controller
    cannot).  The controller's schedulers are child processes that can
    outlive a controller stopped mid-start, and engines leave nanny
    processes; the process table, not the launchers' word, decides when we
    are done.
    """
    if local:
        # children before their parents, which reap them and exit: engines
        # and nannies before the process that forked them (killed with it,
        # they would be left to the init process to reap, as zombies where
        # it does so late)
        parents = _forking_parents(pids)
        # the controller stops its schedulers itself (see REAP_SIGNAL)
        controller = _reaping_controller(cluster, pids)
        theirs = _with_descendants(controller)
        _kill_processes([p for p in pids if p not in parents and p not in theirs])
        for pid in controller:
            with contextlib.suppress(OSError):
                os.kill(pid, REAP_SIGNAL)
        _kill_processes(parents + theirs, grace=_PARENT_GRACE)
    with contextlib.suppress(Exception):
        cluster.stop_cluster_sync()
    if local:
        _remove_connection_files(cluster)
        # the processes the launchers started are this one's children: their
        # launchers' threads reap them, a few milliseconds after they exit
        _wait_reaped(pids)
    _reap_processes(pids)
    _reap_processes(_marked_processes(cluster.cluster_id))


#: How long a forking parent or a controller has to reap its killed
#: children and exit.
_PARENT_GRACE = 0.5


def _forking_parents(pids: list[int]) -> list[int]:
    """Those of ``pids`` that fork local engines (see :mod:`._forkengines`)."""
    found = []
    for pid in pids:
        with contextlib.suppress(psutil.Error):
            if psutil.Process(pid).name() == PROCESS_NAMES["parent"]:
                found.append(pid)
    return found


def _reaping_controller(cluster: ipp.Cluster, pids: list[int]) -> list[int]:
    """The cluster's controller, if it is one of ``pids`` and runs paracell's
    program (it reaps its children and exits on ``REAP_SIGNAL``; its
    schedulers, forked from it, run the same command line, but not as it)."""
    pid = getattr(cluster.controller, "pid", None)
    if not isinstance(pid, int) or pid not in pids:
        return []
    with contextlib.suppress(psutil.Error):
        if CONTROLLER_PROGRAM in psutil.Process(pid).cmdline():
            return [pid]
    return []


def _remove_connection_files(cluster: ipp.Cluster) -> None:
    security = os.path.join(cluster.profile_dir, "security")
    for name in ("client", "engine"):
        path = os.path.join(security, f"ipcontroller-{cluster.cluster_id}-{name}.json")
        with contextlib.suppress(OSError):
            os.remove(path)


def _shared_arrays(cluster_id: str | None) -> SharedArrays | None:
    """Shared memory for the arrays of the cluster ``cluster_id``: segments
    named after it, so its watchdog can remove them if the kernel dies."""
    folder = shared_memory_dir()
    if folder is None:
        return None
    tag = "".join(c for c in str(cluster_id or "") if c.isalnum() or c == "-")
    return SharedArrays(folder, tag or secrets.token_hex(4))
