"""Local engines forked from one process that imported them once.

ipyparallel starts each local engine as a fresh Python that imports
ipyparallel, IPython and ipykernel (0.6-0.8 s of CPU), and each engine then
starts its nanny, another fresh Python importing ipyparallel again, and
waits for it before it registers.  Two engines on two cores cost four such
imports beside the controller's, and 32 engines cost 64.

:class:`ForkingEngineSetLauncher` starts one process instead,
``python -c PROGRAM N -- ARGS`` (``PROGRAM`` runs :func:`main`): it imports the
engine, its nanny and paracell's engine side once, then forks N engines,
each running ipengine's own ``main`` with ARGS.  An engine asks this parent
for its nanny over a socket pair; the parent forks the nanny, which runs
ipyparallel's ``KernelNanny`` as ``python -m ipyparallel.engine.nanny``
would, and writes its address into a pipe the engine passed along.  Only
the parent forks: it has no threads and no ZMQ context, so every child
starts clean.

The parent forwards SIGINT, SIGTERM and SIGHUP to its engines, reaps its
children as they end, and exits once its engines have, after stopping and
reaping their nannies (with the first failure's exit status).  Every child
inherits the cluster's mark in its environment, so paracell's teardown
finds them as it finds any engine.

A profile that configures how local engines start (``engine_cmd``, or any
setting of ``LocalEngineSetLauncher`` / ``LocalEngineLauncher``) keeps
ipyparallel's own launcher; ``PARACELL_FORK_ENGINES=0`` does too, and so
does any system but Linux.
"""

from __future__ import annotations

import contextlib
import os
import pickle
import select
import signal
import socket
import sys
import time
from typing import Any, NoReturn

from ipyparallel.cluster.launcher import EngineLauncher, LocalProcessLauncher

from ._profiles import launchers_set

__all__ = [
    "PROCESS_NAMES",
    "ForkingEngineSetLauncher",
    "can_fork_engines",
    "main",
]

#: Set to ``0`` to start every local engine as its own process.
FORK_ENV = "PARACELL_FORK_ENGINES"

_FORWARDED = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
#: How long the parent waits for its nannies to end once its engines have.
_NANNY_GRACE = 2.0
_MAX_REQUEST = 1 << 16
_PROGRAM = (
    "import sys; from paracell.kernel_backend._forkengines import main;"
    " sys.exit(main())"
)
_ALSO_IMPORTED = ("ipykernel.ipkernel", "ipykernel.debugger", "numpy.random")


def can_fork_engines(config: Any) -> bool:
    """Whether local engines may be forked under ``config`` (the profile's
    settings and paracell's): not where the profile says how they start."""
    if os.environ.get(FORK_ENV, "1").strip() == "0":
        return False
    # Linux only: macOS's system libraries are not safe to use in a forked
    # child (why multiprocessing spawns there), and Windows has no fork
    if not sys.platform.startswith("linux"):
        return False
    for name in ("LocalEngineSetLauncher", "LocalEngineLauncher"):
        own = set(config[name]) if name in config else set()
        if own - {"delay"}:
            return False
    return not launchers_set(
        config, "engine_cmd", "EngineLauncher", "EngineSetLauncher"
    )


class ForkingEngineSetLauncher(LocalProcessLauncher, EngineLauncher):  # type: ignore[misc]
    """``n`` local engines forked from one process (see the module)."""

    def find_args(self) -> list[str]:
        return [
            sys.executable,
            "-c",
            # not -m: the package imports this module before runpy would
            _PROGRAM,
            str(self.n),
            "--",
            *self.cluster_args,
            *self.engine_args,
        ]

    def start(self, n: int) -> Any:
        self.n = n
        return super().start()


# -- the forking process ---------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    """Import the engine once, fork ``N`` engines, wait for them."""
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) < 2 or args[1] != "--" or not args[0].isdigit():
        print(f"usage: python -c {_PROGRAM!r} N -- ARGS", file=sys.stderr)
        return 2
    count, engine_args = int(args[0]), args[2:]
    _set_name("parent")
    _import_once()
    parent = _Parent()
    for _ in range(count):
        parent.fork_engine(engine_args)
    # no interpreter teardown (tens of milliseconds of it, with all that
    # was imported): nothing here needs cleaning up
    _exit(parent.wait())


