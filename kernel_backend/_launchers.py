"""How engines get started beyond this machine: MPI, SSH and batch queues.

``ClusterSession`` stays launcher-agnostic: it asks :func:`plan` for a
:class:`LaunchPlan` (validated options, the ipyparallel launcher class to use,
where the controller listens) and lets the plan configure the ``Cluster``.
The launchers themselves are ipyparallel's, with three small subclasses:

- :class:`SlurmArrayEngineSetLauncher` submits one Slurm *job array* per
  engine set, one engine per array task, so a cancelled task costs one
  engine (its work is retried elsewhere), not all of them, and engines that
  wait in the queue can be counted and cancelled one by one.
- :class:`CheckedSSHEngineSetLauncher` tries each host once before starting
  anything, so a host that refuses the connection is a one-line error
  instead of a wait for the start timeout.
- MPI needs none: ``mpiexec`` takes ``--extra`` as its own options.

Settings from a profile's ``ipcluster_config.py`` still apply; the options
given here override them (they go on the command line, or into the direct
configuration, which ipyparallel merges over the profile's).
"""

from __future__ import annotations

import contextlib
import os
import re
import shlex
import socket
import subprocess
import sys
import time
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import psutil
from ipyparallel.cluster.launcher import (
    LauncherError,
    MPIEngineSetLauncher,
    SlurmEngineSetLauncher,
    SSHEngineLauncher,
    SSHEngineSetLauncher,
)
from traitlets import List, Unicode
from traitlets.config import Config

from ._errors import InvalidRequest
from ._sizes import parse_size

__all__ = [
    "BATCH_LAUNCHERS",
    "CheckedSSHEngineSetLauncher",
    "Host",
    "LaunchPlan",
    "LauncherOptions",
    "SlurmArrayEngineSetLauncher",
    "Waiting",
    "accepted_options",
    "parse_hosts",
    "place_engines",
    "plan",
    "ssh_engines_running",
    "waiting_engines",
]

#: Launchers whose engines wait in a batch queue before they run.
BATCH_LAUNCHERS = ("slurm", "pbs", "sge", "lsf", "htcondor")

# Which options each launcher uses.  Anything else given to it is a mistake
# the user should hear about, not a setting silently dropped.
_ACCEPTS: dict[str, frozenset[str]] = {
    "local": frozenset({"mem_per_engine"}),
    "mpi": frozenset({"extra", "ip"}),
    "ssh": frozenset({"hosts", "extra", "ip"}),
    "slurm": frozenset({"queue", "time", "account", "mem", "extra", "ip"}),
    "pbs": frozenset({"queue", "ip"}),
    "sge": frozenset({"queue", "ip"}),
    "lsf": frozenset({"queue", "ip"}),
    "htcondor": frozenset({"ip"}),
}

# Slurm's time formats (sbatch(1)): minutes, minutes:seconds,
# hours:minutes:seconds, days-hours, days-hours:minutes,
# days-hours:minutes:seconds; "UNLIMITED" too.
_TIME = re.compile(
    r"^(?:\d+(?::\d+){0,2}|\d+-\d+(?::\d+){0,2}|unlimited|infinite)$", re.I
)
#: an amount of memory as sbatch takes it (whole numbers: 500M, 4G)
_MEM = re.compile(r"^(\d+)\s*([KMGT])?(?:I?B)?$", re.I)
_HOST_NAME = re.compile(r"^[A-Za-z0-9_.\-\[\]:]+$")
# how long a stop waits for Slurm to see its engines gone
_SLURM_STOP_WAIT = 30.0
# ssh gives up on a host that does not answer after this many seconds
_SSH_CONNECT_TIMEOUT = 10


@dataclass(frozen=True)
class LauncherOptions:
    """The launcher settings a user gives ``%cluster start`` (all optional).

    ``extra`` holds more options for the launcher's own command: ``sbatch``
    options for Slurm, ``mpiexec`` options for MPI, ``ssh`` options for SSH.
    """

    hosts: str | None = None
    queue: str | None = None
    time: str | None = None
    account: str | None = None
    mem: str | None = None
    extra: str | None = None
    ip: str | None = None
    mem_per_engine: str | None = None

    def given(self) -> list[str]:
        """Names of the options that were given."""
        return [name for name, value in vars(self).items() if value is not None]


