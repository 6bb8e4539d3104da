"""The loop behind a map: chunks to engines, results back in order, nothing lost.

:class:`_MapRun` sends the chunks an :class:`~._mapfeed.ItemFeed` hands out
to a pool's engines (a bounded number in flight, so generators are consumed
lazily), takes their outcomes into :class:`~._mapresults.MapResults`,
re-sends the chunks of an engine that died, and on cancel or interrupt
aborts queued chunks and signals running ones so the cluster is free for the
next call at once.  It reaches engines only through an
:class:`~._pool.EnginePool`.
"""

import concurrent.futures
import contextlib
import time
from collections.abc import Iterator, Sequence
from typing import Any

from ._chunking import remember_pace, sizer_for_map
from ._engine import TaskSpec
from ._enginemap import ChunkOutcome, run_chunk
from ._mapengines import MapEngines
from ._mapfaults import as_given, chunk_error, unsendable
from ._mapfeed import Chunk, ItemFeed
from ._mapjob import (
    ChunkRecord,
    ItemError,
    JobState,
    MapFailed,
    MapJob,
    MapOptions,
    MapProgress,
)
from ._mapoutput import TaskOutput
from ._mapresults import MapResults
from ._pool import LOCAL_ENGINE, SETTLE, EnginePool
from ._waiting import finished, wait_for

__all__ = ["_MapRun"]

#: Chunks kept in flight per engine: one running, one queued behind it, so an
#: engine never waits for the network between chunks.
_PER_ENGINE = 2
_POLL = 0.05
_PROGRESS_PERIOD = 0.1
_CANCEL_GRACE = 1.5
#: With chunks out and none back for this long, ask whether the controller lives.
_CONTROLLER_CHECK = 2.0


