"""Keys for the result store: what an item's result depends on, as a digest.

An item's key covers

- the code that runs: the element expression as an AST (comments and
  spacing do not count), and every name it reads, found as for shipping
  (:func:`._plan.plan_shipping`), transitively through notebook
  functions and classes;
- a notebook function by its code (bytecode, constants, names; not its line
  numbers or file), defaults, closure and attributes; a notebook class by
  its bases and members; a module or importable object by where it comes
  from (and the package's version); data by content;
- the item's input, by content;
- with a seed, the seed and the item's index (the item's random streams).

Change any of them and the key changes; change nothing, and the key is the
same in another kernel, after a restart, or with ``--local``.
"""

from __future__ import annotations

import ast
import builtins
import io
import pickle
import sys
from collections.abc import Iterable, Mapping
from types import CodeType, FunctionType, ModuleType
from typing import Any

import numpy as np
import xxhash

from ._plan import _code_global_names, _import_location, plan_shipping

__all__ = [
    "Fingerprinter",
    "Unfingerprintable",
    "code_digest",
    "item_key",
    "map_fingerprint",
]


class Unfingerprintable(Exception):
    """A value whose content cannot be read (it cannot be pickled)."""


def map_fingerprint(
    element: str,
    arguments: tuple[str, ...],
    names: Iterable[str],
    namespace: Mapping[str, Any],
    *,
    star: bool,
    seed: int | None,
    extra: Mapping[str, Any] = {},
) -> bytes:
    """The part of every item's key that is the same for the whole map.

    Raises :class:`Unfingerprintable` naming a global that cannot be read.
    """
    h = xxhash.xxh3_128()
    h.update(b"map\0" + code_digest(element, "eval").encode())
    h.update(repr((arguments, star, seed)).encode())
    h.update(names_fingerprint([*names, *extra], {**namespace, **extra}).encode())
    return h.digest()


def names_fingerprint(names: Iterable[str], namespace: Mapping[str, Any]) -> str:
    """Digest of every name ``names`` need, transitively, by content."""
    plan = plan_shipping(names, namespace)
    fp = Fingerprinter()
    parts: list[tuple[str, str]] = []
    for name, module in sorted(plan.modules.items()):
        parts.append((name, f"module {module} {_version(module)}"))
    for name, (module, qualname) in sorted(plan.from_imports.items()):
        parts.append((name, f"import {module}:{qualname} {_version(module)}"))
    for name in sorted(plan.engine_side):
        # names only the engines hold: known by name alone
        parts.append((name, "engine"))
    for name, obj in sorted(plan.by_value.items()):
        try:
            parts.append((name, fp.value(obj)))
        except Unfingerprintable as err:
            raise Unfingerprintable(f"{name!r}: {err}") from None
    return xxhash.xxh3_128_hexdigest(repr(parts).encode())


def code_digest(source: str, mode: str = "exec") -> str:
    """Digest of ``source``'s AST: comments, spacing and layout do not count."""
    tree = ast.parse(source, mode=mode)
    return xxhash.xxh3_128_hexdigest(ast.dump(tree).encode())


def item_key(
    base: bytes, index: int | None, item: Any, reader: Fingerprinter | None = None
) -> str:
    """The key of one item: the map's part, the index (seeded maps), the input.

    ``reader`` remembers what it read for the next items of the same map.
    Raises :class:`Unfingerprintable` if the input cannot be read.
    """
    prefix = base if index is None else base + index.to_bytes(8, "little")
    try:
        data = pickle.dumps(item, protocol=5)
    except Exception:
        data = b""
    # pickle refers to notebook functions and classes by name ("__main__"):
    # those, and inputs plain pickle refuses, go through the pickler that
    # reads them by code
    if data and b"__main__" not in data:
        return xxhash.xxh3_128_hexdigest(prefix + data)
    reader = reader or Fingerprinter()
    return xxhash.xxh3_128_hexdigest(prefix + reader.content(item).encode())


def _version(module: str) -> str:
    top = sys.modules.get(module.partition(".")[0])
    return str(getattr(top, "__version__", ""))


def _stands_for(fingerprint: str) -> str:
    """Stands in a key's pickle for a notebook function or class."""
    return fingerprint


