"""Round trip of a trivial cell: ``%%parallel`` vs ipyparallel's ``%%px``.

In one IPython shell, with paracell's 2-engine cluster and ipyparallel's own
(``Cluster(n=2)``) both up, side by side:

* ``%%parallel --block`` with ``x = 1`` (submit, run, bring ``x`` back),
* ``%%parallel`` (background): the time until the cell returns,
* ipyparallel's ``%%px --targets 0`` and ``view.execute(block=True)``,
  called directly and typed in a cell (``ip.run_cell``, as in a notebook),
* ``paracell.parallel(..., block=True)``, ``%%parallel --block``'s twin,
  called directly: the same trip as ``view.execute`` without a cell,
* ``view.execute(block=True)`` on ipyparallel's own cluster
  (``Cluster(n=2)``, its engines as ipyparallel starts them), beside
  paracell's: what a user of ipyparallel alone waits for,

taking turns round by round (a busy machine slows each alike).  paracell's
engines end a request sooner than stock ones (:mod:`._enginequiet`), which
speeds ``view.execute`` on paracell's cluster too; the two ratios against
``view.execute`` show both.

    .venv/bin/python benchmarks/parallel_bench.py [--rounds 100]
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import random
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
    parser.add_argument(
        "--settle",
        type=float,
        default=0.001,
        help="pause in seconds before each timed call (not timed)",
    )
    args = parser.parse_args()
    import ipyparallel as ipp

    ip = start_ipython()
    ip.run_line_magic("load_ext", "paracell")
    ip.run_line_magic("cluster", "start -n 2")
    stock = ipp.Cluster(n=2, log_level=logging.WARNING)
    try:
        stock_view = stock.start_and_connect_sync()[0]
        stock_view.block = True
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
        times["ipyparallel's cluster: view.execute"] = []
        for _ in range(10):
            stock_view.execute("x = 1", block=True)
        ns: dict[str, object] = {}
        for _ in range(10):
            parallel("x = 1", block=True, namespace=ns, name="twin")
        runners = {
            **{
                label: (lambda code=code: ip.run_cell(code).raise_error())
                for label, code in cells.items()
            },
            "view.execute(block=True)": lambda: view.execute("x = 1", block=True),
            "paracell.parallel(block=True)": lambda: parallel(
                "x = 1", block=True, namespace=ns, name="twin"
            ),
            "ipyparallel's cluster: view.execute": lambda: stock_view.execute(
                "x = 1", block=True
            ),
        }
        # they take turns, so a busy machine slows each alike, in a new order
        # each round; each starts after a pause in which the last one's
        # trailing messages (IOPub status and the like, read by a client's
        # IO thread) are handled
        order = list(runners.items())
        shuffle = random.Random(16).shuffle
        for _ in range(args.rounds):
            shuffle(order)  # none always follows the same one
            for label, run in order:
                time.sleep(args.settle)
                tic = time.perf_counter()
                run()
                times[label].append(time.perf_counter() - tic)
        background = timed(ip, "%%parallel --no-pull\ny = 1", args.rounds)
        manager = default_jobs()
        manager.wait(manager.jobs())
        times["%%parallel (returns)  y = 1"] = background
        print(f"trivial cell on a warm 2-engine cluster, {args.rounds} rounds")
        print(f"{'':36}{'median ms':>10}{'p90 ms':>10}")
        for label, runs in times.items():
            runs = sorted(runs)
            p90 = runs[int(0.9 * len(runs)) - 1]
            print(f"{label:36}{statistics.median(runs) * 1e3:10.2f}{p90 * 1e3:10.2f}")
        block = statistics.median(times["%%parallel --block  x = 1"])
        px = statistics.median(times["%%px --targets 0    x = 1"])
        raw = statistics.median(times["view.execute(block=True)"])
        in_cell = statistics.median(times["view.execute in a cell"])
        returns = statistics.median(background)
        twin = statistics.median(times["paracell.parallel(block=True)"])
        own = statistics.median(times["ipyparallel's cluster: view.execute"])
        print(f"ratio %%parallel --block / %%px: {block / px:.2f}")
        ratio = block / own
        verdict = "PASS" if ratio <= 1.2 else "MISS"
        print(
            "ratio %%parallel --block / view.execute on ipyparallel's own"
            f" cluster: {ratio:.2f} (target <= 1.2: {verdict})"
        )
        print(
            "ratio %%parallel --block / view.execute on paracell's cluster:"
            f" {block / raw:.2f} (its engines serve view.execute sooner too)"
        )
        print(
            "ratio %%parallel --block / view.execute in a cell:"
            f" {block / in_cell:.2f} (the same call typed in a cell: IPython's"
            f" cell costs {(in_cell - raw) * 1e3:.1f} ms)"
        )
        print(
            "ratio view.execute in a cell / view.execute called directly:"
            f" {in_cell / raw:.2f} (what any cell adds: no cell, paracell's or"
            " ipyparallel's, measures below this against a direct call)"
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
        with contextlib.suppress(Exception):
            stock.stop_cluster_sync()


if __name__ == "__main__":
    main()
