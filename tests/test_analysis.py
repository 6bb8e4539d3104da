"""Unit tests for the static analysis: the comprehension, free names, the
shipping plan (paracell.kernel_backend._comprehension, _names, _plan; no
cluster needed)."""

from __future__ import annotations

import builtins
import collections
import fractions
import itertools
import os.path
import pickle
import textwrap
import types
from typing import Any

import cloudpickle
import numpy as np
import pytest

from paracell.kernel_backend import InvalidRequest, _comprehension
from paracell.kernel_backend._comprehension import (
    Comprehension,
    iterate_items,
    parse_comprehension,
)
from paracell.kernel_backend._names import element_free_names, free_names
from paracell.kernel_backend._plan import (
    ShippingPlan,
    check_shippable,
    plan_shipping,
    rebind_globals,
    strip_globals,
)

EXAMPLE = "e.g. %pmap f(x) for x in xs"


def notebook(source: str = "") -> dict[str, Any]:
    """A namespace like IPython's ``user_ns``, after running ``source`` in it."""
    namespace: dict[str, Any] = {"__name__": "__main__", "__builtins__": builtins}
    exec(textwrap.dedent(source), namespace)
    return namespace


def engine_namespace(plan: ShippingPlan, pickled: dict[str, bytes]) -> dict[str, Any]:
    """What an engine would build from a plan: imports, then values, rebound."""
    namespace: dict[str, Any] = {"__builtins__": builtins}
    for name, module in plan.modules.items():
        namespace[name] = __import__(module, fromlist=["_"])
    for name, (module, qualname) in plan.from_imports.items():
        found: Any = __import__(module, fromlist=["_"])
        for part in qualname.split("."):
            found = getattr(found, part)
        namespace[name] = found
    for name, data in pickled.items():
        obj = cloudpickle.loads(data)
        if isinstance(obj, types.FunctionType):
            obj = rebind_globals(obj, namespace)
        namespace[name] = obj
    return namespace


# --------------------------------------------------------------------------
# parse_comprehension
# --------------------------------------------------------------------------


def test_bare_comprehension_is_split_into_element_and_clauses() -> None:
    comp = parse_comprehension("simulate(p, steps=100) for p in params")

    assert comp.element == "simulate(p, steps=100)"
    assert len(comp.generators) == 1
    generator = comp.generators[0]
    assert (generator.target, generator.iter, generator.ifs) == ("p", "params", ())
    assert generator.target_names == ("p",)
    assert comp.source == "[simulate(p, steps=100) for p in params]"


def test_bracketed_comprehension_keeps_its_condition() -> None:
    comp = parse_comprehension("  [f(x) for x in xs if x > 0]  ")

    assert comp.element == "f(x)"
    assert comp.generators[0].ifs == ("x > 0",)
    assert comp.source == "[f(x) for x in xs if x > 0]"


def test_parenthesised_generator_expression_becomes_a_list_comprehension() -> None:
    comp = parse_comprehension("(f(x) for x in xs)")

    assert comp.element == "f(x)"
    assert comp.source == "[f(x) for x in xs]"


def test_several_for_clauses_are_kept_in_order_with_their_conditions() -> None:
    comp = parse_comprehension("score(m, f) for m in models if ok(m) for f in folds")

    assert [g.target for g in comp.generators] == ["m", "f"]
    assert [g.iter for g in comp.generators] == ["models", "folds"]
    assert [g.ifs for g in comp.generators] == [("ok(m)",), ()]
    assert comp.target_names == ("m", "f")


def test_tuple_and_starred_targets_list_their_names_in_order() -> None:
    nested = parse_comprehension("g(i, a, b) for i, (a, b) in enumerate(pairs)")
    starred = parse_comprehension("h(first, rest) for first, *rest in rows")

    assert nested.generators[0].target == "(i, (a, b))"
    assert nested.generators[0].target_names == ("i", "a", "b")
    assert starred.generators[0].target == "(first, *rest)"
    assert starred.generators[0].target_names == ("first", "rest")


