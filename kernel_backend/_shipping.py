"""Shipping the names code needs to the engines, once per engine per version.

What a piece of code needs is a :class:`._shipment.Shipment`.  Here
:class:`NameShipper` remembers which version of each name every engine
holds, and sends an engine an object only when it does not hold that
version yet, so a large array used by every map crosses to each engine once.
An array of a megabyte or more bound for engines on this machine crosses
once, into shared memory, and every such engine maps it (:mod:`._sharedmem`).
Whether imports work on the engines is :mod:`._importcheck`'s question.
"""

from __future__ import annotations

import contextlib
import weakref
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from ._enginenames import install_names, missing_names
from ._errors import EnginesDied, InvalidRequest, is_engine_death
from ._importcheck import ImportCheck
from ._release import noting
from ._sharedmem import SHARED_MIN_BYTES, SharedArrays
from ._shipment import Payload, Shipment

__all__ = ["NameShipper"]


@dataclass
class _Parcel:
    """What one engine is sent of a shipment: ``install_names``' entries
    (digest -> how it travels), the arrays sent as buffers, the digests it
    may drop."""

    entries: dict[str, tuple[str, Any]] = field(default_factory=dict)
    arrays: list[Any] = field(default_factory=list)
    size: int = 0  # bytes through the controller
    shared: dict[str, Payload] = field(default_factory=dict)  # sent as segments
    evict: list[str] = field(default_factory=list)

    def add(self, p: Payload, segment: Any) -> None:
        if segment is not None:
            self.entries[p.digest] = ("shared", segment)
            self.shared[p.digest] = p
        elif p.kind == "array":
            self.entries[p.digest] = ("array", len(self.arrays))
            self.arrays.append(p.payload)
            self.size += p.nbytes
        else:
            self.entries[p.digest] = (p.kind, p.payload)
            self.size += p.nbytes


@dataclass(frozen=True)
class _Install:
    """An ``install_names`` task sent to engine ``eid``."""

    eid: int
    ar: Any
    size: int
    count: int
    shared: dict[str, Payload]


