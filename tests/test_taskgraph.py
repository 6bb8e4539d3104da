"""``%%parallel --tasks`` without a cluster: the dependency analysis, checked
against running each cell top to bottom, and the plan.

Each corpus cell runs twice: sequentially in one namespace, and as a task
graph on three in-process engines (a namespace each, values moved by
pickling) that finish ready statements in a random order.  A dependency the
analysis missed shows as a different value, a NameError, or output out of
order.
"""

from __future__ import annotations

import itertools
import math
import random
import types
from typing import ClassVar

import numpy as np
import pytest

from paracell.kernel_backend import analyze_cell
from paracell.kernel_backend._engine import TaskSpec
from paracell.kernel_backend._names import free_names
from paracell.kernel_backend._taskbackends import InProcessEngines, run_sequentially
from paracell.kernel_backend._taskplan import (
    CostBook,
    Estimates,
    bottom_levels,
    critical_path,
    default_costs,
    plan_schedule,
    statement_keys,
)
from paracell.kernel_backend._taskrun import TaskRunner

NOTEBOOK = {"np": np, "random": random, "math": math, "weights": [3, 1, 2]}

CORPUS = {
    "the issue's example": """
def load(name):
    return [len(name), 2, 3]
def fit(data):
    return sum(data) / len(data)
a = load("a.csv")
b = load("bb.csv")
fa = fit(a)
fb = fit(b)
report = (fa, fb, fa < fb)
print(report)
""",
    "append and other method calls": """
xs = []
xs.append(1)
n = len(xs)
xs.extend([2, 3])
xs.sort(reverse=True)
m = len(xs)
""",
    "item assignment": """
d = {"a": 1}
before = dict(d)
d["b"] = 2
after = sorted(d)
grid = [[0] * 3 for _ in range(2)]
grid[1][2] = 5
total = sum(map(sum, grid))
""",
    "attribute assignment": """
class Box:
    pass
box = Box()
box.size = 3
size = box.size
box.size += 1
bigger = box.size
""",
    "augmented assignment on a list and a number": """
acc = [1]
alias = acc
acc += [2]
seen = list(alias)
k = 1
k += 10
k *= 2
""",
    "del of names and items": """
tmp = [1, 2, 3]
first = tmp[0]
del tmp[0]
rest = list(tmp)
gone = 5
del gone
x = 1
""",
    "rebinding": """
v = 1
w = v + 1
v = 10
u = v + w
v = v * 2
""",
    "global in a function": """
counter = 0
def bump(by):
    global counter
    counter += by
bump(2)
mid = counter
bump(3)
end = counter
""",
    "nonlocal and closures": """
def make_counter():
    count = 0
    def step():
        nonlocal count
        count += 1
        return count
    return step
step = make_counter()
one = step()
two = step()
""",
    "functions read names defined after them": """
def scaled():
    return [w * factor for w in weights]
factor = 3
result = scaled()
factor = 4
result2 = scaled()
""",
    "a function that modifies a global list": """
log = []
def note(msg):
    log.append(msg)
    return len(log)
note("a")
count_a = len(log)
note("b")
snapshot = tuple(log)
""",
    "imports": """
import collections
from itertools import accumulate
import os.path as osp
counts = collections.Counter("abracadabra")
running = list(accumulate([1, 2, 3]))
name = osp.basename("/x/y.txt")
top = counts.most_common(1)
""",
    "for, while and if blocks": """
total = 0
for i in range(5):
    total += i
n = 0
while n < 3:
    n += 1
if total > 5:
    flag = "big"
else:
    flag = "small"
""",
    "comprehensions and generator expressions": """
squares = [i * i for i in range(6)]
evens = {s for s in squares if s % 2 == 0}
table = {i: s for i, s in enumerate(squares)}
biggest = max(s for s in squares)
i = 100
""",
    "try, except and finally": """
try:
    bad = 1 / 0
except ZeroDivisionError as err:
    message = str(err)
finally:
    cleaned = True
try:
    ok = int("7")
except ValueError:
    ok = -1
""",
    "with statements": """
import contextlib
events = []
@contextlib.contextmanager
def stage(name):
    events.append("enter " + name)
    yield name.upper()
    events.append("exit " + name)
with stage("a") as label:
    inner = label * 2
n_events = len(events)
""",
    "calls made for their effect change what they are given": """
deck = list(range(10))
random.shuffle(deck)
top = deck[0]
it = iter([1, 2, 3])
next(it)
rest = list(it)
""",
    "classes with methods reading globals": """
class Scaler:
    def __init__(self, k):
        self.k = k
    def apply(self, xs):
        return [x * self.k + offset for x in xs]
offset = 100
s = Scaler(2)
out = s.apply([1, 2])
""",
    "decorators": """
calls = []
def traced(f):
    def wrapper(*a):
        calls.append(f.__name__)
        return f(*a)
    return wrapper
@traced
def double(x):
    return 2 * x
r = double(4)
n_calls = len(calls)
""",
    "walrus and lambda keys": """
data = [5, 3, 8, 1]
if (n := len(data)) > 2:
    kind = "long"
rank = {"a": 2, "b": 1}
ordered = sorted(rank, key=lambda k: rank[k])
size = n
""",
    "aliases share an object": """
a = [1]
b = a
b.append(2)
seen_through_a = list(a)
c = [a, 3]
c[0].append(4)
final_a = list(a)
""",
    "for loop over rows modifies them": """
rows = [[1], [2]]
for row in rows:
    row.append(0)
widths = [len(r) for r in rows]
""",
    "prints keep program order": """
print("one")
x = 2
print("two", x)
y = x * 3
print("three", y)
for i in range(2):
    print("loop", i)
""",
    "output of assignments printed in order": """
def shout(t):
    print(t.upper())
    return t
a = shout("first")
b = shout("second")
c = a + b
print(c)
""",
    "numpy arrays modified in place": """
arr = np.zeros(5)
view = arr[1:3]
view[:] = 7
total = float(arr.sum())
arr2 = arr * 2
arr2[0] = 1
peak = float(arr2.max())
""",
    "seeded draws from random, numpy and rng": """
import paracell
r1 = random.random()
r2 = np.random.rand(3)
r3 = paracell.rng().integers(0, 1000, 4)
combo = r1 + float(r2.sum()) + int(r3.sum())
""",
    "notebook names read and rebound": """
w0 = weights[0]
weights = [9, 9]
w_after = weights[0]
""",
    "match statement": """
point = (1, 2)
match point:
    case (0, y):
        where = f"on y at {y}"
    case (x, y):
        where = f"at {x},{y}"
label = where.upper()
""",
    "star unpacking and f-strings": """
head, *tail = [1, 2, 3, 4]
msg = f"{head}-{len(tail)}"
pair = (*tail, head)
""",
    "dicts and sets updated by methods": """
seen = set()
seen.add(1)
seen.update({2, 3})
registry = {}
registry.setdefault("k", []).append(1)
size = len(seen) + len(registry["k"])
""",
    "recursive function": """
def fib(n):
    return n if n < 2 else fib(n - 1) + fib(n - 2)
f10 = fib(10)
f12 = fib(12)
""",
    "independent chains": """
x1 = 1
x2 = x1 + 1
x3 = x2 + 1
y1 = 10
y2 = y1 * 2
z = x3 + y2
""",
    "generators stay on the engine that made them": """
gen = (i * i for i in range(5))
first = next(gen)
second = next(gen)
rest = list(gen)
""",
    "heaps changed by module functions": """
import heapq
heap = [5, 1, 4]
heapq.heapify(heap)
smallest = heapq.heappop(heap)
heapq.heappush(heap, 0)
now = heapq.heappop(heap)
""",
    "the last expression is the value": """
parts = [1, 2, 3]
parts.append(4)
sum(parts)
""",
    "delete and rebind the same name": """
t = [1]
keep = t
del t
t = [2]
both = keep + t
""",
    "exception variable does not leak": """
try:
    raise KeyError("k")
except KeyError as e:
    caught = repr(e)
after = caught.lower()
""",
}


