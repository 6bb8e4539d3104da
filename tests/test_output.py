"""What items print and warn reaches the notebook: prefixed, bounded, counted."""

from __future__ import annotations

import pytest

from paracell.kernel_backend import MapProgress
from paracell.widgets._mapview import MapProgressWidget
from paracell.widgets._progress import SHOWN_LINES, TextLines

CHATTY = """
import warnings
def chatty(x):
    print("converged after", x, "steps")
    if x % 3 == 0:
        warnings.warn("overflow in thing", RuntimeWarning)
    return x
"""


@pytest.fixture
def chatty(ip):
    ip.run_cell(CHATTY).raise_error()


@pytest.mark.cluster
def test_item_prints_show_with_their_item_and_engine(
    ip, shared_cluster, chatty, capsys
):
    got = ip.run_line_magic("pmap", "--no-progress chatty(x) for x in range(6)")
    assert got == list(range(6))
    out = capsys.readouterr().out.splitlines()
    lines = [line for line in out if line.startswith("[item")]
    assert len(lines) == 6
    for x in range(6):
        (line,) = [ln for ln in lines if ln.startswith(f"[item {x} · engine ")]
        assert line.endswith(f"] converged after {x} steps")


@pytest.mark.cluster
def test_a_warning_from_many_items_shows_once_with_its_count(
    ip, shared_cluster, chatty, capsys
):
    ip.run_line_magic("pmap", "--no-progress chatty(x) for x in range(30)")
    out = capsys.readouterr().out
    assert out.count("RuntimeWarning: overflow in thing") <= 2  # first seen, final
    assert "RuntimeWarning: overflow in thing (in 10 items)" in out


@pytest.mark.cluster
def test_output_is_bounded_and_the_job_keeps_every_line(
    ip, shared_cluster, chatty, capsys
):
    n = SHOWN_LINES + 50
    ip.run_line_magic("pmap", f"--no-progress chatty(x) for x in range({n})")
    out = capsys.readouterr().out
    assert sum(line.startswith("[item") for line in out.splitlines()) == SHOWN_LINES
    assert "… 50 more lines; job.output() has them all" in out
    job = ip.run_line_magic("pmap", f"--async chatty(x) for x in range({n})")
    assert job.result(timeout=60) == list(range(n))
    assert len(job.output().splitlines()) == n
    (seven,) = job.output(item=7).splitlines()
    assert seven.endswith("] converged after 7 steps")
    assert job.warning_summaries() == (
        f"RuntimeWarning: overflow in thing (in {len(range(0, n, 3))} items)",
    )


@pytest.mark.cluster
def test_quiet_shows_no_output(ip, shared_cluster, chatty, capsys):
    ip.run_line_magic("pmap", "--no-progress --quiet chatty(x) for x in range(5)")
    out = capsys.readouterr().out
    assert "[item" not in out and "RuntimeWarning" not in out


def test_a_local_run_shows_the_same_lines(ip, chatty, capsys):
    ip.run_line_magic("pmap", "--local --no-progress chatty(x) for x in range(3)")
    out = capsys.readouterr().out.splitlines()
    assert "[item 2 · local] converged after 2 steps" in out
    assert "RuntimeWarning: overflow in thing (in 1 items)" not in out
    assert any(
        line.startswith("RuntimeWarning: overflow in thing (item 0)") for line in out
    )


def _event(state: str, lines: tuple[str, ...] = (), warnings=()) -> MapProgress:
    return MapProgress(state, 1, 0, 2, 0.5, {0: 1}, lines=lines, warnings=warnings)


def test_the_progress_widget_shows_lines_and_warnings_below_the_bar():
    view = MapProgressWidget(2)
    assert view.output.layout.display == "none"
    view(_event("running", ("[item 0 · engine 0] hello <b>",)), force=True)
    view(_event("done", ("[item 1 · engine 0] bye",), ("UserWarning: x (in 2 items)",)))
    html = view.output.value
    assert view.output.layout.display == ""
    assert "[item 0 · engine 0] hello &lt;b&gt;" in html  # escaped
    assert "[item 1 · engine 0] bye" in html
    assert "UserWarning: x (in 2 items)" in html
    assert "output: 2 lines, 1 warning" in html


def test_a_quiet_widget_shows_no_output():
    view = MapProgressWidget(2, quiet=True)
    view(_event("done", ("[item 0 · engine 0] hello",)))
    assert view.output.layout.display == "none"


def test_text_lines_print_new_lines_and_the_count_of_the_rest():
    import io

    stream = io.StringIO()
    printer = TextLines(stream)
    many = tuple(f"[item {i} · engine 0] line" for i in range(SHOWN_LINES + 3))
    printer(_event("running", many[:10]))
    printer(_event("done", many[10:]))
    text = stream.getvalue()
    assert text.count("[item") == SHOWN_LINES
    assert text.endswith("… 3 more lines; job.output() has them all\n")


@pytest.mark.cluster
def test_a_huge_global_is_not_shipped_without_asking(ip, shared_cluster, monkeypatch):
    import numpy as np
    from IPython.core.error import UsageError

    monkeypatch.setenv("PARACELL_SHIP_LIMIT", "1MB")
    ip.user_ns["huge"] = np.ones(300_000)  # 2.4 MB
    ip.user_ns["unrelated"] = np.ones(300_000)
    with pytest.raises(UsageError) as info:
        ip.run_line_magic("pmap", "--no-progress huge[i] for i in range(3)")
    message = str(info.value)
    assert "'huge' (ndarray) is 2.3 MB" in message and "--ship-large" in message
    with pytest.raises(UsageError, match="--ship-large"):
        ip.run_cell_magic("parallel", "--block", "total = huge.sum()")
    got = ip.run_line_magic(
        "pmap", "--no-progress --ship-large huge[i] for i in range(3)"
    )
    assert got == [1.0, 1.0, 1.0]
    # a large global the element does not read costs nothing
    sent = shared_cluster.shipper.bytes_sent
    assert ip.run_line_magic("pmap", "--no-progress i * 2 for i in range(3)") == [
        0,
        2,
        4,
    ]
    assert shared_cluster.shipper.bytes_sent - sent < 100_000
