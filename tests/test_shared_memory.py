"""Large arrays reach engines on the kernel's machine through shared memory:
one copy in ``/dev/shm`` whatever the engine count, mapped read-only, and
removed when the notebook drops the array or the cluster stops."""

from __future__ import annotations

import gc
import glob
import itertools
import os
import threading
import time

import numpy as np
import pytest

from paracell.kernel_backend import ItemError, default_session
from paracell.kernel_backend._sharedmem import remove_segments

from conftest import wait_until

pytestmark = pytest.mark.cluster


def define(ip, code: str) -> None:
    ip.run_cell(code).raise_error()


def pmap(ip, line: str):
    return ip.run_line_magic("pmap", "--no-progress " + line)


def segments() -> list[str]:
    """This process's segments in /dev/shm."""
    return glob.glob(f"/dev/shm/paracell-{os.getpid()}-*")


def test_a_large_array_crosses_once_into_shared_memory_for_every_local_engine(
    ip, shared_cluster
):
    define(ip, "import numpy as np\nshm_big = np.arange(2_000_000, dtype=float)")
    shipper = shared_cluster.shipper
    sent, shared = shipper.bytes_sent, shipper.bytes_shared
    got = pmap(ip, "float(shm_big[i * 1000]) for i in range(40)")
    assert got == [float(i * 1000) for i in range(40)]
    assert shipper.bytes_shared - shared == 16_000_000, "one copy for all engines"
    assert shipper.bytes_sent - sent < 1_000_000, "no copy through the controller"
    assert len(segments()) >= 1
    # both engines hold it, from the same segment
    where = shared_cluster.client[:].apply_sync(_held_segments)
    assert len(where) == 2 and where[0] and where[0] == where[1]

    pmap(ip, "float(shm_big[i]) for i in range(40)")
    assert shipper.bytes_shared - shared == 16_000_000, "unchanged: not written again"
    define(ip, "del shm_big")


def _held_segments() -> list[str]:
    """On an engine: the shared-memory files its shipped arrays are mapped from."""
    with open("/proc/self/maps") as maps:
        return sorted(
            {
                line.split(maxsplit=5)[-1].strip().removesuffix(" (deleted)")
                for line in maps
                if "/paracell-" in line
            }
        )


def test_an_engine_cannot_change_the_notebooks_array_through_the_mapping(
    ip, shared_cluster
):
    define(
        ip,
        "import numpy as np\n"
        "shm_ro = np.full(500_000, 7.0)\n"
        "def poke(i):\n"
        "    if i == 0:\n"
        "        shm_ro.flags.writeable = True\n"
        "    shm_ro[i] = -1.0\n",
    )
    with pytest.raises(ItemError, match=r"read-only|WRITEABLE|writeable"):
        pmap(ip, "poke(i) for i in range(2)")
    define(
        ip,
        "def poke_view(i):\n    view = shm_ro[::2]\n    view.setflags(write=True)\n",
    )
    with pytest.raises(ItemError, match=r"WRITEABLE|writeable"):
        pmap(ip, "poke_view(i) for i in range(2)")
    # neither the notebook's array nor what the engines read changed
    assert float(ip.user_ns["shm_ro"].min()) == 7.0
    assert pmap(ip, "float(shm_ro.min()) for _ in range(4)") == [7.0] * 4
    define(ip, "del shm_ro")


def test_a_very_large_array_is_written_in_pieces_and_mapped_as_one_read_only_array(
    ip, shared_cluster
):
    from paracell.kernel_backend._sharedmem import piece_bounds

    define(ip, "import numpy as np\nshm_huge = np.arange(9_000_000, dtype=float)")
    pieces = len(piece_bounds(72_000_000))
    assert pieces >= 2
    before = set(segments())
    # the first and last elements sit in the first and last pieces; a strided
    # sum reads every page of every piece
    got = pmap(
        ip,
        "(float(shm_huge[0]), float(shm_huge[-1]), float(shm_huge[k::2].sum())) "
        "for k in range(2)",
    )
    evens = float(np.arange(0, 9_000_000, 2, dtype=float).sum())
    odds = float(np.arange(1, 9_000_000, 2, dtype=float).sum())
    assert got == [(0.0, 8_999_999.0, evens), (0.0, 8_999_999.0, odds)]
    made = set(segments()) - before
    assert len(made) == pieces, made
    where = shared_cluster.client[:].apply_sync(_held_segments)
    assert all(made <= set(held) for held in where), where
    define(
        ip,
        "def poke_huge(i):\n"
        "    shm_huge.flags.writeable = True\n"
        "    shm_huge[-1] = -1.0\n",
    )
    with pytest.raises(ItemError, match=r"WRITEABLE|writeable"):
        pmap(ip, "poke_huge(i) for i in range(2)")
    assert pmap(ip, "float(shm_huge[-1]) for _ in range(2)") == [8_999_999.0] * 2
    define(ip, "del shm_huge")
    gc.collect()
    assert not made & set(segments()), "dropped: every piece removed"


