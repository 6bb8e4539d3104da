"""The result store (``--cache``): what it saves and what it costs.

In one IPython shell and one 2-engine cluster, side by side:

* a fully stored re-run of 10,000 items (1 ms each) against the same map
  computed, store empty (goal: under 5 % of it, and under 0.3 s);
* ``%pmap --cache`` against plain ``%pmap`` on 2,000 items of 5 ms, store
  empty each time (goal: under 5 % more);
* the second map over a 200 MB array global (pushed once, then known by its
  digest) against ``multiprocessing.Pool.map`` on a warm pool of as many
  workers, the array inherited by fork (goal: under 1.5 times).

    .venv/bin/python benchmarks/cache_bench.py [--rounds 3]
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import statistics
import tempfile
import time
from collections.abc import Callable

os.environ.setdefault("IPYTHONDIR", tempfile.mkdtemp(prefix="paracell-bench-"))
os.environ["PARACELL_CACHE_DIR"] = tempfile.mkdtemp(prefix="paracell-bench-cache-")

import numpy as np
from IPython.testing.globalipapp import start_ipython

from paracell.kernel_backend import clear_cache

ENGINES = 2

WORK = """
import numpy as np
from time import perf_counter
def busy(i, seconds):
    end = perf_counter() + seconds
    while perf_counter() < end:
        pass
    return i
def slice_sum(i):
    return float(np.sin(data[i::16]).sum())
data = np.random.default_rng(0).random(25_000_000)  # 200 MB
"""

# for the Pool's workers, which inherit it by fork
data = np.random.default_rng(0).random(25_000_000)


def slice_sum(i: int) -> float:
    return float(np.sin(data[i::16]).sum())


def timed(action: Callable[[], object]) -> float:
    tic = time.perf_counter()
    action()
    return time.perf_counter() - tic


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    ip = start_ipython()
    ip.run_line_magic("load_ext", "paracell")
    ip.run_line_magic("cluster", f"start -n {ENGINES}")
    ip.run_cell(WORK).raise_error()

    def pmap(line: str) -> object:
        return ip.run_line_magic("pmap", "--no-progress " + line)

    try:
        rows: list[tuple[str, float, float, float, str]] = []
        pmap("busy(i, 0.001) for i in range(200)")  # warm up engines and shipping

        # 1. a fully stored re-run
        computed, stored = [], []
        for _ in range(args.rounds):
            clear_cache()
            computed.append(
                timed(lambda: pmap("--cache busy(i, 0.001) for i in range(10_000)"))
            )
            stored.append(
                timed(lambda: pmap("--cache busy(i, 0.001) for i in range(10_000)"))
            )
        c, s = statistics.median(computed), statistics.median(stored)
        rows.append(
            ("10,000 x 1 ms: stored re-run / computed", s, c, s / c, "< 0.05, < 0.3 s")
        )

        # 2. the store's cost on a map it does not help
        plain, cached = [], []
        for _ in range(args.rounds):
            plain.append(timed(lambda: pmap("busy(i, 0.005) for i in range(2_000)")))
            clear_cache()
            cached.append(
                timed(lambda: pmap("--cache busy(i, 0.005) for i in range(2_000)"))
            )
        p, k = statistics.median(plain), statistics.median(cached)
        rows.append(("2,000 x 5 ms: --cache / plain", k, p, k / p, "< 1.05"))

        # 3. a 200 MB global, second map, against a warm Pool
        pmap("slice_sum(i) for i in range(16)")  # pushes the array once
        second = [
            timed(lambda: pmap("slice_sum(i) for i in range(16)"))
            for _ in range(args.rounds)
        ]
        context = multiprocessing.get_context("fork")
        with context.Pool(ENGINES) as pool:
            pool.map(slice_sum, range(16))
            pooled = [
                timed(lambda: pool.map(slice_sum, range(16)))
                for _ in range(args.rounds)
            ]
        m, q = statistics.median(second), statistics.median(pooled)
        rows.append(("200 MB global, 2nd map / Pool.map", m, q, m / q, "< 1.5"))

        print(
            f"result store, {ENGINES} engines, median of {args.rounds} rounds"
            f" ({os.cpu_count()} CPUs)"
        )
        print(f"{'':42}{'this s':>9}{'vs s':>9}{'ratio':>8}  goal")
        for label, this, versus, ratio, goal in rows:
            print(f"{label:42}{this:9.3f}{versus:9.3f}{ratio:8.3f}  {goal}")
    finally:
        ip.run_line_magic("cluster", "stop")
        clear_cache()


if __name__ == "__main__":
    main()
