"""Large numpy arrays to engines on this machine through shared memory.

An array of more than :data:`SHARED_MIN_BYTES` that engines on the kernel's
own machine need is written once into a file in ``/dev/shm`` (a *segment*);
each local engine maps that file read-only (see
:func:`._enginesegments.map_segment`), so 2 or 32 engines cost one copy, made
at memory speed instead of sent through the controller once per engine.  An
array of 64 MB or more is written as several files at once, one thread
each (:func:`piece_bounds`), and engines map the pieces one after the other.

Plain files, not :mod:`multiprocessing.shared_memory`: that maps segments
read-write only (an engine could change what the others read), registers
each with a ``resource_tracker`` process that unlinks and warns when an
engine exits, and filling one costs page faults: a 200 MB array takes
0.5 s into a ``SharedMemory`` against 0.16 s through ``os.write`` into a
file on the same tmpfs (see ``benchmarks/README.md``).

A segment lives while the notebook holds the version of the array it
copies: it is removed when that array is garbage-collected, when the array
changes in place (a new version gets a segment of its own), and when the
cluster stops.  An engine's mapping outlives the file's name (Linux frees
the memory when the last mapping goes), so removing a segment never pulls
data from under a running task.  Engines let go of a removed segment soon
after the drop (:attr:`SharedArrays.on_dropped`, see :mod:`._release`), or
when the cell that dropped its array ends, if no work is under way then
(:meth:`take_removed`), else with the next names shipped to them.  If the
kernel is killed, the cluster's watchdog removes its segments (their names
carry the cluster's id).
"""

from __future__ import annotations

import contextlib
import glob
import os
import secrets
import threading
import weakref
from collections.abc import Callable, Iterable
from typing import Any

from ._enginesegments import PIECE_ALIGN, SharedSegment

__all__ = [
    "SHARED_MIN_BYTES",
    "SharedArrays",
    "SharedSegment",
    "remove_segments",
    "shared_memory_dir",
]

#: Arrays at least this large go through shared memory to local engines;
#: smaller ones cost less to send than a file to create and map.
SHARED_MIN_BYTES = 1 << 20

_SHM = "/dev/shm"
#: ``os.write`` moves at most this much per call on Linux.
_WRITE_STEP = 1 << 30
#: A large array is written as several files (*pieces*) of at least this
#: size, one thread each: writes into one tmpfs file take its inode's lock
#: in turn, so threads gain only over files of their own (200 MB: 0.13 s
#: into one file, 0.07 s into two on two cores; see ``benchmarks/README.md``).
_PIECE_MIN = 32 * 2**20
#: At most this many pieces (and writing threads) per array.
_MAX_PIECES = 8


def shared_memory_dir() -> str | None:
    """Where segments go: ``/dev/shm``, or None where there is none (or
    ``PARACELL_SHARED_MEMORY=0`` turns the path off)."""
    if os.environ.get("PARACELL_SHARED_MEMORY", "").strip().lower() in {
        "0",
        "off",
        "no",
        "false",
    }:
        return None
    if os.path.isdir(_SHM) and os.access(_SHM, os.W_OK):
        return _SHM
    return None


def remove_segments(tag: str, folder: str = _SHM) -> list[str]:
    """Remove every segment whose name carries ``tag`` (a cluster's id);
    what a dead kernel's watchdog calls.  Returns the paths removed."""
    removed = []
    for path in glob.glob(os.path.join(folder, f"paracell-*-{glob.escape(tag)}-*")):
        with contextlib.suppress(OSError):
            os.unlink(path)
            removed.append(path)
    return removed


