"""paracell.pmap side by side with multiprocessing.Pool, raw ipyparallel and joblib.

Every runner gets 2 workers.  One run prints one table (wall time, and the
ratio to the workload's reference) followed by the target checks.

    .venv/bin/python benchmarks/pmap_bench.py [--quick] [--only a,b,c,d,e]

Workloads (the reference of each in brackets):
  a  200,000 trivial items (x * 2): per-item overhead          [Pool.map]
  b  12 CPU-bound items of ~0.2 s: speedup over one core       [sequential]
  c  40 items with exponential durations, mean 0.1 s: balance  [bound]
  d  a 200 MB global array read by 16 items: shipping it once  [Pool.map]
  e  paracell's text progress line on (b): its overhead        [progress=False]

Timings are medians over a few repeats where a run is cheap; the runners take
turns within each repeat.  Progress goes to stderr, the table to stdout.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import io
import multiprocessing
import os
import platform
import shutil
import signal
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

# Before ipyparallel or paracell is imported: a profile of our own, so the
# benchmark never touches ~/.ipython (and its processes are easy to find).
os.environ["IPYTHONDIR"] = tempfile.mkdtemp(prefix="paracell-pmap-bench-")
# Workers import the work functions from this folder's _work.py.
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import _work
import cloudpickle
import ipyparallel as ipp
import numpy as np

import paracell
from paracell.kernel_backend import default_session

try:
    import joblib
except ImportError:  # pragma: no cover - depends on the environment
    joblib = None

IPYTHONDIR = os.environ["IPYTHONDIR"]
IPYTHONDIR_ENTRY = f"IPYTHONDIR={IPYTHONDIR}".encode()
MY_PID = os.getpid()
HERE = os.path.dirname(os.path.abspath(__file__))
WORKERS = 2
WORKLOADS = "abcde"
BIG_ITEMS = 16

#: The array of workload (d).  A global of ``__main__`` read by a function
#: defined in ``__main__``: what a notebook does, and what paracell ships once
#: per engine.  Set by ``bench_d``.
BIG: np.ndarray | None = None


def use_big(i: int) -> float:
    """One item of workload (d): reads the global ``BIG`` (16 = BIG_ITEMS)."""
    return float(BIG[i::16].sum())  # type: ignore[index]


@dataclass(frozen=True)
class Sizes:
    trivial_items: int = 200_000
    ipp_subset: int = 2_000
    repeats_a: int = 5
    cpu_items: int = 12
    cpu_seconds: float = 0.2
    repeats_b: int = 5
    exp_items: int = 40
    exp_mean: float = 0.1
    exp_seed: int = 20240601
    repeats_c: int = 3
    big_elements: int = 25_000_000
    repeats_e: int = 7


FULL = Sizes()
QUICK = Sizes(
    trivial_items=20_000,
    ipp_subset=200,
    repeats_a=2,
    cpu_items=4,
    cpu_seconds=0.05,
    repeats_b=1,
    exp_items=12,
    exp_mean=0.03,
    repeats_c=1,
    big_elements=2_500_000,
    repeats_e=2,
)


# -- results -----------------------------------------------------------------


@dataclass
class Row:
    workload: str
    runner: str
    wall: float | None
    ref: float | None = None
    note: str = ""
    is_ref: bool = False


@dataclass
class Check:
    target: str
    measured: str
    ok: bool


@dataclass
class Report:
    rows: list[Row] = field(default_factory=list)
    checks: list[Check] = field(default_factory=list)
    header: list[str] = field(default_factory=list)
    wrong: list[str] = field(default_factory=list)

    def row(self, *args: Any, **kwargs: Any) -> None:
        self.rows.append(Row(*args, **kwargs))

    def check(self, target: str, measured: str, ok: bool) -> None:
        self.checks.append(Check(target, measured, ok))

    def print(self, out: Any = None) -> None:
        out = out or sys.stdout
        for line in self.header:
            print(line, file=out)
        print(file=out)
        cells = [["workload", "runner", "wall s", "ratio vs ref", "note"]]
        for r in self.rows:
            if r.is_ref:
                ratio = "1.00 (ref)"
            elif r.wall is not None and r.ref:
                ratio = f"{r.wall / r.ref:.2f}"
            else:
                ratio = "-"
            wall = "-" if r.wall is None else _fmt_seconds(r.wall)
            cells.append([r.workload, r.runner, wall, ratio, r.note])
        _print_markdown(cells, out, right=frozenset({2, 3}))
        if self.checks:
            print(file=out)
            cells = [["target", "measured", "verdict"]]
            cells += [
                [c.target, c.measured, "PASS" if c.ok else "MISS"] for c in self.checks
            ]
            _print_markdown(cells, out)
        if self.wrong:
            print(file=out)
            for line in self.wrong:
                print(f"FAILED: {line}", file=out)


def _fmt_seconds(s: float) -> str:
    return f"{s:.3f}" if s < 100 else f"{s:.0f}"


def _print_markdown(
    cells: list[list[str]], out: Any, right: frozenset[int] = frozenset()
) -> None:
    widths = [max(len(row[i]) for row in cells) for i in range(len(cells[0]))]

    def line(row: list[str]) -> str:
        parts = [
            c.rjust(w) if i in right else c.ljust(w)
            for i, (c, w) in enumerate(zip(row, widths, strict=True))
        ]
        return "| " + " | ".join(parts) + " |"

    print(line(cells[0]), file=out)
    rule = [
        "-" * (w + 1) + ":" if i in right else "-" * (w + 2)
        for i, w in enumerate(widths)
    ]
    print("|" + "|".join(rule) + "|", file=out)
    for row in cells[1:]:
        print(line(row), file=out)


def say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# -- runners -----------------------------------------------------------------


class Runners:
    """The peers' pools and clusters: started once, each stopped by ``stack``."""

    def __init__(self, stack: contextlib.ExitStack) -> None:
        self.stack = stack
        self.parallel: Any = None
        self.started: dict[str, float] = {}

    def start(self) -> None:
        say("starting paracell's cluster ...")
        tic = time.perf_counter()
        paracell.start(WORKERS)
        self.stack.callback(_quietly, paracell.stop, "paracell.stop()")
        self.started["paracell.start(2)"] = time.perf_counter() - tic
        self.session = default_session()

        say("starting a plain ipyparallel cluster ...")
        tic = time.perf_counter()
        cluster = ipp.Cluster(n=WORKERS, log_level=40)
        self.stack.callback(
            _quietly, cluster.stop_cluster_sync, "ipyparallel stop_cluster_sync()"
        )
        self.client = cluster.start_and_connect_sync()
        self.stack.callback(_quietly, self.client.close, "ipyparallel client.close()")
        self.client.wait_for_engines(WORKERS, timeout=120)
        self.started["ipyparallel Cluster(n=2).start_and_connect_sync()"] = (
            time.perf_counter() - tic
        )
        # The engines' cwd and sys.path do not include this folder.
        self.client[:].execute(f"import sys; sys.path.insert(0, {HERE!r})", block=True)
        self.dview = self.client[:]
        self.lview = self.client.load_balanced_view()

        self.pool = self.new_pool()

        if joblib is not None:
            self.parallel = joblib.Parallel(n_jobs=WORKERS)
            self.stack.callback(_quietly, _stop_loky, "joblib executor shutdown")
            # loky starts its workers on first use; keep that out of timings.
            self.parallel(joblib.delayed(_work.double)(i) for i in range(100))

    def new_pool(self) -> Any:
        pool = multiprocessing.get_context("fork").Pool(WORKERS)
        self.stack.callback(_quietly, pool.join, "Pool.join()")
        self.stack.callback(_quietly, pool.terminate, "Pool.terminate()")
        return pool


