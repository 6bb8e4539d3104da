"""Static analysis for ``%pmap`` and ``%%parallel``: what to run, what it needs.

Three jobs, all without a cluster:

- :func:`parse_comprehension` splits the text after ``%pmap``'s options into
  the element expression (run on the engines) and its ``for`` / ``if``
  clauses (run here), and :func:`iterate_items` walks those clauses lazily in
  the notebook's namespace.
- :func:`free_names` / :func:`element_free_names` find the globals a piece of
  code reads, with :mod:`symtable` for scoping and :mod:`ast` for evaluation
  order.
- :func:`plan_shipping` decides how each of those names reaches the engines
  (import, reference to an importable object, or value), following notebook
  functions into the globals *they* read; :func:`strip_globals` and
  :func:`rebind_globals` let a function travel without its ``__globals__``
  so that data it reads is pushed once, separately.
"""

from __future__ import annotations

import ast
import builtins
import dis
import importlib
import io
import symtable
import sys
import tokenize
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from types import CellType, CodeType, FunctionType, ModuleType, TracebackType
from typing import Any

from . import _pickling
from ._errors import InvalidRequest

__all__ = [
    "COMPREHENSION_FILENAME",
    "Comprehension",
    "Generator",
    "ShippingPlan",
    "check_shippable",
    "element_free_names",
    "free_names",
    "iterate_items",
    "parse_comprehension",
    "plan_shipping",
    "rebind_globals",
    "strip_globals",
    "user_traceback",
]

_EXAMPLE = "e.g. %pmap f(x) for x in xs"

#: Filename under which a comprehension's ``for`` and ``if`` clauses run here
#: (the element, run by the engines, is ``<pmap>``); an exception raised
#: through it is the user's (see :func:`user_traceback`).
COMPREHENSION_FILENAME = "<pmap clauses>"


# --------------------------------------------------------------------------
# Parsing the comprehension
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class Generator:
    """One ``for`` clause of a comprehension, with the ``if`` clauses after it.

    Attributes
    ----------
    target
        Source of the loop target, normalised (``"p"``, ``"(i, (a, b))"``).
    iter
        Source of the iterable expression; valid on its own as an expression.
    ifs
        Sources of the ``if`` conditions that follow this clause, in order.
    target_names
        Names the target binds, in order of appearance.
    """

    target: str
    iter: str
    ifs: tuple[str, ...]
    target_names: tuple[str, ...]


@dataclass(frozen=True)
class Comprehension:
    """A parsed ``%pmap`` comprehension.

    Attributes
    ----------
    element
        Source of the element expression, e.g. ``"simulate(p, steps=100)"``;
        valid on its own as an expression (parenthesised where needed, as for
        a bare walrus).
    generators
        One :class:`Generator` per ``for`` clause, in order.
    source
        The whole comprehension as the user wrote it, always in ``[...]``.
    """

    element: str
    generators: tuple[Generator, ...]
    source: str

    @property
    def target_names(self) -> tuple[str, ...]:
        """Every name bound by the ``for`` targets, in order, without repeats."""
        return tuple(
            dict.fromkeys(name for gen in self.generators for name in gen.target_names)
        )


