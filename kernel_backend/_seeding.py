"""Reproducible random streams, one per item of a map.

With ``--seed S``, item *i* draws from a stream derived from ``S`` and *i*
alone — ``numpy.random.SeedSequence(S, spawn_key=(i,))``, which is exactly
the *i*-th child ``SeedSequence(S).spawn(...)`` would make — so results do not
depend on engine count, chunking, order, retries, or ``--local``.

Within an item, three sources are seeded, each from its own child of the
item's sequence (so that they are not copies of one another — Python's
``random`` and the legacy ``numpy.random`` are both Mersenne Twisters and
would produce the very same numbers from the same key):

- ``random``: from ``SeedSequence(S, spawn_key=(i, 0))``;
- the legacy global ``numpy.random``: from ``SeedSequence(S, spawn_key=(i, 1))``;
- :func:`rng`: ``numpy.random.Generator(PCG64(SeedSequence(S, spawn_key=(i,))))``,
  i.e. ``numpy.random.default_rng`` of the item's sequence itself, made
  when the item first calls it.

A chunk of many items computes its items' seed words together
(:class:`ChunkSeeds`): the same words, a fraction of the time.
"""

from __future__ import annotations

import operator
import os
import random
import secrets
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np

from ._errors import InvalidRequest

__all__ = [
    "ChunkSeeds",
    "clear_current",
    "current_state",
    "fresh_entropy",
    "item_seed_sequence",
    "map_root",
    "restore_state",
    "rng",
    "seed_item",
    "seed_sources",
    "seeded",
    "validate_seed",
]

# Which child of an item's sequence seeds which legacy source.
_PYTHON_RANDOM_CHILD = 0
_LEGACY_NUMPY_CHILD = 1

# One item runs at a time in a process (an engine, or the kernel for
# --local), and threads an item starts should see that item's generator, so
# the "current" generator is process-wide rather than thread-local.
_current: np.random.Generator | None = None
# the item whose generator rng() makes when first asked: (root, index)
_pending: tuple[int, int] | None = None
_making = threading.Lock()
_fallback: np.random.Generator | None = None


def validate_seed(seed: Any) -> int | None:
    """Check a ``--seed`` value.

    Parameters
    ----------
    seed
        ``None``, a non-negative integer, or a string of one (as the magic
        receives it).

    Returns
    -------
    int or None

    Raises
    ------
    InvalidRequest
        For anything else (negative numbers, floats, booleans, words).
    """
    if seed is None:
        return None
    value: int | None = None
    if isinstance(seed, str):
        try:
            value = int(seed.strip())
        except ValueError:
            value = None
    elif not isinstance(seed, bool):  # True is an int, but not a seed
        try:
            value = operator.index(seed)  # int and numpy integers, not floats
        except TypeError:
            value = None
    if value is None or value < 0:
        raise InvalidRequest(f"--seed must be a non-negative integer, not '{seed}'")
    return value


def fresh_entropy() -> int:
    """128 fresh bits, to draw once per unseeded map or cell.

    From a generator of this module's own, seeded with OS entropy (and
    again in a forked child): no system call per draw.  ``os.urandom``
    lets other threads take the interpreter while it waits in the kernel,
    which cost a trivial ``%%parallel`` cell up to half a millisecond on a
    busy machine.  The bits only need to differ between maps; the seed
    sequence built from them mixes them.
    """
    return _entropy.getrandbits(128)


_entropy = random.Random(secrets.randbits(256))
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=lambda: _entropy.seed(secrets.randbits(256)))


def item_seed_sequence(
    seed: int | None, index: int, *, entropy: int | None = None
) -> np.random.SeedSequence:
    """The seed sequence of item ``index`` of a map.

    Parameters
    ----------
    seed
        The map's ``--seed``; when given, ``entropy`` is ignored and the
        result depends on ``seed`` and ``index`` alone.
    index
        The item's position in the map (0-based, before any filtering by
        engines or chunks).
    entropy
        Without a seed: entropy drawn once per map by the caller
        (:func:`fresh_entropy`), so items still get distinct, independent
        streams. If this is ``None`` too, fresh entropy is drawn for this
        item alone, which is as independent but cannot be replayed.

    Returns
    -------
    numpy.random.SeedSequence
        ``SeedSequence(seed or entropy, spawn_key=(index,))``.
    """
    if index < 0:
        raise ValueError(f"item index must be >= 0, not {index}")
    return np.random.SeedSequence(map_root(seed, entropy), spawn_key=(index,))


