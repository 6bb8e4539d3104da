"""Running a map: chunks to engines, results back in order, nothing lost.

A :class:`MapJob` is the handle (``concurrent.futures.Future``-like and
awaitable); :class:`_MapRun` is the scheduler behind it.  The scheduler sends
chunks straight to engines (a bounded number in flight, so generators are
consumed lazily), sizes them with :class:`ChunkSizer`, re-sends the chunks of
an engine that died, and on cancel or interrupt aborts queued chunks and
signals running ones so the cluster is free for the next call at once.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import itertools
import re
import reprlib
import threading
import time
from collections.abc import Callable, Generator, Iterator, Sequence
from dataclasses import dataclass, replace
from operator import itemgetter
from typing import Any, Literal, TypeGuard

from ._chunking import ChunkSizer
from ._engine import ChunkOutcome, ItemFailure, TaskSpec, UndefinedNames, run_chunk
from ._errors import InvalidRequest, is_engine_death
from ._pool import LOCAL_ENGINE, EnginePool
from ._signal import Signal

__all__ = [
    "ChunkRecord",
    "ItemError",
    "MapFailed",
    "MapJob",
    "MapOptions",
    "MapProgress",
    "RemoteItemError",
    "Timeline",
]

OnError = Literal["raise", "collect", "skip"]
JobState = Literal["queued", "running", "done", "failed", "cancelled"]

#: Chunks kept in flight per engine: one running, one queued behind it, so an
#: engine never waits for the network between chunks.
_PER_ENGINE = 2
_POLL = 0.05
_PROGRESS_PERIOD = 0.1
_CANCEL_GRACE = 1.5
#: A finished task's AsyncResult marks itself ready in a callback that can run
#: just after the future reports done; get() waits that long for it at most.
_SETTLE = 5.0
#: How long a finished task's printed output is waited for after its result.
_OUTPUT_GRACE = 1.0
#: With chunks out and none back for this long, ask whether the controller lives.
_CONTROLLER_CHECK = 2.0
#: Items looked up in the result store at a time (``--cache``).
_STORE_BLOCK = 1024


@dataclass(frozen=True)
class MapOptions:
    """How to run a map (validated by :meth:`validated`)."""

    chunksize: int | Literal["auto"] = "auto"
    ordered: bool = True
    seed: int | None = None
    retries: int = 2
    timeout: float | None = None
    on_error: OnError = "raise"
    targets: tuple[int, ...] | None = None
    #: ship names larger than the limit (see ``_shipping.ship_limit``)
    ship_large: bool = False

    def validated(self) -> MapOptions:
        from ._chunking import validate_chunksize
        from ._seeding import validate_seed

        if self.on_error not in ("raise", "collect", "skip"):
            raise InvalidRequest(
                f"--on-error must be raise, collect or skip, not {self.on_error!r}"
            )
        if (
            isinstance(self.retries, bool)
            or not isinstance(self.retries, int)
            or self.retries < 0
        ):
            raise InvalidRequest(
                f"--retries must be a whole number >= 0, not {self.retries!r}"
            )
        if self.timeout is not None and not 0 < self.timeout < float("inf"):
            raise InvalidRequest(
                "--timeout must be a number of seconds > 0 and finite,"
                f" not {self.timeout!r}"
            )
        return replace(
            self,
            chunksize=validate_chunksize(self.chunksize),
            seed=validate_seed(self.seed),
        )


@dataclass(frozen=True)
class MapProgress:
    """A progress event: what a display needs to draw a map's state."""

    state: JobState
    done: int
    failed: int
    total: int | None
    elapsed: float
    per_engine: dict[int, int]
    running_fraction: float = 0.0  # items reported done inside running chunks
    #: lines the items printed since the previous event, each starting with
    #: ``[item i · engine e]`` (all of them: ``MapJob.output()``)
    lines: tuple[str, ...] = ()
    #: each distinct warning once, with the number of items that raised it
    warnings: tuple[str, ...] = ()
    cached: int = 0  # items of ``done`` that came from the result store

    @property
    def rate(self) -> float:
        """Items computed per second so far (results from the store aside)."""
        computed = self.done - self.cached
        return computed / self.elapsed if self.elapsed > 0 else 0.0

    def summary(self) -> str:
        """E.g. ``pmap: 60/60 done in 3.1 s, 0 failed``."""
        total = "?" if self.total is None else str(self.total)
        verb = {"queued": "queued", "running": "running", "done": "done"}.get(
            self.state, self.state
        )
        stored = f" ({self.cached:,} from cache)" if self.cached else ""
        return (
            f"pmap: {self.done}/{total} {verb} in {self.elapsed:.1f} s,"
            f" {self.failed} failed{stored}"
        )


