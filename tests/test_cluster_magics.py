"""``%cluster`` in a real in-process IPython shell."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from IPython.core.error import UsageError

from paracell.kernel_backend import default_session
from paracell.widgets import ClusterStatusView


@pytest.fixture(autouse=True)
def no_cluster_left() -> Iterator[None]:
    yield
    default_session().stop()


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("start -n 0", "argument -n: must be a whole number >= 1, not '0'"),
        ("start -n abc", "argument -n: must be a whole number >= 1, not 'abc'"),
        ("start -n", "argument -n: expected one argument"),
        ("start --launcher warp", "unknown launcher 'warp'; choose one of local, mpi"),
        ("start --idle-timeout -5", "must be a number of seconds > 0"),
        ("start --frobnicate", "unrecognized arguments: --frobnicate"),
        ("frob", "unknown %cluster subcommand 'frob'; use one of: start, connect"),
        ("scale -1", "argument N: must be a whole number >= 0, not '-1'"),
        ("scale", "the following arguments are required: N"),
        ("scale 0", "no cluster is active"),
        ("restart", "no cluster to restart: start one with %cluster start"),
        ("connect --profile nowhere", "unknown profile 'nowhere'"),
        ("connect --cluster-id c0ffee", "no cluster 'c0ffee' in profile 'default'"),
        ("connect --file /nope.json", "no connection file at '/nope.json'"),
        ("status --verbose", "unrecognized arguments: --verbose"),
    ],
)
def test_mistakes_are_one_line_usage_errors(ip, line, message):
    with pytest.raises(UsageError) as info:
        ip.run_line_magic("cluster", line)
    text = str(info.value)
    assert message in text
    assert "\n" not in text.strip()


def test_a_mistake_in_a_cell_shows_no_traceback(ip, capsys):
    result = ip.run_cell("%cluster start -n 0")
    assert isinstance(result.error_in_exec, UsageError)
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert err.strip().startswith("UsageError: argument -n")


def test_stop_with_nothing_to_stop_just_says_so(ip, capsys):
    ip.run_line_magic("cluster", "stop")
    assert capsys.readouterr().out.strip() == "paracell: no cluster to stop"


@pytest.mark.cluster
def test_start_status_scale_stop_through_the_magic(ip, capsys):
    ip.run_line_magic("cluster", "start -n 2")
    line = capsys.readouterr().out.strip()
    assert line.startswith("paracell: started 2 engines on 127.0.0.1")
    assert line.endswith(" s")
    assert "\n" not in line

    view = ip.run_line_magic("cluster", "status")
    assert isinstance(view, ClusterStatusView)
    assert [e.state for e in view.status.engines] == ["idle", "idle"]
    html = view._repr_html_()
    assert "<table>" in html and "<th>pid</th>" in html
    text = repr(view)
    assert text.splitlines()[0].startswith("running: 2 engines")
    assert text.splitlines()[1].split() == [
        "id",
        "host",
        "pid",
        "state",
        "tasks",
        "done",
        "current",
        "job",
    ]

    ip.run_line_magic("cluster", "scale 3")
    assert "scaled from 2 to 3 engines" in capsys.readouterr().out
    ip.run_line_magic("cluster", "scale 1")
    assert "scaled from 3 to 1 engines" in capsys.readouterr().out
    assert ip.run_line_magic("cluster", "").status.live_engines == 1

    with pytest.raises(UsageError, match="already active"):
        ip.run_line_magic("cluster", "start -n 1")

    ip.run_line_magic("cluster", "stop")
    assert capsys.readouterr().out.startswith("paracell: stopped the controller and")
    assert ip.run_line_magic("cluster", "status").status.state == "stopped"


@pytest.mark.cluster
def test_scale_with_no_cluster_starts_one_of_that_size(ip, capsys):
    ip.run_line_magic("cluster", "scale 1")
    assert "started 1 engine on 127.0.0.1" in capsys.readouterr().out
    assert default_session().status().live_engines == 1


@pytest.mark.cluster
def test_reloading_the_extension_keeps_the_cluster(ip):
    ip.run_line_magic("cluster", "start -n 1")
    pids = default_session().engine_pids()
    ip.run_line_magic("reload_ext", "paracell")
    assert default_session().engine_pids() == pids
    assert ip.run_line_magic("cluster", "status").status.live_engines == 1


def test_the_magic_documents_every_subcommand(ip):
    doc = ip.find_line_magic("cluster").__doc__
    for usage in (
        "%cluster start [-n N]",
        "%cluster connect",
        "%cluster status",
        "%cluster scale [--force] N",
        "%cluster restart",
        "%cluster stop",
    ):
        assert usage in doc