def parse_comprehension(text: str) -> Comprehension:
    """Parse the comprehension that follows ``%pmap``'s options.

    Parameters
    ----------
    text
        A list comprehension with or without its brackets
        (``f(x) for x in xs``, ``[f(x) for x in xs if x > 0]``), or a
        generator expression in parentheses.

    Returns
    -------
    Comprehension
        The element expression and the ``for`` clauses, as source text.

    Raises
    ------
    InvalidRequest
        If the text is empty, not valid Python (also what only the compiler
        rejects, such as a walrus rebinding a loop variable or ``yield``), not
        a comprehension, or uses something ``%pmap`` cannot run (``async
        for``, ``await``, a loop target that is not a plain name, a set or
        dict comprehension).
    """
    text = text.strip()
    if not text:
        raise InvalidRequest(f"%pmap needs a comprehension, {_EXAMPLE}")
    parsed_text, node = _parse_expression(text)

    if isinstance(node, (ast.SetComp, ast.DictComp)):
        kind = "set" if isinstance(node, ast.SetComp) else "dict"
        raise InvalidRequest(
            f"%pmap builds a list, not a {kind}; write the comprehension in "
            f"[...] instead of {{...}}, {_EXAMPLE}"
        )
    if not isinstance(node, (ast.ListComp, ast.GeneratorExp)):
        raise InvalidRequest(
            f"%pmap needs a comprehension with a 'for' clause, {_EXAMPLE}"
        )
    if any(gen.is_async for gen in node.generators):
        raise InvalidRequest(
            "%pmap cannot run an 'async for' comprehension; iterate with a "
            f"plain 'for', {_EXAMPLE}"
        )
    if any(isinstance(sub, ast.Await) for sub in ast.walk(node)):
        raise InvalidRequest(
            "%pmap cannot run 'await' in a comprehension; call a plain "
            f"function instead, {_EXAMPLE}"
        )

    generators = tuple(_generator(parsed_text, gen) for gen in node.generators)
    try:
        # The parser accepts what the compiler rejects: a walrus rebinding a
        # loop variable, a starred target alone, `yield`, a nested `async for`.
        compile(parsed_text, COMPREHENSION_FILENAME, "eval")
    except SyntaxError as error:
        shift = 0 if parsed_text == text else 1
        raise _syntax_problem(error, text, shift=shift, verb="cannot run") from None
    if parsed_text == text:  # the user wrote the brackets
        source = _segment(text, node)
        if isinstance(node, ast.GeneratorExp):
            # A generator expression's position includes its parentheses.
            source = f"[{source[1:-1]}]"
    else:
        source = f"[{_without_trailing_comment(text)}]"
    return Comprehension(
        element=_expression_text(parsed_text, node.elt),
        generators=generators,
        source=source,
    )


def _parse_expression(text: str) -> tuple[str, ast.expr]:
    """Parse ``text`` as-is, or wrapped in brackets; return the text parsed."""
    try:
        return text, ast.parse(text, mode="eval").body
    except SyntaxError as bare_error:
        # The newline lets a trailing comment end before the closing bracket.
        wrapped = f"[{text}\n]"
        try:
            return wrapped, ast.parse(wrapped, mode="eval").body
        except SyntaxError as wrapped_error:
            # A bracket problem is about the user's own brackets: our added
            # pair would only turn "'(' was never closed" into a confusing
            # "']' does not match '('".
            if any(
                clue in bare_error.msg
                for clue in ("never closed", "unmatched", "does not match")
            ):
                raise _syntax_problem(bare_error, text, shift=0) from None
            raise _syntax_problem(wrapped_error, text, shift=1) from None


# Tokens that end a line without being code.
_NOT_CODE = frozenset(
    {
        tokenize.COMMENT,
        tokenize.NL,
        tokenize.NEWLINE,
        tokenize.ENDMARKER,
        tokenize.INDENT,
        tokenize.DEDENT,
    }
)


def _without_trailing_comment(text: str) -> str:
    """``text`` up to its last token, so a closing bracket can follow it."""
    end = (1, 0)
    for token in tokenize.generate_tokens(io.StringIO(text).readline):
        if token.type not in _NOT_CODE:
            end = token.end
    lines = text.splitlines(keepends=True)
    return "".join(lines[: end[0] - 1]) + lines[end[0] - 1][: end[1]]


def _syntax_problem(
    error: SyntaxError, text: str, *, shift: int, verb: str = "could not parse"
) -> InvalidRequest:
    """Turn a ``SyntaxError`` into a one-line message about the user's text."""
    lines = text.splitlines() or [""]
    lineno = error.lineno or 1
    if lineno > len(lines):
        where = "at the end"
    else:
        column = max((error.offset or 1) - (shift if lineno == 1 else 0), 1)
        where = f"at column {column}"
        if len(lines) > 1:
            where = f"on line {lineno} {where}"
    return InvalidRequest(
        f"%pmap {verb} the comprehension: {error.msg} ({where}); "
        f"fix the syntax, {_EXAMPLE}"
    )


