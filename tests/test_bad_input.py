"""Bad input gets one line: a ``UsageError`` for paracell's mistakes to point
out, or the user's own exception shown without paracell's frames."""

from __future__ import annotations

import os

import pytest
from IPython.core.error import UsageError

from paracell.kernel_backend import (
    InvalidRequest,
    ItemError,
    MapOptions,
    default_session,
)
from paracell.kernel_backend._comprehension import parse_comprehension
from paracell.kernel_backend._maps import known_length
from paracell.kernel_backend._profiles import check_profile_name

from _shell import Shown, run_cell


def usage_error(ip, cell: str) -> str:
    """The one line a cell's ``UsageError`` showed."""
    shown = run_cell(ip, cell)
    assert isinstance(shown.error, UsageError), (cell, shown.error, shown.text)
    lines = shown.text.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("UsageError: "), shown.text
    return lines[0]


def users_error(ip, cell: str, kind: type[BaseException]) -> Shown:
    """A cell that failed with the user's ``kind`` of exception, and showed no
    frame of paracell's."""
    shown = run_cell(ip, cell)
    assert type(shown.error) is kind, (cell, shown.error, shown.text)
    assert not shown.own_frames, shown.text
    return shown


@pytest.fixture
def names(ip):
    """Names the cells below read; removed afterwards."""
    ip.run_cell(
        "def bi_broken():\n"
        "    yield 1\n"
        "    raise RuntimeError('the generator broke')\n"
        "def bi_undefined():\n"
        "    return bi_no_such_name\n"
    ).raise_error()
    yield
    for name in [n for n in ip.user_ns if n.startswith("bi_")]:
        del ip.user_ns[name]


# -- unbalanced quotes ---------------------------------------------------------


@pytest.mark.parametrize(
    "cell",
    [
        '%pmap --seed "1 x for x in range(3)',
        "%pmap --on-error 'skip x for x in range(3)",
        '%%parallel --name "a\nx = 1',
        "%%parallel --out 'a,b --block\nx = 1",
        '%cluster status "a',
        '%cluster start --profile "x',
        "%cluster connect --file 'nowhere",
        '%cluster scale "2',
    ],
)
def test_an_unclosed_quote_in_the_options_is_a_one_line_usage_error(ip, cell):
    line = usage_error(ip, cell)
    assert "cannot read the options" in line
    assert "no closing quotation" in line


def test_an_unclosed_quote_names_the_magic_as_typed(ip):
    assert usage_error(ip, '%%parallel --name "a\nx = 1').startswith(
        "UsageError: %%parallel: "
    )
    assert usage_error(ip, '%cluster status "a').startswith(
        "UsageError: %cluster status: "
    )


def test_a_quote_in_a_job_name_is_no_job_of_that_name(ip):
    assert "no job named" in usage_error(ip, '%jobs wait "a')


# -- comprehensions Python rejects ---------------------------------------------


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("(y := x+1) for *x in []", "starred assignment target"),
        ("[(x := 1) for x in range(3)]", "cannot rebind comprehension iteration"),
        ("x for x in [y for y in (y := [1])]", "assignment expression"),
        ("x for x in (yield)", "'yield'"),
        ("(yield x) for x in range(3)", "'yield'"),
        ("x async for x in range(3)", "async for"),
        ("x for x in [await f(y) for y in range(3)]", "await"),
        ("x for x in [y async for y in z]", "await"),
    ],
)
def test_a_comprehension_python_rejects_is_invalid_and_named(text, problem):
    with pytest.raises(InvalidRequest, match="%pmap ") as info:
        parse_comprehension(text)
    assert problem in str(info.value)
    assert "\n" not in str(info.value)


def test_a_comprehension_python_rejects_is_a_one_line_usage_error(ip):
    line = usage_error(ip, "%pmap --local (y := x+1) for *x in []")
    assert "starred assignment target" in line


# -- ranges too long for len() -------------------------------------------------


def test_a_range_too_long_for_len_has_no_known_length():
    assert known_length(range(10**20)) is None
    assert known_length(range(3)) == 3
    assert known_length(x for x in range(3)) is None


def test_a_range_too_long_for_len_runs_lazily_here(ip):
    shown = run_cell(
        ip, "%pmap --local --no-progress 1 / (3 - x) for x in range(10**20)"
    )
    assert isinstance(shown.error, ItemError), shown.text
    assert shown.error.index == 3
    assert shown.error.partial == {0: 1 / 3, 1: 1 / 2, 2: 1.0}


