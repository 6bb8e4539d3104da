"""``%pmap`` and ``paracell.pmap`` against a real local cluster."""

from __future__ import annotations

import asyncio
import gc
import itertools
import os
import signal
import threading
import time

import psutil
import pytest
from IPython.core.error import UsageError

import paracell
from paracell.kernel_backend import (
    ClusterSession,
    ItemError,
    MapFailed,
    MapOptions,
    map_function,
)

from conftest import wait_until

pytestmark = pytest.mark.cluster


def pmap(ip, line: str):
    return ip.run_line_magic("pmap", line)


def define(ip, code: str) -> None:
    result = ip.run_cell(code)
    result.raise_error()


def test_results_come_back_in_input_order(ip, shared_cluster):
    define(
        ip, "def simulate(p, steps=1):\n    return p * steps\nparams = list(range(50))"
    )
    assert pmap(ip, "--no-progress simulate(p, steps=100) for p in params") == [
        p * 100 for p in range(50)
    ]


def test_several_for_clauses_ifs_and_tuple_targets(ip, shared_cluster):
    define(
        ip,
        "models = ['a', 'bb', 'ccc']\nfolds = [1, 2]\n"
        "def ok(m):\n    return m != 'bb'\n"
        "def score(m, f):\n    return len(m) * f\n"
        "pairs = [(1, (2, 3)), (4, (5, 6))]",
    )
    expected = [len(m) * f for m in ["a", "bb", "ccc"] for f in [1, 2] if m != "bb"]
    got = pmap(
        ip, "--no-progress [score(m, f) for m in models for f in folds if ok(m)]"
    )
    assert got == expected
    assert pmap(ip, "--no-progress a + b * c for a, (b, c) in pairs") == [7, 34]


def test_modules_functions_closures_classes_and_data_travel(ip, shared_cluster):
    define(
        ip,
        """
import numpy as np
from math import sqrt
scale = 3.0
def helper(x):
    return sqrt(x) * scale
def outer(x):
    return helper(x) + np.float64(1)
def make_adder(k):
    def add(x):
        return x + k
    return add
add5 = make_adder(5)
square = lambda v: v * v
class Point:
    def __init__(self, x):
        self.x = x
    def norm(self):
        return abs(self.x) * scale
""",
    )
    got = pmap(
        ip,
        "--no-progress (outer(x), add5(x), square(x), Point(-x).norm(), np.pi > 3)"
        " for x in [4.0, 9.0]",
    )
    assert got == [(7.0, 9.0, 16.0, 12.0, True), (10.0, 14.0, 81.0, 27.0, True)]


def test_a_large_global_crosses_to_each_engine_once(ip, shared_cluster):
    define(ip, "import numpy as np\nbig = np.ones(2_000_000)")  # 16 MB
    shipper = shared_cluster.shipper

    def moved() -> int:
        # through the controller, or once into shared memory for local engines
        return shipper.bytes_sent + shipper.bytes_shared

    before = moved()
    assert pmap(ip, "--no-progress float(big[:i].sum()) for i in range(40)") == [
        float(i) for i in range(40)
    ]
    first = moved() - before
    engines = len(shared_cluster.client.ids)
    assert 16_000_000 <= first < 16_000_000 * engines + 1_000_000

    pmap(ip, "--no-progress float(big[:i].sum()) for i in range(40)")
    assert moved() - before == first, "unchanged data is not re-sent"

    define(ip, "big[0] = 5.0")
    assert pmap(ip, "--no-progress float(big[0]) for _ in range(4)") == [5.0] * 4
    assert moved() - before >= 2 * first, "a changed array is sent again"


def test_names_the_notebook_lacks_come_from_the_engines(ip, shared_cluster):
    shared_cluster.client[:].execute("engine_only = 10", block=True)
    assert pmap(ip, "--no-progress engine_only + x for x in range(3)") == [10, 11, 12]


# an item drawing from each of the three sources a seeded map seeds
DRAW = (
    "import random, numpy as np, paracell\n"
    "def draw(i):\n"
    "    return (i, random.random(), float(np.random.rand()),"
    " float(paracell.rng().random()))"
)


