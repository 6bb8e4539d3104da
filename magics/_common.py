"""What every paracell magic shares: option types and error translation."""

from __future__ import annotations

import argparse
import contextlib
from collections.abc import Iterator

from IPython.core.error import UsageError

from ..kernel_backend import ParacellError

__all__ = ["non_negative_int", "positive_float", "positive_int", "user_errors"]


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
