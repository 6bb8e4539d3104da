"""The notebooks (the tutorial and the gallery) run end to end in a real kernel.

The kernel gets ``PARACELL_GALLERY_SMALL=1``: the gallery's notebooks read it
in their first code cell and shrink their studies so the suite stays fast; a
reader without it gets the full sizes.
"""

from __future__ import annotations

import glob
import os
import re

import nbformat
import pytest
from nbclient import NotebookClient

pytestmark = [pytest.mark.notebook, pytest.mark.kernel, pytest.mark.cluster]

HERE = os.path.dirname(__file__)
NOTEBOOKS = sorted(glob.glob(os.path.join(HERE, "..", "notebooks", "*.ipynb")))
GALLERY = [
    "bootstrap",
    "cross_validation",
    "permutation_test",
    "monte_carlo",
    "background_fits",
    "sweep_to_dataframe",
]
_executed: dict[str, nbformat.NotebookNode] = {}

# the thread limit in a status line depends on the machine's cores
_BLAS = re.compile(r", \d+ BLAS threads? per engine")


def executed(path: str) -> nbformat.NotebookNode:
    """Run a notebook once per test session; later tests read its outputs."""
    if path not in _executed:
        nb = nbformat.read(path, as_version=4)
        env = dict(os.environ, PARACELL_GALLERY_SMALL="1")
        NotebookClient(nb, timeout=600, kernel_name="python3").execute(env=env)
        _executed[path] = nb
    return _executed[path]


def _text(cell) -> str:
    parts = []
    for out in cell.get("outputs", []):
        if out.output_type == "stream":
            parts.append(out.text)
        elif out.output_type in ("execute_result", "display_data"):
            parts.append(out.data.get("text/plain", ""))
    return "".join(parts)


# notebooks that need the launcher set-up (scripts/hpc) and run against it
NEEDS_HPC = {"launchers.ipynb"}


def _notebook_param(path: str):
    name = os.path.basename(path)
    marks = [pytest.mark.hpc] if name in NEEDS_HPC else []
    return pytest.param(path, id=name, marks=marks)


@pytest.mark.parametrize("path", [_notebook_param(p) for p in NOTEBOOKS])
def test_notebook_runs_without_errors(path, artifacts_dir, request):
    if os.path.basename(path) in NEEDS_HPC:
        for fixture in ("mpi", "ssh_host", "slurm"):
            request.getfixturevalue(fixture)
    nb = executed(path)
    errors = [
        out
        for cell in nb.cells
        for out in cell.get("outputs", [])
        if out.output_type == "error"
    ]
    assert not errors
    nbformat.write(nb, os.path.join(artifacts_dir, os.path.basename(path)))


def _gallery_path(name: str) -> str:
    return os.path.join(HERE, "..", "notebooks", f"{name}.ipynb")


def test_every_gallery_notebook_is_there():
    assert sorted(GALLERY) == sorted(
        os.path.basename(p)[: -len(".ipynb")]
        for p in NOTEBOOKS
        if os.path.basename(p) not in {"tutorial.ipynb", *NEEDS_HPC}
    )


@pytest.mark.parametrize("name", GALLERY)
def test_gallery_notebook_matches_its_sequential_run(name):
    """Each gallery notebook ends by asserting that the parallel answer is the
    sequential one, then prints both run times; its saved outputs are empty."""
    saved = nbformat.read(_gallery_path(name), as_version=4)
    code = [c for c in saved.cells if c.cell_type == "code"]
    assert all(not c.outputs and c.execution_count is None for c in code)
    assert "PARACELL_GALLERY_SMALL" in code[0].source
    assert "%cluster start -n 2" in "".join(c.source for c in code[:3])
    assert code[-1].source.strip() == "%cluster stop"
    checks = [c for c in code if "--local" in c.source and "assert" in c.source]
    assert checks, f"{name} has no assert against a --local run"

    nb = executed(_gallery_path(name))
    ran = [c for c in nb.cells if c.cell_type == "code"]
    shown = "\n".join(_text(c) for c in ran)
    assert "parallel == sequential: True" in shown
    assert re.search(r"time: parallel \d+\.\d+ s, sequential \d+\.\d+ s", shown)
    assert "stopped the controller and 2 engines" in _text(ran[-1])


