"""Starting maps: a function over an iterable, or a ``%pmap`` comprehension.

Both come down to one :class:`TaskSpec` (an element expression and the names
it needs), an iterator of items, and a :class:`MapJob` run by the cluster
scheduler or, for ``local=True``, in this process.
"""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

from ._cachedmap import MapCache
from ._comprehension import (
    COMPREHENSION_FILENAME,
    Comprehension,
    iterate_items,
    user_traceback,
)
from ._engine import WRAPPER_FILENAME, TaskSpec
from ._engineawait import is_async_element
from ._errors import EnginesDied, InvalidRequest
from ._mapfeed import sliceable
from ._mapjob import (
    MapFailed,
    MapJob,
    MapOptions,
    MapProgress,
    interrupted_error,
)
from ._maprun import _MapRun
from ._names import element_free_names
from ._pool import LOCAL_ENGINE, LocalPool
from ._seeding import fresh_entropy
from ._shipment import prepare_shipment
from ._status import StartReport

__all__ = ["map_comprehension", "map_function"]

_FUNC = "__paracell_func__"
_ITEM = "__paracell_item__"
_FIRST_ITER = "__paracell_iter0__"


@dataclass(frozen=True)
class _Map:
    """A map to start: its element run once per item (the item bound to
    ``arguments``), its items, and how it runs."""

    element: str
    arguments: tuple[str, ...]
    items: Iterator[Any] | Sequence[Any]
    total: int | None
    options: MapOptions
    star: bool  # each item is a tuple of arguments
    cache: MapCache | None
    observers: Iterable[Callable[[MapProgress], None]]
    block: bool


def map_function(
    session: Any,
    func: Callable[[Any], Any],
    iterable: Iterable[Any],
    options: MapOptions,
    *,
    block: bool = True,
    local: bool = False,
    observers: Iterable[Callable[[MapProgress], None]] = (),
    cache: bool | str | None = None,
    announce: Callable[[StartReport], None] | None = None,
) -> MapJob:
    """Map ``func`` over ``iterable``; returns the job (finished if ``block``).

    ``cache``: keep each result in the result store (``True``: the default
    store, a string: the store of that name) and take stored ones from it;
    a map whose every result is stored runs on no engine (none is started).
    ``announce`` is called with the report of engines started for the map.
    """
    if not callable(func):
        raise InvalidRequest(
            f"pmap needs a function to call, not {type(func).__name__}"
        )
    total = known_length(iterable)
    # a range, list or tuple is cut into chunks by slicing
    items = iterable if total is not None and sliceable(iterable) else iter(iterable)
    options = options.validated()
    element, arguments, extra = f"{_FUNC}({_ITEM})", (_ITEM,), {_FUNC: func}
    _check_concurrency(options, element, extra)
    store = MapCache.for_map(
        cache, element, arguments, [], {}, star=False, seed=options.seed, extra=extra
    )
    plan = _Map(
        element, arguments, items, total, options, False, store, observers, block
    )
    if local or _all_stored(store, items, options):
        return _start_local(plan, {"__builtins__": __builtins__, **extra})
    with session.busy():  # from the digest on: an array made again stays
        shipment = prepare_shipment([], {}, extra=extra, ship_large=options.ship_large)
        return _start_remote(session, plan, shipment, announce)


def map_comprehension(
    session: Any,
    comp: Comprehension,
    namespace: Mapping[str, Any],
    options: MapOptions,
    *,
    block: bool = True,
    local: bool = False,
    observers: Iterable[Callable[[MapProgress], None]] = (),
    cache: bool | str | None = None,
    announce: Callable[[StartReport], None] | None = None,
) -> MapJob:
    """Run ``comp``'s element on the engines once per item of its ``for`` clauses.

    The iterables and ``if`` clauses run here, in ``namespace``, lazily.
    ``cache`` and ``announce`` as for :func:`map_function`.
    """
    options = options.validated()
    _check_concurrency(options, comp.element, namespace)
    items, total, star = _comprehension_items(comp, namespace)
    element, arguments = comp.element, comp.target_names
    free = element_free_names(comp)
    store = MapCache.for_map(
        cache, element, arguments, free, namespace, star=star, seed=options.seed
    )
    plan = _Map(
        element, arguments, items, total, options, star, store, observers, block
    )
    stored = _all_stored(store, items, options)
    if local and not stored:
        _require_defined(free, namespace)
    if local or stored:
        return _start_local(plan, dict(namespace))
    with session.busy():  # from the digest on: an array made again stays
        shipment = prepare_shipment(free, namespace, ship_large=options.ship_large)
        return _start_remote(session, plan, shipment, announce)


