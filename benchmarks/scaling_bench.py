"""Engines past the core count: 32 engines, 64 items that each sleep 0.5 s.

The items wait rather than compute, so 32 workers can overlap them on any
machine: no schedule beats 2 rounds of 0.5 s = 1 s.  paracell (32 local
engines, ``--force`` past its per-core limit) side by side with
``multiprocessing.Pool(32).map`` (``chunksize=1``), taking turns, medians;
the pools and the cluster are started before any timing.

    .venv/bin/python benchmarks/scaling_bench.py [--engines 32] [--items 64]
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import statistics
import tempfile
import time

os.environ.setdefault("IPYTHONDIR", tempfile.mkdtemp(prefix="paracell-bench-"))

from paracell.kernel_backend import ClusterSession, MapOptions, map_function

SLEEP = 0.5


def nap(i: int) -> int:
    time.sleep(SLEEP)
    return i


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--engines", type=int, default=32)
    parser.add_argument("--items", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    bound = -(-args.items // args.engines) * SLEEP
    items = range(args.items)
    session = ClusterSession()
    tic = time.perf_counter()
    session.start(args.engines, force=True)
    started = time.perf_counter() - tic
    pool = multiprocessing.get_context("fork").Pool(args.engines)
    times: dict[str, list[float]] = {"Pool.map": [], "paracell": []}
    try:
        pool.map(int, range(args.engines))
        map_function(session, nap, range(args.engines), MapOptions()).result()
        for _ in range(args.rounds):
            tic = time.perf_counter()
            assert pool.map(nap, items, chunksize=1) == list(items)
            times["Pool.map"].append(time.perf_counter() - tic)
            tic = time.perf_counter()
            job = map_function(session, nap, items, MapOptions())
            assert job.result() == list(items)
            times["paracell"].append(time.perf_counter() - tic)
    finally:
        pool.terminate()
        pool.join()
        tic = time.perf_counter()
        session.stop()
        stopped = time.perf_counter() - tic
    print(
        f"{args.items} items sleeping {SLEEP} s on {args.engines} workers,"
        f" {os.cpu_count()} CPUs, median of {args.rounds};"
        f" bound {bound:.2f} s"
    )
    for name, runs in times.items():
        med = statistics.median(runs)
        print(
            f"  {name:10}{med:7.3f} s  {med / bound:5.2f} x bound   runs: "
            + ", ".join(f"{t:.3f}" for t in runs)
        )
    ratio = statistics.median(times["paracell"]) / bound
    verdict = "PASS" if ratio <= 1.2 else "MISS"
    print(f"target paracell <= 1.2 x bound: {ratio:.2f} x {verdict}")
    print(
        f"(cluster of {args.engines}: started in {started:.1f} s,"
        f" stopped in {stopped:.2f} s)"
    )


if __name__ == "__main__":
    main()