def _stop_loky() -> None:
    from joblib.externals.loky import get_reusable_executor

    get_reusable_executor().shutdown(wait=True)


def _quietly(func: Callable[[], Any], what: str) -> None:
    try:
        func()
    except Exception as err:  # keep stopping the other runners
        say(f"warning: {what} failed: {type(err).__name__}: {err}")


def timed(func: Callable[[], Any]) -> tuple[float, Any]:
    tic = time.perf_counter()
    value = func()
    return time.perf_counter() - tic, value


def _error_text(err: BaseException) -> str:
    elist = getattr(err, "elist", None)  # ipyparallel's CompositeError
    if elist:
        ename, evalue = elist[0][:2]
        text = f"{type(err).__name__}: {ename}: {evalue}"
    else:
        text = f"{type(err).__name__}: {err}"
    text = text.splitlines()[0] if text else type(err).__name__
    return text if len(text) <= 140 else text[:137] + "..."


@dataclass
class Timings:
    """Wall times per runner, and the error of a runner that failed."""

    label: str
    runs: dict[str, list[float]] = field(default_factory=dict)
    errors: dict[str, str] = field(default_factory=dict)

    def run(
        self, name: str, func: Callable[[], Any], expected: Any, report: Report
    ) -> Any:
        """Time ``func`` once; a failure is recorded, not raised."""
        if name in self.errors:
            return None
        try:
            seconds, value = timed(func)
        except Exception as err:
            self.errors[name] = _error_text(err)
            report.wrong.append(f"({self.label}) {name}: {self.errors[name]}")
            say(f"  [{self.label}] {name}: ERROR {self.errors[name]}")
            return None
        self.runs.setdefault(name, []).append(seconds)
        if list(value) != list(expected):
            report.wrong.append(f"({self.label}) {name}: wrong result")
        say(f"  [{self.label}] {name}: {seconds:.3f} s")
        return value

    def median(self, name: str) -> float | None:
        runs = self.runs.get(name)
        return statistics.median(runs) if runs and name not in self.errors else None

    def note(self, name: str) -> str:
        if name in self.errors:
            return f"ERROR {self.errors[name]}"
        runs = self.runs.get(name, [])
        if len(runs) == 1:
            return "1 run"
        return f"median of {len(runs)}, {min(runs):.3f}-{max(runs):.3f}"


