"""What the schedulers need from engines, as one typed interface.

:class:`_maprun._MapRun` (a map's loop) reaches engines only through an
:class:`EnginePool`.  :class:`~._session.ClusterSession` is the pool of an
ipyparallel cluster; the test suite runs the same loop over an in-process
fake (``tests/_fake_engines.py``), so the scheduling logic — chunks, retries
after an engine dies, errors, engines joining, stale and reserved engines —
is tested in milliseconds, and what only a cluster shows is tested on one.

A task is a :class:`concurrent.futures.Future` (ipyparallel's
``AsyncResult`` is one) that also carries what the engine printed
(``stdout``/``stderr``, ``wait_for_output``) and what it reported while
running (``data``).
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import io
from collections.abc import Callable, Iterable
from typing import Any, Protocol

__all__ = ["LOCAL_ENGINE", "OUTPUT_WAIT", "SETTLE", "EnginePool", "LocalPool"]

#: The one engine of a :class:`LocalPool` (timelines and output say "here").
LOCAL_ENGINE = -1

#: A finished task's AsyncResult marks itself ready in a callback that can run
#: just after the future reports done; ``get()`` waits that long for it at most.
SETTLE = 5.0
#: How long a finished task's output is waited for (it can trail the result).
OUTPUT_WAIT = 3.0


class EnginePool(Protocol):
    """Engines to send work to, and what is known of their state."""

    @property
    def depth(self) -> int:
        """Tasks an engine may hold at once (the next one queued while it
        runs one); 1 for a pool that runs each task as it is submitted."""
        ...

    @property
    def epoch(self) -> int:
        """Changes when the cluster stops: work sent before will never answer."""
        ...

    def engine_ids(self) -> list[int]:
        """The engines that are up."""
        ...

    def unreserved_engine_ids(self) -> list[int]:
        """Up, and not running a background job."""
        ...

    def stale_engines(self) -> set[int]:
        """Engines still running cancelled work (new work waits behind it)."""
        ...

    def engines_coming(self) -> bool:
        """Engines asked for (a batch queue) that have not registered yet."""
        ...

    def engines_expected(self) -> bool:
        """Engines the pool owes (replacements): :meth:`ensure_engines` starts them."""
        ...

    def ensure_engines(self) -> object: ...

    def want(self, engines: int, why: str) -> int:
        """Engines on demand: launch up to ``engines`` for ``why``; returns
        how many were launched (0 with a fixed count of engines)."""
        ...

    def join(self, engine: int, shipment: Any) -> None:
        """Send ``engine``, joining work under way, the names it needs."""
        ...

    def to_kernel_clock(self, engine: int, engine_time: float) -> float:
        """An engine's ``time.time()`` reading on the kernel's clock."""
        ...

    def controller_responds(self) -> bool: ...

    def pack(self, obj: Any) -> Any:
        """``obj`` made ready to be sent many times (pickled once)."""
        ...

    def submit(self, engine: int, func: Callable[..., Any], *args: Any) -> Any:
        """Run ``func(*args)`` on ``engine``, after what it already has queued."""
        ...

    def interrupt(self, tasks: dict[Any, int], grace: float = ...) -> list[Any]:
        """Abort queued tasks, interrupt running ones; returns those still out."""
        ...

    def purge(self, task: Any) -> None:
        """Forget a task whose result has been taken."""
        ...

    def forget_engines(self, ids: Iterable[int]) -> None:
        """Engines that died: nothing sent to them survives."""
        ...


class _LocalTask(concurrent.futures.Future[Any]):
    """A task run here: done when :meth:`LocalPool.submit` returns."""

    def __init__(self) -> None:
        super().__init__()
        self.stdout = ""
        self.stderr = ""

    def get(self, timeout: float | None = None) -> Any:
        return self.result(timeout)

    def wait_for_output(self, timeout: float | None = None) -> bool:
        return True


class LocalPool:
    """One engine, here: each task runs when it is submitted, in the caller's
    thread (``--local``).  The same loop, chunking, seeding and error handling
    as on a cluster, so a local run is a faithful reference for a parallel
    one; the notebook's own random state is left as it was."""

    epoch = 0
    depth = 1  # a chunk is taken in before the next runs: stop at an error

    def engine_ids(self) -> list[int]:
        return [LOCAL_ENGINE]

    def unreserved_engine_ids(self) -> list[int]:
        return [LOCAL_ENGINE]

    def stale_engines(self) -> set[int]:
        return set()

    def engines_coming(self) -> bool:
        return False

    def engines_expected(self) -> bool:
        return False

    def ensure_engines(self) -> None:
        return None

    def want(self, engines: int, why: str) -> int:
        return 0

    def join(self, engine: int, shipment: Any) -> None:
        return None

    def to_kernel_clock(self, engine: int, engine_time: float) -> float:
        return engine_time

    def controller_responds(self) -> bool:
        return True

    def pack(self, obj: Any) -> Any:
        return obj

    def submit(self, engine: int, func: Callable[..., Any], *args: Any) -> Any:
        import random

        import numpy as np

        from . import _seeding

        task = _LocalTask()
        printed = io.StringIO()
        saved = (random.getstate(), np.random.get_state(), _seeding._current)
        try:
            # the items' lines reach the same views as engines' output
            with (
                contextlib.redirect_stdout(printed),
                contextlib.redirect_stderr(printed),
            ):
                value = func(*args)
        except Exception as err:  # an interrupt stops the map, here as there
            task.set_exception(err)
        else:
            task.set_result(value)
        finally:
            task.stdout = printed.getvalue()
            random.setstate(saved[0])
            np.random.set_state(saved[1])
            _seeding._current = saved[2]
        return task

    def interrupt(self, tasks: dict[Any, int], grace: float = 0.0) -> list[Any]:
        return []  # every task ended before submit() returned

    def purge(self, task: Any) -> None:
        return None

    def forget_engines(self, ids: Iterable[int]) -> None:
        return None
