"""Top-level ``await`` (and ``async for`` / ``async with``) in ``%%parallel``
cells, as in a notebook cell: on an engine, whose own event loop is running
the request, the cell's coroutine runs in an event loop of its own; an
interrupt cancels it."""

from __future__ import annotations

import _thread
import asyncio
import threading
import time
from typing import Any

import pytest

from paracell.kernel_backend._engine import TaskSpec
from paracell.kernel_backend._engineawait import compile_code, run_code
from paracell.kernel_backend._enginecell import run_cell
from paracell.kernel_backend._names import check_syntax

GATHER = (
    "import asyncio\n"
    "async def fetch(u):\n"
    "    await asyncio.sleep(0.01)\n"
    "    return len(u)\n"
    "sizes = await asyncio.gather(*(fetch(u) for u in ['a', 'bb', 'ccc']))\n"
)


def test_a_cell_that_awaits_compiles_and_plain_code_runs_as_before() -> None:
    check_syntax("\n" + GATHER, "<cell>")  # no SyntaxError
    with pytest.raises(SyntaxError, match="never closed"):
        check_syntax("\nawait (\n", "<cell>")
    ns: dict[str, Any] = {}
    assert run_code(compile_code("x = 2", "<cell>", "exec"), ns) is None
    assert run_code(compile_code("x * 21", "<cell>", "eval"), ns) == 42


def test_awaiting_code_runs_to_its_end_inside_a_running_event_loop() -> None:
    """An engine runs each request from inside its own running loop, where
    ``asyncio.run`` would refuse."""
    ns: dict[str, Any] = {}

    async def engine() -> Any:
        run_code(compile_code(GATHER, "<cell>", "exec"), ns)
        code = compile_code("await asyncio.sleep(0, result=sum(sizes))", "<c>", "eval")
        return run_code(code, ns)

    assert asyncio.run(engine()) == 6
    assert ns["sizes"] == [1, 2, 3]


def test_cells_that_await_share_the_engines_event_loop_as_notebook_cells_do() -> None:
    """What one cell starts or opens on the loop (a task, a client session)
    serves the next, from whichever thread runs it."""
    ns: dict[str, Any] = {}
    for cell in (
        "import asyncio, threading\n"
        "event = asyncio.Event()\n"
        "waiter = asyncio.ensure_future(event.wait())\n"
        "first = (asyncio.get_running_loop(), threading.get_ident())\n"
        "await asyncio.sleep(0)\n",
        "event.set()\nawait waiter\n"
        "second = (asyncio.get_running_loop(), threading.get_ident())\n",
    ):
        run_code(compile_code(cell, "<cell>", "exec"), ns)
    assert ns["waiter"].done() and ns["waiter"].result() is True
    assert ns["first"][0] is ns["second"][0]


def test_a_loop_an_interrupted_coroutine_keeps_running_is_not_used_again() -> None:
    """A second interrupt during the first one's clean-up can leave a cell's
    coroutine running; the next cell gets a loop that is free."""
    from paracell.kernel_backend import _engineawait

    stuck = _engineawait._engine_loop()
    runner = threading.Thread(target=stuck.run_forever, daemon=True)
    runner.start()
    try:
        while not stuck.is_running():
            time.sleep(0.001)
        code = compile_code("await asyncio.sleep(0, result=5)", "<cell>", "eval")
        assert run_code(code, {"asyncio": asyncio}) == 5
        assert _engineawait._engine_loop() is not stuck
    finally:
        stuck.call_soon_threadsafe(stuck.stop)
        runner.join(5)


