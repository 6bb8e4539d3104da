"""Terminal IPython in a pty: no widgets, and the text views make sense."""

from __future__ import annotations

import os
import pty
import select
import subprocess
import sys
import time

import pytest

pytestmark = pytest.mark.cluster

SESSION = """\
%load_ext paracell
%cluster start -n 2
import time
r = %pmap time.sleep(0.05) or x for x in range(40)
print('sum', sum(r))
%cluster panel
r = %pmap --timeline x for x in range(200)
%cluster stop
exit
"""


def run_in_pty(lines: str, timeout: float = 120) -> str:
    """Type ``lines`` into terminal IPython; everything it wrote, as text."""
    primary, secondary = pty.openpty()
    env = dict(os.environ, TERM="xterm", COLUMNS="120", PARACELL_WIDGETS="")
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "IPython",
            "--no-banner",
            "--colors=NoColor",
            "--simple-prompt",
            "--HistoryManager.enabled=False",
        ],
        stdin=secondary,
        stdout=secondary,
        stderr=secondary,
        env=env,
        close_fds=True,
    )
    os.close(secondary)
    os.write(primary, lines.encode())
    out = b""
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([primary], [], [], 0.5)
            if ready:
                try:
                    chunk = os.read(primary, 65536)
                except OSError:  # the pty closed: IPython exited
                    break
                if not chunk:
                    break
                out += chunk
            elif proc.poll() is not None:
                break
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(10)
        os.close(primary)
    return out.decode(errors="replace")


def test_text_views_in_terminal_ipython():
    out = run_in_pty(SESSION)
    assert "started 2 engines" in out, out
    # the progress line is redrawn in place and ends complete
    assert "\rpmap: [" in out
    assert "pmap: [####################] 40/40" in out
    assert "sum 780" in out
    # %cluster panel in a terminal: the status table, no widget repr
    assert "running: 2 engines" in out
    assert "current job" in out
    assert "ClusterPanel" not in out and "VBox" not in out
    # the timeline drawn in characters
    assert "timeline: " in out and "engine 0 |" in out
    assert "stopped the controller and 2 engines" in out
    assert "Traceback" not in out, out
