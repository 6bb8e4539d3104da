"""How the result store lays a value on disk, and reads it back.

A value is one of three kinds: ``inline`` (pickled bytes kept in the index
row itself), ``pkl`` (a pickle file) or ``npy`` (a numpy array, read back
memory-mapped).  Files are written to a temporary name and moved into place,
so a reader sees no file or all of it; every value carries a digest of its
bytes, checked on read.  The index itself is :mod:`._storeindex`.
"""

from __future__ import annotations

import contextlib
import os
import pickle
import shutil
import tempfile
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import IO, Any

import numpy as np
import xxhash

__all__ = [
    "INLINE_LIMIT",
    "Unpicklable",
    "decode_value",
    "digest",
    "encode_value",
    "is_whole",
    "remove_value_files",
    "remove_values",
    "value_path",
]

#: Values whose bytes are smaller than this live in the index itself: one
#: SQLite row is far cheaper to write and read than a file.
INLINE_LIMIT = 64 * 1024


class Unpicklable(Exception):
    """A value that neither pickle nor cloudpickle can store."""


def digest(*parts: bytes | memoryview) -> str:
    """Fast content digest (XXH3, 128 bits) as 32 hex digits.

    Not cryptographic: it tells versions of the user's own data apart, and
    runs near memory speed (a 200 MB array in about 20 ms).
    """
    h = xxhash.xxh3_128()
    for part in parts:
        h.update(part)
    return h.hexdigest()


def value_path(folder: Path, store: str, key: str, kind: str) -> Path:
    """Where the file of a ``pkl`` or ``npy`` entry lies."""
    return folder / "values" / store / f"{key}.{kind}"


def encode_value(
    folder: Path, store: str, key: str, value: Any
) -> tuple[str, int, str, bytes | None]:
    """Lay ``value`` down: its kind, size, digest and (when inline) bytes.

    A large value's file is written here.  Raises :class:`Unpicklable`.
    """
    if (
        isinstance(value, np.ndarray)
        and not value.dtype.hasobject
        and value.nbytes >= INLINE_LIMIT
    ):
        array = np.ascontiguousarray(value)
        value_digest = _array_digest(array)
        path = value_path(folder, store, key, "npy")
        _write_atomically(path, lambda f: np.save(f, array))
        return "npy", array.nbytes, value_digest, None
    blob = _pickle(value)
    if len(blob) < INLINE_LIMIT:
        return "inline", len(blob), digest(blob), blob
    _write_atomically(value_path(folder, store, key, "pkl"), lambda f: f.write(blob))
    return "pkl", len(blob), digest(blob), None


def decode_value(
    folder: Path, store: str, key: str, kind: str, expected: str, data: bytes | None
) -> Any:
    """The value of an entry; raises if it is missing or its digest differs."""
    if kind == "inline":
        assert data is not None
        if digest(data) != expected:
            raise ValueError("digest mismatch")
        return pickle.loads(data)
    path = value_path(folder, store, key, kind)
    if kind == "npy":
        array = np.load(path, mmap_mode="r", allow_pickle=False)
        if _array_digest(array) != expected:
            raise ValueError("digest mismatch")
        return array
    blob = path.read_bytes()
    if digest(blob) != expected:
        raise ValueError("digest mismatch")
    return pickle.loads(blob)


def is_whole(folder: Path, store: str, key: str, kind: str, size: int) -> bool:
    """An entry's file is there and not shorter than what was written
    (a ``.npy`` file is its array's bytes and a header)."""
    if kind == "inline":
        return True
    try:
        length = value_path(folder, store, key, kind).stat().st_size
    except OSError:
        return False
    return length >= size if kind == "npy" else length == size


def remove_value_files(folder: Path, entries: Iterable[tuple[str, str, str]]) -> None:
    """Delete the files of ``(store, key, kind)`` entries (inline ones have none)."""
    for store, key, kind in entries:
        if kind != "inline":
            with contextlib.suppress(OSError):
                value_path(folder, store, key, kind).unlink()


def remove_values(folder: Path, store: str | None) -> None:
    """Delete the value files of ``store`` (of every store: ``None``)."""
    values = folder / "values"
    folders = [values / store] if store else list(_children(values))
    for each in folders:
        shutil.rmtree(each, ignore_errors=True)


def _write_atomically(path: Path, write: Callable[[IO[bytes]], object]) -> None:
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
        raise Unpicklable(str(err)) from err


def _array_digest(array: np.ndarray[Any, Any]) -> str:
    # dtype and shape as well as the raw bytes: a reshaped array is another value
    header = f"{array.dtype.str}{array.shape}".encode()
    return digest(header, array.data.cast("B"))


def _children(folder: Path) -> Iterator[Path]:
    with contextlib.suppress(OSError):
        yield from folder.iterdir()