#: What ``ps`` and ``top`` call the processes (``/proc/PID/comm``): a forked
#: child would otherwise show its parent's command line.
PROCESS_NAMES = {
    "parent": "ipengine-fork",
    "engine": "ipengine",
    "nanny": "ipengine-nanny",
}


def _set_name(role: str) -> None:
    """Name this process for ``ps`` (Linux; elsewhere nothing happens)."""
    with contextlib.suppress(Exception):
        import ctypes

        name = PROCESS_NAMES[role].encode()
        ctypes.CDLL(None).prctl(15, name, 0, 0, 0)  # PR_SET_NAME


def _import_once() -> None:
    """What every engine imports, imported here before any fork."""
    import gc
    import importlib

    # as ipengine does before it imports its kernel: debugpy's warning about
    # frozen modules is for debugging sessions, not engines
    os.environ.setdefault("PYDEVD_DISABLE_FILE_VALIDATION", "1")
    import ipyparallel.engine.app
    import ipyparallel.engine.nanny  # noqa: F401

    from . import _enginecell, _enginemap, _enginenames, _enginetasks  # noqa: F401

    # what an engine's kernel imports as it starts (its debugger pulls in
    # debugpy), and numpy's generators (reseeded in every engine)
    for name in _ALSO_IMPORTED:
        # an optional part missing: the engine copes without it
        with contextlib.suppress(Exception):
            importlib.import_module(name)

    # pages of what was imported stay shared with every engine: a collection
    # would touch (and so copy) them in each
    gc.freeze()


class _Parent:
    """The forking process: its engines, their nannies, signals passed on.

    It reaps every child the moment it ends (a ``SIGCHLD`` wakes its loop),
    and before it exits it stops and reaps the nannies of its engines: a
    child left behind would be reparented to the init process, and until
    that reaps it (some containers' init does so late or never) it stays
    in the process table as a zombie.
    """

    def __init__(self) -> None:
        self.engines: dict[int, socket.socket] = {}  # pid -> its socket
        self.nannies: set[int] = set()
        self.status = 0
        for sig in _FORWARDED:
            signal.signal(sig, self._forward)
        # a child's end wakes the loop: the signal's number is written here
        self._woken, self._wake = os.pipe()
        for fd in (self._woken, self._wake):
            os.set_blocking(fd, False)
        signal.set_wakeup_fd(self._wake)
        signal.signal(signal.SIGCHLD, _woken_up)

    def _forward(self, sig: int, _frame: Any) -> None:
        for pid in list(self.engines):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)

    def fork_engine(self, engine_args: list[str]) -> None:
        ours, theirs = socket.socketpair()
        pid = os.fork()
        if pid == 0:
            ours.close()
            self._in_child()
            _run_engine(engine_args, theirs)  # never returns
        theirs.close()
        self.engines[pid] = ours

    def _in_child(self) -> None:
        for sock in self.engines.values():
            sock.close()
        for sig in _FORWARDED:
            signal.signal(sig, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.default_int_handler)
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        signal.set_wakeup_fd(-1)
        os.close(self._woken)
        os.close(self._wake)

    def wait(self) -> int:
        """Serve nanny requests and reap children until no engine is left;
        then stop the nannies (nothing left to watch) and reap them."""
        while True:
            self._reap()
            if not self.engines:
                break
            socks = [s for s in self.engines.values() if s.fileno() >= 0]
            for ready in self._select(socks, 0.2):
                self._serve(ready)
        for pid in self.nannies:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + _NANNY_GRACE
        while self.nannies and time.monotonic() < deadline:
            self._select([], 0.05)
            self._reap()
        return self.status

    def _select(
        self, socks: list[socket.socket], timeout: float
    ) -> list[socket.socket]:
        """The sockets ready to read, after up to ``timeout`` s or a child's end."""
        watched: list[socket.socket | int] = [*socks, self._woken]
        try:
            readable, _, _ = select.select(watched, [], [], timeout)
        except InterruptedError:
            return []
        if self._woken in readable:
            with contextlib.suppress(BlockingIOError):
                while os.read(self._woken, 64):
                    pass
        return [ready for ready in readable if isinstance(ready, socket.socket)]

    def _serve(self, sock: socket.socket) -> None:
        try:
            data, fds, _, _ = socket.recv_fds(sock, _MAX_REQUEST, 1)
        except OSError:
            data, fds = b"", []
        if not data or not fds:
            for fd in fds:
                os.close(fd)
            sock.close()  # the engine exited or closed its end
            return
        pid = os.fork()
        if pid == 0:
            self._in_child()
            _run_nanny(pickle.loads(data), fds[0])  # never returns
        os.close(fds[0])
        self.nannies.add(pid)

    def _reap(self) -> None:
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                self.engines.clear()
                self.nannies.clear()
                return
            if pid == 0:
                return
            role = "nanny" if pid in self.nannies else "engine"
            self.nannies.discard(pid)
            code = os.waitstatus_to_exitcode(status)
            if code:
                # the launcher's output is where a start that failed is read
                _say(f"{role} process {pid} {_ended(code)}")
            sock = self.engines.pop(pid, None)
            if sock is not None:
                sock.close()
                if code and not self.status:
                    self.status = code if code > 0 else 128 - code