@dataclass(frozen=True)
class ChunkRecord:
    """Which engine ran which items when (for timelines).

    ``started`` is the engine's clock (``time.time()``); ``engine`` is -1 for
    a ``--local`` run.
    """

    engine: int
    first: int
    count: int
    started: float
    seconds: float


@dataclass(frozen=True)
class Timeline:
    """The chunks of one map: which engine ran which items when.

    A sequence of :class:`ChunkRecord` plus the map's own start and end
    (``time.time()``).  ``paracell.widgets`` draws it as a Gantt chart.
    """

    chunks: tuple[ChunkRecord, ...]
    started: float
    finished: float | None

    def __len__(self) -> int:
        return len(self.chunks)

    def __iter__(self) -> Iterator[ChunkRecord]:
        return iter(self.chunks)

    @property
    def engines(self) -> list[int]:
        """The engines that ran chunks, in order."""
        return sorted({c.engine for c in self.chunks})

    @property
    def span(self) -> tuple[float, float]:
        """(first start, last end) over the map and its chunks."""
        ends = [c.started + c.seconds for c in self.chunks]
        starts = [c.started for c in self.chunks]
        first = min([self.started, *starts])
        last = max([*ends, self.finished or first])
        return first, last

    def busy(self) -> dict[int, float]:
        """Engine -> fraction of the map's wall time it spent running chunks."""
        first, last = self.span
        wall = max(last - first, 1e-9)
        out: dict[int, float] = {}
        for c in self.chunks:
            out[c.engine] = out.get(c.engine, 0.0) + c.seconds
        return {e: min(1.0, t / wall) for e, t in sorted(out.items())}

    def summary(self) -> str:
        """E.g. ``timeline: 12 chunks on 2 engines over 3.1 s (busy: 0 98%, 1 91%)``."""
        if not self.chunks:
            return "timeline: no chunks ran"
        first, last = self.span
        busy = ", ".join(
            f"{'local' if e < 0 else e} {f:.0%}" for e, f in self.busy().items()
        )
        n = len(self.engines)
        return (
            f"timeline: {len(self.chunks)} chunks on {n} engine{'s' * (n != 1)}"
            f" over {last - first:.2f} s (busy: {busy})"
        )

    def __repr__(self) -> str:
        return self.summary()


class MapFailed(Exception):
    """A map stopped before it finished; ``partial`` holds what was done.

    ``partial`` maps item index -> result for every item that finished.
    """

    def __init__(self, message: str, partial: dict[int, Any]) -> None:
        super().__init__(message)
        self.partial = partial

    def _render_traceback_(self) -> list[str]:
        # IPython shows this instead of paracell's own frames.
        return [f"{type(self).__name__}: {self}"]


class ItemError(MapFailed):
    """An item raised: which one, on which engine, and the remote traceback."""

    def __init__(
        self,
        failure: ItemFailure,
        item: Any,
        engine: int | None,
        partial: dict[int, Any],
    ) -> None:
        where = f" on engine {engine}" if engine is not None else ""
        message = (
            f"item {failure.index} (input {_short(item)}) failed{where}:"
            f" {failure.type_name}: {failure.message}"
        )
        super().__init__(message, partial)
        self.index = failure.index
        self.input = item
        self.engine = engine
        self.remote_traceback = failure.traceback
        self.exception = failure.exception
        self.timed_out = failure.timed_out

    def _render_traceback_(self) -> list[str]:
        lines = [f"{type(self).__name__}: {self}", ""]
        lines += self.remote_traceback.rstrip("\n").splitlines()
        done = len(self.partial)
        lines += ["", f"({done} finished results kept in .partial)"]
        return lines


