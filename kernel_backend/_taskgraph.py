"""A cell's top-level statements as a task graph (``%%parallel --tasks``).

Pure analysis, no cluster: each top-level statement is a task (a block is
one task, a ``def`` or ``class`` is one task).  What a statement does to each
name comes from :mod:`ast` (which names it reads, binds, deletes or modifies
in place) and :mod:`symtable` (which names a nested function, lambda or class
reads from the cell's top level).  Two statements conflict, and the later
depends on the earlier, when one writes a name the other reads or writes
(Bernstein's conditions), where

- *reads* are loads of the name, plus what the cell's own functions read
  when the statement refers to them (calls them, passes them on);
- *writes* are bindings (assignment, ``for``/``with``/``except`` targets,
  walrus, ``def``, ``class``, imports), ``del``, and modifications in place:
  ``x.append(...)`` and any method call on ``x``, ``x[i] = ...``,
  ``x.attr = ...``, ``x += ...``, ``del x[i]``, and names a called function
  declares ``global`` or modifies.

Modifying a name modifies every name that may share its object in the cell
(``b = a``, ``b = a[0]``, ``for row in rows``).  Calls of methods on modules
(``np.sum(x)``) read the module, they do not modify it.  Expression
statements that are calls (``print``, ``display``, plotting, writing a file)
keep their program order among themselves.  A statement the analysis cannot
see through (``from m import *``, ``exec``, ``globals()``) depends on every
earlier statement, and every later one on it.
"""

from __future__ import annotations

import ast
import bisect
import functools
import symtable
from collections.abc import Iterable
from dataclasses import dataclass, field

from ._taskscan import (
    SELF,
    function_effects,
    imported_names,
    is_output,
    receiver,
    root_name,
    scan_statement,
)

__all__ = ["Statement", "TaskGraph", "analyze_cell"]


@dataclass(frozen=True)
class Statement:
    """One top-level statement of a cell: a task."""

    index: int
    lineno: int  # first line in the cell (decorators included)
    end_lineno: int
    text: str
    reads: frozenset[str]
    binds: frozenset[str]
    modifies: frozenset[str]
    deletes: frozenset[str]
    output: bool = False  # an expression statement that is a call
    opaque: bool = False  # depends on everything before, everything after on it

    @functools.cached_property
    def writes(self) -> frozenset[str]:
        """Every name whose value this statement may change."""
        return self.binds | self.modifies | self.deletes

    @functools.cached_property
    def needs(self) -> frozenset[str]:
        """Names whose value must be here before it runs."""
        return self.reads | self.modifies

    @functools.cached_property
    def typed(self) -> str:
        """The statement as the user typed it: ``!cmd`` and ``%magic`` lines
        as such, not as the calls IPython turns them into."""
        return as_typed(self.text)

    @property
    def label(self) -> str:
        """The statement's first line, shortened to 60 characters."""
        text = self.typed.strip()
        first = text.splitlines()[0] if text else ""
        return first if len(first) <= 60 else first[:57] + "..."


#: IPython's calls for a ``!cmd`` or ``%magic`` line -> how the line reads
_SHELL_CALLS = {"system": "!", "getoutput": "!", "run_line_magic": "%"}


def as_typed(text: str) -> str:
    """``text`` with a ``!cmd`` or ``%magic`` line IPython turned into a call
    (``get_ipython().system('ls')``, ``x = get_ipython().getoutput('ls')``,
    ``get_ipython().run_line_magic('time', 'f()')``) put back as typed;
    any other statement as it is."""
    try:
        tree = ast.parse(text)
    except SyntaxError:
        return text
    if len(tree.body) != 1:
        return text
    node = tree.body[0]
    target = ""
    if isinstance(node, ast.Assign) and len(node.targets) == 1:
        target = ast.get_source_segment(text, node.targets[0]) or ""
        call = node.value
    elif isinstance(node, ast.Expr):
        call = node.value
    else:
        return text
    if not (
        isinstance(call, ast.Call)
        and not call.keywords
        and isinstance(call.func, ast.Attribute)
        and call.func.attr in _SHELL_CALLS
        and isinstance(call.func.value, ast.Call)
        and isinstance(call.func.value.func, ast.Name)
        and call.func.value.func.id == "get_ipython"
        and all(
            isinstance(arg, ast.Constant) and isinstance(arg.value, str)
            for arg in call.args
        )
    ):
        return text
    args = [arg.value for arg in call.args]  # type: ignore[attr-defined]
    if call.func.attr == "run_line_magic":
        if len(args) != 2:
            return text
        line = "%" + " ".join(part for part in args if part)
    else:
        if len(args) != 1:
            return text
        line = "!" + args[0]
    return f"{target} = {line}" if target else line


