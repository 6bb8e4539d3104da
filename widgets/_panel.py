"""The cluster control panel: state, Start / Stop / Scale, engines, live.

Imported only where a widget front end is there (see ``_frontend``).  The
panel keeps no state of its own about the cluster: every redraw reads the
session (``ClusterSession.status()`` and ``.phase``), so it stays truthful
when magics or code change the cluster.  It redraws

* when the session announces a change (start, stop, scale, restart, idle
  engines stopped), and
* every ``period`` seconds on the kernel's event loop, i.e. while the kernel
  is idle (a kernel busy in a cell runs no callbacks, and clicks wait too).

However many panels are displayed, one refresher per session asks the
cluster once per period and redraws them all; a timer's refresh never waits
for a change under way (``ClusterSession.try_status``).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import time
from html import escape
from typing import Any, ClassVar

import ipywidgets as w

from ..kernel_backend import (
    LAUNCHERS,
    ClusterSession,
    ClusterStatus,
    LauncherOptions,
    ParacellError,
    accepted_options,
)
from ._frontend import PlainText, kernel_loop, on_main_thread
from ._tables import ENGINE_COLUMNS, engine_rows, html_table

__all__ = ["ClusterPanel"]

_PHASE_WORDS = {
    "starting": "starting…",
    "stopping": "stopping…",
    "scaling": "scaling…",
    "restarting": "restarting…",
    "connecting": "connecting…",
}


#: The launcher settings the panel offers, with a hint each (shown only for
#: the launchers that use them).
_OPTION_HINTS = {
    "hosts": "alice@node1,node2:4",
    "queue": "short",
    "time": "1:00:00",
    "account": "proj",
    "mem": "4G (per engine)",
    "extra": "--qos=high (sbatch, mpiexec, ssh)",
    "ip": "where engines reach the controller",
    "mem_per_engine": "500MB (caps local engines)",
}


class ClusterPanel(PlainText, w.VBox):  # type: ignore[misc]
    """Start, stop and scale the cluster; see its engines live."""

    def __init__(
        self,
        session: ClusterSession,
        *,
        period: float = 1.0,
        loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        self.session = session
        self.period = period
        self.state = w.HTML()
        self.count = w.BoundedIntText(
            value=2,
            min=0,
            max=4096,
            description="engines",
            layout=w.Layout(width="150px"),
            style={"description_width": "55px"},
        )
        self.launcher = w.Dropdown(
            options=list(LAUNCHERS),
            value="local",
            description="launcher",
            layout=w.Layout(width="170px"),
            style={"description_width": "60px"},
        )
        self.idle = w.BoundedFloatText(
            value=0.0,
            min=0.0,
            max=7 * 24 * 3600.0,
            description="idle stop (s)",
            tooltip="stop engines idle this many seconds (0: never)",
            layout=w.Layout(width="170px"),
            style={"description_width": "80px"},
        )
        # the settings a launcher needs, shown for the launcher chosen
        self.options = {
            name: w.Text(
                description=name,
                placeholder=hint,
                layout=w.Layout(width="260px"),
                style={"description_width": "60px"},
            )
            for name, hint in _OPTION_HINTS.items()
        }
        self.launcher_fields = w.HBox(
            list(self.options.values()),
            layout=w.Layout(flex_flow="row wrap", align_items="center"),
        )
        self.launcher.observe(self._show_launcher_fields, names="value")
        self._show_launcher_fields()
        self.start_button = w.Button(description="Start", button_style="success")
        self.stop_button = w.Button(description="Stop", button_style="danger")
        self.scale_button = w.Button(description="Scale", button_style="info")
        for button, action in (
            (self.start_button, self._start),
            (self.stop_button, self._stop),
            (self.scale_button, self._scale),
        ):
            button.layout = w.Layout(width="70px")
            button.on_click(action)
        self.engines = w.HTML()
        self.message = w.HTML()
        self.status: ClusterStatus | None = None
        self._busy = False  # a click's action is running
        self._closed = False
        controls = w.HBox(
            [
                self.start_button,
                self.stop_button,
                self.scale_button,
                self.count,
                self.launcher,
                self.idle,
            ],
            layout=w.Layout(flex_flow="row wrap", align_items="center"),
        )
        super().__init__(
            [self.state, controls, self.launcher_fields, self.engines, self.message]
        )
        self.add_class("paracell-panel")
        self._refresher = _Refresher.of(
            session, loop if loop is not None else kernel_loop(), period
        )
        self._refresher.add(self)
        if self.status is not None and self.status.state == "running":
            self.count.value = max(self.status.live_engines, self.status.target_engines)

    # -- drawing -----------------------------------------------------------

    def words(self) -> str:
        """The cluster's state in words: ``running``, ``stopped``, ``starting…``."""
        phase = self.session.phase
        if phase is not None:
            return _PHASE_WORDS.get(phase, phase + "…")
        if self.status is None or self.status.state == "stopped":
            return "stopped"
        return "running"

    def refresh(self) -> None:
        """Read the session and redraw every panel of it (main thread: it
        may ask the cluster)."""
        self._refresher.refresh(wait=True)

    def show(self, status: ClusterStatus | None) -> None:
        """Redraw with ``status`` (None: keep the last one, redraw the phase)."""
        if self._closed:
            return
        if status is not None:
            self.status = status
        self._draw()

    def _draw(self) -> None:
        phase = self.session.phase
        status = self.status
        running = phase is None and status is not None and status.state == "running"
        owned = running and status is not None and status.ownership == "started"
        detail = ""
        if phase is None and status is not None:
            detail = status.summary().partition(": ")[2] if running else ""
        with self.hold_sync():
            self.state.value = (
                '<div class="paracell-panel-state"><b>cluster</b> '
                f'<span class="paracell-state" data-state="{escape(self.words())}">'
                f"{escape(self.words())}</span>"
                + (f" <span>· {escape(detail)}</span>" if detail else "")
                + "</div>"
            )
            idle = phase is None and not self._busy
            self.start_button.disabled = not (idle and not running)
            self.stop_button.disabled = not (idle and running)
            self.stop_button.description = (
                "Stop" if owned or not running else "Disconnect"
            )
            self.scale_button.disabled = not (idle and owned)
            self.launcher.disabled = running or not idle
            self.idle.disabled = running or not idle
            if running and status is not None:
                # what the running cluster uses, not what was last typed
                if status.launcher in LAUNCHERS:
                    self.launcher.value = status.launcher
                self.idle.value = status.idle_timeout or 0.0
            if running and status is not None and status.engines:
                self.engines.value = html_table(
                    ENGINE_COLUMNS, engine_rows(status), padded=True
                )
            else:
                self.engines.value = ""

    def close(self) -> None:
        """Stop refreshing and remove the panel."""
        self._closed = True
        self._refresher.remove(self)
        super().close()

    # -- the buttons ---------------------------------------------------------

    def _act(self, what: str, action: Any) -> None:
        self._busy = True
        self.message.value = ""
        self._draw()
        tic = time.perf_counter()
        try:
            text = action()
        except (ParacellError, ValueError) as err:
            self.message.value = _message(f"{what} failed: {err}", error=True)
        except Exception as err:
            self.message.value = _message(
                f"{what} failed: {type(err).__name__}: {err}", error=True
            )
        else:
            self.message.value = _message(
                text or f"{what} done in {time.perf_counter() - tic:.1f} s"
            )
        finally:
            self._busy = False
            self.refresh()

    def _show_launcher_fields(self, _: Any = None) -> None:
        accepted = accepted_options(self.launcher.value)
        for name, field in self.options.items():
            field.layout.display = None if name in accepted else "none"
        self.launcher_fields.layout.display = None if accepted else "none"

    def launcher_options(self) -> LauncherOptions:
        """The launcher settings filled in (for the launcher chosen)."""
        accepted = accepted_options(self.launcher.value)
        given = {
            name: field.value.strip() or None
            for name, field in self.options.items()
            if name in accepted
        }
        return LauncherOptions(**given)

    def _start(self, _: Any = None) -> None:
        n = self.count.value or 1
        idle = self.idle.value or None
        options = self.launcher_options()

        def start() -> str:
            report = self.session.start(
                n, launcher=self.launcher.value, idle_timeout=idle, options=options
            )
            return str(report)

        self._act("start", start)

    def _stop(self, _: Any = None) -> None:
        self._act("stop", lambda: str(self.session.stop()))

    def _scale(self, _: Any = None) -> None:
        n = self.count.value

        def scale() -> str:
            change = self.session.scale(n)
            return f"scaled to {n} engines ({change:+d})"

        self._act("scale", scale)

    def __repr__(self) -> str:
        status = self.status
        text = f"cluster panel: {self.words()}"
        if self.session.phase is None and status is not None:
            text = f"cluster panel: {status.summary()}"
        return text