def test_tutorial_shows_the_cluster_lifecycle():
    nb = executed(os.path.join(HERE, "..", "notebooks", "tutorial.ipynb"))
    shown = [(c.source, _text(c)) for c in nb.cells if c.cell_type == "code"]

    def output_of(source: str) -> list[str]:
        return [text for src, text in shown if src == source]

    assert "started 2 engines on 127.0.0.1" in output_of("%cluster start -n 2")[0]
    assert "scaled from 2 to 3 engines" in output_of("%cluster scale 3")[0]
    assert "scaled from 3 to 1 engines" in output_of("%cluster scale 1")[0]
    first_stop, second_stop = output_of("%cluster stop")
    assert "stopped the controller and 1 engine" in first_stop
    assert "no cluster to stop" in second_stop
    pmap_cells = "\n".join(text for src, text in shown if "%pmap" in src)
    assert "parallel run == sequential run: True" in pmap_cells
    assert "same as sequential: True" in pmap_cells
    assert "95% bootstrap CI" in pmap_cells
    assert "ZeroDivisionError('division by zero')" in pmap_cells
    assert "pmap: 10/10 done in" in pmap_cells
    parallel_cells = "\n".join(
        text for src, text in shown if "%%parallel" in src or "coefficients" in src
    )
    assert "waiting for job 'fit' (coefficients)…" in parallel_cells
    assert "slope " in parallel_cells
    assert "[engine 0]" in parallel_cells and "[engine 1]" in parallel_cells
    statuses = output_of("%cluster status")
    assert [_BLAS.sub("", s.splitlines()[0]) for s in statuses] == [
        "running: 2 engines (started here; local, 127.0.0.1)",
        "running: 3 engines (started here; local, 127.0.0.1)",
        "running: 1 engine (started here; local, 127.0.0.1)",
    ]
    html = [
        out.data["text/html"]
        for c in nb.cells
        for out in c.get("outputs", [])
        if out.output_type == "execute_result"
        and "paracell-cluster-status" in out.data.get("text/html", "")
    ]
    assert len(html) == 3 and all("<table>" in h for h in html)


def test_tutorial_shows_every_view():
    nb = executed(os.path.join(HERE, "..", "notebooks", "tutorial.ipynb"))
    widget = "application/vnd.jupyter.widget-view+json"

    def outputs_of(source: str) -> list[dict]:
        return [
            out.data
            for c in nb.cells
            if c.cell_type == "code" and c.source.strip() == source
            for out in c.get("outputs", [])
            if out.output_type in ("execute_result", "display_data")
        ]

    # a blocking map: a progress widget whose saved text is its final state
    bars = [
        out.data
        for c in nb.cells
        if c.cell_type == "code" and c.source.startswith("means = %pmap")
        for out in c.get("outputs", [])
        if out.output_type == "display_data"
    ]
    assert bars and widget in bars[0]
    assert bars[0]["text/plain"].startswith("pmap: 2000/2000 done in")
    # the async job, the timeline, the panels
    (timeline,) = outputs_of("job.timeline()")
    assert timeline["text/plain"].startswith("timeline: ")
    assert "<svg" in timeline["text/html"]
    (jobs,) = outputs_of("%jobs panel")
    assert widget in jobs and "fit" in jobs["text/plain"]
    (panel,) = outputs_of("%cluster panel")
    assert widget in panel
    assert _BLAS.sub("", panel["text/plain"]) == (
        "cluster panel: running: 2 engines (started here; local, 127.0.0.1)"
    )
    (job_view,) = [
        out.data
        for c in nb.cells
        if c.cell_type == "code" and c.source.startswith("%%parallel --name fit")
        for out in c.get("outputs", [])
        if out.output_type == "display_data"
    ]
    assert widget in job_view
    assert job_view["text/plain"].startswith("job 'fit': done on engine")


def test_tutorial_resumes_a_stopped_sweep_from_the_store():
    nb = executed(os.path.join(HERE, "..", "notebooks", "tutorial.ipynb"))
    shown = [(c.source, _text(c)) for c in nb.cells if c.cell_type == "code"]
    (stopped,) = [
        text for src, text in shown if src.startswith("job = %pmap --async --seed 1")
    ]
    kept = int(re.search(r"cache: 1 store, (\d+) entries", stopped).group(1))
    assert 0 < kept < 80
    (resumed,) = [
        text for src, text in shown if src.startswith("results = %pmap --seed 1")
    ]
    assert re.match(r"pmap: 80/80 done in .*, 0 failed \((\d+) from cache\)", resumed)
    assert int(re.search(r"\((\d+) from cache\)", resumed).group(1)) >= kept
    (again,) = [text for src, text in shown if src.startswith("again = %pmap")]
    assert "(80 from cache)" in again
    assert "all from the store, same values: True" in again
    assert "removed 80 entries from store 'sweep'" in dict(shown)["%cache clear sweep"]


