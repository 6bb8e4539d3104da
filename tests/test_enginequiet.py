"""An engine's request ends without needless hand-offs: an empty flush
returns at once, and text written before a flush still goes out before it
returns (``kernel_backend/_enginequiet.py``)."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
import zmq
from ipykernel.iostream import IOPubThread, OutStream
from jupyter_client.session import Session

from paracell.kernel_backend import _enginequiet


class _Stream:
    """A real ipykernel ``OutStream`` on a real IOPub thread, and a SUB socket
    that reads what it publishes; ``scheduled`` counts hand-offs to the IO
    thread."""

    def __init__(self) -> None:
        self.context = zmq.Context()
        pub = self.context.socket(zmq.PUB)
        port = pub.bind_to_random_port("tcp://127.0.0.1")
        self.sub = self.context.socket(zmq.SUB)
        self.sub.setsockopt(zmq.SUBSCRIBE, b"")
        self.sub.connect(f"tcp://127.0.0.1:{port}")
        self.session = Session(key=b"")
        self.thread = IOPubThread(pub)
        self.thread.start()
        self.stream = OutStream(self.session, self.thread, "stdout", watchfd=False)
        self.scheduled = 0
        schedule = self.thread.schedule

        def counting(f: Any) -> None:
            self.scheduled += 1
            schedule(f)

        self.thread.schedule = counting  # type: ignore[method-assign]

    def received(self, timeout: float = 2.0) -> list[str]:
        """The text of the stream messages published so far."""
        texts = []
        while self.sub.poll(int(timeout * 1000)):
            _, msg = self.session.feed_identities(self.sub.recv_multipart())
            content = self.session.deserialize(msg)["content"]
            texts.append(content["text"])
            timeout = 0.2
        return texts

    def close(self) -> None:
        self.stream.close()
        # ended in its own thread: stop() alone leaves it pending, and
        # asyncio complains of it at exit
        task = getattr(self.thread, "_event_pipe_gc_task", None)
        if task is not None:
            self.thread.schedule(task.cancel)
            deadline = time.monotonic() + 5
            while not task.done() and time.monotonic() < deadline:
                time.sleep(0.01)
        self.thread.stop()
        self.thread.close()
        self.sub.close(linger=0)
        self.context.term()


@pytest.fixture
def out() -> Iterator[_Stream]:
    stream = _Stream()
    try:
        # a SUB connecting to a PUB misses what was sent before it joined
        for _ in range(50):
            stream.stream.write(".")
            stream.stream.flush()
            if stream.received(0.1):
                break
        stream.scheduled = 0
        yield stream
    finally:
        stream.close()


def test_an_empty_flush_returns_without_handing_off(out: _Stream) -> None:
    _enginequiet._quick_empty_flush(out.stream)
    for _ in range(10):
        out.stream.flush()
    assert out.scheduled == 0
    assert out.received(0.3) == []


def test_text_written_before_a_flush_is_sent_by_then(out: _Stream) -> None:
    _enginequiet._quick_empty_flush(out.stream)
    for n in range(20):
        out.stream.write(f"line {n}\n")
        out.stream.flush()
        assert out.scheduled > 0, "a flush with text to send must hand it off"
        out.scheduled = 0
        # sent when flush returned: no periodic flush needed to find it
        assert "".join(out.received(2.0)) == f"line {n}\n"
        out.stream.flush()
        assert out.scheduled == 0


def test_a_flush_waits_for_one_the_io_thread_has_under_way(out: _Stream) -> None:
    """The IO thread takes the text out of the buffer before it sends it: a
    flush in between finds the buffer empty, and must still wait."""
    stream = out.stream
    _enginequiet._quick_empty_flush(stream)
    original = stream._rotate_buffers
    taken, release = threading.Event(), threading.Event()

    def slow_rotation() -> Any:
        buffers = original()
        taken.set()
        release.wait(5)
        return buffers

    stream._rotate_buffers = slow_rotation  # type: ignore[method-assign]
    stream.write("in flight\n")
    flusher = threading.Thread(target=stream._flush)  # as the IO thread would
    flusher.start()
    assert taken.wait(5)
    assert not any(buf.tell() for buf in stream._buffers.values())
    out.scheduled = 0
    done = threading.Event()
    waiter = threading.Thread(target=lambda: (stream.flush(), done.set()))
    waiter.start()
    waiter.join(0.5)
    # it waits for the flush under way (which cannot end before release)
    assert not done.is_set(), "the flush returned as if nothing were pending"
    assert out.scheduled > 0
    release.set()
    flusher.join(5)
    waiter.join(5)
    assert done.is_set()
    assert "".join(out.received()) == "in flight\n"


def test_a_stream_it_does_not_know_is_left_as_it_is() -> None:
    import io

    plain = io.StringIO()
    _enginequiet._quick_empty_flush(plain)
    assert not getattr(plain, "_paracell_quick", False)
    plain.write("kept")
    plain.flush()
    assert plain.getvalue() == "kept"


@pytest.mark.parametrize(
    ("handler_levels", "parent_levels", "propagate", "expected"),
    [
        ([logging.INFO], [], True, logging.INFO),  # debug lines nobody writes
        ([logging.INFO, logging.DEBUG], [], True, logging.DEBUG),
        ([logging.NOTSET], [], True, logging.DEBUG),  # a handler for everything
        ([logging.WARNING], [logging.DEBUG], True, logging.DEBUG),  # the parent's
        ([logging.WARNING], [logging.DEBUG], False, logging.WARNING),
        ([], [], True, logging.DEBUG),  # Python's last resort: left be
    ],
)
def test_the_log_level_rises_only_to_what_a_handler_writes(
    handler_levels: list[int],
    parent_levels: list[int],
    propagate: bool,
    expected: int,
) -> None:
    parent = logging.getLogger(f"paracell-test-{id(handler_levels)}")
    log = parent.getChild("engine")
    parent.setLevel(logging.DEBUG)
    parent.propagate = False  # the test run's own root handlers aside
    log.setLevel(logging.DEBUG)
    log.propagate = propagate
    for level, owner in [(lv, log) for lv in handler_levels] + [
        (lv, parent) for lv in parent_levels
    ]:
        handler = logging.NullHandler()
        handler.setLevel(level)
        owner.addHandler(handler)
    try:
        _enginequiet._skip_invisible_records(log)
        assert log.getEffectiveLevel() == expected
    finally:
        for owner in (log, parent):
            for handler in list(owner.handlers):
                owner.removeHandler(handler)


# -- on a real engine ---------------------------------------------------------


#: On every engine (a ``%%parallel --all`` cell): whether its streams are
#: quick, and how many hand-offs to the IO thread ten empty flushes of each
#: stream and then one flush of written text make.
PROBE = """
import sys
thread = sys.stdout.pub_thread
counted = [0]
schedule = thread.schedule
def counting(f):
    counted[0] += 1
    schedule(f)
