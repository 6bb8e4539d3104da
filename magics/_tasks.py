"""``%%parallel --tasks``: checks its options, starts it, shows it."""

from __future__ import annotations

import argparse
import threading
from typing import Any

from IPython.core.error import UsageError
from IPython.display import display

from .._api import parallel
from ..kernel_backend import CellJob, TaskJob
from ..kernel_backend._waiting import finished
from ..widgets import TaskPlanView, show_job
from . import _delivery
from ._common import user_errors

__all__ = ["run"]


def check(args: argparse.Namespace) -> None:
    """One-line ``UsageError`` for options that do not go together."""
    if args.plan and not args.tasks:
        raise UsageError("--plan shows a task graph: use it with --tasks")
    if args.timeline and not args.tasks:
        raise UsageError("--timeline draws a task graph's run: use it with --tasks")
    if args.plan:
        for flag, given in (("--block", args.block), ("--all", args.all)):
            if given:
                raise UsageError(
                    f"--plan runs nothing, so it does not go with {flag};"
                    " drop --plan to run the cell"
                )
    if args.all or args.targets is not None:
        raise UsageError(
            "--tasks spreads the statements over the engines itself;"
            " it does not go with --all or --targets"
        )
    if args.cache is not None:
        raise UsageError("--cache does not go with --tasks (yet); drop one of them")


def run(magics: Any, args: argparse.Namespace, source: str, seed: int | None) -> Any:
    """Plan, or start the task job (background, or ``--block``)."""
    check(args)
    shell = magics.shell
    if args.plan:
        with user_errors():
            return TaskPlanView(
                parallel(source, namespace=shell.user_ns, tasks=True, plan=True)
            )
    delivery = _delivery.current() or _delivery.install(shell)
    delivery.remember_loop()
    delivery.deliver()  # a finished job of the same name gives way
    with user_errors():
        job = parallel(
            source,
            namespace=shell.user_ns,
            tasks=True,
            name=args.name or magics._default_name(),
            out=args.out,
            pull=not args.no_pull,
            seed=seed,
            timeout=args.timeout,
            priority=args.priority,
            ship_large=args.ship_large,
        )
    if args.block:
        try:
            value = magics._block(job, delivery)
        finally:
            if args.timeline and finished(job):  # after an interrupt too
                display(job.timeline())
        return value
    show_job(job)
    if args.timeline:
        _timeline_when_done(job)
    return None


def _timeline_when_done(job: TaskJob) -> None:
    """Show the planned timeline below the job's view; the run's once the
    job ends."""
    handle = display(job.timeline(), display_id=True)
    drawn = threading.Event()

    def draw(_: CellJob) -> None:
        if job.done() and not drawn.is_set():
            drawn.set()
            handle.update(job.timeline())

    job.subscribe(draw)
    draw(job)