def test_seeded_results_match_any_engine_count_chunking_order_and_local(
    ip, shared_cluster
):
    define(ip, DRAW)
    line = "--no-progress --seed 7 {} draw(i) for i in range(60)"
    reference = pmap(ip, line.format("--local"))
    assert pmap(ip, line.format("")) == reference
    assert pmap(ip, line.format("--chunksize 1")) == reference
    assert pmap(ip, line.format("--chunksize 13")) == reference
    assert sorted(pmap(ip, line.format("--unordered"))) == reference
    assert pmap(ip, line.format("--targets 0")) == reference
    # a third engine changes nothing
    three = ClusterSession()
    three.start(3)
    try:
        job = map_function(
            three,
            ip.user_ns["draw"],
            range(60),
            MapOptions(seed=7),
        )
        assert job.result() == reference
    finally:
        three.stop()
    # and a different seed changes everything
    assert pmap(ip, line.format("--seed 8"))[5] != reference[5]


def test_seeded_items_draw_from_their_own_seed_sequences_in_long_chunks(
    ip, shared_cluster
):
    """Item i of a ``--seed S`` map draws from ``SeedSequence(S, spawn_key=(i,))``
    (its children for ``random`` and ``numpy.random``), however long its
    chunk: long chunks compute their items' seeds together."""
    import random

    import numpy as np

    from paracell.kernel_backend._seeding import (
        clear_current,
        item_seed_sequence,
        seeded,
    )

    define(ip, DRAW)
    expected = []
    for i in range(100):
        with seeded(item_seed_sequence(5, i)) as generator:
            expected.append(
                (i, random.random(), float(np.random.rand()), float(generator.random()))
            )
    clear_current()
    for chunks in ("--chunksize 50", "--chunksize 3", ""):
        line = f"--no-progress --seed 5 {chunks} draw(i) for i in range(100)"
        assert pmap(ip, line) == expected, chunks


def test_unseeded_items_still_get_independent_streams(ip, shared_cluster):
    define(ip, "import numpy as np")
    draws = pmap(
        ip, "--no-progress --chunksize 1 float(np.random.rand()) for _ in range(40)"
    )
    assert len(set(draws)) == 40


def test_local_runs_here_and_leaves_the_notebook_random_state_alone(ip, shared_cluster):
    define(
        ip,
        "import random, os\nrandom.seed(1)\nexpected = random.random()\nrandom.seed(1)",
    )
    pids = pmap(ip, "--no-progress --local --seed 3 os.getpid() for _ in range(5)")
    assert set(pids) == {os.getpid()}
    assert ip.user_ns["random"].random() == ip.user_ns["expected"]


def test_an_item_error_names_the_item_and_engine_and_keeps_results(ip, shared_cluster):
    define(
        ip,
        "def fragile(x):\n"
        "    if x == 13:\n"
        "        raise ValueError(f'bad input {x}')\n"
        "    return x",
    )
    with pytest.raises(ItemError) as info:
        pmap(ip, "--no-progress --chunksize 5 fragile(x) for x in range(40)")
    err = info.value
    assert err.index == 13
    assert err.input == 13
    assert err.engine in shared_cluster.client.ids
    assert "ValueError: bad input 13" in str(err)
    # the user's code, not paracell's, in the remote traceback
    assert "raise ValueError(f'bad input {x}')" in err.remote_traceback
    assert "in fragile" in err.remote_traceback
    assert "kernel_backend" not in err.remote_traceback
    assert "_mapjob.py" not in "".join(err._render_traceback_())
    assert all(err.partial[i] == i for i in err.partial)
    assert {10, 11, 12} <= set(err.partial)  # its own chunk, up to the failure
    assert 13 not in err.partial
    # the cluster is free at once for the next map
    assert pmap(ip, "--no-progress x for x in range(3)") == [0, 1, 2]


def test_collect_and_skip_keep_going_past_errors(ip, shared_cluster):
    collected = pmap(
        ip, "--no-progress --on-error collect 1 / (x - 2) for x in range(4)"
    )
    assert collected[:2] == [-0.5, -1.0]
    assert isinstance(collected[2], ZeroDivisionError)
    assert collected[3] == 1.0
    assert pmap(ip, "--no-progress --on-error skip 1 / (x - 2) for x in range(4)") == [
        -0.5,
        -1.0,
        1.0,
    ]


