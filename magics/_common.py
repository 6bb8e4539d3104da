"""What every paracell magic shares: option types and error translation."""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable
from types import TracebackType
from typing import TYPE_CHECKING, Any, Literal, TypeVar

from IPython.core.error import UsageError
from IPython.core.magic_arguments import argument, parse_argstring

from ..kernel_backend import ParacellError

if TYPE_CHECKING:
    from IPython.core.interactiveshell import InteractiveShell
    from IPython.core.magic import Magics
from ..kernel_backend._comprehension import user_traceback

__all__ = [
    "engine_ids",
    "non_negative_int",
    "parse_options",
    "positive_float",
    "positive_int",
    "run_options",
    "user_errors",
]


def user_errors() -> _UserErrors:
    """Show errors as the user should see them, never with paracell's frames.

    - paracell's own errors (:class:`ParacellError`) become a one-line
      ``UsageError``;
    - an exception raised by the user's own code that ran here (a
      comprehension's iterables and conditions) keeps its type, and its
      traceback is cut to the user's own frames, so IPython shows the cell's
      line, then the user's functions, and none of ours.

    A class rather than a ``contextlib.contextmanager``: ``__exit__`` returning
    False lets the exception go on from the ``with`` statement as it was, and
    the traceback it carries is the one set here (Python 3.11 and later), so
    neither the magic's frame nor a context manager's shows.
    """
    return _UserErrors()


class _UserErrors:
    """The context manager behind :func:`user_errors`."""

    def __enter__(self) -> None:
        return None

    def __exit__(
        self,
        etype: type[BaseException] | None,
        error: BaseException | None,
        tb: TracebackType | None,
    ) -> Literal[False]:
        if isinstance(error, ParacellError):
            raise UsageError(str(error)) from None
        users, shown = user_traceback(tb)
        if error is not None and users:
            error.__traceback__ = shown
        return False


#: (parser, option text) -> what it parsed to: a notebook repeats a few
#: option lines (``--block``), and parsing one is a tenth of a millisecond
_PARSED: dict[tuple[Any, str], argparse.Namespace] = {}
_PARSED_KEPT = 64


def parse_options(magic: Callable[..., Any], text: str) -> argparse.Namespace:
    """``parse_argstring`` that also turns unbalanced quotes into a ``UsageError``.

    IPython splits the options like a shell does; an unclosed quote (``--seed
    "1``) or a trailing backslash makes that split raise ``ValueError``.
    The options' types are pure functions of the text, so a line parsed
    before is not parsed again; each call gets its own namespace.
    """
    key = (getattr(magic, "parser", None), text)
    parsed = _PARSED.get(key)
    if parsed is None:
        parsed = _parse(magic, text)
        if len(_PARSED) >= _PARSED_KEPT:
            _PARSED.clear()
        _PARSED[key] = parsed
    return argparse.Namespace(
        **{k: list(v) if isinstance(v, list) else v for k, v in vars(parsed).items()}
    )


def _parse(magic: Callable[..., Any], text: str) -> argparse.Namespace:
    try:
        args: argparse.Namespace = parse_argstring(magic, text)
        return args
    except ValueError as err:
        # "pmap", "cluster start"; a cell magic's is "%parallel"
        prog = magic.parser.prog  # type: ignore[attr-defined]
        raise UsageError(
            f"%{prog}: cannot read the options {text.strip()!r}:"
            f" {str(err).lower()}; close the quote, or drop it"
        ) from None


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
    """argparse type: a finite number of seconds > 0."""
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    # inf would reach timers and event waits, which reject it
    if not 0 < value < math.inf:
        raise argparse.ArgumentTypeError(
            f"must be a number of seconds > 0 and finite, not {text!r}"
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


def shell_of(magics: Magics) -> InteractiveShell:
    """The shell ``magics`` was registered with (IPython types it optional)."""
    shell = magics.shell
    if shell is None:
        raise UsageError("paracell's magics run inside an IPython shell")
    return shell
