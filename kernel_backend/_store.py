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
"""

from __future__ import annotations

import contextlib
import os
import pickle
import re
import sqlite3
import tempfile
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import xxhash

from ._errors import InvalidRequest

__all__ = [
    "DEFAULT_STORE",
    "Damage",
    "ResultStore",
    "StoreInfo",
    "cache_folder",
    "digest",
    "set_cache_folder",
    "validate_store_name",
]

#: The store ``--cache`` without a name uses.
DEFAULT_STORE = "default"

#: Values whose bytes are smaller than this live in the index itself: one
#: SQLite row is far cheaper to write and read than a file.
INLINE_LIMIT = 64 * 1024

#: Seconds a connection waits for another kernel's write before it gives up
#: (and the item is computed again, or its result not stored).  Writes are
#: short, but on a loaded machine another kernel's can wait behind its
#: process for seconds: giving up too soon loses results for nothing.
BUSY_TIMEOUT = 30.0

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
_INDEX = "index.sqlite"
_SCHEMA = """
CREATE TABLE IF NOT EXISTS entries (
    store TEXT NOT NULL,
    key TEXT NOT NULL,
    kind TEXT NOT NULL,
    size INTEGER NOT NULL,
    digest TEXT NOT NULL,
    data BLOB,
    created REAL NOT NULL,
    used REAL NOT NULL,
    PRIMARY KEY (store, key)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS stores (name TEXT PRIMARY KEY, used REAL NOT NULL);
CREATE TABLE IF NOT EXISTS settings (name TEXT PRIMARY KEY, value TEXT NOT NULL);
"""
# Keys per query: well under SQLite's limit on bound parameters.
_BATCH = 500

#: An entry's "last used" time is rewritten only when older than this: the
#: LRU order needs no finer grain, and rewriting 10,000 rows on every re-run
#: would cost more than the re-run itself.
TOUCH_GRAIN = 600.0


def digest(*parts: bytes | memoryview) -> str:
    """Fast content digest (XXH3, 128 bits) as 32 hex digits.

    Not cryptographic: it tells versions of the user's own data apart, and
    runs near memory speed (a 200 MB array in about 20 ms).
    """
    h = xxhash.xxh3_128()
    for part in parts:
        h.update(part)
    return h.hexdigest()


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
class StoreInfo:
    """One named store: its entries, their bytes, when last used, where."""

    name: str
    entries: int
    size: int
    last_used: float | None
    folder: str


@dataclass(frozen=True)
class Damage:
    """An entry that could not be read back (it is dropped from the index)."""

    key: str
    reason: str


class StoreUnavailable(Exception):
    """The index could not be opened or was locked for too long."""


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
        self._lock = threading.Lock()
        self._conn: sqlite3.Connection | None = None
        # store -> when this process last noted its use in the index
        self._noted: dict[str, float] = {}

    # -- connection ------------------------------------------------------

    def _connect(self) -> sqlite3.Connection:
        if self._conn is None:
            try:
                self.folder.mkdir(parents=True, exist_ok=True)
                conn = sqlite3.connect(
                    self.folder / _INDEX,
                    timeout=self.busy_timeout,
                    check_same_thread=False,  # guarded by self._lock
                    isolation_level=None,  # transactions are explicit
                )
                conn.execute("PRAGMA journal_mode=WAL")
                # WAL with synchronous=NORMAL survives a killed kernel; only
                # a power cut may lose the last commits (which are recomputed)
                conn.execute("PRAGMA synchronous=NORMAL")
                conn.executescript(_SCHEMA)
            except (sqlite3.Error, OSError) as err:
                raise StoreUnavailable(str(err)) from err
            self._conn = conn
        return self._conn

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            try:
                conn = self._connect()
                conn.execute("BEGIN IMMEDIATE")
            except sqlite3.Error as err:
                raise StoreUnavailable(str(err)) from err
            try:
                yield conn
            except BaseException:
                with contextlib.suppress(sqlite3.Error):
                    conn.execute("ROLLBACK")
                raise
            try:
                conn.execute("COMMIT")
            except sqlite3.Error as err:
                with contextlib.suppress(sqlite3.Error):
                    conn.execute("ROLLBACK")
                raise StoreUnavailable(str(err)) from err

    # -- reading ---------------------------------------------------------

    def has_all(self, store: str, keys: Sequence[str]) -> bool:
        """Whether every one of ``keys`` has an entry whose file (if it has
        one) is whole: missing or cut short counts as absent.  Nothing is
        read back, so damage inside a whole file shows only on reading.
        Raises :class:`StoreUnavailable`."""
        wanted = sorted(set(keys))
        if not wanted:
            return True
        if not (self.folder / _INDEX).exists():
            return False
        with self._lock:
            try:
                conn = self._connect()
                for start in range(0, len(wanted), _BATCH):
                    batch = wanted[start : start + _BATCH]
                    marks = ",".join("?" * len(batch))
                    rows = conn.execute(
                        "SELECT key, kind, size FROM entries"
                        f" WHERE store = ? AND key IN ({marks})",
                        (store, *batch),
                    ).fetchall()
                    if len(rows) < len(batch):
                        return False
                    if not all(self._whole(store, *row) for row in rows):
                        return False
            except sqlite3.Error as err:
                raise StoreUnavailable(str(err)) from err
        return True

    def _whole(self, store: str, key: str, kind: str, size: int) -> bool:
        """An entry's file is there and not shorter than what was written
        (a ``.npy`` file is its array's bytes and a header)."""
        if kind == "inline":
            return True
        try:
            length = self._path(store, key, kind).stat().st_size
        except OSError:
            return False
        return length >= size if kind == "npy" else length == size

    def get_many(
        self, store: str, keys: Sequence[str]
    ) -> tuple[dict[str, Any], list[Damage]]:
        """The stored values of ``keys`` (those found and intact), and the
        entries found damaged.  Raises :class:`StoreUnavailable`."""
        found: dict[str, Any] = {}
        damaged: list[Damage] = []
        if not keys or not (self.folder / _INDEX).exists():
            return found, damaged
        rows: list[tuple[str, str, str, bytes | None, float]] = []
        with self._lock:
            try:
                conn = self._connect()
                for start in range(0, len(keys), _BATCH):
                    batch = keys[start : start + _BATCH]
                    marks = ",".join("?" * len(batch))
                    rows += conn.execute(
                        "SELECT key, kind, digest, data, used FROM entries"
                        f" WHERE store = ? AND key IN ({marks})",
                        (store, *batch),
                    ).fetchall()
            except sqlite3.Error as err:
                raise StoreUnavailable(str(err)) from err
        stale = time.time() - TOUCH_GRAIN
        touch = []
        for key, kind, expected, data, used in rows:
            try:
                found[key] = self._load(store, key, kind, expected, data)
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

    def _load(
        self, store: str, key: str, kind: str, expected: str, data: bytes | None
    ) -> Any:
        if kind == "inline":
            assert data is not None
            if digest(data) != expected:
                raise ValueError("digest mismatch")
            return pickle.loads(data)
        path = self._path(store, key, kind)
        if kind == "npy":
            array = np.load(path, mmap_mode="r", allow_pickle=False)
            if _array_digest(array) != expected:
                raise ValueError("digest mismatch")
            return array
        blob = path.read_bytes()
        if digest(blob) != expected:
            raise ValueError("digest mismatch")
        return pickle.loads(blob)

    def _touch(self, store: str, keys: list[str]) -> None:
        # "last used" feeds the LRU eviction; losing an update to a busy
        # index only makes an entry look older
        now = time.time()
        if not keys and now - self._noted.get(store, 0.0) < 1.0:
            return
        self._noted[store] = now
        with (
            contextlib.suppress(StoreUnavailable, sqlite3.Error),
            self._transaction() as conn,
        ):
            conn.execute("INSERT OR REPLACE INTO stores VALUES (?, ?)", (store, now))
            for start in range(0, len(keys), _BATCH):
                batch = keys[start : start + _BATCH]
                marks = ",".join("?" * len(batch))
                conn.execute(
                    f"UPDATE entries SET used = ? WHERE store = ? AND key IN ({marks})",
                    (now, store, *batch),
                )

    def _forget(self, store: str, keys: list[str]) -> None:
        with (
            contextlib.suppress(StoreUnavailable, sqlite3.Error),
            self._transaction() as conn,
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
                kind, size, value_digest, data = self._encode(store, key, value)
            except _Unpicklable:
                unpicklable.append(key)
                continue
            rows.append((store, key, kind, size, value_digest, data, now, now))
        self._noted[store] = now
        if rows:
            try:
                with self._transaction() as conn:
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
            self._enforce_limit()
        return unpicklable

    def _encode(
        self, store: str, key: str, value: Any
    ) -> tuple[str, int, str, bytes | None]:
        if (
            isinstance(value, np.ndarray)
            and not value.dtype.hasobject
            and value.nbytes >= INLINE_LIMIT
        ):
            array = np.ascontiguousarray(value)
            value_digest = _array_digest(array)
            self._write(self._path(store, key, "npy"), lambda f: np.save(f, array))
            return "npy", array.nbytes, value_digest, None
        blob = _pickle(value)
        if len(blob) < INLINE_LIMIT:
            return "inline", len(blob), digest(blob), blob
        self._write(self._path(store, key, "pkl"), lambda f: f.write(blob))
        return "pkl", len(blob), digest(blob), None

    def _path(self, store: str, key: str, kind: str) -> Path:
        return self.folder / "values" / store / f"{key}.{kind}"

    @staticmethod
    def _write(path: Path, write: Any) -> None:
        """Write a file atomically: a reader sees no file or all of it."""
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-", suffix=path.suffix)
        try:
            with os.fdopen(fd, "wb") as f:
                write(f)
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise

    # -- housekeeping ----------------------------------------------------

    def info(self) -> list[StoreInfo]:
        """One :class:`StoreInfo` per named store in this folder."""
        if not (self.folder / _INDEX).exists():
            return []
        with self._lock:
            try:
                rows = (
                    self._connect()
                    .execute(
                        "SELECT store, COUNT(*), SUM(size),"
                        " MAX(MAX(used), COALESCE((SELECT used FROM stores"
                        " WHERE name = store), 0)) FROM entries"
                        " GROUP BY store ORDER BY store"
                    )
                    .fetchall()
                )
            except sqlite3.Error as err:
                raise StoreUnavailable(str(err)) from err
        return [
            StoreInfo(name, count, int(size or 0), used, str(self.folder))
            for name, count, size, used in rows
        ]

    def clear(self, store: str | None = None) -> int:
        """Remove every entry of ``store`` (all stores: ``None``); returns
        how many entries were removed."""
        if not (self.folder / _INDEX).exists():
            return 0
        where, params = ("WHERE store = ?", (store,)) if store else ("", ())
        with self._transaction() as conn:
            removed = conn.execute(f"DELETE FROM entries {where}", params).rowcount
            conn.execute(f"DELETE FROM stores {where.replace('store', 'name')}", params)
        values = self.folder / "values"
        folders = [values / store] if store else list(_children(values))
        for folder in folders:
            _remove_tree(folder)
        return int(removed)

    def limit(self) -> int | None:
        """The size limit in bytes over all stores here, or ``None``."""
        if not (self.folder / _INDEX).exists():
            return None
        with self._lock:
            try:
                row = (
                    self._connect()
                    .execute("SELECT value FROM settings WHERE name = 'limit'")
                    .fetchone()
                )
            except sqlite3.Error as err:
                raise StoreUnavailable(str(err)) from err
        return None if row is None else int(row[0])

    def set_limit(self, nbytes: int | None) -> int:
        """Keep at most ``nbytes`` over all stores here, evicting the least
        recently used entries; returns how many entries were evicted."""
        with self._transaction() as conn:
            if nbytes is None:
                conn.execute("DELETE FROM settings WHERE name = 'limit'")
            else:
                conn.execute(
                    "INSERT OR REPLACE INTO settings VALUES ('limit', ?)",
                    (str(int(nbytes)),),
                )
        return self._enforce_limit()

    def _enforce_limit(self) -> int:
        limit = self.limit()
        if limit is None:
            return 0
        with self._transaction() as conn:
            (total,) = conn.execute(
                "SELECT COALESCE(SUM(size), 0) FROM entries"
            ).fetchone()
            if total <= limit:
                return 0
            evicted = []
            for store, key, kind, size in conn.execute(
                "SELECT store, key, kind, size FROM entries ORDER BY used, created"
            ):
                if total <= limit:
                    break
                evicted.append((store, key, kind))
                total -= size
            conn.executemany(
                "DELETE FROM entries WHERE store = ? AND key = ?",
                [(s, k) for s, k, _ in evicted],
            )
        for store, key, kind in evicted:
            if kind != "inline":
                with contextlib.suppress(OSError):
                    self._path(store, key, kind).unlink()
        return len(evicted)


class _Unpicklable(Exception):
    pass


def _pickle(value: Any) -> bytes:
    try:
        return pickle.dumps(value, protocol=5)
    except Exception:
        pass
    try:
        import cloudpickle

        # a lambda or a notebook class in the result
        return bytes(cloudpickle.dumps(value, protocol=5))
    except Exception as err:
        raise _Unpicklable(str(err)) from err


def _array_digest(array: np.ndarray[Any, Any]) -> str:
    # dtype and shape as well as the raw bytes: a reshaped array is another value
    header = f"{array.dtype.str}{array.shape}".encode()
    return digest(header, array.data.cast("B"))


def _children(folder: Path) -> Iterator[Path]:
    with contextlib.suppress(OSError):
        yield from folder.iterdir()


def _remove_tree(folder: Path) -> None:
    import shutil

    shutil.rmtree(folder, ignore_errors=True)
