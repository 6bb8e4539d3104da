"""A real JupyterLab driven by a real Chromium, for paracell's browser tests.

Three pieces, each usable on its own::

    with Lab() as lab, Browser() as browser:
        name = lab.add_notebook(nb)                  # an nbformat notebook
        notebook = Notebook(lab, browser.new_page(), name, artifacts)
        notebook.open()                              # kernel started and idle
        notebook.run_all()                           # Run menu -> Run All Cells
        notebook.click_button(2, "Go")               # in cell 2's output
        notebook.screenshot("after-click")           # artifacts/after-click.png

``Lab`` is a ``jupyter lab`` server in a subprocess, on 127.0.0.1, a free
port and a random token, serving a fresh temporary folder.  Its Jupyter
config, data and runtime folders are temporary too, so the user's settings
and extensions never matter; ``IPYTHONDIR`` is inherited, so kernels (and
the clusters they start) live under the test run's IPython folder.  Lab's
news and update checks are off and notifications are silenced, so nothing
covers the page, and every cell stays in the DOM (no windowing).

``Browser`` is Playwright (sync API) driving Debian's Chromium at
``/usr/bin/chromium``; Playwright never downloads a browser here.  While a
``Browser`` is open, Playwright's event loop counts as running in the main
thread: ``asyncio.run`` fails there, so keep it open only as long as needed.

``Notebook`` is one notebook open in one page, with the few actions the
tests need: run all cells, wait for the kernel, find a cell's output, click
a button in it, take a screenshot.  Cells are numbered as in the ``.ipynb``
file, markdown cells included, from 0.
"""

from __future__ import annotations

import contextlib
import copy
import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any
from urllib.parse import quote

import nbformat
import psutil

CHROMIUM = "/usr/bin/chromium"

# Chromium must not try to reach Google: the tests may run without a network.
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
    "--disable-sync",
]

# Front-end plugins that would pop up over the page or reach the internet.
DISABLED_EXTENSIONS = [
    "@jupyterlab/apputils-extension:announcements",
]

# User settings for the isolated Lab (folder under lab/user-settings -> values).
USER_SETTINGS: dict[str, dict[str, Any]] = {
    # every cell in the DOM, so a cell's locator finds it wherever it is
    "@jupyterlab/notebook-extension/tracker": {"windowingMode": "none"},
    # no toasts over the widgets; no news or update checks
    "@jupyterlab/apputils-extension/notification": {
        "doNotDisturbMode": True,
        "fetchNews": "false",
        "checkForUpdates": False,
    },
}

# What Lab takes, at the most, for the steps the tests wait on (seconds).
START_TIMEOUT = 120.0
KERNEL_TIMEOUT = 120.0
RUN_TIMEOUT = 240.0
STOP_TIMEOUT = 30.0