def measure(
    label: str,
    runners: Sequence[tuple[str, Callable[[], Any]]],
    repeats: int,
    expected: list[Any],
    report: Report,
) -> Timings:
    """Run each runner ``repeats`` times, taking turns; check every result."""
    t = Timings(label)
    for rep in range(repeats):
        k = rep % len(runners)
        for name, func in [*runners[k:], *runners[:k]]:
            t.run(name, func, expected, report)
    return t


def pool_chunksize(n: int) -> int:
    """The chunksize Pool.map picks for ``n`` items (as in CPython's Pool)."""
    chunksize, extra = divmod(n, WORKERS * 4)
    return chunksize + 1 if extra else chunksize


def by_value_note() -> str:
    registry = getattr(cloudpickle, "list_registry_pickle_by_value", set)()
    return "; func shipped by value" if "_work" in registry else ""


def with_joblib(
    runners: list[tuple[str, Callable[[], Any]]],
    r: Runners,
    func: Callable[[Any], Any],
    items: Any,
    position: int,
) -> None:
    if r.parallel is not None:
        runners.insert(
            position,
            (
                "joblib.Parallel",
                lambda: r.parallel(joblib.delayed(func)(x) for x in items),
            ),
        )


# -- workloads ---------------------------------------------------------------


def bench_a(r: Runners, s: Sizes, report: Report) -> None:
    """Trivial items: the per-item overhead of each runner."""
    n = s.trivial_items
    items = range(n)
    w = f"a {n:,} trivial"
    say(f"(a) {n:,} trivial items")
    expected = [_work.double(x) for x in items]
    runners: list[tuple[str, Callable[[], Any]]] = [
        ("sequential", lambda: [_work.double(x) for x in items]),
        ("Pool.map", lambda: r.pool.map(_work.double, items)),
        ("paracell.pmap", lambda: paracell.pmap(_work.double, items, progress=False)),
    ]
    with_joblib(runners, r, _work.double, items, 2)
    t = measure("a", runners, s.repeats_a, expected, report)

    sub = range(s.ipp_subset)
    ipp_name = "ipyparallel lbview.map_sync"
    t.run(
        ipp_name,
        lambda: r.lview.map_sync(_work.double, sub),
        expected[: sub.stop],
        report,
    )
    ipp_sub = t.median(ipp_name)
    ipp_est = None if ipp_sub is None else ipp_sub * n / s.ipp_subset

    pc = t.median("paracell.pmap")
    diag = ""
    if pc is not None:
        # One more paracell run, not timed, to see how it chunked the map.
        job = paracell.pmap(_work.double, items, progress=False, block=False)
        job.result()
        engine_s = sum(c.seconds for c in job.chunks)
        diag = (
            f"; a further run used {len(job.chunks)} chunks,"
            f" {engine_s:.2f} s engine compute{by_value_note()}"
        )

    ref = t.median("Pool.map")
    for name, _ in runners:
        note = t.note(name)
        if name == "Pool.map":
            note += f"; chunksize {pool_chunksize(n)} (Pool's own)"
        elif name == "joblib.Parallel" and name not in t.errors:
            note += "; loky, auto batching"
        elif name == "paracell.pmap":
            note += diag
        report.row(w, name, t.median(name), ref, note, is_ref=name == "Pool.map")
        if name == "joblib.Parallel" or (name == "Pool.map" and r.parallel is None):
            report.row(
                w,
                ipp_name,
                ipp_est,
                ref,
                t.note(ipp_name)
                if ipp_sub is None
                else f"EXTRAPOLATED from {s.ipp_subset:,} items in {ipp_sub:.2f} s"
                f" (x{n / s.ipp_subset:g}); chunksize=1",
            )
    target = "a: paracell.pmap wall <= 1.5 x Pool.map"
    if pc is None or ref is None:
        report.check(target, "no measurement (error)", False)
    else:
        report.check(
            target, f"{pc / ref:.2f} x ({pc:.3f} s vs {ref:.3f} s)", pc <= 1.5 * ref
        )
    target = "a: paracell.pmap >= 100 x faster than raw ipyparallel (extrapolated)"
    if pc is None or ipp_est is None:
        report.check(target, "no measurement (error)", False)
    else:
        report.check(
            target,
            f"{ipp_est / pc:.0f} x ({ipp_est:.1f} s vs {pc:.3f} s)",
            ipp_est >= 100 * pc,
        )


