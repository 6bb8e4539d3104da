"""One kind of event and who listens to it.

Cluster changes, job changes and map progress all reach their views through a
:class:`Signal`.  Observers run in the thread that emits; an observer that
raises never stops the work that emitted (a view's bug must not end a map),
and its error is logged with the traceback the first time, never swallowed.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Callable
from typing import Generic, ParamSpec

__all__ = ["Signal"]

P = ParamSpec("P")

_log = logging.getLogger("paracell.observers")


class Signal(Generic[P]):
    """Observers of one event; ``emit(...)`` calls each with its arguments."""

    def __init__(self, what: str) -> None:
        self._what = what
        self._observers: list[Callable[P, None]] = []
        self._failed: set[int] = set()  # id()s of observers already logged
        self._lock = threading.Lock()

    def subscribe(self, observer: Callable[P, None]) -> Callable[[], None]:
        """Call ``observer`` on every event; returns a function that stops it."""
        with self._lock:
            self._observers.append(observer)

        def unsubscribe() -> None:
            with self._lock, contextlib.suppress(ValueError):
                self._observers.remove(observer)

        return unsubscribe

    def emit(self, *args: P.args, **kwargs: P.kwargs) -> None:
        with self._lock:
            observers = list(self._observers)
        for observer in observers:
            try:
                observer(*args, **kwargs)
            except Exception:
                key = id(observer)
                if key not in self._failed:
                    self._failed.add(key)
                    _log.warning(
                        "an observer of %s failed (later failures of it are"
                        " not logged)",
                        self._what,
                        exc_info=True,
                    )

    def __len__(self) -> int:
        return len(self._observers)
