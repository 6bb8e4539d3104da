"""What showing the items' output costs: a map whose items each print a line
against the same map silent, side by side in one run (goal: under 10 % more).

In one IPython shell and one 2-engine cluster: 2,000 items of 5 ms each,
with and without one ``print`` per item, the output shown as a terminal
shows it (a text progress line with the items' lines above it, the first 200
of them; the rest kept in ``job.output()``).

    .venv/bin/python benchmarks/output_bench.py [--rounds 3]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import statistics
import tempfile
import time

os.environ.setdefault("IPYTHONDIR", tempfile.mkdtemp(prefix="paracell-bench-"))
os.environ["PARACELL_WIDGETS"] = "0"

from IPython.testing.globalipapp import start_ipython

WORK = """
from time import perf_counter
def busy(i, seconds=0.005):
    end = perf_counter() + seconds
    while perf_counter() < end:
        pass
    return i
def chatty(i, seconds=0.005):
    print("item", i, "finished its work")
    return busy(i, seconds)
"""


def timed(ip: object, line: str) -> float:
    tic = time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()):
        ip.run_line_magic("pmap", line)  # type: ignore[attr-defined]
    return time.perf_counter() - tic


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--items", type=int, default=2000)
    args = parser.parse_args()
    ip = start_ipython()
    ip.run_line_magic("load_ext", "paracell")
    ip.run_line_magic("cluster", "start -n 2")
    try:
        ip.run_cell(WORK).raise_error()
        timed(ip, "busy(i) for i in range(200)")  # warm: names shipped
        silent, printing = [], []
        for _ in range(args.rounds):
            silent.append(timed(ip, f"busy(i) for i in range({args.items})"))
            printing.append(timed(ip, f"chatty(i) for i in range({args.items})"))
        a, b = statistics.median(silent), statistics.median(printing)
        print(f"{args.items} items of 5 ms on 2 engines, median of {args.rounds}:")
        print(f"  silent            {a:7.3f} s")
        print(f"  one line per item {b:7.3f} s   ratio {b / a:.3f} (goal < 1.10)")
    finally:
        ip.run_line_magic("cluster", "stop")


if __name__ == "__main__":
    main()
