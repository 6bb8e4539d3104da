"""Execute a notebook in a real kernel and print it the way a reader sees it.

Used by ``scripts/demo``: each code cell is printed with its outputs (the
``text/plain`` of rich outputs, streams as they are); a failing cell stops the
run with the kernel's error.
"""

from __future__ import annotations

import sys
import time

import nbformat
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError


def _show(nb: nbformat.NotebookNode) -> None:
    for cell in nb.cells:
        if cell.cell_type == "markdown":
            heading = next(
                (ln for ln in cell.source.splitlines() if ln.startswith("#")), None
            )
            if heading:
                print(f"\n{heading.lstrip('#').strip()}\n{'=' * 60}")
            continue
        if cell.cell_type != "code":
            continue
        for i, line in enumerate(cell.source.splitlines()):
            print(("In  > " if i == 0 else "    . ") + line)
        for out in cell.get("outputs", []):
            if out.output_type == "stream":
                # as a notebook shows it: a carriage return redraws the line
                lines = out.text.rstrip("\n").split("\n")
                print("\n".join(line.rsplit("\r", 1)[-1] for line in lines))
            elif out.output_type in ("execute_result", "display_data"):
                print(out.get("data", {}).get("text/plain", "").rstrip("\n"))
            elif out.output_type == "error":
                print(f"{out.ename}: {out.evalue}")
        print()


def main(path: str) -> int:
    nb = nbformat.read(path, as_version=4)
    client = NotebookClient(nb, timeout=600, kernel_name="python3")
    tic = time.perf_counter()
    try:
        client.execute()
    except CellExecutionError as err:
        _show(nb)
        print(f"demo failed: {err}", file=sys.stderr)
        return 1
    _show(nb)
    print(f"(ran {path} in {time.perf_counter() - tic:.1f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
