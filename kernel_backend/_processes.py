"""The processes and files of a cluster paracell starts with ipyparallel:
making the ``Cluster``, finding connection files, what its launchers say,
and stopping every process it started (the session decides when)."""

from __future__ import annotations

import contextlib
import glob
import json
import logging
import os
import secrets
import time
from collections.abc import Iterable
from typing import Any

import ipyparallel as ipp
import psutil
from traitlets.config import Config

from ._errors import ClusterStartError, InvalidRequest
from ._launchers import LaunchPlan
from ._sharedmem import SharedArrays, shared_memory_dir

#: Engine launchers ``start`` accepts (ipyparallel's names for them).
LAUNCHERS = ("local", "mpi", "ssh", "slurm", "pbs", "sge", "lsf", "htcondor")

# ipyparallel's controller beats every 3 s and only finishes an engine's
# registration on its first heartbeat; with its 1 s start delay that makes a
# 2-engine cluster take ~6.5 s.  A 100 ms beat registers engines at once; 30
# missed beats (3 s) before an engine counts as dead keeps busy machines safe.
_HEARTBEAT_MS = 100
_HEARTBEAT_MISSES = 30
_MARK = "PARACELL_CLUSTER_ID"

_log = logging.getLogger("paracell.cluster")


def _queue_status(
    client: ipp.Client, targets: list[int] | None, timeout: float
) -> dict[Any, Any] | None:
    """The hub's queue counts per engine, or None if it does not answer in time.

    ``Client.queue_status`` waits for the reply without limit, so a dead
    controller would hang its caller forever; this sends the same request
    through the client's IO thread and waits ``timeout`` seconds at most.
    """
    try:
        future = client._send(
            client._query_stream,
            "queue_request",
            content={"targets": targets, "verbose": False},
        )
        reply = future.result(timeout=timeout)
    except Exception:  # timed out, closed, or an older ipyparallel: no answer
        return None
    content = dict(reply["content"])
    if content.pop("status", None) != "ok":
        return None
    return {int(k) if str(k).isdigit() else k: v for k, v in content.items()}


def _pid_alive(pid: int) -> bool:
    try:
        return bool(psutil.Process(pid).status() != psutil.STATUS_ZOMBIE)
    except psutil.Error:
        return False


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
    config.BaseLauncher.environment = {**(env or {}), _MARK: cluster_id}
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


def _check_engines_configured(cluster: ipp.Cluster) -> None:
    # ipyparallel's ssh launcher takes its hosts from configuration and quietly
    # starts nothing without them; say so instead of waiting for the timeout.
    for es in cluster.engines.values():
        if hasattr(es, "engines") and not es.engines:
            raise ClusterStartError(
                f"{type(es).__name__} has no hosts: set"
                f" c.{type(es).__name__}.engines in the profile's ipcluster_config.py"
            )


def _cancel_waiting(cluster: ipp.Cluster, count: int) -> None:
    """Cancel up to ``count`` engines still waiting in a batch queue."""
    for engine_set in reversed(list(cluster.engines.values())):
        cancel = getattr(engine_set, "cancel_waiting", None)
        if count > 0 and cancel is not None:
            count -= cancel(count)


def _engine_set_exited(engine_set: Any) -> bool:
    """Whether every process of an engine set has exited.

    ipyparallel notices a launcher's exit only when its event loop polls;
    ``mpiexec`` refusing its options exits before that, so ask the process.
    """
    if engine_set.state == "after":
        return True
    procs = [getattr(el, "process", None) for el in _launchers_of(engine_set)]
    if not procs or any(p is None for p in procs):
        return False
    return all(_process_exited(p) for p in procs)


def _process_exited(proc: Any) -> bool:
    poll = getattr(proc, "poll", None)  # a Popen: also reaps it
    if poll is not None:
        return poll() is not None
    try:
        return not proc.is_running() or proc.status() == psutil.STATUS_ZOMBIE
    except psutil.Error:
        return True


def _launchers_of(engine_set: Any) -> list[Any]:
    launchers = getattr(engine_set, "launchers", None)
    if isinstance(launchers, dict) and launchers:
        return list(launchers.values())
    return [engine_set]


def _engine_output(cluster: ipp.Cluster) -> str:
    chunks = []
    for es in cluster.engines.values():
        for el in _launchers_of(es):
            with contextlib.suppress(Exception):
                chunks.append(el.get_output() or "")
    return "\n".join(c for c in chunks if c)


def _launcher_failure(cluster: ipp.Cluster, err: BaseException | None) -> str:
    launcher = getattr(cluster.engine_launcher_class, "__name__", "launcher")
    text = str(err) if err is not None else _engine_output(cluster)
    if err is None:
        output = _tail(text) or "(no output)"
        return f"engines exited before registering ({launcher}): {output}"
    return f"{launcher} failed to start: {_tail(text) or type(err).__name__}"


def _tail(text: str, lines: int = 3) -> str:
    kept = [line.strip() for line in str(text).strip().splitlines() if line.strip()]
    return " | ".join(kept[-lines:])


def _cluster_pids(cluster: ipp.Cluster, engines_only: bool = False) -> list[int]:
    """Pids of the processes the cluster's launchers started, children too."""
    return _with_descendants(_launcher_pids(cluster, engines_only))


def _launcher_pids(cluster: ipp.Cluster, engines_only: bool = False) -> list[int]:
    """Pids of the processes the cluster's launchers started themselves."""
    pids: list[Any] = []
    if not engines_only and cluster.controller is not None:
        pids.append(getattr(cluster.controller, "pid", None))
    for es in cluster.engines.values():
        pids.extend(getattr(el, "pid", None) for el in _launchers_of(es))
    return [p for p in pids if isinstance(p, int) and p > 0]


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
        _kill_processes(pids)
    with contextlib.suppress(Exception):
        cluster.stop_cluster_sync()
    if local:
        _remove_connection_files(cluster)
    _reap_processes(pids)
    _reap_processes(_marked_processes(cluster.cluster_id))


def _kill_processes(pids: list[int], timeout: float = 3.0) -> None:
    """SIGKILL ``pids`` all at once and wait until they have exited."""
    procs = []
    for pid in pids:
        with contextlib.suppress(psutil.Error):
            proc = psutil.Process(pid)
            proc.kill()
            procs.append(proc)
    _wait_exited(procs, timeout)


def _remove_connection_files(cluster: ipp.Cluster) -> None:
    security = os.path.join(cluster.profile_dir, "security")
    for name in ("client", "engine"):
        path = os.path.join(security, f"ipcontroller-{cluster.cluster_id}-{name}.json")
        with contextlib.suppress(OSError):
            os.remove(path)


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
            if proc.environ().get(_MARK) == cluster_id:
                found.append(proc.info["pid"])
    return found


def _cluster_started(cluster_id: str) -> float | None:
    """When the cluster ``cluster_id`` was made (its id starts with the time
    in whole seconds; a second's slack for clock rounding), if it says."""
    head = cluster_id.partition("-")[0]
    return float(head) - 1.0 if head.isdigit() else None


def _shared_arrays(cluster_id: str | None) -> SharedArrays | None:
    """Shared memory for the arrays of the cluster ``cluster_id``: segments
    named after it, so its watchdog can remove them if the kernel dies."""
    folder = shared_memory_dir()
    if folder is None:
        return None
    tag = "".join(c for c in str(cluster_id or "") if c.isalnum() or c == "-")
    return SharedArrays(folder, tag or secrets.token_hex(4))


def _wait_for(predicate: Any, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


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
