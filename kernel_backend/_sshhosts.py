"""SSH engines: the ``--hosts`` list, where engines go, and the launcher.

A ``--hosts`` entry is ``[user@]name[:count]``.  :func:`engines_per_host`
shares a start's engines among the hosts, :func:`place_engines` places more
on a running cluster (a host's ``:count`` is the most it takes), and
:func:`address_towards` finds the address the hosts reach this machine at.
:class:`CheckedSSHEngineSetLauncher` is ipyparallel's SSH engine set after
checking that every host answers, so a host that refuses the connection is a
one-line error instead of a wait for the start timeout.
"""

from __future__ import annotations

import re
import socket
import subprocess
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from typing import Any

from ipyparallel.cluster.launcher import (
    LauncherError,
    SSHEngineLauncher,
    SSHEngineSetLauncher,
)
from traitlets import List, Unicode

from ._errors import InvalidRequest

__all__ = [
    "CheckedSSHEngineSetLauncher",
    "Host",
    "address_towards",
    "engines_per_host",
    "parse_hosts",
    "place_engines",
    "ssh_engines_running",
]

_HOST_NAME = re.compile(r"^[A-Za-z0-9_.\-\[\]:]+$")
# ssh gives up on a host that does not answer after this many seconds
_SSH_CONNECT_TIMEOUT = 10


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


# -- the launcher -------------------------------------------------------------


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
