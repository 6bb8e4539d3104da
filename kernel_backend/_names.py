"""The globals a piece of code reads: :mod:`symtable` for scoping and
:mod:`ast` for evaluation order (what runs before what).

A cell's ``!cmd`` lines and line magics reach here as IPython's calls
(``get_ipython().system('ls $folder')``); what their text names is read
too (:func:`cell_reads`), and what a statement magic binds is bound
(``%time y = f(x)``, :func:`shell_binds`).  The engine's own IPython runs
them there.
"""

from __future__ import annotations

import ast
import functools
import re
import symtable
from typing import Any

from ._comprehension import Comprehension
from ._engineawait import compile_code

__all__ = [
    "cell_reads",
    "check_syntax",
    "compiles",
    "element_free_names",
    "free_names",
    "shell_binds",
    "shell_call",
    "shell_reads",
]

#: What IPython makes of ``!cmd``, ``x = !cmd`` and ``%magic line`` in a cell:
#: ``get_ipython().system(...)``, ``.getoutput(...)``, ``.run_line_magic(...)``.
#: Their text names variables IPython expands when the line runs (``$x``,
#: ``{x + 1}``), from the namespace the cell runs in.
_SHELL_CALLS = frozenset({"system", "getoutput", "run_line_magic"})
#: Line magics whose argument is a Python statement run in the cell's
#: namespace: magic -> whether what the statement binds stays there.
_STATEMENT_MAGICS = {"time": True, "prun": True, "timeit": False}


def free_names(source: str, mode: str = "eval") -> set[str]:
    """Names that ``source`` reads but does not bind itself: its globals.

    Builtins are included; the caller decides what to do with them.

    Parameters
    ----------
    source
        An expression (``mode="eval"``) or a cell body (``mode="exec"``),
        as plain Python (IPython magics already transformed away).
    mode
        ``"eval"`` or ``"exec"``.

    Returns
    -------
    set of str
        The free names.

    Raises
    ------
    SyntaxError
        If ``source`` is not valid Python in ``mode``.

    Notes
    -----
    The rule, for names at module (top) level:

    - A name the code reads and never binds at top level is free.
    - A name bound at top level (assignment, walrus, ``for``/``with``/
      ``except`` target, import, ``def``, ``class``, match capture) is free
      only if, reading the top-level statements in textual order and each
      statement in evaluation order, some read of it comes before its first
      binding: ``x = x + 1``, ``total += 1`` and ``print(y); y = 1`` read a
      free name; ``y = 1; print(y)`` and ``(n := len(a)) + n`` do not.
      Branches and loops count as straight-line text (``if c: y = 1`` then
      ``print(y)`` counts ``y`` as bound).
    - Reads inside function, lambda and class bodies happen later, so they
      never make a top-level-bound name free. A name such a body declares
      ``global`` counts as read (it may be ``global n; n += 1``).
      Comprehensions run at once and count where they stand, minus their own
      loop targets.

    Scopes come from :mod:`symtable`: a name bound inside a nested function,
    lambda, comprehension or class is not free, nor is a name those read from
    an enclosing function.
    """
    if mode not in ("eval", "exec"):
        raise ValueError(f"mode must be 'eval' or 'exec', not {mode!r}")
    return set(_analysed(source, mode)[0])


@functools.lru_cache(maxsize=32)
def _analysed(
    source: str, mode: str
) -> tuple[frozenset[str], frozenset[str], tuple[str, ...]]:
    """:func:`free_names`, and what the code's IPython lines read before they
    are bound and bind (see :func:`cell_reads`), once per piece of code (a
    cell run again, a map's element mapped again, the store's key and the
    shipment of one cell)."""
    tree, table = parsed(source, mode)
    order = _TopLevelOrder()
    order.visit(tree)

    read_anywhere = {
        symbol.get_name() for symbol in table.get_symbols() if symbol.is_referenced()
    }
    read_anywhere |= _nested_global_reads(table)
    free = (read_anywhere - order.bound) | order.read_before_bound
    # symtable also lists compiler-made names such as ".0".
    return (
        frozenset(name for name in free if name.isidentifier()),
        frozenset(order.shell),
        tuple(order.shell_binds),
    )


