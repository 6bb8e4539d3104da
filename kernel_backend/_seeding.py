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
  i.e. ``numpy.random.default_rng`` of the item's sequence itself.
"""

from __future__ import annotations

import operator
import os
import random
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np

from ._errors import InvalidRequest

__all__ = [
    "clear_current",
    "fresh_entropy",
    "item_seed_sequence",
    "rng",
    "seed_item",
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
    root = seed if seed is not None else entropy
    if root is None:
        root = fresh_entropy()
    return np.random.SeedSequence(root, spawn_key=(index,))


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
    global _current
    python_words = _child(ss, _PYTHON_RANDOM_CHILD).generate_state(8, np.uint32)
    random.seed(int.from_bytes(python_words.tobytes(), "little"))
    np.random.seed(_child(ss, _LEGACY_NUMPY_CHILD).generate_state(8, np.uint32))
    _current = np.random.Generator(np.random.PCG64(ss))
    return _current


def rng() -> np.random.Generator:
    """The current item's random generator.

    Inside an item of a seeded map this is the item's own reproducible
    ``numpy.random.Generator``. Outside an item it is a generator seeded
    once from OS entropy (kept for the process, so repeated calls continue
    one stream rather than reseeding).
    """
    global _fallback
    if _current is not None:
        return _current
    if _fallback is None:
        _fallback = np.random.default_rng()
    return _fallback


def clear_current() -> None:
    """Forget the current item's generator; :func:`rng` falls back to OS entropy."""
    global _current
    _current = None


@contextmanager
def seeded(ss: np.random.SeedSequence) -> Iterator[np.random.Generator]:
    """Run one item seeded by ``ss``, then put every random state back.

    For ``--local`` in the kernel, where reseeding ``random`` and
    ``numpy.random`` must not clobber the user's own state.
    """
    global _current
    python_state = random.getstate()
    numpy_state = np.random.get_state()
    previous = _current
    try:
        yield seed_item(ss)
    finally:
        random.setstate(python_state)
        np.random.set_state(numpy_state)
        _current = previous


def _child(ss: np.random.SeedSequence, number: int) -> np.random.SeedSequence:
    # What ss.spawn() would build, without spawn()'s side effect of counting
    # children on ss (which would make a second call differ).
    return np.random.SeedSequence(
        ss.entropy, spawn_key=(*ss.spawn_key, number), pool_size=ss.pool_size
    )