_CALIBRATED: dict[float, int] = {}


def cpu_seconds(func: Callable[[], Any]) -> float:
    """CPU time of ``func`` in this process: unlike wall time, other work on
    the machine does not inflate it."""
    tic = time.process_time()
    func()
    return time.process_time() - tic


def calibrate(seconds: float) -> int:
    """Steps of ``_work.spin`` that take about ``seconds`` of CPU here."""
    if seconds not in _CALIBRATED:
        probe = 200_000
        best = min(cpu_seconds(lambda: _work.spin(probe)) for _ in range(3))
        steps = max(1, int(probe * seconds / best))
        # one check at full size, corrected once
        actual = min(cpu_seconds(lambda: _work.spin(steps)) for _ in range(2))
        _CALIBRATED[seconds] = max(1, int(steps * seconds / actual))
    return _CALIBRATED[seconds]


def bench_b(r: Runners, s: Sizes, report: Report) -> None:
    """CPU-bound items of equal size: the speedup over one core."""
    steps = calibrate(s.cpu_seconds)
    items = [steps] * s.cpu_items
    w = f"b {s.cpu_items}x{s.cpu_seconds:g}s CPU"
    say(f"(b) {s.cpu_items} CPU-bound items of {steps:,} loop steps")
    expected = [_work.spin(steps)] * s.cpu_items
    runners: list[tuple[str, Callable[[], Any]]] = [
        ("sequential", lambda: [_work.spin(x) for x in items]),
        ("Pool.map", lambda: r.pool.map(_work.spin, items)),
        ("ipyparallel lbview.map_sync", lambda: r.lview.map_sync(_work.spin, items)),
        ("paracell.pmap", lambda: paracell.pmap(_work.spin, items, progress=False)),
    ]
    with_joblib(runners, r, _work.spin, items, 2)
    t = measure("b", runners, s.repeats_b, expected, report)
    seq = t.median("sequential")
    pool = t.median("Pool.map")
    for name, _ in runners:
        note = t.note(name)
        wall = t.median(name)
        if wall is not None and seq is not None:
            if name == "sequential":
                note += f"; {seq / s.cpu_items:.3f} s per item"
            else:
                note += f"; speedup {seq / wall:.2f}"
        if name == "Pool.map":
            note += f"; chunksize {pool_chunksize(s.cpu_items)}"
        if name == "paracell.pmap" and wall is not None and pool is not None:
            note += f"; {wall / pool:.2f} x Pool.map"
        report.row(w, name, wall, seq, note, is_ref=name == "sequential")
    pc = t.median("paracell.pmap")
    target = "b: paracell.pmap speedup over sequential >= 1.8 (2 engines)"
    if pc is None or seq is None:
        report.check(target, "no measurement (error)", False)
    else:
        vs_pool = "" if pool is None else f"; {pc / pool:.2f} x Pool.map"
        report.check(
            target,
            f"{seq / pc:.2f} ({seq:.3f} s / {pc:.3f} s){vs_pool}",
            seq / pc >= 1.8,
        )