def cell_reads(source: str, namespace: Any) -> set[str]:
    """What a cell (plain Python, IPython's transforms done) reads from the
    notebook: its free names, and the names its ``!cmd`` lines and magics
    expand (``$x``, ``{x}``; ``%time y = f(x)`` reads ``f`` and ``x``) that
    ``namespace`` has.  (A name such a line expands that the notebook lacks
    is left to the shell: ``!echo $HOME``.)"""
    free = free_names(source, "exec")
    return free | {name for name in shell_reads(source) if name in namespace}


def shell_reads(source: str) -> set[str]:
    """Names a cell's ``!cmd`` lines and magics expand or run (``$x``,
    ``{x}``, ``%time f(x)``) before the cell binds them, whether or not they
    exist anywhere."""
    return set(_analysed(source, "exec")[1])


def shell_binds(source: str) -> list[str]:
    """Names the cell's statement magics bind at top level (``%time y = f(x)``
    binds ``y``), in order of appearance."""
    return list(_analysed(source, "exec")[2])


def compiles(source: str) -> bool:
    """Whether ``source`` compiles as a module (a cell); one that did before
    is not compiled again (the magic checks the cell, the job manager the
    job's source: the same text)."""
    try:
        return _compiles(source)
    except SyntaxError:
        return False


def check_syntax(source: str, filename: str) -> None:
    """Raise the ``SyntaxError`` compiling ``source`` raises, ``filename`` in it."""
    if not compiles(source):
        compile_code(source, filename, "exec")


@functools.lru_cache(maxsize=32)
def _compiles(source: str) -> bool:
    compile_code(source, "<cell>", "exec")
    return True


@functools.lru_cache(maxsize=8)
def parsed(source: str, mode: str = "exec") -> tuple[ast.AST, symtable.SymbolTable]:
    """``source``'s syntax tree and symbol table, made once for the
    analyses of one piece of code (what it reads, what it binds, what it
    imports), and for the same cell run again.  Read them, never change
    them: they are shared.  Raises ``SyntaxError``."""
    return ast.parse(source, mode=mode), symtable.symtable(source, "<paracell>", mode)


def element_free_names(comp: Comprehension) -> set[str]:
    """Free names of the element expression, less the loop targets.

    These, with builtins filtered by :func:`plan_shipping`, are what the
    engines need besides the item's own target values.
    """
    return free_names(comp.element) - set(comp.target_names)


def _nested_global_reads(table: symtable.SymbolTable) -> set[str]:
    """Global names read in every scope nested in ``table``, recursively."""
    found: set[str] = set()
    for child in table.get_children():
        # symtable does not count `counter += 1` as a reference, so a name
        # declared `global` counts as read: it may well be.
        found.update(
            symbol.get_name()
            for symbol in child.get_symbols()
            if symbol.is_global()
            and (symbol.is_referenced() or symbol.is_declared_global())
        )
        found |= _nested_global_reads(child)
    return found


