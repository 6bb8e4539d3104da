"""A gallery notebook in a real JupyterLab, driven by Chromium.

``monte_carlo.ipynb`` runs top to bottom (at the suite's small sizes); the
test then looks at what a reader sees: the map's progress bar, full and
green, the timeline of the engines, and the plot.  A screenshot lands in
``test-artifacts/``.
"""

from __future__ import annotations

import os
import re

import nbformat
import pytest
from playwright.sync_api import expect

from conftest import cluster_processes, wait_until

pytestmark = [pytest.mark.browser, pytest.mark.kernel, pytest.mark.cluster]

NOTEBOOK = os.path.join(
    os.path.dirname(__file__), "..", "notebooks", "monte_carlo.ipynb"
)
WAIT_MS = 60_000


def _index(nb: nbformat.NotebookNode, start: str) -> int:
    """The position of the code cell whose source starts with ``start``."""
    (index,) = [
        i
        for i, c in enumerate(nb.cells)
        if c.cell_type == "code" and c.source.startswith(start)
    ]
    return index


def test_gallery_notebook_shows_its_progress_bar_and_plot(open_notebook):
    nb = nbformat.read(NOTEBOOK, as_version=4)
    # the kernel is the Lab server's: the small sizes are asked for in the page
    nb.cells.insert(0, nbformat.v4.new_code_cell("%env PARACELL_GALLERY_SMALL=1"))
    study, plot = _index(nb, "work = "), _index(nb, "fig, ax")
    check = _index(nb, "started = time.perf_counter()\nlocal_counts")

    notebook = open_notebook(nb, "monte_carlo.ipynb")
    notebook.page.set_viewport_size({"width": 1280, "height": 1400})
    notebook.run_all()

    # the study's progress bar: a widget, full, green
    bar = notebook.output(study).locator(".jupyter-widgets.widget-hprogress")
    expect(bar.first).to_be_visible(timeout=WAIT_MS)
    expect(bar.first.locator(".progress-bar")).to_have_class(
        re.compile(r"success"), timeout=WAIT_MS
    )
    expect(notebook.output(study).first).to_contain_text("12/12", timeout=WAIT_MS)
    # the timeline beneath it: one bar per chunk
    chunks = notebook.output(study).locator("rect.paracell-chunk")
    expect(chunks).to_have_count(12, timeout=WAIT_MS)
    # the plot, drawn as an image
    image = notebook.output(plot).locator("img")
    expect(image).to_be_visible(timeout=WAIT_MS)
    assert image.evaluate("img => img.naturalWidth") > 300
    # and the notebook's own check passed
    expect(notebook.output(check).last).to_contain_text(
        "parallel == sequential: True", timeout=WAIT_MS
    )
    notebook.cell(study).scroll_into_view_if_needed()
    notebook.screenshot("gallery-monte-carlo")
    notebook.cell(plot).scroll_into_view_if_needed()
    notebook.screenshot("gallery-monte-carlo-plot")
    # the notebook's last cell stopped its cluster
    assert wait_until(lambda: not cluster_processes(), 15), cluster_processes()