@dataclass(frozen=True)
class TaskGraph:
    """A cell's statements and which earlier ones each depends on."""

    source: str
    statements: tuple[Statement, ...]
    #: per statement, the earlier ones it waits for (none implied by others)
    deps: tuple[frozenset[int], ...]
    #: names the cell binds, in order of first binding
    bound: tuple[str, ...] = ()
    succs: tuple[frozenset[int], ...] = field(default=(), compare=False)
    #: name -> the statements that write it, in order
    writers: dict[str, list[int]] = field(
        default_factory=dict, compare=False, repr=False
    )

    def __post_init__(self) -> None:
        for statement in self.statements:
            for name in statement.writes:
                self.writers.setdefault(name, []).append(statement.index)

    def __len__(self) -> int:
        return len(self.statements)

    def producer(self, index: int, name: str) -> int | None:
        """The statement whose value of ``name`` statement ``index`` sees
        (the last earlier writer), or None: the notebook's."""
        writers = self.writers.get(name, [])
        position = bisect.bisect_left(writers, index)
        return writers[position - 1] if position else None

    def last_writer(self, name: str) -> int | None:
        """The statement that leaves ``name`` as the cell ends, or None."""
        return self.producer(len(self.statements), name)

    def descendants(self, index: int) -> set[int]:
        """Every statement that depends on ``index``, directly or not."""
        found: set[int] = set()
        todo = [index]
        while todo:
            for succ in self.succs[todo.pop()]:
                if succ not in found:
                    found.add(succ)
                    todo.append(succ)
        return found

    def edges(self) -> list[tuple[int, int]]:
        """Dependency edges (none implied by others: those are left out)."""
        return [(i, j) for j, preds in enumerate(self.deps) for i in sorted(preds)]


def analyze_cell(source: str, modules: Iterable[str] = ()) -> TaskGraph:
    """The task graph of ``source`` (plain Python, magics transformed away).

    ``modules``: names the notebook holds as modules (method calls on them
    only read them).  Raises the user's ``SyntaxError``.
    """
    tree = ast.parse(source)
    table = symtable.symtable(source, "<cell>", "exec")
    known_modules = set(modules) | imported_names(tree)
    aliases = Aliases(tree, known_modules)
    scans = [scan_statement(node, table, known_modules) for node in tree.body]
    effects = function_effects(scans)
    statements = []
    for index, (node, scan) in enumerate(zip(tree.body, scans, strict=True)):
        reads, modifies = set(scan.reads), set(scan.modifies)
        for name in scan.reads:
            if name in effects:
                reads |= effects[name][0]
                modifies |= {name if m == SELF else m for m in effects[name][1]}
        # a statement that binds or changes a name that may share its object
        # with others changes them all: every version of such a group then
        # lives together on one engine, so they stay one object there
        modifies = aliases.widen(modifies | aliases.shared(scan.binds)) - scan.binds
        modifies |= set(scan.modifies)
        reads |= modifies - scan.binds - known_modules
        first = min([node.lineno, *(d.lineno for d in _decorators(node))])
        statements.append(
            Statement(
                index=index,
                lineno=first,
                end_lineno=node.end_lineno or node.lineno,
                text=_text(source, first, node.end_lineno or node.lineno),
                reads=frozenset(reads),
                binds=frozenset(scan.binds),
                modifies=frozenset(modifies),
                deletes=frozenset(scan.deletes),
                output=is_output(node),
                opaque=scan.opaque,
            )
        )
    deps = _dependencies(statements)
    succs: list[set[int]] = [set() for _ in statements]
    for j, preds in enumerate(deps):
        for i in preds:
            succs[i].add(j)
    return TaskGraph(
        source=source,
        statements=tuple(statements),
        deps=tuple(deps),
        bound=_bound_in_order(statements),
        succs=tuple(frozenset(s) for s in succs),
    )


