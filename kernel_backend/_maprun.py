"""The loop behind a map: chunks to engines, results back in order, nothing lost.

:class:`_MapRun` sends chunks to a pool's engines (a bounded number in
flight, so generators are consumed lazily), sizes them with
:class:`ChunkSizer`, re-sends the chunks of an engine that died, and on
cancel or interrupt aborts queued chunks and signals running ones so the
cluster is free for the next call at once.  It reaches engines only through
an :class:`~._pool.EnginePool`.
"""

import concurrent.futures
import contextlib
import itertools
import time
from collections.abc import Iterator, Sequence
from typing import Any, TypeGuard

from ._chunking import ChunkSizer, approx_bytes
from ._engine import ChunkOutcome, TaskSpec, UndefinedNames, run_chunk
from ._errors import InvalidRequest, is_engine_death
from ._mapjob import (
    ChunkRecord,
    ItemError,
    JobState,
    MapFailed,
    MapJob,
    MapOptions,
    MapProgress,
    RemoteItemError,
    _short,
)
from ._mapresults import SKIPPED, MapResults
from ._pool import LOCAL_ENGINE, SETTLE, EnginePool

__all__ = ["_MapRun", "sliceable"]

#: Chunks kept in flight per engine: one running, one queued behind it, so an
#: engine never waits for the network between chunks.
_PER_ENGINE = 2
_POLL = 0.05
_PROGRESS_PERIOD = 0.1
_CANCEL_GRACE = 1.5
#: How long a finished task's printed output is waited for after its result.
_OUTPUT_GRACE = 1.0
#: With chunks out and none back for this long, ask whether the controller lives.
_CONTROLLER_CHECK = 2.0
#: Items looked up in the result store at a time (``--cache``).
_STORE_BLOCK = 1024
#: Items weighed at a map's start to keep chunks within a byte budget.
_ITEMS_WEIGHED = 8


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
        self.results = MapResults()
        self.in_flight: dict[Any, tuple[_Chunk, int]] = {}
        self.retry: list[_Chunk] = []
        # items a time-boxed probe did not run, handed out again first
        self.pending: list[_Chunk] = []
        self.next_index = 0
        self.exhausted = False
        self.weighed = 0  # items weighed for the sizer's byte budget
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
                            f" ({self.results.stored} items finished)",
                            self.results.partial(),
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
                        err.partial = self.results.partial()
                        raise
                self._emit("running")
        except BaseException:
            self._cancel_outstanding()
            self._emit(_state_of_exit(), force=True)
            raise
        finally:
            self.job._running = False
        self._emit("done", force=True)
        return self.results.in_order(self.options.ordered)

    def _items_left(self) -> int:
        """Items not finished yet (a large number when the total is unknown)."""
        if self.job.total is None:
            return 1 << 30
        return max(1, self.job.total - self.results.stored)

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
                f"{why} ({self.results.stored} items finished, kept in .partial)",
                self.results.partial(),
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
            self._weigh(chunk.items)
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
        if type(self.source) is not range:
            self._weigh(items)
        budget = self.sizer.probe_seconds if timeboxed and len(items) > 1 else None
        chunk = _Chunk(self.next_index, items, budget)
        self.next_index += len(items)
        return chunk

    def _weigh(self, items: Sequence[Any]) -> None:
        """Weigh the map's first few items, so that an automatic chunk of
        heavy items stays within the sizer's byte budget."""
        wanted = _ITEMS_WEIGHED - self.weighed
        if wanted > 0:
            sample = items[:wanted]
            self.weighed += len(sample)
            nbytes = approx_bytes(sample)
            if nbytes is not None:
                self.sizer.note_bytes(len(sample), nbytes)

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
                self.results.store(start, values)
                self.results.succeeded += len(values)
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
            outcome: ChunkOutcome = ar.get(SETTLE)
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
                self._keep(chunk, ar.get(SETTLE))
            self._purge(ar)

    def _keep(self, chunk: _Chunk, outcome: ChunkOutcome) -> None:
        """The items a chunk finished, kept as the map stops: in its results
        (``.partial``) and, with ``--cache``, in the store.  An interrupted
        chunk's outcome holds the items it finished before the interrupt."""
        self._save(chunk, outcome)
        values = list(outcome.values)
        for failure in outcome.failures:
            values[failure.index - chunk.first] = SKIPPED
        self.results.store(chunk.first, values)

    def _absorb(self, outcome: ChunkOutcome, chunk: _Chunk, eid: int) -> None:
        """Take a chunk's values and failures into the map's results."""
        if outcome.interrupted:
            self._keep(chunk, outcome)  # what it finished before the interrupt
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
            self.results.store(chunk.first, outcome.values)
            self.results.count(key, count)
            return
        failures = {f.index: f for f in outcome.failures}
        values: list[Any] = []
        for offset, value in enumerate(outcome.values):
            index = chunk.first + offset
            failure = failures.get(index)
            if failure is None:
                values.append(value)
                self.results.count(key, 1)
                continue
            self.results.failed += 1
            if self.options.on_error == "raise":
                # the items before it in this chunk count as finished
                self.results.store(chunk.first, values)
                item = chunk.items[offset]
                if self.star and len(item) == 1:
                    item = item[0]
                engine = None if eid == LOCAL_ENGINE else eid
                raise ItemError(failure, item, engine, self.results.partial())
            if self.options.on_error == "collect":
                exc = failure.exception
                if exc is None:
                    exc = RemoteItemError(failure)
                with contextlib.suppress(Exception):
                    exc.add_note(failure.traceback)
                values.append(exc)
            else:
                values.append(SKIPPED)
                self.results.skipped.add(index)
        self.results.store(chunk.first, values)

    def _save(self, chunk: _Chunk, outcome: ChunkOutcome) -> None:
        """Into the result store the moment results arrive (``--cache``)."""
        if self.cache is not None:
            failed = {failure.index for failure in outcome.failures}
            self.cache.save(chunk.first, outcome.values, failed)

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
                self.results.partial(),
            )
        if eid in self.engines:
            self.engines.remove(eid)
        self.pool.forget_engines([eid])
        if chunk.attempts > self.options.retries:
            raise MapFailed(
                f"engine {eid} died while running items {chunk.first}-"
                f"{chunk.first + len(chunk.items) - 1}, and no retries are left"
                f" (--retries {self.options.retries})",
                self.results.partial(),
            )
        self.retry.append(chunk)

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
                done=self.results.done,
                failed=self.results.failed,
                total=self.job.total,
                elapsed=now - self.started,
                per_engine=dict(self.results.per_engine),
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
        chunks = {ar: chunk for ar, (chunk, _) in self.in_flight.items()}
        self.in_flight.clear()
        for ar in pending:
            self.printing.pop(ar, None)
        self.pool.interrupt(pending, grace=_CANCEL_GRACE)
        # a running chunk answers the interrupt with the items it finished
        for ar, chunk in chunks.items():
            if ar.done():
                with contextlib.suppress(Exception):
                    self._keep(chunk, ar.get(0))


def _state_of_exit() -> JobState:
    import sys

    exc = sys.exc_info()[1]
    if isinstance(exc, (KeyboardInterrupt, concurrent.futures.CancelledError)):
        return "cancelled"
    return "failed"