class _MapRun:
    """Schedules one map's chunks on the cluster's engines.

    ``items`` is an iterator, read lazily, or a ``range``, list or tuple
    (see :func:`~._mapfeed.sliceable`), whose chunks are slices of it.
    ``cache``: a :class:`~._cachedmap.MapCache` (``--cache``); ``shipment``:
    the names engines that join the map need; ``base``: the namespace items
    run in where the pool has none of its own (``--local``: a copy of the
    notebook's; engines use theirs).
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
        cache: Any = None,
        shipment: Any = None,
        base: dict[str, Any] | None = None,
    ) -> None:
        self.pool = pool
        self.spec = spec
        self.options = options
        self.job = job
        self.star = star
        self.engines = MapEngines(
            pool, engines, fixed=options.targets is not None, shipment=shipment
        )
        self.cache = cache
        self.base = base
        self.sizer = sizer_for_map(
            spec.key, len(engines), job.total, options.chunksize, options.concurrency
        )
        self.results = MapResults()
        self.feed = ItemFeed(
            items,
            self.sizer,
            auto=options.chunksize == "auto",
            results=self.results,
            cache=cache,
        )
        self.output = TaskOutput(pool, job.add_lines)
        self.in_flight: dict[Any, tuple[Chunk, int]] = {}
        self.started = time.perf_counter()
        self.last_emit = 0.0
        self.packed: tuple[Any, Any] | None = None
        self.epoch = pool.epoch
        self.new_warnings = False  # not yet sent with an event
        self.last_answer = time.monotonic()  # when a chunk last came back

    # -- the loop --------------------------------------------------------

    def run(self) -> list[Any]:
        """Run the map to its end; its results (in input order when
        ``ordered``)."""
        self.job.set_running(True)
        try:
            self._emit("running", force=True)
            while self._step():
                pass
        except BaseException:
            self._cancel_outstanding()
            self._emit(_state_of_exit(), force=True)
            raise
        finally:
            self.job.set_running(False)
        self._emit("done", force=True)
        remember_pace(self.spec.key, self.sizer.seconds_per_item)
        return self.results.in_order(self.options.ordered)

    def _step(self) -> bool:
        """One turn of the loop: send, wait a moment, collect; False once
        every item is done."""
        if self.job.cancelled():
            self._cancel_outstanding()
            raise concurrent.futures.CancelledError()
        self._check_cluster()
        self._fill()
        if not self.in_flight:
            if self.feed.drained:
                return False
            self._await_engines()
            return True
        self._collect_finished()
        self._emit("running")
        return True

    def _await_engines(self) -> None:
        """With items left and none in flight: wait a moment for engines to
        send them to, or fail the map when none will come."""
        if self.engines.usable():
            time.sleep(_POLL)
            return
        if self.pool.engines_coming() or self.engines.recovering():
            # engines queued in a batch system, or freeing themselves from
            # cancelled work: wait for them
            time.sleep(_POLL)
            return
        if self.pool.want(self._items_left(), "a map"):
            return  # engines on demand replace lost ones
        if self.pool.engines_expected():
            # stuck engines were replaced: start the new ones
            self.pool.ensure_engines()
            return
        raise MapFailed(
            f"no engines left to run the map ({self.results.stored} items finished)",
            self.results.partial(),
        )

    def _collect_finished(self) -> None:
        """Wait a moment for chunks to finish; take those that did."""
        finished, _ = wait_for(self.in_flight, _POLL, first=True)
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

    def _items_left(self) -> int:
        """Items not finished yet (a large number when the total is unknown)."""
        if self.job.total is None:
            return 1 << 30
        return max(1, self.job.total - self.results.stored)

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
        usable = self.engines.usable()
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
            next_chunk = self.feed.next_chunk()
            if next_chunk is None:
                return
            chunk = next_chunk
            # the engine with the fewest items to go: with chunks of very
            # different sizes (a probe, then the rest split evenly) a count
            # of chunks would give one engine two big ones
            eid = min(free, key=lambda e: (queued[e], load[e]))
            if not self._send(chunk, eid):
                usable.remove(eid)
                continue
            load[eid] += 1
            queued[eid] += len(chunk.items)

    def _send(self, chunk: Chunk, eid: int) -> bool:
        """Send ``chunk`` to ``eid``; False if that engine is gone."""
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
            if eid in self.pool.engine_ids():
                raise unsendable(chunk, err, star=self.star) from None
            # gone since it was picked: the chunk (never run) goes elsewhere
            chunk.attempts -= 1
            self.engines.died(eid)
            self.feed.retry(chunk)
            return False
        self.in_flight[ar] = (chunk, eid)
        self.output.watch(ar, eid)
        return True

    # -- results ---------------------------------------------------------

    def _collect(self, ar: Any) -> None:
        chunk, eid = self.in_flight.pop(ar)
        self.output.finished(ar)
        try:
            outcome: ChunkOutcome = ar.get(SETTLE)
        except Exception as err:
            self._chunk_failed(chunk, eid, err)
            return
        if outcome.warnings and self.job.add_warnings(outcome.warnings):
            self.new_warnings = True
        self._absorb(outcome, chunk, eid)

    def _harvest(self) -> None:
        """Keep the successful items of chunks that have already finished."""
        for ar in [ar for ar in self.in_flight if finished(ar)]:
            chunk, _ = self.in_flight.pop(ar)
            self.output.forget(ar)
            with contextlib.suppress(Exception):
                self._keep(chunk, ar.get(SETTLE))
            self.pool.purge(ar)

    def _keep(self, chunk: Chunk, outcome: ChunkOutcome) -> None:
        """The items a chunk finished, kept as the map stops: in its results
        (``.partial``) and, with ``--cache``, in the store.  An interrupted
        chunk's outcome holds the items it finished before the interrupt."""
        self._save(chunk, outcome)
        self.results.keep(chunk.first, outcome)

    def _absorb(self, outcome: ChunkOutcome, chunk: Chunk, eid: int) -> None:
        """Take a chunk's values and failures into the map's results."""
        if outcome.interrupted:
            self._keep(chunk, outcome)  # what it finished before the interrupt
            raise KeyboardInterrupt()
        self._save(chunk, outcome)
        self._record(outcome, chunk, eid)
        if outcome.stopped:
            # a time-boxed probe: what it did not run is handed out again
            ran = len(outcome.values)
            self.feed.put_back(chunk.first + ran, chunk.items[ran:])
        failure = self.results.take(chunk.first, outcome, eid, self.options.on_error)
        if failure is not None:  # --on-error raise
            item = as_given(chunk.items[failure.index - chunk.first], self.star)
            engine = None if eid == LOCAL_ENGINE else eid
            raise ItemError(failure, item, engine, self.results.partial())

    def _record(self, outcome: ChunkOutcome, chunk: Chunk, eid: int) -> None:
        """A chunk's timing, for the sizer and the job's timeline."""
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

    def _save(self, chunk: Chunk, outcome: ChunkOutcome) -> None:
        """Into the result store the moment results arrive (``--cache``)."""
        if self.cache is not None:
            failed = {failure.index for failure in outcome.failures}
            self.cache.save(chunk.first, outcome.values, failed)

    def _chunk_failed(self, chunk: Chunk, eid: int, err: Exception) -> None:
        """Send a failed chunk again where its error allows (see
        :func:`~._mapfaults.chunk_error`), or fail the map."""
        if chunk_error(err, chunk, eid, self.results) == "reply failed":
            # run the chunk again, checking each value
            chunk.check_results = True
            self.feed.retry(chunk)
            return
        self.engines.died(eid)
        if chunk.attempts > self.options.retries:
            raise MapFailed(
                f"engine {eid} died while running items {chunk.first}-"
                f"{chunk.first + len(chunk.items) - 1}, and no retries are left"
                f" (--retries {self.options.retries})",
                self.results.partial(),
            )
        self.feed.retry(chunk)

    # -- progress and cancellation --------------------------------------

    def _emit(self, state: JobState, force: bool = False) -> None:
        now = time.perf_counter()
        if not force and now - self.last_emit < _PROGRESS_PERIOD:
            return
        self.last_emit = now
        lines = self.output.read(final=state != "running")
        warnings: tuple[str, ...] = ()
        if self.new_warnings or state != "running":
            warnings = self.job.warning_summaries()
            self.new_warnings = False
        self.job.emit(
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
            self.output.forget(ar)
        self.pool.interrupt(pending, grace=_CANCEL_GRACE)
        # a running chunk answers the interrupt with the items it finished
        for ar, chunk in chunks.items():
            if finished(ar):
                with contextlib.suppress(Exception):
                    self._keep(chunk, ar.get(0))


def _state_of_exit() -> JobState:
    import sys

    exc = sys.exc_info()[1]
    if isinstance(exc, (KeyboardInterrupt, concurrent.futures.CancelledError)):
        return "cancelled"
    return "failed"
