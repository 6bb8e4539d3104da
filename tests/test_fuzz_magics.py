"""Fuzzing the magics: every line ends as a ``UsageError``, the user's own
error, or success — never paracell's traceback, never a hang.

A corpus of generated ``%pmap``, ``%%parallel``, ``%jobs`` and ``%cluster``
lines (random options and values of every type, quotes balanced and not,
unicode, huge numbers, nested and async comprehensions, walrus, starred
targets, lambdas, generators, empty lines) runs through a real in-process
IPython shell against the shared local cluster, exactly as a notebook cell
would.  The corpus comes from ``random.Random(seed)``: a failure names its
seed and line, and ``PARACELL_FUZZ_SEED=<seed>`` replays the same corpus.

The fuzzer never starts, stops, restarts or scales a cluster, and leaves no
job running.
"""

from __future__ import annotations

import collections
import concurrent.futures
import contextlib
import os
import random
import signal
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from IPython.core.error import UsageError

from paracell.kernel_backend import (
    ItemError,
    MapFailed,
    MapJob,
    default_jobs,
    default_session,
)

from _shell import run_cell

pytestmark = [pytest.mark.cluster, pytest.mark.faults]

SEED = int(os.environ.get("PARACELL_FUZZ_SEED", "20261128"))
SIZE = int(os.environ.get("PARACELL_FUZZ_LINES", "3000"))

#: Seconds one line may take: only a hang comes near it.
LINE_BUDGET = 30.0

#: What the generated lines read from the notebook (all names start with fz_,
#: and the test removes them afterwards).
SETUP = """
import itertools, math
fz_xs = [1, 2, 3]
fz_words = ["a", "bb", "ccc"]
fz_pairs = [(1, 2), (3, 4)]
fz_nested = [[1, 2], [3]]
def fz_f(x):
    return x + 1
def fz_boom(x):
    raise ValueError(f"boom {x}")
def fz_gen(n=3):
    yield from range(n)
def fz_bad_gen():
    yield 1
    raise RuntimeError("the generator broke")
def fz_undefined():
    return fz_no_such_name
async def fz_async(x):
    return x * 2
"""


# -- the corpus ---------------------------------------------------------------

#: Comprehensions that run, quickly.
GOOD_BODIES = [
    "x + 1 for x in range(3)",
    "[fz_f(x) for x in fz_xs]",
    "(a, b) for a in range(2) for b in range(2) if a <= b",
    "a * b for a, b in fz_pairs",
    "a + sum(rest) for a, *rest in [(1, 2, 3), (4,)]",
    "x for x in fz_gen()",
    "len(w) for w in fz_words if w",
    "math.sqrt(x) for x in fz_xs",
    "(lambda v: v * 2)(x) for x in range(3)",
    "[y for y in range(x)] for x in range(3)",
    "sum(y for y in row) for row in fz_nested",
    "x for x in itertools.islice(itertools.count(), 3)",
    "x for x in range(10**20, 10**20 + 3)",
    "x * 10**30 for x in range(2)",
    "x for x in range(10**20)[:3]",
    "x for x in zip(range(2), range(10**20))",
    "é + 1 for é in range(2)",
    "'ü' * x for x in range(2)",
    "c for c in 'héllo🙂'",
    "[x for x in range(3)]",
    "(x for x in range(3))",
    "x for x in []",
    "x for x in range(3) if (y := x) > 0",
    "(y := x * 2) for x in range(3)",
    "x.bit_length() for x in range(3)",
    "{x: 1} for x in range(2)",
    "{x for x in range(x + 1)} for x in range(2)",
    "print(x) for x in range(2)",
    "x for x in fz_xs  # a comment",
    "[x\n for x in range(2)]",
    "x for x in range(3) if x if x > 1",
    "(lambda: x)() for x in range(2)",
    "x for x in {fz_xs[0]: 1}",
    "x for x in $fz_xs",
    "x ** 2 for x in range(-2, 2)",
    "[[y async for y in x] for x in []]",
    "await fz_async(x) for x in range(2)",
    "fz_async(x) for x in range(2)",
]

#: Comprehensions whose own code fails: the user's exception, as Python shows it.
USER_ERROR_BODIES = [
    "x for x in 5",
    "x for x in 1/0",
    "x for x in fz_bad_gen()",
    "x for x in range(3) if 1/x",
    "x for x in [1] for y in None",
    "fz_boom(x) for x in range(3)",
    "1 / x for x in range(3)",
    "float(10**400) for x in range(2)",
    "x for x in fz_xs if fz_no_such_name",
    "x for x in fz_undefined()",
    "x for x in range(10**20) if x > 2 and 1 / 0",
    "x for x in fz_gen('three')",
    "x[0] for x in fz_xs",
    "(lambda: 1 / 0)() for x in range(2)",
    "await x for x in fz_xs",
]

