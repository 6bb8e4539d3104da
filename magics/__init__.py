"""IPython magics: parse, validate, delegate to the backend, display."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..widgets import register_formatters, unregister_formatters
from . import _delivery
from ._cache import CacheMagics
from ._cluster import ClusterMagics
from ._parallel import ParallelMagics
from ._pmap import PmapMagics

if TYPE_CHECKING:
    from IPython.core.interactiveshell import InteractiveShell

__all__ = [
    "CacheMagics",
    "ClusterMagics",
    "ParallelMagics",
    "PmapMagics",
    "register",
    "unregister",
]

_MAGIC_CLASSES = (ClusterMagics, PmapMagics, ParallelMagics, CacheMagics)


def register(ipython: InteractiveShell) -> None:
    """Register every paracell magic with ``ipython``."""
    for cls in _MAGIC_CLASSES:
        ipython.register_magics(cls)
    _delivery.install(ipython)
    register_formatters(ipython)


def unregister(ipython: InteractiveShell) -> None:
    """Remove paracell's magics from ``ipython`` (for ``%unload_ext``)."""
    _delivery.uninstall()
    unregister_formatters(ipython)
    manager = ipython.magics_manager
    for cls in _MAGIC_CLASSES:
        for kind, names in cls.magics.items():
            for name in names:
                manager.magics[kind].pop(name, None)
        manager.registry.pop(cls.__name__, None)
