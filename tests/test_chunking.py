"""Unit tests for paracell.kernel_backend._chunking (no cluster, no clock)."""

from __future__ import annotations

from typing import Any

import pytest

from paracell.kernel_backend import InvalidRequest
from paracell.kernel_backend._chunking import ChunkSizer, validate_chunksize


def sizes(sizer: ChunkSizer, count: int) -> list[int]:
    return [sizer.next_size() for _ in range(count)]


def run_map(sizer: ChunkSizer, total: int, seconds_per_item: float) -> list[int]:
    """Drive a sizer like a map would: send a chunk, record it, until done."""
    handed_out: list[int] = []
    left = total
    while left:
        size = min(sizer.next_size(), left)
        sizer.record(size, size * seconds_per_item)
        handed_out.append(size)
        left -= size
    return handed_out


def test_fixed_chunksize_is_always_used() -> None:
    sizer = ChunkSizer(engines=4, total=100, chunksize=7)

    assert sizes(sizer, 20) == [7] * 20
    sizer.record(7, 100.0)
    assert sizer.next_size() == 7


def test_fixed_chunksize_may_be_given_as_a_string() -> None:
    assert ChunkSizer(engines=2, total=None, chunksize="3").next_size() == 3


def test_auto_starts_with_one_item_probe_per_engine() -> None:
    sizer = ChunkSizer(engines=4, total=None)

    assert sizes(sizer, 4) == [1, 1, 1, 1]


def test_probes_grow_geometrically_until_a_chunk_is_measured() -> None:
    sizer = ChunkSizer(engines=2, total=None)

    assert sizes(sizer, 8) == [1, 1, 2, 2, 4, 4, 8, 8]
    sizer.record(1, 0.1)  # 0.1 s per item: 0.2 s target -> 2 items
    assert sizer.next_size() == 2


def test_probes_are_capped_by_max_chunksize() -> None:
    sizer = ChunkSizer(engines=1, total=None, max_chunksize=10)

    assert sizes(sizer, 6) == [1, 2, 4, 8, 10, 10]


def test_trivial_items_give_large_chunks() -> None:
    sizer = ChunkSizer(engines=8, total=None)
    sizer.record(1, 2e-6)

    assert sizer.next_size() == 100_000  # 0.2 s / 2 us, at max_chunksize
    sizer = ChunkSizer(engines=8, total=None)
    sizer.record(100, 100 * 20e-6)
    assert sizer.next_size() == 10_000  # 0.2 s / 20 us