def _check_concurrency(
    options: MapOptions, element: str, namespace: Mapping[str, Any]
) -> None:
    """``--concurrency`` runs items that await: refuse it for an element that
    does not, in one line, before anything runs."""
    if options.concurrency > 1 and not is_async_element(element, namespace):
        raise InvalidRequest(
            f"--concurrency {options.concurrency} runs items that await at"
            " once; this map's element neither awaits nor calls an async def"
            " function (e.g. %pmap --concurrency 8 await fetch(u) for u in urls)"
        )


def known_length(iterable: Any) -> int | None:
    """``len(iterable)``, or None when it has no length Python can tell.

    ``len(range(10**20))`` raises ``OverflowError``; a comprehension never
    asks for a length, so neither may a map fail for want of one: the map
    then runs with an unknown total, taking items as they come.  (A
    ``__len__`` of the user's that raises counts as no length, for the same
    reason.)
    """
    try:
        return len(iterable)
    except Exception:
        return None


def _require_defined(free: Iterable[str], namespace: Mapping[str, Any]) -> None:
    """A ``--local`` map runs in ``namespace``: each name it reads is there."""
    import builtins

    missing = sorted(n for n in set(free) - set(dir(builtins)) if n not in namespace)
    if missing:
        raise InvalidRequest(f"name {missing[0]!r} is not defined")


def _all_stored(
    store: MapCache | None, items: Iterator[Any] | Sequence[Any], options: MapOptions
) -> bool:
    """Whether a ``--cache`` map has every result stored already: it then
    takes them here and starts no engine.  (Only for items known up front:
    a generator's would have to be drawn to tell.)"""
    return (
        store is not None
        and options.targets is None
        and isinstance(items, Sequence)
        and store.covers(items)
    )


def _comprehension_items(
    comp: Comprehension, namespace: Mapping[str, Any]
) -> tuple[Iterator[tuple[Any, ...]] | Sequence[Any], int | None, bool]:
    """Items, their count if known, and whether each is a tuple of arguments.

    Items are tuples of the target names' values (``star``), except for
    ``for x in seq`` alone over a range, list or tuple: then the items are
    ``seq``'s own, cut into chunks by slicing.  The first iterable is
    evaluated here and now, as Python evaluates a comprehension's first
    iterable; that also tells the total when there is a single ``for`` and
    no ``if``.
    """
    first = comp.generators[0]
    code = compile(first.iter, COMPREHENSION_FILENAME, "eval")
    try:
        iterable = eval(code, dict(namespace))
    except NameError as err:
        users, called = user_traceback(err.__traceback__)
        if not users or called is not None:
            raise  # raised inside code the iterable calls: the user's bug
        # the iterable's own text names something undefined: one line says so
        raise InvalidRequest(f"{err} (in the comprehension's first iterable)") from None
    total = None
    if len(comp.generators) == 1 and not first.ifs:
        total = known_length(iterable)
        simple = first.target_names == (first.target,)
        if total is not None and simple and sliceable(iterable):
            return iterable, total, False
    rewritten = replace(
        comp, generators=(replace(first, iter=_FIRST_ITER), *comp.generators[1:])
    )
    ns = {**namespace, _FIRST_ITER: iterable}
    names = comp.target_names
    if len(names) == 1 and len(comp.generators) == 1:
        (only,) = names
        items = ((d[only],) for d in iterate_items(rewritten, ns))
    else:
        items = (tuple(d[n] for n in names) for d in iterate_items(rewritten, ns))
    return items, total, True


def _spec(
    key: str,
    element: str,
    arguments: tuple[str, ...],
    options: MapOptions,
    **names: Any,
) -> TaskSpec:
    if element.startswith(_FUNC):
        names["filename"] = WRAPPER_FILENAME
    h = hashlib.blake2b(digest_size=12)
    h.update(f"{key}|{element}|{arguments}".encode())
    return TaskSpec(
        key=h.hexdigest(),
        element=element,
        arguments=arguments,
        seed=options.seed,
        entropy=fresh_entropy(),
        timeout=options.timeout,
        stop_on_error=options.on_error == "raise",
        concurrency=options.concurrency,
        **names,
    )


