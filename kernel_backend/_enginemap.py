"""Runs on the engines: the chunks of a map (``%pmap``, ``paracell.pmap``).

:func:`run_chunk` runs a chunk's items, each under its seed and timer, with
what they print marked with their item and their warnings recorded.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import inspect
import itertools
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from . import _pickling
from ._engine import (
    ItemFailure,
    ItemTimeout,
    TaskSpec,
    engine_identity,
    item_failure,
    reporting,
    shield_reply,
)
from ._engineawait import run_coroutine
from ._enginenames import build_callable
from ._seeding import ChunkSeeds, map_root, seed_sources

__all__ = ["ChunkOutcome", "run_chunk"]

#: A chunk's warnings: (item index, category, message, file, line).
_Warnings = list[tuple[int, str, str, str, int]]


@dataclass
class ChunkOutcome:
    """What a chunk returns: values by position, failures, and timings."""

    first: int
    values: list[Any]
    failures: list[ItemFailure]
    started: float
    seconds: float
    host: str
    pid: int
    interrupted: bool = False
    # ran out of its time budget: the items after ``values`` were not run
    stopped: bool = False
    #: warnings the items raised: (item index, category, message, file, line)
    warnings: _Warnings = field(default_factory=list)


def run_chunk(
    spec: TaskSpec,
    first: int,
    items: Sequence[Any],
    star: bool = True,
    base: dict[str, Any] | None = None,
    budget: float | None = None,
    check_results: bool = False,
) -> ChunkOutcome:
    """Run ``items`` (indices ``first``, ``first + 1``, ...) with the spec's code.

    ``items`` is any sequence: a list, a tuple, or a ``range`` (a slice of a
    ``range`` input travels as one).  Values come back in order; a failed
    item leaves a ``None`` placeholder and an :class:`ItemFailure`.  With
    ``spec.stop_on_error`` the chunk stops at the first failure.
    KeyboardInterrupt stops the chunk and returns what was done (marked
    ``interrupted``).  With a ``budget`` (seconds) no item starts after the
    items have run that long (at least one runs), unless the items left
    would take at most :data:`FINISH_WITHIN` more at the pace so far; the
    outcome is then marked ``stopped`` and the items after its values were
    not run.
    ``check_results`` pickles each value here first: a value that cannot
    travel back becomes its item's failure (the chunk was sent again with it
    after its reply could not be sent).
    """
    _pickling.install()
    func = build_callable(spec, base)
    if spec.seed is None:
        # Unseeded: one independent stream per chunk is enough (and cheap);
        # no two chunks, hence no two engines, share a state.
        seed_sources(map_root(None, spec.entropy), first)
    outcome = _run_items(spec, func, first, items, star, budget)
    shield_reply()
    if check_results:
        _check_results(spec, first, outcome.values, outcome.failures)
    outcome.host, outcome.pid = engine_identity()
    return outcome


def _run_items(
    spec: TaskSpec,
    func: Callable[..., Any],
    first: int,
    items: Sequence[Any],
    star: bool,
    budget: float | None,
) -> ChunkOutcome:
    """The outcome of running the items (the engine it ran on is left blank),
    with what they print marked with their item and their warnings kept."""
    values: list[Any] = []
    failures: list[ItemFailure] = []
    caught: _Warnings = []
    with reporting():
        started = time.time()
        # an item run at once with others says which it is (see
        # _run_concurrently); else it is the next after those done
        position = _CONCURRENT_ITEM.get
        with _items_output(lambda: position(first + len(values)), caught):
            seconds, interrupted, stopped = _runner(spec)(
                spec, func, first, items, star, values, failures, budget
            )
    return ChunkOutcome(
        first=first,
        values=values,
        failures=failures,
        started=started,
        seconds=seconds,
        host="",
        pid=0,
        interrupted=interrupted,
        stopped=stopped,
        warnings=caught,
    )


class _ItemStream:
    """A text stream that starts each line with the item that wrote it.

    The item is read when a line starts (``index()``), so the loop over the
    items pays nothing for it: items that print nothing cost nothing.
    """

    def __init__(self, stream: Any, index: Callable[[], int]) -> None:
        self._stream = stream
        self._index = index
        self._at_line_start = True

    def write(self, text: str) -> int:
        if not text:
            return 0
        prefix = f"[item {self._index()}] "
        out = []
        for line in text.splitlines(keepends=True):
            if self._at_line_start:
                out.append(prefix)
            out.append(line)
            self._at_line_start = line.endswith("\n")
        self._stream.write("".join(out))
        return len(text)

    def flush(self) -> None:
        self._stream.flush()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)


@contextlib.contextmanager
def _items_output(index: Callable[[], int], caught: _Warnings) -> Iterator[None]:
    """While items run: their printed lines name the item, and their warnings
    are recorded (every one, with its item) instead of printed, so the
    notebook can show each warning once with the number of items it came
    from — as one process's default warning filter would."""
    import warnings

    def record(
        message: Warning | str,
        category: type[Warning],
        filename: str,
        lineno: int,
        file: Any = None,
        line: str | None = None,
    ) -> None:
        caught.append((index(), category.__name__, str(message), filename, lineno))

    out, err = sys.stdout, sys.stderr
    sys.stdout, sys.stderr = _ItemStream(out, index), _ItemStream(err, index)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("always")
            warnings.showwarning = record
            yield
    finally:
        sys.stdout, sys.stderr = out, err


