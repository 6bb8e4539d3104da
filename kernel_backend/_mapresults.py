"""What a map has computed so far: the results of its chunks, in the order
they came, with counts for its progress and its partial results."""

from __future__ import annotations

import contextlib
from operator import itemgetter
from typing import Any

from ._engine import ItemFailure
from ._enginemap import ChunkOutcome
from ._mapjob import OnError, RemoteItemError

__all__ = ["SKIPPED", "MapResults"]

#: Stands for a skipped item (``on_error="skip"``) among a chunk's values.
SKIPPED: Any = object()


class MapResults:
    """Chunks' values by their first index, and what they count."""

    def __init__(self) -> None:
        # (first index, values) of every finished chunk, in completion order;
        # a skipped item's value is SKIPPED
        self.parts: list[tuple[int, list[Any]]] = []
        self.stored = 0  # values kept, skipped ones included
        self.skipped: set[int] = set()
        self.failed = 0
        self.succeeded = 0
        self.per_engine: dict[int, int] = {}

    @property
    def done(self) -> int:
        """Items finished, failed or not."""
        return self.succeeded + self.failed

    def store(self, first: int, values: list[Any]) -> None:
        self.parts.append((first, values))
        self.stored += len(values)

    def store_found(self, first: int, values: list[Any]) -> None:
        """Values taken from the result store (``--cache``): finished, on no
        engine."""
        self.store(first, values)
        self.succeeded += len(values)

    def count(self, engine: int, succeeded: int) -> None:
        self.succeeded += succeeded
        self.per_engine[engine] = self.per_engine.get(engine, 0) + succeeded

    def take(
        self, first: int, outcome: ChunkOutcome, engine: int, on_error: OnError
    ) -> ItemFailure | None:
        """Keep the values of a chunk that ran from index ``first`` on
        ``engine``, each failed item's as ``on_error`` says: ``collect``
        keeps its exception, ``skip`` drops it, and ``raise`` returns the
        first failure (the items before it are kept, the rest are not)."""
        if not outcome.failures:
            # the common case: the chunk's list is kept as it came
            self.store(first, outcome.values)
            self.count(engine, len(outcome.values))
            return None
        failures = {f.index: f for f in outcome.failures}
        values: list[Any] = []
        for index, value in enumerate(outcome.values, first):
            failure = failures.get(index)
            if failure is None:
                values.append(value)
                self.count(engine, 1)
                continue
            self.failed += 1
            if on_error == "raise":
                self.store(first, values)
                return failure
            values.append(self._failed_value(failure, on_error))
        self.store(first, values)
        return None

    def _failed_value(self, failure: ItemFailure, on_error: OnError) -> Any:
        """What stands for a failed item among the values (not ``raise``)."""
        if on_error == "collect":
            exc = failure.exception
            if exc is None:
                exc = RemoteItemError(failure)
            with contextlib.suppress(Exception):
                exc.add_note(failure.traceback)
            return exc
        self.skipped.add(failure.index)
        return SKIPPED

    def keep(self, first: int, outcome: ChunkOutcome) -> None:
        """The items a chunk finished, kept as the map stops (for
        ``partial``): an interrupted chunk's outcome holds the items it
        finished before the interrupt."""
        values = list(outcome.values)
        for failure in outcome.failures:
            values[failure.index - first] = SKIPPED
        self.store(first, values)

    def partial(self) -> dict[int, Any]:
        """Index -> result of every item finished so far (for MapFailed)."""
        partial: dict[int, Any] = {}
        for first, values in self.parts:
            for index, value in enumerate(values, first):
                if value is not SKIPPED:
                    partial[index] = value
        return partial

    def in_order(self, ordered: bool) -> list[Any]:
        """The results: by input index (``ordered``), else as they came."""
        parts = sorted(self.parts, key=itemgetter(0)) if ordered else self.parts
        results: list[Any] = []
        for _, values in parts:
            results.extend(values)
        if self.skipped:
            results = [value for value in results if value is not SKIPPED]
        return results
