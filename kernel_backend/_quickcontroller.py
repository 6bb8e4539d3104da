"""ipcontroller without its fixed pause at start-up.

ipyparallel's hub sleeps 0.25 s while it starts, between connecting its
task database and creating the hub (``IPController.init_hub``), before it
writes the connection files the engines wait for: a quarter of a local
cluster's start here.  paracell's controllers keep no task database
(``NoDB``), so there is nothing to wait for.

:data:`PROGRAM` runs ipcontroller as ``python -m ipyparallel.controller``
would, with that module's ``time.sleep`` made a no-op (the pause is its only use
of ``time``; everything else of the module stays ``time``'s), and kills
and reaps its children and exits on :data:`REAP_SIGNAL`.  A profile that sets
``controller_cmd`` keeps its own command.
"""

from __future__ import annotations

import signal
import sys
from typing import Any

from ._profiles import launchers_set

__all__ = ["PROGRAM", "REAP_SIGNAL", "command"]

#: The signal that asks the controller to kill and reap its children (its
#: schedulers) and exit: killed from outside with it, or while it could
#: still react to their end, they would be left to the init process to
#: reap, as zombies where it does so late.
REAP_SIGNAL = signal.SIGUSR2

#: What ``python -c`` runs (all of it here: importing paracell would cost
#: the controller more than the pause).
#: (A thread of its own waits for the signal, blocked in every other thread:
#: a handler would run only when the controller's main thread next wakes.)
PROGRAM = f"""\
import os, signal, sys, threading, time, types
from ipyparallel.controller import app

def reap_and_exit():
    signal.sigwait({{{int(REAP_SIGNAL)}}})
    import multiprocessing
    children = multiprocessing.active_children()
    for child in children:
        child.kill()
    for child in children:
        child.join(2)
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            break
        if pid == 0:
            break
    os._exit(0)

signal.pthread_sigmask(signal.SIG_BLOCK, {{{int(REAP_SIGNAL)}}})
threading.Thread(target=reap_and_exit, daemon=True).start()
app.time = types.SimpleNamespace(**{{**vars(time), "sleep": lambda s: None}})
sys.exit(app.main())
"""


def command(config: Any) -> list[str] | None:
    """The controller command to configure, or None where the profile has
    one of its own."""
    if launchers_set(config, "controller_cmd", "ControllerLauncher"):
        return None
    return [sys.executable, "-c", PROGRAM]