def bench_c(r: Runners, s: Sizes, report: Report) -> None:
    """Items of exponentially distributed duration: load balancing."""
    durations = np.random.default_rng(s.exp_seed).exponential(s.exp_mean, s.exp_items)
    items = [float(d) for d in durations]
    total, longest = sum(items), max(items)
    bound = total / WORKERS + longest
    w = f"c {s.exp_items} exp(mean {s.exp_mean:g}s)"
    say(
        f"(c) {s.exp_items} items, exponential durations: total {total:.2f} s,"
        f" longest {longest:.2f} s"
    )
    t = measure(
        "c", [("sequential", lambda: [_work.busy(x) for x in items])], 1, items, report
    )
    runners: list[tuple[str, Callable[[], Any]]] = [
        ("Pool.map", lambda: r.pool.map(_work.busy, items)),
        ("ipyparallel lbview.map_sync", lambda: r.lview.map_sync(_work.busy, items)),
        ("paracell.pmap", lambda: paracell.pmap(_work.busy, items, progress=False)),
    ]
    with_joblib(runners, r, _work.busy, items, 1)
    for rep in range(s.repeats_c):
        k = rep % len(runners)
        for name, func in [*runners[k:], *runners[:k]]:
            t.run(name, func, items, report)
    report.row(
        w,
        "bound: total/2 + longest",
        bound,
        bound,
        f"computed: total {total:.3f} s, longest {longest:.3f} s (no schedule beats"
        f" max(total/2, longest) = {max(total / WORKERS, longest):.3f} s);"
        f" seed {s.exp_seed}",
        is_ref=True,
    )
    report.row(
        w,
        "sequential",
        t.median("sequential"),
        bound,
        t.note("sequential") + "; = total work",
    )
    for name, _ in runners:
        note = t.note(name)
        if name == "Pool.map":
            note += f"; chunksize {pool_chunksize(s.exp_items)}"
        report.row(w, name, t.median(name), bound, note)
    pc = t.median("paracell.pmap")
    target = "c: paracell.pmap makespan within 15% of total/2 + longest"
    if pc is None:
        report.check(target, "no measurement (error)", False)
    else:
        report.check(
            target,
            f"{pc / bound:.3f} x ({pc:.3f} s vs {bound:.3f} s)",
            pc <= 1.15 * bound,
        )


