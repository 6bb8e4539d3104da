"""The map's scheduler (``_MapRun``) over in-process fake engines: chunks,
order, engines dying, joining, reserved or stale, errors, cancellation.

No cluster: each test takes milliseconds.  What only a cluster shows (real
engine deaths, interrupts, output) is tested against one in test_pmap.py,
test_faults.py and test_reliability.py.
"""

from __future__ import annotations

import builtins
import itertools
import random
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from paracell.kernel_backend import ItemError, MapFailed, MapJob, MapOptions
from paracell.kernel_backend._maprun import _MapRun
from paracell.kernel_backend._maps import _spec
from paracell.kernel_backend._pool import LOCAL_ENGINE, LocalPool

from _fake_engines import FakePool

_keys = itertools.count()


@pytest.fixture
def pool() -> Iterator[FakePool]:
    fake = FakePool(3)
    yield fake
    fake.close()


def run_map(
    pool: Any,
    element: str,
    items: Any,
    namespace: dict[str, Any] | None = None,
    *,
    start: bool = True,
    **options: Any,
) -> Any:
    """Run ``element`` for ``x`` in ``items`` on ``pool``; the results, or the
    (job, run) pair when ``start`` is False."""
    opts = MapOptions(**options).validated()
    spec = _spec(f"fake-{next(_keys)}", element, ("x",), opts)
    job = MapJob(len(items) if hasattr(items, "__len__") else None)
    engines = list(opts.targets) if opts.targets else pool.engine_ids()
    run = _MapRun(pool, spec, items, opts, job, star=False, engines=engines)
    run.base = {"__builtins__": builtins, "random": random, **(namespace or {})}
    if not start:
        return job, run
    return run.run()


def test_results_come_in_input_order_from_every_engine(pool):
    assert run_map(pool, "x * x", list(range(100)), chunksize=3) == [
        x * x for x in range(100)
    ]
    assert pool.engines_used() == {0, 1, 2}
    # every item was sent exactly once
    sent = sorted(i for _, first, n in pool.sent for i in range(first, first + n))
    assert sent == list(range(100))


def test_an_iterator_is_read_lazily_and_fully(pool):
    taken: list[int] = []

    def source() -> Iterator[int]:
        for x in range(50):
            taken.append(x)
            yield x

    assert run_map(pool, "x + 1", source(), chunksize=4) == list(range(1, 51))
    assert taken == list(range(50))


def test_unordered_results_are_all_there(pool):
    results = run_map(pool, "x", list(range(40)), chunksize=1, ordered=False)
    assert sorted(results) == list(range(40))


def test_a_dying_engine_loses_no_item_and_its_chunk_runs_elsewhere(pool):
    killed = threading.Event()

    def slow(x: int) -> int:
        if x == 7 and not killed.is_set():
            killed.set()
            pool.kill_this_engine()  # under the item it runs
        return x * 10

    results = run_map(pool, "slow(x)", list(range(30)), {"slow": slow}, chunksize=1)
    assert results == [x * 10 for x in range(30)]
    assert killed.is_set()
    (dead,) = pool.forgotten
    assert dead not in pool.engine_ids()


def test_an_engine_gone_before_its_chunk_is_sent_costs_the_chunk_no_retry(pool):
    # the client drops a dead engine between the map picking it and the
    # send: ipyparallel then refuses the engine itself ("No such engine")
    submit = pool.submit
    gone = []

    def submit_to_a_vanishing_engine(engine, func, *args):
        if engine == 2 and func.__name__ == "run_chunk" and not gone:
            gone.append(engine)
            pool._engines[engine].alive = False
            raise IndexError(f"No such engine: {engine}")
        return submit(engine, func, *args)

    pool.submit = submit_to_a_vanishing_engine
    results = run_map(pool, "x * 2", list(range(40)), chunksize=2, retries=0)

    assert results == [x * 2 for x in range(40)]
    assert gone == [2]
    assert 2 in pool.forgotten
    assert 2 not in pool.engines_used()


def test_without_retries_left_a_death_fails_the_map_keeping_finished_results(pool):
    def dies(x: int) -> int:
        if x == 5:
            time.sleep(0.2)  # the items before it finish meanwhile
            pool.kill_this_engine()
        return x

    with pytest.raises(MapFailed, match="no retries are left") as info:
        run_map(
            pool, "dies(x)", list(range(20)), {"dies": dies}, chunksize=1, retries=0
        )
    # finished items are kept, those collected and those not yet collected
    assert set(range(5)) <= set(info.value.partial)
    assert all(info.value.partial[i] == i for i in info.value.partial)


def test_an_item_error_names_the_item_and_engine_and_keeps_results(pool):
    def check(x: int) -> int:
        if x == 13:
            raise ValueError("thirteen")
        return x

    with pytest.raises(ItemError) as info:
        run_map(pool, "check(x)", list(range(40)), {"check": check}, chunksize=2)
    err = info.value
    assert err.index == 13 and err.input == 13
    assert err.engine in {0, 1, 2}
    assert "ValueError: thirteen" in str(err)
    assert 12 in err.partial and 13 not in err.partial


def test_collect_puts_the_exception_in_place_and_skip_leaves_the_item_out(pool):
    def half(x: int) -> float:
        return 1 / (x - 3)

    collected = run_map(
        pool, "half(x)", list(range(6)), {"half": half}, on_error="collect"
    )
    assert isinstance(collected[3], ZeroDivisionError)
    assert collected[:3] == [-1 / 3, -1 / 2, -1.0]
    skipped = run_map(pool, "half(x)", list(range(6)), {"half": half}, on_error="skip")
    assert skipped == [-1 / 3, -1 / 2, -1.0, 1.0, 0.5]


