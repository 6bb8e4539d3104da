"""Runs on the engines: top-level ``await`` in a cell, as in a notebook.

A notebook cell may ``await``, and use ``async for`` and ``async with``,
at its top level; so may a ``%%parallel`` cell.  Such code compiles to a
coroutine (:func:`compile_code` allows it).  An engine answers each request
from inside its own running event loop, which cannot be re-entered to run
the cell's, so :func:`run_code` runs the coroutine to its end in a thread
while the engine's thread waits; an interrupt of the engine cancels it.

Every cell on an engine runs in the same event loop (as a notebook's cells
do), so what one cell opens on it, a client session say, serves the next.
Each runs it from a thread of its own, started for the request, so what the
coroutine prints goes with the request that ran it.

A map whose element awaits, or calls an ``async def`` function, runs each
item the same way (:func:`awaiting_element`); ``--concurrency`` runs several
of a chunk's items at once in that loop (``_enginemap._run_concurrently``).
"""

from __future__ import annotations

import ast
import asyncio
import contextlib
import inspect
import linecache
import threading
from types import CodeType
from typing import Any

__all__ = [
    "AWAIT_FLAGS",
    "awaiting_element",
    "awaits",
    "compile_code",
    "is_async_element",
    "run_code",
    "run_coroutine",
]

#: ``compile`` flags for code that may ``await`` at its top level.
AWAIT_FLAGS = ast.PyCF_ALLOW_TOP_LEVEL_AWAIT

#: How long an interrupted cell's coroutine has to end once cancelled, and
#: then once interrupted in its thread (one that blocks without awaiting).
CANCEL_WAIT = 0.5


def compile_code(
    source: str | ast.Module | ast.Expression, filename: str, mode: str
) -> CodeType:
    """``compile(source, filename, mode)``, top-level ``await`` allowed."""
    code: CodeType = compile(source, filename, mode, flags=AWAIT_FLAGS)
    return code


def run_code(code: CodeType, namespace: dict[str, Any]) -> Any:
    """Run ``code`` in ``namespace``: the value of an ``eval`` code, None for
    ``exec``.  Code that awaits runs to its end in the engine's event loop
    for cells; exceptions are the code's own."""
    if not code.co_flags & inspect.CO_COROUTINE:
        return eval(code, namespace)
    return run_coroutine(eval(code, namespace))


#: This engine's event loop for cells that await (made on first use, and
#: again should an interrupted cell's coroutine have kept it running).
_LOOP: asyncio.AbstractEventLoop | None = None
_LOOP_LOCK = threading.Lock()


def _engine_loop() -> asyncio.AbstractEventLoop:
    global _LOOP
    with _LOOP_LOCK:
        if _LOOP is None or _LOOP.is_closed() or _LOOP.is_running():
            _LOOP = asyncio.new_event_loop()
        return _LOOP


def awaiting_element(spec: Any, namespace: dict[str, Any]) -> Any:
    """A map's per-item function, when its element awaits (``%pmap await
    fetch(u) for u in urls``) or calls an async function (``fetch(u)``, and
    ``pmap(fetch, urls)``, whose element that is): each call runs the
    element to its end, as a cell that awaits runs.  None for any other.

    ``spec`` is the map's ``TaskSpec``; the function is compiled under its
    filename, so tracebacks show the element as a plain one shows.
    """
    element: str = spec.element
    how = _async_element(element, namespace)
    if how is None:
        return None
    body = element if how == "awaits" else f"await {element}"
    name = "__paracell_async_element__"
    source = f"async def {name}({', '.join(spec.arguments)}):\n    return ({body})\n"
    lines = source.splitlines(keepends=True)
    linecache.cache[spec.filename] = (len(source), None, lines, spec.filename)
    exec(compile(source, spec.filename, "exec"), namespace)
    function = namespace.pop(name)

    def run(*args: Any) -> Any:
        return run_coroutine(function(*args))

    run.coroutine_function = function  # type: ignore[attr-defined]
    return run