def _picklable(ns: dict, name: str) -> bool:
    import cloudpickle

    try:
        cloudpickle.dumps(ns.get(name))
    except Exception:
        return False
    return True


def _comparable(ns: dict, name: str) -> bool:
    value = ns.get(name)
    return not isinstance(value, (types.ModuleType, types.FunctionType, type))


def _same(a: object, b: object) -> bool:
    if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
        return np.array_equal(a, b)
    if type(a).__eq__ is object.__eq__:  # compared by identity: compare state
        if not hasattr(a, "__dict__"):
            return type(a) is type(b)  # an iterator, say
        return type(a).__name__ == type(b).__name__ and vars(a) == vars(b)
    return a == b


def run_as_tasks(source: str, *, seed: int | None, order: int, direct: bool = False):
    graph = analyze_cell(source, {"np", "random", "math"})
    engines = InProcessEngines(
        NOTEBOOK,
        sorted(free_names(source, "exec")),
        TaskSpec(key="corpus", seed=seed, entropy=0),
        source,
        count=3,
        seed=order,
        job_key=f"corpus-{order}-{direct}",
    )
    estimates = default_costs(graph, CostBook(), statement_keys(graph, {}))
    runner = TaskRunner(graph, engines, estimates, direct=direct)
    try:
        runner.run()
        values, failed, missing = runner.collect_names(list(graph.bound))
    finally:
        engines.close()
    return graph, runner, values, failed, missing