@dataclass(frozen=True)
class Host:
    """One ``--hosts`` entry: ``[user@]name[:count]``."""

    name: str
    user: str | None = None
    count: int | None = None

    @property
    def location(self) -> str:
        """``user@name`` or ``name``: what ssh is given."""
        return f"{self.user}@{self.name}" if self.user else self.name


@dataclass(frozen=True)
class LaunchPlan:
    """A validated launcher request, ready to configure a ``Cluster``."""

    launcher: str
    n: int
    engine_class: Any  # an ipyparallel engine launcher class, or its name
    controller_ip: str
    location: str  # how the one-line report names where the controller listens
    config: Config = field(default_factory=Config)
    hosts: tuple[Host, ...] = ()
    extra: tuple[str, ...] = ()  # --extra, split like a shell would
    note: str | None = None  # said with the start report, e.g. why n was capped
    n_given: bool = True  # whether n came from the user (not a default)
    force: bool = False  # ssh: engines past the hosts' counts go round-robin

    @property
    def local(self) -> bool:
        """Whether engines run on this machine as plain processes."""
        return self.launcher == "local"

    @property
    def batch(self) -> bool:
        """Whether engines wait in a batch queue (a start need not wait for all)."""
        return self.launcher in BATCH_LAUNCHERS


@dataclass(frozen=True)
class Waiting:
    """Engines asked for but not registered yet, and why (for the status line)."""

    count: int
    reason: str = ""  # e.g. "queued in Slurm, job 1234"

    def __str__(self) -> str:
        return f"{self.count} waiting" + (f" ({self.reason})" if self.reason else "")


# -- options -----------------------------------------------------------------


def parse_hosts(text: str) -> tuple[Host, ...]:
    """``alice@node1,node2:4`` -> hosts; raises ``InvalidRequest`` when malformed."""
    hosts = []
    for raw in text.split(","):
        entry = raw.strip()
        user, _, rest = entry.rpartition("@") if "@" in entry else ("", "", entry)
        name, sep, count_text = rest.partition(":")
        if not name or (user == "" and "@" in entry):
            raise InvalidRequest(
                f"--hosts has an empty host name in {text!r};"
                " write [user@]host[:count],... e.g. alice@node1,node2:4"
            )
        if not _HOST_NAME.match(name):
            raise InvalidRequest(f"--hosts: {name!r} is not a host name")
        count = None
        if sep:
            if not count_text.isdigit() or int(count_text) < 1:
                raise InvalidRequest(
                    f"--hosts: the engine count after {name}: must be a whole"
                    f" number >= 1, not {count_text!r}"
                )
            count = int(count_text)
        hosts.append(Host(name, user or None, count))
    return tuple(hosts)


def engines_per_host(
    hosts: Sequence[Host], n: int | None, *, force: bool = False
) -> tuple[dict[str, int], int]:
    """Share ``n`` engines among ``hosts``; returns ``{location: count}`` and n.

    Hosts with a ``:count`` get that many; the others share what is left
    (one each when ``n`` is not given).  With every host counted, more
    engines than the counts' sum are refused, unless ``force``: then the
    rest go round-robin (see :func:`place_engines`).
    """
    fixed = sum(h.count or 0 for h in hosts)
    free = [h for h in hosts if h.count is None]
    if n is None:
        n = fixed + len(free)
    if force and not free and n > fixed:
        return place_engines(hosts, {}, n, force=True), n
    if n < fixed or (n > fixed and not free) or (free and n - fixed < len(free)):
        given = ", ".join(f"{h.location}:{h.count or '?'}" for h in hosts)
        raise InvalidRequest(
            f"-n {n} does not fit --hosts {given}: give -n equal to the counts'"
            " sum, or leave some hosts without a count to take the rest"
        )
    share, extra = divmod(n - fixed, len(free)) if free else (0, 0)
    counts: dict[str, int] = {}
    for h in hosts:
        if h.count is not None:
            add = h.count
        else:
            add = share + (1 if extra > 0 else 0)
            extra -= 1
        counts[h.location] = counts.get(h.location, 0) + add
    return counts, n