class _TopLevelOrder(ast.NodeVisitor):
    """Walk top-level code in evaluation order, noting binds and early reads.

    Function, lambda and class bodies are not entered (they run later);
    comprehensions are, with their own loop targets hidden.
    """

    def __init__(self) -> None:
        self.bound: set[str] = set()
        self.read_before_bound: set[str] = set()
        self.shell: set[str] = set()  # read by IPython lines, before bound
        self.shell_binds: list[str] = []
        self._hidden: list[set[str]] = []

    def _read(self, name: str) -> None:
        if any(name in hidden for hidden in self._hidden):
            return
        if name not in self.bound:
            self.read_before_bound.add(name)

    def visit_Call(self, node: ast.Call) -> None:
        self.generic_visit(node)
        lines = shell_call(node)
        if lines is None:
            return
        reads, binds = lines
        for name in sorted(reads):
            if name not in self.bound and not any(name in h for h in self._hidden):
                self.shell.add(name)
        for name in binds:
            if name not in self.bound and not any(name in h for h in self._hidden):
                self.shell_binds.append(name)
            self._bind(name)

    def _bind(self, name: str) -> None:
        if not any(name in hidden for hidden in self._hidden):
            self.bound.add(name)

    def visit_Name(self, node: ast.Name) -> None:
        if isinstance(node.ctx, ast.Store):
            self._bind(node.id)
        else:  # Load, and Del: deleting a name needs it to exist
            self._read(node.id)

    # Statements whose fields are not in evaluation order.

    def visit_Assign(self, node: ast.Assign) -> None:
        self.visit(node.value)
        for target in node.targets:
            self.visit(target)

    def visit_AugAssign(self, node: ast.AugAssign) -> None:
        if isinstance(node.target, ast.Name):
            self._read(node.target.id)
            self.visit(node.value)
            self._bind(node.target.id)
        else:
            self.visit(node.target)
            self.visit(node.value)

    def visit_AnnAssign(self, node: ast.AnnAssign) -> None:
        self.visit(node.annotation)
        if node.value is None:
            # `x: int` binds nothing; `obj.x: int` still evaluates obj.
            if not isinstance(node.target, ast.Name):
                self.visit(node.target)
            return
        self.visit(node.value)
        self.visit(node.target)

    def visit_NamedExpr(self, node: ast.NamedExpr) -> None:
        self.visit(node.value)
        self._bind(node.target.id)

    def visit_For(self, node: ast.For | ast.AsyncFor) -> None:
        self.visit(node.iter)
        self.visit(node.target)
        for statement in [*node.body, *node.orelse]:
            self.visit(statement)

    visit_AsyncFor = visit_For

    def visit_ExceptHandler(self, node: ast.ExceptHandler) -> None:
        if node.type is not None:
            self.visit(node.type)
        if node.name is not None:
            self._bind(node.name)
        for statement in node.body:
            self.visit(statement)

    def visit_Import(self, node: ast.Import | ast.ImportFrom) -> None:
        for alias in node.names:
            if alias.name != "*":  # a star import binds names we cannot know
                self._bind(alias.asname or alias.name.split(".")[0])

    visit_ImportFrom = visit_Import

    # Definitions: evaluate what runs now, skip the body, bind the name.

    def visit_FunctionDef(self, node: ast.FunctionDef | ast.AsyncFunctionDef) -> None:
        for expression in node.decorator_list:
            self.visit(expression)
        self._visit_signature(node.args)
        if node.returns is not None:
            self.visit(node.returns)
        self._bind(node.name)

    visit_AsyncFunctionDef = visit_FunctionDef

    def visit_Lambda(self, node: ast.Lambda) -> None:
        self._visit_signature(node.args)

    def _visit_signature(self, args: ast.arguments) -> None:
        for default in [*args.defaults, *args.kw_defaults]:
            if default is not None:
                self.visit(default)
        every_arg = [*args.posonlyargs, *args.args, *args.kwonlyargs]
        every_arg += [arg for arg in (args.vararg, args.kwarg) if arg is not None]
        for arg in every_arg:
            if arg.annotation is not None:
                self.visit(arg.annotation)

    def visit_ClassDef(self, node: ast.ClassDef) -> None:
        for expression in [*node.decorator_list, *node.bases]:
            self.visit(expression)
        for keyword in node.keywords:
            self.visit(keyword.value)
        self._bind(node.name)

    def visit_TypeAlias(self, node: Any) -> None:  # Python 3.12+: `type X = ...`
        self._bind(node.name.id)  # the value is evaluated lazily

    # Comprehensions run now, in a scope of their own.

    def _visit_comprehension(
        self, generators: list[ast.comprehension], elements: list[ast.expr]
    ) -> None:
        # The first iterable is evaluated in the enclosing scope.
        self.visit(generators[0].iter)
        self._hidden.append(
            {
                sub.id
                for gen in generators
                for sub in ast.walk(gen.target)
                if isinstance(sub, ast.Name)
            }
        )
        for index, gen in enumerate(generators):
            if index:
                self.visit(gen.iter)
            for condition in gen.ifs:
                self.visit(condition)
        for element in elements:
            self.visit(element)
        self._hidden.pop()

    def visit_ListComp(self, node: ast.ListComp | ast.SetComp) -> None:
        self._visit_comprehension(node.generators, [node.elt])

    visit_SetComp = visit_ListComp

    def visit_GeneratorExp(self, node: ast.GeneratorExp) -> None:
        self._visit_comprehension(node.generators, [node.elt])

    def visit_DictComp(self, node: ast.DictComp) -> None:
        self._visit_comprehension(node.generators, [node.key, node.value])

    # Match patterns bind names held as plain strings.

    def visit_MatchAs(self, node: ast.MatchAs) -> None:
        if node.pattern is not None:
            self.visit(node.pattern)
        if node.name is not None:
            self._bind(node.name)

    def visit_MatchStar(self, node: ast.MatchStar) -> None:
        if node.name is not None:
            self._bind(node.name)

    def visit_MatchMapping(self, node: ast.MatchMapping) -> None:
        for key in node.keys:
            self.visit(key)
        for pattern in node.patterns:
            self.visit(pattern)
        if node.rest is not None:
            self._bind(node.rest)


