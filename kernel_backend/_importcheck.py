"""Whether what travels as an import can be imported on the engines.

A function from a module only the notebook can import (a folder added to
``sys.path`` here, say) is shipped by value instead; a module the engines
lack is an error naming it.  :class:`ImportCheck` remembers the answers, so
most maps ask nothing.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Any

import cloudpickle

from . import _pickling
from ._enginenames import unimportable
from ._errors import InvalidRequest
from ._shipment import Payload, Shipment, content_digest

__all__ = ["Ask", "ImportCheck"]

#: ``ask(func, *args)``: ``func(*args)`` run on each engine, answers by engine
Ask = Callable[..., dict[int, Any]]


class ImportCheck:
    """Which modules the engines of one cluster can import, as far as known."""

    def __init__(self) -> None:
        self._importable: set[str] = set()
        # engine -> modules it could not import
        self._unimportable: dict[int, set[str]] = {}

    def check(
        self, ask: Ask, engine_ids: Sequence[int], shipment: Shipment
    ) -> Shipment:
        """``shipment``, with what the engines cannot import sent by value.

        Modules once found importable are not asked about again, nor, for
        engines that already could not import them, modules only used by
        ``from`` imports (what they give goes by value, which works either
        way): a map of a function from such a module pays no extra round
        trip.  A module imported by name is asked about again, so it works
        once installed.  Raises ``InvalidRequest`` for a module imported by
        name that the engines cannot import.
        """
        failed = self._failed(ask, engine_ids, shipment)
        if not failed:
            return shipment
        return _by_value_instead(shipment, failed)

    def _failed(
        self, ask: Ask, engine_ids: Sequence[int], shipment: Shipment
    ) -> set[str]:
        """The modules of ``shipment`` some engine cannot import."""
        wanted = set(shipment.modules.values())
        wanted.update(module for module, _ in shipment.from_imports.values())
        unknown = sorted(wanted - self._importable)
        if not unknown:
            return set()
        known = set(unknown) - set(shipment.modules.values())
        for eid in engine_ids:
            known &= self._unimportable.get(eid, set())
        asked = [m for m in unknown if m not in known]
        failed = set(known)
        if asked:
            per_engine = ask(unimportable, asked)
            for eid, lacking in per_engine.items():
                self._unimportable.setdefault(eid, set()).update(lacking)
            failed.update(*per_engine.values())
            self._importable.update(m for m in asked if m not in failed)
        return failed

    def forget(self, eid: int) -> None:
        """Engine ``eid`` is gone."""
        self._unimportable.pop(eid, None)


def _by_value_instead(shipment: Shipment, failed: set[str]) -> Shipment:
    """``shipment`` with the ``from`` imports of ``failed`` modules by value."""
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
    by_value = {
        name: _pickled_by_value(obj, shipment.from_imports[name][0])
        for name, obj in moved.items()
    }
    return replace(
        shipment,
        names={**shipment.names, **by_value},
        from_imports={
            n: loc for n, loc in shipment.from_imports.items() if n not in moved
        },
    )


def _resolve(module: str, attr: str) -> Any:
    obj: Any = importlib.import_module(module)
    for part in attr.split("."):
        obj = getattr(obj, part)
    return obj


def _pickled_by_value(obj: Any, module: str) -> Payload:
    """``obj`` pickled with its module's code (which engines cannot import)."""
    owner = sys.modules[module]
    # by value for this pickle only: cloudpickle's registry is global
    cloudpickle.register_pickle_by_value(owner)
    try:
        data = _pickling.dumps(obj)
    finally:
        cloudpickle.unregister_pickle_by_value(owner)
    return Payload(content_digest(data), "pickle", data, len(data))
