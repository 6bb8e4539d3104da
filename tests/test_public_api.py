"""The public surface is what we mean to export, and importing it is cheap."""

from __future__ import annotations

import subprocess
import sys

import paracell
import paracell.kernel_backend
import paracell.widgets


def test_paracell_exports_exactly_the_public_api():
    assert sorted(paracell.__all__) == sorted(
        [
            "CellJob",
            "ItemError",
            "JobError",
            "MapFailed",
            "MapJob",
            "TaskJob",
            "TaskPlan",
            "TaskTimeline",
            "Timeline",
            "__version__",
            "cache_dir",
            "cache_info",
            "cache_limit",
            "cancel",
            "clear_cache",
            "clear_jobs",
            "connect",
            "jobs",
            "jobs_panel",
            "load_ipython_extension",
            "panel",
            "parallel",
            "pmap",
            "pmap_comprehension",
            "progress",
            "restart",
            "rng",
            "scale",
            "start",
            "status",
            "stop",
            "unload_ipython_extension",
            "wait",
        ]
    )
    for name in paracell.__all__:
        assert hasattr(paracell, name)


def test_backend_exports_records_errors_and_the_session():
    assert {
        "ClusterSession",
        "ClusterStatus",
        "EngineRow",
        "InvalidRequest",
        "NoCluster",
        "ClusterStartError",
        "ParacellError",
        "default_session",
    } <= set(paracell.kernel_backend.__all__)


def test_importing_paracell_loads_neither_magics_nor_widgets():
    # engines import paracell too: they need neither
    code = (
        "import sys, paracell; "
        "print('paracell.magics' in sys.modules, 'ipywidgets' in sys.modules)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout.split()
    assert out == ["False", "False"]


def test_the_backend_does_not_import_display_magics_or_widgets():
    import ast
    import pathlib

    backend = pathlib.Path(paracell.kernel_backend.__file__).parent
    forbidden = ("ipywidgets", "IPython.display", "widgets", "magics")
    for path in backend.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                module = "." * node.level + (node.module or "")
            elif isinstance(node, ast.Import):
                module = ",".join(alias.name for alias in node.names)
            else:
                continue
            assert not any(word in module for word in forbidden), (path.name, module)


def test_the_engine_side_imports_nothing_of_the_kernel_side():
    """Engines import these modules by name: they stay cheap to import."""
    import ast
    import pathlib

    from paracell.kernel_backend._engine import ENGINE_MODULES

    backend = pathlib.Path(paracell.kernel_backend.__file__).parent
    assert sorted(p.stem for p in backend.glob("_engine*.py")) == sorted(ENGINE_MODULES)
    allowed = {*ENGINE_MODULES, "_pickling", "_plan", "_seeding"}
    for name in ENGINE_MODULES:
        tree = ast.parse((backend / f"{name}.py").read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.level:
                modules = [node.module] if node.module else [a.name for a in node.names]
                assert set(modules) <= allowed, (name, modules)
            elif isinstance(node, (ast.Import, ast.ImportFrom)):
                module = getattr(node, "module", None) or node.names[0].name
                assert not module.startswith(("ipyparallel.client", "ipywidgets"))
                assert module not in ("IPython.display", "paracell"), (name, module)
