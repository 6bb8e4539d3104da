"""``%cache``: the result stores behind ``%pmap --cache`` and ``%%parallel --cache``."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from IPython.core.error import UsageError
from IPython.core.magic import Magics, line_magic, magics_class

from ..kernel_backend import (
    cache_info,
    clear_cache,
    format_size,
    set_cache_dir,
    set_cache_limit,
)
from ..widgets import CacheView
from ._common import user_errors

__all__ = ["CacheMagics"]


@magics_class
class CacheMagics(Magics):
    """The ``%cache`` magic."""

    @line_magic
    def cache(self, line: str) -> Any:
        """The result stores: list, clear, limit their size, move them.

        ::

            %cache                 the stores: entries, size, last used, folder
            %cache clear [NAME]    remove every entry (of one store)
            %cache limit 5GB       evict least recently used entries past 5 GB
            %cache limit none      no limit (the default)
            %cache dir PATH        keep stores in PATH from now on

        Stores live in one folder: ``.paracell`` in the kernel's working
        directory unless ``%cache dir`` or ``$PARACELL_CACHE_DIR`` says
        otherwise.  Kernels may share a folder.  Fill a store with
        ``%pmap --cache [NAME]`` or ``%%parallel --cache [NAME]``.
        """
        command, _, rest = line.strip().partition(" ")
        handler = self._subcommands().get(command or "list")
        if handler is None:
            raise UsageError(
                f"unknown %cache subcommand {command!r};"
                f" use one of: {', '.join(self._subcommands())}"
            )
        with user_errors():
            return handler(rest.strip())

    def _subcommands(self) -> dict[str, Callable[[str], Any]]:
        return {
            "list": self._list,
            "clear": self._clear,
            "limit": self._limit,
            "dir": self._dir,
        }

    def _list(self, rest: str) -> CacheView:
        if rest:
            raise UsageError(f"%cache takes no arguments, not {rest!r}")
        return CacheView(cache_info())

    def _clear(self, rest: str) -> None:
        if len(rest.split()) > 1:
            raise UsageError("%cache clear takes at most one store name")
        removed = clear_cache(rest or None)
        which = f"store {rest!r}" if rest else "every store"
        print(f"paracell: removed {removed:,} entries from {which}")

    def _limit(self, rest: str) -> None:
        if not rest:
            limit = cache_info().limit
            print(
                "paracell: no cache limit"
                if limit is None
                else f"paracell: cache limit {format_size(limit)}"
            )
            return
        none = rest.lower() in ("none", "off")
        evicted = set_cache_limit(None if none else rest)
        if none:
            print("paracell: no cache limit")
            return
        limit = cache_info().limit
        assert limit is not None
        note = f"; evicted {evicted:,} entries" if evicted else ""
        print(f"paracell: cache limit {format_size(limit)}{note}")

    def _dir(self, rest: str) -> None:
        if not rest:
            print(f"paracell: stores live in {cache_info().folder}")
            return
        folder = set_cache_dir(rest)
        print(f"paracell: stores live in {folder}")