def test_a_range_too_long_for_len_runs_lazily_on_the_cluster(ip, shared_cluster):
    shown = run_cell(ip, "%pmap --no-progress 1 / (3 - x) for x in range(10**20)")
    assert isinstance(shown.error, ItemError), shown.text
    assert shown.error.index == 3
    partial = shown.error.partial
    # what had finished is kept (items still running on the other engine when
    # item 3 failed were stopped, and chunks after it may have finished)
    assert partial and 3 not in partial
    assert all(value == 1 / (3 - index) for index, value in partial.items())


def test_a_range_too_long_for_len_gives_a_map_of_unknown_total(ip):
    job = run_cell(
        ip, "%pmap --local --async --no-progress 1 / (3 - x) for x in range(10**20)"
    ).result
    with pytest.raises(ItemError):
        job.result(timeout=30)
    assert job.total is None


def test_a_long_range_within_len_still_has_its_total(ip):
    job = run_cell(
        ip, "%pmap --local --async --no-progress x for x in range(10**18, 10**18 + 3)"
    ).result
    assert job.result(timeout=30) == [10**18, 10**18 + 1, 10**18 + 2]
    assert job.total == 3


# -- errors of the user's own iterables and conditions --------------------------


@pytest.mark.parametrize("where", ["--local", ""])
@pytest.mark.parametrize(
    ("text", "kind"),
    [
        ("x for x in 5", TypeError),
        ("x for x in 1/0", ZeroDivisionError),
        ("x for x in range(3) if 1/x", ZeroDivisionError),
        ("x for x in [1] for y in None", TypeError),
        ("x for x in range(2) if bi_no_such_name", NameError),
    ],
)
def test_an_error_in_the_comprehensions_clauses_is_the_users_without_our_frames(
    ip, shared_cluster, names, where, text, kind
):
    shown = users_error(ip, f"%pmap {where} --no-progress {text}", kind)
    # what is left is the cell's own line, as for a plain comprehension
    assert "Cell In[" in shown.text
    assert "File <pmap" not in shown.text


def test_an_error_inside_a_generator_shows_the_generators_frame(ip, names):
    shown = users_error(
        ip, "%pmap --local --no-progress x for x in bi_broken()", RuntimeError
    )
    assert "raise RuntimeError('the generator broke')" in shown.text


def test_a_name_error_inside_code_the_iterable_calls_is_the_users(ip, names):
    shown = users_error(ip, "%pmap --local x for x in bi_undefined()", NameError)
    assert "return bi_no_such_name" in shown.text


def test_an_undefined_name_in_the_first_iterable_is_a_usage_error(ip):
    line = usage_error(ip, "%pmap --local x for x in bi_nowhere")
    assert "'bi_nowhere' is not defined" in line


def test_the_users_error_can_still_be_caught_as_itself(ip):
    shown = run_cell(
        ip,
        "try:\n"
        "    get_ipython().run_line_magic('pmap', '--local x for x in 1/0')\n"
        "except ZeroDivisionError:\n"
        "    bi_caught = True\n",
    )
    assert shown.error is None, shown.text
    assert ip.user_ns.pop("bi_caught") is True


# -- an interrupted map ---------------------------------------------------------


def interrupting(ip, where: str) -> Shown:
    """A map whose item 5 interrupts the kernel (this process), as Ctrl-C would."""
    ip.run_cell(f"import os, signal, time\nbi_kernel = {os.getpid()}").raise_error()
    return run_cell(
        ip,
        f"%pmap {where} --no-progress --chunksize 1"
        " (x == 5 and os.kill(bi_kernel, signal.SIGINT)) or time.sleep(0.05) or x"
        " for x in range(40)",
    )


@pytest.mark.parametrize("where", ["--local", ""])
def test_an_interrupted_map_says_in_one_line_what_had_finished(
    ip, shared_cluster, names, where
):
    shown = interrupting(ip, where)
    # an interrupt, and nothing else (a kernel's reply names the type)
    assert type(shown.error) is KeyboardInterrupt
    lines = shown.text.strip().splitlines()
    assert len(lines) == 1, shown.text
    assert lines[0].startswith("KeyboardInterrupt: pmap stopped")
    partial = shown.error.partial  # type: ignore[attr-defined]
    assert all(value == index for index, value in partial.items())
    assert f"{len(partial)} of 40 items had finished" in lines[0] or not partial
    if where == "--local":  # items run in order here: 0-4 finished
        assert sorted(partial) == [0, 1, 2, 3, 4]