class SharedArrays:
    """The segments of one cluster's shipments, by content digest.

    Thread-safe: maps ship from the notebook's thread, background jobs from
    the job monitor's, and owners die on whichever thread drops them.
    """

    def __init__(self, folder: str, tag: str) -> None:
        self._folder = folder
        # names: paracell-<kernel pid>-<cluster tag>-<nonce>-<digest>
        self._prefix = f"paracell-{os.getpid()}-{tag}-{secrets.token_hex(3)}-"
        # re-entrant: an owner collected while the lock is held (a cycle
        # the collector frees mid-update) calls back into this object
        self._lock = threading.RLock()
        # a forked child (multiprocessing in the notebook) inherits this
        # object: only the process that wrote the segments removes them
        self._pid = os.getpid()
        self._segments: dict[str, SharedSegment] = {}
        # digest -> ids of the live notebook objects whose current version it is
        self._owners: dict[str, set[int]] = {}
        # id of a notebook object -> (its finalizer, the digest of its version)
        self._versions: dict[int, tuple[Any, str]] = {}
        # digests whose segments went because the notebook dropped the array
        self._removed: list[str] = []
        self._closed = False
        #: bytes written into segments since this object was made
        self.bytes_written = 0
        #: called (outside the lock, on the thread that dropped it) when the
        #: notebook drops an array whose segment engines map
        self.on_dropped: Callable[[], None] | None = None

    @property
    def prefix(self) -> str:
        """The start of every segment name this object makes."""
        return self._prefix

    def segment(self, digest: str, array: Any, owner: Any) -> SharedSegment | None:
        """The segment holding ``array`` (version ``digest`` of ``owner``),
        written now if there is none yet.

        Returns None when it cannot be written (no room in ``/dev/shm``, an
        OS error): the array then travels as before.  ``owner`` is the
        notebook's object: the segment goes when it does, or when it is
        given with another digest (changed in place).
        """
        with self._lock:
            if self._closed:
                return None
            found = self._segments.get(digest)
        if found is None:
            found = self._write(digest, array)
            if found is None:
                return None
            with self._lock:
                if self._closed:
                    _remove(found)
                    return None
                raced = self._segments.setdefault(digest, found)
                if raced is not found:  # another thread wrote it meanwhile
                    _remove(found)
                    found = raced
                else:
                    self.bytes_written += found.nbytes
        self._own(digest, owner)
        return found

    def _write(self, digest: str, array: Any) -> SharedSegment | None:
        data = memoryview(array).cast("B")
        nbytes = len(data)
        with contextlib.suppress(OSError):
            stat = os.statvfs(self._folder)
            # leave room for others: a full /dev/shm breaks other programs
            if stat.f_bavail * stat.f_frsize < 2 * nbytes:
                return None
        name = os.path.join(self._folder, self._prefix + digest)
        bounds = piece_bounds(nbytes)
        if len(bounds) == 1:
            paths: tuple[str, ...] = (name,)
        else:
            paths = tuple(f"{name}.{i}" for i in range(len(bounds)))
        failed = _write_pieces(paths, [data[lo:hi] for lo, hi in bounds])
        if failed is not None:
            if isinstance(failed, OSError):
                return None  # ENOSPC, or a name taken: the array travels
            raise failed
        return SharedSegment(paths, array.dtype, tuple(array.shape), nbytes)

    def _own(self, digest: str, owner: Any) -> None:
        key = id(owner)
        with self._lock:
            old = self._versions.get(key)
            if old is not None and old[1] == digest and old[0].alive:
                return
            if old is not None:
                old[0].detach()
                self._disown(key, old[1])
            try:
                finalizer = weakref.finalize(owner, self._gone, key)
            except TypeError:  # cannot be referred to weakly: kept till stop
                self._owners.setdefault(digest, set())
                return
            finalizer.atexit = False
            self._versions[key] = (finalizer, digest)
            self._owners.setdefault(digest, set()).add(key)

    def _gone(self, key: int) -> None:
        with self._lock:
            version = self._versions.pop(key, None)
            removed = version is not None and self._disown(key, version[1])
        if removed and self.on_dropped is not None:
            self.on_dropped()

    def _disown(self, key: int, digest: str) -> bool:
        """``key`` no longer holds version ``digest``; the segment goes when
        nobody does (under the lock).  Returns whether it went."""
        owners = self._owners.get(digest)
        if owners is None:
            return False
        owners.discard(key)
        if owners:
            return False
        del self._owners[digest]
        segment = self._segments.pop(digest, None)
        if segment is None or os.getpid() != self._pid:
            return False
        _remove(segment)
        self._removed.append(digest)
        return True

    def take_removed(self) -> list[str]:
        """The digests whose segments were removed since the last call
        because the notebook dropped (or changed) their arrays: engines may
        let go of their mappings, and the memory is freed when they do."""
        with self._lock:
            removed, self._removed = self._removed, []
            return removed

    def revive(self, digests: Iterable[str]) -> None:
        """``digests`` are shipped again (an equal array made anew): engines
        that still map them keep them, and :meth:`take_removed` forgets them."""
        wanted = set(digests)
        with self._lock:
            self._removed = [d for d in self._removed if d not in wanted]

    def holds(self, digest: str) -> bool:
        """Whether a segment of version ``digest`` exists."""
        with self._lock:
            return digest in self._segments

    def paths(self) -> list[str]:
        """The files of the segments alive now."""
        with self._lock:
            return [path for s in self._segments.values() for path in s.paths]

    def close(self) -> None:
        """Remove every segment (the cluster stops); later calls write none."""
        with self._lock:
            self._closed = True
            segments = list(self._segments.values())
            self._segments.clear()
            self._owners.clear()
            self._removed.clear()
            for finalizer, _ in self._versions.values():
                finalizer.detach()
            self._versions.clear()
        if os.getpid() != self._pid:
            return
        for segment in segments:
            _remove(segment)


