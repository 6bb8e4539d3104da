"""Runs on the engines: the names shipped from the notebook, and namespaces.

The kernel sends each object once per engine per version
(:class:`._shipping.NameShipper`); it is kept here by digest, and every task
builds its namespace from the store over the engine's own namespace.
"""

from __future__ import annotations

import contextlib
import linecache
import os
import sys
from collections import OrderedDict
from collections.abc import Callable, Sequence
from typing import Any

from . import _pickling
from ._engine import WRAPPER_FILENAME, TaskSpec
from ._engineawait import awaiting_element
from ._enginesegments import map_segment
from ._plan import rebind_globals

__all__ = [
    "UndefinedNames",
    "build_callable",
    "build_namespace",
    "engine_user_ns",
    "install_names",
    "missing_names",
    "unimportable",
]

# digest -> object; pushed once per engine per version of an object.
_STORE: dict[str, Any] = {}
# digests of notebook functions, shipped without their globals
_REBIND: set[str] = set()
# namespace key -> namespace built for one map (reused by all its chunks)
_NAMESPACES: OrderedDict[str, dict[str, Any]] = OrderedDict()
_NAMESPACES_KEPT = 4


def install_names(
    entries: dict[str, tuple[str, Any]],
    evict: Sequence[str] = (),
    sources: dict[str, list[str]] | None = None,
    *arrays: Any,
    paths: Sequence[str] = (),
) -> list[str]:
    """Store shipped objects by digest; forget superseded versions.

    ``entries`` maps digest -> (kind, payload).  Kind ``"function"`` is a
    notebook function pickled with its globals stripped (rebound to each
    task's namespace), ``"pickle"`` any other cloudpickle payload, and
    ``"array"`` the index of a numpy array among ``arrays`` — top-level
    arguments, so they travel as zero-copy buffers — and ``"shared"`` a
    :class:`._enginesegments.SharedSegment`: an array the kernel wrote into a
    file in ``/dev/shm``, mapped here read-only (no copy; engines cannot
    change what the others read).  ``sources`` are notebook cells' lines, so
    tracebacks through notebook functions show their code.  ``paths`` is the
    notebook's ``sys.path``: folders of it that exist here and are not on
    this engine's path are appended, so what the notebook imports from them
    (and pickles by reference) imports here too.
    Returns the digests of segments this engine could not map (it does not
    share the kernel's ``/dev/shm``): the kernel sends those arrays instead.
    """
    _pickling.install()
    _evict(evict)
    unmapped = _keep(entries, arrays)
    for path in paths:
        if path not in sys.path and os.path.isdir(path):
            sys.path.append(path)
    for filename, lines in (sources or {}).items():
        linecache.cache[filename] = (sum(map(len, lines)), None, lines, filename)
    _NAMESPACES.clear()
    return unmapped


def _evict(digests: Sequence[str]) -> None:
    """Forget superseded objects, and free what they held."""
    for digest in digests:
        _STORE.pop(digest, None)
        _REBIND.discard(digest)
    if digests:
        # a map's namespace and the notebook functions rebound to it form a
        # cycle; only the collector frees what an evicted object held
        _NAMESPACES.clear()
        import gc

        gc.collect()


def _keep(entries: dict[str, tuple[str, Any]], arrays: Sequence[Any]) -> list[str]:
    """Keep each entry's object under its digest; returns the digests of
    shared segments that could not be mapped here."""
    import cloudpickle

    unmapped = []
    for digest, (kind, payload) in entries.items():
        if kind == "array":
            _STORE[digest] = arrays[payload]
            continue
        if kind == "shared":
            try:
                _STORE[digest] = map_segment(payload)
            except OSError:
                unmapped.append(digest)
            continue
        _STORE[digest] = cloudpickle.loads(payload)
        if kind == "function":
            _REBIND.add(digest)
    return unmapped


class UndefinedNames(NameError):
    """Names the code needs that exist neither in the notebook nor here."""