def place_engines(
    hosts: Sequence[Host], running: dict[str, int], count: int, *, force: bool = False
) -> dict[str, int]:
    """Where ``count`` more engines go, with ``running`` ({location: engines})
    already up: ``{location: new engines}``.

    A host's ``:count`` is the most engines it takes, as at the start: free
    places on counted hosts are filled first, in the order given, then hosts
    without a count take the rest, the least loaded first.  With no place
    left, ``force`` places the rest round-robin over every host (the least
    loaded first); without it the request is refused (``InvalidRequest``),
    before anything starts.
    """
    load = {h.location: running.get(h.location, 0) for h in hosts}
    placed: dict[str, int] = {}

    def put(location: str) -> None:
        load[location] += 1
        placed[location] = placed.get(location, 0) + 1

    for _ in range(count):
        open_ = [h for h in hosts if h.count is not None and load[h.location] < h.count]
        if open_:
            put(open_[0].location)
            continue
        candidates = [h for h in hosts if h.count is None] or (
            list(hosts) if force else []
        )
        if not candidates:
            room = sum(h.count or 0 for h in hosts)
            given = ",".join(f"{h.location}:{h.count}" for h in hosts)
            up = sum(running.get(h.location, 0) for h in hosts)
            raise InvalidRequest(
                f"{up + count} engines do not fit --hosts {given} (room for"
                f" {room}); list more hosts, leave one without a :count, or use"
                " --force to place the rest round-robin"
            )
        # the least loaded; among equals, the first listed
        put(min(candidates, key=lambda h: load[h.location]).location)
    return placed


def ssh_engines_running(cluster: Any, pids: Collection[int]) -> dict[str, int]:
    """{location: engines up there} over ``cluster``'s SSH engine sets, for
    the engines whose pids are ``pids`` (those registered and not removed).

    ipyparallel starts each engine in the background on its host and learns
    of its end only when a poll over ssh, seconds later, runs on an event
    loop; the registered engines are the truth.
    """
    running: dict[str, int] = {}
    for engine_set in list(getattr(cluster, "engines", {}).values()):
        if not isinstance(engine_set, SSHEngineSetLauncher):
            continue
        for key, launcher in list(engine_set.launchers.items()):
            if getattr(launcher, "pid", None) in pids:
                location = str(key).rpartition("/")[0]
                running[location] = running.get(location, 0) + 1
    return running


def accepted_options(launcher: str) -> frozenset[str]:
    """Names of the :class:`LauncherOptions` fields ``launcher`` uses."""
    return _ACCEPTS.get(launcher, frozenset())


def _check_options(launcher: str, options: LauncherOptions) -> None:
    accepted = _ACCEPTS.get(launcher, frozenset())
    for name in options.given():
        if name not in accepted:
            users = [k for k, v in _ACCEPTS.items() if name in v]
            where = f"only {', '.join(users)} use it" if users else "none uses it"
            flag = name.replace("_", "-")
            raise InvalidRequest(f"the {launcher} launcher ignores --{flag} ({where})")
    if options.time is not None and not _TIME.match(options.time.strip()):
        raise InvalidRequest(
            f"--time {options.time!r} is not a Slurm time limit; write minutes,"
            " hours:minutes:seconds or days-hours[:minutes], e.g. 1:00:00"
        )
    memory = (("--mem", options.mem), ("--mem-per-engine", options.mem_per_engine))
    for flag, value in memory:
        if value is not None and not _MEM.match(value.strip()):
            raise InvalidRequest(
                f"{flag} {value!r} is not an amount of memory; write e.g. 500M or 4G"
            )
    for name in ("queue", "account", "ip"):
        value = getattr(options, name)
        if value is not None and (not value.strip() or any(c.isspace() for c in value)):
            raise InvalidRequest(f"--{name} {value!r} must be one word")
    if options.extra is not None:
        try:
            shlex.split(options.extra)
        except ValueError as err:
            raise InvalidRequest(f"--extra {options.extra!r}: {err}") from None


def memory_bytes(text: str) -> int:
    """``500MB``, ``4G``, ``2GiB`` -> bytes (K, M, G, T are powers of 1024)."""
    return parse_size(text, binary=True, what="an amount of memory", example="500M")


