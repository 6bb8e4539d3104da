"""Runs on the engines: a background cell (``%%parallel``).

:func:`run_cell` runs the cell in a namespace of its own (or the engine's,
for setup run on every engine) and sends back the names the notebook pulls
and the cell's last value.
"""

from __future__ import annotations

import ast
import linecache
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from . import _pickling
from ._engine import (
    ItemFailure,
    TaskSpec,
    engine_identity,
    item_failure,
    pack_result,
    pickle_each,
    reporting,
    shield_reply,
)
from ._engineawait import compile_code, run_code
from ._enginenames import build_namespace, engine_user_ns
from ._enginequiet import output_mark
from ._seeding import map_root, seed_sources

__all__ = ["CellOutcome", "run_cell"]


@dataclass
class CellOutcome:
    """What a cell run on an engine sends back."""

    values: dict[str, bytes]  # name -> cloudpickle bytes
    unpicklable: dict[str, str]  # name -> why it cannot come back
    value: bytes | None  # the last expression's value, pickled, if it could be
    bundle: dict[str, Any] | None  # its rich display: mime type -> data
    failure: ItemFailure | None
    started: float
    seconds: float
    host: str
    pid: int
    interrupted: bool = False
    #: whether the cell (or anything while it ran) wrote to stdout or stderr:
    #: if not, no output of its can follow its reply
    wrote: bool = True


def run_cell(
    spec: TaskSpec,
    source: str,
    filename: str,
    pull: Sequence[str],
    persistent: bool = False,
) -> CellOutcome:
    """Run a cell; send back the names in ``pull`` and its last value.

    By default the cell runs in a fresh namespace over the engine's own, so
    engine-side setup is visible but two jobs never see each other's
    leftovers; ``persistent`` runs it in the engine's namespace itself (for
    setup cells run on every engine).
    """
    _pickling.install()
    mark = output_mark()
    ns = build_namespace(spec, engine_user_ns() if persistent else None)
    body, last = _parse(source, filename)
    seed_sources(map_root(spec.seed, spec.entropy), 0)
    started = time.time()
    tic = time.perf_counter()
    result, failure, interrupted = _execute(body, last, ns, filename)
    shield_reply()
    seconds = time.perf_counter() - tic
    values: dict[str, bytes] = {}
    unpicklable: dict[str, str] = {}
    if failure is None and not interrupted:
        values, unpicklable = pickle_each(ns, pull)
    value, bundle = pack_result(result)
    host, pid = engine_identity()
    return CellOutcome(
        values=values,
        unpicklable=unpicklable,
        value=value,
        bundle=bundle,
        failure=failure,
        started=started,
        seconds=seconds,
        host=host,
        pid=pid,
        interrupted=interrupted,
        wrote=mark is None or output_mark() != mark,
    )


def _parse(source: str, filename: str) -> tuple[ast.Module, ast.Expression | None]:
    """The cell's statements, and apart from them its last expression (if it
    ends with one); its lines go where tracebacks find them."""
    lines = source.splitlines(keepends=True)
    linecache.cache[filename] = (len(source), None, lines, filename)
    tree = ast.parse(source, filename)  # top-level await parses: see run_code
    last = None
    if tree.body and isinstance(tree.body[-1], ast.Expr):
        last = ast.Expression(tree.body[-1].value)
        tree.body.pop()
    return tree, last


def _execute(
    body: ast.Module, last: ast.Expression | None, ns: dict[str, Any], filename: str
) -> tuple[Any, ItemFailure | None, bool]:
    """Run the cell: its last expression's value, its failure, and whether it
    was interrupted."""
    result = None
    try:
        with reporting():
            run_code(compile_code(body, filename, "exec"), ns)
            if last is not None:
                result = run_code(compile_code(last, filename, "eval"), ns)
    except KeyboardInterrupt:
        return None, None, True
    except BaseException as err:
        return None, item_failure(0, err), False
    return result, None, False
