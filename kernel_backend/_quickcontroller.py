"""ipcontroller without its fixed pause at start-up.

ipyparallel's hub sleeps 0.25 s while it starts, between connecting its
task database and creating the hub (``IPController.init_hub``), before it
writes the connection files the engines wait for: a quarter of a local
cluster's start here.  paracell's controllers keep no task database
(``NoDB``), so there is nothing to wait for.

:data:`PROGRAM` runs ipcontroller as ``python -m ipyparallel.controller``
would, with that module's ``time.sleep`` made a no-op (the pause is its only use
of ``time``; everything else of the module stays ``time``'s).  A profile
that sets ``controller_cmd`` keeps its own command.
"""

from __future__ import annotations

import sys
from typing import Any

from ._profiles import launchers_set

__all__ = ["PROGRAM", "command"]

#: What ``python -c`` runs (all of it here: importing paracell would cost
#: the controller more than the pause).
PROGRAM = (
    "import sys, time, types; from ipyparallel.controller import app;"
    " app.time = types.SimpleNamespace(**{**vars(time), 'sleep': lambda s: None});"
    " sys.exit(app.main())"
)


def command(config: Any) -> list[str] | None:
    """The controller command to configure, or None where the profile has
    one of its own."""
    if launchers_set(config, "controller_cmd", "ControllerLauncher"):
        return None
    return [sys.executable, "-c", PROGRAM]
