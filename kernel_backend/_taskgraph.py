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
import symtable
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

__all__ = ["Statement", "TaskGraph", "analyze_cell"]

#: Calls after which no name-level reasoning holds.
_OPAQUE_CALLS = frozenset({"exec", "eval", "globals", "locals", "vars", "__import__"})
#: Stands for "the function itself" among what calling a function modifies
#: (a closure that rebinds a ``nonlocal`` changes its own state).
_SELF = "<self>"
#: Calls that do not change the names passed to them.
_READ_ONLY_CALLS = frozenset({"print", "display", "len", "repr", "str", "type"})


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

    @property
    def writes(self) -> frozenset[str]:
        """Every name whose value this statement may change."""
        return self.binds | self.modifies | self.deletes

    @property
    def needs(self) -> frozenset[str]:
        """Names whose value must be here before it runs."""
        return self.reads | self.modifies

    @property
    def label(self) -> str:
        """The statement's first line, shortened to 60 characters."""
        first = self.text.strip().splitlines()[0] if self.text.strip() else ""
        return first if len(first) <= 60 else first[:57] + "..."


@dataclass(frozen=True)
class TaskGraph:
    """A cell's statements and which earlier ones each depends on."""

    source: str
    statements: tuple[Statement, ...]
    deps: tuple[frozenset[int], ...]
    #: names the cell binds, in order of first binding
    bound: tuple[str, ...] = ()
    succs: tuple[frozenset[int], ...] = field(default=(), compare=False)

    def __len__(self) -> int:
        return len(self.statements)

    def producer(self, index: int, name: str) -> int | None:
        """The statement whose value of ``name`` statement ``index`` sees
        (the last earlier writer), or None: the notebook's."""
        for earlier in range(index - 1, -1, -1):
            if name in self.statements[earlier].writes:
                return earlier
        return None

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

    def edges(self, reduced: bool = True) -> list[tuple[int, int]]:
        """Dependency edges; ``reduced``: without those implied by others."""
        out = []
        for j, preds in enumerate(self.deps):
            for i in sorted(preds):
                if reduced and any(i in self._ancestors(k) for k in preds if k != i):
                    continue
                out.append((i, j))
        return out

    def _ancestors(self, index: int) -> set[int]:
        found: set[int] = set()
        todo = [index]
        while todo:
            for pred in self.deps[todo.pop()]:
                if pred not in found:
                    found.add(pred)
                    todo.append(pred)
        return found


def analyze_cell(source: str, modules: Iterable[str] = ()) -> TaskGraph:
    """The task graph of ``source`` (plain Python, magics transformed away).

    ``modules``: names the notebook holds as modules (method calls on them
    only read them).  Raises the user's ``SyntaxError``.
    """
    tree = ast.parse(source)
    table = symtable.symtable(source, "<cell>", "exec")
    known_modules = set(modules) | _imported_names(tree)
    aliases = _Aliases(tree, known_modules)
    scans = [_scan(node, table, known_modules) for node in tree.body]
    effects = _function_effects(scans)
    statements = []
    for index, (node, scan) in enumerate(zip(tree.body, scans, strict=True)):
        reads, modifies = set(scan.reads), set(scan.modifies)
        for name in scan.reads:
            if name in effects:
                reads |= effects[name][0]
                modifies |= {name if m == _SELF else m for m in effects[name][1]}
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
                output=_is_output(node),
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
    return deps


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


def _is_output(node: ast.stmt) -> bool:
    value = node.value if isinstance(node, ast.Expr) else None
    if isinstance(value, ast.Await):
        value = value.value
    return isinstance(value, ast.Call)


def _imported_names(tree: ast.Module) -> set[str]:
    """Names bound by ``import x`` / ``import x.y`` / ``import x as y``."""
    return {
        (alias.asname or alias.name).split(".")[0]
        for node in ast.walk(tree)
        if isinstance(node, ast.Import)
        for alias in node.names
    }


