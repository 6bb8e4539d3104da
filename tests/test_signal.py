"""The one event primitive behind cluster, job and map observers."""

from __future__ import annotations

import logging

import pytest

from paracell.kernel_backend._signal import Signal


def test_every_observer_gets_the_event_and_unsubscribing_stops_it():
    signal: Signal[[int]] = Signal("numbers")
    seen: list[tuple[str, int]] = []
    stop_a = signal.subscribe(lambda n: seen.append(("a", n)))
    signal.subscribe(lambda n: seen.append(("b", n)))
    signal.emit(1)
    stop_a()
    stop_a()  # twice is harmless
    signal.emit(2)
    assert seen == [("a", 1), ("b", 1), ("b", 2)]


def test_a_failing_observer_is_logged_once_with_its_traceback_and_others_still_run(
    caplog: pytest.LogCaptureFixture,
):
    signal: Signal[[]] = Signal("the cluster")
    calls: list[str] = []

    def broken() -> None:
        calls.append("broken")
        raise RuntimeError("view bug")

    signal.subscribe(broken)
    signal.subscribe(lambda: calls.append("fine"))
    with caplog.at_level(logging.WARNING, logger="paracell.observers"):
        signal.emit()
        signal.emit()
    assert calls == ["broken", "fine", "broken", "fine"]
    records = [r for r in caplog.records if r.name == "paracell.observers"]
    assert len(records) == 1
    assert "an observer of the cluster failed" in records[0].getMessage()
    assert records[0].exc_info is not None
    assert "view bug" in caplog.text


def test_an_observer_may_unsubscribe_itself_while_the_event_is_sent():
    signal: Signal[[]] = Signal("jobs")
    calls: list[str] = []
    handle: list[object] = []

    def once() -> None:
        calls.append("once")
        handle[0]()  # type: ignore[operator]

    handle.append(signal.subscribe(once))
    signal.emit()
    signal.emit()
    assert calls == ["once"]
