"""paracell: parallel computing from a Jupyter notebook, over ipyparallel.

Load the magics with ``%load_ext paracell``; from plain Python use the
functions below, the twins of the magics (``start`` is ``%cluster start``, ...).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .kernel_backend._lazy import names_on_first_use

if TYPE_CHECKING:
    from IPython.core.interactiveshell import InteractiveShell

    from ._api import (
        cache_dir,
        cache_info,
        cache_limit,
        cancel,
        clear_cache,
        clear_jobs,
        connect,
        jobs,
        jobs_panel,
        panel,
        parallel,
        pmap,
        pmap_comprehension,
        restart,
        scale,
        start,
        status,
        stop,
        wait,
    )
    from .kernel_backend import (
        CellJob,
        ItemError,
        JobError,
        MapFailed,
        MapJob,
        TaskJob,
        TaskPlan,
        TaskTimeline,
        Timeline,
        progress,
        rng,
    )

# Names are imported on first use (PEP 562): ``import paracell`` stays cheap,
# and an engine importing paracell's engine modules runs this file without
# importing the kernel's side.
_WHERE = {
    "cache_dir": "._api",
    "cache_info": "._api",
    "cache_limit": "._api",
    "cancel": "._api",
    "clear_cache": "._api",
    "clear_jobs": "._api",
    "connect": "._api",
    "jobs": "._api",
    "jobs_panel": "._api",
    "panel": "._api",
    "parallel": "._api",
    "pmap": "._api",
    "pmap_comprehension": "._api",
    "restart": "._api",
    "scale": "._api",
    "start": "._api",
    "status": "._api",
    "stop": "._api",
    "wait": "._api",
    "CellJob": ".kernel_backend",
    "ItemError": ".kernel_backend",
    "JobError": ".kernel_backend",
    "MapFailed": ".kernel_backend",
    "MapJob": ".kernel_backend",
    "TaskJob": ".kernel_backend",
    "TaskPlan": ".kernel_backend",
    "TaskTimeline": ".kernel_backend",
    "Timeline": ".kernel_backend",
    "progress": ".kernel_backend",
    "rng": ".kernel_backend",
}


__getattr__ = names_on_first_use(__name__, _WHERE, globals())


__version__ = "0.1.0"

__all__ = [
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


def load_ipython_extension(ipython: InteractiveShell) -> None:
    """Register paracell's magics (``%load_ext paracell``)."""
    # Imported here so that ``import paracell`` never pulls in IPython's magic
    # machinery (engines import paracell too).
    from .magics import register

    register(ipython)


def unload_ipython_extension(ipython: InteractiveShell) -> None:
    """Forget the magics; a running cluster keeps running (``%reload_ext``)."""
    from .magics import unregister

    unregister(ipython)


def __dir__() -> list[str]:  # pragma: no cover - interactive nicety
    return sorted(__all__)