def test_an_item_over_its_timeout_is_reported_as_a_timeout(ip, shared_cluster):
    define(ip, "import time")
    with pytest.raises(ItemError) as info:
        pmap(ip, "--no-progress --timeout 0.5 time.sleep(s) for s in [0.01, 5, 0.01]")
    assert info.value.timed_out
    assert info.value.index == 1
    assert "timeout of 0.5 s" in str(info.value)


def test_a_killed_engine_loses_nothing():
    session = ClusterSession()
    session.start(2)
    try:
        victim = session.status().engines[1].pid

        def kill_soon() -> None:
            time.sleep(1.0)
            os.kill(victim, signal.SIGKILL)

        threading.Thread(target=kill_soon).start()
        job = map_function(
            session,
            _slow_square,
            range(30),
            MapOptions(chunksize=1, retries=3),
        )
        assert job.result() == [x * x for x in range(30)]
        assert victim not in {
            r.pid for r in session.status().engines if r.state != "dead"
        }
    finally:
        session.stop()


def test_without_retries_a_dead_engine_fails_the_map_and_keeps_results():
    session = ClusterSession()
    session.start(2)
    try:
        victim = session.status().engines[0].pid
        job = map_function(
            session,
            _slow_square,
            range(40),
            MapOptions(chunksize=1, retries=0),
            block=False,
        )
        # killed while it runs the map's chunks (not before the map started)
        assert wait_until(lambda: job.progress.done >= 2, 60)
        os.kill(victim, signal.SIGKILL)
        with pytest.raises(MapFailed, match="died while running items") as info:
            job.result()
        assert len(info.value.partial) >= 2
        assert all(v == i * i for i, v in info.value.partial.items())
    finally:
        session.stop()


def _slow_square(x):
    import time as _time

    _time.sleep(0.1)
    return x * x


def test_async_returns_a_future_that_can_be_awaited_and_cancelled(ip, shared_cluster):
    define(ip, "import time")
    tic = time.monotonic()
    job = pmap(ip, "--async time.sleep(0.2) or x for x in range(10)")
    assert time.monotonic() - tic < 5
    assert isinstance(job, paracell.MapJob)
    called = []
    job.add_done_callback(lambda f: called.append(f.result()))

    async def wait():
        return await job

    assert asyncio.run(wait()) == list(range(10))
    assert called == [list(range(10))]
    assert repr(job).startswith("pmap: 10/10 done in")

    slow = pmap(ip, "--async time.sleep(1) for _ in range(40)")
    time.sleep(0.5)
    assert slow.cancel()
    assert slow.cancelled()
    slow._thread.join(timeout=10)
    tic = time.monotonic()
    assert pmap(ip, "--no-progress x for x in range(4)") == [0, 1, 2, 3]
    assert time.monotonic() - tic < 5, (
        "the next map does not queue behind cancelled work"
    )


def test_progress_reported_inside_items_arrives_while_they_run(ip, shared_cluster):
    define(
        ip,
        "import time, paracell\n"
        "def stepper(n):\n"
        "    for k in range(n):\n"
        "        time.sleep(0.05)\n"
        "        paracell.progress(k + 1, n)\n"
        "    return n",
    )
    seen = []
    job = pmap(ip, "--async --chunksize 1 stepper(20) for _ in range(2)")
    job.subscribe(lambda event: seen.append(event.running_fraction))
    assert job.result() == [20, 20]
    assert any(0 < p < 2 for p in seen)


def test_generators_are_consumed_lazily(ip, shared_cluster):
    define(
        ip,
        "pulled = 0\n"
        "def source(n):\n"
        "    global pulled\n"
        "    for i in range(n):\n"
        "        pulled += 1\n"
        "        yield i\n"
        "import time",
    )
    ahead = []
    job = pmap(ip, "--async time.sleep(0.002) or i for i in source(3000)")
    job.subscribe(lambda event: ahead.append(ip.user_ns["pulled"] - event.done))
    assert job.result() == list(range(3000))
    assert max(ahead) < 1500


def test_the_progress_line_ends_at_n_of_n(ip, shared_cluster, capsys):
    pmap(ip, "x for x in range(25)")
    out = capsys.readouterr().out
    assert out.rstrip().split("\r")[-1].startswith("pmap: [####################] 25/25")