def test_engines_let_go_of_an_array_the_notebook_drops_when_the_cell_ends(
    ip, shared_cluster
):
    define(ip, "import numpy as np\nshm_gone = np.full(400_000, 5.0)")
    before = set(segments())
    assert pmap(ip, "float(shm_gone[k]) for k in range(4)") == [5.0] * 4
    made = set(segments()) - before
    assert made
    where = shared_cluster.client[:].apply_sync(_held_segments)
    assert all(made <= set(held) for held in where), "both engines map it"
    define(ip, "del shm_gone")  # the cell's end lets the engines know
    assert not made & set(segments()), "the notebook's file is gone"
    where = shared_cluster.client[:].apply_sync(_held_segments)
    assert not any(made & set(held) for held in where), where
    # a map after it ships what it needs again
    define(ip, "shm_back = np.full(400_000, 6.0)")
    assert pmap(ip, "float(shm_back[k]) for k in range(4)") == [6.0] * 4
    define(ip, "del shm_back")


def test_engines_let_go_of_a_dropped_array_with_no_cell_ending_and_no_map_after(
    ip, shared_cluster
):
    # as code that is not run as cells does: the magic called directly, so no
    # cell ends, and no map follows that could take the news to the engines
    define(ip, "import numpy as np")
    before = set(segments())
    ip.user_ns["shm_loose"] = np.full(400_000, 8.0)
    assert pmap(ip, "float(shm_loose[k]) for k in range(4)") == [8.0] * 4
    made = set(segments()) - before
    assert made
    view = shared_cluster.client[:]
    assert all(made <= set(held) for held in view.apply_sync(_held_segments))

    del ip.user_ns["shm_loose"]
    gc.collect()

    assert not made & set(segments()), "the notebook's file is gone"
    assert wait_until(
        lambda: not any(made & set(held) for held in view.apply_sync(_held_segments))
    ), "the engines still map the dropped array"


def test_an_equal_array_made_again_and_mapped_at_once_stays_on_the_engines(
    ip, shared_cluster
):
    # ``X = np.load(path)`` run again, then a map: the same content, so the
    # engines keep their mapping instead of it being written and mapped anew
    define(ip, "import numpy as np")
    shipper = shared_cluster.shipper
    view = shared_cluster.client[:]
    before = set(segments())
    ip.user_ns["shm_equal"] = np.full(400_000, 3.0)
    assert pmap(ip, "float(shm_equal[k]) for k in range(4)") == [3.0] * 4
    written = shipper.bytes_shared
    made = set(segments()) - before
    mapped = view.apply_sync(_held_segments)
    assert made and all(made <= set(held) for held in mapped)

    ip.user_ns["shm_equal"] = np.full(400_000, 3.0)  # the first one goes
    assert pmap(ip, "float(shm_equal[k]) for k in range(4)") == [3.0] * 4
    time.sleep(0.3)  # past the release the drop asked for
    shared_cluster.release_dropped_arrays()  # and one as a cell's end makes

    assert shipper.bytes_shared == written, "not written again"
    assert view.apply_sync(_held_segments) == mapped, "still mapped"
    del ip.user_ns["shm_equal"]
    gc.collect()
    assert wait_until(
        lambda: not any(made & set(held) for held in view.apply_sync(_held_segments))
    )


def test_arrays_dropped_and_made_again_while_work_is_sent_never_go_missing(
    ip, shared_cluster, monkeypatch
):
    # each round drops the array engines hold and makes one equal to it (the
    # same digest) just before a map and a background cell read it: the
    # release the drop asks for must not take it from under them, even when
    # it comes between the names being shipped and the work being sent
    from paracell import parallel
    from paracell.kernel_backend import default_jobs

    # the release waits for names to be shipped, then runs while the work
    # that reads them is about to be sent
    shipped = threading.Event()
    shipper, soon = shared_cluster.shipper, shared_cluster._soon
    ship, release = shipper.ship, soon._release

    def ship_then_pause(*args, **kwargs):
        ship(*args, **kwargs)
        shipped.set()
        time.sleep(0.05)

    def release_after_a_shipment():
        shipped.wait(2)
        shipped.clear()
        release()

    monkeypatch.setattr(shipper, "ship", ship_then_pause)
    monkeypatch.setattr(soon, "_release", release_after_a_shipment)
    monkeypatch.setattr(soon, "delay", 0.0)
    jobs = []
    for i in range(30):
        ip.user_ns["shm_again"] = np.full(300_000, 4.0)
        if i % 3 == 0:
            jobs.append(
                parallel(
                    "again_sum = float(shm_again[:10].sum())",
                    namespace=ip.user_ns,
                    pull=False,
                    name=f"again-{i}",
                )
            )
        assert pmap(ip, "float(shm_again[k]) for k in range(4)") == [4.0] * 4
    default_jobs().wait(jobs, timeout=60)
    assert [job.state for job in jobs] == ["done"] * len(jobs), [
        (job.state, job.error) for job in jobs
    ]
    del ip.user_ns["shm_again"]


