"""``%%parallel --cache`` in a real in-process IPython shell and cluster."""

from __future__ import annotations

from pathlib import Path

import pytest
from IPython.core.error import UsageError

import paracell
from paracell.kernel_backend import cache_info, default_jobs, set_cache_dir
from paracell.widgets import JobView
from paracell.widgets._jobview import JobWidget

from conftest import settle_jobs

pytestmark = pytest.mark.cluster


def ok(ip, code: str):
    result = ip.run_cell(code, store_history=True)
    result.raise_error()
    return result.result


@pytest.fixture
def folder(tmp_path: Path):
    set_cache_dir(tmp_path / "store")
    yield tmp_path
    set_cache_dir(None)


@pytest.fixture(autouse=True)
def settled_jobs(ip):
    yield
    settle_jobs(ip)


def runs(log: Path) -> int:
    count = len(log.read_text().split()) if log.exists() else 0
    log.unlink(missing_ok=True)
    return count


CELL = """%%parallel --cache {options}
with open(LOG, "a") as f:
    f.write("ran\\n")
fitted = [v * factor for v in data]  # the model
total = sum(fitted)
total
"""


def test_a_stored_cell_brings_its_names_back_at_once_on_no_engine(
    ip, shared_cluster, folder
):
    log = folder / "runs"
    ok(ip, f"LOG = {str(log)!r}\nfactor = 2\ndata = [1, 2, 3]")
    assert ok(ip, CELL.format(options="--block")) == 12
    assert runs(log) == 1
    assert cache_info().entries == 1

    for name in ("fitted", "total"):
        ip.user_ns.pop(name)
    # another comment, other spacing: the same cell
    ok(ip, CELL.format(options="--name again").replace("# the model", "#  fit"))
    # back when the cell returns, without waiting for anything
    assert ip.user_ns["total"] == 12 and ip.user_ns["fitted"] == [2, 4, 6]
    job = default_jobs().get("again")
    assert job.from_cache and job.engine is None
    assert job.summary() == "job 'again': done from cache"
    # its views say so: the text view, and the widget's header
    assert JobView(job).text().startswith("job 'again': done from cache")
    widget = JobWidget(job)
    assert "from cache" in widget.header.value
    widget.close()
    assert runs(log) == 0


def test_a_changed_input_runs_the_cell_again(ip, shared_cluster, folder):
    log = folder / "runs"
    ok(ip, f"LOG = {str(log)!r}\nfactor = 2\ndata = [1, 2, 3]")
    ok(ip, CELL.format(options="--block"))
    assert runs(log) == 1
    ok(ip, "data = [1, 2, 4]")
    assert ok(ip, CELL.format(options="--block")) == 14
    assert runs(log) == 1
    ok(ip, "factor = 3")
    assert ok(ip, CELL.format(options="--block")) == 21
    assert runs(log) == 1
    assert ok(ip, CELL.format(options="--block")) == 21
    assert runs(log) == 0


def test_a_failed_cell_is_not_stored(ip, shared_cluster, folder):
    with pytest.raises(paracell.JobError):
        ok(ip, "%%parallel --cache --block\nboom = 1 / 0")
    assert cache_info().entries == 0


def test_cache_with_all_or_an_impossible_name_is_a_usage_error(
    ip, shared_cluster, folder
):
    with pytest.raises(UsageError, match="does not go with --all"):
        ok(ip, "%%parallel --cache --all\nx = 1")
    with pytest.raises(UsageError, match="a cache name is"):
        ok(ip, "%%parallel --cache ../x\nx = 1")


def test_the_python_twin_stores_too(ip, shared_cluster, folder):
    ns = {"base": 5}
    assert (
        paracell.parallel("y = base + 1\ny", namespace=ns, block=True, cache=True) == 6
    )
    job = paracell.parallel("y = base + 1\ny", namespace=ns, cache="twin")
    assert not job.from_cache  # another store
    paracell.wait(job)
    again = paracell.parallel("y = base + 1\ny", namespace=ns, cache="twin")
    assert again.from_cache and again.result() == 6


@pytest.mark.usefixtures("no_other_cluster")
def test_a_stored_cell_starts_no_engines(ip, folder, capsys):
    from paracell.kernel_backend import default_session

    from conftest import cluster_processes

    log = folder / "runs"
    ok(ip, f"LOG = {str(log)!r}\nfactor = 3\ndata = [1, 2]")
    assert ok(ip, CELL.format(options="--block")) == 9
    assert runs(log) == 1
    ip.run_line_magic("cluster", "stop")
    capsys.readouterr()

    ip.user_ns.pop("total")
    ok(ip, CELL.format(options="--name stored"))
    assert ip.user_ns["total"] == 9
    assert default_jobs().get("stored").from_cache
    assert not default_session().active and not cluster_processes()
    assert "started" not in capsys.readouterr().out

    # a cell the store lacks starts the cluster, and says so
    ok(ip, "factor = 4")
    assert ok(ip, CELL.format(options="--block")) == 12
    assert runs(log) == 1
    assert "no cluster was active" in capsys.readouterr().out
    ip.run_line_magic("cluster", "stop")
