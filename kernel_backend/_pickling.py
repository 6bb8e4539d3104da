"""How paracell pickles what crosses between the notebook and its engines.

cloudpickle, with two differences that matter to notebook users:

* **Code keeps its file name.**  Since cloudpickle 3.1.3 every code object
  arrives named ``<dynamic-code>``, so a traceback on the engine cannot find
  the notebook cell's lines and shows none of the user's code.  Code objects
  travel here through :mod:`marshal` (the format of ``.pyc`` files), which
  keeps every field, the file name included, on any cloudpickle version.
* **Notebook classes travel by value, their instances too.**  ipyparallel
  pickles task arguments and results with the standard pickler, which names
  a class defined in the notebook as ``__main__.Point`` — a name the engines
  lack.  :func:`install` makes ipyparallel use this module, in the kernel and
  on the engines, so such instances go both ways; a class that comes back is
  the notebook's own class again (cloudpickle tracks classes it sent).

Engines and kernel run the same Python (as they must for cloudpickle's code
objects anyway), so marshal's format matches on both sides.
"""

from __future__ import annotations

import io
import marshal
import pickle
import types
from typing import Any

import cloudpickle

__all__ = ["dumps", "install", "loads"]

#: What ipyparallel reads as its pickle protocol (it looks it up at import).
DEFAULT_PROTOCOL = pickle.HIGHEST_PROTOCOL
HIGHEST_PROTOCOL = pickle.HIGHEST_PROTOCOL
loads = pickle.loads


def _load_code(data: bytes) -> types.CodeType:
    code = marshal.loads(data)
    assert isinstance(code, types.CodeType)
    return code


class _Pickler(cloudpickle.Pickler):  # type: ignore[misc]  # cloudpickle is untyped
    def reducer_override(self, obj: Any) -> Any:
        if type(obj) is types.CodeType:
            return _load_code, (marshal.dumps(obj),)
        return super().reducer_override(obj)


#: Types the standard pickler writes byte for byte as cloudpickle does
#: (nothing in them goes by value): most of a task's arguments (its source,
#: file name, names to send back) and many small results.
_PLAIN = frozenset({str, bytes, int, float, bool, type(None)})
#: Containers longer than this are left to cloudpickle.
_SMALL = 32


def _is_plain(obj: Any, depth: int = 0) -> bool:
    """Whether the standard pickler writes ``obj`` as cloudpickle would:
    plain values, containers of them, and paracell's own records of them
    (a ``TaskSpec``: engines import paracell, so its classes go by name
    either way)."""
    kind = type(obj)
    if kind in _PLAIN:
        return True
    if depth > 2:
        return False
    if (kind is list or kind is tuple or kind is dict) and len(obj) > _SMALL:
        # a large container pickles as fast either way (cloudpickle's hook is
        # not called for strings and numbers), and looking through it is not
        return False
    if kind is list or kind is tuple:
        return all(type(x) in _PLAIN or _is_plain(x, depth + 1) for x in obj)
    if kind is dict:
        return all(
            type(k) in _PLAIN and (type(v) in _PLAIN or _is_plain(v, depth + 1))
            for k, v in obj.items()
        )
    state = getattr(obj, "__dict__", None)
    if (
        state is not None
        and kind.__module__.startswith("paracell.")
        and hasattr(kind, "__dataclass_fields__")
    ):
        return all(_is_plain(v, depth + 1) for v in state.values())
    return False


def dumps(obj: Any, protocol: int | None = None) -> bytes:
    """Pickle ``obj`` as cloudpickle would, code objects with their file names."""
    if _is_plain(obj):
        # the same bytes without a cloudpickle pickler's setup, which is
        # most of the cost of pickling a short string
        return pickle.dumps(obj, protocol or DEFAULT_PROTOCOL)
    with io.BytesIO() as file:
        _Pickler(file, protocol=protocol or DEFAULT_PROTOCOL).dump(obj)
        return file.getvalue()


_installed = False


def install() -> None:
    """Make ipyparallel pickle task arguments and results with :func:`dumps`.

    Idempotent and cheap after the first call: engines call it at the start
    of every task, so an engine added later is set up by its first task.
    ipyparallel's own switch for this (``use_cloudpickle``) works the same
    way: one process-wide setting of its serializer.
    """
    global _installed
    if _installed:
        return
    from types import FunctionType

    from ipyparallel.serialize import canning, serialize

    serialize.pickle = _PicklerModule
    # functions go by value through the pickler, not through canning
    canning.can_map.pop(FunctionType, None)
    _installed = True


class _PicklerModule:
    """What ipyparallel's serializer needs of a pickle module."""

    dumps = staticmethod(dumps)
    loads = staticmethod(loads)
    HIGHEST_PROTOCOL = HIGHEST_PROTOCOL
    DEFAULT_PROTOCOL = DEFAULT_PROTOCOL
