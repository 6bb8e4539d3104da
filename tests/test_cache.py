"""``%pmap --cache`` and ``%cache`` against a real local cluster.

Items count their runs on the engines by appending a line to a log file:
the counts show what ran, whatever the store says about itself.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from IPython.core.error import UsageError

import paracell
from paracell.kernel_backend import cache_info, set_cache_dir

pytestmark = pytest.mark.cluster


@pytest.fixture
def folder(tmp_path: Path):
    """A cache folder and a run log of the test's own."""
    set_cache_dir(tmp_path / "store")
    yield tmp_path
    set_cache_dir(None)


def define(ip, code: str) -> None:
    ip.run_cell(code).raise_error()


def pmap(ip, line: str):
    return ip.run_line_magic("pmap", "--no-progress " + line)


def runs(log: Path) -> list[int]:
    """Items run since the last call (and forget them)."""
    if not log.exists():
        return []
    done = sorted(int(line) for line in log.read_text().split())
    log.unlink()
    return done


WORK = """
LOG = {log!r}
offset = 1
def work(p):
    with open(LOG, "a") as f:
        f.write(f"{{p}}\\n")
    return p * p + offset
params = list(range(40))
"""


def test_a_rerun_computes_nothing_and_a_changed_global_everything(
    ip, shared_cluster, folder
):
    log = folder / "runs.txt"
    define(ip, WORK.format(log=str(log)))
    first = pmap(ip, "--cache work(p) for p in params")
    assert first == [p * p + 1 for p in range(40)]
    assert runs(log) == list(range(40))

    assert pmap(ip, "--cache work(p) for p in params") == first
    assert runs(log) == []

    define(ip, "offset = 2")  # a global the function reads
    assert pmap(ip, "--cache work(p) for p in params") == [p * p + 2 for p in range(40)]
    assert runs(log) == list(range(40))

    # a comment and spacing in the element change nothing
    assert pmap(ip, "--cache work( p )  for p in params  # again") == [
        p * p + 2 for p in range(40)
    ]
    assert runs(log) == []


def test_after_a_failed_item_only_what_the_store_lacks_runs(ip, shared_cluster, folder):
    log, flag = folder / "runs.txt", folder / "broken"
    flag.touch()
    define(
        ip,
        WORK.format(log=str(log)) + f"import os\nFLAG = {str(flag)!r}\n"
        "def fragile(p):\n"
        "    if p == 25 and os.path.exists(FLAG):\n"
        "        raise RuntimeError('not yet')\n"
        "    return work(p)\n",
    )
    with pytest.raises(paracell.ItemError):
        pmap(ip, "--cache --chunksize 4 fragile(p) for p in params")
    stored = cache_info().entries
    assert 0 < stored < 40
    runs(log)
    flag.unlink()  # the failed item's cause is fixed

    assert pmap(ip, "--cache --chunksize 4 fragile(p) for p in params") == [
        p * p + 1 for p in range(40)
    ]
    again = runs(log)
    assert 25 in again
    assert len(again) == 40 - stored


def test_seeded_results_from_the_store_equal_local_results(ip, shared_cluster, folder):
    log = folder / "runs.txt"
    define(
        ip,
        WORK.format(log=str(log))
        + "import random\ndef draw(p):\n    work(p)\n    return random.random()\n",
    )
    local = pmap(ip, "--local --seed 5 draw(p) for p in params")
    runs(log)
    assert pmap(ip, "--seed 5 --cache draw(p) for p in params") == local
    assert len(runs(log)) == 40
    assert pmap(ip, "--seed 5 --cache draw(p) for p in params") == local
    assert runs(log) == []
    # another seed is another set of items
    assert pmap(ip, "--seed 6 --cache draw(p) for p in params") != local
    assert len(runs(log)) == 40


def test_stored_items_are_counted_and_left_out_of_the_timeline(
    ip, shared_cluster, folder
):
    log = folder / "runs.txt"
    define(ip, WORK.format(log=str(log)))
    pmap(ip, "--cache sweep1 work(p) for p in params[:30]")
    runs(log)
    job = pmap(ip, "--cache sweep1 --async work(p) for p in params")
    assert job.result() == [p * p + 1 for p in range(40)]
    assert runs(log) == list(range(30, 40))
    assert job.progress.cached == 30
    assert job.progress.summary().endswith("(30 from cache)")
    assert sum(chunk.count for chunk in job.timeline()) == 10
    assert [s.name for s in cache_info().stores] == ["sweep1"]