def bench_d(r: Runners, s: Sizes, report: Report) -> None:
    """A large global array read by every item: shipped once per engine?"""
    global BIG
    BIG = np.ones(s.big_elements)
    nbytes = BIG.nbytes
    mb = nbytes / 1e6
    w = f"d {mb:.0f} MB global"
    say(f"(d) a {mb:.0f} MB global array, {BIG_ITEMS} items")
    items = range(BIG_ITEMS)
    t = Timings("d")
    expected = [use_big(i) for i in items]
    sent: list[int] = []  # through the controller, per paracell map
    shared: list[int] = []  # into shared memory
    try:
        t.run("sequential", lambda: [use_big(i) for i in items], expected, report)
        # A pool forked now inherits BIG; use_big travels by reference.
        pool = r.new_pool()
        pool.map(int, range(WORKERS))  # workers up before timing
        shipper = r.session.shipper

        def ipp_first() -> Any:
            r.dview.push({"BIG": BIG}, block=True)
            return r.lview.map_sync(use_big, items)

        def paracell_map() -> Any:
            before = shipper.bytes_sent, shipper.bytes_shared
            value = paracell.pmap(use_big, items, progress=False)
            sent.append(shipper.bytes_sent - before[0])
            shared.append(shipper.bytes_shared - before[1])
            return value

        maps: list[tuple[str, Callable[[], Any]]] = [
            ("Pool.map", lambda: pool.map(use_big, items)),
            ("ipyparallel lbview.map_sync", ipp_first),
            ("paracell.pmap", paracell_map),
        ]
        if r.parallel is not None:
            maps.insert(
                1,
                (
                    "joblib.Parallel",
                    lambda: r.parallel(joblib.delayed(use_big)(i) for i in items),
                ),
            )
        for name, first in maps:
            second = first
            if name == "ipyparallel lbview.map_sync":
                second = lambda: r.lview.map_sync(use_big, items)  # noqa: E731
            for k, func in enumerate((first, second)):
                t.run(f"{name} (map {k + 1})", func, expected, report)
    finally:
        BIG = None
        with contextlib.suppress(Exception):
            r.dview.execute("BIG = None", block=True)

    notes = {
        "Pool.map": (
            "fork after BIG was set: inherited, nothing pickled",
            "same",
        ),
        "joblib.Parallel": (
            "use_big cloudpickled with BIG; joblib auto-memmaps the array (>1 MB)",
            "same as map 1",
        ),
        "ipyparallel lbview.map_sync": (
            "BIG pushed once with client[:].push (counted here), then the map",
            "BIG already on the engines",
        ),
        "paracell.pmap": tuple(
            f"{b / 1e6:.3f} MB into shared memory, {w / 1e6:.3f} MB through"
            " the controller"
            for b, w in zip(shared, sent, strict=True)
        ),
    }
    ref = t.median("Pool.map (map 1)")
    report.row(w, "sequential", t.median("sequential"), ref, t.note("sequential"))
    for name, _ in maps:
        for k in range(2):
            runner = f"{name} (map {k + 1})"
            note = t.note(runner)
            if runner not in t.errors and k < len(notes[name]):
                note = f"{note}; {notes[name][k]}"
            report.row(
                w,
                runner,
                t.median(runner),
                ref,
                note,
                is_ref=runner == "Pool.map (map 1)",
            )
    target = (
        f"d: paracell's first map writes {mb:.0f} MB into shared memory once,"
        " ~0 through the controller"
    )
    if not sent:
        report.check(target, "no measurement (error)", False)
    else:
        report.check(
            target,
            f"{shared[0] / 1e6:.1f} MB shared, {sent[0] / 1e6:.3f} MB sent",
            0.99 * nbytes <= shared[0] <= 1.01 * nbytes and sent[0] <= 0.01 * nbytes,
        )
    target = "d: paracell's second identical map moves ~0 bytes"
    if len(sent) < 2:
        report.check(target, "no measurement (error)", False)
    else:
        moved = sent[1] + shared[1]
        report.check(target, f"{moved:,} bytes", moved <= 0.01 * nbytes)
    for k, limit in ((1, 2.0), (2, 1.3)):
        pc = t.median(f"paracell.pmap (map {k})")
        pool = t.median(f"Pool.map (map {k})")
        target = f"d: paracell's map {k} <= {limit:g} x Pool.map's map {k}"
        if pc is None or pool is None:
            report.check(target, "no measurement (error)", False)
        else:
            report.check(
                target,
                f"{pc / pool:.2f} x ({pc:.3f} s vs {pool:.3f} s)",
                pc <= limit * pool,
            )


def bench_e(r: Runners, s: Sizes, report: Report) -> None:
    """paracell's text progress line: what it costs on workload (b)."""
    steps = calibrate(s.cpu_seconds)
    items = [steps] * s.cpu_items
    w = f"e progress, b's {s.cpu_items}x{s.cpu_seconds:g}s"
    say(f"(e) progress=True vs progress=False on (b), {s.repeats_e} repeats")
    expected = [_work.spin(steps)] * s.cpu_items
    captured: list[str] = []

    def with_progress() -> Any:
        buf = io.StringIO()
        with contextlib.redirect_stdout(buf):
            value = paracell.pmap(_work.spin, items, progress=True)
        captured.append(buf.getvalue())
        return value

    off_name, on_name = "paracell.pmap progress=False", "paracell.pmap progress=True"
    runners: list[tuple[str, Callable[[], Any]]] = [
        (off_name, lambda: paracell.pmap(_work.spin, items, progress=False)),
        (on_name, with_progress),
    ]
    t = measure("e", runners, s.repeats_e, expected, report)
    off, on = t.median(off_name), t.median(on_name)
    report.row(w, off_name, off, off, t.note(off_name), is_ref=True)
    note = t.note(on_name)
    if captured:
        redraws = statistics.median(out.count("\r") for out in captured)
        last = captured[-1].strip().rsplit("\r", 1)[-1].strip()
        note += f"; stdout to StringIO: {redraws:.0f} redraws per map, last {last!r}"
    report.row(w, on_name, on, off, note)
    target = "e: progress=True overhead < 2% (medians)"
    if on is None or off is None:
        report.check(target, "no measurement (error)", False)
    else:
        report.check(
            target,
            f"{(on / off - 1) * 100:+.1f}% ({on:.3f} s vs {off:.3f} s)",
            on < 1.02 * off,
        )


BENCHES = {"a": bench_a, "b": bench_b, "c": bench_c, "d": bench_d, "e": bench_e}


