"""Time to a ready 2-engine cluster, and to stop it: paracell vs ipyparallel.

"Ready" means every engine registered and answering a task; "stopped" that
no process of the cluster is left running (checked in the process table
after each stop).  Both are run side by side in one process, alternating,
and the ratios are printed.

``--kernel`` also times the first map in a fresh Jupyter kernel with no
cluster, from the cell's request to its reply: ``%pmap f(x) for x in
range(100)`` (the default cluster starts on demand) against
``ipp.Cluster(n=2).start_and_connect_sync()`` and ``rc[:].map_sync(f,
range(100))`` in one cell.  A first cell, not timed, loads the extension
(or imports ipyparallel) and defines ``f``.

    .venv/bin/python benchmarks/cluster_start.py [--rounds 3] [-n 2] [--kernel]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import tempfile
import time

os.environ.setdefault("IPYTHONDIR", tempfile.mkdtemp(prefix="paracell-bench-"))

import ipyparallel as ipp
import psutil

from paracell.kernel_backend import ClusterSession


def _answer() -> int:
    return 1


def time_ipyparallel(n: int) -> tuple[float, float]:
    tic = time.perf_counter()
    cluster = ipp.Cluster(n=n, log_level=40)
    client = cluster.start_and_connect_sync()
    client[:].apply_sync(_answer)
    elapsed = time.perf_counter() - tic
    tic = time.perf_counter()
    client.close()
    cluster.stop_cluster_sync()
    return elapsed, time.perf_counter() - tic


def time_paracell(n: int) -> tuple[float, float]:
    session = ClusterSession()
    tic = time.perf_counter()
    session.start(n)
    session.client[:].apply_sync(_answer)
    elapsed = time.perf_counter() - tic
    tic = time.perf_counter()
    session.stop()
    return elapsed, time.perf_counter() - tic


_FIRST_MAP = {
    "paracell": (
        "%load_ext paracell\ndef f(x):\n    return x * x",
        "r = %pmap --no-progress f(x) for x in range(100)\nassert r[-1] == 99 * 99",
        "%cluster stop",
    ),
    "ipyparallel": (
        "import ipyparallel as ipp\ndef f(x):\n    return x * x",
        "cluster = ipp.Cluster(n={n}, log_level=40)\n"
        "rc = cluster.start_and_connect_sync()\n"
        "r = rc[:].map_sync(f, range(100))\nassert r[-1] == 99 * 99",
        "rc.close(); cluster.stop_cluster_sync()",
    ),
}


def time_first_map(who: str, n: int) -> float:
    """Seconds from the request of a fresh kernel's first map to its reply."""
    from jupyter_client.manager import KernelManager

    manager = KernelManager(kernel_name="python3")
    manager.start_kernel()
    client = manager.client()
    client.start_channels()
    try:
        client.wait_for_ready(timeout=60)

        def run(code: str) -> None:
            reply = client.execute_interactive(
                code, timeout=120, output_hook=lambda msg: None
            )
            if reply["content"]["status"] != "ok":
                raise RuntimeError(f"{who}: {code!r} failed: {reply['content']}")

        setup, first_map, stop = (c.format(n=n) for c in _FIRST_MAP[who])
        run(setup)
        tic = time.perf_counter()
        run(first_map)
        elapsed = time.perf_counter() - tic
        run(stop)
        return elapsed
    finally:
        client.stop_channels()
        manager.shutdown_kernel(now=True)


def left_running() -> list[int]:
    """Processes of this benchmark's clusters still running (not zombies)."""
    mine = os.environ["IPYTHONDIR"]
    found = []
    for proc in psutil.process_iter(["pid", "cmdline"]):
        with contextlib.suppress(psutil.Error):
            # paracell's forked engines and their parent run paracell's code
            args = proc.info["cmdline"] or ()
            if not any(
                "ipyparallel" in a or "paracell.kernel_backend" in a for a in args
            ):
                continue
            if proc.status() == psutil.STATUS_ZOMBIE:
                continue
            if proc.environ().get("IPYTHONDIR") == mine:
                found.append(proc.info["pid"])
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("-n", type=int, default=2)
    parser.add_argument(
        "--kernel", action="store_true", help="also time a fresh kernel's first map"
    )
    args = parser.parse_args()
    ours, theirs = [], []
    left: dict[str, set[int]] = {"ipyparallel": set(), "paracell": set()}
    for _ in range(args.rounds):
        theirs.append(time_ipyparallel(args.n))
        left["ipyparallel"].update(left_running())
        ours.append(time_paracell(args.n))
        left["paracell"].update(set(left_running()) - left["ipyparallel"])
        time.sleep(1)
    cpus = os.cpu_count()
    print(f"{args.n}-engine cluster, median of {args.rounds} (s), {cpus} CPUs")
    for k, what in enumerate(("ready", "stopped")):
        med_ours = statistics.median(t[k] for t in ours)
        med_theirs = statistics.median(t[k] for t in theirs)
        call = ("Cluster().start_and_connect_sync()", "stop_cluster_sync()")[k]
        print(
            f"{what}\n  ipyparallel {call:34}"
            f"{med_theirs:6.2f}   runs: " + ", ".join(f"{t[k]:.2f}" for t in theirs)
        )
        print(
            f"  paracell {('start()', 'stop()')[k]:37}{med_ours:6.2f}   runs: "
            + ", ".join(f"{t[k]:.2f}" for t in ours)
        )
        print(f"  ratio paracell / ipyparallel{med_ours / med_theirs:23.2f}")
    if args.kernel:
        firsts: dict[str, list[float]] = {"ipyparallel": [], "paracell": []}
        for _ in range(args.rounds):
            for who, runs in firsts.items():
                runs.append(time_first_map(who, args.n))
                left[who].update(set(left_running()) - left["ipyparallel"])
        print("first map in a fresh kernel, request to reply")
        for who, runs in firsts.items():
            print(
                f"  {who:45}{statistics.median(runs):6.2f}   runs: "
                + ", ".join(f"{t:.2f}" for t in runs)
            )
        ratio = statistics.median(firsts["paracell"]) / statistics.median(
            firsts["ipyparallel"]
        )
        print(f"  ratio paracell / ipyparallel{ratio:23.2f}")
    for who, pids in left.items():
        print(f"{who}: processes still running right after its stop(): {len(pids)}")


if __name__ == "__main__":
    main()
