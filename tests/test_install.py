"""paracell works with its own dependencies alone, without the test tools."""

from __future__ import annotations

import re
import subprocess
import sys
import textwrap
from importlib.metadata import requires

import pytest

#: Installed for the tests (or the demo) only; paracell must never need them.
TEST_ONLY = (
    "pytest",
    "nbclient",
    "nbformat",
    "jupyterlab",
    "notebook",
    "playwright",
    "mypy",
    "ruff",
)


def test_the_runtime_requirements_hold_no_test_tool():
    runtime = [r for r in requires("paracell") or [] if "extra ==" not in r]
    names = {re.match(r"[A-Za-z0-9_.-]+", r).group(0).lower() for r in runtime}
    assert names == {
        "ipython",
        "ipykernel",
        "ipywidgets",
        "ipyparallel",
        "numpy",
        "cloudpickle",
        "xxhash",
    }


@pytest.mark.cluster
def test_load_ext_and_a_map_work_with_the_test_tools_hidden(no_other_cluster):
    code = textwrap.dedent(
        f"""
        import importlib.abc, sys

        class Hidden(importlib.abc.MetaPathFinder):
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] in {TEST_ONLY!r}:
                    raise ModuleNotFoundError(f"no module named {{name!r}} (hidden)")
                return None

        sys.meta_path.insert(0, Hidden())
        from IPython.core.interactiveshell import InteractiveShell

        ip = InteractiveShell.instance()
        ip.run_line_magic("load_ext", "paracell")
        print(ip.run_line_magic("pmap", "--local --no-progress x * x for x in range(4)"))
        ip.run_line_magic("cluster", "start -n 1")
        try:
            print(ip.run_line_magic("pmap", "--no-progress x + 1 for x in range(4)"))
        finally:
            ip.run_line_magic("cluster", "stop")
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert "[0, 1, 4, 9]" in done.stdout
    assert "[1, 2, 3, 4]" in done.stdout
