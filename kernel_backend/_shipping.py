"""Shipping the names code needs to the engines, once per engine per version.

The plan (which names are modules, importable objects, by-value objects or
left to the engine) comes from :mod:`._plan`.  Here each by-value object
gets a content digest; an engine receives an object only when it does not
hold that version yet, so a large array used by every map crosses to each
engine once.  numpy arrays travel as ipyparallel's zero-copy buffers, the rest
as cloudpickle bytes (notebook functions with their globals stripped).  An
array of a megabyte or more bound for engines on this machine crosses once,
into shared memory, and every such engine maps it (:mod:`._sharedmem`).
"""

from __future__ import annotations

import hashlib
import importlib
import linecache
import os
import sys
import weakref
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from types import FunctionType
from typing import Any

import cloudpickle
import numpy as np

from . import _pickling
from ._engine import install_names, missing_names, unimportable
from ._errors import EnginesDied, InvalidRequest, is_engine_death
from ._plan import ShippingPlan, check_shippable, plan_shipping
from ._sharedmem import SHARED_MIN_BYTES, SharedArrays
from ._storevalues import digest

__all__ = ["NameShipper", "Shipment", "prepare_shipment"]


@dataclass(frozen=True)
class _Payload:
    digest: str
    kind: str  # "function", "pickle" or "array"
    payload: Any
    nbytes: int
    #: the notebook's object, weakly, when it can be referred to so: once it
    #: is gone, engines drop their copy (see NameShipper._dropped_digests)
    owner: weakref.ref[Any] | None = None


def _weak(obj: Any) -> weakref.ref[Any] | None:
    try:
        return weakref.ref(obj)
    except TypeError:  # ints, lists, dicts...: kept while their name is
        return None


@dataclass(frozen=True)
class Shipment:
    """Everything one piece of code needs on the engines."""

    names: dict[str, _Payload]
    modules: dict[str, str]
    from_imports: dict[str, tuple[str, str]]
    engine_side: tuple[str, ...]
    sources: dict[str, list[str]] = field(default_factory=dict)
    #: the notebook's import path, so modules it can import (a folder it put
    #: on ``sys.path``) import on engines that share its file system
    paths: tuple[str, ...] = ()

    @property
    def digests(self) -> dict[str, str]:
        """Name -> content digest, as the engine-side spec refers to them."""
        return {name: p.digest for name, p in self.names.items()}

    def spec_names(self) -> dict[str, Any]:
        """The names part of a :class:`TaskSpec` for this shipment."""
        return {
            "names": self.digests,
            "modules": self.modules,
            "from_imports": self.from_imports,
            "engine_side": self.engine_side,
        }

    @property
    def key(self) -> str:
        """One digest for the whole set of names (the engine caches by it)."""
        h = hashlib.blake2b(digest_size=12)
        for part in (
            sorted(self.digests.items()),
            sorted(self.modules.items()),
            sorted(self.from_imports.items()),
            sorted(self.engine_side),
        ):
            h.update(repr(part).encode())
        return h.hexdigest()


def prepare_shipment(
    names: Iterable[str],
    namespace: Mapping[str, Any],
    extra: Mapping[str, Any] = {},
    *,
    ship_large: bool = False,
) -> Shipment:
    """Classify ``names`` against ``namespace`` and digest every by-value object.

    ``extra`` adds objects under names of their own (the callable given to
    ``pmap``).  Raises ``InvalidRequest`` naming an object that cannot be
    pickled, or one larger than :func:`ship_limit` unless ``ship_large``.
    """
    merged = {**namespace, **extra} if extra else namespace
    plan = plan_shipping([*names, *extra], merged)
    arrays = {n: o for n, o in plan.by_value.items() if _is_plain_array(o)}
    others = ShippingPlan(
        modules=plan.modules,
        from_imports=plan.from_imports,
        by_value={n: o for n, o in plan.by_value.items() if n not in arrays},
        engine_side=plan.engine_side,
    )
    if not ship_large:
        for name, array in arrays.items():
            _check_size(name, array, array.nbytes)
    payloads: dict[str, _Payload] = {}
    for name, data in check_shippable(others).items():
        if not ship_large:
            _check_size(name, others.by_value[name], len(data))
        function = isinstance(others.by_value[name], FunctionType)
        kind = "function" if function else "pickle"
        owner = _weak(others.by_value[name])
        payloads[name] = _Payload(_digest(data), kind, data, len(data), owner)
    for name, array in arrays.items():
        contiguous = np.ascontiguousarray(array)
        header = f"{contiguous.dtype.str}{contiguous.shape}".encode()
        digest = _digest(header, memoryview(contiguous.data).cast("B"))
        payloads[name] = _Payload(
            digest, "array", contiguous, contiguous.nbytes, _weak(array)
        )
    return Shipment(
        names=payloads,
        modules=dict(plan.modules),
        from_imports=dict(plan.from_imports),
        engine_side=tuple(sorted(plan.engine_side)),
        sources=_notebook_sources(plan.by_value.values()),
        paths=_import_paths(),
    )


