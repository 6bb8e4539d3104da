"""``!cmd`` lines and line magics in a ``%%parallel`` cell run on the engine,
with the notebook's variables they name (``$x``, ``{x}``, ``%time y = f(x)``)
shipped, and what a statement magic binds brought back."""

from __future__ import annotations

import os
from typing import Any

import pytest

from paracell.kernel_backend._names import (
    _statement,
    cell_reads,
    free_names,
    shell_binds,
    shell_reads,
)
from paracell.kernel_backend._plan import plan_shipping
from paracell.kernel_backend._taskgraph import analyze_cell


def transformed(ip: Any, cell: str) -> str:
    return "\n" + str(ip.transform_cell(cell))


# -- what the analysis reads out of IPython's lines ---------------------------


def test_expanded_variables_are_read_when_the_notebook_has_them(ip: Any) -> None:
    source = transformed(ip, "out = !echo $who {label.upper()} $HOME\n")
    assert shell_reads(source) >= {"who", "label", "HOME"}
    # $HOME is the shell's when the notebook has no HOME: nothing to ship
    assert cell_reads(source, {"who": 1, "label": "x"}) >= {"who", "label"}
    assert "HOME" not in cell_reads(source, {"who": 1, "label": "x"})
    assert "out" not in cell_reads(source, {"out": 1})  # bound, not read


def test_a_variable_the_cell_binds_first_is_not_read_from_the_notebook(
    ip: Any,
) -> None:
    source = transformed(ip, "who = 'me'\n!echo $who\n")
    assert "who" not in cell_reads(source, {"who": "notebook"})
    source = transformed(ip, "!echo $who\nwho = 'me'\n")
    assert "who" in cell_reads(source, {"who": "notebook"})


def test_statement_magics_read_and_bind_like_the_statement(ip: Any) -> None:
    source = transformed(ip, "%time y = f(x)\nz = y + 1\n")
    assert {"f", "x"} <= cell_reads(source, {"f": 1, "x": 2, "y": 3})
    assert "y" not in free_names(source, "exec")  # %time bound it first
    assert shell_binds(source) == ["y"]
    # a comprehension's own variable is not the cell's
    source = transformed(ip, "%time squares = [v * v for v in values]\n")
    assert shell_binds(source) == ["squares"]
    assert "values" in cell_reads(source, {"values": [1]})
    # %timeit runs its statement apart: reads, binds nothing
    source = transformed(ip, "%timeit -n 1 -r 1 g(w)\n")
    assert {"g", "w"} <= cell_reads(source, {"g": 1, "w": 2})
    assert shell_binds(source) == []
    # other magics' lines are not Python: only their $-fields count
    source = transformed(ip, "%env MODE=$mode\n")
    assert shell_reads(source) == {"mode"}
    assert shell_binds(source) == []


@pytest.mark.parametrize(
    ("line", "code"),
    [
        ("y = f(x)", "y = f(x)"),
        ("-n 1 -r 1 f(data)", "f(data)"),
        ("-q f(x)", "f(x)"),
        ("-s cumulative f(x)", "f(x)"),
        ("-o f", "f"),
        ("  y = 1", "y = 1"),
        ("-n 3 -r", None),
        ("y = -x", "y = -x"),
    ],
)
def test_a_statement_magics_code_follows_its_options(line: str, code: str) -> None:
    assert _statement(line) == code


def test_the_notebooks_shell_stays_and_engines_use_their_own(ip: Any) -> None:
    source = transformed(ip, "!hostname\n")
    plan = plan_shipping(cell_reads(source, ip.user_ns), ip.user_ns)
    assert "get_ipython" not in plan.by_value  # the engine's own serves
    assert "get_ipython" not in plan.engine_side  # no need to ask for it


def test_a_shell_statement_keeps_its_place_in_a_task_graph(ip: Any) -> None:
    graph = analyze_cell(transformed(ip, "a = 1\n!echo $a\nb = 2\n"), set())
    shell = graph.statements[1]
    assert shell.opaque
    assert "a" in shell.reads


def test_a_task_graph_shows_shell_and_magic_lines_as_typed(ip: Any) -> None:
    """``--plan``, the graph and the timeline name a statement by its first
    line: the user's ``!cmd`` or ``%magic``, not IPython's call for it."""
    cell = (
        "a = 1\n!echo $a 'quoted'\nfiles = !ls -1 /tmp\n%time b = a + 1\n"
        "%who\nc = get_ipython().system('ls')\n"  # the call by hand: alike
    )
    graph = analyze_cell(transformed(ip, cell), set())
    assert [s.label for s in graph.statements] == [
        "a = 1",
        "!echo $a 'quoted'",
        "files = !ls -1 /tmp",
        "%time b = a + 1",
        "%who",
        "c = !ls",
    ]
    assert "get_ipython" in graph.statements[1].text  # what runs is unchanged


# -- on a real cluster ----------------------------------------------------------


@pytest.mark.cluster
def test_shell_lines_run_on_the_engine_with_the_notebooks_variables(
    ip: Any, shared_cluster: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    ip.user_ns["who"] = "world"
    ip.run_cell(
        "%%parallel --block\n"
        "greeting = !echo hello $who {who.upper()}\n"
        "import os\n"
        "engine_pid = os.getpid()\n"
        "!echo printed by the shell\n"
    ).raise_error()
    assert ip.user_ns["greeting"] == ["hello world WORLD"]
    assert ip.user_ns["engine_pid"] != os.getpid()
    assert "printed by the shell" in capsys.readouterr().out


@pytest.mark.cluster
def test_a_timed_statement_reads_shipped_names_and_its_binding_comes_back(
    ip: Any, shared_cluster: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    ip.run_cell("def double(v):\n    return 2 * v\n").raise_error()
    ip.user_ns["data"] = 21
    ip.run_cell(
        "%%parallel --block\n%time doubled = double(data)\nafter = doubled + 1\n"
    ).raise_error()
    assert ip.user_ns["doubled"] == 42
    assert ip.user_ns["after"] == 43
    assert "Wall time" in capsys.readouterr().out


@pytest.mark.cluster
def test_shell_lines_run_on_every_engine_and_in_task_graphs(
    ip: Any, shared_cluster: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    ip.user_ns["tag"] = "setup"
    ip.run_cell("%%parallel --all\n!echo $tag done\n").raise_error()
    out = capsys.readouterr().out
    assert out.count("setup done") == len(shared_cluster.client.ids)
    ip.run_cell(
        "%%parallel --block --tasks\n"
        "first = 20 + 1\n"
        "!echo made $first\n"
        "second = first * 2\n"
    ).raise_error()
    assert "made 21" in capsys.readouterr().out
    assert ip.user_ns["second"] == 42


@pytest.mark.cluster
def test_a_cached_cell_reruns_when_a_variable_its_shell_line_names_changes(
    ip: Any, shared_cluster: Any, tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PARACELL_CACHE_DIR", str(tmp_path))
    for value in ("one", "two"):
        ip.user_ns["word"] = value
        ip.run_cell("%%parallel --block --cache\nechoed = !echo $word\n").raise_error()
        assert ip.user_ns["echoed"] == [value]
