"""Async items: ``%pmap --concurrency`` against asyncio, threads and processes.

Every item waits ``--wait`` seconds (``asyncio.sleep``, or ``time.sleep`` for
the runners that take plain functions): I/O such as a request to a web
service, which needs no CPU, so what counts is how many wait at once.  Side
by side, taking turns, medians of ``--rounds``:

* ``paracell.pmap(fetch, items, concurrency=C)`` on 2 engines: 2 x C at once,
* the same without ``concurrency``: one item at a time per engine,
* ``asyncio.gather`` under a ``Semaphore(2 x C)`` in this process,
* ``ThreadPoolExecutor(2 x C).map`` with ``time.sleep``,
* ``multiprocessing.Pool(2).map`` with ``time.sleep``: one at a time per worker.

The bound is ``ceil(items / (2 x C)) x wait``: no runner with 2 x C waits at
once beats it.

    .venv/bin/python benchmarks/async_bench.py [--items 400] [--wait 0.05]
        [--concurrency 16] [--rounds 3]
"""

from __future__ import annotations

import argparse
import asyncio
import math
import multiprocessing
import statistics
import time
from concurrent.futures import ThreadPoolExecutor

import paracell

WAIT = 0.05


async def fetch(item: int) -> int:
    await asyncio.sleep(WAIT)
    return item * 2


def fetch_blocking(item: int) -> int:
    time.sleep(WAIT)
    return item * 2


def main() -> None:
    global WAIT
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=400)
    parser.add_argument("--wait", type=float, default=0.05)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    WAIT = args.wait
    items = list(range(args.items))
    expected = [i * 2 for i in items]
    at_once = 2 * args.concurrency

    async def gathered() -> list[int]:
        gate = asyncio.Semaphore(at_once)

        async def one(item: int) -> int:
            async with gate:
                return await fetch(item)

        return list(await asyncio.gather(*map(one, items)))

    paracell.start(2)
    pool = multiprocessing.get_context("fork").Pool(2)
    threads = ThreadPoolExecutor(at_once)
    try:
        runners = {
            f"paracell.pmap, concurrency={args.concurrency}": lambda: paracell.pmap(
                fetch, items, concurrency=args.concurrency, progress=False
            ),
            "paracell.pmap, one at a time": lambda: paracell.pmap(
                fetch, items, progress=False
            ),
            f"asyncio.gather, {at_once} at once": lambda: asyncio.run(gathered()),
            f"ThreadPoolExecutor({at_once}).map": lambda: list(
                threads.map(fetch_blocking, items)
            ),
            "Pool(2).map": lambda: pool.map(fetch_blocking, items),
        }
        for run in runners.values():  # warm up, check
            assert run() == expected
        times: dict[str, list[float]] = {label: [] for label in runners}
        for _ in range(args.rounds):
            for label, run in runners.items():
                tic = time.perf_counter()
                run()
                times[label].append(time.perf_counter() - tic)
    finally:
        paracell.stop()
        pool.terminate()
        threads.shutdown()
    bound = math.ceil(args.items / at_once) * args.wait
    print(
        f"{args.items} items each waiting {args.wait:g} s, 2 engines/workers,"
        f" median of {args.rounds}; bound with {at_once} at once: {bound:.2f} s"
    )
    gather = statistics.median(times[f"asyncio.gather, {at_once} at once"])
    print(f"{'':40}{'s':>8}{'x bound':>9}{'x gather':>10}")
    for label, runs in times.items():
        median = statistics.median(runs)
        print(f"{label:40}{median:8.3f}{median / bound:9.2f}{median / gather:10.2f}")


if __name__ == "__main__":
    main()
