"""Runs on the engines: the statements of a task graph (``%%parallel --tasks``).

A job's statements share one namespace per engine; the values they make stay
there until another engine or the notebook asks for them.  Engines on one
host hand values to each other directly (:func:`_serve_values`), not through
the notebook.
"""

from __future__ import annotations

import contextlib
import io
import linecache
import socket
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from types import FunctionType
from typing import Any

from . import _pickling
from ._engine import (
    ItemFailure,
    TaskSpec,
    item_failure,
    pack_result,
    pickle_each,
    reporting,
    shield_reply,
)
from ._engineawait import compile_code, run_code
from ._enginenames import build_namespace
from ._seeding import map_root, seed_sources

__all__ = [
    "StatementOutcome",
    "forget_task_job",
    "run_statement",
    "task_results",
    "task_values",
]

#: job key -> the job's namespace on this engine (its statements share it)
_TASK_NS: dict[str, dict[str, Any]] = {}
#: job key -> the cell's parsed statements
_TASK_CODE: dict[str, list[Any]] = {}
#: job key -> (seed, entropy) its statements' random streams come from
_TASK_SEED: dict[str, tuple[int | None, int]] = {}
#: job key -> statements that failed, stopped or were skipped here
_TASK_BAD: dict[str, set[int]] = {}
#: authentication key -> address this engine serves task values on
_SERVERS: dict[bytes, tuple[str, int]] = {}
_SERVER_LOCK = threading.Lock()

#: Where to ask for names: (address, job key there, names).
_Fetch = Sequence[tuple[tuple[str, int], str, Sequence[str]]]


@dataclass
class StatementOutcome:
    """What one statement of a task graph sends back (never its names'
    values: those stay here until another engine or the notebook asks)."""

    index: int
    started: float
    seconds: float
    stdout: str
    stderr: str
    failure: ItemFailure | None
    interrupted: bool
    sizes: dict[str, int]  # bytes of each name the statement wrote
    value: bytes | None  # the cell's last expression, pickled
    bundle: dict[str, Any] | None
    address: tuple[str, int]  # where this engine serves values
    host: str
    fetched: int = 0  # bytes received from other engines
    fetch_seconds: float = 0.0
    #: names whose values cannot travel (a generator, an open file, a lock)
    pinned: tuple[str, ...] = ()
    #: not run: a statement it was sent to follow failed here
    skipped: bool = False


def run_statement(
    spec: TaskSpec | None,
    job_key: str,
    source: str | None,
    filename: str,
    index: int,
    fetch: _Fetch,
    given: bytes | None,
    writes: Sequence[str],
    authkey: bytes,
    last_value: bool = False,
    after: Sequence[int] = (),
) -> StatementOutcome:
    """Run statement ``index`` of a cell in the job's namespace here.

    Names it needs that other engines made come first: ``fetch`` lists
    (address, job key there, names) to ask those engines for, directly;
    ``given`` holds names relayed by the notebook.  With ``spec.seed`` the
    statement draws from stream ``index`` of the seed, as the sequential run
    does.  ``spec`` and ``source`` come with an engine's first statement
    of the job only (None after that: they are kept here).  ``after``: the
    statements sent here before it that it depends on; if one of them did
    not finish, it does not run.
    """
    _pickling.install()
    address = _serve_values(authkey)
    ns, body, (seed, entropy) = _task_state(spec, job_key, source, filename)
    bad = _TASK_BAD.setdefault(job_key, set())
    outcome = _outcome(index, address)
    if bad.intersection(after):
        outcome.skipped = True
        bad.add(index)
        return outcome
    with _captured(outcome):
        outcome.started, tic = time.time(), time.perf_counter()
        try:
            with reporting():
                outcome.fetched = _receive_values(ns, fetch, given, authkey)
                outcome.fetch_seconds = time.perf_counter() - tic
                seed_sources(map_root(seed, entropy), index)
                _execute(outcome, body[index], ns, filename, last_value)
        except KeyboardInterrupt:
            outcome.interrupted = True
        except BaseException as error:
            outcome.failure = item_failure(index, error)
    shield_reply()
    return _finish(outcome, ns, writes, tic, bad)


