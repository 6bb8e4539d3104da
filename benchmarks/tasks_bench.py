"""``%%parallel --tasks`` against running the same cell sequentially.

On one warm 2-engine cluster, four cells, each run as a task graph
(``paracell.parallel(code, tasks=True, block=True)``), top to bottom in this
process, and as one ``%%parallel --block`` job (the whole cell on one engine):

* **four+combine**: four independent 1 s statements and one combining them
  (bound on 2 engines: 2 s; sequential: 4 s; target: under 2.4 s);
* **diamond**: ``a``; ``b`` and ``c`` from ``a``; ``d`` from both (0.5 s each);
* **chain**: five 0.2 s statements, each reading the one before (no gain to
  expect: this measures the overhead);
* **fan-out**: 40 independent 20 ms statements and a sum of them.

The statements sleep (``time.sleep``) rather than compute, so the numbers
measure scheduling, not how busy the machine's two cores are.  Then the
per-statement overhead on the warm cluster: a chain of 100 trivial
statements (each waits for the one before: one full round trip each) and
100 independent trivial statements.

    .venv/bin/python benchmarks/tasks_bench.py [--repeats 3]
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time

os.environ.setdefault("IPYTHONDIR", tempfile.mkdtemp(prefix="paracell-bench-"))

import paracell
from paracell.kernel_backend import analyze_cell
from paracell.kernel_backend._taskbackends import run_sequentially


def work(seconds: float, *inputs: float) -> float:
    """Stand-in for a statement's work: takes ``seconds``."""
    time.sleep(seconds)
    return seconds + sum(inputs)


CELLS = {
    "four+combine": (
        "a = work(1.0)\nb = work(1.0)\nc = work(1.0)\nd = work(1.0)\n"
        "total = work(0.0, a, b, c, d)\n"
    ),
    "diamond": (
        "a = work(0.5)\nb = work(0.5, a)\nc = work(0.5, a)\nd = work(0.5, b, c)\n"
    ),
    "chain": "".join(
        f"x{i} = work(0.2{', x' + str(i - 1) if i else ''})\n" for i in range(5)
    ),
    "fan-out": "".join(f"y{i} = work(0.02)\n" for i in range(40))
    + f"total = sum([{', '.join(f'y{i}' for i in range(40))}])\n",
}
TRIVIAL_CHAIN = "v = 0\n" + "v = v + 1\n" * 99
TRIVIAL_FAN = "".join(f"u{i} = {i}\n" for i in range(100))


def as_tasks(code: str) -> tuple[float, float]:
    """Wall time of a task-graph run, and its planned makespan."""
    ns = {"work": work}
    tic = time.perf_counter()
    job = paracell.parallel(code, tasks=True, namespace=ns)
    paracell.wait(job)
    wall = time.perf_counter() - tic
    planned = max(p.end for p in job.timeline().planned)
    return wall, planned


def sequentially(code: str) -> float:
    ns = {"work": work}
    tic = time.perf_counter()
    run_sequentially(analyze_cell(code), ns)
    return time.perf_counter() - tic


def one_job(code: str) -> float:
    ns = {"work": work}
    tic = time.perf_counter()
    paracell.parallel(code, block=True, namespace=ns)
    return time.perf_counter() - tic


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    before = os.getloadavg()[0]
    started = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    report = paracell.start(2)
    print(f"{started}, {os.cpu_count()} CPUs; {report}")
    try:
        rows = []
        for label, code in CELLS.items():
            as_tasks(code)  # warm up; the costs it measures plan the next runs
            tasks, planned, seq, job = [], [], [], []
            for _ in range(args.repeats):
                wall, plan = as_tasks(code)
                tasks.append(wall)
                planned.append(plan)
                seq.append(sequentially(code))
                job.append(one_job(code))
            rows.append(
                (
                    label,
                    statistics.median(seq),
                    statistics.median(job),
                    statistics.median(tasks),
                    statistics.median(planned),
                    (min(tasks), max(tasks)),
                )
            )
        print(f"\n2 engines, median of {args.repeats}, seconds")
        print(
            f"{'cell':14}{'sequential':>11}{'one job':>9}{'--tasks':>9}"
            f"{'planned':>9}{'tasks/seq':>11}  range of --tasks"
        )
        for label, seq_s, job_s, tasks_s, plan_s, (lo, hi) in rows:
            print(
                f"{label:14}{seq_s:11.3f}{job_s:9.3f}{tasks_s:9.3f}{plan_s:9.3f}"
                f"{tasks_s / seq_s:11.2f}  {lo:.3f}-{hi:.3f}"
            )
        overhead(args.repeats)
        moving(args.repeats)
        four = rows[0][3]
        verdict = "PASS" if four < 2.4 else "MISS"
        print(f"\ntarget four+combine under 2.4 s: {four:.3f} s {verdict}")
        after = os.getloadavg()[0]
        print(f"load average (1 min) before/after: {before:.2f}/{after:.2f}")
    finally:
        paracell.stop()