# -- profiles are names ----------------------------------------------------------


@pytest.mark.parametrize("name", ["default", "my-profile_2", "v1.0", "é"])
def test_a_profile_name_is_accepted(name):
    assert check_profile_name(name) == name


@pytest.mark.parametrize(
    "name",
    ["", "../x", "../../../../tmp/x", "a/b", "a\\b", "..", " x", "x\x00", "/tmp"],
)
def test_a_profile_that_is_a_path_is_refused(name):
    with pytest.raises(InvalidRequest, match="a profile is a name"):
        check_profile_name(name)


def test_starting_with_a_profile_path_is_a_usage_error_and_creates_nothing(
    ip, tmp_path
):
    target = tmp_path / "x"
    relative = os.path.relpath(target, os.environ["IPYTHONDIR"])
    line = usage_error(ip, f"%cluster start -n 1 --profile {relative}")
    assert "a profile is a name" in line
    assert not target.exists()
    assert not list(tmp_path.iterdir())


def test_connecting_with_a_profile_path_is_a_usage_error(ip):
    line = usage_error(ip, "%cluster connect --profile ../../x")
    assert "a profile is a name" in line


def test_the_backend_refuses_a_profile_path_before_anything_starts():
    session = default_session()
    active = session.active
    with pytest.raises(InvalidRequest, match="a profile is a name"):
        session.start(1, profile="../../x")
    assert session.active == active


# -- hostile option values --------------------------------------------------------


@pytest.mark.parametrize(
    "options",
    [
        "--chunksize 0",
        "--chunksize -1",
        "--chunksize 1.5",
        "--chunksize " + "9" * 30,
        "--seed -1",
        "--seed 1e400",
        "--seed " + "9" * 5000,
        "--targets ,",
        "--targets -1",
        "--timeout nan",
        "--timeout inf",
        "--timeout -1",
        "--retries -1",
        "--retries 1e400",
        "--on-error maybe",
        "--bogus",
    ],
)
def test_a_hostile_option_value_is_a_one_line_usage_error(ip, options):
    usage_error(ip, f"%pmap --local {options} x for x in range(3)")


@pytest.mark.parametrize(
    "options",
    ["--priority nan", "--priority inf", "--seed -1", "--timeout 0", "--out 1a"],
)
def test_a_hostile_parallel_option_is_a_one_line_usage_error(ip, options):
    usage_error(ip, f"%%parallel {options}\nbi_a = 1")


@pytest.mark.parametrize(
    "line",
    [
        "%jobs wait bi_nosuch",
        "%jobs cancel bi_nosuch",
        "%jobs result bi_nosuch",
        "%jobs bogus",
        "%cluster scale -1",
        "%cluster scale",
        "%cluster scale many",
        "%cluster bogus",
        "%cluster status --bogus",
    ],
)
def test_a_hostile_jobs_or_cluster_line_is_a_one_line_usage_error(
    ip, shared_cluster, line
):
    usage_error(ip, line)


@pytest.mark.parametrize("timeout", [float("inf"), float("nan"), 0.0, -1.0])
def test_a_map_timeout_must_be_finite_and_positive_from_python_too(timeout):
    with pytest.raises(InvalidRequest, match="seconds > 0 and finite"):
        MapOptions(timeout=timeout).validated()


# -- %%parallel --tasks --------------------------------------------------------


@pytest.mark.parametrize(
    "options",
    [
        "--tasks --plan --block",
        "--tasks --plan --all",
        "--plan --block",
        "--plan --all",
        "--plan",
        "--timeline",
        "--tasks --all",
        "--tasks --targets 0",
        "--tasks --cache",
    ],
)
def test_task_graph_options_that_do_not_go_together_are_a_one_line_usage_error(
    ip, options
):
    line = usage_error(ip, f"%%parallel {options}\nbi_a = 1")
    assert "bi_a" not in ip.user_ns, line


def test_a_syntax_error_in_a_task_graph_cell_is_the_users(ip):
    shown = run_cell(ip, "%%parallel --tasks --plan\nbi_a = (1,\nbi_b = 2")
    assert type(shown.error).__name__ == "CellSyntaxError", shown.text
    assert "SyntaxError" in shown.text and not shown.own_frames, shown.text