def test_repeated_target_names_are_listed_once() -> None:
    comp = parse_comprehension("x for x in xs for x in range(x)")

    assert comp.target_names == ("x",)


def test_walrus_element_is_parenthesised_so_it_stands_alone() -> None:
    comp = parse_comprehension("[y := f(x) for x in xs]")

    assert comp.element == "(y := f(x))"
    compile(comp.element, "<test>", "eval")


def test_element_split_over_lines_is_parenthesised() -> None:
    comp = parse_comprehension("[a +\n    b for a in xs]")

    assert comp.element == "(a +\n    b)"
    compile(comp.element, "<test>", "eval")


def test_element_that_stands_alone_keeps_the_users_spelling() -> None:
    comp = parse_comprehension("[ (a,  b) for a in xs ]")

    assert comp.element == "(a,  b)"


def test_trailing_comment_is_left_out_of_the_source() -> None:
    comp = parse_comprehension("f(x) for x in xs  # every x")

    assert comp.source == "[f(x) for x in xs]"
    assert comp.generators[0].iter == "xs"


def test_conditional_iterable_keeps_its_meaning() -> None:
    comp = parse_comprehension("x for x in (a if flag else b)")

    assert comp.generators[0].iter == "a if flag else b"
    namespace = notebook("a, b, flag = [1, 2], [3], False")
    assert [item["x"] for item in iterate_items(comp, namespace)] == [3]


@pytest.mark.parametrize("text", ["", "   ", "\n"])
def test_empty_text_asks_for_a_comprehension(text: str) -> None:
    with pytest.raises(InvalidRequest) as caught:
        parse_comprehension(text)

    assert str(caught.value) == f"%pmap needs a comprehension, {EXAMPLE}"


@pytest.mark.parametrize("text", ["f(x)", "xs", "[f(x), g(x)]", "lambda x: x"])
def test_expression_without_for_clause_asks_for_one(text: str) -> None:
    with pytest.raises(
        InvalidRequest, match="needs a comprehension with a 'for' clause"
    ):
        parse_comprehension(text)


def test_syntax_error_names_the_message_and_column() -> None:
    with pytest.raises(InvalidRequest) as caught:
        parse_comprehension("f(x)) for x in xs")

    message = str(caught.value)
    assert "unmatched ')'" in message
    assert "column 5" in message
    assert EXAMPLE in message


def test_unclosed_parenthesis_points_at_the_users_bracket() -> None:
    with pytest.raises(InvalidRequest) as caught:
        parse_comprehension("f(x for x in xs")

    assert "'(' was never closed (at column 2)" in str(caught.value)


def test_unfinished_comprehension_is_reported_at_the_end() -> None:
    with pytest.raises(InvalidRequest, match=r"invalid syntax \(at the end\)"):
        parse_comprehension("f(x) for x in")


def test_async_comprehension_is_rejected() -> None:
    with pytest.raises(InvalidRequest, match="'async for'"):
        parse_comprehension("f(x) async for x in xs")


def test_await_in_the_element_is_taken_and_in_the_clauses_rejected() -> None:
    comp = parse_comprehension("await fetch(x) for x in xs")
    assert comp.element == "await fetch(x)"
    with pytest.raises(InvalidRequest, match="'await'"):
        parse_comprehension("x for x in [await fetch(y) for y in ys]")
    with pytest.raises(InvalidRequest, match="'await'"):
        parse_comprehension("x for x in xs if await ok(x)")


@pytest.mark.parametrize(
    ("text", "kind"), [("{x for x in xs}", "set"), ("{x: 1 for x in xs}", "dict")]
)
def test_set_and_dict_comprehensions_are_rejected(text: str, kind: str) -> None:
    with pytest.raises(InvalidRequest, match=f"builds a list, not a {kind}"):
        parse_comprehension(text)