def _start_remote(
    session: Any,
    plan: _Map,
    shipment: Any,
    announce: Callable[[StartReport], None] | None,
) -> MapJob:
    report = session.ensure_engines()
    if report is not None and announce is not None:
        announce(report)
    # The engines are held from here to the map's end: the idle timeout must
    # not stop one between shipping the names and sending the first chunk.
    hold = contextlib.ExitStack()
    hold.enter_context(session.in_use())
    try:
        engines = _map_engines(session, plan.options, plan.total)
        shipment = _ship(session, session.client, engines, shipment)
        spec = _spec(
            shipment.key,
            plan.element,
            plan.arguments,
            plan.options,
            **shipment.spec_names(),
        )
        job = _new_job(plan)
        run = _MapRun(
            session,
            spec,
            plan.items,
            plan.options,
            job,
            star=plan.star,
            engines=engines,
            cache=plan.cache,
            shipment=shipment,
        )
        job.add_done_callback(session.mapping(engines))
    except BaseException:
        hold.close()
        raise
    return _launch(job, run, plan.block, hold)


def _map_engines(session: Any, options: MapOptions, total: int | None) -> list[int]:
    """The engines a map starts on: its ``--targets``, or the free ones
    (launched first when engines come on demand)."""
    session.require_controller()
    live = session.engine_ids()
    if session.demand is not None and options.targets is None:
        # engines on demand: one per item, up to the maximum; the map starts
        # on the first that registers and takes the others as they come
        of = "" if total is None else f" of {total} item{'s' * (total != 1)}"
        session.want(
            session.demand.maximum if total is None else total, f"a map{of}", retry=True
        )
        live = session.await_engines()
    if options.targets is not None:
        unknown = [t for t in options.targets if t not in live]
        if unknown:
            raise InvalidRequest(
                f"--targets names engine {unknown[0]}, which is not running"
                f" (engines: {', '.join(map(str, live)) or 'none'})"
            )
        return list(options.targets)
    # engines busy with a background job would run chunks only after it
    engines = session.unreserved_engine_ids() or list(live)
    if not engines:
        raise InvalidRequest(
            "the cluster has no engines; add some with %cluster scale N"
        )
    return engines


def _ship(session: Any, client: Any, engines: list[int], shipment: Any) -> Any:
    """Send the map's names; an engine that dies meanwhile is left out
    (``engines`` shrinks), as it would be if it died during the map."""
    while True:
        try:
            return session.shipper.send(client, engines, shipment)
        except EnginesDied as err:
            session.forget_engines(err.engines)
            engines[:] = [e for e in engines if e not in err.engines]
            if not engines:
                raise MapFailed(
                    "every engine died while the map's names were sent to them;"
                    " no item ran (%cluster status shows what is left)",
                    {},
                ) from None


def _start_local(plan: _Map, namespace: dict[str, Any]) -> MapJob:
    """Run the map here, in ``namespace``, item after item (``--local``,
    or every result stored)."""
    spec = _spec(f"local-{id(namespace)}", plan.element, plan.arguments, plan.options)
    job = _new_job(plan)
    run = _MapRun(
        LocalPool(),
        spec,
        plan.items,
        plan.options,
        job,
        star=plan.star,
        engines=[LOCAL_ENGINE],
        cache=plan.cache,
        base=namespace,
    )
    return _launch(job, run, plan.block, contextlib.ExitStack())


def _new_job(plan: _Map) -> MapJob:
    """The job the user holds, its observers subscribed."""
    job = MapJob(plan.total)
    for observer in plan.observers:
        job.subscribe(observer)
    return job


def _launch(
    job: MapJob, run: _MapRun, block: bool, hold: contextlib.ExitStack
) -> MapJob:
    """Run the map here (``block``) or in a thread; ``hold`` (the engines'
    hold against the idle timeout) ends with it."""

    def target() -> None:
        try:
            with hold:
                result = run.run()
        except KeyboardInterrupt:
            # one line saying what finished, instead of our frames
            stopped = interrupted_error(run.results.partial(), job.total)
            if not job.done():
                job.set_exception(stopped)
            if block:
                raise stopped from None
            return
        except BaseException as err:
            if not job.done():
                job.set_exception(err)
            if block:
                raise
            return
        if not job.done():
            job.set_result(result)

    if block:
        target()
    else:
        job.run_in_thread(target)
    return job
