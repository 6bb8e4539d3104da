"""paracell at scale: 100,000 tiny items on 8 engines, and a 10-million-item generator.

  a  ``paracell.pmap(double, range(100_000))`` on 8 engines against
     ``multiprocessing`` fork ``Pool(8).map``, taking turns, medians of
     ``--rounds``.  Target: paracell within 1.5 x Pool.map.
  b  the kernel's memory while ``paracell.pmap(nothing, (i for i in
     range(10_000_000)))`` runs on the same engines: this process's RSS,
     sampled every 20 ms in a thread, against the RSS before the map.
     ``nothing`` returns None, so the results are the list's references
     alone (8 bytes an item; ``sys.getsizeof`` of the list), which is
     subtracted.  Target: under 200 MB of growth besides the results.

    .venv/bin/python benchmarks/scale_bench.py [--engines 8] [--map-items 100000]
        [--rounds 5] [--items 10000000] [--only a,b]

With ``--items`` below 10 million, (b) also extrapolates to 10 million from
the growth it measured (marked EXTRAPOLATED).  Engines past the core count
are started with ``force=True``.  The table goes to stdout, progress to stderr.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import gc
import os
import platform
import shutil
import signal
import statistics
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

# pmap_bench sets IPYTHONDIR to a fresh temporary folder before it imports
# ipyparallel or paracell, and puts this folder on sys.path for _work: import
# it before anything that reads IPYTHONDIR.
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import pmap_bench as pb

# isort: split
import multiprocessing

import _work
import ipyparallel as ipp
import psutil

import paracell

MB = 1e6
FULL_ITEMS = 10_000_000


@dataclass
class Result:
    rows: list[list[str]] = field(default_factory=list)
    checks: list[list[str]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    wrong: list[str] = field(default_factory=list)

    def check(self, target: str, measured: str, ok: bool) -> None:
        self.checks.append([target, measured, "PASS" if ok else "MISS"])


def bench_a(pool: Any, n: int, rounds: int, engines: int, res: Result) -> None:
    items = range(n)
    expected = [_work.double(x) for x in items]
    runs: dict[str, list[float]] = {"Pool.map": [], "paracell.pmap": []}
    jobs = {
        "Pool.map": lambda: pool.map(_work.double, items),
        "paracell.pmap": lambda: paracell.pmap(_work.double, items, progress=False),
    }
    pb.say(f"(a) {n:,} trivial items on {engines} workers, {rounds} rounds")
    for rep in range(rounds):
        order = list(jobs) if rep % 2 == 0 else list(jobs)[::-1]
        for name in order:
            seconds, value = pb.timed(jobs[name])
            if value != expected:
                res.wrong.append(f"(a) {name}: wrong result")
            runs[name].append(seconds)
            pb.say(f"  [a] {name}: {seconds:.3f} s")
    pool_med = statistics.median(runs["Pool.map"])
    job = paracell.pmap(_work.double, items, progress=False, block=False)
    job.result()
    chunks = len(job.chunks)
    for name, times in runs.items():
        med = statistics.median(times)
        note = f"median of {len(times)}, {min(times):.3f}-{max(times):.3f}"
        if name == "Pool.map":
            note += f"; chunksize {-(-n // (4 * engines))} (Pool's own)"
        else:
            # later maps of the same code know its pace (one engine's worth
            # of work goes to one engine); the first does not
            note += f"; the first map {times[0]:.3f} s; a further run used"
            note += f" {chunks} chunks"
        res.rows.append(
            [
                f"a {n:,} trivial, {engines} workers",
                name,
                f"{med:.3f}",
                "1.00 (ref)" if name == "Pool.map" else f"{med / pool_med:.2f}",
                note,
            ]
        )
    pc = statistics.median(runs["paracell.pmap"])
    res.check(
        f"a: paracell.pmap <= 1.5 x Pool({engines}).map",
        f"{pc / pool_med:.2f} x ({pc:.3f} s vs {pool_med:.3f} s)",
        pc <= 1.5 * pool_med,
    )


class RssSampler(threading.Thread):
    """This process's RSS and the map's items done, every ``period`` s."""

    def __init__(self, job: Any, period: float = 0.02) -> None:
        super().__init__(name="rss-sampler", daemon=True)
        self.job = job
        self.period = period
        self.proc = psutil.Process()
        self.samples: list[tuple[float, int, int]] = []  # (t, done, rss)
        self._stop_event = threading.Event()

    def run(self) -> None:
        t0 = time.perf_counter()
        while not self._stop_event.is_set():
            done = self.job.progress.done
            rss = self.proc.memory_info().rss
            self.samples.append((time.perf_counter() - t0, done, rss))
            self._stop_event.wait(self.period)

    def stop(self) -> None:
        self._stop_event.set()
        self.join()


def others_rss() -> int:
    """RSS of the processes started with this run's IPYTHONDIR (controller,
    engines), this one left out."""
    total = 0
    for proc in psutil.process_iter(["pid"]):
        if proc.pid == os.getpid():
            continue
        with contextlib.suppress(psutil.Error):
            if proc.environ().get("IPYTHONDIR") == pb.IPYTHONDIR:
                total += proc.memory_info().rss
    return total


def _items(n: int, item_bytes: int) -> Any:
    """The generator of (b): ints, or new ``bytes`` objects of that size."""
    if item_bytes:
        return (bytes(item_bytes) for _ in range(n))
    return (i for i in range(n))


def bench_b(n: int, engines: int, res: Result, item_bytes: int = 0) -> None:
    proc = psutil.Process()
    what = f"{item_bytes:,}-byte bytes" if item_bytes else "int"
    pb.say(f"(b) a generator of {n:,} {what} items on {engines} engines")
    # warm up: the function shipped, the allocator's arenas in use once
    warm = paracell.pmap(_work.nothing, (i for i in range(200_000)), progress=False)
    del warm
    gc.collect()
    base = proc.memory_info().rss
    cluster_before = others_rss()
    job = paracell.pmap(
        _work.nothing, _items(n, item_bytes), progress=False, block=False
    )
    sampler = RssSampler(job)
    tic = time.perf_counter()
    sampler.start()
    try:
        result = job.result()
    finally:
        sampler.stop()
    wall = time.perf_counter() - tic
    end = proc.memory_info().rss
    cluster_after = others_rss()
    if len(result) != n or any(v is not None for v in result):
        res.wrong.append("(b) paracell.pmap: wrong result")
    listed = sys.getsizeof(result)
    chunks = len(job.chunks)
    biggest = max((c.count for c in job.chunks), default=0)
    del result
    gc.collect()
    after = proc.memory_info().rss

    samples = [*sampler.samples, (wall, n, end)]
    peak = max(rss for _, _, rss in samples) - base
    # while the map runs its finished chunks' value lists hold 8 bytes an
    # item (what becomes the result list): the rest is working memory
    mapping = [(done, rss) for _, done, rss in samples if done < n]
    working = max((rss - base - 8 * done for done, rss in mapping), default=0)
    # the last chunk in, the chunks' value lists are joined into the result
    # list (MapResults.in_order): both are held until the map returns
    joining = max((rss for _, done, rss in sampler.samples if done >= n), default=base)
    end_extra = end - base - listed
    # growth per item over the second half of the map (least squares): ~8
    # bytes for the value lists; more would be memory that grows with n
    half = [(d, rss) for _, d, rss in samples if n // 2 <= d < n]
    slope = _slope(half)
    label = f"b generator of {n:,} {what} items, {engines} engines"
    rows = [
        (
            "wall time",
            f"{wall:.1f} s",
            f"{n / wall / 1e6:.2f} M items/s; {chunks} chunks,"
            f" the largest {biggest:,} items",
        ),
        (
            "RSS before the map",
            f"{base / MB:.0f} MB",
            "after a 200,000-item warm-up map and gc.collect()",
        ),
        (
            "peak RSS growth",
            f"{peak / MB:.0f} MB",
            f"{len(samples)} samples, every 20 ms",
        ),
        (
            "result list",
            f"{listed / MB:.0f} MB",
            "sys.getsizeof(result): its references (the Nones are shared)",
        ),
        (
            "peak growth - result list",
            f"{(peak - listed) / MB:.0f} MB",
            "the target's measure",
        ),
        (
            "growth while joining the values",
            f"{(joining - base) / MB:.0f} MB",
            "samples after the last chunk came back: the chunks' value lists"
            " and the result list, both held (~16 bytes an item)",
        ),
        (
            "working memory while mapping",
            f"{working / MB:.0f} MB",
            "max over the samples before the last chunk came back of growth"
            " - 8 bytes x items done (the chunks' value lists): inputs in flight,"
            " messages, allocator slack",
        ),
        (
            "growth per item, 2nd half",
            "-" if slope is None else f"{slope:.1f} B",
            "least squares over the samples with n/2 to n items done;"
            " 8 B = the value lists",
        ),
        (
            "growth at the end, holding the result",
            f"{(end - base) / MB:.0f} MB",
            f"{end_extra / MB:.0f} MB besides the list: freed chunks' memory"
            " the allocator keeps",
        ),
        (
            "growth after del result; gc.collect()",
            f"{(after - base) / MB:.0f} MB",
            "freed memory may stay in the allocator's arenas",
        ),
        (
            "controller + engines RSS",
            f"{cluster_before / MB:.0f} -> {cluster_after / MB:.0f} MB",
            "not the kernel's: for reference",
        ),
    ]
    for what, value, note in rows:
        res.rows.append([label, what, value, "", note])
    target = "b: kernel RSS growth besides the result list < 200 MB"
    res.check(
        f"{target} ({n:,} items)",
        f"{(peak - listed) / MB:.0f} MB (peak {peak / MB:.0f} MB"
        f" - list {listed / MB:.0f} MB)",
        peak - listed < 200 * MB,
    )
    if n < FULL_ITEMS and not item_bytes:
        scale = FULL_ITEMS / n
        # the result list, and the value lists while mapping, grow with n;
        # the working memory was measured at n and is assumed not to grow
        # (the slope above says whether that holds)
        est_list = 8 * FULL_ITEMS
        est_peak = working + 2 * est_list
        res.notes.append(
            f"(b) EXTRAPOLATED to {FULL_ITEMS:,} items from {n:,} (x{scale:.3g}):"
            f" result list ~{est_list / MB:.0f} MB, peak ~{est_peak / MB:.0f} MB ="
            f" working {working / MB:.0f} MB + value lists and result list"
            f" {2 * est_list / MB:.0f} MB, so ~{(est_peak - est_list) / MB:.0f} MB"
            f" besides the list; wall ~{wall * scale:.0f} s"
        )


def _slope(points: list[tuple[int, int]]) -> float | None:
    if len(points) < 3:
        return None
    xs = [float(x) for x, _ in points]
    ys = [float(y) for _, y in points]
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    var = sum((x - mx) ** 2 for x in xs)
    if var == 0:
        return None
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / var


def _default_sigterm() -> None:
    """In a Pool worker: Pool.terminate()'s SIGTERM just ends it."""
    signal.signal(signal.SIGTERM, signal.SIG_DFL)


