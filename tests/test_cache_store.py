"""The result store and item keys, without a cluster (``--local`` maps)."""

from __future__ import annotations

import multiprocessing
import sqlite3
import textwrap
import threading
from pathlib import Path

import numpy as np
import pytest

from paracell.kernel_backend import (
    InvalidRequest,
    MapOptions,
    ParacellWarning,
    default_session,
    map_function,
)
from paracell.kernel_backend import _store as store_module
from paracell.kernel_backend._cachedmap import (
    CacheReport,
    cache_info,
    clear_cache,
    set_cache_dir,
    set_cache_limit,
)
from paracell.kernel_backend._fingerprint import (
    code_digest,
    item_key,
    map_fingerprint,
)
from paracell.kernel_backend._sizes import parse_size
from paracell.kernel_backend._store import ResultStore, validate_store_name
from paracell.kernel_backend._storeindex import StoreUnavailable


@pytest.fixture
def folder(tmp_path: Path):
    """A cache folder of its own for the test (``%cache dir``)."""
    set_cache_dir(tmp_path / "store")
    yield tmp_path / "store"
    set_cache_dir(None)


# -- the store ------------------------------------------------------------


def test_small_values_large_pickles_and_arrays_come_back_equal(tmp_path):
    store = ResultStore(tmp_path)
    big = np.arange(100_000, dtype=np.float64).reshape(1000, 100)
    values = {"a": 1, "b": {"x": [1, 2]}, "c": "s" * 200_000, "d": big}
    assert store.put_many("s", values.items()) == []
    found, damaged = store.get_many("s", list(values))
    assert damaged == []
    assert found["a"] == 1 and found["b"] == {"x": [1, 2]}
    assert found["c"] == "s" * 200_000
    assert isinstance(found["d"], np.memmap)  # read back memory-mapped
    np.testing.assert_array_equal(found["d"], big)
    assert sorted(p.suffix for p in (tmp_path / "values" / "s").iterdir()) == [
        ".npy",
        ".pkl",
    ]


def test_stores_are_separate_and_missing_keys_are_absent(tmp_path):
    store = ResultStore(tmp_path)
    store.put_many("one", [("k", 1)])
    store.put_many("two", [("k", 2)])
    assert store.get_many("one", ["k", "other"])[0] == {"k": 1}
    assert store.get_many("two", ["k"])[0] == {"k": 2}
    assert [(i.name, i.entries) for i in store.info()] == [("one", 1), ("two", 1)]


@pytest.mark.parametrize("damage", ["truncate", "delete", "garble"])
def test_a_damaged_value_file_reads_as_absent_never_as_a_wrong_value(tmp_path, damage):
    store = ResultStore(tmp_path)
    store.put_many("s", [("big", np.ones(50_000)), ("blob", b"x" * 100_000)])
    for path in (tmp_path / "values" / "s").iterdir():
        if damage == "truncate":
            path.write_bytes(path.read_bytes()[:1000])
        elif damage == "delete":
            path.unlink()
        else:
            data = bytearray(path.read_bytes())
            data[-10] ^= 0xFF
            path.write_bytes(bytes(data))
    found, damaged = store.get_many("s", ["big", "blob"])
    assert found == {}
    assert sorted(d.key for d in damaged) == ["big", "blob"]
    # the damaged entries are gone from the index
    assert store.info() == []


def test_a_garbled_inline_value_reads_as_absent(tmp_path):
    store = ResultStore(tmp_path)
    store.put_many("s", [("k", [1, 2, 3])])
    store.close()
    with sqlite3.connect(tmp_path / "index.sqlite") as conn:
        conn.execute("UPDATE entries SET data = ?", (b"\x80\x05garbage",))
    found, damaged = ResultStore(tmp_path).get_many("s", ["k"])
    assert found == {} and len(damaged) == 1


def test_a_value_that_cannot_be_pickled_is_reported_not_stored(tmp_path):
    store = ResultStore(tmp_path)
    assert store.put_many("s", [("lock", threading.Lock()), ("ok", 1)]) == ["lock"]
    assert store.get_many("s", ["lock", "ok"])[0] == {"ok": 1}


