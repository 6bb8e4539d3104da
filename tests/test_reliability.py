"""What must never go wrong, against a real local cluster: user tracebacks
whatever cloudpickle does to code, notebook classes both ways, engine counts
that no machine can place, jobs that always end, status that never hangs."""

from __future__ import annotations

import re

import pytest
from IPython.core.error import UsageError

import paracell
from paracell.kernel_backend import ItemError

pytestmark = pytest.mark.cluster


def define(ip, code: str) -> None:
    ip.run_cell(code).raise_error()


def test_a_remote_traceback_shows_the_notebook_lines_of_the_failing_function(
    ip, shared_cluster
):
    define(
        ip,
        "def fragile(x):\n"
        "    if x == 2:\n"
        "        raise ValueError('two is not allowed')  # the user's line\n"
        "    return x",
    )
    with pytest.raises(ItemError) as info:
        ip.run_line_magic("pmap", "--no-progress fragile(x) for x in range(4)")
    text = info.value.remote_traceback
    assert "raise ValueError('two is not allowed')  # the user's line" in text
    assert "<dynamic-code>" not in text


def test_instances_of_a_notebook_class_travel_as_inputs_and_results(ip, shared_cluster):
    define(
        ip,
        "class Point:\n"
        "    def __init__(self, x, y):\n"
        "        self.x, self.y = x, y\n"
        "    def norm(self):\n"
        "        return (self.x ** 2 + self.y ** 2) ** 0.5\n"
        "    def shifted(self):\n"
        "        return Point(self.x + 1, self.y)\n"
        "pts = [Point(3 * i, 4 * i) for i in range(6)]",
    )
    norms = ip.run_line_magic("pmap", "--no-progress p.norm() for p in pts")
    assert norms == [5.0 * i for i in range(6)]
    moved = ip.run_line_magic("pmap", "--no-progress p.shifted() for p in pts")
    point = ip.user_ns["Point"]
    assert all(type(p) is point for p in moved)
    assert [p.x for p in moved] == [3 * i + 1 for i in range(6)]
    # and through the Python twin, as results of a lambda
    made = paracell.pmap(lambda i: point(i, 0), range(3), progress=False)
    assert [(type(p) is point, p.x) for p in made] == [(True, i) for i in range(3)]


@pytest.fixture
def fenced_launch(monkeypatch):
    """Any attempt to launch a controller or engines fails the test."""
    import ipyparallel

    from paracell.kernel_backend import _session

    def launched(*args, **kwargs):
        raise AssertionError("a launch was attempted")

    monkeypatch.setattr(_session, "_make_cluster", launched)
    monkeypatch.setattr(ipyparallel.Cluster, "start_engines", launched)
    monkeypatch.setattr(ipyparallel.Cluster, "start_controller", launched)


@pytest.mark.parametrize(
    "line",
    [
        "start -n 99999999999999999999",
        "start -n 100000000",
        "start -n 5000 --launcher slurm",
    ],
)
def test_an_absurd_engine_count_is_refused_before_anything_starts(
    ip, no_other_cluster, fenced_launch, line
):
    from IPython.core.error import UsageError

    with pytest.raises(UsageError) as info:
        ip.run_line_magic("cluster", line)
    message = str(info.value)
    assert "at most" in message
    assert "\n" not in message


def test_scaling_past_the_limit_is_refused_and_force_is_offered(
    ip, shared_cluster, fenced_launch
):
    from IPython.core.error import UsageError

    from paracell.kernel_backend._limits import engine_limit

    limit, _ = engine_limit("local")
    with pytest.raises(UsageError, match="--force"):
        ip.run_line_magic("cluster", f"scale {limit + 1}")
    with pytest.raises(UsageError, match="at most"):
        ip.run_line_magic("cluster", "scale 99999999999999999999")
    with pytest.raises(UsageError, match="at most"):
        ip.run_line_magic("cluster", "scale 99999999999999999999 --force")
    # nothing changed, nothing was launched
    assert shared_cluster.status().live_engines == 2
    with pytest.raises(paracell.kernel_backend.InvalidRequest):
        paracell.scale(limit + 1)