def map_root(seed: int | None, entropy: int | None) -> int:
    """The entropy a map's (or cell's) items' sequences derive from: its
    ``--seed``; without one its ``entropy``; without that, fresh bits."""
    root = seed if seed is not None else entropy
    return fresh_entropy() if root is None else root


def seed_item(ss: np.random.SeedSequence) -> np.random.Generator:
    """Seed ``random``, legacy ``numpy.random`` and :func:`rng` for one item.

    Deterministic given ``ss`` (it is not spawned from, so calling this twice
    with the same sequence gives the same state twice).

    Returns
    -------
    numpy.random.Generator
        A fresh ``Generator(PCG64(ss))``, also returned by :func:`rng` until
        the next call or :func:`clear_current`.
    """
    global _current, _pending
    _seed_legacy(
        _child(ss, _PYTHON_RANDOM_CHILD).generate_state(8, np.uint32),
        _child(ss, _LEGACY_NUMPY_CHILD).generate_state(8, np.uint32),
    )
    _current, _pending = np.random.Generator(np.random.PCG64(ss)), None
    return _current


def seed_sources(root: int, index: int) -> None:
    """Seed item ``index`` as :func:`seed_item` seeds
    ``SeedSequence(root, spawn_key=(index,))``, but make :func:`rng`'s
    generator only when the item asks for it (most items never do, and making
    it is a quarter of the seeding's time)."""
    global _current, _pending
    python = np.random.SeedSequence(root, spawn_key=(index, _PYTHON_RANDOM_CHILD))
    legacy = np.random.SeedSequence(root, spawn_key=(index, _LEGACY_NUMPY_CHILD))
    _seed_legacy(
        python.generate_state(8, np.uint32), legacy.generate_state(8, np.uint32)
    )
    _current, _pending = None, (root, index)


class ChunkSeeds:
    """The seeds of items ``first`` .. ``first + count - 1`` of a map whose
    root is ``root`` (its ``--seed``, or its entropy), computed many at once.

    ``seed(position)`` seeds the item at that position in the chunk exactly
    as :func:`seed_sources` would: the same words, from the same seed
    sequences (``SeedSequence``'s mixing, done on arrays of the items'
    indexes, a block of them at a time, instead of one sequence at a time).
    Per item that leaves the seeding of ``random`` and ``numpy.random``
    themselves, about a fifth of the time.  Chunks too short to gain, and
    indexes past 2**32 (two words of spawn key), are seeded one item at a
    time.
    """

    def __init__(self, root: int, first: int, count: int) -> None:
        self.root, self.first, self.count = root, first, count
        vector = count >= _VECTOR_FROM and first + count <= _ONE_WORD
        self._mixer = _mixer(root) if vector else None
        self._start = 0  # the position of the first item of the block in hand
        self._words: list[np.ndarray] = []

    def seed(self, position: int) -> None:
        global _current, _pending
        index = self.first + position
        if self._mixer is None:
            seed_sources(self.root, index)
            return
        offset = position - self._start
        if not self._words or not 0 <= offset < len(self._words[0]):
            self._start = position - position % _BLOCK
            stop = min(self._start + _BLOCK, self.count)
            indexes = np.arange(
                self.first + self._start, self.first + stop, dtype=np.uint64
            )
            self._words = [
                _child_states(self._mixer, indexes, child)
                for child in (_PYTHON_RANDOM_CHILD, _LEGACY_NUMPY_CHILD)
            ]
            offset = position - self._start
        python_words, numpy_words = self._words
        _seed_legacy(python_words[offset], numpy_words[offset])
        _current, _pending = None, (self.root, index)


def _seed_legacy(python_words: np.ndarray, numpy_words: np.ndarray) -> None:
    """Seed ``random`` and the legacy ``numpy.random`` from an item's words
    (eight uint32 each, from its two child sequences)."""
    random.seed(int.from_bytes(python_words.tobytes(), "little"))
    np.random.seed(numpy_words)


def rng() -> np.random.Generator:
    """The current item's random generator.

    Inside an item of a seeded map this is the item's own reproducible
    ``numpy.random.Generator``. Outside an item it is a generator seeded
    once from OS entropy (kept for the process, so repeated calls continue
    one stream rather than reseeding).
    """
    global _current, _fallback, _pending
    if _current is not None:
        return _current
    if _pending is not None:
        with _making:
            if _pending is not None:  # not made meanwhile by another thread
                ss = item_seed_sequence(*_pending)
                _current, _pending = np.random.Generator(np.random.PCG64(ss)), None
        if _current is not None:
            return _current
    if _fallback is None:
        _fallback = np.random.default_rng()
    return _fallback


def clear_current() -> None:
    """Forget the current item's generator; :func:`rng` falls back to OS entropy."""
    global _current, _pending
    _current = _pending = None