class _Refresher:
    """Redraws every panel of one session: on its change events, and every
    ``period`` seconds on the kernel's loop while any panel is open."""

    _all: ClassVar[dict[tuple[int, int], _Refresher]] = {}

    @classmethod
    def of(
        cls,
        session: ClusterSession,
        loop: asyncio.AbstractEventLoop | None,
        period: float,
    ) -> _Refresher:
        key = (id(session), id(loop))
        found = cls._all.get(key)
        if found is None or found.session is not session or found.loop is not loop:
            found = cls._all[key] = cls(session, loop, period)
        return found

    def __init__(
        self,
        session: ClusterSession,
        loop: asyncio.AbstractEventLoop | None,
        period: float,
    ) -> None:
        self.session = session
        self.loop = loop
        self.period = period
        self.panels: list[ClusterPanel] = []
        self._timer: asyncio.TimerHandle | None = None
        self._unsubscribe: Any = None

    def add(self, panel: ClusterPanel) -> None:
        self.panels.append(panel)
        if self._unsubscribe is None:
            self._unsubscribe = self.session.subscribe(self._on_change)
        self.refresh(wait=True)
        self._schedule()

    def remove(self, panel: ClusterPanel) -> None:
        with contextlib.suppress(ValueError):
            self.panels.remove(panel)
        if not self.panels:
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None
            if self._unsubscribe is not None:
                self._unsubscribe()
                self._unsubscribe = None

    def refresh(self, *, wait: bool) -> None:
        """Ask the cluster once, redraw every panel.  ``wait=False`` (timers,
        other threads' events) skips the question while a change runs."""
        status = None
        if self.session.phase is None:
            try:
                status = self.session.status() if wait else self.session.try_status()
            except Exception as err:  # a controller in trouble: say so
                for panel in self.panels:
                    panel.message.value = _message(f"status failed: {err}", error=True)
        for panel in list(self.panels):
            panel.show(status)

    def _on_change(self) -> None:
        if on_main_thread():
            self.refresh(wait=True)
        elif self.loop is not None and not self.loop.is_closed():
            with contextlib.suppress(RuntimeError):
                # call_soon takes no keyword arguments: bind them first
                self.loop.call_soon_threadsafe(
                    functools.partial(self.refresh, wait=False)
                )
        else:
            for panel in list(self.panels):
                panel.show(None)  # at least the phase, without asking

    def _schedule(self) -> None:
        loop = self.loop
        if loop is None or loop.is_closed() or self._timer is not None:
            return
        if self.panels:
            self._timer = loop.call_later(self.period, self._tick)

    def _tick(self) -> None:
        self._timer = None
        if not self.panels:
            return
        with contextlib.suppress(Exception):
            if not any(panel._busy for panel in self.panels):
                self.refresh(wait=False)
        self._schedule()


def _message(text: str, *, error: bool = False) -> str:
    color = "#b02a37" if error else "#555"
    cls = "paracell-panel-error" if error else "paracell-panel-message"
    return f'<div class="{cls}" style="color:{color}">{escape(text)}</div>'
