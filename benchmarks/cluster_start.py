"""Time to a ready 2-engine cluster: paracell vs ipyparallel's defaults.

"Ready" means every engine registered and answering a task.  Both are run
side by side in one process, alternating, and the ratio is printed.

    .venv/bin/python benchmarks/cluster_start.py [--rounds 3] [-n 2]
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time

os.environ.setdefault("IPYTHONDIR", tempfile.mkdtemp(prefix="paracell-bench-"))

import ipyparallel as ipp

from paracell.kernel_backend import ClusterSession


def _answer() -> int:
    return 1


def time_ipyparallel(n: int) -> float:
    tic = time.perf_counter()
    cluster = ipp.Cluster(n=n, log_level=40)
    client = cluster.start_and_connect_sync()
    client[:].apply_sync(_answer)
    elapsed = time.perf_counter() - tic
    client.close()
    cluster.stop_cluster_sync()
    return elapsed


def time_paracell(n: int) -> float:
    session = ClusterSession()
    tic = time.perf_counter()
    session.start(n)
    session.client[:].apply_sync(_answer)
    elapsed = time.perf_counter() - tic
    session.stop()
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("-n", type=int, default=2)
    args = parser.parse_args()
    ours, theirs = [], []
    for _ in range(args.rounds):
        theirs.append(time_ipyparallel(args.n))
        ours.append(time_paracell(args.n))
        time.sleep(1)
    med_ours, med_theirs = statistics.median(ours), statistics.median(theirs)
    print(
        f"ready {args.n}-engine cluster, median of {args.rounds} (s),"
        f" {os.cpu_count()} CPUs"
    )
    print(
        f"  ipyparallel Cluster().start_and_connect_sync()  {med_theirs:6.2f}   runs: "
        + ", ".join(f"{t:.2f}" for t in theirs)
    )
    print(
        f"  paracell start()                                {med_ours:6.2f}   runs: "
        + ", ".join(f"{t:.2f}" for t in ours)
    )
    print(
        f"  ratio ipyparallel / paracell                    "
        f"{med_theirs / med_ours:6.2f}x"
    )


if __name__ == "__main__":
    main()
