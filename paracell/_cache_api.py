"""The twins of ``%cache``: what the result store holds, clearing, limit, folder."""

from __future__ import annotations

from .kernel_backend import (
    CacheReport,
    set_cache_dir,
    set_cache_limit,
)
from .kernel_backend import cache_info as _cache_info
from .kernel_backend import clear_cache as _clear_cache

__all__ = ["cache_dir", "cache_info", "cache_limit", "clear_cache"]


def cache_info() -> CacheReport:
    """The result stores: entries, size and last use of each; ``%cache``."""
    return _cache_info()


def clear_cache(name: str | None = None) -> int:
    """Remove every entry of store ``name`` (all stores: ``None``); returns
    how many; ``%cache clear [NAME]``."""
    return int(_clear_cache(name))


def cache_limit(size: int | str | None) -> int:
    """Keep at most ``size`` (bytes, or ``"5GB"``; ``None``: no limit) in the
    stores, least recently used entries evicted first; returns how many were
    evicted; ``%cache limit``."""
    return int(set_cache_limit(size))


def cache_dir(path: str | None) -> str:
    """Keep the stores in ``path`` from now on (``None``: the default,
    ``.paracell`` in the working directory); ``%cache dir``."""
    return str(set_cache_dir(path))