def shell_call(node: ast.Call) -> tuple[set[str], list[str]] | None:
    """If ``node`` is IPython's call for a ``!cmd`` or ``%magic`` line, what
    its text reads and binds; else None."""
    func = node.func
    if not (
        isinstance(func, ast.Attribute)
        and func.attr in _SHELL_CALLS
        and isinstance(func.value, ast.Call)
        and isinstance(func.value.func, ast.Name)
        and func.value.func.id == "get_ipython"
    ):
        return None
    texts = [
        arg.value
        for arg in node.args
        if isinstance(arg, ast.Constant) and isinstance(arg.value, str)
    ]
    if len(texts) != len(node.args) or not texts:
        return None
    line = texts[-1]
    reads = _expanded_names(line)
    binds: list[str] = []
    keeps = _STATEMENT_MAGICS.get(texts[0]) if func.attr == "run_line_magic" else None
    code = None if keeps is None else _statement(line)
    if code is not None:
        reads |= free_names(code, "exec")
        if keeps:
            order = _TopLevelOrder()  # its top level: not a comprehension's
            order.visit(parsed(code, "exec")[0])
            binds = sorted(order.bound)
    return reads, binds


def _statement(line: str) -> str | None:
    """The Python statement a statement magic's line runs: the line, or what
    follows its options (``-n 3 -r 1 f(x)``: ``f(x)``); None if none parses."""
    if compiles(line.strip()):
        return line.strip()
    starts = [m.start() for m in re.finditer(r"\S+", line)]
    options = [i for i, at in enumerate(starts) if line[at] == "-"]
    if not options:
        return None
    last = options[-1]  # the code starts after the last option, or its value
    for index in (last + 1, last + 2):
        if index < len(starts) and compiles(line[starts[index] :]):
            return line[starts[index] :]
    return None


def _expanded_names(text: str) -> set[str]:
    """Names in the fields IPython expands in a shell or magic line
    (``$x``, ``$x.attr``, ``{expression}``)."""
    try:
        from IPython.utils.text import DollarFormatter

        fields = [field for _, field, _, _ in DollarFormatter().parse(text) if field]
    except Exception:  # IPython then expands nothing either
        return set()
    names: set[str] = set()
    for field in fields:
        try:
            names |= free_names(field, "eval")
        except SyntaxError:
            continue
    return names