def _generator(text: str, gen: ast.comprehension) -> Generator:
    for sub in ast.walk(gen.target):
        if isinstance(sub, ast.Name):
            continue
        if not isinstance(sub, (ast.Tuple, ast.List, ast.Starred, ast.expr_context)):
            raise InvalidRequest(
                f"%pmap loop targets must be plain names, not "
                f"{_segment(text, gen.target)!r}; write 'for x in ...' and use "
                "x in the element"
            )
    # ast.walk is breadth-first; depth-first gives the names in reading order.
    names = [sub.id for sub in _depth_first(gen.target) if isinstance(sub, ast.Name)]
    return Generator(
        # Targets hold only names, tuples and lists, so unparse is exact and
        # gives one line even when the user split the target over several.
        target=ast.unparse(gen.target),
        iter=_expression_text(text, gen.iter),
        ifs=tuple(_expression_text(text, cond) for cond in gen.ifs),
        target_names=tuple(names),
    )


def _depth_first(node: ast.AST) -> Iterator[ast.AST]:
    yield node
    for child in ast.iter_child_nodes(node):
        yield from _depth_first(child)


def _segment(text: str, node: ast.AST) -> str:
    segment = ast.get_source_segment(text, node)
    if segment is None:  # only for nodes without positions; ours all have them
        return ast.unparse(node)
    return segment


def _expression_text(text: str, node: ast.expr) -> str:
    """Source of ``node``, parenthesised when it does not stand on its own.

    Inside brackets a walrus, or an expression split over lines, is valid;
    on its own it is not, and engines compile the element on its own.
    """
    segment = _segment(text, node)
    try:
        alone = ast.parse(segment, mode="eval").body
    except SyntaxError:
        return f"({segment})"
    if ast.dump(alone) != ast.dump(node):
        return f"({segment})"
    return segment


# --------------------------------------------------------------------------
# Iterating the for/if clauses here
# --------------------------------------------------------------------------


def iterate_items(
    comp: Comprehension, namespace: Mapping[str, Any]
) -> Iterator[dict[str, Any]]:
    """Run the ``for`` and ``if`` clauses in the notebook; yield one dict per item.

    The clauses run exactly as in a Python comprehension: the first iterable
    is evaluated, and iterated over, at once (so ``for x in 5`` fails here
    and now); later iterables may use earlier targets (also from inside
    lambdas), ``if`` conditions filter where they stand, and the user's
    iterables are consumed lazily, one item at a time.

    Parameters
    ----------
    comp
        The parsed comprehension.
    namespace
        The notebook's namespace. Read, never written: loop targets, and
        names bound by a walrus in an ``if``, stay local to the iteration.
        A ``dict`` holding ``__builtins__`` (like IPython's ``user_ns``) is
        used live; any other mapping is copied once.

    Returns
    -------
    iterator of dict
        Every target name of every ``for`` clause, mapped to its value for
        each item.

    Raises
    ------
    Exception
        Whatever the user's iterables or conditions raise, unchanged; their
        tracebacks start in code named :data:`COMPREHENSION_FILENAME`.
    """
    names = comp.target_names
    clauses = "".join(
        f" for {gen.target} in ({gen.iter})"
        + "".join(f" if ({cond})" for cond in gen.ifs)
        for gen in comp.generators
    )
    values = "(" + "".join(f"{name}, " for name in names) + ")"
    # One generator expression compiled once gives Python's own semantics
    # for free. The enclosing lambda is a function scope, so a walrus in an
    # `if` binds there instead of in the user's namespace.
    code = compile(f"lambda: ({values}{clauses})", COMPREHENSION_FILENAME, "eval")
    make_items = eval(code, _evaluation_globals(namespace))
    # Calling it evaluates the first iterable and asks it for an iterator.
    return (dict(zip(names, item, strict=True)) for item in make_items())