def test_the_local_limit_follows_cores_and_memory(monkeypatch):
    from paracell.kernel_backend import _limits

    monkeypatch.setattr(_limits.os, "cpu_count", lambda: 4)
    limit, why = _limits.engine_limit("local")
    assert (limit <= 16 and "cores" in why) or "memory" in why

    class Tight:
        available = 3 * 150 * 2**20

    monkeypatch.setattr(_limits.psutil, "virtual_memory", lambda: Tight)
    assert _limits.engine_limit("local")[0] == 3
    assert "memory" in _limits.engine_limit("local")[1]


@pytest.mark.kernel
def test_a_killed_kernel_leaves_no_cluster_behind(no_other_cluster):
    import glob
    import json
    import os
    import signal

    from _kernel import Kernel
    from conftest import cluster_processes, wait_until

    kernel = Kernel()
    try:
        assert kernel.run("%load_ext paracell").ok
        assert kernel.run("%cluster start -n 2").ok
        where = kernel.run(
            "import json, os\n"
            "from paracell.kernel_backend import default_session\n"
            "_c = default_session()._cluster\n"
            "print(json.dumps([os.path.join(_c.profile_dir, 'security'),"
            " _c.cluster_id]))"
        )
        security, cluster_id = json.loads(where.stdout)
        started = set(cluster_processes())
        assert len(started) >= 3  # a controller and two engines, at least
        assert glob.glob(os.path.join(security, f"*{cluster_id}*.json"))
        # an array shared with the engines through /dev/shm
        assert kernel.run(
            "import numpy as np\nbig = np.ones(300_000)\n"
            "%pmap --no-progress float(big[k]) for k in range(2)"
        ).ok
        shared = f"/dev/shm/paracell-{kernel.pid}-*"
        assert glob.glob(shared)
        os.kill(kernel.pid, signal.SIGKILL)
        assert wait_until(lambda: not set(cluster_processes()) & started, 15), (
            f"left running: {set(cluster_processes()) & started}"
        )
        # no ghost for a new kernel's %cluster connect
        assert wait_until(
            lambda: not glob.glob(os.path.join(security, f"*{cluster_id}*.json")), 5
        )
        assert wait_until(lambda: not glob.glob(shared), 5), glob.glob(shared)
    finally:
        kernel.client.stop_channels()
        kernel.manager.cleanup_resources()


@pytest.mark.kernel
def test_a_kernel_killed_while_its_cluster_starts_leaves_nothing_behind(
    no_other_cluster,
):
    import os
    import signal
    import time

    from _kernel import Kernel
    from conftest import cluster_processes, wait_until

    kernel = Kernel()
    try:
        assert kernel.run("%load_ext paracell").ok
        before = set(cluster_processes())
        kernel.client.execute("%cluster start -n 2")
        # killed as soon as the controller runs, before any engine registers
        deadline = time.monotonic() + 30
        while not set(cluster_processes()) - before:
            assert time.monotonic() < deadline, "the cluster never started"
            time.sleep(0.005)
        os.kill(kernel.pid, signal.SIGKILL)
        seen = set(cluster_processes()) - before

        def gone() -> bool:
            return not set(cluster_processes()) - before

        assert wait_until(gone, 20), f"left running: {cluster_processes()} ({seen})"
    finally:
        kernel.client.stop_channels()
        kernel.manager.cleanup_resources()


def test_stopping_the_cluster_ends_an_async_map_with_its_finished_results(
    ip, no_other_cluster
):
    import time

    from paracell.kernel_backend import MapFailed, default_session

    session = default_session()
    session.start(2)
    try:
        define(ip, "import time\ndef slow(x):\n    time.sleep(0.2)\n    return x")
        job = ip.run_line_magic(
            "pmap", "--async --no-progress --chunksize 1 slow(x) for x in range(200)"
        )
        assert job.running() or not job.done()
        time.sleep(1.0)
        ip.run_line_magic("cluster", "stop")
        with pytest.raises(MapFailed, match="stopped") as info:
            job.result(timeout=10)
        assert not job.running()
        assert job.progress.state == "failed"
        assert all(info.value.partial[i] == i for i in info.value.partial)
    finally:
        session.stop()


