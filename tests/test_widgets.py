"""The views' models, built without a front end (tqdm's ``display=False``).

Widgets are constructed in this process and fed backend events; what a
browser would draw is read off their traits.  The real-cluster tests drive
the panel's and the job views' buttons the way a click does.
"""

from __future__ import annotations

import sys
import time

import pytest

import paracell
from paracell.kernel_backend import (
    ChunkRecord,
    ClusterSession,
    MapJob,
    MapProgress,
    Timeline,
    default_jobs,
)
from paracell.widgets import (
    TimelineView,
    cluster_panel,
    map_observers,
    timeline_html,
    timeline_text,
    use_widgets,
)
from paracell.widgets._jobview import JobsPanel, JobWidget
from paracell.widgets._mapview import MapProgressWidget
from paracell.widgets._panel import ClusterPanel

from conftest import cluster_processes, wait_until


def event(state="running", done=0, failed=0, total=60, elapsed=1.0, per_engine=None):
    return MapProgress(state, done, failed, total, elapsed, per_engine or {})


# -- choosing the front end ------------------------------------------------------


def test_text_outside_a_kernel(monkeypatch):
    monkeypatch.delenv("PARACELL_WIDGETS", raising=False)
    assert use_widgets() is False
    # without a bar, what items print still shows, as plain lines
    assert [type(o).__name__ for o in map_observers(False)] == ["TextLines"]
    assert map_observers(False, quiet=True) == []
    assert type(map_observers(True)[0]).__name__ == "TextProgress"


def test_the_choice_can_be_forced(monkeypatch):
    monkeypatch.setenv("PARACELL_WIDGETS", "1")
    assert use_widgets() is True
    monkeypatch.setenv("PARACELL_WIDGETS", "0")
    assert use_widgets() is False


def test_without_ipywidgets_views_are_text_and_say_so_once(monkeypatch):
    from paracell.kernel_backend import ParacellWarning
    from paracell.widgets import _frontend

    monkeypatch.setenv("PARACELL_WIDGETS", "1")
    monkeypatch.setitem(sys.modules, "ipywidgets", None)  # import fails
    monkeypatch.setattr(_frontend, "_warned", False)
    with pytest.warns(ParacellWarning, match="pip install ipywidgets"):
        assert use_widgets() is False
    assert use_widgets() is False  # no second warning (it would be an error)
    assert type(map_observers(True)[0]).__name__ == "TextProgress"


def test_panel_in_a_terminal_is_the_status(monkeypatch):
    monkeypatch.delenv("PARACELL_WIDGETS", raising=False)
    view = cluster_panel(ClusterSession())
    assert repr(view) == "stopped: no cluster active"


# -- map progress ----------------------------------------------------------------


def test_map_bar_follows_events_and_ends_green():
    bar = MapProgressWidget(60)
    assert bar.bar.max == 60 and bar.bar.value == 0
    bar(event(done=30, per_engine={0: 16, 1: 14}), force=True)
    assert bar.bar.value == 30
    assert bar.bar.bar_style == "info"
    text = bar.label.value
    assert "30/60" in text and "items/s" in text and "ETA" in text
    assert "engine 0" in bar.label.value and "16 items" in bar.label.value
    bar(event("done", done=60, elapsed=3.1, per_engine={0: 31, 1: 29}))
    assert bar.bar.value == 60 and bar.bar.bar_style == "success"
    assert "60/60" in bar.label.value and "ETA" not in bar.label.value
    assert repr(bar) == "pmap: 60/60 done in 3.1 s, 0 failed"
    bundle = bar._repr_mimebundle_()
    assert bundle["text/plain"] == "pmap: 60/60 done in 3.1 s, 0 failed"
    assert "application/vnd.jupyter.widget-view+json" in bundle


