"""``%pmap``: a list comprehension, run on the cluster."""

from __future__ import annotations

import re
from typing import Any

from IPython.core.error import UsageError
from IPython.core.magic import Magics, line_magic, magics_class
from IPython.core.magic_arguments import argument, magic_arguments
from IPython.display import display

from .._api import start_pmap
from ..kernel_backend import MapJob
from ..kernel_backend._comprehension import parse_comprehension
from ..widgets import TimelineView
from ._common import (
    parse_options,
    positive_int,
    run_options,
    shell_of,
    user_errors,
)

__all__ = ["PmapMagics", "split_options"]

#: Options that take a value; the others are flags.
_VALUED = {
    "--chunksize",
    "--seed",
    "--retries",
    "--timeout",
    "--on-error",
    "--targets",
    "--concurrency",
}
_OPTION = re.compile(r"\s*(--[A-Za-z][\w-]*)(=\S*)?")
_VALUE = re.compile(r"\s*(\S+)")


def split_options(line: str) -> tuple[str, str]:
    """Split ``%pmap``'s line into its options and the comprehension.

    Options are the leading ``--name [value]`` tokens; everything after them
    is the comprehension, untouched (quotes and spacing kept as typed).
    """
    pos = 0
    options: list[str] = []
    while match := _OPTION.match(line, pos):
        name, inline = match.group(1), match.group(2)
        pos = match.end()
        options.append(name + (inline or ""))
        if name == "--cache" and not inline:
            # an optional store name: the next word, if what follows it is
            # the comprehension (`--cache sweep1 f(p) for p in ps`)
            value = _VALUE.match(line, pos)
            if (
                value is not None
                and not value.group(1).startswith("--")  # the next option
                and _is_comprehension(split_options(line[value.end() :])[1])
            ):
                options[-1] = f"--cache={value.group(1)}"
                pos = value.end()
            continue
        if name in _VALUED and not inline:
            value = _VALUE.match(line, pos)
            if value is None:
                break
            options.append(value.group(1))
            pos = value.end()
    return " ".join(options), line[pos:].strip()


def _is_comprehension(text: str) -> bool:
    try:
        parse_comprehension(text.strip())
    except Exception:  # any failure: not a comprehension
        return False
    return True


@magics_class
class PmapMagics(Magics):
    """The ``%pmap`` magic."""

    @magic_arguments()
    @argument(
        "--chunksize",
        default="auto",  # validated by the backend, which names the problem
        metavar="auto|N",
        help="items per chunk; auto measures items and sizes chunks to ~0.2 s",
    )
    @argument("--unordered", action="store_true", help="results in completion order")
    @argument(
        "--concurrency",
        type=positive_int,
        default=1,
        metavar="N",
        help="an element that awaits: items each engine runs at once (default 1)",
    )
    @run_options("an item", "only these engines, e.g. 0,1")
    @argument(
        "--on-error",
        default="raise",
        metavar="raise|collect|skip",
        help="raise (default): stop and raise; collect: the exception takes the"
        " item's place; skip: leave the item out",
    )
    @argument("--no-progress", action="store_true", help="no progress bar")
    @argument(
        "--quiet",
        action="store_true",
        help="do not show what items print or warn (job.output() still has it)",
    )
    @argument(
        "--timeline",
        action="store_true",
        help="after the map, draw which engine ran which chunk when",
    )
    @argument(
        "--async", action="store_true", dest="run_async", help="return a job at once"
    )
    @argument(
        "--local", action="store_true", help="run here, sequentially, same seeding"
    )
    @argument(
        "--cache",
        nargs="?",
        const=True,
        default=None,
        metavar="NAME",
        help="keep each result in the result store (NAME: a store of its own) and"
        " take stored ones from it: a re-run computes only what is missing",
    )
    @line_magic
    def pmap(self, line: str) -> list[Any] | MapJob:
        """Run a list comprehension on the cluster: ``%pmap f(x) for x in xs``.

        The iterables and ``if`` clauses run here; the element expression runs
        on the engines once per item; results come back as a list in input
        order.  Names the element reads are shipped by themselves: modules as
        imports, notebook functions and classes by value, data once per
        engine per version.  Starts a local cluster if none is active.

        Examples::

            results = %pmap simulate(p, steps=100) for p in params
            results = %pmap [score(m, f) for m in models for f in folds if ok(m)]
            results = %pmap --seed 42 bootstrap_mean(data) for _ in range(10_000)
            job = %pmap --async fit(cfg) for cfg in grid
            results = %pmap --cache simulate(p) for p in params
            results = %pmap --cache sweep1 simulate(p) for p in params

        With ``--cache``, a result is stored as it arrives; running the same
        map again (after an interrupt, a failed item, a kernel restart)
        computes only the items the store lacks.  An item's key covers the
        element's code, every name it uses (functions by code, data by
        content), its input and, with ``--seed``, the seed and its index.
        See ``%cache``.
        """
        option_text, body = split_options(line)
        args = parse_options(self.pmap, option_text)
        if not body:
            raise UsageError("%pmap needs a comprehension, e.g. %pmap f(x) for x in xs")
        if args.timeline and args.run_async:
            raise UsageError(
                "--timeline draws a finished map: with --async, display"
                " job.timeline() once the job is done"
            )
        with user_errors():
            job = start_pmap(
                body,
                shell_of(self).user_ns,
                chunksize=args.chunksize,
                ordered=not args.unordered,
                seed=args.seed,
                retries=args.retries,
                timeout=args.timeout,
                concurrency=args.concurrency,
                on_error=args.on_error,
                targets=args.targets,
                ship_large=args.ship_large,
                local=args.local,
                progress=not args.no_progress and not args.run_async,
                # an --async job shows its output in its own view
                quiet=args.quiet or args.run_async,
                block=not args.run_async,
                cache=False if args.cache is None else args.cache,
            )
        if args.run_async:
            return job
        results = job.result()
        if args.timeline:
            display(TimelineView(job.timeline()))
        return results  # type: ignore[no-any-return]
