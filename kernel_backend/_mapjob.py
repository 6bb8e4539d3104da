"""A map as the user holds it: :class:`MapJob` (a ``Future`` that is also
awaitable), its options, its progress events, its timeline and its errors.
The loop that runs it is :class:`._maprun._MapRun`."""

from __future__ import annotations

import asyncio
import concurrent.futures
import re
import reprlib
import threading
import time
from collections.abc import Callable, Generator, Iterator, Sequence
from dataclasses import dataclass, replace
from typing import Any, Literal

from ._engine import ItemFailure
from ._errors import InvalidRequest
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
    "interrupted_error",
]

OnError = Literal["raise", "collect", "skip"]
JobState = Literal["queued", "running", "done", "failed", "cancelled"]


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
    #: ship names larger than the limit (see ``_shipment.ship_limit``)
    ship_large: bool = False
    #: items an engine runs at once, awaiting (an async element only)
    concurrency: int = 1

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
        if (
            isinstance(self.concurrency, bool)
            or not isinstance(self.concurrency, int)
            or self.concurrency < 1
        ):
            raise InvalidRequest(
                f"--concurrency must be a whole number >= 1, not {self.concurrency!r}"
            )
        if self.concurrency > 1 and self.seed is not None:
            raise InvalidRequest(
                "--seed cannot go with --concurrency: items run at once would"
                " draw from the random streams in turns no run repeats; drop one"
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

    # -- what the map's loop reports (``_maprun``) --------------------------

    def add_lines(self, engine: int | None, text: str) -> list[str]:
        """Take printed text from ``engine``; returns the new lines as shown."""
        added = []
        for raw in text.splitlines():
            item, line = _item_of(raw)
            where = "local" if engine is None or engine < 0 else f"engine {engine}"
            shown = f"[item {item} · {where}] {line}" if item is not None else raw
            self._lines.append((item, shown))
            added.append(shown)
        return added

    def add_warnings(self, caught: Sequence[tuple[int, str, str, str, int]]) -> bool:
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

    def emit(self, event: MapProgress) -> None:
        """Make ``event`` the map's progress and tell the observers."""
        self._progress = event
        self._updates.emit(event)

    def set_running(self, running: bool) -> None:
        """Whether the map's loop is running it now."""
        self._running = running

    def run_in_thread(self, target: Callable[[], None]) -> None:
        """Run the map's loop in a thread of its own (``--async``)."""
        self._thread = threading.Thread(target=target, name="paracell-map", daemon=True)
        self._thread.start()

    def running(self) -> bool:
        return self._running and not self.done()

    def __await__(self) -> Generator[Any, None, Any]:
        return asyncio.wrap_future(self).__await__()

    def __repr__(self) -> str:
        return self._progress.summary()

    def _repr_pretty_(self, p: Any, cycle: bool) -> None:
        p.text(repr(self))


def interrupted_error(partial: dict[int, Any], total: int | None) -> KeyboardInterrupt:
    """The ``KeyboardInterrupt`` of a map stopped while it was waited for.

    A plain ``KeyboardInterrupt``, not a subclass: ``except
    KeyboardInterrupt``, the kernel and front ends (whose error reply names
    the type) all see an interrupt.  It carries ``partial`` (item index ->
    result of every item that had finished), and IPython shows it as the one
    line ``KeyboardInterrupt: <message>`` through the ``_render_traceback_``
    it finds on the instance, instead of paracell's frames.  ``total``:
    the map's item count, if known.
    """
    if partial:
        of = "" if total is None else f" of {total}"
        message = (
            f"pmap stopped: {len(partial)}{of} items had finished;"
            " their results are kept in sys.last_value.partial"
        )
    else:
        message = "pmap stopped before any item finished"
    error = KeyboardInterrupt(message)
    error.partial = partial  # type: ignore[attr-defined]
    line = f"KeyboardInterrupt: {message}"
    error._render_traceback_ = lambda: [line]  # type: ignore[attr-defined]
    return error


_ITEM_PREFIX = re.compile(r"\[item (\d+)\] ")


def _item_of(line: str) -> tuple[int | None, str]:
    """Split the ``[item i] `` an engine put before a printed line."""
    match = _ITEM_PREFIX.match(line)
    if match is None:
        return None, line
    return int(match.group(1)), line[match.end() :]
