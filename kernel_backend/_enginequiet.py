"""On an engine: the end of a request costs no needless thread hand-offs.

ipykernel ends every request by flushing ``sys.stdout`` and ``sys.stderr``
twice (ipyparallel's ``apply_request`` before the reply, its dispatcher
before the ``idle`` status).  A flush from the engine's main thread hands
the flush to the IO thread and waits for it, even when nothing was written:
about 0.1 ms each, 0.4 ms of every task, more than paracell's own work for
a trivial cell.  :func:`install` makes a flush with nothing to send return
at once; a flush with anything to send is ipykernel's own.

"Nothing to send" is exact: no stream buffer holds text, and the IO thread
is not part-way through a flush (it takes the text out of the buffer before
it sends it, so the buffers are read first, then the count of flushes under
way).  Text written before a flush is therefore sent before the flush
returns, as it always was: before the reply, and before the ``idle`` status.

Also here: the engine's log level is raised to the lowest level any of its
handlers writes, so the debug lines ipykernel and ipyparallel write for every
request are not built only to be dropped (what the log shows is unchanged).

Writes to the streams are counted (:func:`output_mark`): a cell that wrote
nothing says so in its outcome, and the notebook then takes its result
without waiting for the ``idle`` status that marks its output complete
(0.3 ms of a trivial cell's round trip).

A stream that is not ipykernel's, or one whose internals differ from what
this expects, is left as it is.  Nothing changes in the notebook's process
(``--local``): :func:`install` is only called on engines.
"""

from __future__ import annotations

import contextlib
import logging
import sys
from typing import Any

__all__ = ["install", "output_mark"]

#: Writes to the engine's quick streams so far (see :func:`output_mark`).
_writes = [0]
#: The streams made quick.
_quick: list[Any] = []


def install(app: Any) -> None:
    """Quick empty flushes for the engine's streams, and no invisible log
    records (``app``: the engine's ``IPEngine``)."""
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            _quick_empty_flush(stream)
    with contextlib.suppress(Exception):
        kernel = getattr(app, "kernel", None)
        for log in {id(x): x for x in (app.log, getattr(kernel, "log", None))}.values():
            if isinstance(log, logging.Logger):
                _skip_invisible_records(log)


def output_mark() -> int | None:
    """A count of what the engine's stdout and stderr have been written to:
    equal before and after some work, the work wrote nothing (so no output
    of its can follow its reply).  None where the streams are not ipykernel's
    quick ones (the notebook's process, a stream this does not know)."""
    if len(_quick) != 2 or any(s not in (sys.stdout, sys.stderr) for s in _quick):
        return None
    return _writes[0]


def _quick_empty_flush(stream: Any) -> None:
    if getattr(stream, "_paracell_quick", False):
        return
    buffers = getattr(stream, "_buffers", None)
    lock = getattr(stream, "_buffer_lock", None)
    inner = getattr(stream, "_flush", None)
    outer = getattr(stream, "flush", None)
    if not isinstance(buffers, dict) or lock is None or not callable(inner):
        return  # not the ipykernel stream this knows
    if not callable(outer) or not hasattr(stream, "echo"):
        return
    under_way = [0]  # flushes the IO thread is part-way through

    def counted_flush() -> None:
        under_way[0] += 1
        try:
            inner()
        finally:
            under_way[0] -= 1

    def flush(*args: Any, **kwargs: Any) -> None:
        # the buffers first: a flush under way has emptied them, and counts
        with lock:
            pending = any(buffer.tell() for buffer in stream._buffers.values())
        if pending or under_way[0] or stream.echo is not None:
            outer(*args, **kwargs)

    write = stream.write

    def counted_write(text: str) -> Any:
        written = write(text)
        _writes[0] += 1  # after the text is in the buffer
        return written

    # ipykernel looks these up on the stream each time, and IPython's output
    # capture wraps whatever ``write`` it finds and puts it back, so the
    # instance's own attributes serve
    stream._flush = counted_flush
    stream.flush = flush
    stream.write = counted_write
    stream._paracell_quick = True
    _quick.append(stream)


def _skip_invisible_records(log: logging.Logger) -> None:
    """Raise ``log``'s level to the lowest its handlers write, if below."""
    levels: list[int] = []
    current: logging.Logger | None = log
    while current is not None:
        levels += [handler.level for handler in current.handlers]
        if not current.propagate:
            break
        current = current.parent
    if not levels:  # Python's last resort handles it: leave it be
        return
    lowest = min(levels)
    if log.getEffectiveLevel() < lowest:
        log.setLevel(lowest)