@pytest.mark.parametrize(
    ("final", "style"),
    [
        (event("failed", done=10, failed=1), "danger"),
        (event("done", done=60, failed=2), "danger"),
        (event("cancelled", done=5), "danger"),
    ],
)
def test_map_bar_turns_red_and_stays(final, style):
    bar = MapProgressWidget(60)
    bar(final)
    assert bar.bar.bar_style == style
    bar(event(done=59), force=False)  # a late event does not repaint the end
    if final.state != "done":
        assert final.state.upper() in bar.label.value


def test_map_bar_is_throttled():
    bar = MapProgressWidget(1000)
    for i in range(200):
        bar(event(done=i, total=1000))
    assert bar.draws <= 3  # ~10 Hz: 200 events in well under 0.3 s
    assert bar.event.done == 199  # the latest event is kept for the end


def test_map_bar_unknown_total():
    bar = MapProgressWidget(None)
    bar(event(done=7, total=None), force=True)
    assert "7 done" in bar.label.value


def test_map_bar_escapes_html():
    from paracell.widgets._mapview import engines_html

    assert "<script>" not in engines_html({0: 1})


def test_async_map_widget_cancels_its_job():
    job = MapJob(10)
    bar = MapProgressWidget(10, job=job)
    assert bar.cancel_button.layout.display == ""
    bar.cancel_button.click()
    assert job.cancelled()
    assert bar.bar.bar_style == "danger"
    assert bar.cancel_button.layout.display == "none"


def test_blocking_map_has_no_cancel_button():
    assert MapProgressWidget(10).cancel_button.layout.display == "none"


# -- timeline --------------------------------------------------------------------


def _timeline() -> Timeline:
    t0 = 1000.0
    chunks = (
        ChunkRecord(0, 0, 10, t0 + 0.0, 1.0),
        ChunkRecord(1, 10, 10, t0 + 0.1, 0.5),
        ChunkRecord(0, 20, 10, t0 + 1.0, 1.0),
        ChunkRecord(1, 30, 5, t0 + 0.7, 0.3),
    )
    return Timeline(chunks, t0, t0 + 2.0)


def test_timeline_facts():
    tl = _timeline()
    assert len(tl) == 4 and tl.engines == [0, 1]
    busy = tl.busy()
    assert busy[0] == pytest.approx(1.0) and busy[1] == pytest.approx(0.4)
    assert tl.summary() == (
        "timeline: 4 chunks on 2 engines over 2.00 s (busy: 0 100%, 1 40%)"
    )


def test_timeline_drawn_as_svg_and_text():
    tl = _timeline()
    html = timeline_html(tl)
    assert html.count('class="paracell-chunk"') == 4
    assert "items 20 to 29 (10)" in html and "<svg" in html
    text = timeline_text(tl, width=20)
    rows = text.splitlines()
    assert rows[1].startswith("engine 0 |####################|")
    assert rows[2].count("#") < 20  # engine 1 sat idle part of the time
    assert repr(TimelineView(tl)) == timeline_text(tl)


def test_empty_timeline():
    tl = Timeline((), 0.0, 1.0)
    assert tl.summary() == "timeline: no chunks ran"
    assert "no chunks ran" in timeline_html(tl)


# -- the real cluster: job views, the jobs panel, the cluster panel -------------


@pytest.mark.cluster
def test_job_widget_streams_output_and_shows_the_value(shared_cluster):
    job = paracell.parallel(
        "import time\nprint('line one', flush=True)\ntime.sleep(0.3)\n"
        "print('line two')\nanswer = 6 * 7\nanswer",
        namespace={},
        name="view-me",
    )
    view = JobWidget(job)
    assert "view-me" in view.header.value
    assert wait_until(job.done, 30)
    assert wait_until(lambda: "line two" in view.stdout.value, 5)
    assert "line one" in view.stdout.value
    assert 'data-state="done"' in view.header.value
    assert view.cancel_button.layout.display == "none"
    assert view.value.outputs[0]["data"]["text/plain"] == "42"
    assert repr(view).startswith("job 'view-me': done on engine")
    paracell.wait(job)


