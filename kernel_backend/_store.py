"""The result store: finished results on disk, found again by their key.

One folder holds any number of named stores.  Its layout::

    index.sqlite          the index: one row per entry (SQLite, WAL mode)
    values/NAME/KEY.pkl   a large pickled value
    values/NAME/KEY.npy   a large numpy array, read back memory-mapped

Small values live in the index itself.  Value files are written to a
temporary name and moved into place with ``os.replace``, and the index row
follows the file, so a reader never sees half a value; every entry carries a
digest of its bytes, checked on read.  A value that is missing, truncated or
otherwise unreadable, and an index locked for too long, count as *not
stored*: the caller computes the item again (damage is never an error, and
never a wrong value).  Several kernels may share one folder: SQLite's WAL
mode lets readers and one writer work at once, and a busy timeout queues
writers.

Here: where the stores live and the store's reading and writing.  The index
is :mod:`._storeindex`, how a value lies on disk :mod:`._storevalues`, and
listing, clearing and the size limit :mod:`._storeupkeep`.
"""

from __future__ import annotations

import contextlib
import os
import re
import sqlite3
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import _storeupkeep
from ._errors import InvalidRequest
from ._storeindex import BATCH, StoreIndex, StoreUnavailable, marks
from ._storeupkeep import StoreInfo
from ._storevalues import Unpicklable, decode_value, encode_value, is_whole

__all__ = [
    "DEFAULT_STORE",
    "Damage",
    "ResultStore",
    "cache_folder",
    "set_cache_folder",
    "validate_store_name",
]

#: The store ``--cache`` without a name uses.
DEFAULT_STORE = "default"

#: Seconds a connection waits for another kernel's write before it gives up
#: (and the item is computed again, or its result not stored).  Writes are
#: short, but on a loaded machine another kernel's can wait behind its
#: process for seconds: giving up too soon loses results for nothing.
BUSY_TIMEOUT = 30.0

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")

#: An entry's "last used" time is rewritten only when older than this: the
#: LRU order needs no finer grain, and rewriting 10,000 rows on every re-run
#: would cost more than the re-run itself.
TOUCH_GRAIN = 600.0


# -- where the store lives -----------------------------------------------

_folder: Path | None = None


def cache_folder() -> Path:
    """The folder stores live in: ``%cache dir``, else ``PARACELL_CACHE_DIR``,
    else ``.paracell`` in the current working directory."""
    if _folder is not None:
        return _folder
    env = os.environ.get("PARACELL_CACHE_DIR")
    return Path(env).expanduser().absolute() if env else Path.cwd() / ".paracell"


def set_cache_folder(path: str | os.PathLike[str] | None) -> Path:
    """Use ``path`` for stores from now on (``None``: back to the default)."""
    global _folder
    if path is None:
        _folder = None
        return cache_folder()
    text = os.fspath(path).strip()
    if not text:
        raise InvalidRequest("%cache dir needs a folder, e.g. %cache dir results/")
    folder = Path(text).expanduser().absolute()
    if folder.exists() and not folder.is_dir():
        raise InvalidRequest(f"{text!r} is a file, not a folder")
    _folder = folder
    return folder


def validate_store_name(name: Any) -> str:
    """A store's name becomes a folder name: letters, digits, ``_ . -``."""
    if not isinstance(name, str) or not _NAME.fullmatch(name) or ".." in name:
        raise InvalidRequest(
            f"a cache name is 1-64 letters, digits, '_', '.' or '-' (starting"
            f" with a letter or digit), not {name!r}"
        )
    return name


# -- records -------------------------------------------------------------


@dataclass(frozen=True)
class Damage:
    """An entry that could not be read back (it is dropped from the index)."""

    key: str
    reason: str


# -- the store -----------------------------------------------------------