#: Comprehensions that stop only by failing at item 3: run with --on-error
#: raise (the default) and chunks paracell sizes.
ENDLESS_BODIES = [
    "1 / (3 - x) for x in range(10**20)",
    "1 / (3 - x) for x in itertools.count()",
]

#: Not comprehensions, or not ones Python (or %pmap) accepts.
BAD_BODIES = [
    "",
    "x for x in",
    "for x in fz_xs",
    "x for x in fz_xs if",
    "(y := x+1) for *x in []",
    "[(x := 1) for x in range(3)]",
    "x for x in (yield)",
    "(yield x) for x in fz_xs",
    "x async for x in fz_xs",
    "x for x in [await y for y in fz_xs]",
    "x for x in [y async for y in fz_xs]",
    "{x for x in fz_xs}",
    "{x: 1 for x in fz_xs}",
    "x",
    "1 +",
    "lambda: x",
    "x for x.a in fz_xs",
    "x for x[0] in fz_xs",
    "x for x in fz_xs)",
    "((x for x in fz_xs)",
    "x for 1 in fz_xs",
    "x for x in fz_xs for",
    "x for x in fz_xs; import os",
    "x for x in no_such_iterable",
    "no_such_function(x) for x in range(2)",
    "x for x in [y for y in (y := 1)]",
    "x for x in fz_xs if (x := 2)",
    "x for x in " + "9" * 5000,
    "x for x in fz_xs\\",
    "x for x in fz_xs \x00",
    "x for x in 'unclosed",
    'x for x in "unclosed',
    "x for x in fz_xs ]",
    "x for (x for x in y) in fz_xs",
    "print(x) for x in range(2) if x == ",
]

# fmt: off
NUMBERS = [
    "0", "1", "2", "3", "-1", "-0", "+5", "1_000", "007", "0x10", "1e3",
    "99999999999999999999", "9" * 30, "9" * 5000, "\u0663", "\uff13", "1.5",
    "1e400", "-1e400", "nan", "inf", "-inf", "0.0", "1e-9", "0.001", "",
]
WORDS = [
    "auto", "raise", "collect", "skip", "RAISE", "é", "🙂", "''", '""',
    "'a b'", '"x"', "None", "True", "[]", "{}", "$fz_xs", "{fz_xs}", "-",
    "--", "a=b", "\\",
]
TARGETS = ["0", "1", "0,1", ",", "0,,1", "5", "-1", "'0, 1'", "a", "0,a", "1e0"]
QUOTES = ['"', "'", '"1', "'x", '"unclosed value', "\\"]

#: Option -> (values that work, hostile values); None for a flag.
Values = tuple[list[str], list[str]] | None
PMAP_OPTIONS: dict[str, Values] = {
    "--chunksize": (["auto", "1", "2", "5"], NUMBERS),
    "--seed": (["0", "1", "42", "99999999999999999999"], NUMBERS + WORDS),
    "--retries": (["0", "1", "2"], NUMBERS),
    "--timeout": (["5", "30.5"], NUMBERS),
    "--on-error": (["raise", "collect", "skip"], WORDS),
    "--targets": (["0", "1", "0,1"], TARGETS),
    "--unordered": None,
    "--no-progress": None,
    "--timeline": None,
    "--async": None,
    "--local": None,
}
PARALLEL_OPTIONS: dict[str, Values] = {
    "--block": None,
    "--name": (["job", "é-job"], ["'a b'", "🙂", "x" * 200, *WORDS]),
    "--out": (["fz_a", "fz_a,fz_b"], ["fz_a,", ",", "1a", "a-b", "é", *WORDS]),
    "--no-pull": None,
    "--seed": (["0", "7"], NUMBERS + WORDS),
    "--retries": (["0", "1"], NUMBERS),
    "--timeout": (["5", "30"], NUMBERS),
    "--targets": (["0", "0,1"], TARGETS),
    "--priority": (["0", "1", "-1.5"], NUMBERS + WORDS),
    "--all": None,
}
# fmt: on
ENDLESS_SAFE_OPTIONS = set(PMAP_OPTIONS) - {"--on-error", "--chunksize"}
UNKNOWN_OPTIONS = ["--bogus", "--seed=", "--chunksize=2", "-x", "—seed", "--Seed", "-"]

