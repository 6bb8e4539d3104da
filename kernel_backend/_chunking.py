"""How many items to put in each chunk of a map.

A chunk is one task on an engine. Too small and the per-task overhead (about
a millisecond of messaging) dominates trivial items; too large and engines
sit idle while one finishes a long chunk at the end. :class:`ChunkSizer`
aims each chunk at a fixed compute time, learning the time per item from
finished chunks. It holds no clock: the caller reports measured durations,
which keeps the policy deterministic and testable.
"""

from __future__ import annotations

import math
import operator
import pickle
import sys
import threading
from collections import OrderedDict
from collections.abc import Sequence
from typing import Any, Literal

from ._errors import InvalidRequest

__all__ = [
    "UNBOXED_SHARE",
    "ChunkSizer",
    "approx_bytes",
    "known_pace",
    "remember_pace",
    "sizer_for_map",
    "validate_chunksize",
]

# Chunks outstanding per engine: one computing, one queued behind it so the
# engine never waits for a round trip, one spare for jitter. More would only
# pull items out of the user's generator early.
_IN_FLIGHT_PER_ENGINE = 3

# An engine's share of a map up to this many items goes out whole, not as
# a time-boxed probe: a probe of slow items stops after one and sends the
# rest back to be sent again, a second round trip per engine (32 engines of
# 2 items each: a second wave of 32 sends), while two chunks in flight per
# engine commit that many items to it anyway.
UNBOXED_SHARE = 2

# Bytes an automatic chunk's items may weigh: what the kernel holds per chunk
# in flight (two per engine) and an engine unpacks at once.  Time alone
# would grow cheap items to max_chunksize however heavy each one is (100,000
# items of 1 KB: 100 MB a chunk).
CHUNK_BYTES = 8 * 2**20

# Weight kept by the time-per-item estimate at each finished chunk, so the
# estimate follows items whose cost drifts during the map (about the last
# ten chunks count) without a single noisy chunk swinging it.
_DECAY = 0.9


def validate_chunksize(value: Any) -> int | Literal["auto"]:
    """Check a ``--chunksize`` value.

    Parameters
    ----------
    value
        ``"auto"``, a whole number >= 1, or a string of one.

    Returns
    -------
    int or "auto"

    Raises
    ------
    InvalidRequest
        For 0, negative numbers, floats, booleans and other strings.
    """
    number: int | None = None
    if isinstance(value, str):
        text = value.strip()
        if text.lower() == "auto":
            return "auto"
        try:
            number = int(text)
        except ValueError:
            number = None
    elif not isinstance(value, bool):  # True is an int, but not a size
        try:
            number = operator.index(value)  # int and numpy integers, not floats
        except TypeError:
            number = None
    if number is None or number < 1:
        raise InvalidRequest(
            f"--chunksize must be 'auto' or a whole number >= 1, not '{value}'"
        )
    if number > sys.maxsize:
        raise InvalidRequest(
            f"--chunksize {number} is more items than a chunk can hold;"
            " use 'auto' or a number up to a few thousand"
        )
    return number