class RemoteItemError(Exception):
    """Stands in for an item's exception that could not travel back."""

    def __init__(self, failure: ItemFailure) -> None:
        super().__init__(f"{failure.type_name}: {failure.message}")
        self.remote_traceback = failure.traceback


def _short(value: Any) -> str:
    shortener = reprlib.Repr()
    shortener.maxstring = shortener.maxother = 40
    return shortener.repr(value)


class MapJob(concurrent.futures.Future):  # type: ignore[type-arg]
    """Handle of a running map: a ``Future`` (``result()``, ``done()``,
    ``cancel()``, ``add_done_callback``) that is also awaitable.

    ``progress`` is the latest :class:`MapProgress`; ``chunks`` the chunks
    run so far and :meth:`timeline` a picture of them.  Displayed, it shows
    its progress.
    """

    def __init__(self, total: int | None) -> None:
        super().__init__()
        self.total = total
        self.chunks: list[ChunkRecord] = []
        self.started_at = time.time()
        self.finished_at: float | None = None
        self.add_done_callback(self._note_finish)
        self._progress = MapProgress("queued", 0, 0, total, 0.0, {})
        self._updates: Signal[[MapProgress]] = Signal("a map's progress")
        self._lines: list[tuple[int | None, str]] = []  # (item, line)
        # (category, message, file, line) -> [items that raised it, first item]
        self._warnings: dict[tuple[str, str, str, int], list[int]] = {}
        self._running = False
        self._thread: threading.Thread | None = None

    @property
    def progress(self) -> MapProgress:
        return self._progress

    def output(self, item: int | None = None) -> str:
        """What the items printed (stdout and stderr), each line starting
        with its item and engine; with ``item``, that item's lines only."""
        return "".join(
            line + "\n" for i, line in self._lines if item is None or i == item
        )

    def warning_summaries(self) -> tuple[str, ...]:
        """Each distinct warning the items raised, once, with how many items
        raised it, e.g. ``RuntimeWarning: overflow … (in 340 items)``."""
        out = []
        for (category, message, _, _), (count, first) in self._warnings.items():
            where = f"in {count} items" if count > 1 else f"item {first}"
            out.append(f"{category}: {message} ({where})")
        return tuple(out)

    def _add_lines(self, engine: int | None, text: str) -> list[str]:
        """Take printed text from ``engine``; returns the new lines as shown."""
        added = []
        for raw in text.splitlines():
            item, line = _item_of(raw)
            where = "local" if engine is None or engine < 0 else f"engine {engine}"
            shown = f"[item {item} · {where}] {line}" if item is not None else raw
            self._lines.append((item, shown))
            added.append(shown)
        return added

    def _add_warnings(self, caught: Sequence[tuple[int, str, str, str, int]]) -> bool:
        """Count warnings by kind; True if one was seen for the first time."""
        new = False
        for item, category, message, filename, lineno in caught:
            seen = self._warnings.get((category, message, filename, lineno))
            if seen is None:
                self._warnings[(category, message, filename, lineno)] = [1, item]
                new = True
            else:
                seen[0] += 1
        return new

    def timeline(self) -> Timeline:
        """Which engine ran which chunk when; displayed, a Gantt chart."""
        return Timeline(tuple(self.chunks), self.started_at, self.finished_at)

    def _note_finish(self, _: Any) -> None:
        self.finished_at = time.time()

    def subscribe(self, observer: Callable[[MapProgress], None]) -> Callable[[], None]:
        """Call ``observer`` with every progress event (in the map's thread);
        returns a function that unsubscribes."""
        return self._updates.subscribe(observer)

    def _emit(self, event: MapProgress) -> None:
        self._progress = event
        self._updates.emit(event)

    def running(self) -> bool:
        return self._running and not self.done()

    def __await__(self) -> Generator[Any, None, Any]:
        return asyncio.wrap_future(self).__await__()

    def __repr__(self) -> str:
        return self._progress.summary()

    def _repr_pretty_(self, p: Any, cycle: bool) -> None:
        p.text(repr(self))


_ITEM_PREFIX = re.compile(r"\[item (\d+)\] ")