@pytest.mark.parametrize("text", ["x for obj.attr in xs", "x for d[k] in xs"])
def test_targets_that_are_not_plain_names_are_rejected(text: str) -> None:
    with pytest.raises(InvalidRequest, match="loop targets must be plain names"):
        parse_comprehension(text)


def test_invalid_request_is_a_value_error() -> None:
    with pytest.raises(ValueError):
        parse_comprehension("f(x)")


# --------------------------------------------------------------------------
# iterate_items
# --------------------------------------------------------------------------


def test_each_item_binds_every_target_name() -> None:
    comp = parse_comprehension("f(i, a, b) for i, (a, b) in enumerate(pairs)")
    namespace = notebook("pairs = [(1, 2), (3, 4)]")

    assert list(iterate_items(comp, namespace)) == [
        {"i": 0, "a": 1, "b": 2},
        {"i": 1, "a": 3, "b": 4},
    ]


def test_items_match_pythons_own_comprehension() -> None:
    text = "(m, f) for m in models if m % 2 for f in range(m) if (f + m) % 3"
    namespace = notebook("models = range(12)")
    comp = parse_comprehension(text)

    expected = eval(comp.source, namespace)
    got = [(item["m"], item["f"]) for item in iterate_items(comp, namespace)]

    assert got == expected


def test_later_iterables_see_earlier_targets_even_inside_lambdas() -> None:
    comp = parse_comprehension("y for x in xs for y in map(lambda v: v * x, range(x))")
    namespace = notebook("xs = [1, 2, 3]")

    items = [(item["x"], item["y"]) for item in iterate_items(comp, namespace)]

    assert items == [(1, 0), (2, 0), (2, 2), (3, 0), (3, 3), (3, 6)]


def test_conditions_filter_where_they_stand() -> None:
    namespace = notebook(
        """
        calls = []
        def ok(m):
            calls.append(m)
            return m != "b"
        """
    )
    comp = parse_comprehension("(m, f) for m in 'abc' if ok(m) for f in range(2)")

    items = list(iterate_items(comp, namespace))

    assert [(item["m"], item["f"]) for item in items] == [
        ("a", 0),
        ("a", 1),
        ("c", 0),
        ("c", 1),
    ]
    assert namespace["calls"] == ["a", "b", "c"]  # once per m, not per f


def test_nothing_runs_until_the_first_item_is_asked_for() -> None:
    namespace = notebook(
        """
        started = []
        def source():
            started.append(True)
            yield 1
        """
    )
    items = iterate_items(parse_comprehension("x for x in source()"), namespace)

    assert namespace["started"] == []
    assert next(items) == {"x": 1}
    assert namespace["started"] == [True]


def test_infinite_iterables_are_consumed_one_item_at_a_time() -> None:
    namespace = notebook(
        """
        import itertools
        pulled = []
        def counting():
            for n in itertools.count():
                pulled.append(n)
                yield n
        """
    )
    comp = parse_comprehension("n for n in counting() if n % 2")

    first = list(itertools.islice(iterate_items(comp, namespace), 3))

    assert [item["n"] for item in first] == [1, 3, 5]
    assert namespace["pulled"] == [0, 1, 2, 3, 4, 5]


def test_targets_and_walrus_names_do_not_leak_into_the_namespace() -> None:
    namespace = notebook("xs = ['a', 'bb']")
    before = dict(namespace)
    comp = parse_comprehension("x for x in xs if (n := len(x)) > 1")

    assert [item["x"] for item in iterate_items(comp, namespace)] == ["bb"]
    assert namespace == before


