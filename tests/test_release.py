"""A release the notebook's drop asks for runs soon, on a thread of its own."""

from __future__ import annotations

import threading
import weakref

from paracell.kernel_backend._release import SoonRelease


class _Array:
    """Stands for a notebook object a finalizer follows."""


def test_a_release_asked_for_by_a_finalizer_runs_on_a_thread_of_its_own():
    ran = threading.Event()
    threads: list[str] = []

    def release() -> None:
        threads.append(threading.current_thread().name)
        ran.set()

    soon = SoonRelease(release)
    obj = _Array()
    weakref.finalize(obj, soon.request)
    del obj  # the finalizer runs here, on this thread

    assert ran.wait(5)
    assert threads == ["paracell-release"]


def test_requests_during_a_release_lead_to_one_more_and_then_the_thread_ends():
    started, go_on = threading.Event(), threading.Event()
    calls = []

    def release() -> None:
        calls.append(len(calls))
        started.set()
        go_on.wait(5)

    soon = SoonRelease(release)
    soon.request()
    assert started.wait(5)
    thread = soon._thread
    assert thread is not None
    soon.request()  # while the first runs: one more, however many ask
    soon.request()
    go_on.set()
    thread.join(5)

    assert not thread.is_alive()
    assert calls == [0, 1]
    assert soon._thread is None


def test_a_failing_release_does_not_stop_later_requests():
    calls = []
    first, second = threading.Event(), threading.Event()

    def release() -> None:
        calls.append(1)
        if len(calls) == 1:
            first.set()
            raise RuntimeError("the cluster went away")
        second.set()

    soon = SoonRelease(release)
    soon.request()
    assert first.wait(5)
    soon.request()

    assert second.wait(5)
    assert len(calls) == 2