# -- is the machine quiet? ----------------------------------------------------


class CpuWatch(threading.Thread):
    """CPU time used by processes that are not this run's, sampled from /proc.

    Ours are this process's descendants and every process started with this
    run's IPYTHONDIR (engines, controllers, loky workers).  On a 2-core
    machine anything else using CPU skews the timings; the report says how
    much there was.
    """

    def __init__(self, period: float = 1.0) -> None:
        super().__init__(name="cpu-watch", daemon=True)
        self.period = period
        self.enabled = os.path.isdir("/proc")
        self._tick = os.sysconf("SC_CLK_TCK") if self.enabled else 100
        self._stop_event = threading.Event()
        self._lock = threading.Lock()
        self._ours: dict[int, bool] = {}
        self._last: dict[int, int] = {}
        self._others = 0
        self._hogs: dict[str, int] = {}
        self._labels: dict[int, str] = {}
        if self.enabled:
            for pid, (_, ticks, _) in self._read().items():
                self._last[pid] = ticks  # work done before the run is not counted

    def others_seconds(self) -> float:
        """CPU seconds used by other processes since the watch began."""
        if self.enabled:
            self._sample()
        with self._lock:
            return self._others / self._tick

    def top_others(self, n: int = 3) -> list[str]:
        with self._lock:
            top = sorted(self._hogs.items(), key=lambda kv: -kv[1])[:n]
        return [f"{name} {ticks / self._tick:.1f} s" for name, ticks in top]

    def run(self) -> None:
        while not self._stop_event.wait(self.period):
            self._sample()

    def stop(self) -> None:
        self._stop_event.set()

    def _read(self) -> dict[int, tuple[int, int, str]]:
        procs = {}
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                with open(f"/proc/{entry}/stat", "rb") as f:
                    raw = f.read().decode(errors="replace")
            except OSError:
                continue
            comm = raw[raw.find("(") + 1 : raw.rfind(")")]
            fields = raw[raw.rfind(")") + 2 :].split()
            # fields[1] is ppid, [11] utime, [12] stime (stat(5), from field 3)
            procs[int(entry)] = (
                int(fields[1]),
                int(fields[11]) + int(fields[12]),
                comm,
            )
        return procs

    def _is_ours(self, pid: int, procs: dict[int, tuple[int, int, str]]) -> bool:
        if pid in self._ours:
            return self._ours[pid]
        ours = False
        p = pid
        for _ in range(64):  # walk up to this process, or to init
            if p == MY_PID:
                ours = True
                break
            if p not in procs or p <= 1:
                break
            p = procs[p][0]
        if not ours:
            with (
                contextlib.suppress(OSError),
                open(f"/proc/{pid}/environ", "rb") as f,
            ):
                ours = IPYTHONDIR_ENTRY in f.read().split(b"\0")
        self._ours[pid] = ours
        return ours

    def _sample(self) -> None:
        procs = self._read()
        with self._lock:
            for pid, (_, ticks, comm) in procs.items():
                if self._is_ours(pid, procs):
                    continue
                used = max(0, ticks - self._last.get(pid, 0))
                self._last[pid] = ticks
                if used:
                    self._others += used
                    label = self._labels.get(pid) or self._label(pid, comm)
                    self._hogs[label] = self._hogs.get(label, 0) + used

    def _label(self, pid: int, comm: str) -> str:
        cmd = ""
        with contextlib.suppress(OSError), open(f"/proc/{pid}/cmdline", "rb") as f:
            cmd = " ".join(f.read().decode(errors="replace").replace("\0", " ").split())
        label = f"{cmd[:60] or comm} [{pid}]"
        self._labels[pid] = label
        return label


# -- processes left behind ---------------------------------------------------


def leftover_processes() -> list[str]:
    """Processes started with our IPYTHONDIR (engines, controllers, workers)."""
    found = [
        f"{p.pid} {p.name}"
        for p in multiprocessing.active_children()
        if "resource_tracker" not in p.name
    ]
    if not os.path.isdir("/proc"):
        return found
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            with open(f"/proc/{entry}/environ", "rb") as f:
                if IPYTHONDIR_ENTRY not in f.read().split(b"\0"):
                    continue
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                cmd = f.read().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if "resource_tracker" in cmd:
            # multiprocessing's and loky's trackers: they end with this process
            continue
        found.append(f"{entry} {cmd.strip()}")
    return found


