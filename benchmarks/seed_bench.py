"""Seeded maps of tiny items: ``--seed`` against Pool.map seeding by hand.

A map of ``--items`` tiny random items (one draw each from ``random``,
legacy ``numpy.random`` and :func:`paracell.rng`) on 2 engines, side by side
with ``multiprocessing.Pool(2).map`` (pool forked before timing, chunksize
as ``Pool.map`` picks it):

* paracell ``seed=S``: item *i* draws from ``SeedSequence(S, spawn_key=(i,))``
  whatever the engines and chunks (``random``, ``numpy.random`` and
  ``paracell.rng()`` all seeded per item); once more with items that do not
  call ``paracell.rng()`` (its generator is made only when called);
* Pool seeding per item by hand as numpy advises:
  ``np.random.default_rng(SeedSequence(S, spawn_key=(i,)))`` (one source);
* both unseeded, for the cost of the map itself.

The runners take turns round by round; medians.

    .venv/bin/python benchmarks/seed_bench.py [--items 20000] [--rounds 5]
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import random
import statistics
import tempfile
import time
from collections.abc import Callable
from typing import Any

os.environ.setdefault("IPYTHONDIR", tempfile.mkdtemp(prefix="paracell-bench-"))

import numpy as np

import paracell

SEED = 2024


def draw(i: int) -> float:
    return random.random() + float(np.random.random()) + paracell.rng().random()


def draw_legacy(i: int) -> float:
    return random.random() + float(np.random.random())


def draw_seeded_by_hand(i: int) -> float:
    rng = np.random.default_rng(np.random.SeedSequence(SEED, spawn_key=(i,)))
    return rng.random()


def plain(i: int) -> float:
    return i * 0.5


def timed(func: Callable[[], Any]) -> float:
    tic = time.perf_counter()
    func()
    return time.perf_counter() - tic


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    items = range(args.items)
    paracell.start(2)
    pool = multiprocessing.get_context("fork").Pool(2)
    try:
        runners: dict[str, Callable[[], Any]] = {
            "Pool.map, unseeded": lambda: pool.map(plain, items),
            "paracell, unseeded": lambda: paracell.pmap(plain, items, progress=False),
            "Pool.map, seeded by hand": lambda: pool.map(draw_seeded_by_hand, items),
            "paracell, seed=S": lambda: paracell.pmap(
                draw, items, seed=SEED, progress=False
            ),
            "paracell, seed=S, no rng()": lambda: paracell.pmap(
                draw_legacy, items, seed=SEED, progress=False
            ),
        }
        for run in runners.values():
            run()  # warm: functions shipped, workers' imports done
        times: dict[str, list[float]] = {label: [] for label in runners}
        for _ in range(args.rounds):
            for label, run in runners.items():
                times[label].append(timed(run))
    finally:
        pool.terminate()
        paracell.stop()
    print(f"{args.items} tiny items on 2 workers, {args.rounds} rounds")
    print(f"{'':30}{'median s':>10}{'us/item':>10}")  # wall time / items
    medians = {label: statistics.median(runs) for label, runs in times.items()}
    for label, median in medians.items():
        print(f"{label:30}{median:10.3f}{median / args.items * 1e6:10.1f}")
    ratio = medians["paracell, seed=S"] / medians["Pool.map, seeded by hand"]
    print(f"ratio paracell seed=S / Pool.map seeded by hand: {ratio:.2f}")


if __name__ == "__main__":
    main()
