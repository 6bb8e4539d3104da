"""Batch queues (Slurm, PBS, SGE, LSF, HTCondor): their options, the Slurm
launcher, and the engines still waiting in a queue.

:class:`SlurmArrayEngineSetLauncher` submits one Slurm *job array* per engine
set, one engine per array task, so a cancelled task costs one engine (its
work is retried elsewhere), not all of them, and engines that wait in the
queue can be counted and cancelled one by one.  The other queues use
ipyparallel's launchers as they are, told only their queue.
"""

from __future__ import annotations

import contextlib
import re
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ipyparallel.cluster.launcher import SlurmEngineSetLauncher
from traitlets import List, Unicode
from traitlets.config import Config

if TYPE_CHECKING:
    from ._launchers import LauncherOptions

__all__ = [
    "BATCH_LAUNCHERS",
    "SlurmArrayEngineSetLauncher",
    "Waiting",
    "batch_config",
    "is_memory",
    "is_slurm_time",
    "waiting_engines",
]

#: Launchers whose engines wait in a batch queue before they run.
BATCH_LAUNCHERS = ("slurm", "pbs", "sge", "lsf", "htcondor")

# Slurm's time formats (sbatch(1)): minutes, minutes:seconds,
# hours:minutes:seconds, days-hours, days-hours:minutes,
# days-hours:minutes:seconds; "UNLIMITED" too.
_TIME = re.compile(
    r"^(?:\d+(?::\d+){0,2}|\d+-\d+(?::\d+){0,2}|unlimited|infinite)$", re.I
)
#: an amount of memory as sbatch takes it (whole numbers: 500M, 4G)
_MEM = re.compile(r"^(\d+)\s*([KMGT])?(?:I?B)?$", re.I)
# how long a stop waits for Slurm to see its engines gone
_SLURM_STOP_WAIT = 30.0
# the ipyparallel launchers of the other queues, by the name --launcher takes
_BATCH_CLASSES = {
    "pbs": "PBSEngineSetLauncher",
    "sge": "SGEEngineSetLauncher",
    "lsf": "LSFEngineSetLauncher",
    "htcondor": "HTCondorEngineSetLauncher",
}


@dataclass(frozen=True)
class Waiting:
    """Engines asked for but not registered yet, and why (for the status line)."""

    count: int
    reason: str = ""  # e.g. "queued in Slurm, job 1234"

    def __str__(self) -> str:
        return f"{self.count} waiting" + (f" ({self.reason})" if self.reason else "")


# -- options ------------------------------------------------------------------


def is_slurm_time(text: str) -> bool:
    """Whether ``text`` is a time limit as sbatch takes it (``1:00:00``)."""
    return _TIME.match(text.strip()) is not None


def is_memory(text: str) -> bool:
    """Whether ``text`` is an amount of memory as sbatch takes it (``4G``)."""
    return _MEM.match(text.strip()) is not None


def batch_config(
    launcher: str, options: LauncherOptions, extra: Sequence[str]
) -> Config:
    """The configuration a batch ``launcher`` gets from checked ``options``
    and ``--extra`` (split like a shell would)."""
    config = Config()
    if launcher == "slurm":
        sbatch = []
        if options.queue:
            sbatch.append(f"--partition={options.queue}")
        if options.time:
            sbatch.append(f"--time={options.time.strip()}")
        if options.account:
            sbatch.append(f"--account={options.account}")
        if options.mem:
            sbatch.append(f"--mem={_slurm_memory(options.mem)}")
        config.SlurmArrayEngineSetLauncher.sbatch_options = [*sbatch, *extra]
    elif options.queue:
        config[_BATCH_CLASSES[launcher]].queue = options.queue
    return config


def _slurm_memory(text: str) -> str:
    """``4G``, ``500MB``, ``4 GiB`` -> what sbatch understands (``4G``, ``500M``)."""
    match = _MEM.match(text.strip())
    assert match is not None
    number, unit = match.groups()
    return number + (unit or "M").upper()