def test_coroutines_run_from_several_threads_at_once_each_run_to_their_end() -> None:
    """Background maps in the notebook run their async items from threads of
    their own, at the same time: none waits on another's loop or breaks it."""
    results: list[Any] = []
    loops: list[Any] = []
    code = "await asyncio.sleep(0.2, result=(n, asyncio.get_running_loop()))"

    def run(n: int) -> None:
        value, loop = run_code(
            compile_code(code, "<c>", "eval"), {"asyncio": asyncio, "n": n}
        )
        results.append(value)
        loops.append(loop)

    threads = [threading.Thread(target=run, args=(n,)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    assert sorted(results) == [0, 1, 2, 3]
    assert len({id(loop) for loop in loops}) == 4  # a loop each, not one shared


def test_an_error_in_an_awaited_coroutine_is_the_cells_with_its_frames() -> None:
    source = (
        "\nimport asyncio\n"
        "async def bad():\n"
        "    await asyncio.sleep(0)\n"
        "    return 1 / 0\n"
        "kept = 1\n"
        "await bad()\n"
    )
    outcome = run_cell(TaskSpec(key="await-error"), source, "<cell-await>", ["kept"])
    assert outcome.failure is not None
    assert outcome.failure.type_name == "ZeroDivisionError"
    text = outcome.failure.traceback
    # the user's frames, from the cell's line down to the division
    assert text.index('"<cell-await>", line 7') < text.index("return 1 / 0")
    assert "asyncio" not in text.split('"<cell-await>", line 7')[0]
    assert "_engineawait" not in text and "base_events" not in text


def test_a_cell_that_awaits_sends_back_its_names_and_last_value() -> None:
    source = (
        "\n"
        + GATHER
        + (
            "async def count():\n"
            "    for i in range(3):\n"
            "        yield i\n"
            "counted = [i async for i in count()]\n"
            "sum(sizes)\n"
        )
    )
    outcome = run_cell(TaskSpec(key="await-ok"), source, "<c>", ["sizes", "counted"])
    assert outcome.failure is None
    import cloudpickle

    assert cloudpickle.loads(outcome.values["sizes"]) == [1, 2, 3]
    assert cloudpickle.loads(outcome.values["counted"]) == [0, 1, 2]
    assert outcome.value is not None and cloudpickle.loads(outcome.value) == 6


@pytest.mark.parametrize(
    ("wait", "seen"),
    [
        ("await asyncio.sleep(0.05)", "CancelledError"),
        ("time.sleep(0.05)", "KeyboardInterrupt"),
    ],
    ids=["awaits", "blocks"],
)
def test_an_interrupt_stops_the_cells_coroutine(
    wait: str, seen: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The interrupt cancels the coroutine (one that awaits), or interrupts
    its thread (one that blocks without awaiting, between its calls)."""
    from paracell.kernel_backend import _engineawait

    interrupted: list[int] = []
    forward = _engineawait._interrupt_thread

    def interrupt_thread(ident: int) -> None:
        interrupted.append(ident)
        forward(ident)

    monkeypatch.setattr(_engineawait, "_interrupt_thread", interrupt_thread)
    stopped: list[str] = []
    source = (
        "import asyncio, time\n"
        "await asyncio.sleep(0)\n"
        "try:\n"
        "    for _ in range(400):\n"
        f"        {wait}\n"
        "except BaseException as err:\n"
        "    stopped.append(type(err).__name__)\n"
        "    raise\n"
    )
    ns: dict[str, Any] = {"stopped": stopped}
    code = compile_code(source, "<cell>", "exec")
    timer = threading.Timer(0.3, _thread.interrupt_main)
    timer.start()
    tic = time.monotonic()
    with pytest.raises(KeyboardInterrupt):
        run_code(code, ns)
    assert time.monotonic() - tic < 5  # not the cell's 20 s
    for _ in range(200):
        if stopped:
            break
        time.sleep(0.01)
    assert stopped == [seen], "the cell's coroutine went on after the interrupt"
    # cancelled, its thread is left alone; only a blocking one needs more
    assert bool(interrupted) == (seen == "KeyboardInterrupt")


# -- on a real cluster ----------------------------------------------------------


@pytest.mark.cluster
def test_a_parallel_cell_awaits_on_the_engine_and_its_names_come_back(
    ip: Any, shared_cluster: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    ip.user_ns["urls"] = ["a", "bb", "ccc"]
    ip.run_cell(
        "%%parallel --block\n"
        "import asyncio, contextlib, os\n"
        "async def fetch(u):\n"
        "    await asyncio.sleep(0.01)\n"
        "    print('fetched', u)\n"
        "    return len(u)\n"
        "@contextlib.asynccontextmanager\n"
        "async def opened():\n"
        "    yield 10\n"
        "async with opened() as base:\n"
        "    sizes = [base + s for s in await asyncio.gather(*map(fetch, urls))]\n"
        "engine_pid = os.getpid()\n"
    ).raise_error()
    assert ip.user_ns["sizes"] == [11, 12, 13]
    assert ip.user_ns["engine_pid"] != __import__("os").getpid()
    out = capsys.readouterr().out
    assert all(f"fetched {u}" in out for u in ("a", "bb", "ccc"))
    result = ip.run_cell(
        "%%parallel --block\nimport asyncio\nawait asyncio.sleep(0, result=len(urls))\n"
    )
    result.raise_error()
    assert result.result == 3


@pytest.mark.cluster
def test_awaiting_cells_run_on_every_engine_and_as_task_graphs(
    ip: Any, shared_cluster: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    ip.run_cell(
        "%%parallel --all\nimport asyncio\nawait asyncio.sleep(0)\nprint('set up')\n"
    ).raise_error()
    assert capsys.readouterr().out.count("set up") == len(shared_cluster.client.ids)
    ip.run_cell(
        "%%parallel --block --tasks\n"
        "import asyncio\n"
        "async def twice(v):\n"
        "    await asyncio.sleep(0.05)\n"
        "    return 2 * v\n"
        "a = await twice(1)\n"
        "b = await twice(2)\n"
        "c = a + b\n"
    ).raise_error()
    assert (ip.user_ns["a"], ip.user_ns["b"], ip.user_ns["c"]) == (2, 4, 6)


@pytest.mark.cluster
def test_cancelling_an_awaiting_job_stops_its_coroutine_on_the_engine(
    ip: Any, shared_cluster: Any, tmp_path: Any
) -> None:
    from paracell import parallel

    marker = tmp_path / "stopped"
    ns = {"marker": str(marker)}
    job = parallel(
        "import asyncio\n"
        "try:\n"
        "    await asyncio.sleep(60)\n"
        "finally:\n"
        "    open(marker, 'w').close()\n",
        namespace=ns,
        name="awaiting",
    )
    for _ in range(500):
        if job.state == "running":
            break
        time.sleep(0.01)
    time.sleep(0.3)  # under way on the engine
    job.cancel()
    for _ in range(500):
        if job.done() and marker.exists():
            break
        time.sleep(0.01)
    assert job.state == "cancelled"
    assert marker.exists(), "the coroutine was not cancelled on the engine"
    after = parallel("y = 1", block=True, namespace={}, name="after-awaiting")
    assert after is None


# -- maps of async functions ----------------------------------------------------

ASYNC_DEFS = (
    "import asyncio\n"
    "async def fetch(u):\n"
    "    await asyncio.sleep(0.01)\n"
    "    return len(u)\n"
    "async def fragile(x):\n"
    "    await asyncio.sleep(0)\n"
    "    if x == 2:\n"
    "        raise ValueError(f'bad input {x}')\n"
    "    return x\n"
)


def test_a_local_map_awaits_an_async_function_and_an_awaiting_element(ip: Any) -> None:
    ip.run_cell(ASYNC_DEFS + "urls = ['a', 'bb', 'ccc']\n").raise_error()
    for line in (
        "--local --no-progress await fetch(u) for u in urls",
        "--local --no-progress fetch(u) for u in urls",  # an async call: awaited
        "--local --no-progress [n async for n in _count(len(u))] for u in urls",
    ):
        if "_count" in line:
            ip.run_cell(
                "async def _count(n):\n    for i in range(n):\n        yield i\n"
            ).raise_error()
            expected: list[Any] = [[0], [0, 1], [0, 1, 2]]
        else:
            expected = [1, 2, 3]
        assert ip.run_line_magic("pmap", line) == expected, line
    from paracell import pmap

    fetch = ip.user_ns["fetch"]
    assert pmap(fetch, ["a", "bb"], local=True, progress=False) == [1, 2]


@pytest.mark.cluster
def test_a_map_of_an_async_function_awaits_each_item_on_the_engines(
    ip: Any, shared_cluster: Any
) -> None:
    from paracell import ItemError, pmap

    ip.run_cell(ASYNC_DEFS + "urls = ['a', 'bb', 'ccc'] * 4\n").raise_error()
    fetch = ip.user_ns["fetch"]
    assert pmap(fetch, ip.user_ns["urls"], progress=False) == [1, 2, 3] * 4
    assert ip.run_line_magic("pmap", "--no-progress await fetch(u) for u in urls") == (
        [1, 2, 3] * 4
    )
    with pytest.raises(ItemError) as info:
        ip.run_line_magic("pmap", "--no-progress fragile(x) for x in range(5)")
    err = info.value
    assert err.index == 2 and "ValueError: bad input 2" in str(err)
    # the user's code, not paracell's nor asyncio's, in the remote traceback
    assert "raise ValueError(f'bad input {x}')" in err.remote_traceback
    assert "in fragile" in err.remote_traceback
    assert "kernel_backend" not in err.remote_traceback
    assert "asyncio" not in err.remote_traceback.split("in fragile")[0]


@pytest.mark.cluster
def test_an_awaiting_item_over_its_timeout_is_cancelled_and_the_next_ones_run(
    ip: Any, shared_cluster: Any
) -> None:
    from paracell import ItemError

    ip.run_cell("import asyncio").raise_error()
    with pytest.raises(ItemError) as info:
        ip.run_line_magic(
            "pmap",
            "--no-progress --chunksize 3 --timeout 0.5"
            " await asyncio.sleep(s, result=s) for s in [0.01, 5, 0.01]",
        )
    assert info.value.timed_out and info.value.index == 1
    collected = ip.run_line_magic(
        "pmap",
        "--no-progress --chunksize 3 --timeout 0.5 --on-error collect"
        " await asyncio.sleep(s, result=s) for s in [0.01, 5, 0.02]",
    )
    assert collected[0] == 0.01 and collected[2] == 0.02  # the loop goes on


@pytest.mark.cluster
def test_an_async_call_the_element_does_not_await_fails_saying_to_await_it(
    ip: Any, shared_cluster: Any
) -> None:
    from paracell import ItemError

    ip.run_cell(
        ASYNC_DEFS + "class Client:\n    async def get(self, u):\n        return u\n"
        "client = Client()\n"
    ).raise_error()
    with pytest.raises(ItemError) as info:
        ip.run_line_magic("pmap", "--no-progress client.get(u) for u in 'ab'")
    assert "coroutine" in str(info.value)
    assert "await it in the element" in str(info.value)
    assert ip.run_line_magic(
        "pmap", "--no-progress await client.get(u) for u in 'ab'"
    ) == ["a", "b"]


@pytest.mark.cluster
def test_a_seeded_map_of_async_items_draws_as_the_local_run_does(
    ip: Any, shared_cluster: Any
) -> None:
    ip.run_cell(
        "import asyncio, random\n"
        "import paracell\n"
        "async def draw(i):\n"
        "    await asyncio.sleep(0)\n"
        "    return (random.random(), float(paracell.rng().random()))\n"
    ).raise_error()
    line = "--no-progress --seed 7 --chunksize 2 draw(i) for i in range(6)"
    on_engines = ip.run_line_magic("pmap", line)
    here = ip.run_line_magic("pmap", "--local " + line)
    assert on_engines == here
    assert len(set(on_engines)) == 6  # each item its own stream


# -- several async items at once: --concurrency ---------------------------------

PEAK = (
    "import asyncio\n"
    "state = {'now': 0, 'peak': 0}\n"
    "async def probe(i, pause=0.05):\n"
    "    state['now'] += 1\n"
    "    state['peak'] = max(state['peak'], state['now'])\n"
    "    try:\n"
    "        await asyncio.sleep(pause)\n"
    "    except asyncio.CancelledError:\n"
    "        state['cancelled'] = state.get('cancelled', 0) + 1\n"
    "        raise\n"
    "    print('item', i)\n"
    "    state['now'] -= 1\n"
    "    if i == 13:\n"
    "        raise ValueError('thirteen')\n"
    "    return (i, state['peak'])\n"
)


def _chunk_namespace() -> dict[str, Any]:
    ns: dict[str, Any] = {"__builtins__": __builtins__}
    exec(PEAK, ns)
    return ns


def test_a_chunk_runs_async_items_at_once_in_order_with_their_failures() -> None:
    from paracell.kernel_backend._enginemap import run_chunk

    for stop, count in ((False, 16), (True, 14)):
        spec = TaskSpec(
            key=f"unit-concurrent-{stop}",
            element="await probe(i)",
            arguments=("i",),
            concurrency=4,
            stop_on_error=stop,
        )
        out = run_chunk(spec, 0, range(16), False, _chunk_namespace())
        assert len(out.values) == count and not out.interrupted and not out.stopped
        assert [v[0] for v in out.values[:13]] == list(range(13))
        assert max(v[1] for v in out.values[:13]) == 4  # four at once, not more
        assert out.values[13] is None
        assert [f.index for f in out.failures] == [13]
        assert "ValueError: thirteen" in out.failures[0].traceback
        assert "in probe" in out.failures[0].traceback


def test_an_interrupted_concurrent_chunk_keeps_the_items_it_finished_in_order() -> None:
    from paracell.kernel_backend._enginemap import run_chunk

    spec = TaskSpec(
        key="unit-concurrent-interrupted",
        element="await probe(i, 0.05 if i < 6 else 30)",
        arguments=("i",),
        concurrency=3,
    )
    ns = _chunk_namespace()
    timer = threading.Timer(1.0, _thread.interrupt_main)
    timer.start()
    out = run_chunk(spec, 0, range(12), False, ns)
    assert out.interrupted
    assert [v[0] for v in out.values] == list(range(6))  # the finished prefix
    assert ns["state"]["cancelled"] == 3  # items 6-8, where they waited
    # nothing of it is left running in the loop: the next chunk runs alone
    spec = TaskSpec(
        key="unit-concurrent-after", element="await probe(i)", arguments=("i",)
    )
    ns["state"].update(now=0, peak=0)
    assert [v for v in run_chunk(spec, 0, range(2), False, ns).values] == [
        (0, 1),
        (1, 1),
    ]


def test_a_concurrent_chunk_with_a_budget_starts_no_item_past_it() -> None:
    from paracell.kernel_backend._enginemap import run_chunk

    spec = TaskSpec(
        key="unit-concurrent-budget",
        element="await probe(i, 0.1)",
        arguments=("i",),
        concurrency=2,
    )
    out = run_chunk(spec, 0, range(40), False, _chunk_namespace(), budget=0.05)
    assert out.stopped and 2 <= len(out.values) < 40
    assert [v[0] for v in out.values] == list(range(len(out.values)))


def test_concurrency_is_refused_for_an_element_that_does_not_await(ip: Any) -> None:
    from IPython.core.error import UsageError

    ip.run_cell(PEAK).raise_error()
    for line, problem in (
        ("--concurrency 4 i for i in range(3)", "neither awaits"),
        ("--concurrency 2 --seed 1 await probe(i) for i in range(3)", "--seed"),
        ("--concurrency 0 await probe(i) for i in range(3)", ">= 1"),
    ):
        with pytest.raises(UsageError, match=problem):
            ip.run_line_magic("pmap", line)


@pytest.mark.cluster
def test_a_map_with_concurrency_runs_that_many_items_at_once_on_each_engine(
    ip: Any, shared_cluster: Any
) -> None:
    from paracell import pmap

    ip.run_cell(PEAK).raise_error()
    one = ip.run_line_magic("pmap", "--no-progress probe(i) for i in range(12)")
    assert [v[0] for v in one] == list(range(12))
    assert max(v[1] for v in one) == 1  # one at a time without it
    job = ip.run_line_magic(
        "pmap", "--async --concurrency 6 await probe(i) for i in range(12)"
    )
    values = job.result()
    assert [v[0] for v in values] == list(range(12))
    assert max(v[1] for v in values) > 1
    # each line it printed is its own item's
    assert all(f"item {i}\n" in job.output(item=i) for i in range(12))
    assert "item 3" not in job.output(item=4)
    probe = ip.user_ns["probe"]
    values = pmap(probe, range(8), concurrency=4, progress=False)
    assert [v[0] for v in values] == list(range(8))


def test_a_concurrent_items_own_errors_are_its_failures_not_the_chunks() -> None:
    """A call that fails before awaiting, and a ``TimeoutError`` the item
    raises itself (under ``--timeout``), are that item's failures."""
    from paracell.kernel_backend._enginemap import run_chunk

    ns = _chunk_namespace()
    exec(
        "async def own_timeout(i):\n"
        "    await asyncio.sleep(0)\n"
        "    if i == 1:\n"
        "        raise TimeoutError('the service gave up')\n"
        "    return i\n",
        ns,
    )
    spec = TaskSpec(
        key="unit-concurrent-own",
        element="await own_timeout(i)",
        arguments=("i",),
        concurrency=2,
        timeout=30.0,
        stop_on_error=False,
    )
    out = run_chunk(spec, 0, range(3), False, ns)
    assert out.values == [0, None, 2]
    assert [(f.index, f.type_name) for f in out.failures] == [(1, "TimeoutError")]
    spec = TaskSpec(
        key="unit-concurrent-call",
        element="await probe(i, pause)",
        arguments=("i", "pause"),
        concurrency=2,
        stop_on_error=False,
    )
    # the second item has a value too many: the call fails before it awaits
    out = run_chunk(spec, 0, [(0, 0.0), (1, 0.0, 9), (2, 0.0)], True, ns)
    assert [v if v is None else v[0] for v in out.values] == [0, None, 2]
    assert [(f.index, f.type_name) for f in out.failures] == [(1, "TypeError")]
    assert not out.stopped
