"""Engines doing numpy work do not oversubscribe the cores."""

from __future__ import annotations

import os

import pytest

from paracell.kernel_backend import default_session

pytestmark = pytest.mark.cluster


def _engine_threads(ip) -> set[str]:
    got = ip.run_line_magic(
        "pmap", "--no-progress os.environ.get('OMP_NUM_THREADS') for _ in range(4)"
    )
    return set(got)


def test_local_engines_share_the_cores_by_default(ip, no_other_cluster):
    ip.run_cell("import os").raise_error()
    session = default_session()
    session.start(2)
    try:
        expected = max(1, (os.cpu_count() or 1) // 2)
        assert _engine_threads(ip) == {str(expected)}
        summary = session.status().summary()
        assert f", {expected} BLAS thread" in summary
    finally:
        session.stop()


def test_threads_sets_the_limit_per_engine(ip, no_other_cluster):
    ip.run_cell("import os").raise_error()
    try:
        ip.run_line_magic("cluster", "start -n 1 --threads 3")
        assert _engine_threads(ip) == {"3"}
        assert "3 BLAS threads per engine" in default_session().status().summary()
    finally:
        default_session().stop()


def test_a_bad_thread_count_is_one_line(ip, no_other_cluster):
    from IPython.core.error import UsageError

    with pytest.raises(UsageError, match="--threads"):
        ip.run_line_magic("cluster", "start -n 1 --threads 0")