def _check_results(
    spec: TaskSpec, first: int, values: list[Any], failures: list[ItemFailure]
) -> None:
    """Turn values that cannot be pickled into their items' failures."""
    failed = {f.index for f in failures}
    for offset, value in enumerate(values):
        if first + offset in failed:
            continue
        try:
            _pickling.dumps(value)
        except Exception as err:
            fix = ""
            if inspect.iscoroutine(value):  # an async call the element made
                value.close()  # (not "never awaited" besides)
                fix = "; await it in the element, e.g. %pmap await f(x) for x in xs"
            failures.append(
                ItemFailure(
                    index=first + offset,
                    type_name=type(err).__name__,
                    message=(
                        f"its result, a {type(value).__name__}, cannot be sent"
                        f" back to the notebook: {err}{fix}"
                    ),
                    traceback="",
                    exception=None,
                )
            )
            values[offset] = None
            if spec.stop_on_error:
                del values[offset + 1 :]
                break
    failures.sort(key=lambda f: f.index)


# -- the loop over a chunk's items -------------------------------------------


def _runner(spec: TaskSpec) -> Callable[..., tuple[float, bool, bool]]:
    """The loop for the spec's items: several at once for an async element
    with ``concurrency``; one by one when each needs its seed or timer, else
    the loop in C."""
    if spec.concurrency > 1:
        return _run_concurrently
    if spec.seed is not None or spec.timeout is not None or not _EXTEND_KEEPS_PARTIAL:
        return _run_each
    return _run_all


def _run_all(
    spec: TaskSpec,
    func: Callable[..., Any],
    first: int,
    items: Sequence[Any],
    star: bool,
    values: list[Any],
    failures: list[ItemFailure],
    budget: float | None,
) -> tuple[float, bool, bool]:
    """The items of a chunk without per-item work around them (no timeout,
    no per-item seed): ``list.extend`` over ``map`` runs the loop in C.

    ``values`` holds one entry per item tried, so after an exception its
    length is the failed item's position.  With a budget the items run in
    batches of 1, 2, 4, ... with the clock read between batches.  Returns
    the seconds spent in the items themselves (chunk sizes are derived from
    them), whether the chunk was interrupted, and whether it stopped at its
    budget.
    """
    it = iter(items)
    mapper = itertools.starmap if star else map
    seconds = first_item = 0.0
    batch = 1
    while True:
        tic = time.perf_counter()
        try:
            if budget is None:
                values.extend(mapper(func, it))
                return seconds + time.perf_counter() - tic, False, False
            while True:
                before = len(values)
                values.extend(mapper(func, itertools.islice(it, batch)))
                if len(values) - before < batch:  # all run
                    return seconds + time.perf_counter() - tic, False, False
                spent = seconds + time.perf_counter() - tic
                first_item = spent if batch == 1 else first_item
                if _past_budget(budget, spent, len(values), len(items), first_item):
                    stopped = len(values) < len(items)
                    return seconds + time.perf_counter() - tic, False, stopped
                batch *= 2
        except KeyboardInterrupt:
            return seconds + time.perf_counter() - tic, True, False
        except BaseException as err:
            seconds += time.perf_counter() - tic
            failures.append(item_failure(first + len(values), err))
            values.append(None)
            if spec.stop_on_error:
                return seconds, False, False