def _outcome(index: int, address: tuple[str, int]) -> StatementOutcome:
    """A statement's outcome before it runs (nothing printed, made or failed)."""
    return StatementOutcome(
        index=index,
        started=time.time(),
        seconds=0.0,
        stdout="",
        stderr="",
        failure=None,
        interrupted=False,
        sizes={},
        value=None,
        bundle=None,
        address=address,
        host=socket.gethostname(),
    )


@contextlib.contextmanager
def _captured(outcome: StatementOutcome) -> Iterator[None]:
    """What the statement prints goes into its outcome."""
    out, err = io.StringIO(), io.StringIO()
    saved = sys.stdout, sys.stderr
    sys.stdout, sys.stderr = out, err
    try:
        yield
    finally:
        sys.stdout, sys.stderr = saved
        outcome.stdout, outcome.stderr = out.getvalue(), err.getvalue()


def _finish(
    outcome: StatementOutcome,
    ns: dict[str, Any],
    writes: Sequence[str],
    tic: float,
    bad: set[int],
) -> StatementOutcome:
    """The outcome with its time and what the statement wrote; a statement
    that did not finish is one those after it here do not run after."""
    outcome.seconds = time.perf_counter() - tic
    if outcome.interrupted or outcome.failure is not None:
        bad.add(outcome.index)
    outcome.sizes = {n: _size_of(ns[n]) for n in writes if n in ns}
    outcome.pinned = tuple(n for n in writes if n in ns and _cannot_travel(ns[n]))
    return outcome


def _task_state(
    spec: TaskSpec | None, job_key: str, source: str | None, filename: str
) -> tuple[dict[str, Any], list[Any], tuple[int | None, int]]:
    """The job's namespace, parsed statements and seed here (made by the
    engine's first statement of the job)."""
    import ast

    ns = _TASK_NS.get(job_key)
    if ns is None:
        assert spec is not None and source is not None, "first statement here"
        ns = _TASK_NS[job_key] = build_namespace(spec)
    if spec is not None:
        _TASK_SEED[job_key] = (spec.seed, spec.entropy)
    body = _TASK_CODE.get(job_key)
    if body is None:
        assert source is not None, "first statement here"
        body = _TASK_CODE[job_key] = ast.parse(source, filename).body
        lines = source.splitlines(keepends=True)
        linecache.cache[filename] = (len(source), None, lines, filename)
    return ns, body, _TASK_SEED[job_key]


def _execute(
    outcome: StatementOutcome,
    statement: Any,
    ns: dict[str, Any],
    filename: str,
    last_value: bool,
) -> None:
    """Run one statement; the cell's last expression gives the outcome its
    value (pickled) and rich display."""
    import ast

    if not (last_value and isinstance(statement, ast.Expr)):
        run_code(compile_code(ast.Module([statement], []), filename, "exec"), ns)
        return
    expression = ast.Expression(statement.value)
    result = run_code(compile_code(expression, filename, "eval"), ns)
    outcome.value, outcome.bundle = pack_result(result)


def task_values(job_key: str, names: Sequence[str]) -> bytes:
    """The job's ``names`` here, pickled together (shared objects stay
    shared), for another engine: the cell's functions travel without their
    globals and are rebound where they land."""
    return _pack_values(_TASK_NS.get(job_key, {}), names, True)[0]


def task_results(
    job_key: str, names: Sequence[str]
) -> tuple[dict[str, bytes], dict[str, str]]:
    """The job's ``names`` here for the notebook, each pickled on its own
    (as ``%%parallel`` sends them); and why some could not be."""
    return pickle_each(_TASK_NS.get(job_key, {}), names)


def forget_task_job(job_key: str) -> None:
    """Drop a finished job's namespace here."""
    _TASK_NS.pop(job_key, None)
    _TASK_CODE.pop(job_key, None)
    _TASK_SEED.pop(job_key, None)
    _TASK_BAD.pop(job_key, None)


