"""Unit tests for paracell.kernel_backend._seeding (no cluster needed)."""

from __future__ import annotations

import random
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest

from paracell.kernel_backend import InvalidRequest, _seeding
from paracell.kernel_backend._seeding import (
    ChunkSeeds,
    clear_current,
    fresh_entropy,
    item_seed_sequence,
    rng,
    seed_item,
    seed_sources,
    seeded,
    validate_seed,
)


@pytest.fixture(autouse=True)
def _restore_random_state() -> Iterator[None]:
    """Seeding an item reseeds process-wide state; put it back after each test."""
    python_state = random.getstate()
    numpy_state = np.random.get_state()
    yield
    random.setstate(python_state)
    np.random.set_state(numpy_state)
    clear_current()


def draws(seed: int | None, index: int, *, entropy: int | None = None) -> Any:
    """What one item draws from each of the three sources."""
    generator = seed_item(item_seed_sequence(seed, index, entropy=entropy))
    return (
        random.random(),
        random.randrange(10**9),
        float(np.random.random()),
        int(np.random.randint(10**9)),
        generator.random(3).tolist(),
        rng().integers(10**9),
    )


def simulated_item(seed: int, index: int) -> float:
    """A stand-in for user code that mixes every random source."""
    seed_item(item_seed_sequence(seed, index))
    return random.gauss(0, 1) + float(np.random.normal() + rng().standard_normal())


def test_same_seed_and_index_give_the_same_draws_from_all_three_sources() -> None:
    assert draws(42, 7) == draws(42, 7)


def test_different_items_get_different_streams() -> None:
    first, second = draws(42, 0), draws(42, 1)

    assert all(a != b for a, b in zip(first, second, strict=True))


def test_different_seeds_give_different_streams() -> None:
    first, second = draws(1, 0), draws(2, 0)

    assert all(a != b for a, b in zip(first, second, strict=True))


def test_item_sequence_is_the_ith_spawned_child_of_the_seed() -> None:
    children = np.random.SeedSequence(42).spawn(5)

    for index, child in enumerate(children):
        ours = item_seed_sequence(42, index)
        assert ours.spawn_key == child.spawn_key
        assert (ours.generate_state(4) == child.generate_state(4)).all()


def test_rng_of_an_item_is_default_rng_of_its_sequence() -> None:
    # So an item's stream can be replayed by hand, outside paracell.
    seed_item(item_seed_sequence(42, 3))

    replay = np.random.default_rng(np.random.SeedSequence(42, spawn_key=(3,)))

    assert rng().random() == replay.random()


def test_python_random_and_legacy_numpy_are_not_copies_of_each_other() -> None:
    # Both are Mersenne Twisters: seeded from the same words they would
    # produce the very same numbers.
    seed_item(item_seed_sequence(0, 0))

    assert [random.random() for _ in range(3)] != np.random.random(3).tolist()


def test_seeding_twice_from_one_sequence_gives_the_same_state() -> None:
    ss = item_seed_sequence(5, 5)

    first = (seed_item(ss).random(), random.random(), np.random.random())
    second = (seed_item(ss).random(), random.random(), np.random.random())

    assert first == second


def test_seed_item_returns_a_fresh_generator_that_rng_returns() -> None:
    ss = item_seed_sequence(1, 1)
    generator = seed_item(ss)

    assert rng() is generator
    assert seed_item(ss) is not generator


def test_rng_outside_an_item_is_one_entropy_seeded_generator() -> None:
    seeded_generator = seed_item(item_seed_sequence(1, 1))
    clear_current()

    fallback = rng()

    assert isinstance(fallback, np.random.Generator)
    assert fallback is not seeded_generator
    assert rng() is fallback  # one stream, not a reseed per call


def test_unseeded_items_share_the_maps_entropy_but_not_their_streams() -> None:
    entropy = fresh_entropy()

    assert draws(None, 0, entropy=entropy) == draws(None, 0, entropy=entropy)
    assert draws(None, 0, entropy=entropy) != draws(None, 1, entropy=entropy)


def test_unseeded_item_without_entropy_draws_fresh_entropy() -> None:
    assert draws(None, 0) != draws(None, 0)


def test_seed_wins_over_entropy() -> None:
    assert draws(3, 2, entropy=fresh_entropy()) == draws(3, 2)


def test_negative_index_is_refused() -> None:
    with pytest.raises(ValueError, match="index"):
        item_seed_sequence(1, -1)