CELL_BODIES = [
    "fz_a = 1",
    "fz_b = sum(range(10))\nfz_b",
    "print('héllo 🙂')",
    "1 / 0",
    "import math\nfz_c = math.pi",
    "def",
    "fz_a = (",
    "fz_d = fz_xs[0] + fz_f(1)",
    "raise ValueError('mine')",
    "await fz_xs",
    "yield 1",
    "return 1",
    "%time 1",
    "",
    "fz_e = 'ü' * 3",
    "import fz_no_such_module",
    "fz_big = 10**400",
    "float(10**400)",
    "fz_g = [i for i in range(3)]",
    "async def fz_h():\n    pass",
    "import paracell\nparacell.progress(1, 2)",
    "fz_a = fz_no_such_name",
    "fz_a, *fz_b = [1, 2, 3]",
    "(fz_i := 1)",
    "fz_j = lambda: 1",
    "global fz_k\nfz_k = 1",
    "del fz_no_such_name",
    "fz_a = 1\n\x00",
    "fz_s = '''unclosed",
    "if True:\nfz_a = 1",
]

JOBS_COMMANDS = ["", "list", "wait", "cancel", "result", "clear", "panel"]
JOB_NAMES = ["nosuch", '"a', "'a", "cell-1", "é", "a b", "--all", "*", "-1"]
CLUSTER_FORBIDDEN = {"start", "stop", "restart", "scale", "connect", "panel"}
CLUSTER_WORDS = [
    "Status",
    "STOP",
    "statuss",
    "stat",
    "--help",
    "-n",
    "é",
    "🙂",
    '"',
    "'status'",
    "status;",
    "start-",
    "scale2",
    "x" * 100,
    "$fz_xs",
    "42",
]


@dataclass(frozen=True)
class Line:
    """One generated cell: a line magic, or a cell magic with its body."""

    kind: str
    cell: str


class Corpus:
    """Generated magic lines; the same seed gives the same lines."""

    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed)

    def lines(self, count: int) -> Iterator[Line]:
        makers: list[tuple[float, Callable[[], Line]]] = [
            (0.55, self.pmap),
            (0.15, self.parallel),
            (0.15, self.jobs),
            (0.15, self.cluster),
        ]
        weights = [w for w, _ in makers]
        for _ in range(count):
            ((_, make),) = self.rng.choices(makers, weights)
            yield make()

    # -- pieces ---------------------------------------------------------------

    def options(self, table: dict[str, Values], most: int) -> list[str]:
        rng = self.rng
        chosen: list[str] = []
        for _ in range(rng.randint(0, most)):
            roll = rng.random()
            if roll < 0.04:
                chosen.append(rng.choice(UNKNOWN_OPTIONS))
                continue
            if roll < 0.08:
                chosen.append(rng.choice(QUOTES))
                continue
            name = rng.choice(list(table))
            values = table[name]
            if values is None:
                chosen.append(name)
                continue
            sane, hostile = values
            value = rng.choice(sane if rng.random() < 0.6 else hostile)
            roll = rng.random()
            if roll < 0.03:
                chosen.append(name)  # its value missing
            elif roll < 0.1:
                chosen.append(f"{name}={value}")
            else:
                chosen += [name, value]
        return chosen

    def mangle(self, text: str) -> str:
        """Sometimes put a stray quote somewhere in ``text``."""
        if not text or self.rng.random() > 0.08:
            return text
        at = self.rng.randrange(len(text) + 1)
        return text[:at] + self.rng.choice(QUOTES) + text[at:]

    # -- the magics -----------------------------------------------------------

    def pmap(self) -> Line:
        rng = self.rng
        roll = rng.random()
        if roll < 0.45:
            body = rng.choice(GOOD_BODIES)
        elif roll < 0.65:
            body = rng.choice(USER_ERROR_BODIES)
        elif roll < 0.7:
            body = rng.choice(ENDLESS_BODIES)
        else:
            body = rng.choice(BAD_BODIES)
        table = PMAP_OPTIONS
        if body in ENDLESS_BODIES:
            # only --on-error raise and paracell's own chunk sizes end them
            table = {k: v for k, v in table.items() if k in ENDLESS_SAFE_OPTIONS}
        options = self.options(table, 4)
        if rng.random() < 0.6:
            options.append("--no-progress")
        if rng.random() < 0.5:
            options.append("--local")
        rng.shuffle(options)
        return Line("pmap", "%pmap " + self.mangle(f"{' '.join(options)} {body}"))

    def parallel(self) -> Line:
        rng = self.rng
        options = self.options(PARALLEL_OPTIONS, 3)
        body = rng.choice(CELL_BODIES)
        return Line("parallel", f"%%parallel {self.mangle(' '.join(options))}\n{body}")

    def jobs(self) -> Line:
        rng = self.rng
        words = [rng.choice([*JOBS_COMMANDS, "bogus", "WAIT", "é", '"wait'])]
        words += rng.sample(JOB_NAMES, rng.randint(0, 2))
        return Line("jobs", f"%jobs {self.mangle(' '.join(words))}".rstrip())

    def cluster(self) -> Line:
        rng = self.rng
        if rng.random() < 0.4:
            words = ["status", *rng.sample(CLUSTER_WORDS + QUOTES, rng.randint(0, 2))]
        elif rng.random() < 0.2:
            words = []
        else:
            word = rng.choice(CLUSTER_WORDS + QUOTES)
            words = [word, *rng.sample(CLUSTER_WORDS, rng.randint(0, 1))]
        if words and words[0] in CLUSTER_FORBIDDEN:  # never start or stop anything
            words[0] = "status"
        return Line("cluster", f"%cluster {' '.join(words)}".rstrip())