@pytest.mark.cluster
def test_job_widget_shows_the_remote_traceback(shared_cluster):
    job = paracell.parallel(
        "def inner():\n    raise ValueError('bad value here')\ninner()",
        namespace={},
        name="fails",
    )
    view = JobWidget(job)
    assert wait_until(job.done, 30)
    assert wait_until(lambda: "bad value here" in view.error.value, 5)
    assert "inner" in view.error.value  # the user's frames
    assert "kernel_backend" not in view.error.value  # not paracell's
    assert 'data-state="failed"' in view.header.value


@pytest.mark.cluster
def test_job_widget_cancel_button(shared_cluster):
    job = paracell.parallel("import time\ntime.sleep(60)", namespace={}, name="long")
    view = JobWidget(job)
    assert wait_until(lambda: job.state == "running", 30)
    view.cancel_button.click()
    assert wait_until(job.done, 10)
    assert job.state == "cancelled"
    assert wait_until(lambda: 'data-state="cancelled"' in view.header.value, 5)


@pytest.mark.cluster
def test_jobs_panel_lists_jobs_live_with_cancel(shared_cluster):
    manager = default_jobs()
    panel = JobsPanel(manager)
    try:
        first = paracell.parallel("x = 1", namespace={}, name="quick")
        slow = paracell.parallel(
            "import time\ntime.sleep(60)", namespace={}, name="slow"
        )
        names = lambda: [  # noqa: E731
            c.value
            for c in panel.grid.children
            if "paracell-job-name" in c._dom_classes
        ]
        assert wait_until(lambda: {"quick", "slow"} <= set(names()), 10)
        assert wait_until(first.done, 30)
        assert wait_until(lambda: slow.state == "running", 30)
        row = 6 * (1 + names().index("slow"))
        cancel = panel.grid.children[row + 5]
        assert cancel.layout.visibility == "visible"
        cancel.click()
        assert wait_until(slow.done, 10) and slow.state == "cancelled"
        assert wait_until(lambda: "cancelled" in panel.grid.children[row + 1].value, 5)
        assert "slow" in repr(panel) and "cancelled" in repr(panel)
    finally:
        panel.close()
        for job in manager.jobs():
            job.cancel()
        manager.wait(manager.jobs(), timeout=10)
        manager.clear()


@pytest.mark.cluster
def test_cluster_panel_buttons_start_scale_stop(no_other_cluster):
    session = ClusterSession()
    seen: list[str] = []
    panel = ClusterPanel(session, loop=None)
    session.subscribe(lambda: seen.append(panel.words()))
    try:
        assert panel.words() == "stopped"
        assert not panel.start_button.disabled and panel.stop_button.disabled
        panel.count.value = 1
        panel.idle.value = 300
        panel.start_button.click()
        assert "starting…" in seen
        assert session.status().idle_timeout == 300 and panel.idle.disabled
        assert panel.words() == "running"
        assert panel.status is not None and panel.status.live_engines == 1
        assert "started 1 engine" in panel.message.value
        assert panel.start_button.disabled and not panel.stop_button.disabled
        assert panel.engines.value.count("<tr>") == 2  # header + 1 engine

        # changed by code, not by the panel: the panel follows
        session.scale(2)
        assert panel.status.live_engines == 2
        assert panel.engines.value.count("<tr>") == 3

        assert cluster_processes()
        panel.stop_button.click()
        assert panel.words() == "stopped"
        assert "stopped the controller and 2 engines" in panel.message.value
        assert wait_until(lambda: not cluster_processes(), 10)
        assert "stopping…" in seen
    finally:
        panel.close()
        session.stop()


@pytest.mark.cluster
def test_cluster_panel_reports_a_failed_start_in_one_line(no_other_cluster):
    session = ClusterSession()
    panel = ClusterPanel(session, loop=None)
    try:
        panel.launcher.value = "ssh"  # and no hosts
        panel.count.value = 1
        panel.start_button.click()
        assert panel.words() == "stopped"
        assert "start failed: the ssh launcher needs --hosts" in panel.message.value
        assert "paracell-panel-error" in panel.message.value
        assert not panel.start_button.disabled  # the user can try again
    finally:
        panel.close()
        session.stop()