def test_trivial_items_with_a_known_total_still_amortise_overhead() -> None:
    sizer = ChunkSizer(engines=8, total=1_000_000)
    sizer.record(1, 1e-6)

    first = sizer.next_size()

    assert first >= 1_000  # thousands per ~1 ms of per-chunk overhead
    assert first == -(-1_000_000 // (4 * 8))  # the end-of-map cap


def test_slow_items_give_chunks_of_one() -> None:
    sizer = ChunkSizer(engines=4, total=None)
    sizer.record(1, 1.0)

    assert sizes(sizer, 5) == [1] * 5


def test_size_aims_at_target_seconds() -> None:
    sizer = ChunkSizer(engines=4, total=None, target_seconds=0.5)
    sizer.record(10, 0.1)  # 10 ms per item

    assert sizer.next_size() == 50


def test_zero_duration_measurement_gives_the_largest_chunk() -> None:
    sizer = ChunkSizer(engines=1, total=None, max_chunksize=5_000)
    sizer.record(3, 0.0)

    assert sizer.next_size() == 5_000


def test_chunks_shrink_near_the_end_of_a_known_total() -> None:
    engines = 4
    sizer = ChunkSizer(engines=engines, total=10_000)

    # items slow enough (30 ms) that balancing them is worth small chunks
    handed_out = run_map(sizer, 10_000, 0.03)

    assert sum(handed_out) == 10_000
    assert handed_out[0] == 1  # the probe
    handed_out = handed_out[1:]
    # Never more than a 1/(4 * engines) share of what was still left ...
    left = 10_000 - 1
    for size in handed_out:
        assert size <= -(-left // (4 * engines))
        left -= size
    # ... so the sizes fall steadily and the map ends on single items.
    assert handed_out == sorted(handed_out, reverse=True)
    assert handed_out[-engines:] == [1] * engines


def test_small_known_total_gives_one_item_per_chunk() -> None:
    sizer = ChunkSizer(engines=4, total=10)
    sizer.record(1, 0.1)

    assert sizes(sizer, 3) == [1, 1, 1]


def test_cheap_items_are_not_split_into_costly_little_chunks() -> None:
    sizer = ChunkSizer(engines=2, total=200_000)

    handed_out = run_map(sizer, 200_000, 5e-7)  # 0.5 us per item

    assert sum(handed_out) == 200_000
    # a chunk never holds less than ~20 ms of work, except the probes and
    # the final remainder: a handful of chunks in all
    assert len(handed_out) <= 12
    assert min(handed_out[1:-1]) >= 40_000


def test_unknown_total_has_no_end_of_map_cap() -> None:
    sizer = ChunkSizer(engines=4, total=None)
    sizer.record(100, 0.01)  # 0.1 ms per item -> 2000 per chunk

    assert sizes(sizer, 10) == [2_000] * 10


def test_estimate_follows_items_that_get_slower() -> None:
    sizer = ChunkSizer(engines=2, total=None)
    sizer.record(1_000, 1_000 * 1e-4)
    fast = sizer.next_size()

    for _ in range(30):
        sizer.record(20, 20 * 1e-2)

    assert fast == 2_000
    assert 20 <= sizer.next_size() <= 25  # 0.2 s / 10 ms, what is left of the past


def test_a_small_noisy_chunk_does_not_swing_the_estimate() -> None:
    sizer = ChunkSizer(engines=2, total=None)
    sizer.record(2_000, 0.2)
    sizer.record(1, 0.05)  # one item that happened to take 500x longer

    assert sizer.next_size() > 1_000


def test_empty_chunk_teaches_nothing() -> None:
    sizer = ChunkSizer(engines=1, total=None)
    sizer.record(0, 5.0)

    assert sizes(sizer, 3) == [1, 2, 4]  # still probing


def test_max_in_flight_is_a_few_chunks_per_engine() -> None:
    one = ChunkSizer(engines=1, total=None)
    many = ChunkSizer(engines=16, total=None, chunksize=5)

    assert 2 <= one.max_in_flight <= 3
    assert many.max_in_flight == 16 * one.max_in_flight


def test_sizer_is_deterministic_given_the_same_measurements() -> None:
    def replay() -> list[int]:
        sizer = ChunkSizer(engines=3, total=5_000)
        out = sizes(sizer, 3)
        sizer.record(1, 0.001)
        out += sizes(sizer, 3)
        sizer.record(2, 0.003)
        return out + sizes(sizer, 5)

    assert replay() == replay()


@pytest.mark.parametrize(
    "kwargs",
    [
        {"engines": 0, "total": None},
        {"engines": 1, "total": -1},
        {"engines": 1, "total": None, "target_seconds": 0},
        {"engines": 1, "total": None, "min_chunks_per_engine": 0},
        {"engines": 1, "total": None, "max_chunksize": 0},
    ],
)
def test_impossible_settings_are_refused(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        ChunkSizer(**kwargs)


def test_bad_chunksize_is_a_user_error() -> None:
    with pytest.raises(InvalidRequest, match="--chunksize"):
        ChunkSizer(engines=1, total=None, chunksize="0")


def test_negative_measurements_are_refused() -> None:
    sizer = ChunkSizer(engines=1, total=None)

    with pytest.raises(ValueError):
        sizer.record(1, -0.1)


@pytest.mark.parametrize(
    ("value", "expected"),
    [("auto", "auto"), (" AUTO ", "auto"), (1, 1), (500, 500), ("25", 25)],
)
def test_validate_chunksize_accepts_auto_and_whole_numbers(
    value: Any, expected: Any
) -> None:
    assert validate_chunksize(value) == expected


@pytest.mark.parametrize("value", [0, -3, "0", "-3", "big", "", 2.5, "2.5", True])
def test_validate_chunksize_refuses_anything_else(value: Any) -> None:
    with pytest.raises(InvalidRequest, match="--chunksize must be 'auto' or a whole"):
        validate_chunksize(value)


def test_validate_chunksize_message_names_the_bad_value() -> None:
    with pytest.raises(InvalidRequest) as caught:
        validate_chunksize(0)

    assert str(caught.value) == (
        "--chunksize must be 'auto' or a whole number >= 1, not '0'"
    )


def test_a_time_boxed_probe_is_an_engines_even_share() -> None:
    sizer = ChunkSizer(engines=2, total=200_000)

    assert sizer.next_size(timeboxed=True) == 100_000
    assert sizer.next_size(timeboxed=True) == 100_000
    # capped by max_chunksize, and without a total it is max_chunksize
    assert ChunkSizer(engines=2, total=10**9).next_size(timeboxed=True) == 100_000
    assert ChunkSizer(engines=2, total=None).next_size(timeboxed=True) == 100_000
    assert ChunkSizer(engines=4, total=3).next_size(timeboxed=True) == 1
    # a fixed chunksize is a fixed chunksize
    fixed = ChunkSizer(engines=2, total=1_000, chunksize=7)
    assert fixed.next_size(timeboxed=True) == 7


def test_a_probe_is_time_boxed_only_until_a_chunk_is_measured() -> None:
    sizer = ChunkSizer(engines=2, total=1_000)
    assert not sizer.measured
    sizer.record(10, 0.1)  # 10 ms per item

    assert sizer.measured
    assert sizer.next_size(timeboxed=True) == sizer.next_size()


def test_items_given_back_count_as_remaining() -> None:
    # slow items: a probe ran 3 of its 500 and gave back the rest
    sizer = ChunkSizer(engines=2, total=1_000)
    assert sizer.next_size(timeboxed=True) == 500
    assert sizer.next_size(timeboxed=True) == 500
    sizer.record(3, 0.06)  # 20 ms per item
    sizer.give_back(497)
    sizer.give_back(497)

    # 994 items left: the end-of-map cap is ceil(994 / 8), not ceil(0 / 8)
    assert sizer.next_size() == 10  # 0.2 s / 20 ms, under the cap of 125
    with pytest.raises(ValueError):
        sizer.give_back(-1)


def test_cheap_items_left_over_are_split_evenly_once() -> None:
    sizer = ChunkSizer(engines=2, total=200_000)
    sizer.next_size(timeboxed=True)  # 100_000
    sizer.record(100_000, 0.01)  # 0.1 us per item

    # 100,000 items left is far less than 20 ms of work per engine: one
    # chunk for each engine, not 100,000 for one and nothing for the other
    assert sizes(sizer, 2) == [50_000, 50_000]


def test_heavy_cheap_items_stay_within_the_byte_budget() -> None:
    sizer = ChunkSizer(engines=2, total=None, max_bytes=8 * 2**20)
    sizer.record(1, 2e-6)
    assert sizer.next_size() == 100_000  # weight unknown: time alone
    sizer.note_bytes(8, 8 * 1024)  # items of 1 KB
    assert sizer.next_size() == 8 * 1024
    sizer.note_bytes(8, 8 * 2**30)  # some weigh a GB: one at a time
    assert sizer.next_size() == 1


def test_a_fixed_chunksize_ignores_the_byte_budget() -> None:
    sizer = ChunkSizer(engines=2, total=None, chunksize=500, max_bytes=1000)
    sizer.note_bytes(1, 1000)
    assert sizer.next_size() == 500


def test_items_are_weighed_without_copying_their_arrays() -> None:
    import threading

    import numpy as np

    from paracell.kernel_backend._chunking import approx_bytes

    arrays = [np.zeros(250_000) for _ in range(4)]  # 2 MB each
    weight = approx_bytes(arrays)
    assert weight is not None and 8_000_000 <= weight < 8_010_000
    assert approx_bytes([threading.Lock()]) is None  # pickle refuses: none


def test_a_known_pace_shares_the_probes_among_the_engines_the_work_is_worth() -> None:
    # 100,000 items of 0.1 us: 10 ms in all, not worth a second engine
    cheap = ChunkSizer(engines=8, total=100_000, pace=1e-7)
    assert cheap.probed_engines() == 1
    assert cheap.next_size(timeboxed=True) == 100_000
    # 16 items of 15 ms: 0.24 s, worth every one of 2 engines
    slow = ChunkSizer(engines=2, total=16, pace=0.015)
    assert slow.probed_engines() == 2
    assert slow.next_size(timeboxed=True) == 8
    # 0.1 s of work: 5 engines' worth of min_seconds (0.02 s) out of 8
    middle = ChunkSizer(engines=8, total=1_000, pace=1e-4)
    assert middle.probed_engines() == 5
    assert middle.next_size(timeboxed=True) == 200
    # no pace, or no total: every engine
    assert ChunkSizer(engines=8, total=100_000).probed_engines() == 8
    assert ChunkSizer(engines=8, total=None, pace=1e-7).probed_engines() == 8


def test_a_map_remembers_its_pace_for_the_next_map_of_the_same_code() -> None:
    from paracell.kernel_backend._chunking import known_pace, remember_pace

    sizer = ChunkSizer(engines=2, total=100)
    assert sizer.seconds_per_item is None
    sizer.record(10, 0.5)
    assert sizer.seconds_per_item == pytest.approx(0.05)
    remember_pace("code-a", sizer.seconds_per_item)
    remember_pace("code-b", None)  # a map that measured nothing
    assert known_pace("code-a") == pytest.approx(0.05)
    assert known_pace("code-b") is None


def test_a_concurrent_maps_chunks_hold_at_least_its_concurrency():
    """Items an engine runs at once (``--concurrency``) must come in one
    chunk: slow async items, measured one a chunk, would stay one a chunk."""
    sizer = ChunkSizer(engines=2, total=20, min_chunksize=8)
    assert [sizer.next_size(), sizer.next_size()] == [8, 8]  # probes
    sizer.record(8, 4.0)  # 0.5 s an item: 0.2 s chunks would hold none
    assert sizer.next_size() == 4  # the last 4 of 20
    assert ChunkSizer(engines=2, total=None, min_chunksize=8).next_size() == 8
    assert (
        ChunkSizer(engines=2, total=20, chunksize=3, min_chunksize=8).next_size() == 3
    )
