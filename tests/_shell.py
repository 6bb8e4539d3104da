"""Running a cell in the in-process IPython shell and reading what it showed."""

from __future__ import annotations

import contextlib
import io
import re
from dataclasses import dataclass
from typing import Any

#: A frame of paracell's own code as IPython or Python print it, installed
#: (``.../paracell/magics/_pmap.py``) or editable (``.../magics/_pmap.py``).
OWN_FRAME = re.compile(r"(?:magics|kernel_backend|widgets|paracell)[/\\]\w+\.py")
_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


@dataclass
class Shown:
    """A cell's result, its error, and everything it printed (colours removed)."""

    result: Any
    error: BaseException | None
    text: str

    @property
    def own_frames(self) -> list[str]:
        """paracell's source files named in what was shown."""
        return OWN_FRAME.findall(self.text)


def run_cell(ip: Any, cell: str) -> Shown:
    """Run ``cell`` as a notebook would; capture what IPython prints, tracebacks
    (stdout) and ``UsageError`` lines (stderr) included."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
        result = ip.run_cell(cell, store_history=False)
    error = result.error_in_exec or result.error_before_exec
    return Shown(result.result, error, _ANSI.sub("", out.getvalue()))
