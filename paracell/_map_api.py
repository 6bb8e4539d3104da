"""The twins of ``%pmap``: a function over an iterable, or a comprehension."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any

from ._common import _announce, _display_hooks, _show_progress, _user_namespace
from .kernel_backend import (
    MapJob,
    MapOptions,
    default_session,
    map_comprehension,
    map_function,
)
from .kernel_backend._comprehension import parse_comprehension
from .widgets import map_observers

__all__ = ["pmap", "pmap_comprehension", "start_pmap"]


def pmap(
    func: Callable[[Any], Any],
    iterable: Iterable[Any],
    *,
    chunksize: int | str = "auto",
    ordered: bool = True,
    seed: int | None = None,
    retries: int = 2,
    timeout: float | None = None,
    concurrency: int = 1,
    on_error: str = "raise",
    progress: bool | str = "auto",
    block: bool = True,
    targets: Sequence[int] | None = None,
    local: bool = False,
    quiet: bool = False,
    ship_large: bool = False,
    cache: bool | str = False,
) -> list[Any] | MapJob:
    """Call ``func`` on every item of ``iterable`` on the cluster; ``%pmap``'s twin.

    Returns the results as a list in input order (``ordered=False``: in
    completion order), or with ``block=False`` a :class:`MapJob` at once.
    Starts a local cluster if none is active.

    Parameters
    ----------
    func
        Called once per item.  A function defined in the notebook travels by
        value, with the globals it reads shipped once per engine.
    iterable
        Consumed lazily, with a bounded number of chunks in flight.
    chunksize
        ``"auto"`` (measure items, size chunks to ~0.2 s) or items per chunk.
    seed
        Item *i* gets its own random streams (``random``, ``numpy.random``,
        :func:`paracell.rng`) from ``SeedSequence(seed)`` and *i* alone: the
        same results for any engine count, chunking, order, retry or ``local``.
    retries
        How many times a chunk is re-run after its engine died.
    timeout
        Seconds one item may run; a slower item fails as a timeout.
    concurrency
        For an ``async def`` function: items each engine runs at once, in
        its event loop (at least that many a chunk).  ``seed`` cannot go
        with it.
    on_error
        ``"raise"`` (stop, raise :class:`ItemError` with finished results in
        ``.partial``), ``"collect"`` (the exception takes the item's place) or
        ``"skip"`` (the item is left out).
    progress
        Show a progress line: ``"auto"`` (when blocking in IPython or a
        terminal), ``True`` or ``False``.
    targets
        Engine ids to use (default: all).
    local
        Run here, sequentially, with the same seeding: for debugging and to
        check a parallel run against.
    quiet
        Do not show what the items print or warn (``job.output()`` keeps it).
        A job (``block=False``) shows it in its own view when displayed.
    ship_large
        Ship names larger than ``PARACELL_SHIP_LIMIT`` (default 1 GB), which
        are refused otherwise.
    cache
        ``True`` (the default store) or a store's name: keep each result as
        it arrives, and take the results of items stored before from the
        store instead of computing them (``%pmap --cache``).
    """
    options = MapOptions(
        chunksize=chunksize,  # type: ignore[arg-type]
        ordered=ordered,
        seed=seed,
        retries=retries,
        timeout=timeout,
        concurrency=concurrency,
        on_error=on_error,  # type: ignore[arg-type]
        targets=None if targets is None else tuple(targets),
        ship_large=ship_large,
    )
    _display_hooks()
    job = map_function(
        default_session(),
        func,
        iterable,
        options,
        block=block,
        local=local,
        observers=map_observers(
            _show_progress(progress, block), quiet=quiet or not block
        ),
        cache=cache,
        announce=_announce,
    )
    return job.result() if block else job


def pmap_comprehension(
    comprehension: str,
    namespace: dict[str, Any] | None = None,
    *,
    chunksize: int | str = "auto",
    ordered: bool = True,
    seed: int | None = None,
    retries: int = 2,
    timeout: float | None = None,
    concurrency: int = 1,
    on_error: str = "raise",
    progress: bool | str = "auto",
    block: bool = True,
    targets: Sequence[int] | None = None,
    local: bool = False,
    quiet: bool = False,
    ship_large: bool = False,
    cache: bool | str = False,
) -> list[Any] | MapJob:
    """``%pmap``'s own twin: a comprehension's text, run as ``%pmap`` runs it.

    ``paracell.pmap_comprehension("f(x) for x in xs")`` equals
    ``%pmap f(x) for x in xs``: the iterables and ``if`` clauses run here in
    ``namespace`` (default: the IPython user namespace, or ``__main__``),
    the element on the engines, with the names it reads shipped by
    themselves.  The options are :func:`pmap`'s.
    """
    job = start_pmap(
        comprehension,
        namespace,
        chunksize=chunksize,
        ordered=ordered,
        seed=seed,
        retries=retries,
        timeout=timeout,
        concurrency=concurrency,
        on_error=on_error,
        progress=progress,
        block=block,
        targets=targets,
        local=local,
        quiet=quiet,
        ship_large=ship_large,
        cache=cache,
    )
    return job.result() if block else job


def start_pmap(
    comprehension: str,
    namespace: dict[str, Any] | None = None,
    *,
    chunksize: int | str = "auto",
    ordered: bool = True,
    seed: int | None = None,
    retries: int = 2,
    timeout: float | None = None,
    concurrency: int = 1,
    on_error: str = "raise",
    progress: bool | str = "auto",
    block: bool = True,
    targets: Sequence[int] | None = None,
    local: bool = False,
    quiet: bool = False,
    ship_large: bool = False,
    cache: bool | str = False,
) -> MapJob:
    """:func:`pmap_comprehension`, returning the map's job either way
    (finished when ``block``): ``%pmap --timeline`` draws it."""
    options = MapOptions(
        chunksize=chunksize,  # type: ignore[arg-type]
        ordered=ordered,
        seed=seed,
        retries=retries,
        timeout=timeout,
        concurrency=concurrency,
        on_error=on_error,  # type: ignore[arg-type]
        targets=None if targets is None else tuple(targets),
        ship_large=ship_large,
    )
    _display_hooks()
    return map_comprehension(
        default_session(),
        parse_comprehension(comprehension),
        _user_namespace() if namespace is None else namespace,
        options,
        block=block,
        local=local,
        observers=map_observers(
            _show_progress(progress, block), quiet=quiet or not block
        ),
        cache=cache,
        announce=_announce,
    )