# -- running a line -----------------------------------------------------------


class LineHung(BaseException):
    """A line ran past its budget (a BaseException: no ``except Exception``
    in the code under test may swallow it)."""


@contextlib.contextmanager
def budget(seconds: float) -> Iterator[None]:
    def expire(signum: int, frame: Any) -> None:
        raise LineHung(f"still running after {seconds:.0f} s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def outcome(ip: Any, line: Line) -> tuple[str, str]:
    """Run ``line`` as a notebook cell: ("usage" | "user" | "success" | a
    failure's description, what it printed)."""
    try:
        with budget(LINE_BUDGET):
            shown = run_cell(ip, line.cell)
            settled = settle(shown.result)
    except LineHung as hung:
        return f"hung: {hung}", ""
    if isinstance(shown.error, LineHung):
        return f"hung: {shown.error}", shown.text
    if not settled:
        return "left a job running", shown.text
    if shown.own_frames:
        return "showed paracell's own traceback", shown.text
    if shown.error is None:
        return "success", shown.text
    if isinstance(shown.error, UsageError):
        return "usage", shown.text
    if isinstance(shown.error, MapFailed) and not isinstance(shown.error, ItemError):
        # a map that failed for paracell's reasons (no engines left, ...):
        # none of these lines can cause that
        return f"failed for paracell's reasons: {shown.error}", shown.text
    return "user", shown.text


def settle(value: Any) -> bool:
    """Wait for what the line started (an ``--async`` map, background cells);
    False if something is still running after the budget."""
    finished = True
    if isinstance(value, MapJob):
        concurrent.futures.wait([value], timeout=LINE_BUDGET)
        if not value.done():
            value.cancel()
            finished = False
    manager = default_jobs()
    manager.wait(manager.jobs(), timeout=LINE_BUDGET)
    for job in manager.jobs():
        if not job.done():
            job.cancel()
            finished = False
    manager.clear()
    return finished


# -- the test -------------------------------------------------------------------


@pytest.fixture
def fuzz_shell(ip: Any, shared_cluster: Any) -> Iterator[Any]:
    """The shared shell with the corpus's names defined; removed afterwards."""
    ip.run_cell(SETUP).raise_error()
    yield ip
    manager = default_jobs()
    for job in manager.jobs():
        job.cancel()
    manager.wait(manager.jobs(), timeout=10)
    ip.run_cell("pass")  # delivers what finished
    manager.clear()
    for name in [n for n in ip.user_ns if n.startswith("fz_")]:
        del ip.user_ns[name]


# The per-line budget uses SIGALRM, so the whole test's timeout uses a thread.
@pytest.mark.timeout(600, method="thread")
def test_every_fuzzed_magic_line_ends_as_usage_error_user_error_or_success(
    fuzz_shell: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    counts: collections.Counter[str] = collections.Counter()
    kinds: collections.Counter[tuple[str, str]] = collections.Counter()
    failures: list[str] = []
    for number, line in enumerate(Corpus(SEED).lines(SIZE)):
        result, text = outcome(fuzz_shell, line)
        if result in ("usage", "user", "success"):
            counts[result] += 1
            kinds[line.kind, result] += 1
            continue
        counts["failed"] += 1
        failures.append(
            f"seed {SEED}, line {number}: {line.cell!r} {result}:\n"
            + "\n".join(text.splitlines()[-30:])
        )
        if result.startswith(("hung", "left a job")):
            # what runs after a hang would only wait behind it
            status = default_session().status()
            failures.append(f"the cluster then: {status}")
            break
        if len(failures) >= 10:
            break
    with capsys.disabled():
        print(
            f"\nfuzz seed {SEED}: {SIZE} lines: {counts['usage']} UsageError,"
            f" {counts['user']} user exception, {counts['success']} success,"
            f" {counts['failed']} failed; by magic: {dict(sorted(kinds.items()))}"
        )
    assert not failures, "\n\n".join(failures)
    # the corpus reaches every ending, for every magic that can have it
    assert counts["usage"] and counts["user"] and counts["success"]