def receiver(call: ast.Call) -> str | None:
    """``x`` for a method call on ``x`` (``x.append(1)``, ``x.a[0].f()``);
    None when the object is what a call returned (``load().mean()``)."""
    if not isinstance(call.func, ast.Attribute):
        return None
    node = call.func.value
    while isinstance(node, (ast.Attribute, ast.Subscript)):
        node = node.value
    return node.id if isinstance(node, ast.Name) else None


def root_name(node: ast.expr) -> str | None:
    """``a`` for ``a``, ``a.b``, ``a[i].c``, ``a.f(x).g``; None otherwise."""
    while True:
        if isinstance(node, ast.Name):
            return node.id
        if isinstance(node, (ast.Attribute, ast.Subscript, ast.Starred)):
            node = node.value
        elif isinstance(node, ast.Call):
            node = node.func
        else:
            return None


# -- what one statement does -------------------------------------------------


@dataclass
class _Scan:
    reads: set[str] = field(default_factory=set)
    binds: set[str] = field(default_factory=set)
    modifies: set[str] = field(default_factory=set)
    deletes: set[str] = field(default_factory=set)
    opaque: bool = False
    #: name bound here -> (reads, modifies) of the functions it defines,
    #: and the names the statement refers to
    functions: dict[str, tuple[set[str], set[str], set[str]]] = field(
        default_factory=dict
    )


def _scan(node: ast.stmt, table: symtable.SymbolTable, modules: set[str]) -> _Scan:
    scan = _Scan()
    visitor = _TopLevel(scan, table, modules)
    visitor.visit(node)
    # whatever this statement binds may hold the functions it defines, or
    # those it refers to (``g = partial(f, 1)``, a closure ``fit`` returns)
    for name in scan.binds:
        scan.functions[name] = (
            visitor.nested_reads,
            visitor.nested_modifies,
            set(scan.reads),
        )
    if isinstance(node, ast.ClassDef):
        # a class body runs now: what its methods read and change counts now
        scan.reads |= visitor.nested_reads - scan.binds
        scan.modifies |= visitor.nested_modifies - {_SELF}
    if _is_output(node):
        # a call made for its effect may change what it is given:
        # ``random.shuffle(deck)``, ``heapq.heappush(heap, x)``, ``next(it)``
        call = node.value  # type: ignore[attr-defined]
        call = call.value if isinstance(call, ast.Await) else call
        if not (isinstance(call.func, ast.Name) and call.func.id in _READ_ONLY_CALLS):
            passed = [*call.args, *(k.value for k in call.keywords)]
            for arg in passed:
                arg = arg.value if isinstance(arg, ast.Starred) else arg
                if isinstance(arg, ast.Name) and arg.id not in modules:
                    scan.modifies.add(arg.id)
    return scan