def _woken_up(_sig: int, _frame: Any) -> None:
    """``SIGCHLD``'s handler: only there so that the signal is written into
    the parent's wake-up pipe (see :class:`_Parent`)."""


def _ended(code: int) -> str:
    """How a child ended, from its exit code (negative: a signal)."""
    if code >= 0:
        return f"exited with status {code}"
    with contextlib.suppress(ValueError):
        return f"was killed by {signal.Signals(-code).name}"
    return f"was killed by signal {-code}"


def _say(text: str) -> None:
    with contextlib.suppress(Exception):
        print(f"[{PROCESS_NAMES['parent']}] {text}", file=sys.stderr, flush=True)


def _exit(code: int) -> NoReturn:
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    os._exit(code)


def _run_engine(engine_args: list[str], sock: socket.socket) -> None:
    """In a forked child: run ipengine with ``engine_args``; never returns."""
    code = 0
    try:
        _set_name("engine")
        _report_crashes()
        _reseed()
        from ipyparallel.engine import app

        def start_nanny(**kwargs: Any) -> tuple[str, Any]:
            return _nanny_from_parent(sock, **kwargs)

        # the engine looks its nanny starter up in its module's namespace
        app.start_nanny = start_nanny
        sys.argv = ["ipengine", *engine_args]
        app.main()
    except SystemExit as stop:
        code = stop.code if isinstance(stop.code, int) else (stop.code is not None)
    except BaseException:
        import traceback

        traceback.print_exc()
        code = 1
    _exit(code)


def _report_crashes() -> None:
    """A child that crashes (a fault in a C extension) prints its Python
    stack into the launcher's output, instead of vanishing silently."""
    import faulthandler

    with contextlib.suppress(Exception):
        faulthandler.enable(file=sys.stderr)


def _reseed() -> None:
    """A forked engine must not draw the same random numbers as its
    siblings: ``random`` reseeds itself after a fork, numpy's global
    generator does not."""
    np = sys.modules.get("numpy")
    if np is not None:
        np.random.seed()


def _nanny_from_parent(sock: socket.socket, **kwargs: Any) -> tuple[str, Any]:
    """ipyparallel's ``start_nanny``, served by the forking parent: returns
    the nanny's address and the pipe it watches (kept open while the engine
    lives; its closing tells the nanny the engine is gone)."""
    kwargs["pid"] = os.getpid()
    read_end, write_end = os.pipe()
    try:
        socket.send_fds(sock, [pickle.dumps(kwargs)], [write_end])
    finally:
        os.close(write_end)
    pipe = os.fdopen(read_end, "rb")
    url = pipe.readline().decode("utf8").strip()
    if not url:
        pipe.close()
        raise RuntimeError("nanny failed")
    return url, pipe


def _run_nanny(kwargs: dict[str, Any], write_end: int) -> None:
    """In a forked child: be the engine's nanny; never returns."""
    code = 0
    try:
        os.setsid()  # signals for the engine's group are not the nanny's
        _set_name("nanny")
        _report_crashes()
        from ipyparallel.engine.nanny import KernelNanny

        kwargs["pipe"] = os.fdopen(write_end, "w", buffering=1)
        KernelNanny.main(**kwargs)
    except SystemExit as stop:
        code = stop.code if isinstance(stop.code, int) else 0
    except BaseException:
        import traceback

        traceback.print_exc()
        code = 1
    _exit(code)


if __name__ == "__main__":
    sys.exit(main())