def user_traceback(
    tb: TracebackType | None,
) -> tuple[bool, TracebackType | None]:
    """Whether the user's comprehension raised, and the traceback to show.

    An exception whose traceback runs through code compiled under
    :data:`COMPREHENSION_FILENAME` was raised by the user's iterables or
    conditions, or by code they call.  The frames before are paracell's;
    those compiled from the clauses are paracell's arrangement of the user's
    text (the cell line that holds the comprehension says more).  What is
    left to show is the frames of the code the clauses called, if any, as
    Python shows an error in a comprehension.

    Returns
    -------
    (bool, traceback or None)
        ``(False, None)`` when ``tb`` never enters the user's code; else
        ``(True, tail)``, where ``tail`` is None when the clauses' own text
        raised.
    """
    while tb is not None and tb.tb_frame.f_code.co_filename != COMPREHENSION_FILENAME:
        tb = tb.tb_next
    if tb is None:
        return False, None
    while tb is not None and tb.tb_frame.f_code.co_filename == COMPREHENSION_FILENAME:
        tb = tb.tb_next
    return True, tb


def _evaluation_globals(namespace: Mapping[str, Any]) -> dict[str, Any]:
    if isinstance(namespace, dict) and "__builtins__" in namespace:
        return namespace
    # eval() requires a real dict and adds __builtins__ to one that lacks it;
    # copy rather than write into the caller's mapping.
    return {"__builtins__": builtins, **namespace}


# --------------------------------------------------------------------------
# Free names
# --------------------------------------------------------------------------


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
    tree = ast.parse(source, mode=mode)
    order = _TopLevelOrder()
    order.visit(tree)

    table = symtable.symtable(source, "<paracell>", mode)
    read_anywhere = {
        symbol.get_name() for symbol in table.get_symbols() if symbol.is_referenced()
    }
    read_anywhere |= _nested_global_reads(table)
    free = (read_anywhere - order.bound) | order.read_before_bound
    # symtable also lists compiler-made names such as ".0".
    return {name for name in free if name.isidentifier()}


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
        self._hidden: list[set[str]] = []

    def _read(self, name: str) -> None:
        if any(name in hidden for hidden in self._hidden):
            return
        if name not in self.bound:
            self.read_before_bound.add(name)

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


# --------------------------------------------------------------------------
# Shipping plan
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class ShippingPlan:
    """How each name the engines need gets there.

    Attributes
    ----------
    modules
        Name as used here -> module to import on the engine
        (``import numpy as np`` gives ``{"np": "numpy"}``).
    from_imports
        Name -> ``(module, qualname)`` of an object the engine can import
        itself (``from math import sqrt`` gives ``{"sqrt": ("math", "sqrt")}``).
    by_value
        Name -> object to send by value: notebook functions, classes and
        lambdas, and data.
    engine_side
        Names neither the notebook nor builtins have: left to whatever the
        engine's namespace holds (for example from an earlier setup cell).
    """

    modules: dict[str, str]
    from_imports: dict[str, tuple[str, str]]
    by_value: dict[str, Any]
    engine_side: frozenset[str]


def plan_shipping(names: Iterable[str], namespace: Mapping[str, Any]) -> ShippingPlan:
    """Classify ``names`` against the notebook's namespace, transitively.

    Parameters
    ----------
    names
        Names the code run on the engines reads (see
        :func:`element_free_names`).
    namespace
        The notebook's namespace.

    Returns
    -------
    ShippingPlan
        Every name needed, including the globals read by by-value functions
        (and by the methods of by-value classes, by functions nested in
        them, and by functions they hold in closure cells, defaults or
        attributes), looked up in that function's own ``__globals__``.
        Builtins not shadowed in the namespace are left out.
    """
    modules: dict[str, str] = {}
    from_imports: dict[str, tuple[str, str]] = {}
    by_value: dict[str, Any] = {}
    engine_side: set[str] = set()

    seen_names: set[str] = set()
    scanned: set[int] = set()
    # (name, where to look it up); transitive names use the reading
    # function's own globals, which for notebook functions is the notebook.
    pending: list[tuple[str, Mapping[str, Any]]] = [
        (name, namespace) for name in sorted(set(names), reverse=True)
    ]
    while pending:
        name, scope = pending.pop()
        if name in seen_names:
            continue
        seen_names.add(name)
        if name not in scope:
            if not hasattr(builtins, name):
                engine_side.add(name)
            continue
        obj = scope[name]
        module_name = _importable_module_name(obj)
        if module_name is not None:
            modules[name] = module_name
            continue
        location = _import_location(obj)
        if location is not None:
            from_imports[name] = location
            continue
        by_value[name] = obj
        for func in _functions_to_scan(obj):
            if id(func) in scanned:
                continue
            scanned.add(id(func))
            pending.extend(
                (read, func.__globals__)
                for read in sorted(_code_global_names(func.__code__), reverse=True)
                if read not in seen_names
            )
    return ShippingPlan(
        modules=modules,
        from_imports=from_imports,
        by_value=by_value,
        engine_side=frozenset(engine_side),
    )


