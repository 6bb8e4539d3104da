"""Engines under Open MPI's ``mpiexec``: one MPI world the cells can use."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from paracell.kernel_backend import default_session

pytestmark = [pytest.mark.hpc, pytest.mark.cluster]


@pytest.fixture(autouse=True)
def stopped(mpi: None, no_other_cluster: None) -> Iterator[None]:
    yield
    default_session().stop()


def test_mpi_engines_share_one_communicator(ip, capsys):
    ip.run_line_magic("cluster", "start --launcher mpi -n 2")
    assert "started 2 engines on 127.0.0.1 (mpi launcher" in capsys.readouterr().out
    result = ip.run_cell(
        "%%parallel --all --out rank,size,total\n"
        "from mpi4py import MPI\n"
        "world = MPI.COMM_WORLD\n"
        "rank, size = world.Get_rank(), world.Get_size()\n"
        "total = world.allreduce(rank + 1)\n"
    )
    result.raise_error()
    per_engine = result.result.values()
    assert sorted(v["rank"] for v in per_engine) == [0, 1]
    assert {v["size"] for v in per_engine} == {2}
    assert {v["total"] for v in per_engine} == {3}


def test_mpi_takes_mpiexec_options(ip, capsys):
    ip.run_line_magic(
        "cluster", 'start --launcher mpi -n 2 --extra "-x PARACELL_MPI_NOTE=hello"'
    )
    assert "started 2 engines" in capsys.readouterr().out
    result = ip.run_cell(
        "%%parallel --all --out note\nimport os\nnote = os.environ.get('PARACELL_MPI_NOTE')"
    )
    result.raise_error()
    assert set(result.result.values()) == {"hello"}