# -- the Slurm launcher -------------------------------------------------------


class SlurmArrayEngineSetLauncher(SlurmEngineSetLauncher):  # type: ignore[misc]
    """Engines as one Slurm job array: array task *i* runs engine *i*.

    A task cancelled (``scancel 1234_3``), preempted or out of time takes one
    engine with it; the others keep running.  Options in ``sbatch_options``
    go on ``sbatch``'s command line, so they override the script's
    ``#SBATCH`` lines (a profile's template included).
    """

    default_template = Unicode(
        """#!/bin/sh
#SBATCH --export=ALL
#SBATCH --job-name=ipengine-{cluster_id}
#SBATCH --ntasks=1
#SBATCH --array=1-{n}
#SBATCH --open-mode=append
exec {program_and_args}
"""
    )
    sbatch_options = List(
        Unicode(), config=True, help="More sbatch options (override the script's)"
    )

    def find_args(self) -> list[str]:
        return [*self.submit_command, *self.sbatch_options, self.batch_file]

    def stop(self) -> str:
        # scancel of a finished job fails; stopping what has ended is no error
        try:
            output = str(super().stop())
        except (subprocess.CalledProcessError, OSError) as err:
            self.notify_stop({"job_id": self.job_id, "output": str(err)})
            return ""
        # stopped means gone from the queue, not "completing": a cluster
        # stopped and started again must not find its old engines running
        deadline = time.monotonic() + _SLURM_STOP_WAIT
        while self.tasks() and time.monotonic() < deadline:
            time.sleep(0.2)
        return output

    def tasks(self) -> list[tuple[str, str]]:
        """(task id, state) of each array task still in the queue."""
        if not self.job_id:
            return []
        try:
            out = subprocess.run(
                ["squeue", "-h", "-r", "-j", self.job_id, "-o", "%i %T"],
                capture_output=True,
                text=True,
                timeout=10,
                check=False,
            ).stdout
        except (OSError, subprocess.SubprocessError):
            return []
        found = []
        for line in out.splitlines():
            task, _, state = line.strip().partition(" ")
            if task:
                found.append((task, state))
        return found

    def cancel_waiting(self, count: int) -> int:
        """Cancel up to ``count`` tasks still pending, newest first."""
        pending = [t for t, state in self.tasks() if state == "PENDING"]
        chosen = pending[::-1][:count]
        if chosen:
            with contextlib.suppress(OSError, subprocess.SubprocessError):
                subprocess.run(
                    ["scancel", *chosen], capture_output=True, timeout=10, check=False
                )
        return len(chosen)


# -- queue state --------------------------------------------------------------


def waiting_engines(cluster: Any, target: int, registered: int) -> Waiting | None:
    """Engines asked for that have not registered, and where they wait.

    For Slurm the queue decides: engines whose tasks were cancelled or ended
    are not coming, whatever the target says.
    """
    missing = target - registered
    slurm = [
        es
        for es in list(getattr(cluster, "engines", {}).values())
        if isinstance(es, SlurmArrayEngineSetLauncher)
    ]
    if slurm:
        jobs, queued, in_queue = [], 0, 0
        for engine_set in slurm:
            states = [state for _, state in engine_set.tasks()]
            if states:
                jobs.append(engine_set.job_id)
                queued += states.count("PENDING")
                in_queue += sum(1 for s in states if s in _SLURM_ALIVE)
        missing = min(missing, in_queue - registered)
        if missing <= 0:
            return None
        label = "job" if len(jobs) == 1 else "jobs"
        where = "queued in Slurm" if queued else "starting in Slurm"
        return Waiting(missing, f"{where}, {label} {', '.join(jobs)}")
    if missing <= 0:
        return None
    return Waiting(missing, "starting")


# Slurm job states of tasks whose engine is still to come or running
_SLURM_ALIVE = frozenset({"PENDING", "CONFIGURING", "RUNNING", "REQUEUED", "RESIZING"})
