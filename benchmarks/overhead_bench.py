"""How per-item overhead grows with the size of a map: 10 to 10^6 trivial items.

Wall time of mapping ``_work.double`` over ``range(n)``, divided by ``n``, for
n = 10, 100, ..., 10^6 (``--max`` caps it), 2 workers each:

  paracell.pmap              ``paracell.pmap(double, range(n))``, chunksize auto
  paracell.pmap (generator)  the same over ``(i for i in range(n))``: no
                             slicing, no time-boxed probe, chunks form by probing
  Pool.map                   ``multiprocessing`` fork ``Pool(2).map``
  joblib.Parallel            ``joblib.Parallel(n_jobs=2)``, loky, auto batching
  ipyparallel chunksize=1    ``load_balanced_view().map_sync``, its default
  ipyparallel chunksize=n/8  the same with ``chunksize = ceil(n / (4 x 2))``
  sequential                 a list comprehension here: the function's own cost

    .venv/bin/python benchmarks/overhead_bench.py [--max 1000000] [--cap 60]
        [--rounds 3] [--png benchmarks/overhead.png]

A runner is skipped at a size where one run would take longer than ``--cap``
seconds, predicted linearly from its previous size (the table says so).
Medians of ``--rounds`` runs, the runners taking turns; a runner whose runs
at a size already add up to half the cap is not repeated there.  The table
goes to stdout, progress to stderr; the plot (log-log) to ``--png``.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import itertools
import math
import os
import platform
import shutil
import signal
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

# pmap_bench sets IPYTHONDIR to a fresh temporary folder before it imports
# ipyparallel or paracell, and puts this folder on sys.path for _work: import
# it before anything that reads IPYTHONDIR.
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import pmap_bench as pb

# isort: split
import _work
import ipyparallel as ipp

import paracell

HERE = os.path.dirname(os.path.abspath(__file__))
SIZES = (10, 100, 1_000, 10_000, 100_000, 1_000_000)

Job = Callable[[int], Any]


def runners(r: pb.Runners) -> list[tuple[str, Job]]:
    """(name, run one map of n items) for every runner, in table order."""
    double = _work.double
    chosen: list[tuple[str, Job]] = [
        ("sequential", lambda n: [double(x) for x in range(n)]),
        (
            "paracell.pmap",
            lambda n: paracell.pmap(double, range(n), progress=False),
        ),
        (
            "paracell.pmap (generator)",
            lambda n: paracell.pmap(double, (i for i in range(n)), progress=False),
        ),
        ("Pool.map", lambda n: r.pool.map(double, range(n))),
    ]
    if r.parallel is not None:
        joblib = pb.joblib
        chosen.append(
            (
                "joblib.Parallel",
                lambda n: r.parallel(joblib.delayed(double)(x) for x in range(n)),
            )
        )
    chosen += [
        ("ipyparallel chunksize=1", lambda n: r.lview.map_sync(double, range(n))),
        (
            "ipyparallel chunksize=n/8",
            lambda n: r.lview.map_sync(
                double, range(n), chunksize=math.ceil(n / (4 * pb.WORKERS))
            ),
        ),
    ]
    return chosen


class Grid:
    """Wall times per (runner, size), and why a cell has none."""

    def __init__(self, names: Sequence[str], sizes: Sequence[int]) -> None:
        self.names = list(names)
        self.sizes = list(sizes)
        self.runs: dict[tuple[str, int], list[float]] = {}
        self.why: dict[tuple[str, int], str] = {}
        self.wrong: list[str] = []

    def median(self, name: str, n: int) -> float | None:
        runs = self.runs.get((name, n))
        return statistics.median(runs) if runs else None

    def marginal(self, name: str, m: int, n: int) -> float | None:
        """Seconds per item added from ``m`` to ``n`` items."""
        tm, tn = self.median(name, m), self.median(name, n)
        return None if tm is None or tn is None else (tn - tm) / (n - m)

    def predicted(self, name: str, n: int) -> float | None:
        """One run at ``n``, from the largest smaller size measured."""
        for m in reversed([m for m in self.sizes if m < n]):
            t = self.median(name, m)
            if t is not None:
                return t * n / m
            if (name, m) in self.why:
                return math.inf  # skipped or failed below: skip here too
        return None


def measure(
    r: pb.Runners, sizes: Sequence[int], rounds: int, cap: float
) -> tuple[Grid, dict[int, tuple[float, float]]]:
    chosen = runners(r)
    grid = Grid([name for name, _ in chosen], sizes)
    busy: dict[int, tuple[float, float]] = {}  # n -> (others' CPU s, wall s)
    pb.say("warming up every runner (10 items, not timed) ...")
    for _, job in chosen:
        job(10)  # paracell ships double's module once; pools start workers
    for n in sizes:
        pb.say(f"{n:,} items per map")
        expected = [_work.double(x) for x in range(n)]
        cpu0, wall0 = WATCH.others_seconds(), time.perf_counter()
        for name, _ in chosen:
            guess = grid.predicted(name, n)
            if guess is not None and guess > cap:
                grid.why[name, n] = (
                    "skipped: smaller size skipped"
                    if math.isinf(guess)
                    else f"skipped: one run predicted {guess:.0f} s > cap {cap:g} s"
                )
                pb.say(f"  {name}: {grid.why[name, n]}")
        for rep in range(rounds):
            k = rep % len(chosen)
            for name, job in [*chosen[k:], *chosen[:k]]:
                key = (name, n)
                if key in grid.why:
                    continue
                if rep and sum(grid.runs.get(key, [])) > cap / 2:
                    continue
                try:
                    seconds, value = pb.timed(lambda job=job, n=n: job(n))
                except Exception as err:
                    grid.why[key] = f"ERROR {pb._error_text(err)}"
                    grid.wrong.append(f"{name} at {n:,}: {grid.why[key]}")
                    pb.say(f"  {name}: {grid.why[key]}")
                    continue
                if list(value) != expected:
                    grid.wrong.append(f"{name} at {n:,}: wrong result")
                grid.runs.setdefault(key, []).append(seconds)
                pb.say(
                    f"  {name}: {seconds:.3f} s, {seconds / n * 1e6:.2f} us per item"
                )
        busy[n] = (WATCH.others_seconds() - cpu0, time.perf_counter() - wall0)
    return grid, busy


def _us(seconds: float, n: int) -> str:
    us = seconds / n * 1e6
    return f"{us:.3g}" if us < 1000 else f"{us:,.0f}"


def _wall(seconds: float) -> str:
    return f"{seconds:.3g}" if seconds >= 0.001 else f"{seconds:.1e}"


def print_tables(grid: Grid, out: Any = None) -> None:
    out = out or sys.stdout
    head = ["items per map", *grid.names]
    right = frozenset(range(len(head)))
    print("Per-item overhead: wall time / items, in microseconds (median)", file=out)
    print(file=out)
    cells = [head]
    for n in grid.sizes:
        row = [f"{n:,}"]
        for name in grid.names:
            t = grid.median(name, n)
            row.append("-" if t is None else _us(t, n))
        cells.append(row)
    pb._print_markdown(cells, out, right=right)
    print(file=out)
    print("Wall time per map, seconds: median (fastest-slowest run)", file=out)
    print(file=out)
    cells = [head]
    for n in grid.sizes:
        row = [f"{n:,}"]
        for name in grid.names:
            runs = grid.runs.get((name, n))
            if not runs:
                row.append("-")
            elif len(runs) == 1:
                row.append(f"{_wall(runs[0])} (1 run)")
            else:
                row.append(
                    f"{_wall(statistics.median(runs))}"
                    f" ({_wall(min(runs))}-{_wall(max(runs))})"
                )
        cells.append(row)
    pb._print_markdown(cells, out, right=right)
    print(file=out)
    print(
        "Marginal cost per item between consecutive sizes m < n:"
        " (T(n) - T(m)) / (n - m), microseconds: the per-item cost with each"
        " map's fixed cost taken out",
        file=out,
    )
    print(file=out)
    cells = [["items per map", *grid.names]]
    for m, n in itertools.pairwise(grid.sizes):
        row = [f"{m:,} -> {n:,}"]
        for name in grid.names:
            cost = grid.marginal(name, m, n)
            row.append("-" if cost is None else f"{cost * 1e6:.3g}")
        cells.append(row)
    pb._print_markdown(cells, out, right=right)
    notes = [
        f"- {name} at {n:,}: {grid.why[name, n]}"
        for name in grid.names
        for n in grid.sizes
        if (name, n) in grid.why
    ]
    if notes:
        print(file=out)
        print("Not measured:", file=out)
        for line in notes:
            print(line, file=out)


def flatness(grid: Grid) -> list[str]:
    """Per-item overhead over the two largest sizes, and the marginal cost."""
    big = grid.sizes[-2:]
    if len(big) < 2 or big[0] < 10_000:
        return []
    m, n = big
    lines = []
    for name in ("paracell.pmap", "paracell.pmap (generator)", "Pool.map"):
        tm, tn = grid.median(name, m), grid.median(name, n)
        if tm is None or tn is None:
            continue
        lines.append(
            f"{name}: {tm / m * 1e6:.3g} us/item at {m:,}, {tn / n * 1e6:.3g} at"
            f" {n:,} ({tn / n / (tm / m):.2f} x); marginal"
            f" {(tn - tm) / (n - m) * 1e6:.3g} us/item"
        )
    return lines


def plot(grid: Grid, path: str, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    styles = {
        "sequential": ("k", ":", "."),
        "paracell.pmap": ("C0", "-", "o"),
        "paracell.pmap (generator)": ("C0", "--", "s"),
        "Pool.map": ("C1", "-", "^"),
        "joblib.Parallel": ("C2", "-", "v"),
        "ipyparallel chunksize=1": ("C3", "-", "D"),
        "ipyparallel chunksize=n/8": ("C3", "--", "d"),
    }
    fig, ax = plt.subplots(figsize=(8, 5.5))
    for name in grid.names:
        points = [
            (n, t / n * 1e6)
            for n in grid.sizes
            if (t := grid.median(name, n)) is not None
        ]
        if not points:
            continue
        color, line, marker = styles.get(name, (None, "-", "o"))
        xs, ys = zip(*points, strict=True)
        skipped = [n for n in grid.sizes if (name, n) in grid.why]
        label = name + (f" (skipped from {min(skipped):,})" if skipped else "")
        ax.plot(xs, ys, linestyle=line, marker=marker, color=color, label=label)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("items per map")
    ax.set_ylabel("wall time per item (us), median")
    ax.set_title(title, fontsize=9)
    ax.grid(True, which="major", alpha=0.4)
    ax.grid(True, which="minor", alpha=0.15)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


WATCH = pb.CpuWatch()


def _sigterm(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument(
        "--max", type=float, default=1e6, help="largest map (default 1e6)"
    )
    parser.add_argument(
        "--cap",
        type=float,
        default=60.0,
        help="skip a runner at a size where one run is predicted above this (s)",
    )
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--png",
        default=os.path.join(HERE, "overhead.png"),
        help="where to write the plot (default benchmarks/overhead.png)",
    )
    args = parser.parse_args(argv)
    sizes = [n for n in SIZES if n <= args.max]
    if not sizes:
        parser.error(f"--max {args.max:g} is below the smallest size, {SIZES[0]}")
    signal.signal(signal.SIGTERM, _sigterm)
    load_before = os.getloadavg()
    stopped_by: BaseException | None = None
    grid: Grid | None = None
    busy: dict[int, tuple[float, float]] = {}
    r: pb.Runners | None = None
    WATCH.start()
    tic = time.perf_counter()
    try:
        with contextlib.ExitStack() as stack:
            r = pb.Runners(stack)
            r.start()
            grid, busy = measure(r, sizes, args.rounds, args.cap)
            pb.say("stopping clusters and pools ...")
    except BaseException as err:
        stopped_by = err
    finally:
        WATCH.stop()
        left = pb.wait_for_no_leftovers()
        shutil.rmtree(pb.IPYTHONDIR, ignore_errors=True)
    elapsed = time.perf_counter() - tic
    now = datetime.datetime.now().astimezone()
    versions = [
        f"paracell {paracell.__version__}",
        f"ipyparallel {ipp.__version__}",
        f"joblib {pb.joblib.__version__}" if pb.joblib else "joblib MISSING",
        f"Python {platform.python_version()}",
    ]
    print(
        f"paracell overhead benchmark: _work.double over range(n), {pb.WORKERS}"
        f" workers each, median of up to {args.rounds}, cap {args.cap:g} s per run"
    )
    print(
        f"{now:%Y-%m-%d %H:%M %Z}, {os.cpu_count()} CPUs, {platform.system()}"
        f" {platform.machine()}; {', '.join(versions)}"
    )
    print(
        f"load average (1 min) before/after: {load_before[0]:.2f}/"
        f"{os.getloadavg()[0]:.2f}; run took {elapsed:.0f} s"
    )
    if busy:
        cpus = os.cpu_count() or 1
        share = {n: cpu / (wall * cpus) for n, (cpu, wall) in busy.items()}
        print(
            "CPU used by other processes (share of all CPUs) per size: "
            + ", ".join(f"{n:,} {s:.0%}" for n, s in share.items())
        )
        if any(s > 0.05 for s in share.values()):
            print(
                "WARNING: the machine was not quiet: timings are skewed by other"
                " work, ratios are indicative"
            )
    if r is not None and r.started:
        print(
            "cluster start (not in any timing): "
            + "; ".join(f"{k} {v:.2f} s" for k, v in r.started.items())
        )
    print()
    if grid is not None:
        print_tables(grid)
        lines = flatness(grid)
        if lines:
            print()
            print("Once chunks form (the two largest sizes):")
            for line in lines:
                print(f"- {line}")
        plot(
            grid,
            args.png,
            f"per-item overhead, 2 workers, {os.cpu_count()} CPUs,"
            f" {now:%Y-%m-%d %H:%M}",
        )
        print()
        print(f"plot: {args.png}")
        for line in grid.wrong:
            print(f"FAILED: {line}")
    print()
    if left:
        print("LEFT RUNNING after cleanup:")
        for line in left:
            print(f"  {line}")
    else:
        print("processes left running after cleanup: none")
    if stopped_by is not None:
        print(f"INCOMPLETE: stopped by {type(stopped_by).__name__}: {stopped_by}")
        if not isinstance(stopped_by, KeyboardInterrupt):
            raise stopped_by
        return 130
    return 1 if (left or (grid is not None and grid.wrong)) else 0


if __name__ == "__main__":
    sys.exit(main())