def check_shippable(plan: ShippingPlan) -> dict[str, bytes]:
    """Pickle every by-value object once, as it will travel.

    Plain functions are pickled with their globals stripped
    (:func:`strip_globals`); after ``cloudpickle.loads`` on the engine, pass
    each function to :func:`rebind_globals` with the namespace that holds the
    plan's other names.

    Returns
    -------
    dict
        Name -> pickled bytes, to send as they are (so large data is not
        pickled twice).

    Raises
    ------
    InvalidRequest
        Naming the first variable that cannot be pickled, and why.
    """
    pickled: dict[str, bytes] = {}
    for name, obj in plan.by_value.items():
        payload = strip_globals(obj) if isinstance(obj, FunctionType) else obj
        try:
            pickled[name] = _pickling.dumps(payload)
        except Exception as error:  # pickling fails in many exception types
            fix = (
                "move what it uses that cannot be pickled inside it"
                if isinstance(obj, (FunctionType, type))
                else "create it inside the function instead"
            )
            raise InvalidRequest(
                f"cannot ship {name!r} to the engines: {error}; {fix}"
            ) from error
    return pickled


def strip_globals(func: FunctionType) -> FunctionType:
    """Copy ``func`` with ``__globals__`` holding only the builtins.

    Pickling the copy with cloudpickle then carries no global data: the
    engine supplies the globals with :func:`rebind_globals`. Functions that
    ``func`` holds in closure cells, defaults or its ``__dict__`` (a
    decorator's wrapped function, ``functools.wraps``' ``__wrapped__``) and
    that share its globals are stripped too, so they do not carry the data
    instead. Everything else (code, name, qualname, defaults, closure,
    annotations, attributes) is kept.
    """
    return _with_globals(func, {"__builtins__": builtins})


def rebind_globals(func: FunctionType, namespace: dict[str, Any]) -> FunctionType:
    """Copy a stripped ``func`` with ``namespace`` as its globals.

    Runs on the engines. Functions it holds that shared its globals are
    rebound too, so they see the same namespace.
    """
    return _with_globals(func, namespace)


def _with_globals(func: FunctionType, new_globals: dict[str, Any]) -> FunctionType:
    old_globals = func.__globals__
    # Memo by id keeps sharing intact: a recursive closure refers to its own
    # copy, and two functions sharing a cell still share the new one.
    memo: dict[int, Any] = {}

    def convert(value: Any) -> Any:
        if isinstance(value, FunctionType) and value.__globals__ is old_globals:
            return copy(value)
        return value

    def copy(original: FunctionType) -> FunctionType:
        if id(original) in memo:
            return memo[id(original)]  # type: ignore[no-any-return]
        old_cells = original.__closure__ or ()
        new_cells = [memo.setdefault(id(cell), CellType()) for cell in old_cells]
        clone = FunctionType(
            original.__code__,
            new_globals,
            original.__name__,
            None,
            tuple(new_cells) if original.__closure__ is not None else None,
        )
        memo[id(original)] = clone
        clone.__defaults__ = (
            None
            if original.__defaults__ is None
            else tuple(convert(value) for value in original.__defaults__)
        )
        clone.__kwdefaults__ = (
            None
            if original.__kwdefaults__ is None
            else {key: convert(value) for key, value in original.__kwdefaults__.items()}
        )
        clone.__qualname__ = original.__qualname__
        clone.__module__ = original.__module__
        clone.__doc__ = original.__doc__
        clone.__annotations__ = dict(original.__annotations__)
        clone.__dict__.update(
            {key: convert(value) for key, value in original.__dict__.items()}
        )
        for old_cell, new_cell in zip(old_cells, new_cells, strict=True):
            try:
                contents = old_cell.cell_contents
            except ValueError:  # an empty cell: a variable not yet assigned
                continue
            new_cell.cell_contents = convert(contents)
        return clone

    return copy(func)


