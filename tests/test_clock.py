"""Engine clocks against the kernel's: the offset estimate, and timelines
drawn on the kernel's clock."""

from __future__ import annotations

import time
from collections.abc import Iterator

import ipyparallel as ipp
import pytest

import paracell
from paracell.kernel_backend._clock import ClockOffset, estimate_offset, measure_offsets


def test_the_round_trip_with_the_least_delay_sets_the_offset():
    samples = [
        (100.0, 110.6, 102.0),  # 2 s there and back
        (200.0, 210.45, 200.1),  # 0.1 s: the best bound
        (300.0, 310.1, 300.5),
    ]
    clock = estimate_offset(samples)
    assert clock.offset == pytest.approx(10.4)
    assert clock.uncertainty == pytest.approx(0.05)
    assert clock.to_kernel(1010.4) == pytest.approx(1000.0)


def test_a_clock_behind_the_kernels_has_a_negative_offset():
    assert estimate_offset([(50.0, 20.0, 50.2)]).offset == pytest.approx(-30.1)


def test_round_trips_across_a_kernel_clock_step_are_not_used():
    # the kernel's clock stepped back during the first: t1 < t0
    clock = estimate_offset([(10.0, 15.0, 9.0), (20.0, 25.05, 20.1)])
    assert clock.offset == pytest.approx(5.0)
    with pytest.raises(ValueError, match="no round trip"):
        estimate_offset([(10.0, 15.0, 9.0)])


@ipp.interactive
def _an_hour_ahead() -> float:
    import time

    return time.time() + 3600.0


@pytest.mark.cluster
def test_real_round_trips_find_a_clock_an_hour_ahead(shared_cluster):
    """The engine reads its clock between the kernel's send and receipt, so
    the estimate is within its uncertainty of the truth, however slow the
    round trips: here the reading the engine returns is an hour ahead."""
    client = shared_cluster.client
    ids = shared_cluster.engine_ids()
    ahead = measure_offsets(client, ids, clock=_an_hour_ahead)
    same = measure_offsets(client, ids)
    assert sorted(ahead) == sorted(same) == sorted(ids)
    for eid in ids:
        assert abs(ahead[eid].offset - 3600.0) <= ahead[eid].uncertainty + 1e-6
        assert abs(same[eid].offset) <= same[eid].uncertainty + 1e-6


@pytest.mark.cluster
def test_engines_clocks_are_measured_when_they_register(shared_cluster):
    for eid in shared_cluster.engine_ids():
        clock = shared_cluster.clock_offset(eid)
        assert clock is not None
        # these engines share the kernel's clock
        assert abs(clock.offset) <= clock.uncertainty + 1e-6


@pytest.fixture
def engines_an_hour_ahead(shared_cluster) -> Iterator[list[int]]:
    """The session believes its engines' clocks run an hour ahead."""
    ids = shared_cluster.engine_ids()
    kept = {eid: shared_cluster.clock_offset(eid) for eid in ids}
    for eid in ids:
        shared_cluster.ledger.records[eid].clock = ClockOffset(3600.0, 0.0)
    yield ids
    for eid, clock in kept.items():
        shared_cluster.ledger.records[eid].clock = clock


def _nap(x: int) -> int:
    import time

    time.sleep(0.01)
    return x


@pytest.mark.cluster
def test_timelines_and_jobs_are_on_the_kernels_clock(engines_an_hour_ahead):
    before = time.time()
    job = paracell.pmap(_nap, range(4), block=False, progress=False)
    assert job.result(timeout=60) == [0, 1, 2, 3]
    # an engine's readings, taken back an hour: before the map even began
    assert all(chunk.started < before - 3000 for chunk in job.timeline())
    cell = paracell.parallel("x = 1", namespace={}, name="clock")
    cell.result(timeout=60)
    assert cell.started is not None and cell.started < before - 3000