@pytest.mark.parametrize("title", sorted(CORPUS))
def test_a_cell_run_as_tasks_equals_running_it_top_to_bottom(title):
    source = CORPUS[title]
    seed = 11 if "seeded" in title or "effect" in title else None
    graph = analyze_cell(source, {"np", "random", "math"})
    expected = dict(NOTEBOOK)
    printed = run_sequentially(graph, expected, seed=seed)
    for order in range(4):
        _, runner, values, failed, missing = run_as_tasks(
            source, seed=seed, order=order, direct=order == 3
        )
        # as with %%parallel, what cannot be pickled does not come back
        assert set(failed) == {n for n in graph.bound if not _picklable(expected, n)}
        assert not missing
        assert [r.state for r in runner.runs] == ["done"] * len(graph), [
            (r.index, r.error) for r in runner.runs
        ]
        assert runner.stdout() == printed
        for name in graph.bound:
            if name not in expected:
                assert name not in values, name  # deleted by the cell
                continue
            if _comparable(expected, name) and name not in failed:
                assert _same(values[name], expected[name]), (name, order)


def test_the_corpus_is_at_least_thirty_cells():
    assert len(CORPUS) >= 30


def test_the_issues_example_has_the_diamond_it_should():
    graph = analyze_cell(
        'a = load("a.csv")\nb = load("b.csv")\nfa = fit(a)\nfb = fit(b)\n'
        "report = compare(fa, fb)\n"
    )
    assert graph.edges() == [(0, 2), (1, 3), (2, 4), (3, 4)]
    assert graph.bound == ("a", "b", "fa", "fb", "report")


def test_call_statements_keep_their_order_and_others_do_not_wait_for_them():
    graph = analyze_cell("print(1)\nx = 2\nprint(3)\nplot(x)\ny = 5\n")
    assert graph.deps[2] == {0}
    assert graph.deps[3] == {1, 2}
    assert graph.deps[4] == set()


def test_every_modification_form_counts_as_a_write():
    cell = (
        "x = []\nx.append(1)\nx[0] = 2\nx.attr = 3\nx += [4]\ndel x[0]\n"
        "import os\nfrom math import pi\ndel x\n"
    )
    graph = analyze_cell(cell)
    for index in range(1, 6):
        assert "x" in graph.statements[index].writes, index
        assert graph.deps[index] >= {index - 1}
    assert graph.statements[6].binds == {"os"}
    assert graph.statements[7].binds == {"pi"}
    assert graph.statements[8].deletes == {"x"}


def test_a_method_call_on_a_module_only_reads_it():
    graph = analyze_cell("import numpy as np\na = np.ones(3)\nb = np.zeros(2)\n")
    assert graph.deps[2] == {0}


def test_names_read_inside_functions_count_for_their_callers():
    graph = analyze_cell(
        "def f():\n    return data * 2\ndata = 3\ny = f()\ng = f\nz = g()\n"
    )
    assert 1 in graph.deps[2]
    assert "data" in graph.statements[4].reads


def test_what_the_analysis_cannot_see_through_orders_everything():
    graph = analyze_cell("a = 1\nexec('b = a')\nc = 2\n")
    assert graph.deps[1] == {0}
    assert graph.deps[2] == {1}


