"""``%pmap``'s comprehension, without a cluster.

:func:`parse_comprehension` splits the text after ``%pmap``'s options into the
element expression (run on the engines) and its ``for`` / ``if`` clauses (run
here); :func:`iterate_items` walks those clauses lazily in the notebook's
namespace; :func:`user_traceback` keeps the user's frames of an error raised
through them.
"""

from __future__ import annotations

import ast
import builtins
import io
import tokenize
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from types import TracebackType
from typing import Any

from ._engineawait import AWAIT_FLAGS, awaits
from ._errors import InvalidRequest

__all__ = [
    "COMPREHENSION_FILENAME",
    "Comprehension",
    "Generator",
    "iterate_items",
    "parse_comprehension",
    "user_traceback",
]

_EXAMPLE = "e.g. %pmap f(x) for x in xs"

#: Filename under which a comprehension's ``for`` and ``if`` clauses run here
#: (the element, run by the engines, is ``<pmap>``); an exception raised
#: through it is the user's (see :func:`user_traceback`).
COMPREHENSION_FILENAME = "<pmap clauses>"


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
    if any(awaits(gen) for gen in node.generators):
        raise InvalidRequest(
            "%pmap cannot await in its 'for' or 'if' clauses ('await', 'async"
            " for'); await in the element only, e.g. %pmap await fetch(u) for"
            " u in urls"
        )

    generators = tuple(_generator(parsed_text, gen) for gen in node.generators)
    try:
        # The parser accepts what the compiler rejects: a walrus rebinding a
        # loop variable, a starred target alone, `yield`, a nested `async for`.
        # (an element may await: each item runs it to its end)
        compile(parsed_text, COMPREHENSION_FILENAME, "eval", flags=AWAIT_FLAGS)
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