def test_plain_mapping_namespace_is_read_but_not_changed() -> None:
    namespace: collections.ChainMap[str, Any] = collections.ChainMap(
        {"xs": [1, 2]}, {"k": 10}
    )
    plain = {"xs": [3]}
    comp = parse_comprehension("x for x in xs if x < k")

    assert [item["x"] for item in iterate_items(comp, namespace)] == [1, 2]
    assert list(iterate_items(parse_comprehension("x for x in xs"), plain)) == [
        {"x": 3}
    ]
    assert plain == {"xs": [3]}  # eval() did not add __builtins__ to it


def test_user_errors_in_iterables_and_conditions_propagate_unchanged() -> None:
    class Boom(Exception):
        pass

    namespace = notebook("xs = [1, 0]")
    namespace["Boom"] = Boom

    with pytest.raises(ZeroDivisionError):
        list(iterate_items(parse_comprehension("x for x in xs if 1 / x"), namespace))
    with pytest.raises(NameError, match="undefined_iterable"):
        list(iterate_items(parse_comprehension("x for x in undefined_iterable"), {}))
    raising = parse_comprehension("x for x in (_ for _ in [1]).throw(Boom('mine'))")
    with pytest.raises(Boom, match="mine"):
        list(iterate_items(raising, namespace))