def piece_bounds(nbytes: int) -> list[tuple[int, int]]:
    """Where the pieces of an array of ``nbytes`` start and end: one piece
    under 64 MB, else as many as the CPUs here (at least 2, at most
    :data:`_MAX_PIECES`) and the size allow."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cpus = os.cpu_count() or 1
    count = min(max(2, cpus), _MAX_PIECES, nbytes // _PIECE_MIN)
    if count < 2:
        return [(0, nbytes)]
    step = -(-nbytes // count)
    step = -(-step // PIECE_ALIGN) * PIECE_ALIGN
    return [(lo, min(lo + step, nbytes)) for lo in range(0, nbytes, step)]


def _write_pieces(
    paths: tuple[str, ...], pieces: list[memoryview]
) -> BaseException | None:
    """Write each piece into its new file, the first here and the others in
    threads of their own.  On a failure (or an interrupt, which waits for
    the threads) every file written is removed, and the failure returned."""
    written = [False] * len(paths)
    failures: list[BaseException] = []

    def write(i: int) -> None:
        try:
            _write_file(paths[i], pieces[i])
            written[i] = True
        except BaseException as exc:  # returned to the caller
            failures.append(exc)

    threads = [
        threading.Thread(target=write, args=(i,), daemon=True)
        for i in range(1, len(paths))
    ]
    for thread in threads:
        thread.start()
    write(0)
    for thread in threads:
        while thread.is_alive():
            try:
                thread.join()
            except KeyboardInterrupt as exc:
                failures.insert(0, exc)
    if not failures:
        return None
    for path, done in zip(paths, written, strict=True):
        if done:
            _unlink(path)
    interrupts = [exc for exc in failures if isinstance(exc, KeyboardInterrupt)]
    return (interrupts or failures)[0]


def _write_file(path: str, data: memoryview) -> None:
    """Write ``data`` into a new file ``path``; on failure, one it made is
    removed (one that existed before is not touched)."""
    # read-only from the start: engines open it O_RDONLY
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o400)
    try:
        with contextlib.closing(_Fd(fd)):
            done = 0
            while done < len(data):
                done += os.write(fd, data[done : done + _WRITE_STEP])
    except BaseException:
        _unlink(path)
        raise


class _Fd:
    def __init__(self, fd: int) -> None:
        self.fd = fd

    def close(self) -> None:
        os.close(self.fd)


def _remove(segment: SharedSegment) -> None:
    for path in segment.paths:
        _unlink(path)


def _unlink(path: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)
