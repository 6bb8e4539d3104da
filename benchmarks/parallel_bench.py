"""Round trip of a trivial cell: ``%%parallel`` vs ipyparallel's ``%%px``.

In one IPython shell and one 2-engine cluster, side by side:

* ``%%parallel --block`` with ``x = 1`` (submit, run, bring ``x`` back),
* ``%%parallel`` (background): the time until the cell returns,
* ipyparallel's ``%%px --targets 0`` and ``view.execute(block=True)``.

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
        rows = []
        for label, code in (
            ("%%parallel --block  x = 1", "%%parallel --block\nx = 1"),
            ("%%px --targets 0    x = 1", "%%px --targets 0\nx = 1"),
        ):
            timed(ip, code, 10)  # warm up
            rows.append((label, timed(ip, code, args.rounds)))
        raw = []
        for _ in range(args.rounds):
            tic = time.perf_counter()
            view.execute("x = 1", block=True)
            raw.append(time.perf_counter() - tic)
        rows.append(("view.execute(block=True)", raw))
        background = timed(ip, "%%parallel --no-pull\ny = 1", args.rounds)
        manager = default_jobs()
        manager.wait(manager.jobs())
        rows.append(("%%parallel (returns)  y = 1", background))
        print(f"trivial cell on a warm 2-engine cluster, {args.rounds} rounds")
        print(f"{'':32}{'median ms':>10}{'p90 ms':>10}")
        for label, times in rows:
            times.sort()
            p90 = times[int(0.9 * len(times)) - 1]
            print(f"{label:32}{statistics.median(times) * 1e3:10.1f}{p90 * 1e3:10.1f}")
        block = statistics.median(rows[0][1])
        px = statistics.median(rows[1][1])
        print(f"ratio %%parallel --block / %%px: {block / px:.2f}")
    finally:
        ip.run_line_magic("cluster", "stop")


if __name__ == "__main__":
    main()
