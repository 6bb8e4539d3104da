"""What one top-level statement of a cell does to names (for task graphs).

:func:`scan_statement` walks a statement at the cell's top level with
:mod:`ast` and asks :mod:`symtable` which names its nested functions, lambdas
and classes read from the top level; :func:`function_effects` closes that
over the cell (a function calling another), and :class:`Aliases` tells which
names may share one object.  See :mod:`._taskgraph` for the rules.
"""

from __future__ import annotations

import ast
import symtable
from collections.abc import Iterator
from dataclasses import dataclass, field

from ._names import shell_call

__all__ = [
    "SELF",
    "Scan",
    "function_effects",
    "imported_names",
    "is_output",
    "receiver",
    "root_name",
    "scan_statement",
]

#: Calls after which no name-level reasoning holds.
_OPAQUE_CALLS = frozenset({"exec", "eval", "globals", "locals", "vars", "__import__"})
#: Stands for "the function itself" among what calling a function modifies
#: (a closure that rebinds a ``nonlocal`` changes its own state).
SELF = "<self>"
#: Calls that do not change the names passed to them.
_READ_ONLY_CALLS = frozenset({"print", "display", "len", "repr", "str", "type"})
#: Functions known to change their first argument, wherever they are called
#: (``first = next(it)``, ``top = heapq.heappop(heap)``).
_MUTATING_CALLS = frozenset(
    {
        "next",
        "anext",
        "setattr",
        "delattr",
        "shuffle",
        "heappush",
        "heappop",
        "heapify",
        "heapreplace",
        "heappushpop",
        "insort",
        "insort_left",
        "insort_right",
    }
)


def _statement_call(node: ast.stmt) -> ast.Call | None:
    """The call an expression statement makes (``print(x)``, ``await f()``)."""
    value = node.value if isinstance(node, ast.Expr) else None
    if isinstance(value, ast.Await):
        value = value.value
    return value if isinstance(value, ast.Call) else None


def is_output(node: ast.stmt) -> bool:
    """Whether ``node`` is an expression statement that is a call."""
    return _statement_call(node) is not None


def imported_names(tree: ast.Module) -> set[str]:
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


def changed_argument(call: ast.Call) -> str | None:
    """``it`` for ``next(it)``, ``heap`` for ``heapq.heappop(heap)``: the
    first argument of a function known to change it."""
    func = call.func
    called = func.id if isinstance(func, ast.Name) else getattr(func, "attr", None)
    if called in _MUTATING_CALLS and call.args:
        first = call.args[0]
        return first.id if isinstance(first, ast.Name) else None
    return None


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
class Scan:
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


def scan_statement(
    node: ast.stmt, table: symtable.SymbolTable, modules: set[str]
) -> Scan:
    scan = Scan()
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
        scan.modifies |= visitor.nested_modifies - {SELF}
    call = _statement_call(node)
    # a call made for its effect may change what it is given:
    # ``random.shuffle(deck)``, ``heapq.heappush(heap, x)``, ``next(it)``
    if call is not None and not (
        isinstance(call.func, ast.Name) and call.func.id in _READ_ONLY_CALLS
    ):
        for arg in [*call.args, *(k.value for k in call.keywords)]:
            arg = arg.value if isinstance(arg, ast.Starred) else arg
            if isinstance(arg, ast.Name) and arg.id not in modules:
                scan.modifies.add(arg.id)
    return scan


class _TopLevel(ast.NodeVisitor):
    """The reads and writes of one statement at the cell's top level."""

    def __init__(self, scan: Scan, table: symtable.SymbolTable, modules: set[str]):
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
        for name in (receiver(node), changed_argument(node)):
            hidden = any(name in h for h in self.hidden)
            if name is not None and name not in self.modules and not hidden:
                self.scan.modifies.add(name)
        self.generic_visit(node)
        shell = shell_call(node)
        if shell is not None:
            # a ``!cmd`` or ``%magic`` line: what its text expands or runs
            # is read, and its shell may touch anything, so it keeps its place
            reads, binds = shell
            self.scan.reads |= {
                n for n in reads if not any(n in h for h in self.hidden)
            }
            self.scan.binds.update(binds)
            self.scan.opaque = True

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

    visit_AsyncFunctionDef = visit_FunctionDef

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
                    declared.add(SELF)
                if symbol.is_global() and (
                    symbol.is_referenced() or symbol.is_declared_global()
                ):
                    globals_read.add(symbol.get_name())
    modifies = set(declared)
    body = node.body if isinstance(node.body, list) else [node.body]  # type: ignore[attr-defined]
    for inner_node in (n for stmt in body for n in ast.walk(stmt)):
        name = None
        if isinstance(inner_node, ast.Call):
            name = receiver(inner_node) or changed_argument(inner_node)
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


def function_effects(scans: list[Scan]) -> dict[str, tuple[set[str], set[str]]]:
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