thread.schedule = counting
try:
    for _ in range(10):
        sys.stdout.flush()
        sys.stderr.flush()
    empty = counted[0]
    print("written")
    sys.stdout.flush()
    probe = (getattr(sys.stdout, "_paracell_quick", False), empty, counted[0])
finally:
    del thread.schedule
"""


@pytest.mark.cluster
def test_engines_flush_nothing_at_once_and_text_as_before(
    ip: Any, shared_cluster: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    from paracell import parallel

    # set up by each engine's first task; twice, should this be it
    for _ in range(2):
        runs = parallel(PROBE, namespace={}, targets="all", out=["probe"])
    assert len(runs) == len(shared_cluster.client.ids) >= 2
    for run in runs:
        quick, empty, with_text = run.values["probe"]
        assert quick
        assert empty == 0
        assert with_text > 0
        assert run.stdout == "written\n"
    capsys.readouterr()
    # every line a cell prints, on both streams, in order, run after run
    cell = (
        "import sys\n"
        "for i in range(200):\n"
        "    print('out', i)\n"
        "    print('err', i, file=sys.stderr)\n"
    )
    for _ in range(5):
        ip.run_cell("%%parallel --block\n" + cell).raise_error()
        captured = capsys.readouterr()
        assert captured.out.splitlines() == [f"out {i}" for i in range(200)]
        assert captured.err.splitlines() == [f"err {i}" for i in range(200)]


@pytest.mark.cluster
def test_a_cell_says_whether_it_wrote_anything(shared_cluster: Any) -> None:
    from paracell.kernel_backend._engine import TaskSpec
    from paracell.kernel_backend._enginecell import run_cell

    view = shared_cluster.client[0]
    for source, wrote in [
        ("x = 1", False),
        ("print('seen')", True),
        ("import sys\nsys.stderr.write('err')", True),
        ("import warnings\nwarnings.warn('careful')", True),
        ("x = 2", False),
    ]:
        outcome = view.apply_sync(run_cell, TaskSpec(key="k"), source, "<c>", [])
        assert outcome.wrote is wrote, source


def test_the_notebook_takes_a_silent_cells_result_without_waiting_for_its_output(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A cell that wrote nothing has no output to follow its reply: its job
    ends without waiting for the ``idle`` status (a third of a millisecond)."""
    from paracell.kernel_backend import JobManager, _enginecell

    from _fake_engines import FakePool, FakeTask

    waited: list[float | None] = []
    monkeypatch.setattr(
        FakeTask, "wait_for_output", lambda self, timeout=None: waited.append(timeout)
    )
    pool = FakePool(1)
    manager = JobManager(pool)
    try:
        monkeypatch.setattr(_enginecell, "output_mark", lambda: 0)  # wrote nothing
        assert manager.submit("x = 1", {}).result(timeout=5) is None
        assert waited == []
        monkeypatch.setattr(_enginecell, "output_mark", lambda: None)  # cannot tell
        assert manager.submit("x = 2", {}).result(timeout=5) is None
        assert waited, "a cell that may have written waits for its output"
    finally:
        manager.close()
        pool.close()
