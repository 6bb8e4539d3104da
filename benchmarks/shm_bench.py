"""A 200 MB numpy global to local engines: shared memory against Pool.map.

Workload (d) of ``pmap_bench.py`` in detail, repeated: every round makes a
fresh array (``np.full(25_000_000, round)``) read as a global by 16 items
(``float(BIG[i::16].sum())``) and maps it twice, side by side with

* ``multiprocessing.Pool(2).map``, the pool forked after the array exists
  (its workers inherit it: nothing is copied; the fork is not timed),
* paracell with shared memory (the default for engines on this machine),
* paracell with ``PARACELL_SHARED_MEMORY=0``: the array sent through the
  controller to each engine, the path remote engines take.

Both paracell clusters run at once (2 engines each, idle when not timed).
The first map of a round ships the new array, the second finds it on the
engines (its digest still read).  Medians over the rounds; the runners take
turns within each round.  ``--parts`` also times the pieces of the first map
(digest, writing the segment, an engine mapping and reading it).

``--cells`` adds a third paracell cluster driven the way a notebook drives
it: an IPython shell with the extension loaded, the new array assigned in
a cell of its own (at whose end the engines let go of the old one), then
``%pmap`` timed as a cell.  Between the two cells the script waits until
the engines have answered a no-op, as a person's pause between cells would.

    .venv/bin/python benchmarks/shm_bench.py [--rounds 5] [--parts] [--cells]
"""

from __future__ import annotations

import argparse
import glob
import multiprocessing
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from functools import partial
from typing import Any

os.environ.setdefault("IPYTHONDIR", tempfile.mkdtemp(prefix="paracell-bench-"))

import numpy as np

from paracell.kernel_backend import ClusterSession, MapOptions, map_function

ITEMS = 16
ELEMENTS = 25_000_000
BIG: np.ndarray | None = None


def use_big(i: int) -> float:
    return float(BIG[i::ITEMS].sum())  # type: ignore[index]


def timed(func: Callable[[], Any]) -> tuple[float, Any]:
    tic = time.perf_counter()
    value = func()
    return time.perf_counter() - tic, value


def paracell_map(session: ClusterSession) -> list[float]:
    return map_function(session, use_big, range(ITEMS), MapOptions()).result()


SHELL_MAP = "_got = %pmap --no-progress use_big(i) for i in range(ITEMS)"


def start_shell() -> Any:
    """An IPython shell with paracell loaded and its own 2-engine cluster."""
    from IPython.testing.globalipapp import start_ipython

    ip = start_ipython()
    ip.run_line_magic("load_ext", "paracell")
    ip.run_line_magic("cluster", "start -n 2")
    ip.run_cell(
        f"ITEMS = {ITEMS}\ndef use_big(i):\n    return float(BIG[i::ITEMS].sum())"
    ).raise_error()
    ip.user_ns["_bench_new"] = lambda: BIG
    return ip


def shell_new_array(ip: Any) -> None:
    """The round's array assigned in a cell, then a pause for the engines."""
    from paracell.kernel_backend import default_session

    ip.run_cell("BIG = _bench_new()").raise_error()
    default_session().client[:].apply_sync(int)


def shell_map(ip: Any) -> list[float]:
    ip.run_cell(SHELL_MAP).raise_error()
    return ip.user_ns.pop("_got")  # type: ignore[no-any-return]


def moved_bytes(session: ClusterSession) -> int:
    """Bytes sent through the controller plus bytes written to shared memory."""
    return session.shipper.bytes_sent + session.shipper.bytes_shared


def start(shared: bool) -> ClusterSession:
    session = ClusterSession()
    if shared:
        os.environ.pop("PARACELL_SHARED_MEMORY", None)
    else:
        os.environ["PARACELL_SHARED_MEMORY"] = "0"
    try:
        session.start(2)
    finally:
        os.environ.pop("PARACELL_SHARED_MEMORY", None)
    return session


def parts(session: ClusterSession) -> None:
    """The pieces of a first map, each timed alone (medians of 5)."""
    import xxhash

    from paracell.kernel_backend._sharedmem import SharedArrays

    array = np.full(ELEMENTS, 3.0)
    rows: dict[str, list[float]] = {}

    def add(label: str, seconds: float) -> None:
        rows.setdefault(label, []).append(seconds)

    for _ in range(5):
        add("XXH3-128 digest", timed(partial(xxhash.xxh3_128, array.data))[0])
        add("np.copy (anonymous memory)", timed(array.copy)[0])
        shared = SharedArrays("/dev/shm", "bench")
        seconds, segment = timed(partial(shared.segment, "x", array, array))
        add(f"os.write into {len(segment.paths)} /dev/shm file(s)", seconds)
        add("copy into multiprocessing SharedMemory", timed(partial(_into, array))[0])
        add(
            "map the segment, read 1/16 (page faults)",
            timed(partial(_read, segment))[0],
        )
        add("read 1/16 of anonymous memory", timed(array[::ITEMS].sum)[0])
        shared.close()
    print(f"\npieces, {array.nbytes / 1e6:.0f} MB, median of 5 (ms)")
    for label, times in rows.items():
        print(f"  {label:44}{statistics.median(times) * 1e3:8.1f}")