def _cannot_travel(value: Any) -> bool:
    """Whether ``value`` is of a kind no pickle can carry to another engine."""
    import _thread
    import types

    kinds = (
        types.GeneratorType,
        types.AsyncGeneratorType,
        types.CoroutineType,
        io.IOBase,
        socket.socket,
        _thread.LockType,
        _thread.RLock,
        threading.Thread,
    )
    return isinstance(value, kinds)


def _size_of(value: Any) -> int:
    nbytes = getattr(value, "nbytes", None)
    if isinstance(nbytes, int):
        return nbytes
    with contextlib.suppress(Exception):
        return sys.getsizeof(value)
    return 0


# -- values between engines --------------------------------------------------


def _pack_values(
    ns: dict[str, Any], names: Sequence[str], strip: bool, out_of_band: bool = False
) -> tuple[bytes, list[Any]]:
    from ._plan import strip_globals

    values = {}
    for name in [n for n in names if n in ns]:
        value = ns[name]
        if strip and isinstance(value, FunctionType) and value.__globals__ is ns:
            value = strip_globals(value)
        values[name] = value
    buffers: list[Any] = []
    with io.BytesIO() as file:
        pickler = _pickling._Pickler(
            file,
            protocol=5,
            buffer_callback=buffers.append if out_of_band else None,
        )
        pickler.dump(values)
        return file.getvalue(), [b.raw() for b in buffers]


def _install_values(ns: dict[str, Any], values: dict[str, Any]) -> None:
    from ._plan import rebind_globals

    for name, value in values.items():
        stripped = isinstance(value, FunctionType) and set(value.__globals__) <= {
            "__builtins__"
        }
        ns[name] = rebind_globals(value, ns) if stripped else value


def _receive_values(
    ns: dict[str, Any],
    fetch: Sequence[tuple[tuple[str, int], str, Sequence[str]]],
    given: bytes | None,
    authkey: bytes,
) -> int:
    """Put names made elsewhere into ``ns``; returns the bytes received."""
    import pickle
    from multiprocessing.connection import Client

    received = 0
    if given is not None:
        _install_values(ns, pickle.loads(given))
        received += len(given)
    for address, key, names in fetch:
        with Client(address, authkey=authkey) as conn:
            conn.send_bytes(pickle.dumps((key, list(names))))
            header, sizes = pickle.loads(conn.recv_bytes())
            buffers = []
            for size in sizes:
                buffer = bytearray(size)  # writable: arrays arrive writable
                conn.recv_bytes_into(buffer)
                buffers.append(buffer)
        _install_values(ns, pickle.loads(header, buffers=buffers))
        received += len(header) + sum(sizes)
    return received


def _serve_values(authkey: bytes) -> tuple[str, int]:
    """Start (once) the thread that hands this engine's task values to
    other engines on this host, without going through the notebook."""
    with _SERVER_LOCK:
        known = _SERVERS.get(authkey)
        if known is not None:
            return known
        from multiprocessing.connection import Listener

        listener = Listener(("127.0.0.1", 0), authkey=authkey)
        host, port = listener.address
        address = _SERVERS[authkey] = (str(host), int(port))
    threading.Thread(
        target=_accept, args=(listener,), name="paracell-values", daemon=True
    ).start()
    return address


def _accept(listener: Any) -> None:
    while True:
        try:
            conn = listener.accept()
        except Exception:  # a peer that failed authentication, say
            continue
        threading.Thread(target=_answer, args=(conn,), daemon=True).start()


def _answer(conn: Any) -> None:
    import pickle

    with contextlib.suppress(Exception), conn:
        job_key, names = pickle.loads(conn.recv_bytes())
        header, buffers = _pack_values(_TASK_NS[job_key], names, True, True)
        conn.send_bytes(pickle.dumps((header, [b.nbytes for b in buffers])))
        for buffer in buffers:
            conn.send_bytes(buffer)