def overhead(repeats: int) -> None:
    """Per statement: a chain of 100 trivial ones, and 100 independent ones;
    beside them, ipyparallel's own round trip for a trivial function.

    "in the run": from the first statement's start to the last one's end,
    over 100 (what each statement adds once the job runs); "whole job": wall
    time over 100, submitting and bringing the names back included."""
    from paracell.kernel_backend import default_session

    print("\nper-statement overhead, 100 trivial statements, warm cluster")
    engine = default_session().client[0]
    trips = []
    for _ in range(100):
        tic = time.perf_counter()
        engine.apply_sync(int)
        trips.append(time.perf_counter() - tic)
    raw = statistics.median(trips) * 1e3
    print(f"  ipyparallel apply_sync(int) round trip: {raw:.2f} ms (reference)")
    print(f"  {'':24}{'in the run':>12}{'whole job':>11}")
    for label, code in (("chain", TRIVIAL_CHAIN), ("independent", TRIVIAL_FAN)):
        as_tasks(code)
        spans, walls = [], []
        for _ in range(repeats):
            tic = time.perf_counter()
            job = paracell.parallel(code, tasks=True, namespace={})
            paracell.wait(job)
            walls.append(time.perf_counter() - tic)
            runs = job.statements
            first = min(r.started for r in runs)
            last = max(r.started + r.seconds for r in runs)
            spans.append(last - first)
        run_ms = statistics.median(spans) / 100 * 1e3
        job_ms = statistics.median(walls) / 100 * 1e3
        verdict = "PASS" if run_ms < 15 else "MISS"
        print(
            f"  {label:24}{run_ms:9.2f} ms{job_ms:8.2f} ms"
            f"   target < 15 ms in the run: {verdict}"
        )


MOVING = (
    "%s = np.ones(10_000_000)\n"  # 80 MB, made on one engine
    "hold = (time.sleep(0.5), len(%s))[1]\n"  # keeps that engine busy
    "total = float(np.sum(%s))\n"  # so this runs on the other one
)


def moving(repeats: int) -> None:
    """An 80 MB array to the other engine: fetched directly from the engine
    that made it, against through the notebook (a getter applied on that
    engine, then the array sent on with the statement)."""
    import functools

    import numpy as np

    from paracell.kernel_backend import _taskjob

    print("\nan 80 MB array moved to the other engine, median of", repeats)
    direct_runner = _taskjob.TaskRunner
    for label, runner in (
        ("engine to engine", direct_runner),
        ("through the notebook", functools.partial(direct_runner, direct=False)),
    ):
        _taskjob.TaskRunner = runner  # type: ignore[misc]
        waits, walls, through = [], [], []
        try:
            for round_ in range(repeats + 1):
                name = f"big{round_}"  # a new statement: no cost known, no bias
                tic = time.perf_counter()
                job = paracell.parallel(
                    MOVING % (name, name, name),
                    tasks=True,
                    namespace={"np": np, "time": time},
                    out=["total"],
                )
                paracell.wait(job)
                wall = time.perf_counter() - tic
                last = job.statements[2]
                assert last.engine != job.statements[0].engine, "not moved"
                if round_:  # the first warms the engines up
                    walls.append(wall)
                    waits.append(last.started + last.fetch_seconds - last.sent)
                    through.append(job.kernel_bytes)
        finally:
            _taskjob.TaskRunner = direct_runner  # type: ignore[misc]
        print(
            f"  {label:22} sent to running: {statistics.median(waits):.3f} s,"
            f" job {statistics.median(walls):.3f} s,"
            f" {statistics.median(through) / 1e6:.1f} MB through the notebook"
        )


if __name__ == "__main__":
    main()