def test_chunked_reversed_order_gives_the_same_values_as_sequential() -> None:
    sequential = [simulated_item(42, index) for index in range(100)]

    chunks = [range(start, min(start + 7, 100)) for start in range(0, 100, 7)]
    shuffled: dict[int, float] = {}
    for chunk in reversed(chunks):
        for index in reversed(chunk):
            shuffled[index] = simulated_item(42, index)

    assert [shuffled[index] for index in range(100)] == sequential
    assert len(set(sequential)) == 100


def test_retrying_an_item_later_gives_the_same_value() -> None:
    first = simulated_item(7, 13)
    for index in range(20):  # other work on the same engine in between
        simulated_item(7, index)

    assert simulated_item(7, 13) == first


def test_seeded_block_puts_the_users_random_state_back() -> None:
    random.seed(123)
    np.random.seed(123)
    expected = (random.random(), np.random.random())
    random.seed(123)
    np.random.seed(123)

    with seeded(item_seed_sequence(9, 9)) as generator:
        assert rng() is generator
        random.random()
        np.random.random()

    assert (random.random(), np.random.random()) == expected
    assert rng() is not generator


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (None, None),
        (0, 0),
        (42, 42),
        (2**100, 2**100),
        ("42", 42),
        (" 7 ", 7),
        (np.int64(3), 3),
    ],
)
def test_validate_seed_accepts_non_negative_integers(
    value: Any, expected: int | None
) -> None:
    assert validate_seed(value) == expected


@pytest.mark.parametrize("value", ["x", "-3", "1.5", "", -1, 1.5, 2.0, True, [1]])
def test_validate_seed_refuses_anything_else(value: Any) -> None:
    with pytest.raises(InvalidRequest, match="--seed must be a non-negative integer"):
        validate_seed(value)


def test_validate_seed_message_names_the_bad_value() -> None:
    with pytest.raises(InvalidRequest) as caught:
        validate_seed("x")

    assert str(caught.value) == "--seed must be a non-negative integer, not 'x'"


# -- seeding many items at once --------------------------------------------

ROOTS = [0, 1, 7, 2**32 - 1, 2**32, 2**64 + 3, 2**128 - 1, 2**200 + 12345]


@pytest.mark.parametrize("root", ROOTS)
def test_children_states_for_many_indexes_equal_seed_sequences_own(root: int) -> None:
    indexes = np.array(
        [0, 1, 2, 1000, 2**31, 2**32 - 2, 2**32 - 1, *range(50, 70)],
        dtype=np.uint64,
    )
    for child in (0, 1):
        expected = [
            np.random.SeedSequence(root, spawn_key=(int(i), child)).generate_state(
                8, np.uint32
            )
            for i in indexes
        ]
        mixer = _seeding._mixer(root)
        assert (_seeding._child_states(mixer, indexes, child) == expected).all()


def after_seeding() -> tuple[Any, ...]:
    """What an item draws next from the three sources."""
    return (
        random.random(),
        random.getrandbits(64),
        float(np.random.random()),
        rng().random(2).tolist(),
    )


@pytest.mark.parametrize(
    ("root", "first", "count"),
    [
        (7, 0, 40),  # computed together
        (7, 5, 3 * 4096 + 20),  # in blocks
        (2**127 + 5, 1000, 16),
        (7, 3, 5),  # too short: item by item
        (7, 2**32 - 10, 20),  # past one word of spawn key: item by item
    ],
)
def test_chunk_seeds_leave_each_item_as_seed_item_does(
    root: int, first: int, count: int
) -> None:
    seeds = ChunkSeeds(root, first, count)
    positions = [0, 1, count // 2, count - 1, 4095, 4096, 8193, 2]
    for position in [p for p in positions if p < count]:
        seed_item(item_seed_sequence(root, first + position))
        expected = after_seeding()
        seeds.seed(position)
        assert after_seeding() == expected
        seed_sources(root, first + position)
        assert after_seeding() == expected


def test_an_items_generator_is_made_once_when_first_asked_for() -> None:
    seed_sources(11, 4)
    assert _seeding.current_state()[0] is None  # not made yet
    made = rng()
    assert rng() is made
    assert made.random() == seed_item(item_seed_sequence(11, 4)).random()
    seed_sources(11, 5)
    assert rng() is not made


def test_threads_an_item_starts_share_its_one_generator() -> None:
    import threading

    seed_sources(13, 1)
    made: list[np.random.Generator] = []
    start = threading.Barrier(8)

    def ask() -> None:
        start.wait()
        made.append(rng())

    threads = [threading.Thread(target=ask) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(made) == 8 and all(g is made[0] for g in made)


def test_a_pending_generator_is_put_back_by_seeded() -> None:
    seed_sources(3, 2)
    expected = np.random.default_rng(item_seed_sequence(3, 2)).random()
    with seeded(item_seed_sequence(9, 9)):
        rng().random()
    assert rng().random() == expected