def wait_for_no_leftovers(timeout: float = 15.0) -> list[str]:
    deadline = time.monotonic() + timeout
    while (left := leftover_processes()) and time.monotonic() < deadline:
        time.sleep(0.25)
    return left


# -- main --------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=(__doc__ or "").splitlines()[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="\n".join((__doc__ or "").splitlines()[7:13]),
    )
    parser.add_argument(
        "--quick", action="store_true", help="small sizes: a smoke run (~30 s)"
    )
    parser.add_argument(
        "--only",
        default=WORKLOADS,
        help="workloads to run, e.g. 'a,b' (default: all of a,b,c,d,e)",
    )
    args = parser.parse_args(argv)
    chosen = {part.strip() for part in args.only.replace(",", " ").split()}
    chosen = {c for part in chosen for c in part}  # also accept "abd"
    unknown = sorted(chosen - set(WORKLOADS))
    if unknown or not chosen:
        parser.error(f"--only takes letters of {','.join(WORKLOADS)}, not {args.only}")
    args.only = [w for w in WORKLOADS if w in chosen]
    return args


def _sigterm(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    sizes = QUICK if args.quick else FULL
    signal.signal(signal.SIGTERM, _sigterm)
    report = Report()
    load_before = os.getloadavg()
    stopped_by: BaseException | None = None
    runners: Runners | None = None
    watch = CpuWatch()
    watch.start()
    quiet: dict[str, tuple[float, float]] = {}  # workload -> (others' CPU s, wall s)
    tic = time.perf_counter()
    try:
        with contextlib.ExitStack() as stack:
            runners = Runners(stack)
            runners.start()
            for key in args.only:
                cpu0, wall0 = watch.others_seconds(), time.perf_counter()
                BENCHES[key](runners, sizes, report)
                quiet[key] = (
                    watch.others_seconds() - cpu0,
                    time.perf_counter() - wall0,
                )
            say("stopping clusters and pools ...")
    except BaseException as err:
        stopped_by = err
    finally:
        watch.stop()
        left = wait_for_no_leftovers()
        shutil.rmtree(IPYTHONDIR, ignore_errors=True)
    elapsed = time.perf_counter() - tic
    load_after = os.getloadavg()

    versions = [
        f"paracell {paracell.__version__}",
        f"ipyparallel {ipp.__version__}",
        f"numpy {np.__version__}",
        f"joblib {joblib.__version__}" if joblib is not None else "joblib MISSING",
        f"Python {platform.python_version()}",
    ]
    report.header = [
        f"paracell pmap benchmark, {WORKERS} workers each"
        f"{' (--quick)' if args.quick else ''}, workloads {','.join(args.only)}",
        f"{datetime.datetime.now().astimezone():%Y-%m-%d %H:%M %Z},"
        f" {os.cpu_count()} CPUs, {platform.system()} {platform.machine()};"
        f" {', '.join(versions)}",
        "load average (1 min) before/after: "
        f"{load_before[0]:.2f}/{load_after[0]:.2f}; run took {elapsed:.0f} s",
    ]
    if watch.enabled and quiet:
        cpus = os.cpu_count() or 1
        share = {k: cpu / (wall * cpus) for k, (cpu, wall) in quiet.items()}
        report.header.append(
            "CPU used by other processes (share of all CPUs) while each ran: "
            + ", ".join(
                f"{k} {cpu:.1f} s ({share[k]:.0%})" for k, (cpu, _) in quiet.items()
            )
            + (f"; most: {', '.join(watch.top_others())}" if watch.top_others() else "")
        )
        busy = [k for k, v in share.items() if v > 0.05]
        if busy:
            report.header.append(
                f"WARNING: the machine was not quiet during {','.join(busy)}:"
                " those timings are skewed by other work"
            )
    if runners is not None and runners.started:
        report.header.append(
            "cluster start (not in any timing): "
            + "; ".join(f"{k} {v:.2f} s" for k, v in runners.started.items())
        )
    if args.quick:
        report.header.append(
            "--quick: sizes far below the targets' workloads; verdicts are"
            " indicative only"
        )
    if joblib is None:
        report.header.append(
            "joblib is not installed: the joblib runner is skipped"
            " (.venv/bin/pip install joblib)"
        )
    report.print()
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
    return 1 if (left or report.wrong) else 0


if __name__ == "__main__":
    if joblib is None:
        say("joblib is not installed: skipping the joblib column (pip install joblib)")
    sys.exit(main())