@pytest.mark.hpc
def test_launchers_notebook_shows_mpi_ssh_and_slurm(mpi, ssh_host, slurm):
    nb = executed(os.path.join(HERE, "..", "notebooks", "launchers.ipynb"))
    shown = [(c.source, _text(c)) for c in nb.cells if c.cell_type == "code"]

    def output_of(start: str) -> str:
        return "".join(text for src, text in shown if src.startswith(start))

    assert "started 2 engines on 127.0.0.1 (mpi launcher" in output_of(
        "%cluster start --launcher mpi"
    )
    assert "'total': 3" in output_of("%%parallel --all --out rank,total")
    assert "started 2 engines on 10.213.0.1 (ssh launcher" in output_of(
        "%cluster start --launcher ssh"
    )
    assert "items ran at: ['10.213.0.2']" in output_of("def my_address")
    # the start returns at the first engine; the other may still be starting
    slurm_start = output_of("%cluster start --launcher slurm")
    assert re.search(
        r"started [12] engines?(, 1 waiting \(\w+ in Slurm, job \d+\))?"
        r" on all interfaces of",
        slurm_start,
    ), slurm_start
    assert "Slurm jobs that ran the items: ['" in output_of("def slurm_job")
    assert re.search(r"scaled from [12] to 3 engines", output_of("%cluster scale 3"))
    assert output_of("import time").startswith(
        "running: 3 engines (started here; slurm"
    )
    # engines on demand: none until the map, then none again after it
    assert "started 0 engines" in output_of("%cluster start --launcher slurm --min")
    on_demand = output_of("jobs = %pmap")
    assert "on demand, 0 to 2: 2 engines for a map of 8 items (--max)" in on_demand
    idle = output_of("import subprocess")
    assert "running: 0 engines" in idle
    assert "stopped after 5 s idle, down to --min" in idle
    assert idle.endswith("Slurm queue: empty\n")
    stops = [text for src, text in shown if src == "%cluster stop"]
    assert len(stops) == 4 and all("stopped the controller" in t for t in stops)


def _outputs(nb: nbformat.NotebookNode, start: str) -> list[dict]:
    """The rich outputs of the code cells whose source starts with ``start``."""
    return [
        out.data
        for c in nb.cells
        if c.cell_type == "code" and c.source.startswith(start)
        for out in c.get("outputs", [])
        if out.output_type in ("execute_result", "display_data")
    ]


def test_monte_carlo_shows_progress_timeline_and_plot():
    nb = executed(_gallery_path("monte_carlo"))
    widget = "application/vnd.jupyter.widget-view+json"
    bar, timeline = _outputs(nb, "work = ")
    assert widget in bar and bar["text/plain"].startswith("pmap: 12/12 done in")
    assert timeline["text/plain"].startswith("timeline: 12 chunks on 2 engines")
    assert "<svg" in timeline["text/html"]
    assert any("image/png" in out for out in _outputs(nb, "fig, ax"))


def test_background_fits_cancel_one_job_and_wait_for_the_others():
    nb = executed(_gallery_path("background_fits"))
    shown = {c.source: _text(c) for c in nb.cells if c.cell_type == "code"}
    assert "job 'fit_pooled' cancelled" in shown["%jobs cancel fit_pooled"]
    table = shown["%jobs"]
    assert re.search(r"fit_pooled\s+cancelled", table)
    (panel,) = _outputs(nb, "%jobs panel")
    assert "application/vnd.jupyter.widget-view+json" in panel
    views = [_outputs(nb, f"%%parallel --name fit_{s}") for s in ("north", "south")]
    assert all(v and v[0]["text/plain"].startswith("job 'fit_") for v in views)
    north = [text for src, text in shown.items() if "--name fit_north" in src]
    # the saved view is the last state the front end got: on a busy machine
    # the update that says the names arrived can come after the cell's end
    assert (
        "names now in the notebook: draws_north" in north[0]
        or "will bring back: draws_north" in north[0]
    )


def test_tutorial_runs_a_cell_as_a_task_graph():
    nb = executed(os.path.join(HERE, "..", "notebooks", "tutorial.ipynb"))
    cells = [c for c in nb.cells if c.cell_type == "code"]
    (plan,) = [c for c in cells if c.source.startswith("%%parallel --tasks --plan")]
    (shown,) = [out.data for out in plan.outputs if out.output_type == "execute_result"]
    assert "task graph: 5 statements, 4 dependencies" in shown["text/plain"]
    assert shown["text/html"].count("<svg") == 2  # the graph, the planned Gantt
    (run,) = [c for c in cells if c.source.startswith("%%parallel --tasks --block")]
    text = _text(run)
    assert "{'difference': " in text
    assert "tasks: 6 of 6 statements on 2 engines" in text
    timelines = [
        out.data["text/html"]
        for out in run.outputs
        if out.output_type == "display_data" and "text/html" in out.data
    ]
    assert any("paracell-task-bar" in html for html in timelines)
    (after,) = [c for c in cells if c.source.startswith("print(report")]
    assert _text(after).startswith("{'difference': ")


def test_tutorial_runs_async_code_in_a_cell_and_a_map():
    nb = executed(os.path.join(HERE, "..", "notebooks", "tutorial.ipynb"))
    cells = [c for c in nb.cells if c.cell_type == "code"]
    (cell,) = [c for c in cells if "await asyncio.gather" in c.source]
    assert "['page 0', 'page 1', 'page 2', 'page 3', 'page 4']" in _text(cell)
    (mapped,) = [c for c in cells if c.source.startswith("%pmap --no-progress await")]
    assert "['page 0', 'page 1', 'page 2', 'page 3', 'page 4', 'page 5']" in _text(
        mapped
    )