def test_a_dead_controller_gives_a_status_at_once_and_stop_cleans_up(
    ip, no_other_cluster
):
    import os
    import signal
    import time

    from paracell.kernel_backend import MapFailed, default_session

    from conftest import cluster_processes, wait_until

    session = default_session()
    session.start(2)
    define(ip, "import time\ndef nap(x):\n    time.sleep(0.3)\n    return x")
    job = ip.run_line_magic(
        "pmap", "--async --no-progress --chunksize 1 nap(x) for x in range(100)"
    )
    time.sleep(0.5)
    os.kill(session._cluster.controller.pid, signal.SIGKILL)
    try:
        # the map ends, with all its results or with what it had: it does
        # not wait for replies for ever
        try:
            assert job.result(timeout=20) == list(range(100))
        except MapFailed as err:
            assert "controller" in str(err)
        # new work is refused at once, saying what to do
        with pytest.raises(UsageError, match="%cluster stop"):
            ip.run_line_magic("pmap", "--no-progress x for x in range(4)")
    finally:
        if not job.done():
            job.cancel()
    tic = time.monotonic()
    status = session.status()
    assert time.monotonic() - tic < 5
    assert not status.controller_answers
    assert "%cluster stop" in status.summary()
    ip.run_line_magic("cluster", "stop")
    assert wait_until(lambda: not cluster_processes(), 10)


def test_waiting_on_a_job_no_engine_can_run_says_why_instead_of_hanging(
    ip, no_other_cluster
):
    import os
    import signal
    import time

    from paracell.kernel_backend import default_jobs, default_session

    from conftest import wait_until

    session = default_session()
    session.start(1)
    try:
        define(ip, "import time")
        ip.run_cell_magic("parallel", "--name sleeper", "time.sleep(60)\nslept = 1")
        ip.run_cell_magic("parallel", "--name follower", "followed = 2")
        manager = default_jobs()
        assert wait_until(lambda: manager.get("sleeper").state == "running")
        assert manager.get("follower").state == "queued"
        for pid in session.engine_pids().values():
            os.kill(pid, signal.SIGKILL)
        assert wait_until(lambda: not session.engine_ids(), 15)
        tic = time.monotonic()
        reader = ip.run_cell("print(followed)")
        assert time.monotonic() - tic < 5
        assert isinstance(reader.error_in_exec, UsageError)
        assert "no engines" in str(reader.error_in_exec)
        assert "%cluster scale" in str(reader.error_in_exec)
        # the job is still queued: engines that come back run it
        assert manager.get("follower").state == "queued"
    finally:
        session.stop()
    assert manager.get("follower").state == "cancelled"


class _Task:
    def __init__(self, done: bool = False) -> None:
        self._done = done

    def done(self) -> bool:
        return self._done


class _Client:
    """Sends each probe as a task the test finishes by hand."""

    def __init__(self) -> None:
        self.probes: list[_Task] = []

    def __getitem__(self, eid):
        client = self

        class View:
            def apply_async(self, func):
                client.probes.append(_Task())
                return client.probes[-1]

        return View()


def test_a_stale_task_whose_engine_ran_a_later_probe_frees_the_engine(monkeypatch):
    from paracell.kernel_backend import _stale

    clock = [100.0]
    monkeypatch.setattr(_stale.time, "monotonic", lambda: clock[0])
    work, client, lost = _stale.StaleWork(), _Client(), _Task()
    work.add(3, lost)
    assert work.review(client).engines == {3}
    assert not client.probes  # too young for a probe
    clock[0] += _stale.PROBE_AFTER
    assert work.review(client).engines == {3}
    assert len(client.probes) == 1
    client.probes[0]._done = True  # the engine answered the later probe
    review = work.review(client)
    assert review.engines == set() and review.stuck == set()
    assert work.lost == {3: 1}
    assert client.probes[0] in review.finished


def test_an_engine_that_answers_no_probe_is_reported_stuck(monkeypatch):
    from paracell.kernel_backend import _stale

    clock = [0.0]
    monkeypatch.setattr(_stale.time, "monotonic", lambda: clock[0])
    work, client = _stale.StaleWork(), _Client()
    work.add(1, _Task())
    clock[0] = _stale.PROBE_AFTER
    work.review(client)
    clock[0] = _stale.STUCK_AFTER
    assert work.review(client).stuck == {1}


