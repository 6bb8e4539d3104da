"""The result store's upkeep: what the stores hold, clearing them, and the
size limit over all stores in a folder (least recently used entries go
first).  The limit is a row of the index's ``settings`` table, so every
kernel sharing the folder keeps it."""

from __future__ import annotations

from dataclasses import dataclass

from ._storeindex import StoreIndex
from ._storevalues import remove_value_files, remove_values

__all__ = [
    "StoreInfo",
    "clear",
    "enforce_limit",
    "read_limit",
    "set_limit",
    "store_info",
]


@dataclass(frozen=True)
class StoreInfo:
    """One named store: its entries, their bytes, when last used, where."""

    name: str
    entries: int
    size: int
    last_used: float | None
    folder: str


def store_info(index: StoreIndex) -> list[StoreInfo]:
    """One :class:`StoreInfo` per named store in the index's folder."""
    if not index.exists():
        return []
    with index.reading() as conn:
        rows = conn.execute(
            "SELECT store, COUNT(*), SUM(size),"
            " MAX(MAX(used), COALESCE((SELECT used FROM stores"
            " WHERE name = store), 0)) FROM entries"
            " GROUP BY store ORDER BY store"
        ).fetchall()
    return [
        StoreInfo(name, count, int(size or 0), used, str(index.folder))
        for name, count, size, used in rows
    ]


def clear(index: StoreIndex, store: str | None) -> int:
    """Remove every entry of ``store`` (all stores: ``None``); returns how
    many entries were removed."""
    if not index.exists():
        return 0
    where, params = ("WHERE store = ?", (store,)) if store else ("", ())
    with index.transaction() as conn:
        removed = conn.execute(f"DELETE FROM entries {where}", params).rowcount
        conn.execute(f"DELETE FROM stores {where.replace('store', 'name')}", params)
    remove_values(index.folder, store)
    return int(removed)


def read_limit(index: StoreIndex) -> int | None:
    """The size limit in bytes over all stores in the folder, or ``None``."""
    if not index.exists():
        return None
    with index.reading() as conn:
        row = conn.execute("SELECT value FROM settings WHERE name = 'limit'").fetchone()
    return None if row is None else int(row[0])


def set_limit(index: StoreIndex, nbytes: int | None) -> int:
    """Keep at most ``nbytes`` (no limit: ``None``) and evict down to it;
    returns how many entries were evicted."""
    with index.transaction() as conn:
        if nbytes is None:
            conn.execute("DELETE FROM settings WHERE name = 'limit'")
        else:
            conn.execute(
                "INSERT OR REPLACE INTO settings VALUES ('limit', ?)",
                (str(int(nbytes)),),
            )
    return enforce_limit(index)


def enforce_limit(index: StoreIndex) -> int:
    """Evict the least recently used entries until the stores fit the
    limit; returns how many were evicted."""
    limit = read_limit(index)
    if limit is None:
        return 0
    with index.transaction() as conn:
        (total,) = conn.execute("SELECT COALESCE(SUM(size), 0) FROM entries").fetchone()
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
    remove_value_files(index.folder, evicted)
    return len(evicted)