def _dependencies(statements: list[Statement]) -> list[frozenset[int]]:
    deps: list[frozenset[int]] = []
    last_output: int | None = None
    for j, later in enumerate(statements):
        preds = set()
        for i in range(j):
            earlier = statements[i]
            if (
                later.opaque
                or earlier.opaque
                or earlier.writes & (later.needs | later.writes)
                or earlier.needs & later.writes
            ):
                preds.add(i)
        if later.output:
            if last_output is not None:
                preds.add(last_output)
            last_output = j
        deps.append(frozenset(preds))
    return _reduced(deps)


def _reduced(deps: list[frozenset[int]]) -> list[frozenset[int]]:
    """Without the dependencies implied by others (``c`` on ``a`` when it
    depends on ``b`` that depends on ``a``): same order, fewer edges."""
    ancestors: list[set[int]] = []  # dependencies point backwards: one pass
    out = []
    for preds in deps:
        implied: set[int] = set()
        kept = []
        for i in sorted(preds, reverse=True):
            if i not in implied:
                kept.append(i)
                implied |= ancestors[i]
        ancestors.append(set(kept) | implied)
        out.append(frozenset(kept))
    return out


def _bound_in_order(statements: list[Statement]) -> tuple[str, ...]:
    seen: dict[str, None] = {}
    for s in statements:
        for name in sorted(s.binds):
            if not name.startswith("__"):
                seen.setdefault(name, None)
    return tuple(seen)


def _text(source: str, first: int, last: int) -> str:
    return "".join(source.splitlines(keepends=True)[first - 1 : last])


def _decorators(node: ast.stmt) -> list[ast.expr]:
    return list(getattr(node, "decorator_list", []))


class Aliases:
    """Names that may share one object: ``b = a``, ``b = a[0]``,
    ``for row in rows``, ``with x as y``."""

    def __init__(self, tree: ast.Module, modules: set[str]) -> None:
        self._parent: dict[str, str] = {}
        self._modules = modules
        for node in ast.walk(tree):
            if isinstance(node, ast.Assign):
                targets = [t for target in node.targets for t in _names_in(target)]
                self._join(targets + _shared(node.value))
            elif isinstance(node, (ast.For, ast.AsyncFor, ast.comprehension)):
                self._join(_names_in(node.target) + _shared(node.iter))
            elif isinstance(node, ast.withitem) and node.optional_vars is not None:
                self._join(_names_in(node.optional_vars) + _shared(node.context_expr))
            elif isinstance(node, ast.NamedExpr):
                self._join([node.target.id, *_shared(node.value)])

    def _find(self, name: str) -> str:
        while self._parent.get(name, name) != name:
            name = self._parent[name]
        return name

    def _join(self, names: list[str]) -> None:
        names = [n for n in names if n not in self._modules]
        if len(names) < 2:
            return
        root = self._find(names[0])
        for name in names[1:]:
            other = self._find(name)
            if other != root:
                self._parent[other] = root

    def _members(self) -> set[str]:
        return set(self._parent) | set(self._parent.values())

    def shared(self, names: set[str]) -> set[str]:
        """Those of ``names`` that may share their object with another name."""
        members = self._members()
        return {n for n in names if n in members}

    def widen(self, names: set[str]) -> set[str]:
        """``names`` and every name that may share an object with one of them."""
        if not names:
            return names
        roots = {self._find(n) for n in names}
        return names | {n for n in self._members() if self._find(n) in roots}


def _names_in(target: ast.expr) -> list[str]:
    return [n.id for n in ast.walk(target) if isinstance(n, ast.Name)]


def _shared(value: ast.expr) -> list[str]:
    """Names whose object ``value`` may be, or hold (not what calls return)."""
    if isinstance(value, (ast.Name, ast.Attribute, ast.Subscript, ast.Starred)):
        name = root_name(value)
        return [name] if name is not None else []
    if isinstance(value, ast.Call):  # ``a.reshape(3, 3)``, ``d.get(k)``
        name = receiver(value)
        return [name] if name is not None else []
    if isinstance(value, (ast.Tuple, ast.List, ast.Set)):
        return [n for element in value.elts for n in _shared(element)]
    if isinstance(value, ast.Dict):
        return [n for v in value.values for n in _shared(v)]
    if isinstance(value, ast.IfExp):
        return _shared(value.body) + _shared(value.orelse)
    return []