def test_two_hundred_maps_do_not_grow_memory(ip, shared_cluster):
    client = shared_cluster.client
    for _ in range(20):
        pmap(ip, "--no-progress x * 2 for x in range(50)")
    gc.collect()
    rss = psutil.Process().memory_info().rss
    cached = len(client.results) + len(client.metadata)
    for _ in range(200):
        pmap(ip, "--no-progress x * 2 for x in range(50)")
    gc.collect()
    assert psutil.Process().memory_info().rss - rss < 8 * 2**20
    assert len(client.results) + len(client.metadata) <= cached


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("", "%pmap needs a comprehension"),
        ("f(x)", "needs a comprehension with a 'for' clause"),
        ("f(x for x in", "could not parse the comprehension"),
        ("--frob x for x in range(3)", "unrecognized arguments: --frob"),
        ("--chunksize 0 x for x in range(3)", "--chunksize must be 'auto' or a whole"),
        ("--chunksize -4 x for x in range(3)", "--chunksize must be 'auto' or a whole"),
        ("--on-error maybe x for x in range(3)", "--on-error must be raise, collect"),
        ("--targets 99 x for x in range(3)", "--targets names engine 99"),
        ("--targets zero x for x in range(3)", "must be engine ids"),
        ("--seed -1 x for x in range(3)", "--seed must be a non-negative integer"),
        ("never_defined(x) for x in range(3)", "name 'never_defined' is not defined"),
        ("x for x in not_a_name", "name 'not_a_name' is not defined"),
    ],
)
def test_mistakes_are_one_line_usage_errors(ip, shared_cluster, line, message):
    with pytest.raises(UsageError) as info:
        pmap(ip, line)
    assert message in str(info.value)
    assert "\n" not in str(info.value)


def test_something_that_cannot_be_shipped_is_named(ip, shared_cluster):
    define(ip, "import threading\nguard = threading.Lock()")
    with pytest.raises(UsageError, match="cannot ship 'guard' to the engines"):
        pmap(ip, "(guard, x) for x in range(2)")


def test_the_python_twin_maps_a_function(ip, shared_cluster):
    define(ip, "def cube(x):\n    return x ** 3")
    assert paracell.pmap(ip.user_ns["cube"], range(10), progress=False) == [
        x**3 for x in range(10)
    ]
    assert paracell.pmap(abs, [-1, -2], progress=False) == [1, 2]


