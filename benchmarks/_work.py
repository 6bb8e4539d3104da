"""Work functions for ``pmap_bench.py``, importable by every runner's workers.

They live in a module of their own so that multiprocessing's and joblib's
workers can import them by name.  Raw ipyparallel engines get this folder put
on their ``sys.path`` by the benchmark; paracell's engines do not, so paracell
has to notice that ``_work`` cannot be imported there and ship the functions
by value (which it does by itself).
"""

from __future__ import annotations

from time import perf_counter


def double(x: int) -> int:
    """A trivial item: all that is measured is the per-item overhead."""
    return x * 2


def spin(n: int) -> int:
    """A pure-Python loop of ``n`` steps: CPU-bound, holds the GIL."""
    total = 0
    for i in range(n):
        total += i * i % 7
    return total


def busy(seconds: float) -> float:
    """Keep one CPU busy for ``seconds`` of wall time (a perf_counter spin).

    Returns ``seconds`` itself, so results are the same on every runner.
    """
    end = perf_counter() + seconds
    while perf_counter() < end:
        pass
    return seconds


def nothing(x: int) -> None:
    """A trivial item whose result is ``None``: a map of these holds no
    result objects, only the result list's references (8 bytes an item)."""
    return None
