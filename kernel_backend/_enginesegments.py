"""Runs on the engines: mapping a shared-memory segment the kernel wrote.

See :mod:`._sharedmem` for how segments are written and removed.  A small
array's segment is one file, mapped with :mod:`mmap`; a large one's is
several pieces, mapped one after the other into one read-only region.
"""

from __future__ import annotations

import mmap
import os
from dataclasses import dataclass
from typing import Any

__all__ = ["PIECE_ALIGN", "SharedSegment", "map_segment"]

#: Pieces are whole multiples of this (a huge page), so engines can map
#: each one at its place in one region.
PIECE_ALIGN = 2 * 2**20


@dataclass(frozen=True)
class SharedSegment:
    """What an engine needs to map a segment: its files and the array's layout.

    ``paths`` holds one file, or the pieces of a large array in order: each
    but the last a multiple of 2 MB, mapped one after the other.
    """

    paths: tuple[str, ...]
    dtype: Any  # numpy dtype (pickled as itself, structured dtypes included)
    shape: tuple[int, ...]
    nbytes: int


#: Linux's flag for a mapping at exactly the address given.
_MAP_FIXED = 0x10


def map_segment(segment: SharedSegment) -> Any:
    """The array in a segment, mapped read-only (on an engine).

    The mapping keeps the memory after the kernel removes the files; it is
    unmapped when the array is dropped (evicted from the engine's store).
    Raises OSError when the files are not there or not as the kernel wrote
    them (an engine with a ``/dev/shm`` of its own).
    """
    import numpy as np

    if len(segment.paths) == 1:
        fd = os.open(segment.paths[0], os.O_RDONLY)
        try:
            if os.fstat(fd).st_size != segment.nbytes:
                raise OSError(
                    f"segment {segment.paths[0]} is not {segment.nbytes} bytes"
                )
            memory = mmap.mmap(fd, segment.nbytes, mmap.MAP_SHARED, mmap.PROT_READ)
        finally:
            os.close(fd)
    else:
        memory = _map_pieces(segment.paths, segment.nbytes)
    # a read-only buffer: numpy refuses writes, and refuses to make it writeable
    return np.frombuffer(memory, dtype=segment.dtype).reshape(segment.shape)


def _map_pieces(paths: tuple[str, ...], nbytes: int) -> mmap.mmap:
    """One read-only region of ``nbytes`` holding the pieces one after the
    other: an anonymous read-only mapping reserves the addresses (and its
    object unmaps them all when it goes), and each piece is mapped over its
    part of it in place."""
    import numpy as np

    region = mmap.mmap(-1, nbytes, access=mmap.ACCESS_READ)
    try:
        start = np.frombuffer(region, dtype=np.uint8).ctypes.data
        offset = 0
        for i, path in enumerate(paths):
            fd = os.open(path, os.O_RDONLY)
            try:
                size = os.fstat(fd).st_size
                last = i == len(paths) - 1
                if offset + size > nbytes or (not last and size % PIECE_ALIGN):
                    raise OSError(f"segment piece {path} is not as written")
                _map_fixed(start + offset, size, fd)
            finally:
                os.close(fd)
            offset += size
        if offset != nbytes:
            raise OSError(
                f"segment pieces {paths[0]}... hold {offset} bytes, not {nbytes}"
            )
    except BaseException:
        region.close()
        raise
    return region


def _map_fixed(address: int, size: int, fd: int) -> None:
    """Map ``size`` bytes of file ``fd`` read-only at ``address`` exactly
    (replacing what was mapped there)."""
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    call = libc.mmap
    call.restype = ctypes.c_void_p
    call.argtypes = [
        ctypes.c_void_p,
        ctypes.c_size_t,
        ctypes.c_int,
        ctypes.c_int,
        ctypes.c_int,
        ctypes.c_long,
    ]
    flags = mmap.MAP_SHARED | _MAP_FIXED
    if call(address, size, mmap.PROT_READ, flags, fd, 0) != address:
        error = ctypes.get_errno()
        raise OSError(error, f"mapping a segment piece: {os.strerror(error)}")
