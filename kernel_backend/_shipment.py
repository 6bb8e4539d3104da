"""What code needs on the engines: a :class:`Shipment`, made by
:func:`prepare_shipment` from the plan of :mod:`._plan`.

Each by-value object gets a content digest, so that the shipper
(:mod:`._shipping`) sends an engine only versions it does not hold yet.
numpy arrays travel as ipyparallel's zero-copy buffers, the rest as
cloudpickle bytes (notebook functions with their globals stripped).  Names
larger than :func:`ship_limit` are refused unless asked for.
"""

from __future__ import annotations

import hashlib
import linecache
import os
import sys
import threading
import weakref
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from types import FunctionType
from typing import Any

import numpy as np
import xxhash

from ._errors import InvalidRequest
from ._plan import ShippingPlan, check_shippable, plan_shipping
from ._storevalues import digest

__all__ = ["Payload", "Shipment", "content_digest", "prepare_shipment", "ship_limit"]


@dataclass(frozen=True)
class Payload:
    """One by-value object as it travels: its digest and bytes (or array)."""

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

    names: dict[str, Payload]
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
    return Shipment(
        names=_payloads(plan, ship_large),
        modules=dict(plan.modules),
        from_imports=dict(plan.from_imports),
        engine_side=tuple(sorted(plan.engine_side)),
        sources=_notebook_sources(plan.by_value.values()),
        paths=_import_paths(),
    )


def _payloads(plan: ShippingPlan, ship_large: bool) -> dict[str, Payload]:
    """The plan's by-value objects, digested: arrays as they are, the rest
    pickled (sizes checked first, unless ``ship_large``)."""
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
    payloads: dict[str, Payload] = {}
    for name, data in check_shippable(others).items():
        obj = others.by_value[name]
        if not ship_large:
            _check_size(name, obj, len(data))
        kind = "function" if isinstance(obj, FunctionType) else "pickle"
        payloads[name] = Payload(
            content_digest(data), kind, data, len(data), _weak(obj)
        )
    for name, array in arrays.items():
        payloads[name] = _array_payload(array)
    return payloads


def _array_payload(array: np.ndarray[Any, Any]) -> Payload:
    contiguous = np.ascontiguousarray(array)
    header = f"{contiguous.dtype.str}{contiguous.shape}".encode()
    array_digest = content_digest(header, memoryview(contiguous.data).cast("B"))
    return Payload(array_digest, "array", contiguous, contiguous.nbytes, _weak(array))


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


def content_digest(*parts: bytes | memoryview) -> str:
    """Content digest: XXH3 (128 bits), a 200 MB array in about 20 ms where
    SHA-256 takes 140 ms and BLAKE3 90 ms.  It only tells versions of the
    user's data apart, so a non-cryptographic hash is enough.

    A part of :data:`_SPLIT_BYTES` or more is read in two halves at once, on
    two threads (XXH3 lets go of the GIL): 12 ms for 200 MB.  Its digest then
    differs from :func:`digest`'s, which is fine: shipping digests are only
    ever compared with shipping digests.
    """
    if all(len(part) < _SPLIT_BYTES for part in parts):
        return digest(*parts)
    h = xxhash.xxh3_128()
    for part in parts:
        if len(part) < _SPLIT_BYTES:
            h.update(part)
            continue
        h.update(b"halves:" + _halves_digest(memoryview(part).cast("B")))
    return h.hexdigest()


def _halves_digest(view: memoryview) -> bytes:
    """The digests of ``view``'s two halves, read at once on two threads."""
    half = len(view) // 2
    second: list[bytes] = []
    reader = threading.Thread(
        target=lambda: second.append(xxhash.xxh3_128_digest(view[half:])),
        name="paracell-digest",
    )
    reader.start()
    first = xxhash.xxh3_128_digest(view[:half])
    reader.join()
    return first + second[0]


#: Parts at least this large are digested by two threads (see above).
_SPLIT_BYTES = 32 * 2**20


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