#: The item (its index in the map) an item run with others is, in its task.
_CONCURRENT_ITEM: contextvars.ContextVar[int] = contextvars.ContextVar(
    "paracell_concurrent_item"
)


def _run_concurrently(
    spec: TaskSpec,
    func: Callable[..., Any],
    first: int,
    items: Sequence[Any],
    star: bool,
    values: list[Any],
    failures: list[ItemFailure],
    budget: float | None,
) -> tuple[float, bool, bool]:
    """Up to ``spec.concurrency`` items at once: an async element's items,
    each a task in the engine's event loop, started in order.

    ``values`` gets the finished items from the chunk's first on, in order
    (an interrupt keeps those before the first unfinished one; with
    ``stop_on_error`` they end at the first failure).  Each item has its own
    ``--timeout``.  With a budget no item starts once the budget is spent
    (after the first ``concurrency``), and the chunk is marked stopped.
    """
    function = getattr(func, "coroutine_function", None)
    if function is None:  # not async after all: one at a time
        return _run_each(spec, func, first, items, star, values, failures, budget)
    n, limit = len(items), spec.concurrency
    results: list[Any] = [None] * n
    errors: dict[int, BaseException] = {}
    finished: set[int] = set()
    started = 0
    tic = time.perf_counter()

    async def one(position: int) -> None:
        _CONCURRENT_ITEM.set(first + position)  # this task's own context
        item = items[position]
        begun = time.monotonic()
        try:
            call = function(*item) if star else function(item)
            if spec.timeout is None:
                results[position] = await call
            else:
                try:
                    results[position] = await asyncio.wait_for(call, spec.timeout)
                except asyncio.TimeoutError:
                    if time.monotonic() - begun < spec.timeout:
                        raise  # the item's own
                    raise _timed_out(spec.timeout) from None
        except (asyncio.CancelledError, KeyboardInterrupt):
            raise  # the chunk is stopping: this item did not finish
        except BaseException as err:  # the item's own
            errors[position] = err
        finished.add(position)

    async def chunk() -> None:
        nonlocal started
        running: set[asyncio.Future[None]] = set()
        try:
            for position in range(n):
                while len(running) >= limit:
                    _, running = await asyncio.wait(
                        running, return_when=asyncio.FIRST_COMPLETED
                    )
                if spec.stop_on_error and errors:
                    break
                spent = time.perf_counter() - tic
                if budget is not None and position >= limit and spent >= budget:
                    break
                running.add(asyncio.ensure_future(one(position)))
                started = position + 1
            if running:
                await asyncio.wait(running)
        except BaseException:  # cancelled: the items still running end too
            for task in running:
                task.cancel()
            await asyncio.gather(*running, return_exceptions=True)
            raise

    interrupted = False
    try:
        run_coroutine(chunk())
    except KeyboardInterrupt:
        interrupted = True
    done = 0
    while done < started and done in finished:
        done += 1
    for position in range(done):
        error = errors.get(position)
        if error is not None:
            failures.append(item_failure(first + position, error))
            values.append(None)
            if spec.stop_on_error:
                break
        else:
            values.append(results[position])
    stopped = not interrupted and not (spec.stop_on_error and errors) and done < n
    return time.perf_counter() - tic, interrupted, stopped


