"""Round trip of a trivial cell: ``%%parallel`` vs ipyparallel's ``%%px``.

In one IPython shell and one 2-engine cluster, side by side:

* ``%%parallel --block`` with ``x = 1`` (submit, run, bring ``x`` back),
* ``%%parallel`` (background): the time until the cell returns,
* ipyparallel's ``%%px --targets 0`` and ``view.execute(block=True)``,
  called directly and typed in a cell (``ip.run_cell``, as in a notebook),
* ``paracell.parallel(..., block=True)``, ``%%parallel --block``'s twin,
  called directly: the same trip as ``view.execute`` without a cell,

taking turns round by round (a busy machine slows each alike).

    .venv/bin/python benchmarks/parallel_bench.py [--rounds 100]
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time

os.environ.setdefault("IPYTHONDIR", tempfile.mkdtemp(prefix="paracell-bench-"))

from IPython.testing.globalipapp import start_ipython

from paracell import parallel
from paracell.kernel_backend import default_jobs, default_session


def timed(ip, code: str, rounds: int) -> list[float]:
    times = []
    for _ in range(rounds):
        tic = time.perf_counter()
        result = ip.run_cell(code)
        times.append(time.perf_counter() - tic)
        result.raise_error()
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=100)
    args = parser.parse_args()
    ip = start_ipython()
    ip.run_line_magic("load_ext", "paracell")
    ip.run_line_magic("cluster", "start -n 2")
    try:
        client = default_session().client
        view = client[0]
        view.block = True
        view.activate()  # registers %px / %%px on engine 0
        ip.user_ns["view"] = view
        cells = {
            "%%parallel --block  x = 1": "%%parallel --block\nx = 1",
            "%%px --targets 0    x = 1": "%%px --targets 0\nx = 1",
            "view.execute in a cell": '_r = view.execute("x = 1", block=True)',
        }
        for code in cells.values():
            timed(ip, code, 10)  # warm up
        times: dict[str, list[float]] = {label: [] for label in cells}
        times["view.execute(block=True)"] = []
        times["paracell.parallel(block=True)"] = []
        ns: dict[str, object] = {}
        for _ in range(10):
            parallel("x = 1", block=True, namespace=ns, name="twin")
        # the three take turns, so a busy machine slows each alike
        for _ in range(args.rounds):
            for label, code in cells.items():
                times[label] += timed(ip, code, 1)
            tic = time.perf_counter()
            view.execute("x = 1", block=True)
            times["view.execute(block=True)"].append(time.perf_counter() - tic)
            tic = time.perf_counter()
            parallel("x = 1", block=True, namespace=ns, name="twin")
            times["paracell.parallel(block=True)"].append(time.perf_counter() - tic)
        background = timed(ip, "%%parallel --no-pull\ny = 1", args.rounds)
        manager = default_jobs()
        manager.wait(manager.jobs())
        times["%%parallel (returns)  y = 1"] = background
        print(f"trivial cell on a warm 2-engine cluster, {args.rounds} rounds")
        print(f"{'':32}{'median ms':>10}{'p90 ms':>10}")
        for label, runs in times.items():
            runs = sorted(runs)
            p90 = runs[int(0.9 * len(runs)) - 1]
            print(f"{label:32}{statistics.median(runs) * 1e3:10.1f}{p90 * 1e3:10.1f}")
        block = statistics.median(times["%%parallel --block  x = 1"])
        px = statistics.median(times["%%px --targets 0    x = 1"])
        raw = statistics.median(times["view.execute(block=True)"])
        in_cell = statistics.median(times["view.execute in a cell"])
        returns = statistics.median(background)
        twin = statistics.median(times["paracell.parallel(block=True)"])
        print(f"ratio %%parallel --block / %%px: {block / px:.2f}")
        ratio = block / raw
        print(
            f"ratio %%parallel --block / view.execute: {ratio:.2f}"
            f" (target <= 1.2: {'PASS' if ratio <= 1.2 else 'MISS'})"
        )
        print(
            "ratio %%parallel --block / view.execute in a cell:"
            f" {block / in_cell:.2f} (the same call typed in a cell: IPython's"
            f" cell costs {(in_cell - raw) * 1e3:.1f} ms)"
        )
        print(
            "ratio paracell.parallel(block=True) / view.execute, both called"
            f" directly (no cell): {twin / raw:.2f}"
        )
        print(
            f"%%parallel returns in {returns * 1e3:.1f} ms"
            f" (target < 5 ms: {'PASS' if returns < 0.005 else 'MISS'})"
        )
    finally:
        ip.run_line_magic("cluster", "stop")


if __name__ == "__main__":
    main()
