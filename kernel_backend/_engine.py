"""Code that runs on the engines: what its modules share.

Engines import these modules by name (functions sent with ``apply`` travel by
reference), so they stay cheap to import and free of display code.  The same
code also runs in the notebook's own process for ``--local``, so local and
remote runs seed, time and report errors identically.

The engine side is seven modules, one job each:

- ``_engine`` (this one): the task spec, the engine's identity, an item's
  failure as it travels back (without paracell's frames), progress from
  inside a task, values sent back to the notebook, and the shield of a
  finished request's reply against a late SIGINT;
- ``_enginenames``: the shipped-name store and the namespaces built from it;
- ``_enginesegments``: large arrays mapped read-only from shared memory;
- ``_enginemap``: the chunks of a map (``run_chunk``);
- ``_enginecell``: background cells (``run_cell``);
- ``_enginetasks``: the statements of a task graph (``run_statement``) and
  their values' travel between engines;
- ``_enginequiet``: the end of every request made cheaper (empty flushes,
  log records no handler writes) and whether a cell wrote any output;
- ``_enginesigint``: an interrupt never ends the engine itself;
- ``_engineawait``: top-level ``await`` in cells, and maps of async code.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import sys
import time
import traceback
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from . import _pickling

__all__ = [
    "ItemFailure",
    "TaskSpec",
    "engine_identity",
    "progress",
]

#: Filename under which a ``%pmap`` element is compiled (shows in tracebacks).
ELEMENT_FILENAME = "<pmap>"
#: Filename of the wrapper that calls a function given to ``pmap``; being
#: paracell's, not the user's, its frame is left out of tracebacks.
WRAPPER_FILENAME = "<paracell>"
#: The modules that run on engines: their frames, which lead into the user's
#: code, are left out of the tracebacks items send back.
ENGINE_MODULES = (
    "_engine",
    "_enginenames",
    "_enginesegments",
    "_enginemap",
    "_enginecell",
    "_enginetasks",
    "_enginequiet",
    "_engineawait",
    "_enginesigint",
)
_HERE = os.path.dirname(os.path.abspath(__file__))
_OWN_FILES = {os.path.join(_HERE, f"{name}.py") for name in ENGINE_MODULES}
_OWN_FILES.add(WRAPPER_FILENAME)


def shield_reply() -> None:
    """On an engine: the work of this request is done, so a SIGINT from now
    to the end of the request is ignored.

    A SIGINT meant for the work that lands after it (while its outcome is
    packed, or its reply serialised and sent) would make ipykernel catch a
    ``KeyboardInterrupt`` outside the user's code and send no reply at all:
    the finished items, cell or statement would be lost.  ipykernel puts its
    own handler back after the reply is sent.  In the notebook's process
    (``--local``), or off the main thread, nothing changes.
    """
    if not _on_engine():
        return
    with contextlib.suppress(ValueError):  # not the main thread
        signal.signal(signal.SIGINT, _late_interrupt)


def _late_interrupt(signum: int, frame: Any) -> None:
    """A SIGINT that came after the work was done: nothing is left to stop."""


def _on_engine() -> bool:
    return _engine_app() is not None


def _engine_app() -> Any:
    """The ``IPEngine`` this process runs, or None (the notebook's process)."""
    engine_app = sys.modules.get("ipyparallel.engine.app")
    ipengine = getattr(engine_app, "IPEngine", None)
    if ipengine is None or not ipengine.initialized():
        return None
    return ipengine.instance()


def engine_identity() -> tuple[str, int]:
    """Return ``(hostname, pid)`` of the engine this runs on.

    The first task every engine gets: it also sets up how results travel,
    makes the end of every request cheaper (:mod:`._enginequiet`), keeps an
    interrupt from ending the engine (:mod:`._enginesigint`), and moves what
    the engine holds after start-up (ipyparallel, numpy, paracell: some
    70,000 objects) out of the cycle collector's sight.  A
    full collection then takes well under a millisecond instead of 0.1-0.15 s;
    engines collect when shipped data is dropped
    (:func:`._enginenames.install_names`).
    """
    global _frozen
    _pickling.install()
    if not _frozen:
        import gc

        gc.collect()
        gc.freeze()
        _frozen = True
        app = _engine_app()
        if app is not None:
            from . import _enginequiet, _enginesigint

            _enginequiet.install(app)
            with contextlib.suppress(Exception):
                _enginesigint.install(app)
    return socket.gethostname(), os.getpid()


_frozen = False


@dataclass(frozen=True)
class TaskSpec:
    """What to run for each item, and with which names.

    ``element`` is an expression evaluated per item with the item bound to
    ``arguments`` (a ``%pmap`` element and its loop targets, or a call of the
    function given to ``pmap``).
    """

    key: str
    names: dict[str, str] = field(default_factory=dict)  # name -> digest
    modules: dict[str, str] = field(default_factory=dict)  # name -> module
    from_imports: dict[str, tuple[str, str]] = field(default_factory=dict)
    engine_side: tuple[str, ...] = ()
    element: str = ""
    arguments: tuple[str, ...] = ()
    seed: int | None = None
    entropy: int = 0
    timeout: float | None = None
    stop_on_error: bool = True
    filename: str = ELEMENT_FILENAME
    concurrency: int = 1  # items run at once, awaiting (an async element)


# -- an item's failure -------------------------------------------------------


@dataclass
class ItemFailure:
    """An item's exception, as it travels back to the notebook."""

    index: int
    type_name: str
    message: str
    traceback: str
    exception: BaseException | None  # the original, when it could be pickled
    timed_out: bool = False


class ItemTimeout(Exception):
    """An item ran past ``--timeout``."""


def item_failure(index: int, err: BaseException) -> ItemFailure:
    """``err``, raised by item ``index``, as it travels back: the original
    when it can be pickled, and its traceback from the user's first frame."""
    exception: BaseException | None = err
    try:
        _pickling.dumps(err)
    except Exception:
        exception = None
    err.__traceback__ = _user_frames(err.__traceback__)
    text = "".join(traceback.format_exception(type(err), err, err.__traceback__))
    return ItemFailure(
        index=index,
        type_name=type(err).__name__,
        message=str(err),
        traceback=text,
        exception=exception,
        timed_out=isinstance(err, ItemTimeout),
    )


def _user_frames(tb: Any) -> Any:
    """Drop paracell's own frames from the front of a traceback."""
    while tb is not None and _is_own(tb.tb_frame.f_code.co_filename):
        tb = tb.tb_next
    return tb


def _is_own(filename: str) -> bool:
    # "<paracell>" (the wrapper's code) is a name, not a path to resolve
    return filename in _OWN_FILES or os.path.abspath(filename) in _OWN_FILES


# -- progress from inside an item ------------------------------------------

_reporter: Callable[[float, float | None, str | None], None] | None = None
_last_publish = 0.0


@contextlib.contextmanager
def reporting() -> Iterator[None]:
    """While a task runs here, :func:`progress` sends its reports live."""
    global _reporter
    previous, _reporter = _reporter, _engine_reporter
    try:
        yield
    finally:
        _reporter = previous


def _engine_reporter(done: float, total: float | None, message: str | None) -> None:
    # ipyparallel's data publication streams to the client while the task
    # runs; throttled so a tight loop calling progress() costs nothing.
    global _last_publish
    now = time.monotonic()
    if now - _last_publish < 0.1 and (total is None or done < total):
        return
    _last_publish = now
    with contextlib.suppress(Exception):
        from ipyparallel.datapub import publish_data

        publish_data({"paracell_progress": (done, total, message)})


def progress(
    done: float, total: float | None = None, message: str | None = None
) -> None:
    """Report progress from inside an item or background cell (live).

    ``done`` out of ``total`` (optional) units of the current task, with an
    optional short message.  Outside paracell's tasks this does nothing.
    """
    reporter = _reporter
    if reporter is not None:
        reporter(done, total, message)


# -- values sent back to the notebook ----------------------------------------


def pickle_each(
    ns: dict[str, Any], names: Iterable[str]
) -> tuple[dict[str, bytes], dict[str, str]]:
    """``names`` present in ``ns``, each pickled on its own for the notebook;
    and, for those that cannot be, why."""
    values: dict[str, bytes] = {}
    failed: dict[str, str] = {}
    for name in names:
        if name not in ns:
            continue
        try:
            values[name] = _pickling.dumps(ns[name])
        except Exception as err:
            failed[name] = f"{type(err).__name__}: {err}"
    return values, failed


def pack_result(result: Any) -> tuple[bytes | None, dict[str, Any] | None]:
    """A cell's last value for the notebook: pickled (None if it cannot be)
    and its rich display; ``(None, None)`` for None."""
    if result is None:
        return None, None
    value = None
    with contextlib.suppress(Exception):
        value = _pickling.dumps(result)
    return value, _mime_bundle(result)


def _mime_bundle(value: Any) -> dict[str, Any]:
    """The value's rich display, computed where the value lives."""
    with contextlib.suppress(Exception):
        from IPython import get_ipython

        ip = get_ipython()
        if ip is not None:
            data, _ = ip.display_formatter.format(value)
            if data:
                return dict(data)
    return {"text/plain": repr(value)}