def test_modules_on_the_notebooks_path_import_on_the_engines(
    shared_cluster, tmp_path, monkeypatch
):
    (tmp_path / "notebook_helpers.py").write_text(
        "import math\nSCALE = 3\n\ndef scaled_root(x):\n    return math.sqrt(x) * SCALE\n"
        "\nclass Box:\n    def __init__(self, v):\n        self.v = v\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    import functools

    import notebook_helpers

    assert paracell.pmap(notebook_helpers.scaled_root, [1, 4, 9], progress=False) == [
        3.0,
        6.0,
        9.0,
    ]
    # instances of its classes and partials of its functions, both ways
    boxes = paracell.pmap(
        functools.partial(notebook_helpers.Box), [1, 2], progress=False
    )
    assert [type(b) for b in boxes] == [notebook_helpers.Box] * 2
    assert paracell.pmap(lambda b: b.v * 10, boxes, progress=False) == [10, 20]
    for eid in shared_cluster.engine_ids():
        assert (
            "notebook_helpers" not in shared_cluster.shipper._imports._unimportable[eid]
        )


def test_functions_of_modules_the_engines_cannot_import_travel_by_value(
    shared_cluster, tmp_path, monkeypatch
):
    folder = tmp_path / "gone"
    folder.mkdir()
    (folder / "vanished_helpers.py").write_text(
        "import math\nSCALE = 3\n\ndef scaled_root(x):\n    return math.sqrt(x) * SCALE\n"
    )
    monkeypatch.syspath_prepend(str(folder))
    import vanished_helpers

    # imported here, then its folder is gone: the engines cannot import it
    (folder / "vanished_helpers.py").unlink()
    folder.rmdir()
    assert paracell.pmap(vanished_helpers.scaled_root, [1, 4, 9], progress=False) == [
        3.0,
        6.0,
        9.0,
    ]
    # cloudpickle's global registry is left as it was
    import cloudpickle

    assert "vanished_helpers" not in cloudpickle.list_registry_pickle_by_value()
    # the engines are not asked again: what they could not import is known
    for eid in shared_cluster.engine_ids():
        assert "vanished_helpers" in shared_cluster.shipper._imports._unimportable[eid]
    assert paracell.pmap(vanished_helpers.scaled_root, [16], progress=False) == [12.0]


def test_trivial_items_of_a_range_travel_in_a_few_chunks(ip, shared_cluster):
    define(ip, "def double(x):\n    return x * 2")
    job = paracell.pmap(
        ip.user_ns["double"], range(200_000), progress=False, block=False
    )
    assert job.result() == [x * 2 for x in range(200_000)]
    # one time-boxed probe per engine holds its half; on a busy machine a
    # probe may stop early and what it did not run goes out again
    assert len(job.chunks) <= 8
    spans = sorted((c.first, c.count) for c in job.chunks)
    assert sum(count for _, count in spans) == 200_000
    assert all(a + n == b for (a, n), (b, _) in itertools.pairwise(spans))
    # the %pmap form over a range: the same path, items not wrapped in tuples
    assert pmap(ip, "--no-progress x * 2 for x in range(100_000)") == [
        x * 2 for x in range(100_000)
    ]


def test_a_time_boxed_probe_of_slow_items_stops_and_loses_nothing(ip, shared_cluster):
    define(
        ip,
        "import time, random\n"
        "def slow(i):\n"
        "    time.sleep(0.005)\n"
        "    return (i, random.random())",
    )
    job = paracell.pmap(
        ip.user_ns["slow"], range(200), seed=3, progress=False, block=False
    )
    results = job.result()
    # the probes stopped after ~50 ms of items; the rest went out again
    first_chunks = {}
    for chunk in sorted(job.chunks, key=lambda c: c.started):
        first_chunks.setdefault(chunk.engine, chunk)
    assert all(c.count < 100 for c in first_chunks.values())
    assert [i for i, _ in results] == list(range(200))
    # seeded by index alone: the same as any other chunking, and as here
    reference = paracell.pmap(
        ip.user_ns["slow"], list(range(200)), seed=3, progress=False, chunksize=7
    )
    assert results == reference
    assert results == paracell.pmap(
        ip.user_ns["slow"], range(200), seed=3, progress=False, local=True
    )


def test_a_chunk_runs_items_in_order_and_names_the_failed_one():
    from paracell.kernel_backend._engine import TaskSpec
    from paracell.kernel_backend._enginemap import run_chunk

    base = {"__builtins__": __builtins__}
    spec = TaskSpec(key="unit-ok", element="x * 2", arguments=("x",))
    out = run_chunk(spec, 10, range(5), False, dict(base))
    assert out.values == [0, 2, 4, 6, 8]
    assert not out.failures and not out.stopped and not out.interrupted
    # tuples of arguments, as %pmap sends with several targets
    spec = TaskSpec(key="unit-star", element="a + b", arguments=("a", "b"))
    assert run_chunk(spec, 0, [(1, 2), (3, 4)], True, dict(base)).values == [3, 7]
    # with and without stopping at the first failure
    for stop, count in ((False, 6), (True, 4)):
        spec = TaskSpec(
            key=f"unit-fail-{stop}",
            element="1 // (x - 3)",
            arguments=("x",),
            stop_on_error=stop,
        )
        out = run_chunk(spec, 100, range(6), False, dict(base))
        assert len(out.values) == count
        assert out.values[3] is None
        assert [f.index for f in out.failures] == [103]
        assert out.failures[0].type_name == "ZeroDivisionError"
        assert out.values[:3] == [1 // (x - 3) for x in range(3)]


def _sleeping_chunk(
    key: str, seconds: float, timeout: float | None, first: float | None = None
):
    """``run_chunk`` for items that sleep ``seconds`` each (the first item
    ``first``, if given), and its namespace."""
    from paracell.kernel_backend._engine import TaskSpec
    from paracell.kernel_backend._enginemap import run_chunk

    nap = str(seconds) if first is None else f"({first} if x == 0 else {seconds})"
    spec = TaskSpec(
        key=f"{key}-{timeout}",
        element=f"time.sleep({nap}) or x",
        arguments=("x",),
        timeout=timeout,
    )
    ns = {"__builtins__": __builtins__, "time": time}
    return lambda items, budget: run_chunk(spec, 0, items, False, ns, budget=budget)


@pytest.mark.parametrize("timeout", [None, 5.0])
def test_a_chunk_with_a_budget_stops_starting_items(timeout):
    run = _sleeping_chunk("unit-budget", 0.01, timeout)
    out = run(range(50), 0.05)
    assert out.stopped
    assert 1 <= len(out.values) < 50
    assert out.values == list(range(len(out.values)))
    # a budget the items fit in changes nothing
    out = run(range(3), 5.0)
    assert out.values == [0, 1, 2] and not out.stopped


@pytest.mark.parametrize("timeout", [None, 5.0])
def test_a_chunk_past_its_budget_runs_a_short_rest_instead_of_sending_it_back(
    timeout,
):
    from paracell.kernel_backend._enginemap import FINISH_WITHIN

    run = _sleeping_chunk("unit-short-rest", 0.02, timeout)
    # the budget runs out after an item or two; the rest is about 0.1 s
    assert FINISH_WITHIN > 5 * 0.02
    out = run(range(6), 0.01)
    assert out.values == list(range(6)) and not out.stopped


@pytest.mark.parametrize("timeout", [None, 5.0])
def test_a_slow_first_item_does_not_make_a_probe_send_a_short_rest_back(timeout):
    from paracell.kernel_backend._enginemap import FINISH_WITHIN

    # the first item pays a one-off 0.3 s; the 8 after it take 0.08 s in all
    run = _sleeping_chunk("unit-slow-first", 0.01, timeout, first=0.3)
    assert FINISH_WITHIN > 8 * 0.01 + 0.03
    out = run(range(9), 0.05)
    assert out.values == list(range(9)) and not out.stopped
    # items that stay slow still stop the probe
    run = _sleeping_chunk("unit-slow-all", 0.1, timeout)
    assert run(range(9), 0.05).stopped


def test_a_second_map_of_trivial_items_wakes_only_the_engines_it_needs(
    ip, shared_cluster
):
    define(ip, "def plus_one(x):\n    return x + 1")
    plus_one = ip.user_ns["plus_one"]
    expected = list(range(1, 1001))
    first = map_function(shared_cluster, plus_one, range(1000), MapOptions())
    assert first.result() == expected
    # nothing known yet: every engine gets its share
    assert {c.engine for c in first.chunks} == set(shared_cluster.client.ids)
    second = map_function(shared_cluster, plus_one, range(1000), MapOptions())
    assert second.result() == expected
    # a few ms of work in all: one engine does it, in one chunk
    assert len(second.chunks) == 1


def _stores(digest: str) -> bool:
    """On an engine: whether its store of shipped objects holds ``digest``."""
    from paracell.kernel_backend import _enginenames

    return digest in _enginenames._STORE


def test_an_engine_left_out_of_a_shipment_drops_a_dropped_name_with_its_next(
    ip, shared_cluster
):
    define(
        ip,
        # an object the kernel can follow weakly (a dict cannot be)
        "import numpy as np\nleft_out = np.arange(1000)\n"
        "def uses_left_out(x):\n    return len(left_out) + x",
    )
    assert pmap(ip, "uses_left_out(x) for x in range(4)") == [1000, 1001, 1002, 1003]
    held = shared_cluster.shipper._held
    digest = held[0]["left_out"]
    assert held[1]["left_out"] == digest
    define(ip, "del left_out, uses_left_out\nleft_in = 5")
    assert pmap(ip, "--targets 0 left_in + x for x in range(2)") == [5, 6]
    client = shared_cluster.client
    assert client[0].apply_sync(_stores, digest) is False, "dropped by engine 0"
    assert client[1].apply_sync(_stores, digest) is True, "engine 1 was not sent to"
    assert pmap(ip, "--targets 1 left_in + x for x in range(2)") == [5, 6]
    assert client[1].apply_sync(_stores, digest) is False, "dropped with its next"
