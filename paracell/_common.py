"""What the Python twins share: showing views, saying a cluster was started,
whether to draw progress, and the namespace a cell reads."""

from __future__ import annotations

import sys
from typing import Any

from .kernel_backend import (
    StartReport,
)
from .widgets import register_formatters

__all__ = ["_announce", "_display_hooks", "_show_progress", "_user_namespace"]


def _display_hooks() -> None:
    """In IPython, show jobs and timelines as their views when displayed."""
    ipython = sys.modules.get("IPython")
    shell = ipython.get_ipython() if ipython is not None else None
    if shell is not None:
        register_formatters(shell)


def _announce(report: StartReport | None) -> None:
    """Say in one line that a cluster was started on the caller's behalf."""
    if report is not None:
        print(report.started_on_demand())


def _show_progress(progress: bool | str, block: bool) -> bool:
    if progress == "auto":
        if not block:
            return False
        from IPython import get_ipython

        return get_ipython() is not None or sys.stdout.isatty()
    return bool(progress)


def _user_namespace() -> dict[str, Any]:
    from IPython import get_ipython

    shell = get_ipython()
    if shell is not None:
        namespace: dict[str, Any] = shell.user_ns
        return namespace
    import __main__

    return vars(__main__)