def _engines_and_queues(session) -> str:
    """What a failure needs to be understood: the rows, the hub's queues (the
    tasks it still counts on each engine) and the stale work."""
    from paracell.kernel_backend._ippstate import _queue_status

    client = session._client
    stale = session._ledger.stale
    return (
        f"rows: {session.status().engines}\n"
        f"hub: {_queue_status(client, client.ids, timeout=2.0)}\n"
        f"stale: {stale._tasks} probes {stale._probes} lost {stale.lost}"
    )


def test_failing_maps_never_strand_an_engine(ip, shared_cluster):
    """The reproducer of stranded engines: items failing early in a map of
    tiny chunks, again and again; any engine kept out of work must come back
    within seconds, and the status must not call it busy afterwards."""
    from conftest import wait_until

    define(
        ip,
        "import time\n"
        "def boom(x, d=0.01):\n"
        "    if x == 3:\n"
        "        raise ValueError('three')\n"
        "    time.sleep(d)\n"
        "    return x",
    )
    stranded = 0
    for _ in range(8):
        with pytest.raises(ItemError):
            ip.run_line_magic(
                "pmap", "--no-progress --chunksize 1 boom(x) for x in range(200)"
            )
        if shared_cluster.stale_engines():
            stranded += 1
            assert wait_until(lambda: not shared_cluster.stale_engines(), 20)
        assert wait_until(
            lambda: all(e.state == "idle" for e in shared_cluster.status().engines), 20
        ), _engines_and_queues(shared_cluster)
    assert ip.run_line_magic("pmap", "--no-progress x for x in range(10)") == list(
        range(10)
    )


def test_an_engine_that_dies_while_names_are_shipped_is_left_out(
    ip, no_other_cluster, tmp_path
):
    from paracell.kernel_backend import default_session

    session = default_session()
    session.start(2)
    try:
        # the first engine to unpack the shipped object dies doing it
        define(
            ip,
            "import os, signal\n"
            f"FLAG = {str(tmp_path / 'exploded')!r}\n"
            "def _arm():\n"
            "    try:\n"
            "        os.close(os.open(FLAG, os.O_CREAT | os.O_EXCL))\n"
            "    except FileExistsError:\n"
            "        return 'defused'\n"
            "    os.kill(os.getpid(), signal.SIGKILL)\n"
            "class Mine:\n"
            "    def __reduce__(self):\n"
            "        return (_arm, ())\n"
            "mine = Mine()\n"
            "def tag(x, m):\n"
            "    return (x, m)",
        )
        got = ip.run_line_magic("pmap", "--no-progress tag(x, mine) for x in range(20)")
        assert got == [(x, "defused") for x in range(20)]
        assert (tmp_path / "exploded").exists()
    finally:
        session.stop()


def test_shipped_data_leaves_the_engines_when_the_notebook_drops_it(
    ip, no_other_cluster
):
    import numpy as np
    import psutil

    from paracell.kernel_backend import default_session

    session = default_session()
    session.start(2)
    try:

        def engine_mib() -> list[int]:
            pids = session.engine_pids().values()
            return [psutil.Process(p).memory_info().rss >> 20 for p in pids]

        ip.run_line_magic("pmap", "--no-progress x for x in range(2)")
        baseline = max(engine_mib())
        for i in range(5):
            ip.user_ns["big"] = np.full(12_500_000, float(i))  # 100 MB
            got = ip.run_line_magic(
                "pmap", "--no-progress big[k] + k for k in range(4)"
            )
            assert got == [i + k for k in range(4)]
            # at most one array per engine at any time
            assert max(engine_mib()) < baseline + 160
            ip.run_cell("del big")
        ip.run_line_magic("pmap", "--no-progress x for x in range(2)")
        assert max(engine_mib()) < baseline + 60
        controller = psutil.Process(session._cluster.controller.pid)
        assert controller.memory_info().rss < 1.2 * 2**30
    finally:
        session.stop()


def test_a_result_that_cannot_travel_back_names_its_item_in_one_line(
    ip, shared_cluster
):
    define(ip, "import threading")
    with pytest.raises(ItemError) as info:
        ip.run_line_magic("pmap", "--no-progress threading.Lock() for x in range(3)")
    message = str(info.value)
    assert re.match(r"item (\d) \(input \1\) failed on engine \d+: ", message)
    assert "cannot be sent back to the notebook" in message
    assert "\x1b[" not in message and "\n" not in message
    got = ip.run_line_magic(
        "pmap",
        "--no-progress --on-error collect"
        " threading.Lock() if x == 1 else x for x in range(3)",
    )
    assert got[0] == 0 and got[2] == 2
    assert "cannot be sent back" in str(got[1])


