"""Engines on demand (``%cluster start --min K --max M``) on real local engines,
and SSH engines placed by the hosts' counts (pure placement rules)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from IPython.core.error import UsageError

import paracell
from paracell.kernel_backend import InvalidRequest, default_session
from paracell.kernel_backend._demand import Demand, check_demand
from paracell.kernel_backend._sshhosts import engines_per_host, parse_hosts
from paracell.kernel_backend._sshhosts import place_engines as place
from paracell.widgets._panel import ClusterPanel

from conftest import wait_until

_CASES = [
    ("start --min 3 --max 2", "--min 3 is more than --max 2"),
    ("start -n 2 --max 4", "give -n (a fixed number of engines) or --min/--max"),
    ("start --max 0", "argument --max: must be a whole number >= 1, not '0'"),
    ("start --min -1", "argument --min: must be a whole number >= 0, not '-1'"),
    ("start --max 99999", "99999 engines is more than this cluster can place"),
    ("start --min 9999 --max 9999", "9999 engines is more than this cluster can"),
    ("start --min 99999 --force", "--min 99999 is more than the default maximum"),
]


@pytest.mark.parametrize(("line", "message"), _CASES)
def test_impossible_limits_are_one_line_usage_errors(ip, line, message):
    with pytest.raises(UsageError) as info:
        ip.run_line_magic("cluster", line)
    assert message in str(info.value)
    assert "\n" not in str(info.value).strip()
    assert not default_session().active


def test_the_python_twin_checks_the_same_limits():
    with pytest.raises(InvalidRequest, match="--min 3 is more than --max 2"):
        paracell.start(min=3, max=2)
    with pytest.raises(InvalidRequest, match="--min must be a whole number >= 0"):
        paracell.start(min=-1, max=2)
    assert not default_session().active


def test_demand_stays_within_its_limits():
    demand = Demand(1, 4)
    assert demand.target(0) == 1 and demand.target(3) == 3 and demand.target(9) == 4
    assert demand.to_launch(wanted=10, up=1, coming=1) == 2
    assert demand.to_launch(wanted=2, up=1, coming=1) == 0
    # idle engines stop newest first, never below the minimum
    assert demand.to_stop([3, 1, 2], up=3) == [3, 2]
    assert demand.to_stop([3], up=1) == []
    assert check_demand(None, None, n=None, default_max=8) == Demand(0, 8)


@pytest.fixture
def demand_cluster(ip, no_other_cluster: None) -> Iterator[None]:
    yield
    default_session().stop()


def _square(x: int) -> int:
    return x * x


@pytest.mark.cluster
def test_a_map_with_no_engines_starts_them_and_idle_ones_stop_down_to_min(
    ip, capsys, demand_cluster
):
    ip.run_line_magic("cluster", "start --min 0 --max 2 --idle-timeout 1")
    out = capsys.readouterr().out
    assert "started 0 engines" in out
    assert "on demand, 0 to 2: more start as work waits" in out
    assert "idle ones stop after 1 s" in out
    session = default_session()
    assert (
        session.status().summary().endswith("on demand, 0 to 2: none until work waits")
    )
    panel = ClusterPanel(session, loop=None)
    assert "on demand, 0 to 2: none until work waits" in panel.state.value
    panel.close()
    with pytest.raises(UsageError, match="engines on demand start for maps and"):
        ip.run_cell_magic("parallel", "--all", "import math")

    # a map waiting with no engine: engines start, the map runs to the end
    ip.user_ns["square"] = _square
    assert ip.run_line_magic("pmap", "--no-progress square(x) for x in range(6)") == [
        x * x for x in range(6)
    ]
    status = session.status()
    assert status.live_engines == 2
    assert (status.min_engines, status.max_engines) == (0, 2)
    assert status.demand == "2 engines for a map of 6 items (--max)"
    with pytest.raises(UsageError, match="scale 3 is outside --min 0 and --max 2"):
        ip.run_line_magic("cluster", "scale 3")

    # idle for the timeout: back to the minimum
    assert wait_until(lambda: session.status().live_engines == 0, 30)
    assert "stopped after 1 s idle, down to --min" in session.status().summary()

    # a background job with no engine free starts one too
    ip.run_cell("%%parallel --block --name on-demand\nanswer = 6 * 7")
    assert ip.user_ns["answer"] == 42
    assert paracell.jobs()[-1].engine is not None


@pytest.mark.cluster
def test_min_engines_start_at_once_and_stay(demand_cluster):
    report = paracell.start(min=1, max=2, idle_timeout=1)
    assert report.engines == 1
    session = default_session()
    assert paracell.pmap(_square, range(4), progress=False) == [0, 1, 4, 9]
    # (the map may end before the engine started for it registers)
    assert wait_until(lambda: "down to --min" in session.status().summary(), 30)
    status = session.status()
    assert status.live_engines == 1
    assert status.summary().endswith(
        "on demand, 1 to 2: 1 engine stopped after 1 s idle, down to --min"
    )


# -- where SSH engines go when a cluster grows --------------------------------


def test_ssh_engines_fill_the_hosts_counts_first_then_hosts_without_one():
    hosts = parse_hosts("a:2,b,c")
    assert place(hosts, {}, 4) == {"a": 2, "b": 1, "c": 1}
    # scaling up from 2 on a: the uncounted hosts share the rest evenly
    assert place(hosts, {"a": 2}, 3) == {"b": 2, "c": 1}
    # an engine removed from a frees its place there first
    assert place(hosts, {"a": 1, "b": 1, "c": 1}, 2) == {"a": 1, "b": 1}


def test_ssh_engines_past_every_hosts_count_are_refused_unless_forced():
    hosts = parse_hosts("alice@a:2,b:1")
    with pytest.raises(InvalidRequest) as info:
        place(hosts, {"alice@a": 2, "b": 1}, 1)
    assert str(info.value) == (
        "4 engines do not fit --hosts alice@a:2,b:1 (room for 3); list more"
        " hosts, leave one without a :count, or use --force to place the rest"
        " round-robin"
    )
    # forced: round-robin, the least loaded host first
    assert place(hosts, {"alice@a": 2, "b": 1}, 3, force=True) == {
        "b": 2,
        "alice@a": 1,
    }
    assert engines_per_host(hosts, 5, force=True) == ({"alice@a": 3, "b": 2}, 5)
