"""One map's view of the result store: which items are stored, and storing
the others as their results arrive.

The map scheduler asks :meth:`MapCache.split` about items before it sends
them (the stored ones are results at once; the rest go to the engines in
runs of consecutive indices, so seeding by index is untouched) and hands
each finished chunk to :meth:`MapCache.save`.  Nothing here raises into the
map: an unreadable store, a damaged value, an input or a result that cannot
be pickled each cost one warning per map, and the item is simply computed
(and, where it cannot be, not stored).
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ._errors import InvalidRequest, ParacellWarning
from ._fingerprint import Fingerprinter, Unfingerprintable, item_key, map_fingerprint
from ._sizes import format_size, parse_size
from ._store import (
    DEFAULT_STORE,
    ResultStore,
    cache_folder,
    set_cache_folder,
    validate_store_name,
)
from ._storeindex import StoreUnavailable
from ._storeupkeep import StoreInfo

__all__ = [
    "CacheReport",
    "MapCache",
    "cache_info",
    "clear_cache",
    "open_store",
    "set_cache_dir",
    "set_cache_limit",
    "store_name",
]

#: One store object per folder, shared by the maps of this kernel.
_STORES: dict[str, ResultStore] = {}


def open_store() -> ResultStore:
    """The :class:`ResultStore` of the current cache folder."""
    folder = cache_folder()
    store = _STORES.get(str(folder))
    if store is None:
        store = _STORES[str(folder)] = ResultStore(folder)
    return store


def store_name(cache: bool | str | None) -> str | None:
    """``cache=True`` -> the default store, a string -> that store, else none."""
    if cache is None or cache is False:
        return None
    if cache is True:
        return DEFAULT_STORE
    if isinstance(cache, str):
        return validate_store_name(cache)
    raise InvalidRequest(f"cache must be True, False or a store's name, not {cache!r}")


@dataclass(frozen=True)
class CacheReport:
    """The stores in the cache folder (``%cache``)."""

    folder: str
    limit: int | None
    stores: tuple[StoreInfo, ...]

    @property
    def entries(self) -> int:
        return sum(s.entries for s in self.stores)

    @property
    def size(self) -> int:
        return sum(s.size for s in self.stores)

    def summary(self) -> str:
        """E.g. ``cache: 2 stores, 1,412 entries, 3.1 MB in /work/.paracell``."""
        n = len(self.stores)
        limit = "" if self.limit is None else f" (limit {format_size(self.limit)})"
        return (
            f"cache: {n} store{'s' * (n != 1)}, {self.entries:,} entries,"
            f" {format_size(self.size)} in {self.folder}{limit}"
        )

    def __repr__(self) -> str:
        return self.summary()


def cache_info() -> CacheReport:
    """The stores in the cache folder: entries, size, last used."""
    store = open_store()
    try:
        return CacheReport(str(store.folder), store.limit(), tuple(store.info()))
    except StoreUnavailable as err:
        raise InvalidRequest(f"the cache in {store.folder} is busy ({err})") from None


def clear_cache(name: str | None = None) -> int:
    """Remove every entry of store ``name`` (of all stores: ``None``);
    returns how many were removed."""
    if name is not None:
        validate_store_name(name)
    store = open_store()
    try:
        return store.clear(name)
    except StoreUnavailable as err:
        raise InvalidRequest(f"the cache in {store.folder} is busy ({err})") from None


def set_cache_limit(limit: int | str | None) -> int:
    """Keep at most ``limit`` bytes (``"5GB"``; ``None``: no limit) in the
    cache folder, least recently used entries evicted first; returns how many
    entries were evicted."""
    nbytes = parse_size(limit) if isinstance(limit, str) else limit
    if nbytes is not None and (isinstance(nbytes, bool) or nbytes < 0):
        raise InvalidRequest(f"a cache limit is a size >= 0, not {limit!r}")
    store = open_store()
    try:
        return store.set_limit(nbytes)
    except StoreUnavailable as err:
        raise InvalidRequest(f"the cache in {store.folder} is busy ({err})") from None


def set_cache_dir(path: str | os.PathLike[str] | None) -> Path:
    """Keep stores in ``path`` from now on (``None``: the default,
    ``$PARACELL_CACHE_DIR`` or ``.paracell`` in the working directory)."""
    return set_cache_folder(path)


class MapCache:
    """The store as one map uses it.

    Parameters
    ----------
    store, name
        Where results go.
    base
        The map's part of every key (:func:`map_fingerprint`).
    seeded
        Whether the item's index is part of its key.
    """

    def __init__(
        self, store: ResultStore, name: str, base: bytes, seeded: bool
    ) -> None:
        self.store = store
        self.name = name
        self.base = base
        self.seeded = seeded
        self.hits = 0
        # index -> key of each item sent to run, until its result is stored
        self._keys: dict[int, str] = {}
        self._warned: set[str] = set()
        self._unwritable = False  # a write failed: the map stores no more
        self._reader = Fingerprinter()

    @classmethod
    def for_map(
        cls,
        cache: bool | str | None,
        element: str,
        arguments: tuple[str, ...],
        names: Iterable[str],
        namespace: Mapping[str, Any],
        *,
        star: bool,
        seed: int | None,
        extra: Mapping[str, Any] = {},
    ) -> MapCache | None:
        """The cache for a map, or ``None`` when not asked for (or when a
        global cannot be read: then the map runs without, with a warning)."""
        name = store_name(cache)
        if name is None:
            return None
        try:
            base = map_fingerprint(
                element, arguments, names, namespace, star=star, seed=seed, extra=extra
            )
        except Unfingerprintable as err:
            warnings.warn(
                f"--cache: the map runs without the store, since {err}",
                ParacellWarning,
                stacklevel=3,
            )
            return None
        return cls(open_store(), name, base, seed is not None)

    def _warn(self, kind: str, message: str) -> None:
        if kind not in self._warned:
            self._warned.add(kind)
            warnings.warn(f"--cache: {message}", ParacellWarning, stacklevel=2)

    def _item_keys(self, first: int, items: Sequence[Any]) -> list[str | None]:
        """Each item's key; ``None`` for an input that cannot be read."""
        keys: list[str | None] = []
        for index, item in enumerate(items, first):
            try:
                index_part = index if self.seeded else None
                keys.append(item_key(self.base, index_part, item, self._reader))
            except Unfingerprintable as err:
                keys.append(None)
                self._warn(
                    "input",
                    f"item {index}'s input {err}; such items are computed"
                    " and not stored",
                )
        return keys

    def covers(self, items: Sequence[Any], batch: int = 2_000) -> bool:
        """Whether every item's result is stored (read a batch at a time,
        stopping at the first batch with one missing): a map with nothing
        left to compute needs no engines."""
        for first in range(0, len(items), batch):
            keys = self._item_keys(first, items[first : first + batch])
            known = [key for key in keys if key is not None]
            try:
                if len(known) < len(keys) or not self.store.has_all(self.name, known):
                    return False
            except StoreUnavailable:
                return False
        return True

    def split(
        self, first: int, items: Sequence[Any]
    ) -> tuple[list[tuple[int, list[Any]]], list[tuple[int, list[Any]]]]:
        """Runs of stored results and runs of items to compute.

        Each run is ``(first index, values or items)`` of consecutive items.
        """
        keys = self._item_keys(first, items)
        wanted = [k for k in keys if k is not None]
        found: dict[str, Any] = {}
        try:
            found, damaged = self.store.get_many(self.name, wanted)
        except StoreUnavailable as err:
            self._warn("read", f"the store could not be read ({err}); computing")
        else:
            if damaged:
                self._warn(
                    "damage",
                    f"{len(damaged)} stored results could not be read back"
                    f" ({damaged[0].reason}); computing them again",
                )
        hits: list[tuple[int, list[Any]]] = []
        misses: list[tuple[int, list[Any]]] = []
        for index, (item, key) in enumerate(zip(items, keys, strict=True), first):
            hit = key is not None and key in found
            runs = hits if hit else misses
            if runs and runs[-1][0] + len(runs[-1][1]) == index:
                runs[-1][1].append(found[key] if hit else item)  # type: ignore[index]
            else:
                runs.append((index, [found[key] if hit else item]))  # type: ignore[index]
            if hit:
                self.hits += 1
            elif key is not None:
                self._keys[index] = key
        return hits, misses

    def save(self, first: int, values: Sequence[Any], failed: Collection[int]) -> None:
        """Store the results of a finished chunk (its failed items never)."""
        entries = [
            (self._keys.pop(index), value)
            for index, value in enumerate(values, first)
            if index in self._keys and index not in failed
        ]
        if not entries or self._unwritable:
            return
        try:
            unpicklable = self.store.put_many(self.name, entries)
        except StoreUnavailable as err:
            # waited BUSY_TIMEOUT already: do not wait again for every chunk
            self._unwritable = True
            self._warn(
                "write",
                f"results could not be stored ({err}); this map stores no more",
            )
            return
        if unpicklable:
            self._warn(
                "result",
                "some results cannot be pickled and are not stored",
            )
