"""What the schedulers need from engines, as one typed interface.

:class:`_maprun._MapRun` (a map's loop) reaches engines only through an
:class:`EnginePool`.  :class:`~._session.ClusterSession` is the pool of an
ipyparallel cluster; the test suite runs the same loop over an in-process
fake (``tests/_fake_engines.py``), so the scheduling logic — chunks, retries
after an engine dies, errors, engines joining, stale and reserved engines —
is tested in milliseconds, and what only a cluster shows is tested on one.

Background cells (:class:`~._jobs.JobManager`) need a little more of
engines — reservations, sending a cell's names, engines on demand — named
in :class:`JobPool`.

A task is a :class:`concurrent.futures.Future` (ipyparallel's
``AsyncResult`` is one) that also carries what the engine printed
(``stdout``/``stderr``, ``wait_for_output``) and what it reported while
running (``data``).
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import io
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any, Protocol

from ._errors import EnginesDied, InvalidRequest

if TYPE_CHECKING:
    from ._shipment import Shipment

__all__ = [
    "LOCAL_ENGINE",
    "OUTPUT_WAIT",
    "SETTLE",
    "EnginePool",
    "JobPool",
    "LocalPool",
    "task_output",
]

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


class JobPool(EnginePool, Protocol):
    """What background jobs need from engines beyond what a map needs."""

    @property
    def active(self) -> bool:
        """Whether there is a cluster (work can be sent at all)."""
        ...

    @property
    def launch_error(self) -> str | None:
        """Why the last launch of engines on demand failed (None: it did not)."""
        ...

    def require_controller(self) -> None:
        """Raise ``NoCluster`` if the controller is gone (before new work)."""
        ...

    def can_launch(self) -> bool:
        """Whether work waiting for an engine makes one start."""
        ...

    def want(self, engines: int, why: str, *, retry: bool = False) -> int:
        """As :meth:`EnginePool.want`; ``retry``: launch again after a launch
        failed (new work tries again; work waiting does not)."""
        ...

    def reserve(self, engine: int, label: str = ...) -> None:
        """``engine`` runs a background job (``label``): maps use others first."""
        ...

    def release(self, engine: int) -> None:
        """``engine`` finished its background job."""
        ...

    def send_names(self, engines: Sequence[int], shipment: Shipment) -> Shipment:
        """Check ``shipment`` on ``engines`` (names defined there, imports
        work) and send what they lack; returns the shipment as sent.  Raises
        ``EnginesDied`` naming engines that died meanwhile."""
        ...

    def ship_names(
        self, engines: Sequence[int], shipment: Shipment, *, block: bool = ...
    ) -> None:
        """Send ``engines`` what they lack of ``shipment``, unchecked;
        ``block=False`` returns at once (engines run tasks in order, so a
        task submitted next finds the names)."""
        ...

    def release_dropped_arrays(self) -> None:
        """Let engines free the arrays the notebook dropped (no job runs)."""
        ...

    def on_stop(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` before the cluster stops."""
        ...

    def busy(self) -> contextlib.AbstractContextManager[None]:
        """Work is being sent: nothing shipped is released meanwhile."""
        ...

    def add_work_check(self, check: Callable[[], bool]) -> None:
        """``check()`` says whether work that reads shipped names is under
        way (no release of dropped arrays then); called holding the pool's
        lock, so it takes none."""
        ...


def require_engines(pool: JobPool) -> None:
    """Raise unless the cluster answers and has engines, or will have."""
    pool.require_controller()
    if not pool.engine_ids() and not pool.can_launch() and not pool.engines_coming():
        raise InvalidRequest(
            "the cluster has no engines; add some with %cluster scale N"
        )


def send_to_free_engines(pool: JobPool, shipment: Shipment) -> Shipment:
    """Check ``shipment`` on the engines free now and send it to them;
    returns it as sent.

    Free: not running a background job nor cancelled work, so that the
    check does not wait behind them.  Engines that die meanwhile are left
    out (the engine the work lands on gets the names when it is sent).
    """
    stale = pool.stale_engines()
    free = [e for e in pool.unreserved_engine_ids() if e not in stale]
    while free:
        try:
            return pool.send_names(free, shipment)
        except EnginesDied as err:
            pool.forget_engines(err.engines)
            free = [e for e in free if e not in err.engines]
    return shipment


def task_output(task: Any, stream: str) -> str:
    """What a task has written to ``stream`` (stdout or stderr) so far.

    Read from the task's record of what arrived: ``ar.stdout`` first parses
    every timestamp of the task with dateutil (half a millisecond of a
    trivial cell's round trip; a live view asks several times, and a map
    reads each task in flight on every turn of its loop).
    """
    try:
        return str(task._metadata[0].get(stream, "") or "")
    except (AttributeError, IndexError, KeyError, TypeError):
        return str(getattr(task, stream, "") or "")


def why_no_engines(pool: JobPool) -> str | None:
    """Why work waiting for an engine cannot start now nor by itself later
    (no cluster, a dead controller, no engines and none coming), or None."""
    if not pool.active:
        return "no cluster is active: start one with %cluster start"
    if not pool.controller_responds():
        return (
            "the cluster's controller does not answer:"
            " %cluster stop, then %cluster start"
        )
    if (
        not pool.engine_ids()
        and not pool.engines_expected()
        and not pool.engines_coming()
        and not pool.can_launch()
    ):
        if pool.launch_error is not None:
            return f"launching engines on demand failed ({pool.launch_error})"
        return "the cluster has no engines: start or scale it (%cluster scale N)"
    return None


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
        saved = (random.getstate(), np.random.get_state(), _seeding.current_state())
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
            _seeding.restore_state(saved[2])
        return task

    def interrupt(self, tasks: dict[Any, int], grace: float = 0.0) -> list[Any]:
        return []  # every task ended before submit() returned

    def purge(self, task: Any) -> None:
        return None

    def forget_engines(self, ids: Iterable[int]) -> None:
        return None
