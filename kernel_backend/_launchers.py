"""How engines get started: a launcher's options checked, planned, configured.

``ClusterSession`` stays launcher-agnostic: it asks :func:`plan` for a
:class:`LaunchPlan` (validated options, the ipyparallel launcher class to use,
where the controller listens) and lets :func:`configure` give the plan to the
``Cluster``.  The launchers themselves are ipyparallel's, with small
subclasses where paracell needs them: SSH hosts and their launcher are in
``_sshhosts``, batch queues (Slurm's job arrays, the engines still queued) in
``_batch``, how many engines memory holds in ``_limits``, local engines
forked from one process in ``_forkengines``, and the controller's command
in ``_quickcontroller``.  MPI needs none: ``mpiexec`` takes ``--extra`` as
its own options.

Settings from a profile's ``ipcluster_config.py`` still apply; the options
given here override them (they go on the command line, or into the direct
configuration, which ipyparallel merges over the profile's).
"""

from __future__ import annotations

import os
import shlex
import socket
import sys
from dataclasses import dataclass, field, replace
from typing import Any

from ipyparallel.cluster.launcher import MPIEngineSetLauncher
from traitlets.config import Config

from ._batch import (
    BATCH_LAUNCHERS,
    SlurmArrayEngineSetLauncher,
    batch_config,
    is_memory,
    is_slurm_time,
)
from ._errors import InvalidRequest
from ._forkengines import ForkingEngineSetLauncher, can_fork_engines
from ._limits import capped_by_memory
from ._profiles import launchers_set
from ._quickcontroller import command as controller_command
from ._sshhosts import (
    CheckedSSHEngineSetLauncher,
    Host,
    address_towards,
    engines_per_host,
    parse_hosts,
)

__all__ = [
    "ENGINE_REGISTRATION_TIMEOUT",
    "LaunchPlan",
    "LauncherOptions",
    "accepted_options",
    "configure",
    "plan",
]

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


# -- options ------------------------------------------------------------------


def accepted_options(launcher: str) -> frozenset[str]:
    """Names of the :class:`LauncherOptions` fields ``launcher`` uses."""
    return _ACCEPTS.get(launcher, frozenset())


def _check_options(launcher: str, options: LauncherOptions) -> None:
    """Refuse options ``launcher`` does not use, then malformed values, in
    this order: with several mistakes, the first found is the one told."""
    accepted = _ACCEPTS.get(launcher, frozenset())
    for name in options.given():
        if name not in accepted:
            users = [k for k, v in _ACCEPTS.items() if name in v]
            where = f"only {', '.join(users)} use it" if users else "none uses it"
            flag = name.replace("_", "-")
            raise InvalidRequest(f"the {launcher} launcher ignores --{flag} ({where})")
    if options.time is not None and not is_slurm_time(options.time):
        raise InvalidRequest(
            f"--time {options.time!r} is not a Slurm time limit; write minutes,"
            " hours:minutes:seconds or days-hours[:minutes], e.g. 1:00:00"
        )
    memory = (("--mem", options.mem), ("--mem-per-engine", options.mem_per_engine))
    for flag, value in memory:
        if value is not None and not is_memory(value):
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


# -- the plan -----------------------------------------------------------------


def plan(
    launcher: str, n: int | None, options: LauncherOptions, *, force: bool = False
) -> LaunchPlan:
    """Check ``options`` for ``launcher`` and work out how to start ``n`` engines.

    Raises ``InvalidRequest`` (one line, for the user) on any mistake, before
    anything is started.  ``force``: ssh engines past the hosts' counts go
    round-robin instead of being refused.
    """
    _check_options(launcher, options)
    count = (os.cpu_count() or 1) if n is None else n
    if launcher == "local":
        return _local_plan(count, options, explicit=n is not None)
    extra = tuple(shlex.split(options.extra)) if options.extra else ()
    if launcher == "ssh":
        return _ssh_plan(n, count, options, extra, force=force)
    return _queue_plan(launcher, count, options, extra, force=force)


def _local_plan(count: int, options: LauncherOptions, *, explicit: bool) -> LaunchPlan:
    """Engines on this machine; with ``--mem-per-engine``, as many as fit."""
    note = None
    if options.mem_per_engine is not None:
        count, note = capped_by_memory(count, options.mem_per_engine, explicit)
    return LaunchPlan("local", count, "local", "127.0.0.1", "127.0.0.1", note=note)


def _ssh_plan(
    n: int | None,
    count: int,
    options: LauncherOptions,
    extra: tuple[str, ...],
    *,
    force: bool,
) -> LaunchPlan:
    """Engines over ssh on ``--hosts``, shared by their counts; the controller
    listens where the first host reaches this machine, unless ``--ip`` says."""
    config = Config()
    if extra:
        config.CheckedSSHEngineSetLauncher.extra_ssh_args = list(extra)
    ip = options.ip
    if not options.hosts:
        # the profile's c.SSHEngineSetLauncher.engines, or a mistake:
        # configure() tells once the profile is read
        return LaunchPlan(
            "ssh",
            count,
            CheckedSSHEngineSetLauncher,
            ip or "",
            ip or "",
            config,
            extra=extra,
            n_given=n is not None,
            force=force,
        )
    hosts = parse_hosts(options.hosts)
    per_host, count = engines_per_host(hosts, n, force=force)
    config.SSHEngineSetLauncher.engines = per_host
    ip = ip or address_towards(hosts[0].name)
    engine_class = CheckedSSHEngineSetLauncher
    return LaunchPlan(
        "ssh", count, engine_class, ip, _where(ip), config, hosts, extra, force=force
    )


def _queue_plan(
    launcher: str,
    count: int,
    options: LauncherOptions,
    extra: tuple[str, ...],
    *,
    force: bool,
) -> LaunchPlan:
    """Engines started by ``mpiexec`` or a batch queue (Slurm, PBS, ...)."""
    engine_class: Any = launcher
    if launcher == "mpi":
        engine_class, config = MPIEngineSetLauncher, Config()
    else:
        if launcher == "slurm":
            engine_class = SlurmArrayEngineSetLauncher
        config = batch_config(launcher, options, extra)
    ip = options.ip
    if ip is None:
        # MPI starts engines on this machine unless told otherwise (--ip with
        # a hostfile in --extra); batch jobs may run anywhere the queue says.
        ip = "127.0.0.1" if launcher == "mpi" else "*"
    return LaunchPlan(
        launcher, count, engine_class, ip, _where(ip), config, (), extra, force=force
    )


def _where(ip: str) -> str:
    """How the start report names the address the controller listens on."""
    if ip in ("*", "0.0.0.0"):
        return f"all interfaces of {socket.gethostname()}"
    return ip


# -- the configuration --------------------------------------------------------


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
    if launch.local and can_fork_engines(config):
        cluster.engine_launcher_class = ForkingEngineSetLauncher
    controller = getattr(cluster.controller_launcher_class, "__name__", "")
    if controller == "LocalControllerLauncher":
        cmd = controller_command(config)
        if cmd is not None:
            config.LocalControllerLauncher.controller_cmd = cmd
    return launch


#: Seconds an engine waits for the controller's answer to its registration.
#: ipengine's own default, 5 s, is short on a loaded machine: an engine whose
#: answer came later gave up and exited, and the start failed with "only 1 of
#: 2 engines registered".
ENGINE_REGISTRATION_TIMEOUT = 30


def _patient_engines(config: Any) -> None:
    """Engines wait longer for their registration, unless the profile or the
    options pass ipengine arguments of their own."""
    if launchers_set(config, "engine_args", "EngineLauncher", "EngineSetLauncher"):
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
