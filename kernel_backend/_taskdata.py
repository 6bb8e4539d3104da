"""Where a task graph's values are: which engine holds which version.

A version of a name is the statement that made it.  The scheduler records
what each statement wrote on its engine (and what it fetched there), and
asks here where a statement's missing values should come from: fetched by
its engine directly from one on the same host, or relayed through the
notebook.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

__all__ = ["Holdings"]


@dataclass
class Holdings:
    """Which version (producing statement) of each name each engine holds."""

    held: dict[int, dict[str, int]] = field(default_factory=dict)
    sizes: dict[tuple[str, int], int] = field(default_factory=dict)
    #: values that cannot travel: the engine that has them
    pinned: dict[tuple[str, int], int] = field(default_factory=dict)
    address: dict[int, tuple[str, int]] = field(default_factory=dict)
    host: dict[int, str] = field(default_factory=dict)

    def holders(self, name: str, version: int) -> set[int]:
        return {e for e, names in self.held.items() if names.get(name) == version}

    def lost(self, inputs: Sequence[tuple[str, int, int]]) -> str | None:
        """A value among ``inputs`` (name, version, bytes) that was made but
        no engine holds any more (its engine died), if any."""
        for name, version, _ in inputs:
            if (name, version) in self.sizes and not self.holders(name, version):
                return name
        return None

    def host_of(self, engine: int, engines: Any) -> str | None:
        return self.host.get(engine) or engines.host(engine)

    def plan_fetch(
        self, engine: int, missing: list[tuple[str, int]], engines: Any, direct: bool
    ) -> tuple[
        list[tuple[tuple[str, int], str, tuple[str, ...]]],
        list[tuple[int, tuple[str, ...]]],
    ]:
        """Where each missing value comes from: fetched by the engine itself
        from one on its host, or relayed through the notebook (by the
        engines' backend, without holding up the scheduler)."""
        by_source: dict[int, list[str]] = {}
        for name, version in missing:
            holders = self.holders(name, version)
            if not holders:
                continue  # never made (its statement deleted it): nothing to send
            best = max(
                holders,
                key=lambda e: (
                    sum(1 for n, v in missing if e in self.holders(n, v)),
                    -e,
                ),
            )
            by_source.setdefault(best, []).append(name)
        fetch, relay = [], []
        here = self.host_of(engine, engines)
        for source, names in sorted(by_source.items()):
            address = self.address.get(source)
            if direct and address is not None and here == self.host_of(source, engines):
                fetch.append((address, engines.key(source), tuple(names)))
            else:
                relay.append((source, tuple(names)))
        return fetch, relay