class ChunkSizer:
    """Chooses chunk sizes for one map.

    Parameters
    ----------
    engines
        Number of engines the map runs on.
    total
        Number of items, if known (``len`` of the input), else ``None``.
    chunksize
        ``"auto"``, or a fixed number of items per chunk.
    target_seconds
        Compute time to aim each chunk at, in ``"auto"`` mode.
    min_chunks_per_engine
        With ``total`` known, keep at least this many chunks per engine for
        the items not yet handed out, so uneven items balance out: chunks
        shrink towards the end of the map.
    max_chunksize
        Upper bound on an automatic chunk size.
    min_seconds
        The end-of-map cap never shrinks a chunk below this much estimated
        compute, so cheap items are not sent in costly little chunks.
    probe_seconds
        Time budget of a time-boxed probe (see Notes).
    max_bytes
        Upper bound on what an automatic chunk's items weigh, once
        :meth:`note_bytes` has told what items weigh.
    pace
        Seconds per item an earlier map of the same code measured (see
        :func:`known_pace`), if any: time-boxed probes then go to only as
        many engines as the map's work is worth (see Notes).
    min_chunksize
        Fewest items in an automatic chunk (while that many are left): an
        engine running ``--concurrency N`` items at once needs N a chunk.

    Notes
    -----
    In ``"auto"`` mode, until the first chunk has been recorded, chunks are
    probes: one item per engine, then two per engine, then four, and so on,
    so the first measurements arrive after very little work. Afterwards a
    chunk holds ``target_seconds / seconds_per_item`` items, clamped to
    ``[1, max_chunksize]`` and to the end-of-map cap above.  When what is
    left holds less than ``min_seconds`` of work per engine, it is split
    once into one equal chunk per engine (cheap items: a map of 200,000
    trivial items ends in one chunk per engine, not a big chunk and a
    remainder that leaves an engine idle).
    ``seconds_per_item`` is a decayed, item-weighted mean: total seconds over
    total items of the recorded chunks, each older chunk's share multiplied
    by 0.9 per newer chunk. Weighting by items keeps a one-item probe from
    outweighing a thousand-item chunk; the decay lets the estimate follow
    items that grow slower or faster as the map goes on.

    A caller that can send many items at no cost (a slice of a ``range``)
    may ask for a *time-boxed* probe instead: ``next_size(timeboxed=True)``
    before the first measurement gives an engine's even share of the map,
    ``ceil(total / engines)`` (at most ``max_chunksize``), and the caller has
    the engine stop starting items once ``probe_seconds`` have passed, and
    hands back what it did not run with :meth:`give_back`.  Cheap items are
    then measured over thousands of them, not one, and a map of trivial
    items may end with its probes; slow items still stop a probe after one
    item.

    With a ``pace`` from an earlier map, the probes share the map among
    only as many engines as get ``min_seconds`` of its work each (at least
    one): a map of trivial items on more engines than cores otherwise
    wakes every engine for a few items.  A pace that no longer holds costs
    one time box: an engine that finds its share slower stops at its budget
    and gives the rest back, to be spread over every engine.

    Each :meth:`next_size` call counts its items as handed out; call it once
    per chunk sent.
    """

    def __init__(
        self,
        *,
        engines: int,
        total: int | None,
        chunksize: int | str = "auto",
        target_seconds: float = 0.2,
        min_chunks_per_engine: int = 4,
        max_chunksize: int = 100_000,
        min_seconds: float = 0.02,
        probe_seconds: float = 0.05,
        max_bytes: int = CHUNK_BYTES,
        pace: float | None = None,
        min_chunksize: int = 1,
    ) -> None:
        if engines < 1:
            raise ValueError(f"engines must be >= 1, not {engines}")
        if total is not None and total < 0:
            raise ValueError(f"total must be >= 0 or None, not {total}")
        if not target_seconds > 0:
            raise ValueError(f"target_seconds must be > 0, not {target_seconds}")
        if min_chunks_per_engine < 1:
            raise ValueError(
                f"min_chunks_per_engine must be >= 1, not {min_chunks_per_engine}"
            )
        if not probe_seconds > 0:
            raise ValueError(f"probe_seconds must be > 0, not {probe_seconds}")
        if max_chunksize < 1:
            raise ValueError(f"max_chunksize must be >= 1, not {max_chunksize}")
        size = validate_chunksize(chunksize)
        self._fixed: int | None = None if size == "auto" else size
        self._engines = engines
        self._total = total
        self._target_seconds = target_seconds
        self._min_chunks = min_chunks_per_engine * engines
        self._max_chunksize = max_chunksize
        self._min_seconds = min_seconds
        self.probe_seconds = probe_seconds
        self._handed_out = 0
        self._chunks_handed_out = 0
        self._weighted_seconds = 0.0
        self._weighted_items = 0.0
        self._tail: int | None = None
        self._max_bytes = max_bytes
        self._sampled_items = 0
        self._sampled_bytes = 0
        self._pace = pace if pace is not None and pace >= 0 else None
        self._min_chunksize = max(1, min_chunksize)

    @property
    def max_in_flight(self) -> int:
        """Most chunks to have outstanding at once, so inputs are read lazily."""
        return _IN_FLIGHT_PER_ENGINE * self._engines

    @property
    def measured(self) -> bool:
        """Whether a finished chunk has been recorded (probing is over)."""
        return self._weighted_items > 0

    def next_size(self, *, timeboxed: bool = False) -> int:
        """Number of items for the next chunk (always >= 1).

        ``timeboxed``: the caller runs the chunk with a time budget of
        :attr:`probe_seconds` and gives back what was not run; before the
        first measurement, in ``"auto"`` mode, the probe is then large.
        """
        if self._fixed is not None:
            size = self._fixed
        elif timeboxed and not self.measured:
            size = self._max_chunksize
            if self._total is not None:
                shares = self.probed_engines()
                size = max(1, min(size, math.ceil(self._total / shares)))
        else:
            size = self._auto_size()
            if size < self._min_chunksize:
                size = self._min_chunksize
                if self._total is not None:
                    size = max(1, min(size, self._total - self._handed_out))
        self._handed_out += size
        self._chunks_handed_out += 1
        return size

    def probed_engines(self) -> int:
        """Engines the time-boxed probes share the map among: all of them,
        or with a known ``pace`` those its work is worth."""
        if self._pace is None or self._total is None:
            return self._engines
        worth = int(self._total * self._pace / self._min_seconds)
        return max(1, min(self._engines, worth))

    @property
    def seconds_per_item(self) -> float | None:
        """The measured time per item (decayed mean), once measured."""
        if not self.measured:
            return None
        return self._weighted_seconds / self._weighted_items

    def give_back(self, items: int) -> None:
        """``items`` handed out were not run (a time-boxed probe's rest)."""
        if items < 0:
            raise ValueError(f"items must be >= 0, not {items}")
        self._handed_out = max(0, self._handed_out - items)

    def skip(self, items: int) -> None:
        """``items`` need no running (their results were stored): they count
        as handed out, but not as chunks, so probing is not cut short."""
        if items < 0:
            raise ValueError(f"items must be >= 0, not {items}")
        self._handed_out += items

    def note_bytes(self, items: int, nbytes: int) -> None:
        """``items`` sampled from the input weigh ``nbytes`` together: an
        automatic chunk then holds at most ``max_bytes`` of them."""
        if items < 0 or nbytes < 0:
            raise ValueError(
                f"items and nbytes must be >= 0, not items={items}, nbytes={nbytes}"
            )
        self._sampled_items += items
        self._sampled_bytes += nbytes

    def _byte_cap(self) -> int:
        if not self._sampled_bytes:
            return self._max_chunksize
        per_item = self._sampled_bytes / self._sampled_items
        return max(1, int(self._max_bytes / per_item))

    def record(self, items: int, seconds: float) -> None:
        """Learn from a finished chunk.

        Parameters
        ----------
        items
            Items the chunk held.
        seconds
            Time the engine spent computing them (not counting transfer).
        """
        if items < 0 or seconds < 0:
            raise ValueError(
                f"items and seconds must be >= 0, not items={items}, seconds={seconds}"
            )
        if items == 0:
            return
        self._weighted_seconds = self._weighted_seconds * _DECAY + seconds
        self._weighted_items = self._weighted_items * _DECAY + items

    def _auto_size(self) -> int:
        per_item = self.seconds_per_item
        if per_item is None:
            # Probes double every round of one chunk per engine; the
            # exponent is capped so the power stays a small int.
            rounds = min(self._chunks_handed_out // self._engines, 62)
            size = min(1 << rounds, self._max_chunksize)
        elif per_item * self._max_chunksize <= self._target_seconds:
            size = self._max_chunksize  # also covers a 0.0 s measurement
        else:
            size = max(1, int(self._target_seconds / per_item))
        if self._total is not None:
            remaining = self._total - self._handed_out
            if remaining > 0:
                cap = math.ceil(remaining / self._min_chunks)
                if per_item is not None:
                    # Balancing never makes a chunk so short that sending it
                    # costs more than it computes (a chunk costs its engine a
                    # few ms, and its round trip 5-25 ms on a busy machine):
                    # cheap items stay in big chunks.
                    floor = (
                        math.ceil(self._min_seconds / per_item)
                        if per_item > 0
                        else self._max_chunksize
                    )
                    if floor * self._engines >= remaining:
                        # Too little work left to give every engine that
                        # much: split what is left evenly, once, rather than
                        # into one big chunk and a remainder.
                        if self._tail is None:
                            self._tail = math.ceil(remaining / self._engines)
                        floor = self._tail
                    cap = max(cap, floor)
                size = min(size, cap)
        return min(size, self._byte_cap())


#: Seconds per item measured by the last maps, by their code's key (the
#: task spec's): a later map of the same code knows its pace at once.
_PACES: OrderedDict[str, float] = OrderedDict()
_PACES_KEPT = 256
_PACES_LOCK = threading.Lock()  # background maps end on their own threads


def remember_pace(key: str, seconds_per_item: float | None) -> None:
    """Keep what a map of ``key`` measured, for the next map of it."""
    if seconds_per_item is None:
        return
    with _PACES_LOCK:
        _PACES[key] = seconds_per_item
        _PACES.move_to_end(key)
        while len(_PACES) > _PACES_KEPT:
            _PACES.popitem(last=False)


def sizer_for_map(
    key: str,
    engines: int,
    total: int | None,
    chunksize: int | str,
    concurrency: int = 1,
) -> ChunkSizer:
    """A map's sizer, with the pace the last map of its code ``key`` measured;
    ``concurrency`` items at least a chunk."""
    return ChunkSizer(
        engines=max(1, engines),
        total=total,
        chunksize=chunksize,
        pace=known_pace(key),
        min_chunksize=concurrency,
    )


def known_pace(key: str) -> float | None:
    """Seconds per item the last map of ``key`` measured, if it was run."""
    with _PACES_LOCK:
        return _PACES.get(key)


def approx_bytes(items: Sequence[Any]) -> int | None:
    """About what ``items`` weigh as sent: their pickle's length, with
    buffers (numpy arrays' data) counted by size and never copied; ``None``
    for items pickle cannot take (ipyparallel may still send them)."""
    total = 0

    def count(buffer: pickle.PickleBuffer) -> None:
        nonlocal total
        total += buffer.raw().nbytes  # out of band: counted, not copied

    try:
        stream = pickle.dumps(list(items), protocol=5, buffer_callback=count)
    except Exception:  # any item pickle refuses: no estimate
        return None
    return total + len(stream)