# Environment variables that would point Lab at the user's own settings.
_USER_JUPYTER_VARS = (
    "JUPYTER_PATH",
    "JUPYTER_CONFIG_PATH",
    "JUPYTERLAB_DIR",
    "JUPYTERLAB_SETTINGS_DIR",
    "JUPYTERLAB_WORKSPACES_DIR",
    "JUPYTER_TOKEN",
)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Lab:
    """A ``jupyter lab`` server in a subprocess; a context manager.

    ``url`` is its base address, ``token`` its token and ``root`` the folder
    it serves.  Leaving the ``with`` block shuts down every kernel, stops the
    server and kills whatever of it is still running.
    """

    def __init__(self) -> None:
        self.token = secrets.token_hex(16)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._base = Path(tempfile.mkdtemp(prefix="paracell-lab-"))
        self.root = self._base / "root"
        self.log_path = self._base / "server.log"
        self._proc: subprocess.Popen[bytes] | None = None
        self.started_in: float | None = None

    # -- lifecycle ---------------------------------------------------------

    def __enter__(self) -> Lab:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def _environment(self) -> dict[str, str]:
        config, data, runtime = (self._base / d for d in ("config", "data", "runtime"))
        for folder in (self.root, config, data, runtime):
            folder.mkdir(parents=True, exist_ok=True)
        labconfig = config / "labconfig"
        labconfig.mkdir()
        (labconfig / "page_config.json").write_text(
            json.dumps({"disabledExtensions": dict.fromkeys(DISABLED_EXTENSIONS, True)})
        )
        for plugin, values in USER_SETTINGS.items():
            path = config / "lab" / "user-settings" / f"{plugin}.jupyterlab-settings"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(values))
        env = {k: v for k, v in os.environ.items() if k not in _USER_JUPYTER_VARS}
        env.update(
            JUPYTER_CONFIG_DIR=str(config),
            JUPYTER_DATA_DIR=str(data),
            JUPYTER_RUNTIME_DIR=str(runtime),
            # IPYTHONDIR stays as the test process has it
        )
        return env

    def start(self) -> None:
        """Start the server and wait until its REST API answers."""
        began = time.monotonic()
        command = [
            sys.executable,
            "-m",
            "jupyterlab",
            "--no-browser",
            "--ip=127.0.0.1",
            f"--port={self.port}",
            "--ServerApp.port_retries=0",
            f"--IdentityProvider.token={self.token}",
            f"--ServerApp.root_dir={self.root}",
            "--LabApp.news_url=None",
            "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate",
            # lists installed extensions only: never asks the package index
            "--LabApp.extension_manager=readonly",
        ]
        if os.geteuid() == 0:  # CI containers run as root
            command.append("--ServerApp.allow_root=True")
        env = self._environment()
        with open(self.log_path, "wb") as log:
            self._proc = subprocess.Popen(
                command,
                env=env,
                cwd=self.root,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its own process group, killed as a whole
            )
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            if self._proc.poll() is not None:
                raise RuntimeError(
                    f"jupyter lab exited with {self._proc.returncode}:\n"
                    + self.log_tail()
                )
            with contextlib.suppress(OSError):
                if self.api("GET", "/api/status", timeout=5) is not None:
                    break
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"jupyter lab did not answer within {START_TIMEOUT:.0f} s:\n"
                    + self.log_tail()
                )
            time.sleep(0.2)
        self.started_in = time.monotonic() - began

    def stop(self) -> None:
        """Shut down kernels and server; kill what is left.  Idempotent."""
        proc, self._proc = self._proc, None
        if proc is not None:
            try:
                leftovers = psutil.Process(proc.pid).children(recursive=True)
            except psutil.Error:
                leftovers = []
            if proc.poll() is None:
                with contextlib.suppress(OSError, ValueError):
                    self.shutdown_kernels()
                with contextlib.suppress(OSError, ValueError):
                    self.api("POST", "/api/shutdown", timeout=STOP_TIMEOUT)
                try:
                    proc.wait(STOP_TIMEOUT)
                except subprocess.TimeoutExpired:
                    _signal_group(proc.pid, signal.SIGTERM)
                    try:
                        proc.wait(10)
                    except subprocess.TimeoutExpired:
                        _signal_group(proc.pid, signal.SIGKILL)
                        proc.wait(10)
            # kernels run in process groups of their own: kill them one by one
            _, alive = psutil.wait_procs(leftovers, timeout=10)
            for child in alive:
                with contextlib.suppress(psutil.Error):
                    child.kill()
            psutil.wait_procs(alive, timeout=10)
        shutil.rmtree(self._base, ignore_errors=True)

    def log_tail(self, chars: int = 4000) -> str:
        """The end of the server's log (stdout and stderr)."""
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return ""

    # -- REST API ----------------------------------------------------------

    def api(self, method: str, path: str, body: Any = None, timeout: float = 30) -> Any:
        """Call the server's REST API; the decoded JSON reply (None if empty)."""
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(
            self.url + path,
            data=data,
            method=method,
            headers={
                "Authorization": f"token {self.token}",
                "Content-Type": "application/json",
            },
        )
        with urllib.request.urlopen(request, timeout=timeout) as reply:
            payload = reply.read()
        return json.loads(payload) if payload else None

    def kernels(self) -> list[dict[str, Any]]:
        """The server's running kernels, as ``GET /api/kernels`` lists them."""
        return list(self.api("GET", "/api/kernels"))

    def shutdown_kernels(self) -> None:
        """End every session and kernel (and so whatever cluster they run)."""
        for session in self.api("GET", "/api/sessions"):
            with contextlib.suppress(urllib.error.HTTPError):
                self.api("DELETE", f"/api/sessions/{session['id']}", timeout=60)
        for kernel in self.kernels():
            with contextlib.suppress(urllib.error.HTTPError):
                self.api("DELETE", f"/api/kernels/{kernel['id']}", timeout=60)

    # -- files -------------------------------------------------------------

    def add_notebook(
        self, notebook: nbformat.NotebookNode | str | os.PathLike[str], name: str = ""
    ) -> str:
        """Put a notebook into the served folder; its name there.

        ``notebook`` is an nbformat notebook or the path of an ``.ipynb``
        file; ``name`` defaults to the file's name, or ``notebook.ipynb``.
        A notebook without a kernelspec gets ``python3``'s.
        """
        if isinstance(notebook, nbformat.NotebookNode):
            nb = copy.deepcopy(notebook)  # the caller's stays as it was
        else:
            nb = nbformat.read(os.fspath(notebook), as_version=4)
            name = name or Path(notebook).name
        name = name or "notebook.ipynb"
        nb.metadata.setdefault(
            "kernelspec",
            {
                "name": "python3",
                "display_name": "Python 3 (ipykernel)",
                "language": "python",
            },
        )
        nbformat.write(nb, self.root / name)
        return name


