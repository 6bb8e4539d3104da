"""The result store's index: one SQLite file, shared by threads and kernels.

SQLite's WAL mode lets readers and one writer work at once; a busy timeout
queues writers.  Every SQLite or file-system error opening or using the index
becomes :class:`StoreUnavailable`, which callers read as *not stored*.
"""

from __future__ import annotations

import contextlib
import sqlite3
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

__all__ = ["BATCH", "StoreIndex", "StoreUnavailable", "marks"]

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
#: Keys per query: well under SQLite's limit on bound parameters.
BATCH = 500


class StoreUnavailable(Exception):
    """The index could not be opened or was locked for too long."""


def marks(batch: Sequence[Any]) -> str:
    """One ``?`` per element of ``batch``, for an ``IN (...)`` clause."""
    return ",".join("?" * len(batch))


class StoreIndex:
    """The index of the stores in ``folder``: its connection, opened on
    first use, and the lock that guards it."""

    def __init__(self, folder: Path, busy_timeout: float) -> None:
        self.folder = folder
        self.busy_timeout = busy_timeout
        self._lock = threading.Lock()
        self._conn: sqlite3.Connection | None = None

    def exists(self) -> bool:
        """Whether the index file is there (nothing was ever stored if not)."""
        return (self.folder / _INDEX).exists()

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
                _wal_mode(conn, self.busy_timeout)
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
    def reading(self) -> Iterator[sqlite3.Connection]:
        """The connection, under the lock, outside any transaction; an
        SQLite error inside becomes :class:`StoreUnavailable`."""
        with self._lock:
            try:
                yield self._connect()
            except sqlite3.Error as err:
                raise StoreUnavailable(str(err)) from err

    @contextlib.contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """A write transaction, committed on leaving, rolled back on error."""
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


def _wal_mode(conn: sqlite3.Connection, timeout: float) -> None:
    """Put the index in WAL mode.  Switching takes the whole file, and SQLite
    does not wait for it as it waits for other statements: another process
    opening the store at the same moment makes it fail at once with
    "database is locked", so it is tried again for up to ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            conn.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as err:
            if "locked" not in str(err) or time.monotonic() >= deadline:
                raise
            time.sleep(0.01)
