"""How each name a piece of code reads reaches the engines.

:func:`plan_shipping` chooses: an import, a reference to an importable object,
or a value; it follows notebook functions into the globals *they* read.
:func:`strip_globals` and :func:`rebind_globals` let a function travel without
its ``__globals__`` so that data it reads is pushed once, separately
(:mod:`._shipping` sends what the plan says).
"""

from __future__ import annotations

import builtins
import dis
import importlib
import sys
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from types import CellType, CodeType, FunctionType, ModuleType
from typing import Any

from . import _pickling
from ._errors import InvalidRequest

__all__ = [
    "ShippingPlan",
    "check_shippable",
    "plan_shipping",
    "rebind_globals",
    "strip_globals",
]


@dataclass(frozen=True)
class ShippingPlan:
    """How each name the engines need gets there.

    Attributes
    ----------
    modules
        Name as used here -> module to import on the engine
        (``import numpy as np`` gives ``{"np": "numpy"}``).
    from_imports
        Name -> ``(module, qualname)`` of an object the engine can import
        itself (``from math import sqrt`` gives ``{"sqrt": ("math", "sqrt")}``).
    by_value
        Name -> object to send by value: notebook functions, classes and
        lambdas, and data.
    engine_side
        Names neither the notebook nor builtins have: left to whatever the
        engine's namespace holds (for example from an earlier setup cell).
        ``get_ipython`` is in none of these: each engine has its own, which
        runs the cell's ``!cmd`` lines and magics.
    """

    modules: dict[str, str]
    from_imports: dict[str, tuple[str, str]]
    by_value: dict[str, Any]
    engine_side: frozenset[str]


def plan_shipping(names: Iterable[str], namespace: Mapping[str, Any]) -> ShippingPlan:
    """Classify ``names`` against the notebook's namespace, transitively.

    Parameters
    ----------
    names
        Names the code run on the engines reads (see
        :func:`element_free_names`).
    namespace
        The notebook's namespace.

    Returns
    -------
    ShippingPlan
        Every name needed, including the globals read by by-value functions
        (and by the methods of by-value classes, by functions nested in
        them, and by functions they hold in closure cells, defaults or
        attributes), looked up in that function's own ``__globals__``.
        Builtins not shadowed in the namespace are left out.
    """
    modules: dict[str, str] = {}
    from_imports: dict[str, tuple[str, str]] = {}
    by_value: dict[str, Any] = {}
    engine_side: set[str] = set()

    seen_names: set[str] = set()
    scanned: set[int] = set()
    # (name, where to look it up); transitive names use the reading
    # function's own globals, which for notebook functions is the notebook.
    pending: list[tuple[str, Mapping[str, Any]]] = [
        (name, namespace) for name in sorted(set(names), reverse=True)
    ]
    while pending:
        name, scope = pending.pop()
        if name in seen_names:
            continue
        seen_names.add(name)
        if name not in scope:
            if not hasattr(builtins, name):
                engine_side.add(name)
            continue
        obj = scope[name]
        if _is_shell_accessor(obj):
            # each engine has its own IPython shell, in the namespace its
            # code runs in: a cell's ``!cmd`` and magics run there (nothing
            # to send, nor to ask the engines about)
            continue
        module_name = _importable_module_name(obj)
        if module_name is not None:
            modules[name] = module_name
            continue
        location = _import_location(obj)
        if location is not None:
            from_imports[name] = location
            continue
        by_value[name] = obj
        for func in _functions_to_scan(obj):
            if id(func) in scanned:
                continue
            scanned.add(id(func))
            pending.extend(
                (read, func.__globals__)
                for read in sorted(_code_global_names(func.__code__), reverse=True)
                if read not in seen_names
            )
    return ShippingPlan(
        modules=modules,
        from_imports=from_imports,
        by_value=by_value,
        engine_side=frozenset(engine_side),
    )