def _capped_by_memory(
    n: int, per_engine: str, explicit: bool
) -> tuple[int, str | None]:
    """At most as many engines as available memory holds, ``per_engine`` each.

    Returns the count and, when it capped, the sentence that says so.
    """
    need = memory_bytes(per_engine)
    available = int(psutil.virtual_memory().available)
    fits = available // max(1, need)
    gib = available / 1024**3
    if fits < 1:
        raise InvalidRequest(
            f"not enough memory for one engine of {per_engine}"
            f" ({gib:.1f} GiB available)"
        )
    if n <= fits:
        return n, None
    asked = f"-n {n}" if explicit else f"one per CPU: {n}"
    return fits, (
        f"capped at {fits} engine{'' if fits == 1 else 's'} ({asked}):"
        f" {gib:.1f} GiB available, {per_engine.strip()} each"
    )


def _slurm_memory(text: str) -> str:
    """``4G``, ``500MB``, ``4 GiB`` -> what sbatch understands (``4G``, ``500M``)."""
    match = _MEM.match(text.strip())
    assert match is not None
    number, unit = match.groups()
    return number + (unit or "M").upper()


# -- where the controller listens ---------------------------------------------


def address_towards(host: str) -> str:
    """This machine's address on the interface that routes to ``host``.

    A UDP socket's ``connect`` picks the route without sending anything.
    """
    try:
        target = socket.getaddrinfo(
            _ssh_hostname(host), 22, socket.AF_INET, socket.SOCK_DGRAM
        )[0][4]
    except OSError as err:
        raise InvalidRequest(
            f"--hosts: cannot resolve {host!r} ({err}); give --ip ADDR, the"
            " address engines there reach this machine at"
        ) from None
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect(target)
        except OSError as err:
            raise InvalidRequest(f"--hosts: no route to {host!r} ({err})") from None
        return str(probe.getsockname()[0])