def is_async_element(element: str, namespace: Any) -> bool:
    """Whether a map's ``element`` awaits, or calls an async def function
    in ``namespace`` (a mapping of names)."""
    return _async_element(element, namespace) is not None


def _async_element(element: str, namespace: Any) -> str | None:
    """``"awaits"``, ``"calls"`` (an async def function, not awaited), or
    None for an element that does neither."""
    head = element.partition("(")[0].strip()
    calls_async = head.isidentifier() and inspect.iscoroutinefunction(
        namespace.get(head)
    )
    if not calls_async and "await" not in element and "async" not in element:
        return None  # the common case, decided without parsing
    try:
        tree = ast.parse(element, mode="eval").body
    except SyntaxError:
        return None
    if awaits(tree):
        return "awaits"
    if isinstance(tree, ast.Call) and calls_async:
        return "calls"
    return None


def awaits(tree: ast.AST) -> bool:
    """Whether ``tree`` awaits: ``await``, ``async for`` in a comprehension."""
    return any(
        isinstance(node, ast.Await)
        or (isinstance(node, ast.comprehension) and node.is_async)
        for node in ast.walk(tree)
    )


def run_coroutine(coroutine: Any) -> Any:
    """Run ``coroutine`` in this engine's event loop (called from the main
    thread; else in a loop of its own), from a new thread, waiting here.

    A ``KeyboardInterrupt`` here (the engine interrupted), or an item's
    timeout, cancels it; if it has not ended within ``CANCEL_WAIT`` seconds
    (it blocks without awaiting), its thread is interrupted too, as the
    engine was, and the loop is not used again.  The interrupt goes on once
    it has ended, or after that wait again.
    """
    global _LOOP
    # the engine's thread runs one request at a time: its cells share a loop;
    # a run from another thread (a background map in the notebook) may
    # overlap one, and gets a loop of its own
    private = threading.current_thread() is not threading.main_thread()
    loop = asyncio.new_event_loop() if private else _engine_loop()
    box: dict[str, Any] = {}
    ended = threading.Event()

    async def main() -> None:
        try:
            box["value"] = await coroutine
        except BaseException as err:  # the cell's own, and its cancelling
            box["error"] = err

    def thread() -> None:
        try:
            asyncio.set_event_loop(loop)
            box["task"] = loop.create_task(main())
            loop.run_until_complete(box["task"])
        except BaseException as err:  # the loop's own failure, or interrupted
            box.setdefault("error", err)
        finally:
            asyncio.set_event_loop(None)
            if private:
                loop.close()
            ended.set()

    runner = threading.Thread(target=thread, name="paracell-await", daemon=True)
    runner.start()
    try:
        # short waits: an interrupt lands between them
        while not ended.wait(0.1):
            pass
    except BaseException:  # interrupted, or an item's time is up
        task = box.get("task")
        if task is not None:
            # a RuntimeError: the loop stopped just now, so it has ended
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(task.cancel)
        if not ended.wait(CANCEL_WAIT) and runner.ident is not None:
            _interrupt_thread(runner.ident)
            with _LOOP_LOCK:
                if _LOOP is loop:
                    _LOOP = None  # left part-way through a step: a new one
            ended.wait(CANCEL_WAIT)
        raise
    error = box.get("error")
    if error is not None:
        try:
            raise error
        finally:
            del error, box  # no cycle through the traceback
    return box.get("value")


def _interrupt_thread(ident: int) -> None:
    """Raise ``KeyboardInterrupt`` in thread ``ident`` at its next line of
    Python (a call into C, such as ``time.sleep``, ends first)."""
    import ctypes

    ctypes.pythonapi.PyThreadState_SetAsyncExc(
        ctypes.c_ulong(ident), ctypes.py_object(KeyboardInterrupt)
    )