def test_stale_engines_get_no_chunks(pool):
    pool.stale = {1}
    assert run_map(pool, "x", list(range(30)), chunksize=1) == list(range(30))
    assert pool.engines_used() == {0, 2}


def test_reserved_engines_are_used_only_when_nothing_else_is(pool):
    pool.reserved = {0, 1}
    run_map(pool, "x", list(range(30)), chunksize=1)
    assert pool.engines_used() == {2}
    pool.sent.clear()
    pool.reserved = {0, 1, 2}
    assert run_map(pool, "x", list(range(10)), chunksize=1) == list(range(10))
    assert pool.engines_used() == {0, 1, 2}


def test_an_engine_added_while_the_map_runs_joins_in_unless_targets_are_fixed(pool):
    added: list[int] = []

    def grow(x: int) -> int:
        if x == 2 and not added:
            added.append(pool.add_engine())
        return x

    items = list(range(200))
    assert run_map(pool, "grow(x)", items, {"grow": grow}, chunksize=1) == items
    assert added[0] in pool.engines_used()

    pool.sent.clear()
    added.clear()
    run_map(pool, "grow(x)", items, {"grow": grow}, chunksize=1, targets=(0,))
    assert pool.engines_used() == {0}


def test_seeded_results_are_the_same_on_any_engine_count_and_here():
    expected = None
    for pool in (FakePool(1), FakePool(3), LocalPool()):
        got = run_map(pool, "random.random()", list(range(25)), seed=7, chunksize=2)
        if isinstance(pool, FakePool):
            pool.close()
        expected = expected or got
        assert got == expected
    assert len(set(expected)) == 25


def test_a_cancelled_map_ends_and_stops_what_is_out(pool):
    release = threading.Event()
    job, run = run_map(
        pool,
        "wait(x)",
        list(range(20)),
        {"wait": lambda x: release.wait(5) and x},
        start=False,
        chunksize=1,
    )
    outcome: list[BaseException] = []

    def target() -> None:
        try:
            run.run()
        except BaseException as err:
            outcome.append(err)

    thread = threading.Thread(target=target)
    thread.start()
    while not pool.sent:
        threading.Event().wait(0.01)
    job.cancel()
    thread.join(5)
    release.set()
    assert not thread.is_alive()
    assert outcome and type(outcome[0]).__name__ == "CancelledError"
    assert pool.interrupted  # what was out was stopped


def test_a_stopped_cluster_fails_the_map_with_what_finished(pool):
    def stop_at(x: int) -> int:
        if x == 10:
            pool.epoch += 1  # the cluster was stopped under the map
        return x

    with pytest.raises(MapFailed, match="cluster was stopped") as info:
        run_map(pool, "stop_at(x)", list(range(200)), {"stop_at": stop_at}, chunksize=1)
    assert set(info.value.partial) <= set(range(200))


def test_a_map_with_every_engine_dead_says_so(pool):
    def kill_all(x: int) -> int:
        for eid in pool.engine_ids():
            pool.kill(eid)
        return x

    with pytest.raises(MapFailed, match=r"no engines left|no retries"):
        run_map(
            pool, "kill_all(x)", list(range(10)), {"kill_all": kill_all}, chunksize=1
        )


def test_the_local_pool_runs_chunks_here_in_order():
    seen: list[int] = []

    def note(x: int) -> int:
        seen.append(x)
        return -x

    assert run_map(LocalPool(), "note(x)", list(range(12)), {"note": note}) == [
        -x for x in range(12)
    ]
    assert seen == list(range(12))
    assert LocalPool().engine_ids() == [LOCAL_ENGINE]


def test_a_generator_of_heavy_items_is_sent_in_chunks_within_the_byte_budget(pool):
    from paracell.kernel_backend._chunking import CHUNK_BYTES

    items = (b"x" * 100_000 for _ in range(3_000))  # 300 MB in all, 0.1 MB each
    assert run_map(pool, "len(x)", items) == [100_000] * 3_000
    biggest = max(n for _, _, n in pool.sent)
    assert biggest * 100_000 <= CHUNK_BYTES
    assert sum(n for _, _, n in pool.sent) == 3_000


def test_a_small_share_of_a_range_goes_out_whole_and_a_large_one_time_boxed(pool):
    budgets: list[tuple[int, int, float | None]] = []
    submit = pool.submit

    def recording(engine: int, func: Any, *args: Any) -> Any:
        if func.__name__ == "run_chunk":
            budgets.append((args[1], len(args[2]), args[5]))
        return submit(engine, func, *args)

    pool.submit = recording
    # 2 items per engine: one chunk each, run whole (no second round trip
    # for the item a time-boxed probe of slow items would give back)
    assert run_map(pool, "x + 1", range(6)) == list(range(1, 7))
    assert sorted(budgets) == [(0, 2, None), (2, 2, None), (4, 2, None)]
    budgets.clear()
    # 10 items per engine: time-boxed probes, each an engine's even share
    assert run_map(pool, "x + 1", range(30)) == list(range(1, 31))
    probes = sorted(budgets)[:3]
    assert [(first, n) for first, n, _ in probes] == [(0, 10), (10, 10), (20, 10)]
    assert all(budget is not None and budget > 0 for _, _, budget in probes)
