"""Where a map's chunks come from: its items, cut to the sizer's measure.

:class:`ItemFeed` hands out the chunks the loop (:class:`._maprun._MapRun`)
sends: first those to send again (an engine died, or a reply to check), then
what a time-boxed probe did not run, then new ones from the input, taken as
slices of a ``range``, list or tuple or drawn lazily from an iterator.  With
``--cache`` it takes stored results from the store before any item is sent.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator, Sequence
from typing import Any, TypeGuard

from ._chunking import UNBOXED_SHARE, ChunkSizer, approx_bytes
from ._mapresults import MapResults

__all__ = ["Chunk", "ItemFeed", "sliceable"]

#: Items looked up in the result store at a time (``--cache``).
_STORE_BLOCK = 1024
#: Items weighed at a map's start to keep chunks within a byte budget.
_ITEMS_WEIGHED = 8

#: Inputs taken chunk by chunk with a slice (in C, and a ``range`` slice
#: travels as a ``range``) instead of item by item from an iterator.
_SLICEABLE = (range, list, tuple)


def sliceable(iterable: Any) -> TypeGuard[Sequence[Any]]:
    """Whether an :class:`ItemFeed` may take ``iterable``'s chunks as slices."""
    return type(iterable) in _SLICEABLE


class Chunk:
    """Consecutive items of a map, from index ``first``, sent as one task."""

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


class ItemFeed:
    """A map's items as chunks, sized by ``sizer``.

    ``items`` is an iterator, read lazily, or a ``range``, list or tuple
    (see :func:`sliceable`), whose chunks are slices of it.  ``auto``: the
    chunk size is the sizer's own (a ``range`` is then probed time-boxed).
    With ``cache`` (a :class:`._cachedmap.MapCache`), stored items go
    straight into ``results`` and are never handed out.
    """

    def __init__(
        self,
        items: Iterator[Any] | Sequence[Any],
        sizer: ChunkSizer,
        *,
        auto: bool,
        results: MapResults,
        cache: Any = None,
    ) -> None:
        self._source: Sequence[Any] | None = items if sliceable(items) else None
        self._items: Iterator[Any] = iter(items)
        self._sizer = sizer
        self._auto = auto
        self._cache = cache
        self._results = results
        self._next_index = 0
        self._retry: list[Chunk] = []
        # items a time-boxed probe did not run, handed out again first
        self._pending: list[Chunk] = []
        self._weighed = 0  # items weighed for the sizer's byte budget
        #: every item of the input has been taken from it
        self.exhausted = False

    @property
    def drained(self) -> bool:
        """Nothing left to hand out: the input is exhausted and no chunk
        waits to be sent again."""
        return self.exhausted and not self._retry and not self._pending

    def retry(self, chunk: Chunk) -> None:
        """Hand ``chunk`` out again, before anything else."""
        self._retry.append(chunk)

    def put_back(self, first: int, items: Sequence[Any]) -> None:
        """Hand out again the items a time-boxed probe did not run."""
        self._pending.insert(0, Chunk(first, items))
        self._sizer.give_back(len(items))

    def next_chunk(self) -> Chunk | None:
        """The next chunk to send, or None when there is none now."""
        if self._retry:
            return self._retry.pop(0)
        if self._cache is not None and not self._pending:
            self._take_stored()
        if self._pending:
            return self._from_pending()
        if self.exhausted:
            return None
        return self._from_input()

    def _from_pending(self) -> Chunk:
        head = self._pending[0]
        size = self._sizer.next_size()
        chunk = Chunk(head.first, head.items[:size])
        self._weigh(chunk.items)
        if size >= len(head.items):
            self._pending.pop(0)
        else:
            head.first += size
            head.items = head.items[size:]
        return chunk

    def _from_input(self) -> Chunk | None:
        # A range slice costs nothing to send however long: the probe can be
        # large and time-boxed, so cheap items are measured over thousands.
        timeboxed = (
            type(self._source) is range and self._auto and not self._sizer.measured
        )
        size = self._sizer.next_size(timeboxed=timeboxed)
        items = self._take(size)
        if len(items) < size:
            self.exhausted = True
            self._sizer.give_back(size - len(items))
        if not items:
            return None
        if type(self._source) is not range:
            self._weigh(items)
        boxed = timeboxed and len(items) > UNBOXED_SHARE
        budget = self._sizer.probe_seconds if boxed else None
        chunk = Chunk(self._next_index, items, budget)
        self._next_index += len(items)
        return chunk

    def _take(self, count: int) -> Sequence[Any]:
        """Up to ``count`` items from the input, from the next index on."""
        if self._source is not None:
            return self._source[self._next_index : self._next_index + count]
        return list(itertools.islice(self._items, count))

    def _weigh(self, items: Sequence[Any]) -> None:
        """Weigh the map's first few items, so that an automatic chunk of
        heavy items stays within the sizer's byte budget."""
        wanted = _ITEMS_WEIGHED - self._weighed
        if wanted > 0:
            sample = items[:wanted]
            self._weighed += len(sample)
            nbytes = approx_bytes(sample)
            if nbytes is not None:
                self._sizer.note_bytes(len(sample), nbytes)

    def _take_stored(self) -> None:
        """Stored items are results at once; the rest wait in ``_pending``,
        in runs of consecutive indices (an item keeps its index, so its seed).
        """
        while not self._pending and not self.exhausted:
            items = self._take(_STORE_BLOCK)
            if len(items) < _STORE_BLOCK:
                self.exhausted = True
            first = self._next_index
            self._next_index += len(items)
            hits, misses = self._cache.split(first, items)
            for start, values in hits:
                self._results.store_found(start, values)
                self._sizer.skip(len(values))
            self._pending.extend(Chunk(start, run) for start, run in misses)
