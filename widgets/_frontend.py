"""Which front end is there: widgets, or text.

Decided the way ``tqdm.autonotebook`` decides: by looking at what is already
imported, never by importing a front end to find out.  Widgets need a kernel
(IPython's ``ZMQInteractiveShell``) and ``ipywidgets``; a terminal, a script
or a plain IPython shell get text.  ``PARACELL_WIDGETS=0`` (or ``1``)
overrides the choice.
"""

from __future__ import annotations

import asyncio
import os
import sys
import threading
import warnings
import weakref
from collections.abc import Callable
from typing import Any

from ..kernel_backend import ParacellWarning

__all__ = [
    "PlainText",
    "Ticker",
    "in_kernel",
    "kernel_loop",
    "on_main_thread",
    "use_widgets",
]

_warned = False


def in_kernel() -> bool:
    """Whether this runs in a Jupyter kernel (asked of IPython, never imported).

    Judged by the shell's class, not by ``"IPKernelApp" in shell.config``:
    traitlets creates config sections on mere attribute access, so that test
    turns true in a plain shell once anything has looked for the section.
    """
    ipython = sys.modules.get("IPython")
    shell = ipython.get_ipython() if ipython is not None else None
    return shell is not None and any(
        cls.__name__ == "ZMQInteractiveShell" for cls in type(shell).__mro__
    )


def use_widgets() -> bool:
    """Whether views should be ipywidgets (True) or text (False)."""
    global _warned
    forced = os.environ.get("PARACELL_WIDGETS", "").strip().lower()
    if forced in ("0", "false", "no", "off", "text"):
        return False
    if forced not in ("1", "true", "yes", "on", "widgets") and not in_kernel():
        return False
    try:
        import ipywidgets  # noqa: F401
    except ImportError:
        if not _warned:
            _warned = True
            warnings.warn(
                "ipywidgets is not installed: paracell shows its views as text"
                " (pip install ipywidgets for live widgets)",
                ParacellWarning,
                stacklevel=3,
            )
        return False
    return True


class PlainText:
    """Mixin for widgets: ``text/plain`` is the view's state in words, whole.

    (ipywidgets' own is the class name and traits, cut at 110 characters.)
    """

    def _repr_mimebundle_(self, **kwargs: Any) -> dict[str, Any]:
        data: dict[str, Any] = super()._repr_mimebundle_(**kwargs)  # type: ignore[misc]
        data["text/plain"] = repr(self)
        return data


def kernel_loop() -> asyncio.AbstractEventLoop | None:
    """The kernel's event loop when called from a cell (the main thread)."""
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None


def on_main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()


class Ticker:
    """One background thread that calls registered refreshers periodically.

    Used for what changes without an event (an elapsed time that ticks).  The
    callbacks only set widget traits: they never touch the cluster, so the
    thread shares no sockets with the notebook's work.  A refresher that
    returns False is dropped; so is one whose owner was garbage-collected.
    """

    def __init__(self, period: float = 0.5) -> None:
        self.period = period
        self._lock = threading.Lock()
        self._calls: list[tuple[weakref.ref[Any], Callable[[Any], bool]]] = []
        self._thread: threading.Thread | None = None
        self._wake = threading.Event()

    def add(self, owner: Any, refresh: Callable[[Any], bool]) -> None:
        """Call ``refresh(owner)`` every period until it returns False."""
        with self._lock:
            self._calls.append((weakref.ref(owner), refresh))
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(
                    target=self._run, name="paracell-ticker", daemon=True
                )
                self._thread.start()

    def _run(self) -> None:
        while True:
            self._wake.wait(self.period)
            with self._lock:
                calls = list(self._calls)
            keep = []
            for ref, refresh in calls:
                owner = ref()
                if owner is None:
                    continue
                try:
                    again = refresh(owner)
                except Exception:
                    again = False
                if again:
                    keep.append((ref, refresh))
            with self._lock:
                added = self._calls[len(calls) :]
                self._calls = keep + added
                if not self._calls:
                    self._thread = None
                    return


TICKER = Ticker()