def engine_user_ns() -> dict[str, Any]:
    """The engine's persistent namespace (where ``%px`` setup lands)."""
    ip = None
    with contextlib.suppress(Exception):
        from IPython import get_ipython

        ip = get_ipython()
    if ip is not None:
        return ip.user_ns  # type: ignore[no-any-return]
    return sys.modules["__main__"].__dict__


def _engine_namespace() -> dict[str, Any]:
    """A copy of the engine's persistent namespace."""
    return dict(engine_user_ns())


def build_namespace(
    spec: TaskSpec, base: dict[str, Any] | None = None
) -> dict[str, Any]:
    """A namespace over the engine's own (or ``base``) with the spec's names.

    Notebook functions were shipped with their globals stripped; here they are
    rebound to this namespace, so they read every other shipped name from it.
    """
    ns = _engine_namespace() if base is None else base
    missing = [n for n in spec.engine_side if n not in ns and not _is_builtin(n)]
    if missing:
        raise UndefinedNames(
            f"name {missing[0]!r} is not defined in the notebook nor on the engines"
        )
    import importlib

    for name, module in spec.modules.items():
        ns[name] = importlib.import_module(module)
    for name, (module, attr) in spec.from_imports.items():
        obj: Any = importlib.import_module(module)
        for part in attr.split("."):
            obj = getattr(obj, part)
        ns[name] = obj
    for name, digest in spec.names.items():
        value = _STORE[digest]
        ns[name] = rebind_globals(value, ns) if digest in _REBIND else value
    return ns


def build_callable(
    spec: TaskSpec, base: dict[str, Any] | None = None
) -> Callable[..., Any]:
    """The function to call per item, in a namespace built once per map."""
    ns = _NAMESPACES.get(spec.key)
    if ns is None:
        ns = build_namespace(spec, base)
        element = awaiting_element(spec, ns)
        if element is None:
            source = f"lambda {', '.join(spec.arguments)}: ({spec.element})"
            lines = [source + "\n"]
            linecache.cache[spec.filename] = (len(source), None, lines, spec.filename)
            element = eval(compile(source, spec.filename, "eval"), ns)
            direct = _direct_call(spec, ns)
            element = element if direct is None else direct
        ns["__paracell_element__"] = element
        _NAMESPACES[spec.key] = ns
        while len(_NAMESPACES) > _NAMESPACES_KEPT:
            _NAMESPACES.popitem(last=False)
    return ns["__paracell_element__"]  # type: ignore[no-any-return]


def _direct_call(spec: TaskSpec, ns: dict[str, Any]) -> Callable[..., Any] | None:
    """The function itself when the element only calls it with the item.

    ``lambda a: (f(a))`` is ``f`` for one positional argument.  Only for
    paracell's own wrapper (``pmap(func, ...)``): its frame is never shown in
    tracebacks, so calling ``f`` directly saves a call per item and changes
    nothing else.  A ``%pmap`` element keeps its frame (``<pmap>``).
    """
    if spec.filename != WRAPPER_FILENAME or len(spec.arguments) != 1:
        return None
    name, _, rest = spec.element.partition("(")
    if rest != f"{spec.arguments[0]})" or not name.isidentifier():
        return None
    func = ns.get(name)
    return func if callable(func) else None


def missing_names(names: Sequence[str]) -> list[str]:
    """Which of ``names`` this engine's namespace lacks (builtins count as there)."""
    ns = _engine_namespace()
    return [n for n in names if n not in ns and not _is_builtin(n)]


def unimportable(modules: Sequence[str]) -> list[str]:
    """Which of ``modules`` this engine cannot import."""
    import importlib

    failed = []
    for module in modules:
        try:
            importlib.import_module(module)
        except Exception:
            failed.append(module)
    return failed


def _is_builtin(name: str) -> bool:
    import builtins

    return hasattr(builtins, name)