def check_shippable(plan: ShippingPlan) -> dict[str, bytes]:
    """Pickle every by-value object once, as it will travel.

    Plain functions are pickled with their globals stripped
    (:func:`strip_globals`); after ``cloudpickle.loads`` on the engine, pass
    each function to :func:`rebind_globals` with the namespace that holds the
    plan's other names.

    Returns
    -------
    dict
        Name -> pickled bytes, to send as they are (so large data is not
        pickled twice).

    Raises
    ------
    InvalidRequest
        Naming the first variable that cannot be pickled, and why.
    """
    pickled: dict[str, bytes] = {}
    for name, obj in plan.by_value.items():
        payload = strip_globals(obj) if isinstance(obj, FunctionType) else obj
        try:
            pickled[name] = _pickling.dumps(payload)
        except Exception as error:  # pickling fails in many exception types
            fix = (
                "move what it uses that cannot be pickled inside it"
                if isinstance(obj, (FunctionType, type))
                else "create it on the engines instead, in the function or cell"
                " that uses it"
            )
            raise InvalidRequest(
                f"cannot ship {name!r} to the engines: {error}; {fix}"
            ) from error
    return pickled


def strip_globals(func: FunctionType) -> FunctionType:
    """Copy ``func`` with ``__globals__`` holding only the builtins.

    Pickling the copy with cloudpickle then carries no global data: the
    engine supplies the globals with :func:`rebind_globals`. Functions that
    ``func`` holds in closure cells, defaults or its ``__dict__`` (a
    decorator's wrapped function, ``functools.wraps``' ``__wrapped__``) and
    that share its globals are stripped too, so they do not carry the data
    instead. Everything else (code, name, qualname, defaults, closure,
    annotations, attributes) is kept.
    """
    return _with_globals(func, {"__builtins__": builtins})


def rebind_globals(func: FunctionType, namespace: dict[str, Any]) -> FunctionType:
    """Copy a stripped ``func`` with ``namespace`` as its globals.

    Runs on the engines. Functions it holds that shared its globals are
    rebound too, so they see the same namespace.
    """
    return _with_globals(func, namespace)


def _with_globals(func: FunctionType, new_globals: dict[str, Any]) -> FunctionType:
    old_globals = func.__globals__
    # Memo by id keeps sharing intact: a recursive closure refers to its own
    # copy, and two functions sharing a cell still share the new one.
    memo: dict[int, Any] = {}

    def convert(value: Any) -> Any:
        if isinstance(value, FunctionType) and value.__globals__ is old_globals:
            return copy(value)
        return value

    def copy(original: FunctionType) -> FunctionType:
        if id(original) in memo:
            return memo[id(original)]  # type: ignore[no-any-return]
        old_cells = original.__closure__ or ()
        new_cells = [memo.setdefault(id(cell), CellType()) for cell in old_cells]
        clone = FunctionType(
            original.__code__,
            new_globals,
            original.__name__,
            None,
            tuple(new_cells) if original.__closure__ is not None else None,
        )
        memo[id(original)] = clone
        clone.__defaults__ = (
            None
            if original.__defaults__ is None
            else tuple(convert(value) for value in original.__defaults__)
        )
        clone.__kwdefaults__ = (
            None
            if original.__kwdefaults__ is None
            else {key: convert(value) for key, value in original.__kwdefaults__.items()}
        )
        clone.__qualname__ = original.__qualname__
        clone.__module__ = original.__module__
        clone.__doc__ = original.__doc__
        clone.__annotations__ = dict(original.__annotations__)
        clone.__dict__.update(
            {key: convert(value) for key, value in original.__dict__.items()}
        )
        for old_cell, new_cell in zip(old_cells, new_cells, strict=True):
            try:
                contents = old_cell.cell_contents
            except ValueError:  # an empty cell: a variable not yet assigned
                continue
            new_cell.cell_contents = convert(contents)
        return clone

    return copy(func)


