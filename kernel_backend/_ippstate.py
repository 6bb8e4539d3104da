"""What ipyparallel says about a cluster paracell started: the hub's queue
counts, its engine sets' launchers (their pids, whether they exited, their
output), engines waiting in a batch queue."""

from __future__ import annotations

import contextlib
import time
from typing import Any

import ipyparallel as ipp
import psutil

from ._errors import ClusterStartError
from ._forkengines import PROCESS_NAMES
from ._reaping import _with_descendants


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


def _late_engines_report(cluster: ipp.Cluster) -> str:
    """What the logs say of engines that did not finish registering: each
    engine's last line, the forking parent's reports, and the controller's
    word on registrations (one it purged, a heart it ignored)."""
    output = _engine_output(cluster)
    latest: dict[str, str] = {}
    other: list[str] = []
    for line in output.splitlines():
        line = line.strip()
        tag = _bracketed(line)
        if tag.startswith(("IPEngine.", "KernelNanny.")):
            latest[tag] = line
        elif tag == PROCESS_NAMES["parent"] or "Traceback" in line or "Fatal" in line:
            other.append(line)
    controller = cluster.controller
    said = controller.get_output() if controller is not None else ""
    hub = [
        line.strip()
        for line in str(said or "").splitlines()
        if "purging" in line
        or "ignoring new heart" in line
        or ("ERROR" in line and "registration" in line)
    ]
    parts = [latest[tag] for tag in sorted(latest)] + other[-5:] + hub[-3:]
    return " | ".join(parts) or _tail(output) or "(none)"


def _bracketed(line: str) -> str:
    """The first ``[Name]`` of a log line (after its time stamp, if it has
    one), or ''."""
    start = line.find("[")
    end = line.find("]", start)
    return line[start + 1 : end] if start >= 0 and end > start else ""


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


def _engine_processes(cluster: ipp.Cluster) -> list[int]:
    """Pids of the engine processes (not nannies, not a forking parent) the
    cluster's engine launchers started on this machine."""
    found = []
    for pid in _with_descendants(_launcher_pids(cluster, engines_only=True)):
        with contextlib.suppress(psutil.Error):
            proc = psutil.Process(pid)
            name = proc.name()
            if name == PROCESS_NAMES["engine"]:
                found.append(pid)
            elif name not in PROCESS_NAMES.values():
                command = " ".join(proc.cmdline())
                if "ipyparallel.engine" in command and "nanny" not in command:
                    found.append(pid)
    return found


def _wait_for(predicate: Any, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True
