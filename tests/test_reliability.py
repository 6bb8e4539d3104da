"""What must never go wrong, against a real local cluster: user tracebacks
whatever cloudpickle does to code, notebook classes both ways, engine counts
that no machine can place, jobs that always end, status that never hangs."""

from __future__ import annotations

import pytest

import paracell
from paracell.kernel_backend import ItemError

pytestmark = pytest.mark.cluster


def define(ip, code: str) -> None:
    ip.run_cell(code).raise_error()


def test_a_remote_traceback_shows_the_notebook_lines_of_the_failing_function(
    ip, shared_cluster
):
    define(
        ip,
        "def fragile(x):\n"
        "    if x == 2:\n"
        "        raise ValueError('two is not allowed')  # the user's line\n"
        "    return x",
    )
    with pytest.raises(ItemError) as info:
        ip.run_line_magic("pmap", "--no-progress fragile(x) for x in range(4)")
    text = info.value.remote_traceback
    assert "raise ValueError('two is not allowed')  # the user's line" in text
    assert "<dynamic-code>" not in text


def test_instances_of_a_notebook_class_travel_as_inputs_and_results(
    ip, shared_cluster
):
    define(
        ip,
        "class Point:\n"
        "    def __init__(self, x, y):\n"
        "        self.x, self.y = x, y\n"
        "    def norm(self):\n"
        "        return (self.x ** 2 + self.y ** 2) ** 0.5\n"
        "    def shifted(self):\n"
        "        return Point(self.x + 1, self.y)\n"
        "pts = [Point(3 * i, 4 * i) for i in range(6)]",
    )
    norms = ip.run_line_magic("pmap", "--no-progress p.norm() for p in pts")
    assert norms == [5.0 * i for i in range(6)]
    moved = ip.run_line_magic("pmap", "--no-progress p.shifted() for p in pts")
    point = ip.user_ns["Point"]
    assert all(type(p) is point for p in moved)
    assert [p.x for p in moved] == [3 * i + 1 for i in range(6)]
    # and through the Python twin, as results of a lambda
    made = paracell.pmap(lambda i: point(i, 0), range(3), progress=False)
    assert [(type(p) is point, p.x) for p in made] == [(True, i) for i in range(3)]


@pytest.fixture
def fenced_launch(monkeypatch):
    """Any attempt to launch a controller or engines fails the test."""
    import ipyparallel

    from paracell.kernel_backend import _session

    def launched(*args, **kwargs):
        raise AssertionError("a launch was attempted")

    monkeypatch.setattr(_session, "_make_cluster", launched)
    monkeypatch.setattr(ipyparallel.Cluster, "start_engines", launched)
    monkeypatch.setattr(ipyparallel.Cluster, "start_controller", launched)


@pytest.mark.parametrize(
    "line",
    [
        "start -n 99999999999999999999",
        "start -n 100000000",
        "start -n 5000 --launcher slurm",
    ],
)
def test_an_absurd_engine_count_is_refused_before_anything_starts(
    ip, no_other_cluster, fenced_launch, line
):
    from IPython.core.error import UsageError

    with pytest.raises(UsageError) as info:
        ip.run_line_magic("cluster", line)
    message = str(info.value)
    assert "at most" in message
    assert "\n" not in message


def test_scaling_past_the_limit_is_refused_and_force_is_offered(
    ip, shared_cluster, fenced_launch
):
    from IPython.core.error import UsageError

    from paracell.kernel_backend._limits import engine_limit

    limit, _ = engine_limit("local")
    with pytest.raises(UsageError, match="--force"):
        ip.run_line_magic("cluster", f"scale {limit + 1}")
    with pytest.raises(UsageError, match="at most"):
        ip.run_line_magic("cluster", "scale 99999999999999999999")
    with pytest.raises(UsageError, match="at most"):
        ip.run_line_magic("cluster", "scale 99999999999999999999 --force")
    # nothing changed, nothing was launched
    assert shared_cluster.status().live_engines == 2
    with pytest.raises(paracell.kernel_backend.InvalidRequest):
        paracell.scale(limit + 1)


def test_the_local_limit_follows_cores_and_memory(monkeypatch):
    from paracell.kernel_backend import _limits

    monkeypatch.setattr(_limits.os, "cpu_count", lambda: 4)
    limit, why = _limits.engine_limit("local")
    assert (limit <= 16 and "cores" in why) or "memory" in why

    class Tight:
        available = 3 * 150 * 2**20

    monkeypatch.setattr(_limits.psutil, "virtual_memory", lambda: Tight)
    assert _limits.engine_limit("local")[0] == 3
    assert "memory" in _limits.engine_limit("local")[1]
