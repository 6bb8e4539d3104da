"""``%%parallel --cache``: a background cell's outcome in the result store.

A cell's key covers its code (as an AST), every name it reads (as for
``%pmap --cache``: notebook functions by code, data by content), the seed
and which names come back.  What is stored is what the job brought back:
the names it assigned, the value of its last expression and its output.  A
hit is a job that is done at once, on no engine.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import xxhash

from ._cachedmap import open_store, store_name
from ._errors import ParacellWarning
from ._fingerprint import Unfingerprintable, code_digest, names_fingerprint
from ._names import cell_reads
from ._store import ResultStore
from ._storeindex import StoreUnavailable

__all__ = ["CellCache"]


class CellCache:
    """The store as one ``%%parallel --cache`` cell uses it."""

    def __init__(self, store: ResultStore, name: str, key: str) -> None:
        self.store = store
        self.name = name
        self.key = key

    @classmethod
    def for_cell(
        cls,
        cache: bool | str | None,
        source: str,
        namespace: Mapping[str, Any],
        *,
        seed: int | None,
        outputs: Sequence[str],
        pull: bool,
    ) -> CellCache | None:
        """The cell's cache, or ``None`` when not asked for (or when a name
        it reads cannot be read: then it runs without, with a warning)."""
        name = store_name(cache)
        if name is None:
            return None
        try:
            names = names_fingerprint(cell_reads(source, namespace), namespace)
        except Unfingerprintable as err:
            _warn(f"the cell runs without the store, since {err}")
            return None
        parts = (code_digest(source), names, seed, sorted(outputs), pull)
        key = xxhash.xxh3_128_hexdigest(repr(("cell", *parts)).encode())
        return cls(open_store(), name, key)

    def lookup(self) -> dict[str, Any] | None:
        """What an earlier run of the cell brought back, if stored intact."""
        try:
            found, damaged = self.store.get_many(self.name, [self.key])
        except StoreUnavailable as err:
            _warn(f"the store could not be read ({err}); running the cell")
            return None
        if damaged:
            _warn(f"the stored outcome could not be read back ({damaged[0].reason})")
        record = found.get(self.key)
        return record if isinstance(record, dict) else None

    def save(self, job: Any) -> None:
        """Store a finished job's outcome (a done callback of the job)."""
        if job.state != "done":
            return  # a failed cell is never stored
        record = {
            "values": dict(job.values),
            # names that could not come back (an open file): a hit says so too
            "failed": dict(job.failed_names),
            "bundle": job.bundle,
            "stdout": job.stdout,
            "stderr": job.stderr,
        }
        try:
            unpicklable = self.store.put_many(self.name, [(self.key, record)])
        except StoreUnavailable as err:
            _warn(f"job '{job.name}' could not be stored ({err})")
            return
        if unpicklable:
            _warn(f"job '{job.name}' brought back values that cannot be stored")


def _warn(message: str) -> None:
    warnings.warn(f"--cache: {message}", ParacellWarning, stacklevel=3)