def _importable_module_name(obj: Any) -> str | None:
    """The name to import ``obj`` by on an engine, if it is such a module."""
    if not isinstance(obj, ModuleType):
        return None
    name = obj.__name__
    if name == "__main__" or sys.modules.get(name) is not obj:
        return None
    return name


def _import_location(obj: Any) -> tuple[str, str] | None:
    """``(module, qualname)`` if importing that gives back ``obj`` itself."""
    module_name = getattr(obj, "__module__", None)
    qualname = getattr(obj, "__qualname__", None)
    if not isinstance(module_name, str) or not isinstance(qualname, str):
        return None
    if module_name == "__main__" or "<locals>" in qualname:
        return None
    try:
        found: Any = importlib.import_module(module_name)
        for part in qualname.split("."):
            found = getattr(found, part)
    except Exception:  # any failure just means "not importable"
        return None
    return (module_name, qualname) if found is obj else None


def _functions_to_scan(obj: Any) -> Iterator[FunctionType]:
    """By-value functions whose globals must also reach the engines."""
    if isinstance(obj, FunctionType):
        yield from _function_and_held_functions(obj, set())
    elif isinstance(obj, type):
        for klass in obj.__mro__:
            if klass is object or _import_location(klass) is not None:
                continue  # the engine imports it, with its own globals
            for attribute in vars(klass).values():
                for func in _unwrap_class_attribute(attribute):
                    yield from _function_and_held_functions(func, set())


def _unwrap_class_attribute(attribute: Any) -> list[FunctionType]:
    if isinstance(attribute, (staticmethod, classmethod)):
        attribute = attribute.__func__
    if isinstance(attribute, property):
        accessors = (attribute.fget, attribute.fset, attribute.fdel)
        return [func for func in accessors if isinstance(func, FunctionType)]
    return [attribute] if isinstance(attribute, FunctionType) else []


def _function_and_held_functions(
    func: FunctionType, seen: set[int]
) -> Iterator[FunctionType]:
    """``func`` and the functions it holds (closure, defaults, attributes).

    Only held functions sharing ``func``'s globals are followed: those are
    the ones :func:`strip_globals` strips with it. Others (a library
    function in a closure cell) travel whole, or by reference, with their
    own globals.
    """
    if id(func) in seen:
        return
    seen.add(id(func))
    yield func
    held: list[Any] = [*func.__dict__.values(), *(func.__defaults__ or ())]
    held += list((func.__kwdefaults__ or {}).values())
    for cell in func.__closure__ or ():
        try:
            held.append(cell.cell_contents)
        except ValueError:
            continue
    for value in held:
        if isinstance(value, FunctionType) and value.__globals__ is func.__globals__:
            yield from _function_and_held_functions(value, seen)


# Opcodes that read or write a global name. co_names alone would also list
# attribute names (`np.mean` puts "mean" there), shipping a notebook global
# that merely shares an attribute's name.
_GLOBAL_NAME_OPS = frozenset(
    {
        "LOAD_GLOBAL",
        "STORE_GLOBAL",
        "DELETE_GLOBAL",
        "LOAD_NAME",  # class bodies nested in a function
        "LOAD_FROM_DICT_OR_GLOBALS",  # Python 3.12+ class bodies
    }
)


def _code_global_names(code: CodeType) -> set[str]:
    """Global names read by ``code`` and every code object nested in it."""
    names: set[str] = set()
    stack = [code]
    while stack:
        current = stack.pop()
        names.update(
            instruction.argval
            for instruction in dis.get_instructions(current)
            if instruction.opname in _GLOBAL_NAME_OPS
        )
        stack.extend(
            const for const in current.co_consts if isinstance(const, CodeType)
        )
    return names