class _TopLevel(ast.NodeVisitor):
    """The reads and writes of one statement at the cell's top level."""

    def __init__(self, scan: _Scan, table: symtable.SymbolTable, modules: set[str]):
        self.scan = scan
        self.table = table
        self.modules = modules
        self.hidden: list[set[str]] = []  # comprehension targets
        self.nested_reads: set[str] = set()
        self.nested_modifies: set[str] = set()

    # names
    def visit_Name(self, node: ast.Name) -> None:
        if any(node.id in h for h in self.hidden):
            return
        if isinstance(node.ctx, ast.Load):
            self.scan.reads.add(node.id)
            if node.id in _OPAQUE_CALLS:
                self.scan.opaque = True
        elif isinstance(node.ctx, ast.Store):
            self.scan.binds.add(node.id)
        else:
            self.scan.deletes.add(node.id)

    def visit_NamedExpr(self, node: ast.NamedExpr) -> None:
        self.visit(node.value)
        # binds in the cell, even inside a comprehension
        self.scan.binds.add(node.target.id)

    # modifications in place
    def _modify(self, target: ast.expr) -> None:
        name = root_name(target)
        if name is not None and not any(name in h for h in self.hidden):
            self.scan.modifies.add(name)

    def visit_Assign(self, node: ast.Assign) -> None:
        self.visit(node.value)
        for target in node.targets:
            self._target(target)

    def visit_AnnAssign(self, node: ast.AnnAssign) -> None:
        if node.value is not None:
            self.visit(node.value)
            self._target(node.target)
        self.visit(node.annotation)

    def visit_AugAssign(self, node: ast.AugAssign) -> None:
        self.visit(node.value)
        if isinstance(node.target, ast.Name):
            self.scan.reads.add(node.target.id)
            self.scan.binds.add(node.target.id)
            self.scan.modifies.add(node.target.id)  # ``+=`` on a list is in place
        else:
            self._target(node.target)

    def visit_Delete(self, node: ast.Delete) -> None:
        for target in node.targets:
            self._target(target)

    def _target(self, target: ast.expr) -> None:
        if isinstance(target, (ast.Attribute, ast.Subscript)):
            self._modify(target)
            self.visit(target)  # the object and the index are read
        elif isinstance(target, (ast.Tuple, ast.List)):
            for element in target.elts:
                self._target(element)
        elif isinstance(target, ast.Starred):
            self._target(target.value)
        else:
            self.visit(target)

    def visit_Call(self, node: ast.Call) -> None:
        name = receiver(node)
        hidden = any(name in h for h in self.hidden)
        if name is not None and name not in self.modules and not hidden:
            self.scan.modifies.add(name)
        self.generic_visit(node)

    # imports
    def visit_Import(self, node: ast.Import) -> None:
        for alias in node.names:
            self.scan.binds.add((alias.asname or alias.name).split(".")[0])

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        for alias in node.names:
            if alias.name == "*":
                self.scan.opaque = True
            else:
                self.scan.binds.add(alias.asname or alias.name)

    def visit_ExceptHandler(self, node: ast.ExceptHandler) -> None:
        if node.name:
            self.scan.binds.add(node.name)
            self.scan.deletes.add(node.name)
        self.generic_visit(node)

    def visit_Global(self, node: ast.Global) -> None:
        self.scan.binds.update(node.names)  # top-level ``global x``: no effect, kept

    # patterns (match statements) bind names
    def visit_MatchAs(self, node: ast.MatchAs) -> None:
        if node.name:
            self.scan.binds.add(node.name)
        self.generic_visit(node)

    def visit_MatchStar(self, node: ast.MatchStar) -> None:
        if node.name:
            self.scan.binds.add(node.name)

    def visit_MatchMapping(self, node: ast.MatchMapping) -> None:
        if node.rest:
            self.scan.binds.add(node.rest)
        self.generic_visit(node)

    # comprehensions run now, with loop targets of their own
    def _comprehension(self, node: ast.AST, elements: list[ast.expr]) -> None:
        generators: list[ast.comprehension] = node.generators  # type: ignore[attr-defined]
        targets: set[str] = set()
        self.hidden.append(targets)
        for i, gen in enumerate(generators):
            if i == 0:
                self.hidden.pop()
                self.visit(gen.iter)  # the first iterable: the enclosing scope's
                self.hidden.append(targets)
            else:
                self.visit(gen.iter)
            targets.update(
                n.id for n in ast.walk(gen.target) if isinstance(n, ast.Name)
            )
            for cond in gen.ifs:
                self.visit(cond)
        for element in elements:
            self.visit(element)
        self.hidden.pop()

    def visit_ListComp(self, node: ast.ListComp) -> None:
        self._comprehension(node, [node.elt])

    visit_SetComp = visit_ListComp  # type: ignore[assignment]
    visit_GeneratorExp = visit_ListComp  # type: ignore[assignment]

    def visit_DictComp(self, node: ast.DictComp) -> None:
        self._comprehension(node, [node.key, node.value])

    # nested scopes run later: their global reads belong to who calls them
    def visit_FunctionDef(self, node: ast.FunctionDef | ast.AsyncFunctionDef) -> None:
        for expr in [*node.decorator_list, *node.args.defaults]:
            self.visit(expr)
        for default in node.args.kw_defaults:
            if default is not None:
                self.visit(default)
        self.scan.binds.add(node.name)
        self._nested(node)

    visit_AsyncFunctionDef = visit_FunctionDef  # type: ignore[assignment]

    def visit_Lambda(self, node: ast.Lambda) -> None:
        for expr in [*node.args.defaults, *node.args.kw_defaults]:
            if expr is not None:
                self.visit(expr)
        self._nested(node)
        # a lambda may run right here (``sorted(xs, key=lambda x: k[x])``)
        self.scan.reads |= self.nested_reads

    def visit_ClassDef(self, node: ast.ClassDef) -> None:
        for expr in [*node.decorator_list, *node.bases]:
            self.visit(expr)
        for keyword in node.keywords:
            self.visit(keyword.value)
        self.scan.binds.add(node.name)
        self._nested(node)

    def _nested(self, node: ast.AST) -> None:
        reads, modifies = _scope_effects(node, self.table, self.modules)
        self.nested_reads |= reads
        self.nested_modifies |= modifies