def _signal_group(pid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, sig)


class Browser:
    """Playwright's Chromium (Debian's binary, headless); a context manager."""

    def __init__(self, executable: str = CHROMIUM) -> None:
        self.executable = executable
        self._playwright: Any = None
        self._browser: Any = None

    def __enter__(self) -> Browser:
        from playwright.sync_api import sync_playwright

        if not os.access(self.executable, os.X_OK):
            raise RuntimeError(
                f"{self.executable} is missing: install Debian's chromium package"
            )
        self._playwright = sync_playwright().start()
        try:
            self._browser = self._playwright.chromium.launch(
                executable_path=self.executable, headless=True, args=CHROMIUM_ARGS
            )
        except BaseException:
            self._playwright.stop()
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._browser is not None:
            with contextlib.suppress(Exception):
                self._browser.close()
        if self._playwright is not None:
            self._playwright.stop()
        self._browser = self._playwright = None

    def new_page(self, width: int = 1280, height: int = 1024) -> Any:
        """A fresh page in a context of its own (no shared storage)."""
        context = self._browser.new_context(viewport={"width": width, "height": height})
        return context.new_page()


# What the page shows of a notebook, read in one go: the toolbar's kernel
# name and status, and each cell's prompt (null for markdown and raw cells).
# A run marks the cells it queues "[*]"; `window.paracellSawRun` records it
# even when the cells finish between two looks.
_STATE_JS = """panel => {
    const cells = [...panel.querySelectorAll('.jp-Notebook .jp-Cell')];
    const indicator = panel.querySelector('.jp-Notebook-ExecutionIndicator');
    const kernel = panel.querySelector('.jp-Toolbar-kernelName');
    return {
        kernel: kernel ? kernel.textContent.trim() : '',
        status: indicator ? indicator.dataset.status || '' : '',
        prompts: cells.map(c => {
            if (!c.classList.contains('jp-CodeCell')) return null;
            const p = c.querySelector('.jp-InputPrompt');
            return p ? p.textContent : '';
        }),
        sawRun: Boolean(window.paracellSawRun),
    };
}"""

_WATCH_RUN_JS = """panel => {
    window.paracellSawRun = false;
    if (window.paracellRunObserver) window.paracellRunObserver.disconnect();
    const look = () => {
        for (const p of panel.querySelectorAll('.jp-InputPrompt'))
            if (p.textContent.includes('[*]')) window.paracellSawRun = true;
    };
    window.paracellRunObserver = new MutationObserver(look);
    window.paracellRunObserver.observe(
        panel, {subtree: true, childList: true, characterData: true});
}"""

# A code cell's prompt: "[3]:" once run, "[*]:" queued or running, "[ ]:" not run.
_PROMPT = re.compile(r"\[(\d+|\*)\]")


@dataclass
class State:
    """What the page shows of a notebook at one moment."""

    kernel: str  # the kernel's name in the toolbar; "No Kernel" before one starts
    status: str  # the toolbar's kernel status: idle, busy, connecting, ...
    prompts: list[str | None]  # per cell: "3", "*" or "" (not run); None: not code
    saw_run: bool  # a cell was marked "[*]" since run_all clicked

    @property
    def running(self) -> bool:
        """Some cell is queued or running."""
        return "*" in self.prompts