def _into(array: np.ndarray) -> None:
    from multiprocessing import shared_memory

    block = shared_memory.SharedMemory(create=True, size=array.nbytes)
    np.ndarray(array.shape, array.dtype, buffer=block.buf)[:] = array
    block.close()
    block.unlink()


def _read(segment: Any) -> float:
    from paracell.kernel_backend._enginesegments import map_segment

    return float(map_segment(segment)[::ITEMS].sum())


def main() -> None:
    global BIG
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--parts", action="store_true")
    parser.add_argument("--cells", action="store_true")
    args = parser.parse_args()
    shm = start(shared=True)
    wire = start(shared=False)
    ip = start_shell() if args.cells else None
    times: dict[str, list[float]] = {}
    moved: dict[str, list[int]] = {}
    try:
        for r in range(args.rounds):
            BIG = np.full(ELEMENTS, float(r))
            expected = [use_big(i) for i in range(ITEMS)]
            pool = multiprocessing.get_context("fork").Pool(2)
            try:
                pool.map(int, range(2))  # workers up
                runners: list[tuple[str, Callable[[], Any]]] = [
                    ("Pool.map", partial(pool.map, use_big, range(ITEMS))),
                    ("paracell, shared memory", partial(paracell_map, shm)),
                    ("paracell, through the controller", partial(paracell_map, wire)),
                ]
                if ip is not None:
                    shell_new_array(ip)
                    runners.append(("paracell, %pmap cells", partial(shell_map, ip)))
                for name, run in runners:
                    session = shm if name == "paracell, shared memory" else wire
                    before = moved_bytes(session)
                    for k in (1, 2):
                        seconds, value = timed(run)
                        assert value == expected, (name, k)
                        times.setdefault(f"{name} (map {k})", []).append(seconds)
                    if name not in ("Pool.map", "paracell, %pmap cells"):
                        after = (
                            session.shipper.bytes_sent + session.shipper.bytes_shared
                        )
                        moved.setdefault(name, []).append(after - before)
            finally:
                pool.terminate()
                pool.join()
        print(
            f"200 MB global, {ITEMS} items, 2 workers each, median of {args.rounds}"
            f" rounds (a new array each), {os.cpu_count()} CPUs"
        )
        print(f"{'':44}{'map 1 s':>9}{'map 2 s':>9}{'/Pool 1':>9}{'/Pool 2':>9}")
        ref = [statistics.median(times[f"Pool.map (map {k})"]) for k in (1, 2)]
        names = ["Pool.map", "paracell, shared memory"]
        names.append("paracell, through the controller")
        if ip is not None:
            names.append("paracell, %pmap cells")
        for name in names:
            m = [statistics.median(times[f"{name} (map {k})"]) for k in (1, 2)]
            print(
                f"  {name:42}{m[0]:9.3f}{m[1]:9.3f}"
                f"{m[0] / ref[0]:9.2f}{m[1] / ref[1]:9.2f}"
            )
        for name, counts in moved.items():
            print(f"  {name}: {statistics.median(counts) / 1e6:.0f} MB moved per round")
        m1 = statistics.median(times["paracell, shared memory (map 1)"]) / ref[0]
        m2 = statistics.median(times["paracell, shared memory (map 2)"]) / ref[1]
        print(f"target first map <= 2 x Pool.map: {m1:.2f} x {_verdict(m1 <= 2)}")
        print(f"target second map <= 1.3 x Pool.map: {m2:.2f} x {_verdict(m2 <= 1.3)}")
        if ip is not None:
            m1 = statistics.median(times["paracell, %pmap cells (map 1)"]) / ref[0]
            print(f"  as cells, first map: {m1:.2f} x {_verdict(m1 <= 2)}")
        BIG = None
        if args.parts:
            parts(shm)
    finally:
        BIG = None
        shm.stop()
        wire.stop()
        if ip is not None:
            ip.run_cell("BIG = None")
            ip.run_line_magic("cluster", "stop")
    left = glob.glob(f"/dev/shm/paracell-{os.getpid()}-*")
    print(f"segments left in /dev/shm after stop: {len(left)}")


def _verdict(ok: bool) -> str:
    return "PASS" if ok else "MISS"


if __name__ == "__main__":
    main()