def test_the_plan_puts_four_independent_statements_on_two_engines_in_two_rounds():
    graph = analyze_cell("a = f()\nb = f()\nc = f()\nd = f()\nr = a + b + c + d\n")
    estimates = Estimates(costs=(1.0,) * 5, sizes=({},) * 5, measured=0)
    planned = plan_schedule(graph, [0, 1], estimates)
    assert max(p.end for p in planned) == pytest.approx(3.0)
    assert bottom_levels(graph, estimates)[0] == pytest.approx(2.0)
    assert critical_path(graph, estimates)[-1] == 4


def test_costs_from_an_earlier_run_order_the_plan():
    graph = analyze_cell("a = f()\nb = g()\nc = a + b\n")
    book = CostBook()
    keys = statement_keys(graph, {})
    book.record(keys[1], 5.0, {})
    estimates = default_costs(graph, book, keys)
    assert estimates.costs == (5.0, 5.0, 5.0)  # the unknown count as the mean
    book.record(keys[0], 1.0, {})
    estimates = default_costs(graph, book, keys)
    assert critical_path(graph, estimates) == [1, 2]


def test_a_statement_key_changes_with_its_inputs():
    graph = analyze_cell("a = x + 1\nb = a * 2\n")
    first = statement_keys(graph, {"x": "digest-1"})
    second = statement_keys(graph, {"x": "digest-2"})
    assert first[0] != second[0] and first[1] != second[1]
    assert statement_keys(graph, {"x": "digest-1"}) == first


def test_a_failing_statement_leaves_the_independent_ones_done():
    source = "a = 1\nb = 1 / 0\nc = a + 1\nd = b + 1\n"
    _, runner, values, _, missing = run_as_tasks(source, seed=None, order=0)
    assert [r.state for r in runner.runs] == ["done", "failed", "done", "skipped"]
    assert values == {"a": 1, "c": 2}
    assert missing == ["b", "d"]
    assert "ZeroDivisionError" in runner.runs[1].traceback
    assert "line 2" in runner.runs[1].traceback


def test_a_dead_engine_fails_what_ran_or_waited_there_and_the_rest_go_on():
    from paracell.kernel_backend._taskbackends import EngineLost

    class DyingEngines(InProcessEngines):
        dead: ClassVar[set[int]] = set()

        def engines(self):
            return [e for e in super().engines() if e not in self.dead]

        def outcome(self, handle):
            outcome = super().outcome(handle)
            if handle.call.index == 1 or handle.engine in self.dead:
                self.dead.add(handle.engine)
                raise EngineLost(f"engine {handle.engine} died")
            return outcome

    source = "a = [1] * 3\nb = a + [1]\nc = a + [2]\nd = b + c\ne = 5\n"
    graph = analyze_cell(source)
    engines = DyingEngines({}, [], TaskSpec(key="dying"), source, count=2)
    estimates = default_costs(graph, CostBook(), statement_keys(graph, {}))
    runner = TaskRunner(graph, engines, estimates)
    try:
        runner.run()
    finally:
        engines.close()
    a, b, c, d, e = runner.runs
    assert (a.state, b.state, d.state, e.state) == ("done", "failed", "skipped", "done")
    assert b.error == f"engine {a.engine} died while running it"
    # c ran on the other engine, or behind b on the one that died
    assert c.state == "done" or "died" in c.error


def _outputs_as_it_runs(graph, source: str, order: int) -> list[str]:
    engines = InProcessEngines({}, [], TaskSpec(key="grows"), source, seed=order)
    estimates = default_costs(graph, CostBook(), statement_keys(graph, {}))
    runner = TaskRunner(graph, engines, estimates)
    seen = [""]
    runner._on_change = lambda: seen.append(runner.stdout())
    try:
        runner.run()
    finally:
        engines.close()
    return seen


def test_output_grows_only_at_its_end_whatever_order_statements_finish_in():
    # independent statements that print: any may finish first
    source = "".join(f"x{i} = print('from {i}') or {i}\n" for i in range(6))
    graph = analyze_cell(source)
    assert not any(graph.deps)
    for order in range(5):
        seen = _outputs_as_it_runs(graph, source, order)
        assert all(b.startswith(a) for a, b in itertools.pairwise(seen))
        assert seen[-1] == "".join(f"from {i}\n" for i in range(6))