class Notebook:
    """One notebook of ``lab`` open in ``page`` (a Playwright page).

    ``artifacts`` is the folder ``screenshot`` writes to.  Each notebook
    opens in a Lab workspace of its own, so nothing another page left open
    is restored next to it.
    """

    def __init__(
        self, lab: Lab, page: Any, name: str, artifacts: str | os.PathLike[str]
    ) -> None:
        self.lab = lab
        self.page = page
        self.name = name
        self.artifacts = Path(artifacts)
        cells = nbformat.read(lab.root / name, as_version=4).cells
        self.cell_count = len(cells)
        self.code_cells = [
            i for i, c in enumerate(cells) if c.cell_type == "code" and c.source.strip()
        ]
        workspace = "paracell-" + secrets.token_hex(6)
        self.url = (
            f"{lab.url}/lab/workspaces/{workspace}/tree/{quote(name)}"
            f"?token={lab.token}&reset"
        )

    # -- what the page shows -------------------------------------------------

    @property
    def panel(self) -> Any:
        """The notebook's panel (toolbar and cells): the tab shown."""
        return self.page.locator(".jp-NotebookPanel:not(.lm-mod-hidden)").first

    def cell(self, index: int) -> Any:
        """Cell ``index`` (0 is the file's first cell, markdown or code)."""
        return self.panel.locator(".jp-Notebook .jp-Cell").nth(index)

    def output(self, index: int) -> Any:
        """Cell ``index``'s outputs (every one: ``.first`` for the first)."""
        return self.cell(index).locator(".jp-OutputArea-output")

    def state(self) -> State:
        """The kernel's name and status and the cells' prompts, right now."""
        if not self.panel.count():
            return State("", "", [], False)
        raw = self.panel.evaluate(_STATE_JS)
        prompts: list[str | None] = []
        for text in raw["prompts"]:
            match = None if text is None else _PROMPT.search(text)
            prompts.append(None if text is None else match.group(1) if match else "")
        return State(raw["kernel"], raw["status"], prompts, raw["sawRun"])

    def kernel_status(self) -> str:
        """The toolbar's kernel status: idle, busy, connecting, ..."""
        return self.state().status

    def outputs_text(self) -> str:
        """Every cell's outputs as text, for failure messages."""
        parts = []
        for i in range(self.cell_count):
            texts = self.output(i).all_inner_texts()
            if texts:
                parts.append(f"[cell {i}]\n" + "\n".join(texts))
        return "\n".join(parts)

    # -- actions -------------------------------------------------------------

    def open(self, timeout: float = KERNEL_TIMEOUT) -> Notebook:
        """Load the notebook's page; wait until every cell is shown and the
        kernel is started and idle."""
        self.page.goto(self.url, timeout=timeout * 1000)
        self.wait_ready(timeout)
        return self

    def wait_ready(self, timeout: float = KERNEL_TIMEOUT) -> None:
        """Wait until all cells are shown and a kernel is connected and idle;
        should Lab ask for a kernel, its proposal (python3) is accepted."""

        def ready() -> bool:
            self._accept_kernel_dialog()
            state = self.state()
            return (
                len(state.prompts) == self.cell_count
                and state.kernel not in ("", "No Kernel")
                and state.status == "idle"
            )

        self._wait(ready, timeout, "notebook not ready")

    def wait_idle(self, timeout: float = RUN_TIMEOUT) -> None:
        """Wait until no cell is queued or running and the kernel is idle."""

        def idle() -> bool:
            state = self.state()
            return state.status == "idle" and not state.running

        self._wait(idle, timeout, "kernel still busy")

    def run_all(self, timeout: float = RUN_TIMEOUT) -> None:
        """Run > Run All Cells, and wait until the run is over.

        Fails (AssertionError) when a code cell did not run, e.g. because an
        earlier one raised; the message gives every cell's outputs.
        """
        __tracebackhide__ = True  # pytest shows the test's line, not this one
        self.wait_ready()
        before = self.state().prompts
        self.panel.evaluate(_WATCH_RUN_JS)
        self.page.locator(".lm-MenuBar").get_by_role(
            "menuitem", name="Run", exact=True
        ).click()
        self.page.locator("#jp-mainmenu-run .lm-Menu-item").filter(
            has=self.page.get_by_text("Run All Cells", exact=True)
        ).click()

        def over() -> bool:
            state = self.state()
            started = state.saw_run or state.prompts != before
            return started and state.status == "idle" and not state.running

        self._wait(over, timeout, "cells still running")
        prompts = self.state().prompts
        not_run = [i for i in self.code_cells if not (prompts[i] or "").isdigit()]
        assert not not_run, (
            f"cells {not_run} of {self.name} did not run; outputs:\n"
            + self.outputs_text()
        )

    def click_button(self, index: int, label: str) -> None:
        """Click the button labelled ``label`` in cell ``index``'s outputs."""
        self.output(index).get_by_role("button", name=label, exact=True).click()

    def screenshot(self, name: str) -> Path:
        """Save the whole page as ``<artifacts>/<name>.png``; its path."""
        self.artifacts.mkdir(parents=True, exist_ok=True)
        path = self.artifacts / f"{name}.png"
        self.page.screenshot(path=str(path), full_page=True)
        return path

    # -- helpers -------------------------------------------------------------

    def _accept_kernel_dialog(self) -> None:
        """Accept a "Select Kernel" dialog's proposal, if one is shown."""
        dialog = self.page.locator(".jp-Dialog").filter(has_text="Select Kernel")
        if dialog.count() and dialog.first.is_visible():
            dialog.first.locator(".jp-mod-accept").first.click()

    def _wait(self, condition: Any, timeout: float, what: str) -> None:
        """Poll ``condition`` until it holds twice in a row, 0.2 s apart."""
        __tracebackhide__ = True
        deadline = time.monotonic() + timeout
        held = False
        while True:
            now = bool(condition())
            if now and held:
                return
            held = now
            if time.monotonic() > deadline:
                state = self.state()
                raise TimeoutError(
                    f"{what} after {timeout:.0f} s: kernel {state.kernel!r} "
                    f"{state.status!r}, prompts {state.prompts}"
                )
            time.sleep(0.2)