class NameShipper:
    """Remembers which version of each name every engine holds.

    Belongs to one cluster: engine ids are only unique within a controller.
    """

    def __init__(
        self,
        purge: Callable[[Any], None],
        *,
        shared: SharedArrays | None = None,
        is_local: Callable[[int], bool] = lambda eid: False,
        on_dropped: Callable[[], None] | None = None,
    ) -> None:
        self._purge = purge  # drops a finished task from the client's caches
        # large arrays to engines on this machine: through shared memory
        self._shared = shared
        self._on_dropped = on_dropped  # the notebook dropped a large array
        self._is_local = is_local
        self._shared_ok: set[int] = set()  # engines that mapped a segment
        self._no_shared: set[int] = set()  # local by name, but could not map
        self._held: dict[int, dict[str, str]] = {}
        self._paths: dict[int, tuple[str, ...]] = {}  # engine -> paths sent
        # digest -> the notebook objects it was shipped for (weakly)
        self._owners: dict[str, list[weakref.ref[Any]]] = {}
        # digests of large arrays one of whose notebook objects went (filled
        # by weakref callbacks, on whatever thread drops the object)
        self._let_go: list[str] = []
        # digests of objects the notebook dropped that engines still hold
        self._unwanted: set[str] = set()
        self._imports = ImportCheck()
        #: bytes sent to engines through the controller
        self.bytes_sent = 0
        self.objects_sent = 0

    @property
    def bytes_shared(self) -> int:
        """Bytes written into shared memory for local engines (once per
        version of an array, however many engines map it)."""
        return 0 if self._shared is None else self._shared.bytes_written

    def close(self) -> None:
        """The cluster is gone: remove the shared-memory segments."""
        if self._shared is not None:
            self._shared.close()

    def ship(
        self,
        client: Any,
        engine_ids: Iterable[int],
        shipment: Shipment,
        *,
        block: bool = True,
    ) -> None:
        """Send each engine what it lacks of ``shipment`` (``block=False``:
        no wait; an engine runs its tasks in order, so code sent after this
        finds the names stored)."""
        dropped = self._dropped_digests(shipment)
        if self._shared is not None:  # an array dropped and made again
            self._shared.revive(shipment.digests.values())
        pending = []
        for eid in engine_ids:
            install = self._install(client, eid, shipment, dropped, block)
            if install is not None:
                pending.append(install)
        died = set()
        for install in pending:
            if not self._installed(client, install, shipment, block):
                died.add(install.eid)
        if died:
            self.forget(died)
            raise EnginesDied(died)

    def _install(
        self,
        client: Any,
        eid: int,
        shipment: Shipment,
        dropped: set[str],
        block: bool,
    ) -> _Install | None:
        """Send engine ``eid`` what it lacks (None: it lacks nothing)."""
        held = self._held.setdefault(eid, {})
        evict = _take_out(held, dropped)
        parcel = self._parcel(eid, held, shipment, block)
        evict += parcel.evict
        paths = self._paths_to_send(eid, shipment.paths)
        if not parcel.entries and not paths and not evict:
            return None
        # arrays as top-level arguments: ipyparallel sends those as
        # zero-copy buffers (nested in a dict they would be pickled)
        ar = client[eid].apply_async(
            install_names,
            parcel.entries,
            evict,
            shipment.sources,
            *parcel.arrays,
            paths=paths,
        )
        return _Install(eid, ar, parcel.size, len(parcel.entries), parcel.shared)

    def _parcel(
        self, eid: int, held: dict[str, str], shipment: Shipment, block: bool
    ) -> _Parcel:
        """What engine ``eid``, holding ``held``, is sent of ``shipment``."""
        parcel = _Parcel()
        for name, p in shipment.names.items():
            old = held.get(name)
            if old == p.digest:
                continue
            segment = self._segment(eid, p, block) if p.kind == "array" else None
            parcel.add(p, segment)
            if old is not None and old not in shipment.digests.values():
                parcel.evict.append(old)
        return parcel

    def _installed(
        self, client: Any, install: _Install, shipment: Shipment, block: bool
    ) -> bool:
        """Note what ``install`` gave its engine (waiting for the answer
        when ``block``); False if the engine died meanwhile."""
        size = install.size
        if block:
            try:
                unmapped = install.ar.get()
                if install.shared:
                    size += self._send_unmapped(
                        client, install.eid, unmapped, install.shared
                    )
            except Exception as err:
                if not is_engine_death(err):
                    raise
                return False
        self._held[install.eid].update(shipment.digests)
        self.bytes_sent += size
        self.objects_sent += install.count
        if block:
            self._purge(install.ar)
        return True

    def _segment(self, eid: int, payload: Payload, block: bool) -> Any:
        """The shared-memory segment to send engine ``eid`` instead of the
        array's bytes, or None to send the bytes.

        Only for engines on this machine, and without waiting for the
        answer (``block=False``) only for engines known to map segments: a
        failure there would surface as a missing name in the task.
        """
        if (
            self._shared is None
            or payload.nbytes < SHARED_MIN_BYTES
            or eid in self._no_shared
            or (not block and eid not in self._shared_ok)
            or not self._is_local(eid)
        ):
            return None
        owner = payload.owner() if payload.owner is not None else None
        return self._shared.segment(
            payload.digest, payload.payload, payload.payload if owner is None else owner
        )

    def _send_unmapped(
        self,
        client: Any,
        eid: int,
        unmapped: Sequence[str],
        shared: dict[str, Payload],
    ) -> int:
        """Send as bytes the arrays engine ``eid`` could not map (it does not
        share this machine's ``/dev/shm`` after all); returns the bytes sent."""
        if not unmapped:
            self._shared_ok.add(eid)
            return 0
        self._no_shared.add(eid)
        arrays = [shared[d].payload for d in unmapped]
        entries = {d: ("array", i) for i, d in enumerate(unmapped)}
        ar = client[eid].apply_async(install_names, entries, (), None, *arrays)
        ar.get()
        self._purge(ar)
        return sum(shared[d].nbytes for d in unmapped)

    def _watched(self, p: Payload) -> weakref.ref[Any]:
        """A reference to ``p``'s notebook object; for a large array, one
        that notes the digest when the object goes (:meth:`release_dropped`)."""
        assert p.owner is not None
        obj = p.owner()
        if obj is None or p.kind != "array" or p.nbytes < SHARED_MIN_BYTES:
            return p.owner
        try:  # the callback holds the list, not self: no cycle through it
            return weakref.ref(obj, noting(self._let_go, p.digest, self._on_dropped))
        except TypeError:
            return p.owner

    def release_dropped(self, client: Any) -> list[int]:
        """Tell engines to drop the large arrays the notebook dropped (or
        changed, for shared-memory segments), so their memory is freed now
        instead of at the next shipment.  No wait for the answers.  Only for
        when no work runs: a running map's later chunks would miss them.
        Returns the engines told."""
        # segments the notebook's versions no longer need (:mod:`._sharedmem`
        # follows versions); other arrays once none of their objects is alive
        gone = set(self._shared.take_removed()) if self._shared is not None else set()
        while self._let_go:
            digest = self._let_go.pop()
            if not any(ref() is not None for ref in self._owners.get(digest, ())):
                gone.add(digest)
        if not gone:
            return []
        told = []
        for eid, held in list(self._held.items()):
            evict = _take_out(held, gone)
            if not evict:
                continue
            with contextlib.suppress(Exception):  # a dead engine holds nothing
                ar = client[eid].apply_async(install_names, {}, evict, None)
                ar.add_done_callback(self._purge)
                told.append(eid)
        return told

    def _dropped_digests(self, shipment: Shipment) -> set[str]:
        """Digests whose notebook objects are all gone (and that this
        shipment does not bring again): engines can drop them."""
        for p in shipment.names.values():
            if p.owner is not None:
                owners = self._owners.setdefault(p.digest, [])
                if not any(ref() is p.owner() for ref in owners):
                    owners.append(self._watched(p))
        dropped = set()
        for held, owners in list(self._owners.items()):
            owners[:] = [ref for ref in owners if ref() is not None]
            if not owners:
                del self._owners[held]
                dropped.add(held)
        # kept until every engine that holds them has dropped them: engines
        # left out of this shipment drop them with a later one
        held_now = {d for held in self._held.values() for d in held.values()}
        wanted = set(shipment.digests.values())
        self._unwanted = ((self._unwanted | dropped) & held_now) - wanted
        # without cells nothing else takes these: keep only what engines hold
        self._let_go[:] = [d for d in self._let_go if d in held_now]
        return set(self._unwanted)

    def _paths_to_send(self, eid: int, paths: tuple[str, ...]) -> tuple[str, ...]:
        """``paths`` if engine ``eid`` has not been sent them yet, else ()."""
        if self._paths.get(eid) == paths:
            return ()
        self._paths[eid] = paths
        return paths

    def sync_paths(
        self, client: Any, engine_ids: Iterable[int], paths: tuple[str, ...]
    ) -> None:
        """Send the notebook's import path to engines that lack it (no wait:
        an engine runs its tasks in order, so the next task finds it set)."""
        for eid in engine_ids:
            if sent := self._paths_to_send(eid, paths):
                ar = client[eid].apply_async(install_names, {}, (), None, paths=sent)
                ar.add_done_callback(self._purge)

    def send(
        self,
        client: Any,
        engine_ids: Sequence[int],
        shipment: Shipment,
        *,
        require_engine_side: bool = True,
    ) -> Shipment:
        """Get ``engine_ids`` ready to run code that needs ``shipment``.

        Checks that names the notebook lacks exist on the engines (unless the
        code itself may define them there), that imports work there, and
        sends what the engines do not hold yet.  Returns the shipment as
        sent (functions of modules the engines cannot import go by value).
        """
        if require_engine_side and shipment.engine_side:
            missing = self._ask(client, engine_ids, missing_names, shipment.engine_side)
            absent = sorted({name for lacking in missing.values() for name in lacking})
            if absent:
                raise InvalidRequest(
                    f"name {absent[0]!r} is not defined in the notebook"
                    " nor on the engines"
                )
        self.sync_paths(client, engine_ids, shipment.paths)
        shipment = self.check_imports(client, engine_ids, shipment)
        self.ship(client, engine_ids, shipment)
        return shipment

    def check_imports(
        self, client: Any, engine_ids: Sequence[int], shipment: Shipment
    ) -> Shipment:
        """Make sure what travels as an import can be imported on the engines
        (:meth:`._importcheck.ImportCheck.check`): ``shipment``, or a copy
        with what they cannot import by value."""

        def ask(func: Any, *args: Any) -> dict[int, Any]:
            return self._ask(client, engine_ids, func, *args)

        return self._imports.check(ask, engine_ids, shipment)

    def _ask(
        self, client: Any, engine_ids: Iterable[int], func: Any, *args: Any
    ) -> dict[int, Any]:
        """``func(*args)`` on each engine; raises ``EnginesDied`` naming the
        engines that died meanwhile (after hearing from all of them)."""
        tasks = {eid: client[eid].apply_async(func, *args) for eid in engine_ids}
        answers, died = {}, set()
        for eid, ar in tasks.items():
            try:
                answers[eid] = ar.get()
            except Exception as err:
                if not is_engine_death(err):
                    raise
                died.add(eid)
            self._purge(ar)
        if died:
            self.forget(died)
            raise EnginesDied(died)
        return answers

    def forget(self, engine_ids: Iterable[int]) -> None:
        """Engines that are gone hold nothing any more."""
        for eid in engine_ids:
            self._held.pop(eid, None)
            self._shared_ok.discard(eid)
            self._no_shared.discard(eid)
            self._paths.pop(eid, None)
            self._imports.forget(eid)


def _take_out(held: dict[str, str], digests: set[str]) -> list[str]:
    """Forget the names an engine holds (``held``: name -> digest) whose
    digest is in ``digests``; returns those digests, once each, for the
    engine to evict."""
    names = [name for name, digest in held.items() if digest in digests]
    return list(dict.fromkeys(held.pop(name) for name in names))