_DEFAULT_SHIP_LIMIT = 2**30
_UNITS = {"": 1, "B": 1, "K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}


def ship_limit() -> int:
    """Bytes above which a name is not shipped without ``--ship-large``:
    ``PARACELL_SHIP_LIMIT`` (e.g. ``500MB``, ``2GB``), default 1 GB."""
    text = os.environ.get("PARACELL_SHIP_LIMIT", "").strip().upper()
    if not text:
        return _DEFAULT_SHIP_LIMIT
    number = text.rstrip("BKMGTI")
    unit = text[len(number) :].replace("I", "").rstrip("B") or ""
    try:
        return int(float(number) * _UNITS[unit])
    except (ValueError, KeyError):
        raise InvalidRequest(
            f"PARACELL_SHIP_LIMIT must be a size such as 500MB or 2GB, not {text!r}"
        ) from None


def _size(n: float) -> str:
    for unit in ("bytes", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:,.0f} {unit}" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GB"


def _check_size(name: str, obj: Any, nbytes: int) -> None:
    limit = ship_limit()
    if nbytes > limit:
        raise InvalidRequest(
            f"{name!r} ({type(obj).__name__}) is {_size(nbytes)}, more than the"
            f" {_size(limit)} paracell ships without asking (PARACELL_SHIP_LIMIT):"
            " every engine would get a copy; pass --ship-large to send it"
            " anyway, or load it on the engines with %%parallel --all"
        )


def _digest(*parts: bytes | memoryview) -> str:
    """Content digest: XXH3 (128 bits), a 200 MB array in about 20 ms where
    SHA-256 takes 140 ms and BLAKE3 90 ms.  It only tells versions of the
    user's data apart, so a non-cryptographic hash is enough."""
    return digest(*parts)


def _is_plain_array(obj: Any) -> bool:
    return (
        isinstance(obj, np.ndarray)
        and not obj.dtype.hasobject
        and type(obj) is np.ndarray
    )


def _import_paths() -> tuple[str, ...]:
    """The notebook's ``sys.path`` as absolute folders (``""`` is its cwd)."""
    global _last_paths
    key = (tuple(sys.path), os.getcwd())
    last = _last_paths
    if last is not None and last[0] == key:  # asked by every cell and map
        return last[1]
    paths = []
    for entry in key[0]:
        if not isinstance(entry, str):
            continue
        path = os.path.abspath(entry or key[1])
        if path not in paths:
            paths.append(path)
    _last_paths = (key, tuple(paths))
    return tuple(paths)


#: the last ``(sys.path, cwd)`` seen, and the folders made of it
_last_paths: tuple[tuple[tuple[Any, ...], str], tuple[str, ...]] | None = None


def _notebook_sources(objects: Iterable[Any]) -> dict[str, list[str]]:
    """Source lines of notebook cells the shipped functions were defined in.

    Cell code has no file on the engine; with these lines in the engine's
    linecache a remote traceback shows the user's code.
    """
    sources: dict[str, list[str]] = {}
    for obj in objects:
        code = getattr(obj, "__code__", None) if isinstance(obj, FunctionType) else None
        if code is None:
            continue
        filename = code.co_filename
        if filename in sources or os.path.exists(filename):
            continue
        lines = linecache.getlines(filename)
        if lines:
            sources[filename] = lines
    return sources


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
    ) -> None:
        self._purge = purge  # drops a finished task from the client's caches
        # large arrays to engines on this machine: through shared memory
        self._shared = shared
        self._is_local = is_local
        self._shared_ok: set[int] = set()  # engines that mapped a segment
        self._no_shared: set[int] = set()  # local by name, but could not map
        self._held: dict[int, dict[str, str]] = {}
        self._paths: dict[int, tuple[str, ...]] = {}  # engine -> paths sent
        # digest -> the notebook objects it was shipped for (weakly)
        self._owners: dict[str, list[weakref.ref[Any]]] = {}
        self._importable: set[str] = set()
        # engine -> modules it could not import
        self._unimportable: dict[int, set[str]] = {}
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
        """Send each engine what it lacks of ``shipment``.

        ``block=False`` returns at once: an engine runs its tasks in order,
        so code sent after this finds the names stored.
        """
        dropped = self._dropped_digests(shipment)
        pending = []
        for eid in engine_ids:
            held = self._held.setdefault(eid, {})
            entries: dict[str, tuple[str, Any]] = {}
            arrays: list[Any] = []
            evict = [d for d in held.values() if d in dropped]
            for name in [n for n, d in held.items() if d in dropped]:
                del held[name]
            size = 0
            shared: dict[str, _Payload] = {}  # digest -> array sent as a segment
            for name, p in shipment.names.items():
                old = held.get(name)
                if old == p.digest:
                    continue
                segment = None
                if p.kind == "array":
                    segment = self._segment(eid, p, block)
                if segment is not None:
                    entries[p.digest] = ("shared", segment)
                    shared[p.digest] = p
                elif p.kind == "array":
                    entries[p.digest] = ("array", len(arrays))
                    arrays.append(p.payload)
                    size += p.nbytes
                else:
                    entries[p.digest] = (p.kind, p.payload)
                    size += p.nbytes
                if old is not None and old not in shipment.digests.values():
                    evict.append(old)
            paths = self._paths_to_send(eid, shipment.paths)
            if not entries and not paths and not evict:
                continue
            # arrays as top-level arguments: ipyparallel sends those as
            # zero-copy buffers (nested in a dict they would be pickled)
            ar = client[eid].apply_async(
                install_names, entries, evict, shipment.sources, *arrays, paths=paths
            )
            pending.append((eid, ar, size, len(entries), shared))
        died = set()
        for eid, ar, size, count, shared in pending:
            if block:
                try:
                    unmapped = ar.get()
                    if shared:
                        size += self._send_unmapped(client, eid, unmapped, shared)
                except Exception as err:
                    if not is_engine_death(err):
                        raise
                    died.add(eid)
                    continue
            held = self._held[eid]
            held.update(shipment.digests)
            self.bytes_sent += size
            self.objects_sent += count
            if block:
                self._purge(ar)
        if died:
            self.forget(died)
            raise EnginesDied(died)

    def _segment(self, eid: int, payload: _Payload, block: bool) -> Any:
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
        shared: dict[str, _Payload],
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

    def _dropped_digests(self, shipment: Shipment) -> set[str]:
        """Digests whose notebook objects are all gone (and that this
        shipment does not bring again): engines can drop them."""
        for p in shipment.names.values():
            if p.owner is not None:
                owners = self._owners.setdefault(p.digest, [])
                if not any(ref() is p.owner() for ref in owners):
                    owners.append(p.owner)
        dropped = set()
        for held, owners in list(self._owners.items()):
            owners[:] = [ref for ref in owners if ref() is not None]
            if not owners:
                del self._owners[held]
                if held not in shipment.digests.values():
                    dropped.add(held)
        return dropped

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
        """Make sure what travels as an import can be imported on the engines.

        A function from a module only the notebook can import (a folder added
        to ``sys.path`` here, say) is shipped by value instead; a module the
        engines lack is an error naming it.  Modules once found importable
        are not asked about again, nor, for engines that already could not
        import them, modules only used by ``from`` imports (what they give
        goes by value, which works either way): a map of a function from
        such a module pays no extra round trip.  A module imported by name
        is asked about again, so it works once installed.
        """
        wanted = set(shipment.modules.values())
        wanted.update(module for module, _ in shipment.from_imports.values())
        unknown = sorted(wanted - self._importable)
        if not unknown:
            return shipment
        known = set(unknown) - set(shipment.modules.values())
        for eid in engine_ids:
            known &= self._unimportable.get(eid, set())
        ask = [m for m in unknown if m not in known]
        failed = set(known)
        if ask:
            per_engine = self._ask(client, engine_ids, unimportable, ask)
            for eid, lacking in per_engine.items():
                self._unimportable.setdefault(eid, set()).update(lacking)
            failed.update(*per_engine.values())
            self._importable.update(m for m in ask if m not in failed)
        if not failed:
            return shipment
        for name, module in shipment.modules.items():
            if module in failed:
                raise InvalidRequest(
                    f"module {module!r} (used as {name!r}) cannot be imported on"
                    " the engines; install it there, or put its folder on their"
                    " sys.path"
                )
        moved = {
            name: _resolve(module, attr)
            for name, (module, attr) in shipment.from_imports.items()
            if module in failed
        }
        by_value = {}
        for name, obj in moved.items():
            owner = sys.modules[shipment.from_imports[name][0]]
            # by value for this pickle only: cloudpickle's registry is global
            cloudpickle.register_pickle_by_value(owner)
            try:
                data = _pickling.dumps(obj)
            finally:
                cloudpickle.unregister_pickle_by_value(owner)
            by_value[name] = _Payload(_digest(data), "pickle", data, len(data))
        return replace(
            shipment,
            names={**shipment.names, **by_value},
            from_imports={
                n: loc for n, loc in shipment.from_imports.items() if n not in moved
            },
        )

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
            self._unimportable.pop(eid, None)


def _resolve(module: str, attr: str) -> Any:
    obj: Any = importlib.import_module(module)
    for part in attr.split("."):
        obj = getattr(obj, part)
    return obj
