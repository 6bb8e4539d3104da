"""What the live progress widget costs a CPU-bound ``%pmap``, in a real kernel.

A Jupyter kernel (jupyter_client) runs the same CPU-bound map, 12 items of
about 0.2 s on 2 engines, alternately with ``--no-progress`` and with the
progress widget (the kernel has a widget front end's comm channel, so the
widget really sends its updates).  Reported: median wall time of each, the
ratio, the kernel process's CPU seconds per map, and how many widget
messages one map sent.

    .venv/bin/python benchmarks/widget_bench.py [--repeats 7]

Target (issue: widgets): the widget adds under 2 % to the map's wall time.
"""

from __future__ import annotations

import argparse
import os
import queue
import statistics
import sys
import tempfile

import psutil
from jupyter_client.manager import KernelManager

SETUP = """
%load_ext paracell
%cluster start -n 2
import time

def spin(n):
    total = 0
    for i in range(n):
        total += i * i % 7
    return total

def calibrate(seconds):
    n, t = 100_000, 0.0
    while t < 0.05:
        n *= 2
        tic = time.perf_counter(); spin(n); t = time.perf_counter() - tic
    return int(n * seconds / t)

N = calibrate(0.2)
"""

TIMED = """
_tic = time.perf_counter()
_r = %pmap {flags} spin(N) for _ in range(12)
_elapsed = time.perf_counter() - _tic
print(repr(_elapsed))
"""


class Kernel:
    def __init__(self) -> None:
        self.manager = KernelManager(kernel_name="python3")
        self.manager.start_kernel()
        self.client = self.manager.client()
        self.client.start_channels()
        self.client.wait_for_ready(timeout=60)
        self.process = psutil.Process(self.manager.provisioner.process.pid)  # type: ignore[union-attr]

    def run(self, code: str) -> tuple[str, int]:
        """Run ``code``; its stdout and how many widget messages it sent."""
        msg_id = self.client.execute(code)
        stdout, comms = "", 0
        while True:
            try:
                msg = self.client.get_iopub_msg(timeout=300)
            except queue.Empty:
                raise TimeoutError(code) from None
            if msg["parent_header"].get("msg_id") != msg_id:
                if msg["msg_type"].startswith("comm"):
                    comms += 1
                continue
            kind = msg["msg_type"]
            if kind.startswith("comm"):
                comms += 1
            elif kind == "stream" and msg["content"]["name"] == "stdout":
                stdout += msg["content"]["text"]
            elif kind == "error":
                raise RuntimeError("\n".join(msg["content"]["traceback"]))
            elif kind == "status" and msg["content"]["execution_state"] == "idle":
                break
        self.client.get_shell_msg(timeout=60)
        return stdout, comms

    def cpu(self) -> float:
        times = self.process.cpu_times()
        return times.user + times.system

    def close(self) -> None:
        self.run("%cluster stop")
        self.client.stop_channels()
        self.manager.shutdown_kernel(now=False)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()
    os.environ.setdefault("IPYTHONDIR", tempfile.mkdtemp(prefix="paracell-bench-"))
    kernel = Kernel()
    try:
        kernel.run(SETUP)
        kernel.run(TIMED.format(flags="--no-progress"))  # warm: names shipped
        runs: dict[str, list[float]] = {"none": [], "widget": []}
        cpu: dict[str, list[float]] = {"none": [], "widget": []}
        comms: list[int] = []
        for _ in range(args.repeats):
            for name, flags in (("none", "--no-progress"), ("widget", "")):
                before = kernel.cpu()
                out, sent = kernel.run(TIMED.format(flags=flags))
                cpu[name].append(kernel.cpu() - before)
                runs[name].append(float(out.strip().splitlines()[-1]))
                if name == "widget":
                    comms.append(sent)
    finally:
        kernel.close()
    none, widget = statistics.median(runs["none"]), statistics.median(runs["widget"])
    overhead = widget / none - 1
    print(f"CPU-bound %pmap, 12 items x 0.2 s, 2 engines, {args.repeats} repeats")
    print(f"  --no-progress   median {none:.3f} s  runs {_fmt(runs['none'])}")
    print(f"  widget          median {widget:.3f} s  runs {_fmt(runs['widget'])}")
    print(f"  widget / none = {widget / none:.4f}  (overhead {overhead:+.2%})")
    print(
        f"  kernel CPU per map: none {statistics.median(cpu['none']):.3f} s,"
        f" widget {statistics.median(cpu['widget']):.3f} s"
    )
    print(f"  widget messages per map: median {statistics.median(comms):.0f}")
    verdict = "PASS" if overhead < 0.02 else "MISS"
    print(f"  target: overhead under 2 %: {verdict}")
    sys.exit(0)


def _fmt(values: list[float]) -> str:
    return ", ".join(f"{v:.3f}" for v in values)


if __name__ == "__main__":
    main()