class Fingerprinter:
    """Digests of values; functions and classes of the notebook by code.

    Remembers each object it read (by identity, holding on to it), so one
    map reads a large global once however many items refer to it.
    """

    def __init__(self) -> None:
        self._memo: dict[int, str] = {}
        self._keep: list[Any] = []  # ids in the memo stay valid

    def value(self, obj: Any) -> str:
        key = id(obj)
        found = self._memo.get(key)
        if found is not None:
            return found
        # a placeholder breaks cycles (a recursive closure refers to itself)
        self._memo[key] = "cycle"
        self._keep.append(obj)
        result = self._value(obj)
        self._memo[key] = result
        return result

    def _value(self, obj: Any) -> str:
        if isinstance(obj, ModuleType):
            return f"module {obj.__name__}"
        if isinstance(obj, (staticmethod, classmethod)):
            return f"{type(obj).__name__} {self.value(obj.__func__)}"
        if isinstance(obj, property):
            return "property " + " ".join(
                self.value(f) for f in (obj.fget, obj.fset, obj.fdel)
            )
        if isinstance(obj, (FunctionType, type)):
            location = None if _is_notebook(obj) else _import_location(obj)
            if location is not None:
                module, qualname = location
                return f"import {module}:{qualname} {_version(module)}"
            if isinstance(obj, FunctionType):
                return self._function(obj)
            return self._class(obj)
        return self.content(obj)

    def _function(self, func: FunctionType) -> str:
        cells = []
        for cell in func.__closure__ or ():
            try:
                cells.append(self.value(cell.cell_contents))
            except ValueError:  # an empty cell
                cells.append("empty")
        # the globals it reads: an input may hold a function that reads a
        # global the element itself never names
        scope = func.__globals__
        reads = sorted(n for n in _code_global_names(func.__code__) if n in scope)
        parts = [
            "function",
            _code(func.__code__),
            [(name, self.value(scope[name])) for name in reads],
            [self.value(d) for d in func.__defaults__ or ()],
            sorted((k, self.value(v)) for k, v in (func.__kwdefaults__ or {}).items()),
            cells,
            sorted((k, self.value(v)) for k, v in func.__dict__.items()),
        ]
        return xxhash.xxh3_128_hexdigest(repr(parts).encode())

    def _class(self, cls: type) -> str:
        members = sorted(
            (name, self.value(member))
            for name, member in vars(cls).items()
            if name not in _CLASS_BOOKKEEPING
        )
        bases = [self.value(base) for base in cls.__bases__ if base is not object]
        parts = ["class", cls.__qualname__, bases, members]
        return xxhash.xxh3_128_hexdigest(repr(parts).encode())

    def content(self, obj: Any) -> str:
        """Digest of a value by content (pickled, notebook code read by code)."""
        if (
            isinstance(obj, np.ndarray)
            and type(obj) is np.ndarray
            and not obj.dtype.hasobject
            and obj.flags.c_contiguous
        ):
            header = f"array {obj.dtype.str}{obj.shape}".encode()
            return xxhash.xxh3_128_hexdigest(header + _buffer_digest(obj))
        buffers: list[pickle.PickleBuffer] = []
        out = io.BytesIO()
        try:
            _KeyPickler(out, self, buffers.append).dump(obj)
        except Unfingerprintable:
            raise
        except Exception as err:  # pickling fails in many exception types
            raise Unfingerprintable(f"cannot be pickled ({err})") from None
        h = xxhash.xxh3_128(out.getbuffer())
        for buffer in buffers:
            h.update(buffer.raw())
        return h.hexdigest()


def _buffer_digest(array: np.ndarray[Any, Any]) -> bytes:
    return xxhash.xxh3_128_digest(array.data.cast("B"))


# attributes every class has that say nothing about its behaviour
_CLASS_BOOKKEEPING = frozenset(
    {"__dict__", "__weakref__", "__module__", "__doc__", "__qualname__"}
)


def _is_notebook(obj: Any) -> bool:
    return getattr(obj, "__module__", None) == "__main__"


class _KeyPickler(pickle.Pickler):
    """Pickles a value for its digest, notebook functions and classes by code
    (plain pickle would write ``__main__.name`` and miss a changed body)."""

    def __init__(
        self, out: io.BytesIO, fingerprinter: Fingerprinter, buffers: Any
    ) -> None:
        super().__init__(out, protocol=5, buffer_callback=buffers)
        self._fp = fingerprinter

    def reducer_override(self, obj: Any) -> Any:
        if isinstance(obj, (FunctionType, type)) and (
            _is_notebook(obj) or _import_location(obj) is None
        ):
            if obj.__module__ == "builtins" or obj in _BUILTIN_TYPES:
                return NotImplemented
            return _stands_for, (self._fp.value(obj),)
        return NotImplemented


_BUILTIN_TYPES = frozenset(v for v in vars(builtins).values() if isinstance(v, type))


def _code(code: CodeType) -> str:
    """Digest of a code object without its file name and line numbers."""
    parts = [
        code.co_code,
        code.co_names,
        code.co_varnames,
        code.co_freevars,
        code.co_cellvars,
        code.co_argcount,
        code.co_posonlyargcount,
        code.co_kwonlyargcount,
        code.co_flags,
        [_const(c) for c in code.co_consts],
    ]
    return xxhash.xxh3_128_hexdigest(repr(parts).encode())


def _const(value: Any) -> Any:
    if isinstance(value, CodeType):
        return _code(value)
    if isinstance(value, tuple):
        return tuple(_const(v) for v in value)
    if isinstance(value, frozenset):
        # a set's order changes with string hashing from one process to the next
        return ("frozenset", sorted(repr(_const(v)) for v in value))
    return (type(value).__name__, repr(value))