def test_clauses_are_compiled_once_not_per_item(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    compiled: list[str] = []

    def counting_compile(source: Any, *args: Any, **kwargs: Any) -> Any:
        compiled.append(source)
        return builtins.compile(source, *args, **kwargs)

    comp = parse_comprehension("(a, b) for a in range(50) if a % 2 for b in range(a)")
    monkeypatch.setattr(_comprehension, "compile", counting_compile, raising=False)

    items = list(iterate_items(comp, notebook()))

    assert len(items) == sum(range(1, 50, 2))
    assert len(compiled) == 1


# --------------------------------------------------------------------------
# free_names / element_free_names
# --------------------------------------------------------------------------


def test_free_names_of_a_call_include_function_arguments_and_builtins() -> None:
    assert free_names("simulate(p, steps=len(data))") == {
        "simulate",
        "p",
        "len",
        "data",
    }


def test_attributes_are_not_free_names() -> None:
    assert free_names("np.linalg.norm(x.values)") == {"np", "x"}


def test_names_bound_inside_lambdas_and_comprehensions_are_not_free() -> None:
    source = "sorted(ys, key=lambda v: v + shift) + [z * k for z in zs for k in z]"

    assert free_names(source) == {"sorted", "ys", "shift", "zs"}


def test_walrus_binding_is_local_when_read_after_it() -> None:
    assert free_names("(y := f(x)) + y") == {"f", "x"}


def test_name_read_before_its_walrus_is_free() -> None:
    assert free_names("y + (y := 1)") == {"y"}


def test_walrus_inside_a_comprehension_binds_the_enclosing_scope() -> None:
    assert free_names("[last := v for v in vs] + [last]") == {"vs"}


def test_nested_function_reads_globals_but_not_its_enclosing_locals() -> None:
    source = """
    def outer(a):
        b = a + offset
        def inner():
            return a + b + scale
        return inner
    """
    assert free_names(textwrap.dedent(source), "exec") == {"offset", "scale"}


def test_class_body_names_are_local_but_methods_read_globals() -> None:
    source = """
    class Model(Base):
        rate = 0.1
        size = rate * factor
        def step(self):
            return rate
    """
    # `rate` inside a method is the global, not the class attribute.
    assert free_names(textwrap.dedent(source), "exec") == {"Base", "factor", "rate"}


def test_exec_name_assigned_before_it_is_read_is_not_free() -> None:
    assert free_names("y = 1\nprint(y)", "exec") == {"print"}


@pytest.mark.parametrize(
    ("source", "free"),
    [
        ("x = x + 1", {"x"}),
        ("total += 1", {"total"}),
        ("print(y)\ny = 1", {"print", "y"}),
        ("for i in range(3):\n    acc = acc + i", {"acc", "range"}),
        ("del gone", {"gone"}),
        ("ys = [y for _ in r]\ny = 1", {"r", "y"}),
    ],
)
def test_exec_name_read_before_its_first_assignment_is_free(
    source: str, free: set[str]
) -> None:
    assert free_names(source, "exec") == free


def test_exec_function_body_may_read_a_name_assigned_later() -> None:
    assert free_names("def f():\n    return later\nlater = 1", "exec") == set()


def test_exec_imports_definitions_and_targets_bind_names() -> None:
    source = """
    import os.path
    from json import dumps as to_json
    def helper(): pass
    class Thing: pass
    for i in items: pass
    with open(path) as fh: pass
    try:
        pass
    except KeyError as error:
        pass
    use(os, to_json, helper, Thing, i, fh, error)
    """
    assert free_names(textwrap.dedent(source), "exec") == {
        "items",
        "open",
        "path",
        "KeyError",
        "use",
    }


def test_exec_assignment_in_a_branch_counts_as_binding() -> None:
    assert free_names("if flag:\n    z = 1\nprint(z)", "exec") == {"flag", "print"}


def test_exec_default_values_and_annotations_are_read_at_definition() -> None:
    source = "def f(a=DEFAULT, *, b=KW) -> RET:\n    return a"
    assert free_names(source, "exec") == {"DEFAULT", "KW", "RET"}


def test_exec_annotation_without_value_does_not_bind() -> None:
    assert free_names("x: int\ny: int = 3\nuse(x, y)", "exec") == {"int", "use", "x"}


def test_exec_global_declared_in_a_function_counts_as_read() -> None:
    source = "def bump():\n    global counter\n    counter += 1"
    assert free_names(source, "exec") == {"counter"}


def test_exec_match_captures_bind_names() -> None:
    source = """
    match value:
        case [first, *rest]:
            use(first, rest)
        case {"k": found, **others}:
            use(found, others)
        case Point(x=px) as whole:
            use(px, whole)
    """
    assert free_names(textwrap.dedent(source), "exec") == {"value", "use", "Point"}


def test_free_names_rejects_an_unknown_mode() -> None:
    with pytest.raises(ValueError, match="mode"):
        free_names("x", "single")


def test_free_names_lets_syntax_errors_through() -> None:
    with pytest.raises(SyntaxError):
        free_names("x = = 1", "exec")


def test_element_free_names_leave_out_the_loop_targets() -> None:
    comp = parse_comprehension(
        "score(m, f, lambda: m + bias) for m in models for f in folds"
    )

    assert element_free_names(comp) == {"score", "bias"}


# --------------------------------------------------------------------------
# plan_shipping
# --------------------------------------------------------------------------


def test_aliased_module_is_shipped_as_import() -> None:
    namespace = notebook("import numpy as np\nimport os.path as osp")

    plan = plan_shipping(["np", "osp"], namespace)

    assert plan.modules == {"np": "numpy", "osp": os.path.__name__}
    assert plan.by_value == {}


def test_submodule_import_ships_the_package_it_binds() -> None:
    plan = plan_shipping(["os"], notebook("import os.path"))

    assert plan.modules == {"os": "os"}


def test_importable_functions_and_classes_are_shipped_as_from_imports() -> None:
    namespace = notebook(
        """
        from math import sqrt
        from collections import OrderedDict
        from json import dumps
        from os.path import join as path_join
        """
    )

    plan = plan_shipping(["sqrt", "OrderedDict", "dumps", "path_join"], namespace)

    assert plan.from_imports["sqrt"] == ("math", "sqrt")
    assert plan.from_imports["OrderedDict"] == ("collections", "OrderedDict")
    assert plan.from_imports["dumps"] == ("json", "dumps")
    assert plan.from_imports["path_join"] == (os.path.__name__, "join")
    assert plan.by_value == {}


def test_method_of_an_importable_class_is_found_by_its_dotted_qualname() -> None:
    namespace = {"limit": fractions.Fraction.limit_denominator}

    plan = plan_shipping(["limit"], namespace)

    assert plan.from_imports == {"limit": ("fractions", "Fraction.limit_denominator")}


def test_bound_classmethod_is_not_taken_for_an_importable_attribute() -> None:
    # Its qualname resolves to a new bound method, not to this object.
    namespace = {"from_float": fractions.Fraction.from_float}

    plan = plan_shipping(["from_float"], namespace)

    assert set(plan.by_value) == {"from_float"}


def test_notebook_function_is_shipped_by_value_with_the_globals_it_reads() -> None:
    namespace = notebook(
        """
        import numpy as np
        from math import sqrt
        SCALE = 3
        def helper(v):
            return sqrt(v) * SCALE
        def simulate(p):
            return np.mean([helper(p), missing_on_notebook])
        """
    )

    plan = plan_shipping(["simulate"], namespace)

    assert set(plan.by_value) == {"simulate", "helper", "SCALE"}
    assert plan.modules == {"np": "numpy"}
    assert plan.from_imports == {"sqrt": ("math", "sqrt")}
    assert plan.engine_side == frozenset({"missing_on_notebook"})


def test_data_is_shipped_by_value() -> None:
    namespace = notebook("data = [1, 2, 3]\nfrom math import pi")

    plan = plan_shipping(["data", "pi"], namespace)

    assert plan.by_value == {"data": [1, 2, 3], "pi": namespace["pi"]}


def test_names_the_notebook_lacks_are_left_for_the_engine() -> None:
    plan = plan_shipping(["loaded_by_setup_cell"], notebook())

    assert plan.engine_side == frozenset({"loaded_by_setup_cell"})


def test_builtins_are_ignored_unless_shadowed() -> None:
    namespace = notebook("def sum(values):\n    return 0")

    plan = plan_shipping(["len", "print", "sum"], namespace)

    assert set(plan.by_value) == {"sum"}
    assert plan.engine_side == frozenset()
    assert plan.modules == plan.from_imports == {}


def test_attribute_names_in_function_code_are_not_taken_for_globals() -> None:
    namespace = notebook("mean = 'a notebook global'\ndef f(a):\n    return a.mean()")

    plan = plan_shipping(["f"], namespace)

    assert set(plan.by_value) == {"f"}


def test_mutual_recursion_terminates() -> None:
    namespace = notebook(
        """
        def ping(n):
            return 0 if n == 0 else pong(n - 1)
        def pong(n):
            return 0 if n == 0 else ping(n - 1)
        """
    )

    plan = plan_shipping(["ping"], namespace)

    assert set(plan.by_value) == {"ping", "pong"}


def test_methods_of_by_value_classes_are_followed() -> None:
    namespace = notebook(
        """
        from collections import OrderedDict
        RATE = 0.5
        def clip(v):
            return v
        class Base:
            def base_step(self):
                return LIMIT
        class Model(Base):
            def predict(self, v):
                return clip(v) * RATE
            @staticmethod
            def make():
                return OrderedDict()
            @classmethod
            def build(cls):
                return cls()
            @property
            def size(self):
                return SIZE
        LIMIT = 1
        SIZE = 2
        """
    )

    plan = plan_shipping(["Model"], namespace)

    assert set(plan.by_value) == {"Model", "clip", "RATE", "LIMIT", "SIZE"}
    assert plan.from_imports == {"OrderedDict": ("collections", "OrderedDict")}


def test_functions_nested_in_code_closures_and_decorators_are_followed() -> None:
    namespace = notebook(
        """
        import functools
        def make_adder(k):
            def add(v):
                return v + k + OFFSET
            return add
        adder = make_adder(1)
        def decorate(fn):
            @functools.wraps(fn)
            def wrapper(*args):
                return fn(*args) + BONUS
            return wrapper
        @decorate
        def decorated(x):
            return helper(x)
        def helper(x):
            return x * FACTOR
        OFFSET = BONUS = FACTOR = 1
        """
    )

    assert set(plan_shipping(["make_adder"], namespace).by_value) == {
        "make_adder",
        "OFFSET",
    }
    assert set(plan_shipping(["adder"], namespace).by_value) == {"adder", "OFFSET"}
    assert set(plan_shipping(["decorated"], namespace).by_value) == {
        "decorated",
        "BONUS",
        "helper",
        "FACTOR",
    }


def test_library_functions_held_in_a_closure_are_not_followed() -> None:
    namespace = notebook(
        """
        import json
        def make(encode):
            def run(x):
                return encode(x) + SUFFIX
            return run
        run = make(json.dumps)
        SUFFIX = "!"
        """
    )

    plan = plan_shipping(["run"], namespace)

    assert set(plan.by_value) == {"run", "SUFFIX"}  # not json's own globals
    assert plan.modules == plan.from_imports == {}


def test_function_globals_are_looked_up_in_the_functions_own_namespace() -> None:
    module_globals = notebook("VALUE = 'module'\ndef reader():\n    return VALUE")
    namespace = notebook("VALUE = 'notebook'")
    namespace["reader"] = module_globals["reader"]

    plan = plan_shipping(["reader"], namespace)

    assert plan.by_value["VALUE"] == "module"


# --------------------------------------------------------------------------
# strip_globals / rebind_globals / check_shippable
# --------------------------------------------------------------------------

SHIPPED_FUNCTIONS = """
import numpy as np
BIG = np.ones(10_000_000 // 8)  # 10 MB
SCALE = 3

def fact(n):
    return 1 if n <= 1 else n * fact(n - 1) + 0 * int(BIG[0])

def make_scaler(k):
    def scaled(v):
        return v * k * SCALE + 0 * BIG[0]
    return scaled
closure = make_scaler(2)

def with_defaults(a, b=SCALE, *, c=10):
    return a + b + c + 0 * BIG[0]

lam = lambda v: v + SCALE + 0 * BIG[0]

def make_counter():
    def count(n):
        return 0 if n == 0 else 1 + count(n - 1) + 0 * BIG[0]
    return count
recursive_closure = make_counter()
"""


@pytest.fixture(scope="module")
def shipped() -> dict[str, Any]:
    return notebook(SHIPPED_FUNCTIONS)


@pytest.mark.parametrize(
    ("name", "args", "kwargs", "expected"),
    [
        ("fact", (5,), {}, 120),
        ("closure", (1,), {}, 6),
        ("with_defaults", (1,), {}, 14),
        ("with_defaults", (1, 2), {"c": 0}, 3),
        ("lam", (1,), {}, 4),
        ("recursive_closure", (4,), {}, 4),
    ],
)
def test_stripped_function_travels_small_and_runs_once_rebound(
    shipped: dict[str, Any],
    name: str,
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    expected: Any,
) -> None:
    func = shipped[name]
    plan = plan_shipping([name], shipped)
    assert "BIG" in plan.by_value

    data = cloudpickle.dumps(strip_globals(func))
    assert len(data) < 10_000  # BIG (10 MB) is not inside

    engine = {"__builtins__": builtins, "BIG": shipped["BIG"], "SCALE": 3}
    engine[name] = rebind_globals(cloudpickle.loads(data), engine)

    assert engine[name](*args, **kwargs) == expected
    assert func(*args, **kwargs) == expected


def test_whole_plan_round_trips_through_pickles(shipped: dict[str, Any]) -> None:
    namespace = notebook(
        SHIPPED_FUNCTIONS
        + """
import functools
def decorate(fn):
    @functools.wraps(fn)
    def wrapper(*args):
        return fn(*args) + 1
    return wrapper

@decorate
def decorated(x):
    return fact(x) + len(BIG) * 0
"""
    )
    plan = plan_shipping(["decorated", "closure", "lam", "np"], namespace)

    pickled = check_shippable(plan)
    engine = engine_namespace(plan, pickled)

    assert len(pickled["decorated"]) < 10_000  # __wrapped__ was stripped too
    assert engine["decorated"](4) == 25
    assert engine["closure"](1) == 6
    assert engine["lam"](0) == 3
    assert engine["np"] is np


def test_strip_globals_keeps_everything_but_the_globals() -> None:
    namespace = notebook(
        """
        def documented(a: int, b: int = 2, *, c: int = 3) -> int:
            '''Add things.'''
            return a + b + c
        documented.tag = "kept"
        """
    )
    original = namespace["documented"]

    stripped = strip_globals(original)

    assert stripped is not original
    assert stripped.__globals__ == {"__builtins__": builtins}
    assert stripped.__code__ is original.__code__
    for attribute in (
        "__name__",
        "__qualname__",
        "__module__",
        "__doc__",
        "__defaults__",
        "__kwdefaults__",
        "__annotations__",
        "__dict__",
    ):
        assert getattr(stripped, attribute) == getattr(original, attribute)
    assert original.__globals__ is namespace  # the original is untouched


def test_rebinding_keeps_a_recursive_closure_pointing_at_itself(
    shipped: dict[str, Any],
) -> None:
    engine = {"__builtins__": builtins, "BIG": shipped["BIG"]}
    rebound = rebind_globals(strip_globals(shipped["recursive_closure"]), engine)

    assert rebound.__closure__ is not None
    inner = rebound.__closure__[0].cell_contents

    assert inner is rebound
    assert rebound.__globals__ is engine


def test_check_shippable_returns_pickles_to_reuse() -> None:
    namespace = notebook("data = list(range(10))\ndef f(x):\n    return x + len(data)")
    plan = plan_shipping(["f"], namespace)

    pickled = check_shippable(plan)

    assert set(pickled) == {"f", "data"}
    assert pickle.loads(pickled["data"]) == list(range(10))


def test_unpicklable_variable_is_named_with_the_reason_and_fix() -> None:
    namespace = notebook("import threading\nlock = threading.Lock()")
    plan = plan_shipping(["lock"], namespace)

    with pytest.raises(InvalidRequest) as caught:
        check_shippable(plan)

    assert str(caught.value) == (
        "cannot ship 'lock' to the engines: cannot pickle '_thread.lock' object; "
        "create it on the engines instead, in the function or cell that uses it"
    )


def test_function_closing_over_something_unpicklable_is_named() -> None:
    namespace = notebook(
        """
        import threading
        def make():
            guard = threading.Lock()
            def locked(x):
                with guard:
                    return x
            return locked
        locked = make()
        """
    )

    with pytest.raises(InvalidRequest, match="cannot ship 'locked' to the engines"):
        check_shippable(plan_shipping(["locked"], namespace))


def test_comprehension_dataclass_is_frozen() -> None:
    comp = parse_comprehension("f(x) for x in xs")

    with pytest.raises(AttributeError):
        setattr(comp, "element", "g(x)")  # noqa: B010 - mypy would refuse the plain form
    assert isinstance(comp, Comprehension)


@pytest.mark.parametrize(
    "line, options, body",
    [
        ("--cache f(x) for x in xs", "--cache", "f(x) for x in xs"),
        ("--cache sweep f(x) for x in xs", "--cache=sweep", "f(x) for x in xs"),
        (
            "--cache --async f(x) for x in xs",
            "--cache --async",
            "f(x) for x in xs",
        ),
        (
            "--seed 3 --cache s1 --quiet [f(x) for x in xs]",
            "--seed 3 --cache=s1 --quiet",
            "[f(x) for x in xs]",
        ),
    ],
)
def test_pmap_options_are_split_from_the_comprehension(line, options, body):
    from paracell.magics._pmap import split_options

    assert split_options(line) == (options, body)