def test_an_input_that_cannot_be_sent_names_its_index_in_one_line(ip, shared_cluster):
    define(ip, "import threading\nthings = [1, 2, threading.Lock()]")
    with pytest.raises(UsageError) as info:
        ip.run_line_magic("pmap", "--no-progress str(t) for t in things")
    message = str(info.value)
    assert "cannot be sent to the engines" in message
    assert "item 2 (input" in message
    assert "\n" not in message


def test_a_task_gone_stale_after_the_probe_is_probed_again(monkeypatch):
    from paracell.kernel_backend import _stale

    clock = [0.0]
    monkeypatch.setattr(_stale.time, "monotonic", lambda: clock[0])
    work, client = _stale.StaleWork(), _Client()
    work.add(4, _Task())
    clock[0] = _stale.PROBE_AFTER
    work.review(client)
    work.add(4, _Task())  # cancelled after the probe went out
    client.probes[0]._done = True
    assert work.review(client).engines == {4}  # not freed by the old probe
    assert len(client.probes) == 2
    client.probes[1]._done = True
    assert work.review(client).engines == set()
    assert work.lost == {4: 2}


def test_a_probe_left_out_when_its_stale_task_ends_is_followed_until_it_answers(
    monkeypatch,
):
    """The stale task answers while its probe is still out: a late SIGINT
    may drop the probe's reply, so the probe is followed like the task was
    (else the hub counts it on the engine for good and the engine shows busy)."""
    from paracell.kernel_backend import _stale

    clock = [0.0]
    monkeypatch.setattr(_stale.time, "monotonic", lambda: clock[0])
    work, client, task = _stale.StaleWork(), _Client(), _Task()
    work.add(2, task)
    clock[0] = _stale.PROBE_AFTER
    work.review(client)
    task._done = True
    review = work.review(client)
    assert review.engines == {2} and task in review.finished
    assert len(client.probes) == 1  # no new probe yet: the first may answer
    clock[0] = 2 * _stale.PROBE_AFTER
    work.review(client)
    assert len(client.probes) == 2
    client.probes[1]._done = True  # the first probe's reply never comes
    review = work.review(client)
    assert review.engines == set() and work.lost == {2: 1}
    assert client.probes[1] in review.finished


def test_an_engine_whose_signal_is_on_its_way_takes_no_work_until_it_lands(
    monkeypatch,
):
    from paracell.kernel_backend import _stale

    clock = [0.0]
    monkeypatch.setattr(_stale.time, "monotonic", lambda: clock[0])
    work, landed, lost = _stale.StaleWork(), _Task(), _Task()
    work.signalling(1, landed)
    work.signalling(2, lost)
    assert work.review(None).engines == {1, 2} and work.holds(1)
    landed._done = True
    assert work.review(None).engines == {2} and not work.holds(1)
    clock[0] = _stale.STUCK_AFTER  # a nanny that never confirms: its engine is gone
    assert work.review(None).engines == set() and not work.holds(2)
    assert work.lost == {}  # signals are no tasks the hub counts


def test_a_signal_landing_after_a_cancelled_map_returned_does_not_stop_the_next(
    ip, shared_cluster, monkeypatch
):
    """A nanny slow to deliver a cancelled map's SIGINT (a loaded machine):
    the signal lands after the interrupt has returned.  Its engine must take
    no new work until then, or the next map is stopped as if the user had
    interrupted it."""
    import concurrent.futures
    import threading
    import time

    client = shared_cluster._client
    deliver = client.send_signal
    deliveries = []

    def late(sig, targets=None, block=None):
        future: concurrent.futures.Future = concurrent.futures.Future()

        def later():
            time.sleep(3.0)  # well past the interrupt's grace (1.5 s)
            try:
                deliver(sig, targets=targets, block=False).result(10)
                future.set_result(None)
            except Exception as err:
                future.set_exception(err)

        deliveries.append(threading.Thread(target=later, daemon=True))
        deliveries[-1].start()
        return future

    monkeypatch.setattr(client, "send_signal", late)
    define(
        ip,
        "import time\n"
        "def boom(x):\n"
        "    if x == 3:\n"
        "        raise ValueError('three')\n"
        "    time.sleep(0.3)\n"  # still running when item 3 fails
        "    return x\n"
        "def steady(x):\n"
        "    time.sleep(0.003)\n"
        "    return x",
    )
    try:
        with pytest.raises(ItemError):
            ip.run_line_magic(
                "pmap", "--no-progress --chunksize 1 boom(x) for x in range(200)"
            )
        assert deliveries, "the cancelled map sent no signal"
        assert shared_cluster.stale_engines()  # held while a signal is on its way
        try:
            result = ip.run_line_magic(
                "pmap", "--no-progress --chunksize 1 steady(x) for x in range(1000)"
            )
        except KeyboardInterrupt as stopped:  # not the test run's own
            pytest.fail(f"the late signal stopped the next map: {stopped}")
        assert result == list(range(1000))
    finally:
        for thread in deliveries:
            thread.join(15)


