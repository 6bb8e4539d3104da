"""ipywidgets in a real JupyterLab, driven by Chromium: the harness works.

The notebook draws a progress bar the kernel fills, and a button whose click
the kernel answers by changing a label: comm messages go both ways between
the kernel and the page.
"""

from __future__ import annotations

import re

import pytest
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook
from playwright.sync_api import expect

pytestmark = pytest.mark.browser

WAIT_MS = 30_000  # the slowest thing the page may take to show a change

CELLS = [
    new_markdown_cell("# Widgets in a real JupyterLab"),
    new_code_cell("import time\n\nimport ipywidgets as widgets"),
    new_code_cell(
        "bar = widgets.IntProgress(value=0, max=10, description='Work')\n"
        "display(bar)\n"
        "for _ in range(bar.max):\n"
        "    time.sleep(0.05)\n"
        "    bar.value += 1"
    ),
    new_code_cell(
        "label = widgets.HTML(value='waiting')\n"
        "button = widgets.Button(description='Press me')\n"
        "button.on_click(lambda _: setattr(label, 'value', 'pressed'))\n"
        "widgets.VBox([button, label])"
    ),
]
PROGRESS, BUTTON = 2, 3  # the cells with the widgets


def test_widgets_render_and_answer_clicks(open_notebook) -> None:
    notebook = open_notebook(new_notebook(cells=CELLS), "smoke.ipynb")
    notebook.run_all()

    # the progress bar is drawn by the widget manager, full: value == max
    bar = notebook.output(PROGRESS).locator(".jupyter-widgets.widget-hprogress")
    expect(bar).to_be_visible(timeout=WAIT_MS)
    expect(bar.locator(".progress-bar")).to_have_attribute(
        "style", re.compile(r"width: 100%"), timeout=WAIT_MS
    )
    # widgets, not the text a front end without the widget manager shows
    for cell in (PROGRESS, BUTTON):
        expect(notebook.output(cell)).not_to_contain_text(
            re.compile(r"(IntProgress|HTML|Button|VBox)\(")
        )
        expect(notebook.output(cell).locator(".jp-RenderedText")).to_have_count(0)

    label = notebook.output(BUTTON).locator(".jupyter-widgets.widget-html")
    expect(label).to_have_text("waiting", timeout=WAIT_MS)
    notebook.screenshot("browser-smoke-rendered")

    notebook.click_button(BUTTON, "Press me")
    expect(label).to_have_text("pressed", timeout=WAIT_MS)
    notebook.screenshot("browser-smoke-pressed")