def _scope_effects(
    node: ast.AST, table: symtable.SymbolTable, modules: set[str]
) -> tuple[set[str], set[str]]:
    """Top-level names a nested scope reads, and those it changes."""
    scopes = [t for t in _walk_tables(table) if t.get_lineno() == node.lineno]  # type: ignore[attr-defined]
    globals_read: set[str] = set()
    declared: set[str] = set()
    for scope in scopes:
        for inner in _walk_tables(scope):
            for symbol in inner.get_symbols():
                if symbol.is_declared_global():
                    declared.add(symbol.get_name())
                if symbol.is_nonlocal():
                    declared.add(_SELF)
                if symbol.is_global() and (
                    symbol.is_referenced() or symbol.is_declared_global()
                ):
                    globals_read.add(symbol.get_name())
    modifies = set(declared)
    body = node.body if isinstance(node.body, list) else [node.body]  # type: ignore[attr-defined]
    for inner_node in (n for stmt in body for n in ast.walk(stmt)):
        name = None
        if isinstance(inner_node, ast.Call):
            name = receiver(inner_node)
        elif isinstance(inner_node, (ast.Attribute, ast.Subscript)) and isinstance(
            inner_node.ctx, (ast.Store, ast.Del)
        ):
            name = root_name(inner_node)
        if name in globals_read and name not in modules:
            modifies.add(name)
    return globals_read, modifies


def _walk_tables(table: symtable.SymbolTable) -> Iterator[symtable.SymbolTable]:
    yield table
    for child in table.get_children():
        yield from _walk_tables(child)


def _function_effects(scans: list[_Scan]) -> dict[str, tuple[set[str], set[str]]]:
    """Name -> what calling what it may hold reads and modifies, transitively."""
    effects: dict[str, tuple[set[str], set[str]]] = {}
    changed = True
    while changed:  # names that may hold functions, and which they hold
        changed = False
        for scan in scans:
            for name, (reads, modifies, refs) in scan.functions.items():
                linked = {r for r in refs if r in effects}
                if not (reads or modifies or linked):
                    continue
                have = effects.setdefault(name, (set(), set()))
                if not (reads | linked <= have[0] and modifies <= have[1]):
                    have[0].update(reads | linked)
                    have[1].update(modifies)
                    changed = True
    changed = True
    while changed:
        changed = False
        for reads, modifies in effects.values():
            for other in list(reads):
                if other in effects:
                    more_reads, more_mods = effects[other]
                    if not (more_reads <= reads and more_mods <= modifies):
                        reads |= more_reads
                        modifies |= more_mods
                        changed = True
    return effects


class _Aliases:
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