@pytest.mark.cluster
def test_status_rows_name_what_engines_run(shared_cluster):
    job = paracell.parallel(
        "import time\ntime.sleep(60)", namespace={}, name="busy-one"
    )
    try:
        assert wait_until(lambda: job.state == "running", 30)
        rows = shared_cluster.status().engines
        assert any(r.current == "busy-one" for r in rows)
    finally:
        job.cancel()
        default_jobs().wait([job], timeout=10)
    # (a status takes a while on a loaded machine: generous waits)
    assert wait_until(
        lambda: all(r.current is None for r in shared_cluster.status().engines), 30
    )
    mapping = paracell.pmap(time.sleep, [1.0] * 8, block=False, progress=False)
    assert wait_until(
        lambda: any(r.current == "pmap" for r in shared_cluster.status().engines), 30
    )
    mapping.result()
    assert wait_until(
        lambda: all(r.current is None for r in shared_cluster.status().engines), 30
    )


def test_one_view_per_async_job_however_often_displayed(monkeypatch):
    from paracell.widgets import map_view

    monkeypatch.setenv("PARACELL_WIDGETS", "1")
    job = MapJob(5)
    assert map_view(job) is map_view(job)
    assert len(job._updates) == 1


def test_panels_of_a_session_share_one_refresher():
    session = ClusterSession()
    first = ClusterPanel(session, loop=None)
    second = ClusterPanel(session, loop=None)
    assert len(session._changes) == 1  # one listener, however many panels
    assert first.words() == second.words() == "stopped"
    first.close()
    assert len(session._changes) == 1
    second.close()
    assert len(session._changes) == 0


def test_a_change_made_in_another_thread_redraws_the_panel():
    """Events from other threads reach the panel through the kernel's loop
    (the panel's own timer is slowed down here so it cannot hide a miss)."""
    import asyncio
    import threading

    from paracell.widgets._panel import _Refresher

    session = ClusterSession()
    loop = asyncio.new_event_loop()
    runner = threading.Thread(target=loop.run_forever, daemon=True)
    runner.start()
    try:
        refresher = _Refresher(session, loop, period=3600.0)
        redraws = []

        class Panel:
            _busy = False

            def show(self, status):
                redraws.append(status)

        refresher.panels.append(Panel())
        refresher._unsubscribe = session.subscribe(refresher._on_change)
        changer = threading.Thread(target=session._changed)
        changer.start()
        changer.join()
        assert wait_until(lambda: redraws, 5)
        assert redraws[0] is not None and redraws[0].state == "stopped"
        refresher._unsubscribe()
    finally:
        loop.call_soon_threadsafe(loop.stop)
        runner.join(5)
        loop.close()


def test_an_observer_that_fails_is_logged_not_swallowed(caplog):
    session = ClusterSession()

    def broken() -> None:
        raise RuntimeError("view bug")

    session.subscribe(broken)
    with caplog.at_level("WARNING", logger="paracell.observers"):
        session._changed()
    assert "an observer of the cluster failed" in caplog.text
    assert "view bug" in caplog.text


def test_cluster_panel_shows_the_fields_each_launcher_needs():
    panel = ClusterPanel(ClusterSession(), loop=None)
    try:

        def shown() -> set[str]:
            return {
                name
                for name, field in panel.options.items()
                if field.layout.display != "none"
            }

        assert shown() == {"mem_per_engine"}
        panel.launcher.value = "slurm"
        assert shown() == {"queue", "time", "account", "mem", "extra", "ip"}
        panel.launcher.value = "ssh"
        assert shown() == {"hosts", "extra", "ip"}
        panel.options["hosts"].value = " alice@node1,node2:4 "
        panel.options["queue"].value = "short"  # hidden: not for ssh
        options = panel.launcher_options()
        assert options.hosts == "alice@node1,node2:4"
        assert options.queue is None
    finally:
        panel.close()