def test_truncated_stored_files_are_computed_again_alone(ip, shared_cluster, folder):
    log = folder / "runs.txt"
    define(
        ip,
        WORK.format(log=str(log)) + "import numpy as np\n"
        "def big(p):\n    work(p)\n    return np.full(50_000, float(p))\n",
    )
    pmap(ip, "--cache big(p) for p in params[:8]")
    runs(log)
    files = sorted((folder / "store" / "values" / "default").iterdir())
    assert len(files) == 8
    for path in files[:3]:
        with open(path, "r+b") as f:
            f.truncate(200)
    with pytest.warns(paracell.kernel_backend.ParacellWarning, match="read back"):
        got = pmap(ip, "--cache big(p) for p in params[:8]")
    assert len(runs(log)) == 3
    assert all(np.array_equal(got[p], np.full(50_000, float(p))) for p in range(8))


def test_python_twin_stores_like_the_magic(ip, shared_cluster, folder):
    log = folder / "runs.txt"
    define(ip, WORK.format(log=str(log)))
    work = ip.user_ns["work"]
    assert paracell.pmap(work, range(12), cache="twin", progress=False) == [
        p * p + 1 for p in range(12)
    ]
    assert len(runs(log)) == 12
    assert paracell.pmap(work, range(12), cache="twin", progress=False)[-1] == 122
    assert runs(log) == []
    (info,) = paracell.cache_info().stores
    assert (info.name, info.entries) == ("twin", 12)
    assert paracell.clear_cache("twin") == 12


@pytest.mark.parametrize(
    "line",
    [
        "--cache ../x work(p) for p in params",
        "--cache= work(p) for p in params",
        "--cache=a/b work(p) for p in params",
    ],
)
def test_an_impossible_store_name_is_a_usage_error(ip, folder, line):
    define(ip, WORK.format(log=str(folder / "runs.txt")))
    with pytest.raises(UsageError, match="a cache name is"):
        pmap(ip, "--local " + line)


def test_the_cache_magic_lists_clears_limits_and_moves(ip, folder, capsys):
    define(ip, WORK.format(log=str(folder / "runs.txt")))
    pmap(ip, "--local --cache work(p) for p in params")
    pmap(ip, "--local --cache sweep1 work(p) for p in params[:5]")
    table = ip.run_line_magic("cache", "")
    text = repr(table)
    assert text.startswith("cache: 2 stores, 45 entries")
    assert "default  40" in text and "sweep1   5" in text
    assert "<table>" in table._repr_html_()

    ip.run_line_magic("cache", "limit 5GB")
    ip.run_line_magic("cache", "clear sweep1")
    out = capsys.readouterr().out
    assert "paracell: cache limit 5.0 GB" in out
    assert "removed 5 entries from store 'sweep1'" in out

    moved = folder / "elsewhere"
    ip.run_line_magic("cache", f"dir {moved}")
    assert cache_info().folder == str(moved)
    assert cache_info().entries == 0
    assert os.path.isdir(folder / "store")


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("frobnicate", "unknown %cache subcommand 'frobnicate'"),
        ("limit banana", "a size is a number"),
        ("clear ../x", "a cache name is"),
    ],
)
def test_a_cache_mistake_is_a_one_line_usage_error(ip, folder, line, message):
    with pytest.raises(UsageError, match=message):
        ip.run_line_magic("cache", line)


@pytest.mark.usefixtures("no_other_cluster")
def test_a_map_with_every_result_stored_starts_no_engines(ip, folder):
    from paracell.kernel_backend import default_session

    from conftest import cluster_processes

    log = folder / "runs.txt"
    define(ip, WORK.format(log=str(log)))
    first = pmap(ip, "--cache work(p) for p in params")
    assert runs(log) == list(range(40))
    ip.run_line_magic("cluster", "stop")
    assert not cluster_processes()

    job = pmap(ip, "--cache --async work(p) for p in params")
    assert job.result() == first
    assert job.progress.summary().endswith("(40 from cache)")
    # the magic's twin takes the same results from the store
    twin = paracell.pmap_comprehension(
        "work(p) for p in params", ip.user_ns, cache=True, progress=False
    )
    assert twin == first
    assert not default_session().active
    assert not cluster_processes()
    assert runs(log) == []

    # one item the store lacks: the cluster is started for it
    assert pmap(ip, "--cache work(p) for p in params + [40]")[-1] == 1601
    assert runs(log) == [40]
    assert default_session().active
    ip.run_line_magic("cluster", "stop")
