"""Names of a package imported on first use (PEP 562).

``paracell`` and ``paracell.kernel_backend`` list where each public name
lives and import it when it is first asked for: importing one of their
modules (an engine imports paracell's engine modules) then runs a package
``__init__`` that imports nothing else.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

__all__ = ["names_on_first_use"]


def names_on_first_use(
    package: str, where: dict[str, str], namespace: dict[str, Any]
) -> Callable[[str], Any]:
    """A module ``__getattr__`` for ``package``: ``where`` maps a name to
    the module (relative to ``package``) that defines it; a name imported
    once is kept in ``namespace`` (the package's globals)."""

    def __getattr__(name: str) -> Any:
        module = where.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(module, package), name)
        namespace[name] = value
        return value

    return __getattr__
