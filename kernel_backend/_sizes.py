"""Amounts of bytes as people write and read them: one parser, one formatter.

``KB``/``MB``/``GB``/``TB`` mean powers of 1000 unless the caller counts in
powers of 1024 (memory, as Slurm's ``--mem`` does); ``KiB``/``MiB``/... are
always powers of 1024.  A bare number is bytes.
"""

from __future__ import annotations

import re

from ._errors import InvalidRequest

__all__ = ["format_size", "parse_size"]

_SIZE = re.compile(r"\s*(\d+(?:\.\d*)?|\.\d+)\s*([KMGT]?)(I?)B?\s*", re.IGNORECASE)


def parse_size(
    text: str, *, binary: bool = False, what: str = "a size", example: str = "5GB"
) -> int:
    """``5GB``, ``500 MB``, ``1.5G``, ``2GiB`` or a number of bytes.

    ``binary``: ``K``, ``M``, ``G``, ``T`` without ``i`` count in 1024s.
    ``what`` and ``example`` name the value in the error (``--mem-per-engine``,
    ``e.g. 4G``).
    """
    match = _SIZE.fullmatch(str(text))
    if match is None:
        raise InvalidRequest(
            f"{what} is a number with an optional unit (KB, MB, GB, TB), not"
            f" {text!r}; e.g. {example}"
        )
    number, unit, binary_mark = match.groups()
    base = 1024 if binary or binary_mark else 1000
    power = "KMGT".find(unit.upper()) + 1 if unit else 0
    return int(float(number) * base**power)


def format_size(nbytes: float) -> str:
    """Bytes in the largest unit that keeps a number >= 1 (``3.1 MB``)."""
    size = float(nbytes)
    for unit in ("B", "KB", "MB", "GB"):
        if size < 1000:
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1000
    return f"{size:.1f} TB"