def _large_arrays_held() -> list[str]:
    """On an engine: the digests of the large arrays its store holds."""
    from paracell.kernel_backend import _enginenames

    return sorted(
        digest
        for digest, value in _enginenames._STORE.items()
        if getattr(value, "nbytes", 0) >= 1 << 20
    )


def test_engines_let_go_of_an_array_sent_as_bytes_when_no_object_holds_it(
    ip, no_other_cluster, monkeypatch
):
    monkeypatch.setenv("PARACELL_SHARED_MEMORY", "0")  # the remote engines' path
    session = default_session()
    session.start(2)
    try:
        view = session.client[:]
        define(ip, "import numpy as np\nwire_big = np.full(400_000, 2.0)")
        assert pmap(ip, "float(wire_big[k]) for k in range(4)") == [2.0] * 4
        assert session.shipper.bytes_sent >= 2 * 3_200_000, "sent as bytes"
        assert all(len(held) == 1 for held in view.apply_sync(_large_arrays_held))
        define(ip, "del wire_big")
        assert view.apply_sync(_large_arrays_held) == [[], []]
        # two equal arrays are one digest: it stays while either is alive
        define(ip, "one = np.full(400_000, 3.0)\ntwo = one.copy()")
        assert pmap(ip, "float(one[k] + two[k]) for k in range(4)") == [6.0] * 4
        define(ip, "del one")
        assert all(len(held) == 1 for held in view.apply_sync(_large_arrays_held))
        define(ip, "del two")
        assert view.apply_sync(_large_arrays_held) == [[], []]
    finally:
        session.stop()


def test_an_ended_background_cell_keeps_no_array_alive(ip, shared_cluster):
    from paracell.kernel_backend import default_jobs

    before = set(segments())
    define(ip, "import numpy as np\nshm_job = np.full(300_000, 2.0)")
    define(ip, "%%parallel\nshm_total = float(shm_job.sum())")
    manager = default_jobs()
    manager.wait(manager.jobs(), timeout=30)
    define(ip, "pass")  # delivers the job's names
    assert ip.user_ns["shm_total"] == 600_000.0
    made = set(segments()) - before
    assert made
    define(ip, "del shm_job")
    gc.collect()
    assert not made & set(segments()), "the job ended: it holds the array no more"


def test_segments_go_when_arrays_change_or_are_dropped_and_when_the_cluster_stops(
    ip, no_other_cluster
):
    session = default_session()
    session.start(2)
    try:
        assert not segments()
        for i in range(50):
            if i % 2:
                ip.user_ns["churn"][0] = i  # changed in place
            else:
                ip.user_ns["churn"] = np.full(200_000, float(i))  # 1.6 MB, new
            got = pmap(ip, "float(churn[0] + k) for k in range(2)")
            assert got == [float(i), float(i + 1)]
            # the current version only: earlier ones were removed
            assert len(segments()) == 1, segments()
        define(ip, "del churn")
        gc.collect()
        assert not segments(), "dropped from the notebook: segment removed"

        ip.user_ns["kept"] = np.ones(300_000)
        assert pmap(ip, "float(kept[k]) for k in range(2)") == [1.0, 1.0]
        assert len(segments()) == 1
    finally:
        session.stop()
        ip.user_ns.pop("kept", None)
    assert not segments(), "the cluster stopped: nothing left in /dev/shm"


def test_an_engine_that_cannot_map_the_segment_gets_the_bytes(
    ip, no_other_cluster, monkeypatch
):
    from paracell.kernel_backend._sharedmem import SharedArrays

    real = SharedArrays._write

    def elsewhere(self, digest, array):
        # a segment the engines cannot open: what an engine on this host
        # name but with a /dev/shm of its own (a container) sees
        segment = real(self, digest, array)
        for path in segment.paths:
            os.unlink(path)
        return segment

    monkeypatch.setattr(SharedArrays, "_write", elsewhere)
    session = default_session()
    session.start(2)
    try:
        ip.user_ns["far"] = np.full(300_000, 3.0)
        assert pmap(ip, "float(far[k]) for k in range(4)") == [3.0] * 4
        assert session.shipper.bytes_sent >= 2 * 2_400_000, "sent as bytes instead"
        ip.user_ns["far"] = np.full(300_000, 4.0)
        assert pmap(ip, "float(far[k]) for k in range(4)") == [4.0] * 4
    finally:
        session.stop()
        ip.user_ns.pop("far", None)


