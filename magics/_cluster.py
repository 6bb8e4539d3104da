"""``%cluster``: start, connect, status, scale, restart, stop."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from IPython.core.error import UsageError
from IPython.core.magic import Magics, line_magic, magics_class
from IPython.core.magic_arguments import argument, magic_arguments

from .. import _api
from ..kernel_backend import LAUNCHERS, default_session
from ..widgets import ClusterStatusView
from ._common import (
    non_negative_int,
    parse_options,
    positive_float,
    positive_int,
    user_errors,
)

__all__ = ["ClusterMagics"]

_FORCE = argument(
    "--force",
    action="store_true",
    help="start more engines than the machine or launcher is thought to place",
)


@magics_class
class ClusterMagics(Magics):
    """The ``%cluster`` magic: one cluster per kernel, started or connected."""

    @line_magic
    def cluster(self, line: str) -> Any:
        # The docstring is assembled from the subcommands' own help below.
        command, _, rest = line.strip().partition(" ")
        handler = self._subcommands().get(command or "status")
        if handler is None:
            raise UsageError(
                f"unknown %cluster subcommand {command!r};"
                f" use one of: {', '.join(self._subcommands())}"
            )
        with user_errors():
            return handler(rest)

    def _subcommands(self) -> dict[str, Callable[[str], Any]]:
        return {
            "start": self._start,
            "connect": self._connect,
            "status": self._status,
            "scale": self._scale,
            "restart": self._restart,
            "stop": self._stop,
            "panel": self._panel,
        }

    @magic_arguments(name="cluster start")
    @argument(
        "-n",
        type=positive_int,
        default=None,
        help="number of engines (default: one per CPU)",
    )
    @argument(
        "--min",
        dest="min_engines",
        type=non_negative_int,
        metavar="K",
        default=None,
        help="engines on demand: keep at least K running (default 0); instead of -n",
    )
    @argument(
        "--max",
        dest="max_engines",
        type=positive_int,
        metavar="M",
        default=None,
        help="engines on demand: start engines as work waits for one (a map,"
        " a background job), up to M (default: one per CPU); idle ones stop"
        " after --idle-timeout (default 60 s), down to --min",
    )
    @argument(
        "--launcher",
        default="local",
        metavar="L",
        help=f"how engines are started: {', '.join(LAUNCHERS)} (default: local);"
        " the profile's ipcluster_config.py applies, these options override it",
    )
    @argument(
        "--hosts",
        metavar="H",
        default=None,
        help="ssh: where engines run, [user@]host[:count],... e.g. alice@node1,node2:4"
        " (hosts without a count share the rest of -n)",
    )
    @argument("--queue", metavar="Q", default=None, help="batch queue (partition)")
    @argument(
        "--time", metavar="T", default=None, help="slurm: time limit, e.g. 1:00:00"
    )
    @argument("--account", metavar="A", default=None, help="slurm: account to charge")
    @argument(
        "--mem", metavar="M", default=None, help="slurm: memory per engine, e.g. 4G"
    )
    @argument(
        "--extra",
        metavar="OPTS",
        default=None,
        help="more options for sbatch, mpiexec or ssh, quoted:"
        ' --extra "--qos=high -N 1"',
    )
    @argument(
        "--mem-per-engine",
        metavar="M",
        default=None,
        help="local: start no more engines than available memory holds, M each"
        " (e.g. 500MB); the start line says when it capped -n",
    )
    @argument(
        "--ip",
        metavar="ADDR",
        default=None,
        help="remote launchers: the address engines reach the controller at"
        " (default: the one routing to the first ssh host; batch: all interfaces)",
    )
    @argument("--profile", metavar="P", default=None, help="IPython profile to use")
    @argument(
        "--idle-timeout",
        type=positive_float,
        metavar="S",
        default=None,
        help="stop engines idle for S seconds; the next call starts them again",
    )
    @argument(
        "--timeout",
        type=positive_float,
        metavar="S",
        default=60.0,
        help="give up if the engines are not up after S seconds (default: 60);"
        " batch launchers return at the first engine, or after S seconds with"
        " the others still queued",
    )
    @argument(
        "--threads",
        type=positive_int,
        metavar="K",
        default=None,
        help="BLAS/OpenMP threads per engine (default for local engines:"
        " cores // engines, so numpy work does not oversubscribe the cores)",
    )
    @_FORCE
    def _start(self, rest: str) -> None:
        """Start a cluster; prints how many engines, where, and how long it took."""
        args = parse_options(self._start, rest)
        report = _api.start(
            args.n,
            launcher=args.launcher,
            profile=args.profile,
            idle_timeout=args.idle_timeout,
            timeout=args.timeout,
            force=args.force,
            threads=args.threads,
            min=args.min_engines,
            max=args.max_engines,
            hosts=args.hosts,
            queue=args.queue,
            time=args.time,
            account=args.account,
            mem=args.mem,
            extra=_unquoted(args.extra),
            ip=args.ip,
            mem_per_engine=args.mem_per_engine,
        )
        print(report)

    @magic_arguments(name="cluster connect")
    @argument("--profile", metavar="P", default=None, help="IPython profile to look in")
    @argument("--cluster-id", metavar="ID", default=None, help="the cluster's id")
    @argument(
        "--file", metavar="PATH", default=None, help="a controller's client JSON file"
    )
    def _connect(self, rest: str) -> None:
        """Use a running cluster (started by ipcluster, JupyterLab, a batch job)."""
        args = parse_options(self._connect, rest)
        print(
            _api.connect(
                profile=args.profile, cluster_id=args.cluster_id, file=args.file
            )
        )

    @magic_arguments(name="cluster status")
    def _status(self, rest: str) -> ClusterStatusView:
        """The cluster's state and a row per engine: id, host, pid, state, tasks."""
        parse_options(self._status, rest)
        return ClusterStatusView(_api.status())

    @magic_arguments(name="cluster scale")
    @argument("N", type=non_negative_int, help="the number of engines wanted")
    @_FORCE
    def _scale(self, rest: str) -> None:
        """Add or remove engines to reach N (idle ones are removed first).

        With no cluster active, starts a local one with N engines.
        """
        args = parse_options(self._scale, rest)
        session = default_session()
        if not session.active:
            if args.N == 0:
                raise UsageError("no cluster is active, and scaling to 0 starts none")
            print(session.start(args.N, force=args.force))
            return
        tic = time.perf_counter()
        before = session.status().live_engines
        _api.scale(args.N, force=args.force)
        print(
            f"paracell: scaled from {before} to {args.N} engines"
            f" in {time.perf_counter() - tic:.1f} s"
        )

    @magic_arguments(name="cluster restart")
    def _restart(self, rest: str) -> None:
        """Replace every engine with a fresh one (clean namespaces), same count."""
        parse_options(self._restart, rest)
        report = _api.restart()
        print(f"paracell: restarted {report.engines} engines in {report.seconds:.1f} s")

    @magic_arguments(name="cluster stop")
    def _stop(self, rest: str) -> None:
        """Stop the cluster paracell started (every process), or disconnect."""
        parse_options(self._stop, rest)
        print(_api.stop())

    @magic_arguments(name="cluster panel")
    def _panel(self, rest: str) -> Any:
        """A live control panel: state, Start / Stop / Scale, engines and their jobs.

        In a terminal (no widgets), the cluster's status instead.
        """
        parse_options(self._panel, rest)
        return _api.panel()


def _unquoted(text: str | None) -> str | None:
    """``"-p 2222"`` -> ``-p 2222``: magic arguments keep their quotes."""
    if text and len(text) >= 2 and text[0] == text[-1] and text[0] in "'\"":
        return text[1:-1]
    return text


def _cluster_doc() -> str:
    parts = [
        "Start, inspect, resize and stop the kernel's cluster.",
        "",
        "One cluster per kernel. `%cluster` alone is `%cluster status`.",
    ]
    magics = ClusterMagics
    for name in ("start", "connect", "status", "scale", "restart", "stop", "panel"):
        method = getattr(magics, f"_{name}")
        parts += ["", getattr(method, "__doc__", "") or ""]
    return "\n".join(parts)


ClusterMagics.cluster.__doc__ = _cluster_doc()