def _item_of(line: str) -> tuple[int | None, str]:
    """Split the ``[item i] `` an engine put before a printed line."""
    match = _ITEM_PREFIX.match(line)
    if match is None:
        return None, line
    return int(match.group(1)), line[match.end() :]


#: Stands for a skipped item (``on_error="skip"``) among a chunk's values.
_SKIPPED: Any = object()

#: Inputs taken chunk by chunk with a slice (in C, and a ``range`` slice
#: travels as a ``range``) instead of item by item from an iterator.
_SLICEABLE = (range, list, tuple)


def sliceable(iterable: Any) -> TypeGuard[Sequence[Any]]:
    """Whether :class:`_MapRun` may take ``iterable``'s chunks as slices."""
    return type(iterable) in _SLICEABLE


class _Chunk:
    __slots__ = ("attempts", "budget", "check_results", "first", "items")

    def __init__(
        self, first: int, items: Sequence[Any], budget: float | None = None
    ) -> None:
        self.first = first
        self.items = items
        self.budget = budget  # seconds after which the engine starts no item
        self.attempts = 0
        # sent again after its reply could not be pickled: find which value
        self.check_results = False


class _MapRun:
    """Schedules one map's chunks on the cluster's engines.

    ``items`` is an iterator, read lazily, or a ``range``, list or tuple
    (see :func:`sliceable`), whose chunks are slices of it.
    """

    def __init__(
        self,
        pool: EnginePool,
        spec: TaskSpec,
        items: Iterator[Any] | Sequence[Any],
        options: MapOptions,
        job: MapJob,
        *,
        star: bool,
        engines: list[int],
    ) -> None:
        self.pool = pool
        self.spec = spec
        self.source: Sequence[Any] | None = items if sliceable(items) else None
        self.items: Iterator[Any] = iter(items)
        self.options = options
        self.job = job
        self.star = star
        self.engines = engines
        self.sizer = ChunkSizer(
            engines=max(1, len(engines)), total=job.total, chunksize=options.chunksize
        )
        # (first index, values) of every finished chunk, in completion order;
        # a skipped item's value is _SKIPPED
        self.parts: list[tuple[int, list[Any]]] = []
        self.stored = 0
        self.skipped: set[int] = set()
        self.failed = 0
        self.succeeded = 0
        self.per_engine: dict[int, int] = {}
        self.in_flight: dict[Any, tuple[_Chunk, int]] = {}
        self.retry: list[_Chunk] = []
        # items a time-boxed probe did not run, handed out again first
        self.pending: list[_Chunk] = []
        self.next_index = 0
        self.exhausted = False
        self.started = time.perf_counter()
        self.last_emit = 0.0
        self.packed: tuple[Any, Any] | None = None
        self.epoch = pool.epoch
        # tasks whose printed output is read as it arrives: task -> (engine,
        # characters of stdout and stderr already taken, when it finished)
        self.printing: dict[Any, tuple[int, int, int, float | None]] = {}
        self.new_lines: list[str] = []  # not yet sent with an event
        self.new_warnings = False
        self.last_answer = time.monotonic()  # when a chunk last came back
        self.cache: Any = None  # a _cachedmap.MapCache with --cache
        #: the namespace items run in where the pool has none of its own
        #: (``--local``: a copy of the notebook's); engines use theirs
        self.base: dict[str, Any] | None = None
        self.shipment: Any = None  # the names engines joining the map need

    # -- the loop --------------------------------------------------------

    def run(self) -> list[Any]:
        self.job._running = True
        try:
            self._emit("running", force=True)
            while True:
                if self.job.cancelled():
                    self._cancel_outstanding()
                    raise concurrent.futures.CancelledError()
                self._check_cluster()
                self._fill()
                if not self.in_flight:
                    if self.exhausted and not self.retry and not self.pending:
                        break
                    if not self._usable_engines():
                        if self.pool.engines_coming() or self._recovering():
                            # engines queued in a batch system, or freeing
                            # themselves from cancelled work: wait for them
                            time.sleep(_POLL)
                            continue
                        if self.pool.want(self._items_left(), "a map"):
                            continue  # engines on demand replace lost ones
                        if self.pool.engines_expected():
                            # stuck engines were replaced: start the new ones
                            self.pool.ensure_engines()
                            continue
                        raise MapFailed(
                            "no engines left to run the map"
                            f" ({self._done_count()} items finished)",
                            self._partial_results(),
                        )
                    time.sleep(_POLL)
                    continue
                finished, _ = concurrent.futures.wait(
                    list(self.in_flight),
                    timeout=_POLL,
                    return_when=concurrent.futures.FIRST_COMPLETED,
                )
                if finished:
                    self.last_answer = time.monotonic()
                for ar in finished:
                    try:
                        self._collect(ar)
                    except MapFailed as err:  # an item's error, or no retries
                        # chunks that finished meanwhile count as done too
                        self._harvest()
                        err.partial = self._partial_results()
                        raise
                self._emit("running")
        except BaseException:
            self._cancel_outstanding()
            self._emit(_state_of_exit(), force=True)
            raise
        finally:
            self.job._running = False
        self._emit("done", force=True)
        return self._results()

    def _items_left(self) -> int:
        """Items not finished yet (a large number when the total is unknown)."""
        if self.job.total is None:
            return 1 << 30
        return max(1, self.job.total - self._done_count())

    def _recovering(self) -> bool:
        """Whether an engine of this map is live but still stopping cancelled
        work (it is freed or replaced within seconds: see ``_stale``)."""
        stale = self.pool.stale_engines()
        live = set(self.pool.engine_ids())
        return any(e in live and e in stale for e in self.engines)

    def _check_cluster(self) -> None:
        """Fail the map, keeping its finished results, if its cluster is gone:
        stopped (the session moved on) or a controller that stopped answering.
        Without this a map whose replies can never come would wait forever."""
        why = None
        if self.pool.epoch != self.epoch:
            why = "the cluster was stopped while the map ran"
        elif (
            self.in_flight
            and time.monotonic() - self.last_answer > _CONTROLLER_CHECK
            and not self.pool.controller_responds()
        ):
            why = "the cluster's controller stopped answering"
        if why is not None:
            self.in_flight.clear()
            raise MapFailed(
                f"{why} ({self.stored} items finished, kept in .partial)",
                self._partial_results(),
            )

    def _fill(self) -> None:
        usable = self._usable_engines()
        load = {eid: 0 for eid in usable}  # chunks in flight
        queued = {eid: 0 for eid in usable}  # their items
        for chunk, eid in self.in_flight.values():
            if eid in load:
                load[eid] += 1
                queued[eid] += len(chunk.items)
        while len(self.in_flight) < self.sizer.max_in_flight:
            depth = min(_PER_ENGINE, self.pool.depth)
            free = [eid for eid in usable if load[eid] < depth]
            if not free:
                return
            next_chunk = self._next_chunk()
            if next_chunk is None:
                return
            chunk = next_chunk
            # the engine with the fewest items to go: with chunks of very
            # different sizes (a probe, then the rest split evenly) a count
            # of chunks would give one engine two big ones
            eid = min(free, key=lambda e: (queued[e], load[e]))
            self._send(chunk, eid)
            load[eid] += 1
            queued[eid] += len(chunk.items)

    def _next_chunk(self) -> _Chunk | None:
        if self.retry:
            return self.retry.pop(0)
        if self.cache is not None and not self.pending:
            self._take_stored()
        if self.pending:
            head = self.pending[0]
            size = self.sizer.next_size()
            chunk = _Chunk(head.first, head.items[:size])
            if size >= len(head.items):
                self.pending.pop(0)
            else:
                head.first += size
                head.items = head.items[size:]
            return chunk
        if self.exhausted:
            return None
        # A range slice costs nothing to send however long: the probe can be
        # large and time-boxed, so cheap items are measured over thousands.
        timeboxed = (
            type(self.source) is range
            and self.options.chunksize == "auto"
            and not self.sizer.measured
        )
        size = self.sizer.next_size(timeboxed=timeboxed)
        items: Sequence[Any]
        if self.source is not None:
            items = self.source[self.next_index : self.next_index + size]
        else:
            items = list(itertools.islice(self.items, size))
        if len(items) < size:
            self.exhausted = True
            self.sizer.give_back(size - len(items))
        if not items:
            return None
        budget = self.sizer.probe_seconds if timeboxed and len(items) > 1 else None
        chunk = _Chunk(self.next_index, items, budget)
        self.next_index += len(items)
        return chunk

    def _take_stored(self) -> None:
        """Stored items are results at once; the rest wait in ``pending``,
        in runs of consecutive indices (an item keeps its index, so its seed).
        """
        while not self.pending and not self.exhausted:
            items: Sequence[Any]
            if self.source is not None:
                items = self.source[self.next_index : self.next_index + _STORE_BLOCK]
            else:
                items = list(itertools.islice(self.items, _STORE_BLOCK))
            if len(items) < _STORE_BLOCK:
                self.exhausted = True
            first = self.next_index
            self.next_index += len(items)
            hits, misses = self.cache.split(first, items)
            for start, values in hits:
                self._store(start, values)
                self.succeeded += len(values)
                self.sizer.skip(len(values))
            self.pending.extend(_Chunk(start, run) for start, run in misses)

    def _send(self, chunk: _Chunk, eid: int) -> None:
        chunk.attempts += 1
        if self.packed is None:
            # the function and the spec are the same in every chunk: pickle
            # them once per map, not once per chunk
            self.packed = (self.pool.pack(run_chunk), self.pool.pack(self.spec))
        func, spec = self.packed
        try:
            ar = self.pool.submit(
                eid,
                func,
                spec,
                chunk.first,
                chunk.items,
                self.star,
                self.base,
                chunk.budget,
                chunk.check_results,
            )
        except Exception as err:
            self._check_cluster()  # stopped under the map: that is why
            raise self._unsendable(chunk, err) from None
        self.in_flight[ar] = (chunk, eid)
        self.printing[ar] = (eid, 0, 0, None)

    def _unsendable(self, chunk: _Chunk, err: Exception) -> Exception:
        """The error for a chunk that could not be pickled: name the item."""
        from . import _pickling

        for offset, item in enumerate(chunk.items):
            try:
                _pickling.dumps(item)
            except Exception as item_err:
                if self.star and len(item) == 1:
                    item = item[0]
                return InvalidRequest(
                    f"item {chunk.first + offset} (input {_short(item)}) cannot be"
                    f" sent to the engines: {type(item_err).__name__}: {item_err}"
                )
        return InvalidRequest(
            f"items {chunk.first}-{chunk.first + len(chunk.items) - 1} cannot be"
            f" sent to the engines: {type(err).__name__}: {err}"
        )

    def _usable_engines(self) -> list[int]:
        live = set(self.pool.engine_ids())
        if self.options.targets is None:
            # engines added while the map runs join in, with its names
            for eid in sorted(live):
                if eid not in self.engines:
                    self._join(eid)
                    self.engines.append(eid)
        stale = self.pool.stale_engines()
        usable = [e for e in self.engines if e in live and e not in stale]
        # engines busy with a background job would run chunks only after it;
        # use them only when there is nothing else
        unreserved = set(self.pool.unreserved_engine_ids())
        return [e for e in usable if e in unreserved] or usable

    def _join(self, eid: int) -> None:
        """Send an engine that joins the map the names its chunks need (no
        wait: the engine runs them before the chunks sent after)."""
        if self.shipment is not None:
            self.pool.join(eid, self.shipment)

    # -- results ---------------------------------------------------------

    def _collect(self, ar: Any) -> None:
        chunk, eid = self.in_flight.pop(ar)
        self._finished_printing(ar)
        try:
            outcome: ChunkOutcome = ar.get(_SETTLE)
        except Exception as err:
            self._chunk_failed(chunk, eid, err)
            return
        if outcome.warnings and self.job._add_warnings(outcome.warnings):
            self.new_warnings = True
        self._absorb(outcome, chunk, eid)

    def _finished_printing(self, ar: Any) -> None:
        if ar in self.printing:
            eid, out, err, _ = self.printing[ar]
            self.printing[ar] = (eid, out, err, time.monotonic())

    def _read_output(self, final: bool = False) -> None:
        """Take what running and finished tasks printed since the last look.

        A task's output can arrive after its result, so a finished task is
        read until its output is complete (or for ``_OUTPUT_GRACE`` s), and
        only then dropped from the client's caches.
        """
        now = time.monotonic()
        if final:
            deadline = now + _OUTPUT_GRACE
            for ar in list(self.printing):
                if self.printing[ar][3] is not None:
                    ar.wait_for_output(max(0.0, deadline - time.monotonic()))
        for ar, (eid, out, err, ended) in list(self.printing.items()):
            stdout, stderr = ar.stdout or "", ar.stderr or ""
            for text, offset in ((stdout, out), (stderr, err)):
                if len(text) > offset:
                    # whole lines only, unless the task is over
                    end = len(text) if ended else text.rfind("\n", offset) + 1
                    if end > offset:
                        self.new_lines += self.job._add_lines(eid, text[offset:end])
                        if text is stdout:
                            out = end
                        else:
                            err = end
            self.printing[ar] = (eid, out, err, ended)
            if ended is not None and (
                final
                or getattr(ar, "_output_ready", True)
                or now - ended > _OUTPUT_GRACE
            ):
                del self.printing[ar]
                self._purge(ar)

    def _harvest(self) -> None:
        """Keep the successful items of chunks that have already finished."""
        for ar in [ar for ar in self.in_flight if ar.done()]:
            chunk, _ = self.in_flight.pop(ar)
            self.printing.pop(ar, None)
            with contextlib.suppress(Exception):
                outcome: ChunkOutcome = ar.get(_SETTLE)
                self._save(chunk, outcome)
                values = list(outcome.values)
                for failure in outcome.failures:
                    values[failure.index - chunk.first] = _SKIPPED
                self._store(chunk.first, values)
            self._purge(ar)

    def _absorb(self, outcome: ChunkOutcome, chunk: _Chunk, eid: int) -> None:
        """Take a chunk's values and failures into the map's results."""
        if outcome.interrupted:
            raise KeyboardInterrupt()
        self._save(chunk, outcome)
        self.sizer.record(len(outcome.values), outcome.seconds)
        self.job.chunks.append(
            ChunkRecord(
                eid,
                chunk.first,
                len(outcome.values),
                # the engine's clock, read on the kernel's (see _clock)
                self.pool.to_kernel_clock(eid, outcome.started),
                outcome.seconds,
            )
        )
        key = eid
        if outcome.stopped:
            # a time-boxed probe: what it did not run is handed out again
            rest = chunk.items[len(outcome.values) :]
            self.pending.insert(0, _Chunk(chunk.first + len(outcome.values), rest))
            self.sizer.give_back(len(rest))
        if not outcome.failures:
            # the common case: the chunk's list is kept as it came
            count = len(outcome.values)
            self._store(chunk.first, outcome.values)
            self.succeeded += count
            self.per_engine[key] = self.per_engine.get(key, 0) + count
            return
        failures = {f.index: f for f in outcome.failures}
        values: list[Any] = []
        for offset, value in enumerate(outcome.values):
            index = chunk.first + offset
            failure = failures.get(index)
            if failure is None:
                values.append(value)
                self.succeeded += 1
                self.per_engine[key] = self.per_engine.get(key, 0) + 1
                continue
            self.failed += 1
            if self.options.on_error == "raise":
                # the items before it in this chunk count as finished
                self._store(chunk.first, values)
                item = chunk.items[offset]
                if self.star and len(item) == 1:
                    item = item[0]
                engine = None if eid == LOCAL_ENGINE else eid
                raise ItemError(failure, item, engine, self._partial_results())
            if self.options.on_error == "collect":
                exc = failure.exception
                if exc is None:
                    exc = RemoteItemError(failure)
                with contextlib.suppress(Exception):
                    exc.add_note(failure.traceback)
                values.append(exc)
            else:
                values.append(_SKIPPED)
                self.skipped.add(index)
        self._store(chunk.first, values)

    def _save(self, chunk: _Chunk, outcome: ChunkOutcome) -> None:
        """Into the result store the moment results arrive (``--cache``)."""
        if self.cache is not None:
            failed = {failure.index for failure in outcome.failures}
            self.cache.save(chunk.first, outcome.values, failed)

    def _store(self, first: int, values: list[Any]) -> None:
        self.parts.append((first, values))
        self.stored += len(values)

    def _partial_results(self) -> dict[int, Any]:
        """Index -> result of every item finished so far (for MapFailed)."""
        partial: dict[int, Any] = {}
        for first, values in self.parts:
            for index, value in enumerate(values, first):
                if value is not _SKIPPED:
                    partial[index] = value
        return partial

    def _chunk_failed(self, chunk: _Chunk, eid: int, err: Exception) -> None:
        import ipyparallel as ipp

        if not isinstance(err, ipp.error.IPythonError):
            raise err  # raised here, not reported by an engine (--local)
        if (
            isinstance(err, ipp.error.RemoteError)
            and err.ename == UndefinedNames.__name__
        ):
            raise InvalidRequest(err.evalue) from None
        if not is_engine_death(err):
            if (
                isinstance(err, ipp.error.RemoteError)
                and err.ename == "KeyboardInterrupt"
            ):
                raise KeyboardInterrupt()
            if isinstance(err, ipp.error.RemoteError) and not chunk.check_results:
                # paracell's wrapper catches the items' own errors: what
                # failed is the reply, most likely a value that cannot be
                # pickled; run the chunk again, checking each value
                chunk.check_results = True
                self.retry.append(chunk)
                return
            what = (
                f"{err.ename}: {getattr(err, 'evalue', '')}"
                if hasattr(err, "ename")
                else err
            )
            raise MapFailed(
                f"engine {eid} could not run items {chunk.first}-"
                f"{chunk.first + len(chunk.items) - 1}: {what}",
                self._partial_results(),
            )
        if eid in self.engines:
            self.engines.remove(eid)
        self.pool.forget_engines([eid])
        if chunk.attempts > self.options.retries:
            raise MapFailed(
                f"engine {eid} died while running items {chunk.first}-"
                f"{chunk.first + len(chunk.items) - 1}, and no retries are left"
                f" (--retries {self.options.retries})",
                self._partial_results(),
            )
        self.retry.append(chunk)

    def _results(self) -> list[Any]:
        # ordered: chunks by their first index; else in completion order
        parts = self.parts
        if self.options.ordered:
            parts = sorted(parts, key=itemgetter(0))
        results: list[Any] = []
        for _, values in parts:
            results.extend(values)
        if self.skipped:
            results = [value for value in results if value is not _SKIPPED]
        return results

    def _done_count(self) -> int:
        return self.stored

    def _purge(self, ar: Any) -> None:
        self.pool.purge(ar)

    # -- progress and cancellation --------------------------------------

    def _emit(self, state: JobState, force: bool = False) -> None:
        now = time.perf_counter()
        if not force and now - self.last_emit < _PROGRESS_PERIOD:
            return
        self.last_emit = now
        if self.printing:
            self._read_output(final=state != "running")
        lines, self.new_lines = tuple(self.new_lines), []
        warnings: tuple[str, ...] = ()
        if self.new_warnings or (state != "running" and self.job._warnings):
            warnings = self.job.warning_summaries()
            self.new_warnings = False
        self.job._emit(
            MapProgress(
                state=state,
                done=self.succeeded + self.failed,
                failed=self.failed,
                total=self.job.total,
                elapsed=now - self.started,
                per_engine=dict(self.per_engine),
                running_fraction=self._running_fraction(),
                lines=lines,
                warnings=warnings,
                cached=0 if self.cache is None else self.cache.hits,
            )
        )

    def _running_fraction(self) -> float:
        partial = 0.0
        for ar in self.in_flight:
            data = getattr(ar, "data", None)
            if isinstance(data, dict) and "paracell_progress" in data:
                done, total, _ = data["paracell_progress"]
                if total:
                    partial += min(1.0, done / total)
        return partial

    def _cancel_outstanding(self) -> None:
        """Abort queued chunks, interrupt running ones, and wait briefly."""
        pending = {ar: eid for ar, (_, eid) in self.in_flight.items()}
        self.in_flight.clear()
        for ar in pending:
            self.printing.pop(ar, None)
        self.pool.interrupt(pending, grace=_CANCEL_GRACE)


def _state_of_exit() -> JobState:
    import sys

    exc = sys.exc_info()[1]
    if isinstance(exc, (KeyboardInterrupt, concurrent.futures.CancelledError)):
        return "cancelled"
    return "failed"
