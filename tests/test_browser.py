"""paracell's widgets in a real JupyterLab, driven by Chromium.

One notebook runs every view; the test then looks at the page the way a
person would (texts, colours, buttons), clicks Cancel on an async map and
Stop / Start on the cluster panel, and checks the process table.
Screenshots of each view land in ``test-artifacts/``.
"""

from __future__ import annotations

import time

import nbformat
import pytest

from _lab import Notebook
from conftest import ARTIFACTS, cluster_processes, wait_until

pytestmark = [pytest.mark.browser, pytest.mark.kernel, pytest.mark.cluster]

CELLS = [
    "%load_ext paracell",
    "%cluster start -n 2",
    # 2: a blocking map's progress bar
    "import time\nr = %pmap time.sleep(0.02) or x for x in range(60)\nprint('total', sum(r))",
    # 3: a background cell's live view
    "%%parallel --name streamer\nimport time\nfor i in range(3):\n"
    "    print('tick', i, flush=True)\n    time.sleep(0.4)\nresult = 'finished'\nresult",
    # 4: the timeline of a map
    "%jobs wait streamer\n"
    "r2 = %pmap --timeline --chunksize 10 time.sleep(0.002) or x for x in range(200)",
    # 5: an async map with a Cancel button
    "slow = %pmap --async time.sleep(0.5) for x in range(400)\nslow",
    # 6: looked at again after the click
    "print('cancelled:', slow.cancelled(), slow.progress.state)",
    # 7: the jobs panel
    "%jobs panel",
    # 8: the cluster panel
    "%cluster panel",
]


def _notebook() -> nbformat.NotebookNode:
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell(src) for src in CELLS]
    nb.metadata["kernelspec"] = {
        "name": "python3",
        "display_name": "Python 3",
        "language": "python",
    }
    return nb


def expect_text(locator, text: str, timeout: float = 60) -> None:
    """Wait until ``locator``'s visible text contains ``text``."""
    deadline = time.monotonic() + timeout
    while True:
        seen = " ".join(locator.all_inner_texts())
        if text in seen:
            return
        if time.monotonic() > deadline:
            raise AssertionError(
                f"{text!r} not shown within {timeout} s; shown: {seen!r}"
            )
        time.sleep(0.2)


def run_cell(notebook: Notebook, index: int) -> None:
    """Run one cell the way a person does: click into it, Shift+Enter."""
    notebook.cell(index).locator(".jp-InputArea-editor").click()
    notebook.page.keyboard.press("Shift+Enter")
    notebook.wait_idle()


def engine_processes() -> list[int]:
    return [p for p, m in cluster_processes().items() if m == "ipyparallel.engine"]


def test_every_view_in_jupyterlab(open_notebook):
    notebook = open_notebook(_notebook(), "views.ipynb")
    notebook.page.set_viewport_size({"width": 1280, "height": 1400})
    notebook.run_all()

    # the map's bar reached 60/60 and is green
    bar = notebook.output(2)
    expect_text(bar, "60/60")
    assert "total 1770" in " ".join(bar.all_inner_texts())
    assert "success" in bar.locator(".progress-bar").first.get_attribute("class")
    assert "engine 0" in " ".join(bar.all_inner_texts())
    notebook.cell(2).scroll_into_view_if_needed()
    notebook.screenshot("widget-map-progress")

    # the job view streamed its lines, then showed its value
    view = notebook.output(3)
    expect_text(view, "'finished'")
    text = " ".join(view.all_inner_texts())
    assert "tick 0" in text and "tick 2" in text and "done" in text
    assert view.get_by_role("button", name="Cancel").count() == 0 or not (
        view.get_by_role("button", name="Cancel").first.is_visible()
    )
    notebook.cell(3).scroll_into_view_if_needed()
    notebook.screenshot("widget-job-view")

    # Cancel on the async map cancels it
    slow = notebook.output(5)
    expect_text(slow, "/400")
    notebook.click_button(5, "Cancel")
    expect_text(slow, "CANCELLED", timeout=30)
    assert "danger" in slow.locator(".progress-bar").first.get_attribute("class")
    run_cell(notebook, 6)
    expect_text(notebook.output(6), "cancelled: True")
    notebook.cell(5).scroll_into_view_if_needed()
    notebook.screenshot("widget-async-cancelled")

    # the timeline: one bar per chunk
    timeline = notebook.output(4)
    expect_text(timeline, "timeline: 20 chunks on 2 engines")
    assert timeline.locator("rect.paracell-chunk").count() == 20
    notebook.cell(4).scroll_into_view_if_needed()
    notebook.screenshot("widget-timeline")

    # the jobs panel lists the background job
    jobs = notebook.output(7)
    expect_text(jobs, "streamer")
    expect_text(jobs, "done")
    notebook.cell(7).scroll_into_view_if_needed()
    notebook.screenshot("widget-jobs-panel")

    # the cluster panel: Stop stops every engine, Start starts them again
    panel = notebook.output(8)
    expect_text(panel, "running")
    expect_text(panel, "current job")
    assert len(engine_processes()) == 2
    notebook.cell(8).scroll_into_view_if_needed()
    notebook.screenshot("widget-cluster-panel")
    notebook.click_button(8, "Stop")
    expect_text(panel, "stopped", timeout=60)
    assert wait_until(lambda: not cluster_processes(), 15), cluster_processes()
    notebook.screenshot("widget-cluster-panel-stopped")
    notebook.click_button(8, "Start")
    expect_text(panel, "started 2 engines", timeout=120)
    expect_text(panel, "running")
    assert wait_until(lambda: len(engine_processes()) == 2, 15)
    notebook.screenshot("widget-cluster-panel-restarted")
    notebook.click_button(8, "Stop")
    expect_text(panel, "stopped", timeout=60)
    assert wait_until(lambda: not cluster_processes(), 15), cluster_processes()


def test_views_in_notebook_7(lab, chromium):
    """The same widgets in Notebook 7's own page (served by the same server)."""
    nb = nbformat.v4.new_notebook()
    nb.cells = [
        nbformat.v4.new_code_cell(src)
        for src in (
            "%load_ext paracell",
            "%cluster start -n 2",
            "r = %pmap x * x for x in range(30)",
            "%cluster panel",
        )
    ]
    name = lab.add_notebook(nb, "views-notebook7.ipynb")
    notebook = Notebook(lab, chromium.new_page(), name, ARTIFACTS)
    notebook.url = f"{lab.url}/notebooks/{name}?token={lab.token}"
    try:
        notebook.open()
        notebook.run_all()
        bar = notebook.output(2)
        expect_text(bar, "30/30")
        assert "success" in bar.locator(".progress-bar").first.get_attribute("class")
        panel = notebook.output(3)
        expect_text(panel, "running")
        notebook.screenshot("widget-notebook7")
        notebook.click_button(3, "Stop")
        expect_text(panel, "stopped", timeout=60)
        assert wait_until(lambda: not cluster_processes(), 15), cluster_processes()
    except BaseException:
        notebook.screenshot("widget-notebook7-failed")
        raise
    finally:
        notebook.page.context.close()
        lab.shutdown_kernels()