#: Seconds of items a time-boxed chunk still runs past its budget: sending
#: them back costs a round trip with the engine idle, and is worth it only
#: for more than an ordinary chunk holds (the sizer aims at 0.2 s).
FINISH_WITHIN = 0.15


def _past_budget(
    budget: float, spent: float, done: int, total: int, first: float
) -> bool:
    """Whether a chunk that ran ``done`` of its ``total`` items in ``spent``
    seconds should start no more: its budget is spent, and what is left
    would take longer than :data:`FINISH_WITHIN` at the pace of the items
    after the first (``first`` seconds: it alone pays one-off costs such as
    imports and the first touch of a shipped array), so two must have run."""
    if spent < budget or done < 2:
        return False
    pace = (spent - min(first, spent)) / (done - 1)
    return pace * (total - done) > FINISH_WITHIN


def _run_each(
    spec: TaskSpec,
    func: Callable[..., Any],
    first: int,
    items: Sequence[Any],
    star: bool,
    values: list[Any],
    failures: list[ItemFailure],
    budget: float | None,
) -> tuple[float, bool, bool]:
    """The items of a chunk one by one: seeded per item, each under the timer."""
    interrupted = stopped = False
    seeds = None if spec.seed is None else ChunkSeeds(spec.seed, first, len(items))
    # the items' own time (chunk sizes are derived from it), not set-up's
    tic = time.perf_counter()
    position, first_item, n = 0, 0.0, len(items)
    with _item_timer(spec.timeout) as arm:
        while position < n:
            try:
                for position in range(position, n):  # noqa: B020
                    if budget is not None:
                        spent = time.perf_counter() - tic
                        first_item = spent if position == 1 else first_item
                        if _past_budget(budget, spent, position, n, first_item):
                            stopped = True
                            break
                    if seeds is not None:
                        seeds.seed(position)
                    item = items[position]
                    arm(True)
                    values.append(func(*item) if star else func(item))
                    arm(False)
                else:
                    position = n
                if stopped:
                    break
            except KeyboardInterrupt:
                arm(False)
                interrupted = True
                break
            except BaseException as err:
                arm(False)
                failures.append(item_failure(first + position, err))
                values.append(None)
                position += 1
                if spec.stop_on_error:
                    break
    return time.perf_counter() - tic, interrupted, stopped


def _extend_keeps_partial() -> bool:
    """Whether ``list.extend`` keeps the items it got before its iterator
    raised (CPython's does); :func:`_run_all` relies on it to find the
    failed item."""

    def numbers() -> Iterator[int]:
        yield 1
        yield 2
        raise ValueError

    kept: list[int] = []
    with contextlib.suppress(ValueError):
        kept.extend(numbers())
    return kept == [1, 2]


_EXTEND_KEEPS_PARTIAL = _extend_keeps_partial()


def _timed_out(timeout: float) -> ItemTimeout:
    """The failure of an item that ran past ``timeout`` seconds."""
    return ItemTimeout(f"item ran past its timeout of {timeout:g} s")


@contextlib.contextmanager
def _item_timer(timeout: float | None) -> Iterator[Callable[[bool], None]]:
    """Yield ``arm(on)``: while armed, ItemTimeout fires after ``timeout`` s.

    Uses SIGALRM, so it works where items run: the process's main thread.
    """
    if timeout is None or threading.current_thread() is not threading.main_thread():
        yield lambda on: None
        return

    def expire(signum: int, frame: Any) -> None:
        raise _timed_out(timeout)

    def arm(on: bool) -> None:
        signal.setitimer(signal.ITIMER_REAL, timeout if on else 0)

    previous = signal.signal(signal.SIGALRM, expire)
    try:
        yield arm
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