def current_state() -> tuple[Any, Any]:
    """What :func:`rng` returns now (for :func:`restore_state`)."""
    return _current, _pending


def restore_state(state: tuple[Any, Any]) -> None:
    """Make :func:`rng` return what it did when ``state`` was taken."""
    global _current, _pending
    _current, _pending = state


@contextmanager
def seeded(ss: np.random.SeedSequence) -> Iterator[np.random.Generator]:
    """Run one item seeded by ``ss``, then put every random state back.

    For ``--local`` in the kernel, where reseeding ``random`` and
    ``numpy.random`` must not clobber the user's own state.
    """
    python_state = random.getstate()
    numpy_state = np.random.get_state()
    previous = current_state()
    try:
        yield seed_item(ss)
    finally:
        random.setstate(python_state)
        np.random.set_state(numpy_state)
        restore_state(previous)


def _child(ss: np.random.SeedSequence, number: int) -> np.random.SeedSequence:
    # What ss.spawn() would build, without spawn()'s side effect of counting
    # children on ss (which would make a second call differ).
    return np.random.SeedSequence(
        ss.entropy, spawn_key=(*ss.spawn_key, number), pool_size=ss.pool_size
    )


# -- SeedSequence's mixing, for many items at once -------------------------
# The algorithm of numpy.random.SeedSequence (fixed by numpy's stream
# compatibility policy; tests check the words against SeedSequence's own):
# the entropy's 32-bit words are hashed into a pool of four and mixed; the
# spawn key's words are mixed in after; generate_state hashes the pool out.

_MASK = 0xFFFFFFFF
_INIT_A, _MULT_A = 0x43B0D7E5, 0x931E8875
_INIT_B, _MULT_B = 0x8B51F9DD, 0x58F38DED
_MIX_L, _MIX_R = 0xCA01F9DD, 0x4973F715
#: Chunks shorter than this are seeded item by item.
_VECTOR_FROM = 16
#: Indexes below this are one word of spawn key.
_ONE_WORD = 2**32
#: Items whose seeds are computed together (256 KB of words).
_BLOCK = 4096


def _words(value: int) -> list[int]:
    """An entropy value's 32-bit words, least significant first."""
    words = [value & _MASK]
    while value > _MASK:
        value >>= 32
        words.append(value & _MASK)
    return words


def _mixer(root: int) -> tuple[list[int], int]:
    """The pool after ``root``'s entropy words, and the hash constant then
    (the same for every item of a map)."""
    entropy = _words(root)
    entropy += [0] * (4 - len(entropy))  # padded when a spawn key follows
    hash_const = _INIT_A

    def hashmix(value: int) -> int:
        nonlocal hash_const
        value ^= hash_const
        hash_const = (hash_const * _MULT_A) & _MASK
        value = (value * hash_const) & _MASK
        return value ^ (value >> 16)

    pool = [hashmix(word) for word in entropy[:4]]
    for src in range(4):
        for dst in range(4):
            if src != dst:
                pool[dst] = _mix(pool[dst], hashmix(pool[src]))
    for word in entropy[4:]:
        for dst in range(4):
            pool[dst] = _mix(pool[dst], hashmix(word))
    return pool, hash_const


def _mix(x: Any, y: Any) -> Any:
    result = (_MIX_L * x - _MIX_R * y) & _MASK
    return result ^ (result >> 16)


def _child_states(
    mixer: tuple[list[int], int], indexes: np.ndarray, child: int
) -> np.ndarray:
    """``SeedSequence(root, spawn_key=(i, child)).generate_state(8, np.uint32)``
    for each ``i`` in ``indexes`` (uint64, each below 2**32), one row each;
    ``mixer`` is ``_mixer(root)``."""
    start, hash_const = mixer
    pool: list[Any] = [np.uint64(word) for word in start]
    for word in (indexes, np.uint64(child)):
        for dst in range(4):
            value = word ^ np.uint64(hash_const)
            hash_const = (hash_const * _MULT_A) & _MASK
            value = (value * np.uint64(hash_const)) & np.uint64(_MASK)
            value ^= value >> np.uint64(16)
            pool[dst] = _mix(pool[dst], value)
    states = np.empty((len(indexes), 8), dtype=np.uint32)
    hash_const = _INIT_B
    for i in range(8):
        value = pool[i % 4] ^ np.uint64(hash_const)
        hash_const = (hash_const * _MULT_B) & _MASK
        value = (value * np.uint64(hash_const)) & np.uint64(_MASK)
        states[:, i] = value ^ (value >> np.uint64(16))
    return states
