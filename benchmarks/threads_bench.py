"""Thread oversubscription: engines doing BLAS work with and without paracell's
per-engine thread limit, side by side in one run.

Maps of 8 numpy matrix products (1500 x 1500), and of 8 items each forming
5 Gram matrices of a 16000 x 200 array, on 2 engines: once with the
default limit (cores // engines BLAS threads per engine) and once with every
engine allowed all the cores (``--threads <cores>``), which is what engines
do without a limit.

    .venv/bin/python benchmarks/threads_bench.py [--rounds 3]
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time

os.environ.setdefault("IPYTHONDIR", tempfile.mkdtemp(prefix="paracell-bench-"))

from IPython.testing.globalipapp import start_ipython

WORK = """
import numpy as np
def product(seed, n=1500):
    rng = np.random.default_rng(seed)
    a = rng.random((n, n))
    return float((a @ a).trace())
def gram(seed, rows=16000, cols=200, repeat=5):
    rng = np.random.default_rng(seed)
    a = rng.random((rows, cols))
    return float(sum((a.T @ a).trace() for _ in range(repeat)))
"""


def run(ip: object, start: str, rounds: int, work: str) -> float:
    ip.run_line_magic("cluster", start)  # type: ignore[attr-defined]
    try:
        ip.run_line_magic("pmap", f"--no-progress {work}(s) for s in range(2)")  # type: ignore[attr-defined]
        times = []
        for _ in range(rounds):
            tic = time.perf_counter()
            ip.run_line_magic(
                "pmap", f"--no-progress --chunksize 1 {work}(s) for s in range(8)"
            )  # type: ignore[attr-defined]
            times.append(time.perf_counter() - tic)
        return statistics.median(times)
    finally:
        ip.run_line_magic("cluster", "stop")  # type: ignore[attr-defined]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    cores = os.cpu_count() or 1
    ip = start_ipython()
    ip.run_line_magic("load_ext", "paracell")
    ip.run_cell(WORK).raise_error()
    for work, what in (
        ("product", "8 products of 1500x1500"),
        ("gram", "8 x 5 Gram matrices of 16000x200"),
    ):
        limited = run(ip, "start -n 2", args.rounds, work)
        unlimited = run(ip, f"start -n 2 --threads {cores}", args.rounds, work)
        print(f"{what} on 2 engines, {cores} cores, median of {args.rounds}:")
        print(f"  limited ({max(1, cores // 2)} thread(s) per engine) {limited:7.3f} s")
        print(f"  unlimited ({cores} threads per engine)   {unlimited:7.3f} s")
        print(f"  unlimited / limited = {unlimited / limited:.2f}")


if __name__ == "__main__":
    main()