def _is_shell_accessor(obj: Any) -> bool:
    """Whether ``obj`` is an IPython shell's ``get_ipython`` (the notebook
    has it among its names; it cannot travel, and engines have their own)."""
    shell = getattr(obj, "__self__", None)
    if getattr(obj, "__name__", None) != "get_ipython" or shell is None:
        return False
    interactive = sys.modules.get("IPython.core.interactiveshell")
    base = getattr(interactive, "InteractiveShell", None)
    return base is not None and isinstance(shell, base)


def _importable_module_name(obj: Any) -> str | None:
    """The name to import ``obj`` by on an engine, if it is such a module."""
    if not isinstance(obj, ModuleType):
        return None
    name = obj.__name__
    if name == "__main__" or sys.modules.get(name) is not obj:
        return None
    return name


def _import_location(obj: Any) -> tuple[str, str] | None:
    """``(module, qualname)`` if importing that gives back ``obj`` itself."""
    module_name = getattr(obj, "__module__", None)
    qualname = getattr(obj, "__qualname__", None)
    if not isinstance(module_name, str) or not isinstance(qualname, str):
        return None
    if module_name == "__main__" or "<locals>" in qualname:
        return None
    try:
        found: Any = importlib.import_module(module_name)
        for part in qualname.split("."):
            found = getattr(found, part)
    except Exception:  # any failure just means "not importable"
        return None
    return (module_name, qualname) if found is obj else None


def _functions_to_scan(obj: Any) -> Iterator[FunctionType]:
    """By-value functions whose globals must also reach the engines."""
    if isinstance(obj, FunctionType):
        yield from _function_and_held_functions(obj, set())
    elif isinstance(obj, type):
        for klass in obj.__mro__:
            if klass is object or _import_location(klass) is not None:
                continue  # the engine imports it, with its own globals
            for attribute in vars(klass).values():
                for func in _unwrap_class_attribute(attribute):
                    yield from _function_and_held_functions(func, set())


def _unwrap_class_attribute(attribute: Any) -> list[FunctionType]:
    if isinstance(attribute, (staticmethod, classmethod)):
        attribute = attribute.__func__
    if isinstance(attribute, property):
        accessors = (attribute.fget, attribute.fset, attribute.fdel)
        return [func for func in accessors if isinstance(func, FunctionType)]
    return [attribute] if isinstance(attribute, FunctionType) else []


def _function_and_held_functions(
    func: FunctionType, seen: set[int]
) -> Iterator[FunctionType]:
    """``func`` and the functions it holds (closure, defaults, attributes).

    Only held functions sharing ``func``'s globals are followed: those are
    the ones :func:`strip_globals` strips with it. Others (a library
    function in a closure cell) travel whole, or by reference, with their
    own globals.
    """
    if id(func) in seen:
        return
    seen.add(id(func))
    yield func
    held: list[Any] = [*func.__dict__.values(), *(func.__defaults__ or ())]
    held += list((func.__kwdefaults__ or {}).values())
    for cell in func.__closure__ or ():
        try:
            held.append(cell.cell_contents)
        except ValueError:
            continue
    for value in held:
        if isinstance(value, FunctionType) and value.__globals__ is func.__globals__:
            yield from _function_and_held_functions(value, seen)


# Opcodes that read or write a global name. co_names alone would also list
# attribute names (`np.mean` puts "mean" there), shipping a notebook global
# that merely shares an attribute's name.
_GLOBAL_NAME_OPS = frozenset(
    {
        "LOAD_GLOBAL",
        "STORE_GLOBAL",
        "DELETE_GLOBAL",
        "LOAD_NAME",  # class bodies nested in a function
        "LOAD_FROM_DICT_OR_GLOBALS",  # Python 3.12+ class bodies
    }
)


def _code_global_names(code: CodeType) -> set[str]:
    """Global names read by ``code`` and every code object nested in it."""
    names: set[str] = set()
    stack = [code]
    while stack:
        current = stack.pop()
        names.update(
            instruction.argval
            for instruction in dis.get_instructions(current)
            if instruction.opname in _GLOBAL_NAME_OPS
        )
        stack.extend(
            const for const in current.co_consts if isinstance(const, CodeType)
        )
    return names
