"""What every paracell magic shares: option types and error translation."""

from __future__ import annotations

import argparse
import contextlib
from collections.abc import Callable, Iterator
from typing import TypeVar

from IPython.core.error import UsageError
from IPython.core.magic_arguments import argument

from ..kernel_backend import ParacellError

__all__ = [
    "engine_ids",
    "non_negative_int",
    "positive_float",
    "positive_int",
    "run_options",
    "user_errors",
]


@contextlib.contextmanager
def user_errors() -> Iterator[None]:
    """Show paracell's errors as one-line ``UsageError`` s, never a traceback."""
    try:
        yield
    except ParacellError as err:
        raise UsageError(str(err)) from None


def _whole_number(text: str, minimum: int) -> int:
    try:
        value = int(text)
    except ValueError:
        value = None
    if value is None or value < minimum:
        raise argparse.ArgumentTypeError(
            f"must be a whole number >= {minimum}, not {text!r}"
        )
    return value


def positive_int(text: str) -> int:
    """argparse type: a whole number >= 1."""
    return _whole_number(text, 1)


def non_negative_int(text: str) -> int:
    """argparse type: a whole number >= 0."""
    return _whole_number(text, 0)


def positive_float(text: str) -> float:
    """argparse type: a number of seconds > 0."""
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not value > 0:
        raise argparse.ArgumentTypeError(
            f"must be a number of seconds > 0, not {text!r}"
        )
    return value


def engine_ids(text: str) -> tuple[int, ...]:
    """argparse type: engine ids separated by commas, e.g. ``0,1``."""
    try:
        ids = tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        ids = ()
    if not ids or any(i < 0 for i in ids):
        raise argparse.ArgumentTypeError(
            f"must be engine ids separated by commas (e.g. 0,1), not {text!r}"
        )
    return ids


_F = TypeVar("_F", bound=Callable[..., object])


def run_options(unit: str, targets_help: str) -> Callable[[_F], _F]:
    """``--seed``, ``--retries``, ``--timeout``, ``--targets``, ``--ship-large``:
    shared by the
    magics that run code on engines (``unit`` names what runs, e.g. "an item").
    """
    options = [
        argument(
            "--seed", default=None, metavar="S", help="reproducible random streams"
        ),
        argument(
            "--retries",
            type=non_negative_int,
            default=2,
            metavar="N",
            help=f"re-run {unit} elsewhere if its engine dies, up to N times"
            " (default: 2)",
        ),
        argument(
            "--timeout",
            type=positive_float,
            default=None,
            metavar="S",
            help=f"{unit} running longer than S seconds fails as a timeout",
        ),
        argument(
            "--targets", type=engine_ids, default=None, metavar="IDS", help=targets_help
        ),
        argument(
            "--ship-large",
            action="store_true",
            help="ship names larger than PARACELL_SHIP_LIMIT (default 1 GB) anyway",
        ),
    ]

    def decorate(func: _F) -> _F:
        for option in reversed(options):
            func = option(func)
        return func

    return decorate