def test_a_locked_index_is_unavailable_not_a_hang(tmp_path):
    ResultStore(tmp_path).put_many("s", [("k", 1)])
    holder = sqlite3.connect(tmp_path / "index.sqlite", isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")
    try:
        with pytest.raises(StoreUnavailable):
            ResultStore(tmp_path, busy_timeout=0.1).put_many("s", [("k2", 2)])
    finally:
        holder.execute("ROLLBACK")
        holder.close()


def test_the_limit_evicts_the_least_recently_used_entries(tmp_path, monkeypatch):
    monkeypatch.setattr(store_module, "TOUCH_GRAIN", 0.0)  # every use counts
    store = ResultStore(tmp_path)
    blob = b"x" * 1000
    for key in "abcd":
        store.put_many("s", [(key, blob)])
    store.get_many("s", ["a"])  # a is now the most recently used
    evicted = store.set_limit(2500)
    assert evicted == 2
    assert sorted(store.get_many("s", list("bcd"))[0]) == ["d"]
    store.get_many("s", ["a"])  # a is used after d
    store.put_many("s", [("e", blob)])  # writing past the limit evicts too
    assert sorted(store.get_many("s", list("abcde"))[0]) == ["a", "e"]


def test_clear_removes_one_store_or_all(tmp_path):
    store = ResultStore(tmp_path)
    store.put_many("one", [("k", b"x" * 100_000)])
    store.put_many("two", [("k", 2)])
    assert store.clear("one") == 1
    assert not (tmp_path / "values" / "one").exists()
    assert [i.name for i in store.info()] == ["two"]
    assert store.clear() == 1
    assert store.info() == []


def _write_many(folder: str, offset: int) -> None:
    store = ResultStore(Path(folder))
    for i in range(200):
        store.put_many("shared", [(f"k{offset + i}", i)])


def test_two_processes_writing_one_store_at_once_lose_nothing(tmp_path):
    context = multiprocessing.get_context("spawn")
    writers = [
        context.Process(target=_write_many, args=(str(tmp_path), offset))
        for offset in (0, 1000)
    ]
    for writer in writers:
        writer.start()
    for writer in writers:
        writer.join(60)
        assert writer.exitcode == 0
    (info,) = ResultStore(tmp_path).info()
    assert info.entries == 400


@pytest.mark.parametrize(
    ("text", "nbytes"),
    [("5GB", 5 * 10**9), ("500 mb", 500 * 10**6), ("2GiB", 2 * 2**30), ("123", 123)],
)
def test_sizes_read_like_people_write_them(text, nbytes):
    assert parse_size(text) == nbytes


@pytest.mark.parametrize("bad", ["banana", "", "5 XB", "-1GB"])
def test_a_size_that_is_not_one_is_a_clear_error(bad):
    with pytest.raises(InvalidRequest, match="a size is a number"):
        parse_size(bad)


@pytest.mark.parametrize("bad", ["../x", "", "a/b", ".hidden", "x" * 65, None])
def test_a_store_name_that_cannot_be_a_folder_is_refused(bad):
    with pytest.raises(InvalidRequest, match="a cache name is"):
        validate_store_name(bad)


# -- keys -----------------------------------------------------------------


def _namespace(code: str) -> dict:
    ns: dict = {"__name__": "__main__"}
    exec(compile(textwrap.dedent(code), f"<cell-{len(code)}>", "exec"), ns)
    return ns


def _fp(code: str, element: str = "f(x)", seed=None) -> bytes:
    return map_fingerprint(
        element, ("x",), ["f"], _namespace(code), star=True, seed=seed
    )


BASE = """
scale = 2
def helper(v):
    return v * scale
def f(x, k=1):
    return helper(x) + k
"""


def test_the_same_code_in_another_cell_gives_the_same_key():
    # another file name and other line numbers: the code is the same
    assert _fp(BASE) == _fp("\n\n# a comment\n" + BASE.replace("(v)", "( v )"))


def test_the_elements_spacing_and_comments_do_not_count():
    assert _fp(BASE, "f(x)") == _fp(BASE, "f( x )  # note")
    assert _fp(BASE, "f(x)") != _fp(BASE, "f(x) + 1")


@pytest.mark.parametrize(
    "change",
    [
        ("return helper(x) + k", "return helper(x) - k"),  # the function's body
        ("return v * scale", "return v * scale * 1.5"),  # a function it calls
        ("scale = 2", "scale = 3"),  # a global the helper reads
        ("k=1", "k=2"),  # a default
    ],
)
def test_a_change_to_anything_the_item_uses_changes_the_key(change):
    old, new = change
    assert _fp(BASE) != _fp(BASE.replace(old, new))


def test_closures_and_notebook_classes_count_by_code_and_content():
    code = """
    def make(k):
        def f(x):
            return x + k
        return f
    f = make(1)
    """
    assert _fp(code) != _fp(code.replace("make(1)", "make(2)"))
    klass = """
    class Model:
        def fit(self, x):
            return x
    def f(x):
        return Model().fit(x)
    """
    assert _fp(klass) == _fp(klass)
    assert _fp(klass) != _fp(klass.replace("return x\n", "return x + 1\n"))


def test_data_counts_by_content():
    code = "import numpy as np\ndata = np.arange(10)\ndef f(x):\n    return data[x]\n"
    assert _fp(code) == _fp(code)
    assert _fp(code) != _fp(code.replace("arange(10)", "arange(11)"))


def test_the_seed_is_part_of_the_key_and_the_index_only_with_a_seed():
    assert _fp(BASE, seed=1) != _fp(BASE, seed=2) != _fp(BASE)
    base = _fp(BASE)
    assert item_key(base, None, 5) == item_key(base, None, 5)
    assert item_key(base, None, 5) != item_key(base, None, 6)
    assert item_key(base, 0, 5) != item_key(base, 1, 5)


def test_an_input_holding_a_notebook_function_is_keyed_by_its_code():
    one = _namespace("def model(x):\n    return x\n")["model"]
    two = _namespace("def model(x):\n    return -x\n")["model"]
    base = _fp(BASE)
    assert item_key(base, None, (one, 1)) != item_key(base, None, (two, 1))
    again = _namespace("\n\ndef model(x):\n    return x\n")["model"]
    assert item_key(base, None, (one, 1)) == item_key(base, None, (again, 1))


def test_an_input_holding_a_function_counts_the_globals_it_reads():
    ns = _namespace("alpha = 1\ndef model(x):\n    return x * alpha\n")
    base = _fp(BASE)
    before = item_key(base, None, ns["model"])
    ns["alpha"] = 2
    assert item_key(base, None, ns["model"]) != before


def test_code_digest_ignores_layout():
    assert code_digest("x = 1\ny = f(x)\n") == code_digest("x=1  # one\n\ny = f( x )")


# -- maps with --cache, run here ---------------------------------------------


def _run(func, items, **options):
    cache = options.pop("cache", True)
    job = map_function(
        default_session(), func, items, MapOptions(**options), local=True, cache=cache
    )
    return job.result(), job


def test_a_local_map_stores_results_and_a_rerun_computes_nothing(folder):
    ns = _namespace("calls = []\ndef f(x):\n    calls.append(x)\n    return x * x\n")
    f, calls = ns["f"], ns["calls"]
    first, _ = _run(f, list(range(30)))
    assert len(calls) == 30
    calls.clear()  # the list is a global f reads: as it was before the first run
    again, job = _run(f, list(range(30)))
    assert again == first == [x * x for x in range(30)]
    assert calls == []
    assert job.progress.cached == 30
    assert "(30 from cache)" in job.progress.summary()
    assert job.timeline().chunks == ()  # stored items are left out of the timeline


def test_a_partly_stored_map_runs_only_the_rest_with_their_own_seeds(folder):
    ns = _namespace(
        "import random\nlog = []\ndef draw(x):\n    log.append(x)\n"
        "    return x, random.random()\n"
    )
    draw, log = ns["draw"], ns["log"]
    reference, _ = _run(draw, list(range(40)), seed=7, cache=False)
    log.clear()
    _run(draw, list(range(0, 40, 3)), seed=7)  # stores other items' keys
    log.clear()
    _run(draw, list(range(20)), seed=7)
    log.clear()
    whole, job = _run(draw, list(range(40)), seed=7)
    assert whole == reference  # seeded results from the store equal a fresh run
    assert log == list(range(20, 40))
    assert job.progress.cached == 20


def test_a_failed_item_is_never_stored(folder):
    ns = _namespace(
        "broken = {3}\ncalls = []\ndef f(x):\n    calls.append(x)\n"
        "    if x in broken:\n        raise ValueError(x)\n    return x\n"
    )
    f, calls = ns["f"], ns["calls"]
    got, _ = _run(f, list(range(6)), on_error="collect", chunksize=1)
    assert isinstance(got[3], ValueError)
    calls.clear()
    again, _ = _run(f, list(range(6)), on_error="collect", chunksize=1)
    assert calls == [3]
    assert isinstance(again[3], ValueError)


def test_an_input_that_cannot_be_pickled_is_computed_with_one_warning(folder):
    locks = [threading.Lock() for _ in range(3)]
    with pytest.warns(ParacellWarning, match="input cannot be pickled") as caught:
        got, _ = _run(type, [1, *locks, 2])
    assert len(caught) == 1
    assert got[0] is int
    _, job = _run(type, [1, 2])
    assert job.progress.cached == 2


def test_a_result_that_cannot_be_pickled_is_returned_not_stored(folder):
    with pytest.warns(ParacellWarning, match="cannot be pickled") as caught:
        got, _ = _run(lambda _: threading.Lock(), [1, 2, 3])
    assert len(caught) == 1 and len(got) == 3
    assert cache_info().entries == 0


def test_truncated_value_files_cost_a_recompute_and_one_warning(folder):
    ns = _namespace(
        "import numpy as np\ncalls = []\n"
        "def f(x):\n    calls.append(x)\n    return np.full(20_000, x)\n"
    )
    f, calls = ns["f"], ns["calls"]
    _run(f, list(range(5)))
    files = sorted((folder / "values" / "default").iterdir())
    for path in files[:2]:
        path.write_bytes(path.read_bytes()[:100])
    calls.clear()
    with pytest.warns(ParacellWarning, match="could not be read back") as caught:
        got, job = _run(f, list(range(5)))
    assert len(caught) == 1
    assert len(calls) == 2 and job.progress.cached == 3
    assert all((got[i] == i).all() for i in range(5))


def test_a_locked_index_means_computing_with_one_warning(folder, monkeypatch):
    monkeypatch.setattr(store_module, "BUSY_TIMEOUT", 0.1)
    ns = _namespace("def f(x):\n    return x + 1\n")
    _run(ns["f"], [0])  # creates the index
    store_module_store = folder / "index.sqlite"
    holder = sqlite3.connect(store_module_store, isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")
    try:
        from paracell.kernel_backend import _cachedmap

        monkeypatch.setattr(_cachedmap, "_STORES", {})
        with pytest.warns(ParacellWarning, match="could not be stored") as caught:
            got, _ = _run(ns["f"], list(range(10)))
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    assert got == list(range(1, 11))
    assert len(caught) == 1


def test_cache_info_clear_and_limit_work_on_the_chosen_folder(folder):
    ns = _namespace("def f(x):\n    return x\n")
    _run(ns["f"], list(range(10)))
    _run(ns["f"], list(range(5)), cache="sweep1")
    report = cache_info()
    assert isinstance(report, CacheReport)
    assert [(s.name, s.entries) for s in report.stores] == [
        ("default", 10),
        ("sweep1", 5),
    ]
    assert report.folder == str(folder)
    assert clear_cache("sweep1") == 5
    assert set_cache_limit("1KB") == 0
    assert cache_info().limit == 1000
    assert set_cache_limit(0) == 10
    assert cache_info().entries == 0
    set_cache_limit(None)
    assert clear_cache() == 0


def test_the_folder_comes_from_the_environment_by_default(tmp_path, monkeypatch):
    set_cache_dir(None)
    monkeypatch.setenv("PARACELL_CACHE_DIR", str(tmp_path / "env"))
    assert cache_info().folder == str(tmp_path / "env")
    monkeypatch.delenv("PARACELL_CACHE_DIR")
    monkeypatch.chdir(tmp_path)
    assert cache_info().folder == str(tmp_path / ".paracell")