def _ssh_hostname(host: str) -> str:
    """The name ssh connects to for ``host`` (an alias in ~/.ssh/config too).

    ``ssh -G`` only reads the configuration; it connects nowhere.
    """
    try:
        out = subprocess.run(
            ["ssh", "-G", host],
            capture_output=True,
            text=True,
            timeout=5,
            check=False,
            stdin=subprocess.DEVNULL,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return host
    for line in out.splitlines():
        key, _, value = line.partition(" ")
        if key == "hostname" and value.strip():
            return value.strip()
    return host


# -- the plan ----------------------------------------------------------------


def plan(
    launcher: str, n: int | None, options: LauncherOptions, *, force: bool = False
) -> LaunchPlan:
    """Check ``options`` for ``launcher`` and work out how to start ``n`` engines.

    Raises ``InvalidRequest`` (one line, for the user) on any mistake, before
    anything is started.  ``force``: ssh engines past the hosts' counts go
    round-robin instead of being refused.
    """
    _check_options(launcher, options)
    config = Config()
    extra = shlex.split(options.extra) if options.extra else []
    hosts: tuple[Host, ...] = ()
    count = (os.cpu_count() or 1) if n is None else n
    engine_class: Any = launcher
    ip = options.ip
    if launcher == "local":
        note = None
        if options.mem_per_engine is not None:
            count, note = _capped_by_memory(
                count, options.mem_per_engine, explicit=n is not None
            )
        return LaunchPlan(
            launcher, count, launcher, "127.0.0.1", "127.0.0.1", note=note
        )
    if launcher == "ssh":
        engine_class = CheckedSSHEngineSetLauncher
        if extra:
            config.CheckedSSHEngineSetLauncher.extra_ssh_args = extra
        if not options.hosts:
            # the profile's c.SSHEngineSetLauncher.engines, or a mistake:
            # configure() tells once the profile is read
            return LaunchPlan(
                launcher,
                count,
                engine_class,
                ip or "",
                ip or "",
                config,
                extra=tuple(extra),
                n_given=n is not None,
                force=force,
            )
        hosts = parse_hosts(options.hosts)
        per_host, count = engines_per_host(hosts, n, force=force)
        config.SSHEngineSetLauncher.engines = per_host
        ip = ip or address_towards(hosts[0].name)
    elif launcher == "mpi":
        engine_class = MPIEngineSetLauncher
    elif launcher == "slurm":
        engine_class = SlurmArrayEngineSetLauncher
        sbatch = []
        if options.queue:
            sbatch.append(f"--partition={options.queue}")
        if options.time:
            sbatch.append(f"--time={options.time.strip()}")
        if options.account:
            sbatch.append(f"--account={options.account}")
        if options.mem:
            sbatch.append(f"--mem={_slurm_memory(options.mem)}")
        config.SlurmArrayEngineSetLauncher.sbatch_options = sbatch + extra
    elif options.queue:
        config[_BATCH_CLASSES[launcher]].queue = options.queue
    if ip is None:
        # MPI starts engines on this machine unless told otherwise (--ip with
        # a hostfile in --extra); batch jobs may run anywhere the queue says.
        ip = "127.0.0.1" if launcher == "mpi" else "*"
    location = ip
    if ip in ("*", "0.0.0.0"):
        location = f"all interfaces of {socket.gethostname()}"
    return LaunchPlan(
        launcher,
        count,
        engine_class,
        ip,
        location,
        config,
        hosts,
        tuple(extra),
        force=force,
    )


_BATCH_CLASSES = {
    "pbs": "PBSEngineSetLauncher",
    "sge": "SGEEngineSetLauncher",
    "lsf": "LSFEngineSetLauncher",
    "htcondor": "HTCondorEngineSetLauncher",
}


def configure(cluster: Any, launch: LaunchPlan) -> LaunchPlan:
    """Give ``cluster`` the plan's settings, over the profile's configuration.

    Defaults chosen here (the engine Python, non-interactive ssh, where batch
    files go) apply only where the profile set nothing; the user's options
    always win.  Returns the plan completed from the profile (ssh hosts it
    names, and so the engine count and the controller's address).
    """
    config = cluster.config
    profile_dir = str(cluster.profile_dir)
    if launch.launcher == "ssh" and not launch.hosts:
        launch = _hosts_from_profile(cluster, launch)
    if launch.launcher == "ssh":
        ssh = config.SSHLauncher
        # the engines' Python: the kernel's, on a shared filesystem the usual
        # case; a profile names another with c.SSHLauncher.remote_python
        if "remote_python" not in ssh and "remote_python" not in (
            config.SSHEngineSetLauncher
        ):
            ssh.remote_python = sys.executable
        # the connection info travels in the engines' environment (over ssh's
        # stdin, never on a command line); no file is copied, so a host that
        # shares this filesystem never has its own file overwritten
        config.SSHEngineLauncher.to_send = []
    elif launch.launcher == "slurm":
        slurm = config.SlurmArrayEngineSetLauncher
        # the batch script goes with the profile's logs, not into the cwd
        if "batch_file_name" not in slurm and "batch_file_name" not in (
            config.SlurmEngineSetLauncher
        ):
            slurm.batch_file_name = f"{profile_dir}/log/slurm-engines.sbatch"
    elif launch.launcher == "mpi" and launch.extra:
        # after the profile's mpiexec options, so these win where they clash
        mpi = config.MPIEngineSetLauncher
        before = mpi.get("mpi_args", config.MPILauncher.get("mpi_args", []))
        mpi.mpi_args = [*before, *launch.extra]
    config.merge(launch.config)
    _patient_engines(config)
    return launch


#: Seconds an engine waits for the controller's answer to its registration.
#: ipengine's own default, 5 s, is short on a loaded machine: an engine whose
#: answer came later gave up and exited, and the start failed with "only 1 of
#: 2 engines registered".
ENGINE_REGISTRATION_TIMEOUT = 30


def _patient_engines(config: Any) -> None:
    """Engines wait longer for their registration, unless the profile or the
    options pass ipengine arguments of their own."""
    if "engine_args" in config.EngineLauncher or any(
        "engine_args" in section
        for name, section in config.items()
        if name.endswith("EngineSetLauncher") or name.endswith("EngineLauncher")
    ):
        return
    if "timeout" in config.IPEngine:
        return
    config.EngineLauncher.engine_args = [
        f"--IPEngine.timeout={ENGINE_REGISTRATION_TIMEOUT}"
    ]


def _hosts_from_profile(cluster: Any, launch: LaunchPlan) -> LaunchPlan:
    engines = cluster.config.SSHEngineSetLauncher.get("engines") or {}
    if not engines:
        raise InvalidRequest(
            "the ssh launcher needs --hosts, e.g. --hosts alice@node1,node2:4"
            " (or c.SSHEngineSetLauncher.engines in the profile)"
        )
    counts = [
        c.get("n", 1) if isinstance(c, dict) else int(c) for c in engines.values()
    ]
    n = launch.n if launch.n_given else sum(counts)
    first = str(next(iter(engines))).rpartition("@")[2].partition(":")[0]
    ip = launch.controller_ip or address_towards(first)
    cluster.controller_ip = ip
    # the profile's counts hold as --hosts counts do
    hosts = tuple(Host(str(h), count=c) for h, c in zip(engines, counts, strict=True))
    return replace(launch, n=n, controller_ip=ip, location=ip, hosts=hosts)


# -- launchers ---------------------------------------------------------------


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


class _SSHEngineLauncher(SSHEngineLauncher):  # type: ignore[misc]
    """One engine over ssh; stopped on purpose, its log is not fetched.

    Fetching a remote log takes three ssh round trips per engine; the log
    only matters when an engine fails on its own (then it is fetched).
    """

    _stopping = False

    async def stop(self) -> Any:
        self._stopping = True
        return await super().stop()

    def get_output(self, remove: bool = False) -> str:
        if self._stopping:
            return ""
        return str(super().get_output(remove=remove))


class CheckedSSHEngineSetLauncher(SSHEngineSetLauncher):  # type: ignore[misc]
    """ipyparallel's SSH engines, after checking that every host answers.

    ssh runs non-interactively (``BatchMode``): a host that wants a password
    fails at once instead of waiting for one nobody types.
    """

    launcher_class = _SSHEngineLauncher
    extra_ssh_args = List(Unicode(), config=True, help="More ssh options")

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        # ssh takes the first value given for an option: the profile's own
        # ssh_args come first and win over these defaults
        defaults = [
            "-o",
            "BatchMode=yes",
            "-o",
            f"ConnectTimeout={_SSH_CONNECT_TIMEOUT}",
        ]
        extra = list(self.extra_ssh_args)
        # (traits set in ipyparallel's untyped classes: mypy sees no type)
        ssh_args: list[str] = list(self.ssh_args)  # type: ignore[has-type]
        scp_args: list[str] = list(self.scp_args)  # type: ignore[has-type]
        self.ssh_args = [*ssh_args, *extra, *defaults]
        # scp (fetching a failed engine's log) shares ssh's -F, -i and -o;
        # its other letters mean other things (-p, -P)
        self.scp_args = [*scp_args, *_scp_compatible(extra), *defaults]

    def start(self, n: int) -> Any:
        for location in self.engines:
            self._check_host(location)
        return super().start(n)

    def _check_host(self, location: str) -> None:
        command = [*self.ssh_cmd, *self.ssh_args, location, "true"]
        try:
            done = subprocess.run(
                command,
                capture_output=True,
                text=True,
                stdin=subprocess.DEVNULL,
                timeout=_SSH_CONNECT_TIMEOUT + 5,
                check=False,
            )
        except subprocess.TimeoutExpired:
            raise LauncherError(f"ssh {location}: no answer") from None
        except OSError as err:
            raise LauncherError(f"ssh {location}: {err}") from None
        if done.returncode != 0:
            lines = [ln for ln in done.stderr.strip().splitlines() if ln.strip()]
            why = lines[-1] if lines else f"exit code {done.returncode}"
            raise LauncherError(f"ssh {location}: {why}")


def _scp_compatible(ssh_args: Sequence[str]) -> list[str]:
    """The options among ``ssh_args`` that scp takes too, with their values."""
    kept: list[str] = []
    args = iter(ssh_args)
    for arg in args:
        if arg in ("-F", "-i", "-o"):
            kept += [arg, next(args, "")]
        elif arg[:2] in ("-F", "-i", "-o"):
            kept.append(arg)
    return kept


# -- queue state ---------------------------------------------------------------


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
