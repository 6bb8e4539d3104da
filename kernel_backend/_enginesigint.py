"""On an engine: an interrupt never ends the engine itself.

ipykernel turns SIGINT into ``KeyboardInterrupt`` while it handles a request
(its ``pre_handler_hook`` installs Python's default handler, its
``post_handler_hook`` puts back the ignoring one) and catches that exception
around the request's handler.  Its own few steps around that ``try`` are
not covered: a SIGINT landing just after ``pre_handler_hook`` has installed
the handler, or in the ``finally`` before ``post_handler_hook`` has removed
it, raises where nothing catches it, and the engine's event loop, and with
it the engine, ends.  paracell sends SIGINT to stop cancelled work, again
while the work has not stopped, so a map of many short chunks that fails
and is cancelled over and over meets that moment now and then.

:func:`install` has ``pre_handler_hook`` install :func:`_interrupt`
instead: ``KeyboardInterrupt`` as before, except in those steps of
ipykernel's, and in the event loop itself (which runs between the steps of
a request that awaits), where the signal is dropped.  A dropped interrupt is like one
that lands between requests, which an engine ignores anyway: paracell sends
it again while the task runs, and probes an engine whose task never answers
(see ``_stale``).
"""

from __future__ import annotations

import contextlib
import os
import signal
from typing import Any

__all__ = ["install"]

#: ipykernel's steps around a request's handler where ``KeyboardInterrupt``
#: is not caught (see the module's docstring).
_UNGUARDED = frozenset({"dispatch_shell", "pre_handler_hook", "post_handler_hook"})


def install(app: Any) -> None:
    """Have the engine's kernel (``app``: the ``IPEngine``) interrupt requests
    with :func:`_interrupt`."""
    kernel = getattr(app, "kernel", None)
    if kernel is None or getattr(kernel, "_paracell_sigint", False):
        return
    if not callable(getattr(kernel, "pre_handler_hook", None)):
        return  # not the ipykernel this knows

    def pre_handler_hook() -> None:
        kernel.saved_sigint_handler = signal.signal(signal.SIGINT, _interrupt)

    kernel.pre_handler_hook = pre_handler_hook
    kernel._paracell_sigint = True


def _interrupt(signum: int, frame: Any) -> None:
    """SIGINT while a request is handled: ``KeyboardInterrupt``, unless it
    landed in ipykernel's own steps around the handler (or in the hook that
    installed this), where nothing would catch it."""
    if frame is not None and _unguarded(frame.f_code):
        return
    raise KeyboardInterrupt


def _unguarded(code: Any) -> bool:
    path = str(code.co_filename)
    if path.startswith(_EVENT_LOOPS):
        return True  # the event loop itself, between a coroutine's steps
    if code.co_name not in _UNGUARDED:
        return False
    return os.path.basename(path) == "kernelbase.py" or path == __file__


def _package_dirs(*names: str) -> tuple[str, ...]:
    import importlib

    found = []
    for name in names:
        with contextlib.suppress(Exception):
            module = importlib.import_module(name)
            found.append(os.path.dirname(str(module.__file__)) + os.sep)
    return tuple(found)


#: Where the engine's event loop runs: a request that awaits (ipykernel's
#: ``execute_request``) lets it run between its steps, with this handler in
#: place, and a ``KeyboardInterrupt`` there would end it too.
_EVENT_LOOPS = _package_dirs("asyncio", "tornado")
