"""When background jobs' names land in the notebook: between cells, never mid-cell.

* A finished job is delivered on the kernel's event loop when no cell is
  running, else right after the running cell ends (``post_run_cell``), and in
  any case before the next cell starts (``pre_run_cell``).
* A cell that reads a name a pending job will produce first waits for that
  job: an AST transformer puts a call to :func:`wait_for_names` at the top of
  such cells.  Interrupting it stops the waiting only.
"""

from __future__ import annotations

import ast
import asyncio
import contextlib
import re
import sys
from typing import Any

from IPython.core.error import UsageError

from ..kernel_backend import (
    CellJob,
    InvalidRequest,
    JobError,
    JobManager,
    default_jobs,
)
from ..kernel_backend._names import free_names, shell_reads
from ..kernel_backend._waiting import finished

__all__ = ["DeliveryHooks", "install", "uninstall", "wait_for_names"]

_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_installed: DeliveryHooks | None = None


class DeliveryHooks:
    """Connects a :class:`JobManager` to one IPython shell."""

    def __init__(self, shell: Any, manager: JobManager) -> None:
        self.shell = shell
        self.manager = manager
        self.executing = False
        self.loop: asyncio.AbstractEventLoop | None = None
        self.transformer = _ImplicitWait(self)

    def install(self) -> None:
        self.shell.events.register("pre_run_cell", self._pre_run_cell)
        self.shell.events.register("post_run_cell", self._post_run_cell)
        if self.transformer not in self.shell.ast_transformers:
            self.shell.ast_transformers.append(self.transformer)
        self.manager.on_finished = self._job_finished

    def uninstall(self) -> None:
        for event, callback in (
            ("pre_run_cell", self._pre_run_cell),
            ("post_run_cell", self._post_run_cell),
        ):
            with contextlib.suppress(ValueError):
                self.shell.events.unregister(event, callback)
        with contextlib.suppress(ValueError):
            self.shell.ast_transformers.remove(self.transformer)
        if self.manager.on_finished == self._job_finished:
            self.manager.on_finished = None

    def remember_loop(self) -> None:
        """Note the kernel's event loop (called from a magic, main thread)."""
        with contextlib.suppress(RuntimeError):
            self.loop = asyncio.get_running_loop()

    # -- hooks -------------------------------------------------------------

    def _pre_run_cell(self, info: Any) -> None:
        self.deliver()
        self.executing = True

    def _post_run_cell(self, result: Any) -> None:
        self.executing = False
        self.deliver()
        self.manager.release_dropped_arrays()

    def _job_finished(self, job: CellJob) -> None:
        # monitor thread: hand over to the kernel's loop, which runs this
        # between cells (a running cell blocks it)
        loop = self.loop
        if loop is not None and not loop.is_closed():
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(self._between_cells)

    def _between_cells(self) -> None:
        if not self.executing:
            self.deliver()

    def deliver(self) -> None:
        """Bring every finished job's names into the notebook now."""
        for job, delivery in self.manager.deliver(self.shell.user_ns):
            job.notify()
            for note in delivery.notes(job.name):
                print(note, file=sys.stderr)

    # -- implicit waits ----------------------------------------------------

    def wait_for_names(self, names: list[str]) -> None:
        pending = self.manager.pending_names()
        jobs: dict[str, tuple[CellJob, list[str]]] = {}
        for name in names:
            job = pending.get(name)
            if job is not None:
                jobs.setdefault(job.name, (job, []))[1].append(name)
        for job, wanted in jobs.values():
            if not finished(job):  # not done(): see _waiting
                print(
                    f"waiting for job '{job.name}' ({', '.join(wanted)})…", flush=True
                )
                try:
                    self.manager.wait([job])
                except InvalidRequest as err:  # nothing can start the job
                    raise UsageError(f"{', '.join(wanted)}: {err}") from None
            delivery = self.manager.deliver_job(job, self.shell.user_ns)
            if delivery is not None:
                job.notify()
                for note in delivery.notes(job.name):
                    print(note, file=sys.stderr)
            error = job.error_for(wanted)
            if error is not None:
                raise error
            if job.state == "cancelled":
                raise JobError(
                    f"job '{job.name}' was cancelled; {', '.join(wanted)} never arrived"
                )


class _ImplicitWait(ast.NodeTransformer):
    """Puts ``wait_for_names([...])`` at the top of cells that read pending names."""

    def __init__(self, delivery: DeliveryHooks) -> None:
        self.delivery = delivery

    def visit_Module(self, node: ast.Module) -> ast.Module:
        try:
            pending = self.delivery.manager.pending_names()
            if not pending:
                return node
            needed = sorted(_names_read(node) & set(pending))
            if not needed:
                return node
            call = ast.parse(
                "__import__('paracell.magics._delivery', fromlist=['_'])"
                f".wait_for_names({needed!r})"
            ).body[0]
            node.body.insert(0, call)
            return ast.fix_missing_locations(node)
        except Exception:  # never break the user's cell over a wait
            return node


def _names_read(tree: ast.AST) -> set[str]:
    """Names a cell may read: loads, and identifiers in magics' arguments."""
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Load):
            found.add(node.id)
        elif (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr in ("run_line_magic", "run_cell_magic")
        ):
            # %pmap f(model) ... or a %%parallel cell: its text is a string
            texts = [
                arg.value
                for arg in node.args
                if isinstance(arg, ast.Constant) and isinstance(arg.value, str)
            ]
            if node.func.attr == "run_cell_magic" and texts[:1] == ["parallel"]:
                found.update(_cell_reads(texts[-1]))
            else:
                for text in texts[1:]:
                    found.update(_IDENTIFIER.findall(text))
    return found


def _cell_reads(body: str) -> set[str]:
    """What a ``%%parallel`` cell reads (it ships those), exactly if it parses."""
    from IPython import get_ipython

    try:
        shell = get_ipython()
        source = shell.transform_cell(body) if shell is not None else body
        return free_names(source, "exec") | shell_reads(source)
    except Exception:
        return set(_IDENTIFIER.findall(body))


def install(shell: Any) -> DeliveryHooks:
    """Deliver the default job manager's jobs into ``shell`` (idempotent)."""
    global _installed
    if _installed is not None:
        _installed.uninstall()
    _installed = DeliveryHooks(shell, default_jobs())
    _installed.install()
    return _installed


def uninstall() -> None:
    global _installed
    if _installed is not None:
        _installed.uninstall()
        _installed = None


def current() -> DeliveryHooks | None:
    return _installed


def wait_for_names(names: list[str]) -> None:
    """Wait for the jobs that will produce ``names`` (inserted into cells)."""
    if _installed is not None:
        _installed.wait_for_names(names)
