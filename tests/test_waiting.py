"""Waiting on futures when an interrupt lands mid-wait (no cluster needed)."""

from __future__ import annotations

import concurrent.futures
import threading

import pytest

from paracell.kernel_backend._waiting import wait_for


def _interrupt_the_second_take(futures: list[concurrent.futures.Future[int]]) -> None:
    """Ctrl-C as a wait takes the locks of the futures it waits on, one after
    the other: the first is taken, the second take is interrupted."""
    takes = [0]
    for future in futures:
        condition = threading.Condition()
        take = condition.acquire  # bound per instance by Condition

        def acquire(*args: object, take: object = take, **kwargs: object) -> bool:
            takes[0] += 1
            if takes[0] == 2:
                raise KeyboardInterrupt
            return take(*args, **kwargs)  # type: ignore[operator, no-any-return]

        condition.acquire = acquire  # type: ignore[method-assign]
        future._condition = condition  # type: ignore[attr-defined]


def _finishes_from_another_thread(future: concurrent.futures.Future[int]) -> bool:
    thread = threading.Thread(target=future.set_result, args=(1,), daemon=True)
    thread.start()
    thread.join(2.0)
    return not thread.is_alive()


@pytest.mark.parametrize("first", [True, False])
def test_an_interrupted_wait_holds_no_futures_lock(first: bool) -> None:
    futures: list[concurrent.futures.Future[int]] = [
        concurrent.futures.Future(),
        concurrent.futures.Future(),
    ]
    _interrupt_the_second_take(futures)
    with pytest.raises(KeyboardInterrupt):
        wait_for(futures, 5.0, first=first)
    # the thread that brings a task's reply can still finish either future
    assert all(_finishes_from_another_thread(f) for f in futures)
    assert wait_for(futures, 1.0) == (set(futures), set())


def test_wait_for_returns_the_done_and_the_pending() -> None:
    done, pending = concurrent.futures.Future(), concurrent.futures.Future()
    done.set_result(3)
    assert wait_for([done, pending], 0.01, first=True) == ({done}, {pending})
    assert wait_for([done, pending], 0.01) == ({done}, {pending})


def test_finished_reads_a_futures_state_without_its_lock() -> None:
    """Whether a task ended is asked in the notebook's main thread, where an
    interrupt can land as a lock is taken and leave it taken: ``finished``
    answers even while another thread holds the future's lock."""
    from paracell.kernel_backend._waiting import finished

    future: concurrent.futures.Future[int] = concurrent.futures.Future()
    holding, release = threading.Event(), threading.Event()

    def hold() -> None:
        with future._condition:  # type: ignore[attr-defined]
            holding.set()
            release.wait(10)

    holder = threading.Thread(target=hold, daemon=True)
    holder.start()
    assert holding.wait(5)
    answers: list[bool] = []
    asker = threading.Thread(target=lambda: answers.append(finished(future)))
    asker.start()
    asker.join(5)  # a bound against hanging: it answers at once
    answered = list(answers)  # before the lock is let go
    release.set()
    holder.join(5)
    asker.join(5)
    assert answered == [False]
    future.set_result(1)
    assert finished(future)
    cancelled: concurrent.futures.Future[int] = concurrent.futures.Future()
    cancelled.cancel()
    assert finished(cancelled)