def test_a_signal_landing_while_a_finished_chunk_is_sent_back_loses_nothing(
    ip, shared_cluster
):
    """The item is done and its chunk's reply is being serialised when a
    SIGINT (a late one, meant for it) lands.  ipykernel would catch it
    outside the user's code and send no reply: the finished item lost, the
    map stopped or left waiting for good.  The engine ignores it instead."""
    import signal

    from paracell.kernel_backend._engine import shield_reply

    define(
        ip,
        "def done_then_signalled(x):\n"
        "    import os, signal, sys, threading, time\n"
        "    payload = b'x' * 200_000_000  # its reply takes a while to pack\n"
        "    main = threading.main_thread().ident\n"
        "    def sending():\n"
        "        # the engine's thread is packing or sending the reply\n"
        "        frame = sys._current_frames().get(main)\n"
        "        while frame is not None:\n"
        "            path = frame.f_code.co_filename\n"
        "            if 'serialize' in path or path.endswith('session.py'):\n"
        "                return True\n"
        "            frame = frame.f_back\n"
        "        return False\n"
        "    def late():\n"
        "        deadline = time.monotonic() + 30\n"
        "        while not sending() and time.monotonic() < deadline:\n"
        "            time.sleep(0.0001)\n"
        "        os.kill(os.getpid(), signal.SIGINT)\n"
        "    threading.Thread(target=late, daemon=True).start()\n"
        "    return payload",
    )
    job = ip.run_line_magic(
        "pmap",
        "--async --no-progress --chunksize 1 done_then_signalled(x) for x in range(2)",
    )
    try:
        values = job.result(timeout=60)
    except BaseException as lost:  # KeyboardInterrupt, or no reply in time
        job.cancel()
        pytest.fail(f"the finished items were lost: {lost!r}")
    assert [len(v) for v in values] == [200_000_000] * 2
    del values
    # in the notebook's own process (``--local`` runs there) nothing changes
    before = signal.getsignal(signal.SIGINT)
    shield_reply()
    assert signal.getsignal(signal.SIGINT) is before


def test_a_cell_on_every_engine_does_not_queue_behind_cancelled_work(
    ip, no_other_cluster
):
    """A cancelled task stuck where SIGINT does nothing (here: SIGINT
    blocked, as in a long call in C) must not hold up ``%%parallel --all``: the stuck engine is replaced and
    the cell runs on every engine."""
    import time

    from paracell.kernel_backend import default_session

    from conftest import wait_until

    session = default_session()
    session.start(2)
    try:
        define(
            ip,
            "import signal, time\n"
            "def deaf(x):\n"
            "    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})\n"
            "    time.sleep(120)\n",
        )
        job = ip.run_line_magic(
            "pmap", "--async --no-progress --chunksize 1 deaf(x) for x in range(2)"
        )
        assert wait_until(
            lambda: all(e.state == "busy" for e in session.status().engines), 20
        )
        job.cancel()
        # the stuck tasks keep their engines out of new work
        assert wait_until(lambda: len(session.stale_engines()) == 2, 10)
        assert wait_until(lambda: job.done(), 10)
        tic = time.monotonic()
        everywhere = ip.run_cell_magic("parallel", "--all --out where", "where = 1")
        assert time.monotonic() - tic < 40
        assert sorted(everywhere.values()) == [1, 1]
        assert not session.stale_engines()
    finally:
        session.stop()
