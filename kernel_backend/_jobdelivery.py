"""Which names a background cell brings back, and bringing them into the
notebook.

A job brings back the names its cell binds at top level (or those of
``--out``).  When it is delivered, a name the user re-assigned after
submitting the job keeps the user's value, and of two jobs that make the
same name the later-submitted one wins, whatever order they end in.
*When* a job is delivered is the IPython layer's decision (between cells).
"""

from __future__ import annotations

import ast
import functools
import types
from collections.abc import Iterable, Mapping, MutableMapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from ._celljob import CellJob
from ._errors import InvalidRequest
from ._names import parsed, shell_binds

__all__ = [
    "ABSENT",
    "Deliveries",
    "Delivery",
    "bound_names",
    "deliverable",
    "modules_already_here",
    "snapshot",
    "wanted_names",
]

#: Stands for a name the notebook did not have when a job was submitted.
ABSENT = object()


def bound_names(source: str) -> list[str]:
    """Names a cell binds at top level, in order of first appearance.

    Assignments, ``for``/``with`` targets, walrus, ``def``, ``class`` and
    imports all count; attribute and item assignments do not.
    """
    return list(_bound_names(source))


@functools.lru_cache(maxsize=32)
def _bound_names(source: str) -> tuple[str, ...]:
    tree, table = parsed(source, "exec")
    bound = {
        s.get_name()
        for s in table.get_symbols()
        if (s.is_assigned() or s.is_imported()) and not s.get_name().startswith("__")
    }
    first_seen: dict[str, tuple[int, int]] = {}
    for node in ast.walk(tree):
        name = None
        if isinstance(node, ast.Name):
            name = node.id
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            name = node.name
        elif isinstance(node, ast.alias):
            name = (node.asname or node.name).split(".")[0]
        if name in bound:
            where = (getattr(node, "lineno", 0), getattr(node, "col_offset", 0))
            first_seen[name] = min(first_seen.get(name, where), where)
    ordered = sorted(first_seen, key=first_seen.__getitem__)
    # ``%time y = f(x)`` binds ``y`` in the cell's namespace too
    return tuple(ordered + [n for n in shell_binds(source) if n not in first_seen])


def modules_already_here(source: str, namespace: Mapping[str, Any]) -> set[str]:
    """Names the cell only imports, that are modules in ``namespace`` already."""
    _, table = parsed(source, "exec")
    return {
        s.get_name()
        for s in table.get_symbols()
        if s.is_imported()
        and not s.is_assigned()
        and isinstance(namespace.get(s.get_name()), types.ModuleType)
    }


def wanted_names(
    source: str,
    bound: Sequence[str],
    namespace: Mapping[str, Any],
    outputs: Sequence[str] | None,
) -> list[str]:
    """The names a job brings back: ``outputs`` (``--out``), checked against
    what the cell binds (``bound``), or every name it binds."""
    if outputs is not None:
        unknown = [n for n in outputs if n not in bound]
        if unknown:
            raise InvalidRequest(
                f"--out names {unknown[0]!r}, which the cell does not assign"
                f" (it assigns: {', '.join(bound) or 'nothing'})"
            )
        return list(outputs)
    # ``import time`` in a job brings nothing new where the notebook has
    # that module already: no name to wait for, nothing to send
    here = modules_already_here(source, namespace)
    return [n for n in bound if n not in here]


def snapshot(namespace: Mapping[str, Any], names: Iterable[str]) -> dict[str, Any]:
    """The notebook's objects under ``names`` now (:data:`ABSENT` if none)."""
    return {n: namespace.get(n, ABSENT) for n in names}


def deliverable(job: CellJob) -> bool:
    """Whether ``job`` ended with names to bring back."""
    return job.state == "done" or (job.state == "failed" and job.partial_delivery)


@dataclass
class Delivery:
    """What bringing a job's names into the notebook did."""

    pulled: list[str] = field(default_factory=list)
    kept: list[str] = field(default_factory=list)  # re-assigned here meanwhile
    failed: dict[str, str] = field(default_factory=dict)  # could not come back

    def notes(self, job_name: str) -> list[str]:
        lines = [
            f"paracell: job '{job_name}' did not overwrite '{name}': it was"
            " re-assigned in the notebook after the job was submitted"
            for name in self.kept
        ]
        lines += [
            f"paracell: job '{job_name}' could not send back '{name}': {why}"
            for name, why in self.failed.items()
        ]
        return lines


class Deliveries:
    """Brings jobs' names into a namespace, remembering what each delivered
    (not thread-safe: the manager holds its lock)."""

    def __init__(self) -> None:
        # name -> (object, the job's submission order) of the last value a
        # job delivered
        self._delivered: dict[str, tuple[Any, int]] = {}

    def pull(
        self,
        job: CellJob,
        namespace: MutableMapping[str, Any],
        still_pending: set[str],
    ) -> Delivery:
        """Bring ``job``'s names into ``namespace``.  ``still_pending``: the
        names other jobs will bring back later."""
        delivery = Delivery()
        for name in job.outputs:
            if name in job.failed_names:
                delivery.failed[name] = job.failed_names[name]
            elif name in job.values and self._may_overwrite(
                job, name, namespace, delivery
            ):
                namespace[name] = job.values[name]
                self._delivered[name] = (job.values[name], job.order)
                delivery.pulled.append(name)
        # remember delivered values only while another job may still need
        # the comparison: never keep a user's big object alive for nothing
        for name in [n for n in self._delivered if n not in still_pending]:
            del self._delivered[name]
        return delivery

    def _may_overwrite(
        self,
        job: CellJob,
        name: str,
        namespace: Mapping[str, Any],
        delivery: Delivery,
    ) -> bool:
        now = namespace.get(name, ABSENT)
        if now is job.snapshot.get(name, ABSENT):
            return True
        # Changed since submission: by the user (keep theirs), or by
        # delivering another job (the later-submitted job wins).
        source = self._delivered.get(name)
        by_job = source is not None and source[0] is now
        if source is None or not by_job or source[1] > job.order:
            if not by_job:
                delivery.kept.append(name)
            return False
        return True
