"""What goes wrong with a map's chunk, in the words the user sees."""

from __future__ import annotations

from typing import Any, Literal

from ._enginenames import UndefinedNames
from ._errors import InvalidRequest, is_engine_death
from ._mapfeed import Chunk
from ._mapjob import MapFailed, _short
from ._mapresults import MapResults

__all__ = ["as_given", "chunk_error", "unsendable"]


def as_given(item: Any, star: bool) -> Any:
    """An item as the user gave it: a lone argument, not its 1-tuple
    (``star``: items are tuples of arguments)."""
    if star and len(item) == 1:
        return item[0]
    return item


def unsendable(chunk: Chunk, err: Exception, *, star: bool) -> InvalidRequest:
    """The error for a chunk that could not be pickled: name the item."""
    from . import _pickling

    for offset, item in enumerate(chunk.items):
        try:
            _pickling.dumps(item)
        except Exception as item_err:
            given = _short(as_given(item, star))
            return InvalidRequest(
                f"item {chunk.first + offset} (input {given}) cannot be"
                f" sent to the engines: {type(item_err).__name__}: {item_err}"
            )
    return InvalidRequest(
        f"items {chunk.first}-{chunk.first + len(chunk.items) - 1} cannot be"
        f" sent to the engines: {type(err).__name__}: {err}"
    )


def chunk_error(
    err: Exception, chunk: Chunk, eid: int, results: MapResults
) -> Literal["engine died", "reply failed"]:
    """What the error a chunk's result raised means for the map.

    ``engine died``: the chunk may run elsewhere.  ``reply failed``: the
    chunk ran, but its reply did not arrive, most likely for a value that
    cannot be pickled (paracell's wrapper catches the items' own errors),
    the first time only.  Anything else ends the map and is raised here:
    an interrupt, undefined names, or :class:`MapFailed` (with ``results``'
    partial results).
    """
    import ipyparallel as ipp

    if not isinstance(err, ipp.error.IPythonError):
        raise err  # raised here, not reported by an engine (--local)
    if isinstance(err, ipp.error.RemoteError) and err.ename == UndefinedNames.__name__:
        raise InvalidRequest(err.evalue) from None
    if is_engine_death(err):
        return "engine died"
    if isinstance(err, ipp.error.RemoteError) and err.ename == "KeyboardInterrupt":
        raise KeyboardInterrupt()
    if isinstance(err, ipp.error.RemoteError) and not chunk.check_results:
        return "reply failed"
    what = (
        f"{err.ename}: {getattr(err, 'evalue', '')}" if hasattr(err, "ename") else err
    )
    raise MapFailed(
        f"engine {eid} could not run items {chunk.first}-"
        f"{chunk.first + len(chunk.items) - 1}: {what}",
        results.partial(),
    )
