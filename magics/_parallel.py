"""``%%parallel`` (a cell in the background) and ``%jobs`` (job control)."""

from __future__ import annotations

import argparse
import math
import sys
import traceback
from collections.abc import Callable
from typing import Any

from IPython.core.error import UsageError
from IPython.core.magic import Magics, cell_magic, line_magic, magics_class
from IPython.core.magic_arguments import argument, magic_arguments

from .._api import parallel
from ..kernel_backend import CellJob, JobError, default_jobs
from ..kernel_backend._names import check_syntax, compiles
from ..kernel_backend._seeding import validate_seed
from ..kernel_backend._waiting import finished
from ..widgets import JobsTable, JobView, jobs_panel, show_job
from . import _delivery, _tasks
from ._common import parse_options, run_options, shell_of, user_errors

__all__ = ["ParallelMagics"]


def _names(text: str) -> list[str]:
    names = [part.strip() for part in text.split(",") if part.strip()]
    if not names or not all(n.isidentifier() for n in names):
        raise argparse.ArgumentTypeError(
            "must be variable names separated by commas (e.g. model,score),"
            f" not {text!r}"
        )
    return names


def _priority(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number, not {text!r}") from None
    # nan compares false with everything: the queue could not order it
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be a finite number, not {text!r}")
    return value


class CellSyntaxError(Exception):
    """The cell's own SyntaxError, shown as Python shows it, without our frames.

    (IPython would show a ``SyntaxError`` raised by a magic with the magic's
    whole traceback; this carries the original in ``.error``.)
    """

    def __init__(self, error: SyntaxError) -> None:
        super().__init__(str(error))
        self.error = error

    def _render_traceback_(self) -> list[str]:
        return [
            line.rstrip("\n")
            for line in traceback.format_exception_only(SyntaxError, self.error)
        ]


@magics_class
class ParallelMagics(Magics):
    """``%%parallel`` and ``%jobs``."""

    @magic_arguments(name="%parallel")  # shown as %%parallel
    @argument("--block", action="store_true", help="wait here, then bring names back")
    @argument("--name", default=None, metavar="NAME", help="the job's name")
    @argument(
        "--out",
        type=_names,
        default=None,
        metavar="NAMES",
        help="bring back only these names (comma-separated)",
    )
    @argument("--no-pull", action="store_true", help="bring no names back")
    @run_options(
        "the cell",
        "run on these engines (e.g. 0,1) in their own namespaces, like --all",
    )
    @argument(
        "--priority",
        type=_priority,
        default=0.0,
        metavar="P",
        help="higher runs first when jobs wait for engines",
    )
    @argument(
        "--all", action="store_true", help="run on every engine, in its own namespace"
    )
    @argument(
        "--tasks",
        action="store_true",
        help="run the cell's statements as a task graph: each on an engine as"
        " soon as the statements it depends on are done",
    )
    @argument(
        "--plan",
        action="store_true",
        help="with --tasks: show the graph and the planned schedule; run nothing",
    )
    @argument(
        "--timeline",
        action="store_true",
        help="with --tasks: draw the run (a bar per statement) when it ends",
    )
    @argument(
        "--cache",
        nargs="?",
        const=True,
        default=None,
        metavar="NAME",
        help="keep the cell's outcome in the result store (NAME: a store of its"
        " own); run again unchanged, its names come back at once",
    )
    @cell_magic
    def parallel(self, line: str, cell: str) -> Any:
        """Run the cell on the cluster in the background; its names come back.

        The cell returns at once and shows a live view of the job.  Names the
        cell reads are shipped as ``%pmap`` ships them; when it finishes, the
        names it assigned appear in the notebook (``--out`` for some,
        ``--no-pull`` for none) — unless you re-assigned them meanwhile.  A
        later cell that reads one of them waits for the job first.

        ``--all`` / ``--targets`` run the cell on those engines, in each
        engine's own namespace, blocking, with output per engine (for imports
        and setup); ``--out`` then returns a dict engine id -> value.

        ``--cache`` keys the cell by its code (comments and spacing aside)
        and the names it reads (functions by code, data by content); with
        the same key stored, the job is done at once, on no engine, and its
        names are back when the cell returns.  See ``%cache``.

        ``--tasks`` runs each top-level statement as a task on whichever
        engine can start it earliest, once the statements it depends on
        (those that set or change a name it reads or changes) are done; a
        value stays on the engine that made it until another needs it.  The
        names, values and printed output equal a run top to bottom.
        ``--plan`` shows the graph and the planned schedule, runs nothing;
        ``--timeline`` draws the run when it ends (also ``job.timeline()``).
        """
        args = parse_options(self.parallel, line)
        with user_errors():
            seed = validate_seed(args.seed)
        source = _python_source(shell_of(self), cell)
        if args.tasks or args.plan or args.timeline:
            return _tasks.run(self, args, source, seed)
        if args.all or args.targets is not None:
            if args.cache is not None:
                raise UsageError(
                    "--cache keeps a background cell's outcome; it does not go"
                    " with --all or --targets"
                )
            return self._everywhere(args, source, seed)
        delivery = _delivery.current() or _delivery.install(self.shell)
        delivery.remember_loop()
        delivery.deliver()  # a finished job of the same name gives way
        with user_errors():
            job = parallel(
                source,
                namespace=shell_of(self).user_ns,
                name=args.name or self._default_name(),
                out=args.out,
                pull=not args.no_pull,
                seed=seed,
                retries=args.retries,
                timeout=args.timeout,
                priority=args.priority,
                cache=False if args.cache is None else args.cache,
                ship_large=args.ship_large,
            )
        if job.from_cache:
            delivery.deliver()  # its names are here when the cell returns
        if args.block:
            return self._block(job, delivery)
        self._show_live(job)
        return None

    # -- the ways a cell runs ------------------------------------------------

    def _block(self, job: CellJob, delivery: _delivery.DeliveryHooks) -> Any:
        printed = [0, 0]

        def stream() -> None:
            for i, (text, out) in enumerate(
                ((job.stdout, sys.stdout), (job.stderr, sys.stderr))
            ):
                if len(text) > printed[i]:
                    out.write(text[printed[i] :])
                    out.flush()
                    printed[i] = len(text)

        manager = default_jobs()
        try:
            # not job.done(): it takes the job's lock, and an interrupt
            # landing just as it has would leave it taken for good
            while not finished(job):
                manager.wait_briefly(job, 0.01)
                stream()
                with user_errors():
                    manager.check_startable(job)
        except KeyboardInterrupt:
            job.cancel()
            raise
        stream()
        if job.state == "failed" and job.error is not None:
            delivery.deliver()  # what a task graph's other statements made
            raise job.error
        if job.state == "cancelled":
            raise JobError(f"job '{job.name}' was cancelled")
        delivery.deliver()
        if "__value__" in job.values:
            return job.values["__value__"]
        return _Rich(job.bundle) if job.bundle else None

    def _show_live(self, job: CellJob) -> None:
        show_job(job)

    def _everywhere(
        self, args: argparse.Namespace, source: str, seed: int | None
    ) -> Any:
        with user_errors():
            runs = parallel(
                source,
                namespace=shell_of(self).user_ns,
                targets="all" if args.targets is None else args.targets,
                out=args.out,
                seed=seed,
                ship_large=args.ship_large,
            )
        for run in runs:
            print(f"[engine {run.engine}]")
            for text, out in ((run.stdout, sys.stdout), (run.stderr, sys.stderr)):
                if text:
                    out.write(text if text.endswith("\n") else text + "\n")
            if run.error is not None:
                print(run.error, file=sys.stderr)
            elif run.bundle and "text/plain" in run.bundle:
                print(run.bundle["text/plain"])
        failed = [run for run in runs if run.error is not None]
        if failed:
            first = failed[0].error
            assert first is not None
            raise JobError(
                f"the cell failed on {len(failed)} of {len(runs)} engines;"
                f" first: {first}",
                first.remote_traceback,
            )
        if args.out:
            if len(args.out) == 1:
                return {run.engine: run.values.get(args.out[0]) for run in runs}
            return {run.engine: run.values for run in runs}
        return None

    def _default_name(self) -> str:
        """``cell-N`` after the cell's execution count; suffixed if taken."""
        base = name = f"cell-{shell_of(self).execution_count}"
        taken = {job.name for job in default_jobs().jobs() if not finished(job)}
        n = 1
        while name in taken:
            n += 1
            name = f"{base}-{n}"
        return name

    # -- %jobs -----------------------------------------------------------------

    @line_magic
    def jobs(self, line: str) -> Any:
        """Background jobs: ``%jobs`` lists them.

        ``%jobs wait [NAME ...]``  wait for these jobs (all when none named);
                                   raises a failed job's error
        ``%jobs cancel NAME``      queued: removed; running: interrupted
        ``%jobs result NAME``      the job's view again: value, output, names
        ``%jobs clear``            forget finished jobs
        ``%jobs panel``            the table, live, with Cancel per job
        """
        command, *names = line.split() or ["list"]
        commands: dict[str, Callable[[list[str]], Any]] = {
            "list": self._jobs_list,
            "wait": self._jobs_wait,
            "cancel": self._jobs_cancel,
            "result": self._jobs_result,
            "clear": self._jobs_clear,
            "panel": self._jobs_panel,
        }
        handler = commands.get(command)
        if handler is None:
            raise UsageError(
                f"unknown %jobs subcommand {command!r};"
                f" use one of: {', '.join(commands)}"
            )
        with user_errors():
            return handler(names)

    def _jobs_list(self, names: list[str]) -> JobsTable:
        return JobsTable(default_jobs().jobs())

    def _jobs_wait(self, names: list[str]) -> None:
        manager = default_jobs()
        jobs = [manager.get(n) for n in names] if names else manager.jobs()
        manager.wait(jobs)
        delivery = _delivery.current()
        if delivery is not None:
            delivery.deliver()
        for job in jobs:
            if job.state == "failed" and job.error is not None:
                raise job.error

    def _jobs_cancel(self, names: list[str]) -> None:
        if len(names) != 1:
            raise UsageError(
                "%jobs cancel needs one job name, e.g. %jobs cancel cell-7"
            )
        job = default_jobs().get(names[0])
        if job.done():
            print(f"paracell: job '{job.name}' already {job.state}")
            return
        job.cancel()
        try:
            default_jobs().wait([job], timeout=5)
        except TimeoutError:
            print(f"paracell: job '{job.name}' is still stopping")
            return
        print(f"paracell: job '{job.name}' {job.state}")

    def _jobs_result(self, names: list[str]) -> JobView:
        if len(names) != 1:
            raise UsageError(
                "%jobs result needs one job name, e.g. %jobs result cell-7"
            )
        return JobView(default_jobs().get(names[0]))

    def _jobs_panel(self, names: list[str]) -> Any:
        if names:
            raise UsageError("%jobs panel takes no job names: it shows every job")
        return jobs_panel(default_jobs())

    def _jobs_clear(self, names: list[str]) -> None:
        gone = default_jobs().clear()
        print(
            f"paracell: forgot {len(gone)} finished job{'s' if len(gone) != 1 else ''}"
        )


class _Rich:
    """Shows a mime bundle computed on the engine (rich display kept)."""

    def __init__(self, bundle: dict[str, Any]) -> None:
        self.bundle = bundle

    def _repr_mimebundle_(self, **kwargs: Any) -> dict[str, Any]:
        return self.bundle

    def __repr__(self) -> str:
        return str(self.bundle.get("text/plain", ""))


def _python_source(shell: Any, cell: str) -> str:
    """The cell as plain Python, a blank line first so that line numbers in
    tracebacks match the notebook's (line 1 is the magic's).

    IPython's transforms (magics, ``!cmd``, ``x?``) only matter for cells
    that are not Python already; a cell that compiles as it is skips them,
    a millisecond of a trivial cell's round trip.
    """
    source = "\n" + cell
    if compiles(source):
        return source
    source = "\n" + str(shell.transform_cell(cell))
    if compiles(source):  # the job manager's check then finds it compiled
        return source
    try:
        check_syntax(source, "<cell>")
    except SyntaxError as err:
        raise CellSyntaxError(err) from None
    return source