def _sigterm(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--engines", type=int, default=8)
    parser.add_argument(
        "--map-items", type=int, default=100_000, help="(a) items (default 100,000)"
    )
    parser.add_argument("--rounds", type=int, default=5, help="(a) rounds")
    parser.add_argument(
        "--items",
        type=int,
        default=FULL_ITEMS,
        help="(b) items of the generator (default 10,000,000)",
    )
    parser.add_argument(
        "--item-bytes",
        type=int,
        default=0,
        help="(b) items are new bytes objects of this size instead of ints",
    )
    parser.add_argument("--only", default="ab", help="parts to run: a, b or ab")
    args = parser.parse_args(argv)
    only = {c for c in args.only if c in "ab"}
    signal.signal(signal.SIGTERM, _sigterm)
    res = Result()
    load_before = os.getloadavg()
    watch = pb.CpuWatch()
    watch.start()
    stopped_by: BaseException | None = None
    started = 0.0
    tic = time.perf_counter()
    try:
        with contextlib.ExitStack() as stack:
            pb.say(f"starting paracell's cluster of {args.engines} ...")
            t0 = time.perf_counter()
            paracell.start(args.engines, force=True)
            stack.callback(pb._quietly, paracell.stop, "paracell.stop()")
            started = time.perf_counter() - t0
            pool = multiprocessing.get_context("fork").Pool(
                args.engines, initializer=_default_sigterm
            )
            stack.callback(pb._quietly, pool.join, "Pool.join()")
            stack.callback(pb._quietly, pool.terminate, "Pool.terminate()")
            pool.map(_work.double, range(100))
            paracell.pmap(_work.double, range(100), progress=False)
            if "a" in only:
                bench_a(pool, args.map_items, args.rounds, args.engines, res)
            if "b" in only:
                bench_b(args.items, args.engines, res, args.item_bytes)
            pb.say("stopping the cluster and the pool ...")
    except BaseException as err:
        stopped_by = err
    finally:
        watch.stop()
        left = pb.wait_for_no_leftovers()
        shutil.rmtree(pb.IPYTHONDIR, ignore_errors=True)
    elapsed = time.perf_counter() - tic
    others = watch.others_seconds()
    cpus = os.cpu_count() or 1
    now = datetime.datetime.now().astimezone()
    print(
        f"paracell scale benchmark, {args.engines} workers each;"
        f" {now:%Y-%m-%d %H:%M %Z}, {cpus} CPUs, {platform.system()}"
        f" {platform.machine()}; paracell {paracell.__version__}, ipyparallel"
        f" {ipp.__version__}, Python {platform.python_version()}"
    )
    print(
        f"load average (1 min) before/after: {load_before[0]:.2f}/"
        f"{os.getloadavg()[0]:.2f}; run took {elapsed:.0f} s; other processes"
        f" used {others:.0f} CPU s ({others / (elapsed * cpus):.0%} of the machine)"
        f"; paracell.start({args.engines}) took {started:.1f} s (not timed)"
    )
    print()
    if res.rows:
        cells = [["workload", "runner / measure", "value", "ratio vs ref", "note"]]
        pb._print_markdown([*cells, *res.rows], sys.stdout, right=frozenset({2, 3}))
    if res.checks:
        print()
        pb._print_markdown([["target", "measured", "verdict"], *res.checks], sys.stdout)
    for line in res.notes:
        print()
        print(line)
    for line in res.wrong:
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
    return 1 if (left or res.wrong) else 0


if __name__ == "__main__":
    sys.exit(main())