class ResultStore:
    """The stores in one folder; safe to share between threads and kernels.

    Parameters
    ----------
    folder
        Created on first write.
    busy_timeout
        Seconds to wait for another writer before giving up.
    """

    def __init__(self, folder: Path, *, busy_timeout: float | None = None) -> None:
        self.folder = Path(folder)
        self.busy_timeout = BUSY_TIMEOUT if busy_timeout is None else busy_timeout
        self._index = StoreIndex(self.folder, self.busy_timeout)
        # store -> when this process last noted its use in the index
        self._noted: dict[str, float] = {}

    def close(self) -> None:
        self._index.close()

    # -- reading ---------------------------------------------------------

    def has_all(self, store: str, keys: Sequence[str]) -> bool:
        """Whether every one of ``keys`` has an entry whose file (if it has
        one) is whole: missing or cut short counts as absent.  Nothing is
        read back, so damage inside a whole file shows only on reading.
        Raises :class:`StoreUnavailable`."""
        wanted = sorted(set(keys))
        if not wanted:
            return True
        if not self._index.exists():
            return False
        with self._index.reading() as conn:
            for start in range(0, len(wanted), BATCH):
                batch = wanted[start : start + BATCH]
                rows = conn.execute(
                    "SELECT key, kind, size FROM entries"
                    f" WHERE store = ? AND key IN ({marks(batch)})",
                    (store, *batch),
                ).fetchall()
                if len(rows) < len(batch):
                    return False
                if not all(is_whole(self.folder, store, *row) for row in rows):
                    return False
        return True

    def get_many(
        self, store: str, keys: Sequence[str]
    ) -> tuple[dict[str, Any], list[Damage]]:
        """The stored values of ``keys`` (those found and intact), and the
        entries found damaged.  Raises :class:`StoreUnavailable`."""
        found: dict[str, Any] = {}
        damaged: list[Damage] = []
        if not keys or not self._index.exists():
            return found, damaged
        stale = time.time() - TOUCH_GRAIN
        touch = []
        for key, kind, expected, data, used in self._entries(store, keys):
            try:
                found[key] = decode_value(self.folder, store, key, kind, expected, data)
            except Exception as err:  # any failure to read means: not stored
                damaged.append(Damage(key, f"{type(err).__name__}: {err}"))
                continue
            if used < stale:
                touch.append(key)
        if found:
            self._touch(store, touch)
        if damaged:
            self._forget(store, [d.key for d in damaged])
        return found, damaged

    def _entries(
        self, store: str, keys: Sequence[str]
    ) -> list[tuple[str, str, str, bytes | None, float]]:
        """The index rows of ``keys`` in ``store``: key, kind, digest, data, used."""
        rows: list[tuple[str, str, str, bytes | None, float]] = []
        with self._index.reading() as conn:
            for start in range(0, len(keys), BATCH):
                batch = keys[start : start + BATCH]
                rows += conn.execute(
                    "SELECT key, kind, digest, data, used FROM entries"
                    f" WHERE store = ? AND key IN ({marks(batch)})",
                    (store, *batch),
                ).fetchall()
        return rows

    def _touch(self, store: str, keys: list[str]) -> None:
        # "last used" feeds the LRU eviction; losing an update to a busy
        # index only makes an entry look older
        now = time.time()
        if not keys and now - self._noted.get(store, 0.0) < 1.0:
            return
        self._noted[store] = now
        with (
            contextlib.suppress(StoreUnavailable, sqlite3.Error),
            self._index.transaction() as conn,
        ):
            conn.execute("INSERT OR REPLACE INTO stores VALUES (?, ?)", (store, now))
            for start in range(0, len(keys), BATCH):
                batch = keys[start : start + BATCH]
                conn.execute(
                    "UPDATE entries SET used = ?"
                    f" WHERE store = ? AND key IN ({marks(batch)})",
                    (now, store, *batch),
                )

    def _forget(self, store: str, keys: list[str]) -> None:
        with (
            contextlib.suppress(StoreUnavailable, sqlite3.Error),
            self._index.transaction() as conn,
        ):
            conn.executemany(
                "DELETE FROM entries WHERE store = ? AND key = ?",
                [(store, k) for k in keys],
            )

    # -- writing ---------------------------------------------------------

    def put_many(self, store: str, values: Iterable[tuple[str, Any]]) -> list[str]:
        """Store each ``(key, value)``; returns the keys whose value could
        not be pickled (not stored).  Raises :class:`StoreUnavailable`."""
        rows = []
        unpicklable = []
        now = time.time()
        for key, value in values:
            try:
                kind, size, value_digest, data = encode_value(
                    self.folder, store, key, value
                )
            except Unpicklable:
                unpicklable.append(key)
                continue
            rows.append((store, key, kind, size, value_digest, data, now, now))
        self._noted[store] = now
        if rows:
            try:
                with self._index.transaction() as conn:
                    conn.execute(
                        "INSERT OR REPLACE INTO stores VALUES (?, ?)", (store, now)
                    )
                    conn.executemany(
                        "INSERT OR REPLACE INTO entries"
                        " (store, key, kind, size, digest, data, created, used)"
                        " VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                        rows,
                    )
            except sqlite3.Error as err:
                raise StoreUnavailable(str(err)) from err
            _storeupkeep.enforce_limit(self._index)
        return unpicklable

    # -- upkeep (:mod:`._storeupkeep`) -----------------------------------

    def info(self) -> list[StoreInfo]:
        """One :class:`StoreInfo` per named store in this folder."""
        return _storeupkeep.store_info(self._index)

    def clear(self, store: str | None = None) -> int:
        """Remove every entry of ``store`` (all stores: ``None``); returns
        how many entries were removed."""
        return _storeupkeep.clear(self._index, store)

    def limit(self) -> int | None:
        """The size limit in bytes over all stores here, or ``None``."""
        return _storeupkeep.read_limit(self._index)

    def set_limit(self, nbytes: int | None) -> int:
        """Keep at most ``nbytes`` over all stores here, evicting the least
        recently used entries; returns how many entries were evicted."""
        return _storeupkeep.set_limit(self._index, nbytes)