def test_a_dead_kernels_segments_are_removed_by_tag(tmp_path):
    keep = tmp_path / "paracell-1-other-ab-cd"
    gone = tmp_path / "paracell-1-1700000000-beef-ab-cd"
    keep.write_bytes(b"x")
    gone.write_bytes(b"x")
    assert remove_segments("1700000000-beef", str(tmp_path)) == [str(gone)]
    assert keep.exists() and not gone.exists()


def test_a_forked_child_leaves_the_parents_segments_alone(tmp_path):
    from paracell.kernel_backend._sharedmem import SharedArrays

    shared = SharedArrays(str(tmp_path), "fork")
    array = np.arange(300_000, dtype=float)
    segment = shared.segment("d1", array, array)
    assert segment is not None and os.path.exists(segment.paths[0])
    pid = os.fork()
    if pid == 0:  # the child: what multiprocessing's fork start does
        shared.close()
        os._exit(0)
    os.waitpid(pid, 0)
    assert os.path.exists(segment.paths[0]), "a child's close removed nothing"
    del array
    gc.collect()
    assert not os.path.exists(segment.paths[0]), "the owner is gone: so is the file"
    shared.close()


def test_a_large_arrays_digest_read_in_halves_tells_every_change():
    from paracell.kernel_backend._shipment import _SPLIT_BYTES, content_digest
    from paracell.kernel_backend._storevalues import digest

    big = np.zeros(_SPLIT_BYTES // 8 + 3)  # just over the split, odd halves
    view = memoryview(big).cast("B")
    before = content_digest(b"header", view)
    assert before == content_digest(b"header", memoryview(big.copy()).cast("B"))
    assert before != content_digest(b"other header", view)
    for where in (0, big.size // 2 - 1, big.size // 2, big.size // 2 + 1, -1):
        big[where] = 1.0
        assert content_digest(b"header", view) != before, where
        big[where] = 0.0
    assert content_digest(b"header", view) == before
    # below the split: the store's digest, unchanged
    small = np.arange(1000.0)
    part = memoryview(small).cast("B")
    assert content_digest(b"h", part) == digest(b"h", part)


def test_pieces_cover_the_array_in_aligned_parts():
    from paracell.kernel_backend._enginesegments import PIECE_ALIGN
    from paracell.kernel_backend._sharedmem import piece_bounds

    assert piece_bounds(1_000_000) == [(0, 1_000_000)]
    assert piece_bounds(63 * 2**20) == [(0, 63 * 2**20)], "under 64 MB: one file"
    for nbytes in (64 * 2**20, 200_000_000, 200_000_001, 10**10):
        bounds = piece_bounds(nbytes)
        assert 2 <= len(bounds) <= 8
        assert bounds[0][0] == 0 and bounds[-1][1] == nbytes
        for (_, end), (start, _) in itertools.pairwise(bounds):
            assert end == start and start % PIECE_ALIGN == 0


def test_a_piece_that_cannot_be_written_leaves_no_file_and_touches_none_it_did_not_make(
    tmp_path, monkeypatch
):
    from paracell.kernel_backend import _sharedmem
    from paracell.kernel_backend._enginesegments import PIECE_ALIGN, map_segment
    from paracell.kernel_backend._sharedmem import SharedArrays

    halves = [(0, PIECE_ALIGN), (PIECE_ALIGN, 600_000 * 8)]
    monkeypatch.setattr(_sharedmem, "piece_bounds", lambda n: halves)
    shared = SharedArrays(str(tmp_path), "pieces")
    taken = tmp_path / (shared.prefix + "d1.1")
    taken.write_bytes(b"someone else's")
    array = np.arange(600_000, dtype=float)
    assert shared.segment("d1", array, array) is None, "the array travels instead"
    assert [p.name for p in tmp_path.iterdir()] == [taken.name]
    assert taken.read_bytes() == b"someone else's"
    taken.unlink()
    segment = shared.segment("d1", array, array)
    assert segment is not None and len(segment.paths) == 2
    assert np.array_equal(map_segment(segment), array)
    shared.close()
    assert not list(tmp_path.iterdir())
