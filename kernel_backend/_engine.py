"""Code that runs on the engines: the task wrapper and the shipped-name store.

Engines import this module by name (functions sent with ``apply`` travel by
reference), so it stays cheap to import and free of display code.  The same
wrapper also runs in the notebook's own process for ``--local``, so local and
remote runs seed, time and report errors identically.
"""

from __future__ import annotations

import contextlib
import io
import itertools
import linecache
import os
import signal
import socket
import sys
import threading
import time
import traceback
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from types import FunctionType
from typing import Any

from . import _pickling
from ._plan import rebind_globals
from ._seeding import item_seed_sequence, seed_item

__all__ = [
    "ChunkOutcome",
    "ItemFailure",
    "StatementOutcome",
    "TaskSpec",
    "engine_identity",
    "forget_task_job",
    "install_names",
    "progress",
    "run_chunk",
    "run_statement",
    "task_results",
    "task_values",
]

#: Filename under which a ``%pmap`` element is compiled (shows in tracebacks).
ELEMENT_FILENAME = "<pmap>"
#: Filename of the wrapper that calls a function given to ``pmap``; being
#: paracell's, not the user's, its frame is left out of tracebacks.
WRAPPER_FILENAME = "<paracell>"
_OWN_FILES = {os.path.abspath(__file__), WRAPPER_FILENAME}


def engine_identity() -> tuple[str, int]:
    """Return ``(hostname, pid)`` of the engine this runs on.

    The first task every engine gets: it also sets up how results travel,
    and moves what the engine holds after start-up (ipyparallel, numpy,
    paracell: some 70,000 objects) out of the cycle collector's sight.  A
    full collection then takes well under a millisecond instead of 0.1-0.15 s;
    engines collect when shipped data is dropped (:func:`install_names`).
    """
    global _frozen
    _pickling.install()
    if not _frozen:
        import gc

        gc.collect()
        gc.freeze()
        _frozen = True
    return socket.gethostname(), os.getpid()


_frozen = False


# -- names shipped from the notebook ---------------------------------------

# digest -> object; pushed once per engine per version of an object.
_STORE: dict[str, Any] = {}
# digests of notebook functions, shipped without their globals
_REBIND: set[str] = set()
# namespace key -> namespace built for one map (reused by all its chunks)
_NAMESPACES: OrderedDict[str, dict[str, Any]] = OrderedDict()
_NAMESPACES_KEPT = 4


def install_names(
    entries: dict[str, tuple[str, Any]],
    evict: Sequence[str] = (),
    sources: dict[str, list[str]] | None = None,
    *arrays: Any,
    paths: Sequence[str] = (),
) -> list[str]:
    """Store shipped objects by digest; forget superseded versions.

    ``entries`` maps digest -> (kind, payload).  Kind ``"function"`` is a
    notebook function pickled with its globals stripped (rebound to each
    task's namespace), ``"pickle"`` any other cloudpickle payload, and
    ``"array"`` the index of a numpy array among ``arrays`` — top-level
    arguments, so they travel as zero-copy buffers — and ``"shared"`` a
    :class:`._sharedmem.SharedSegment`: an array the kernel wrote into a
    file in ``/dev/shm``, mapped here read-only (no copy; engines cannot
    change what the others read).  ``sources`` are notebook cells' lines, so
    tracebacks through notebook functions show their code.  ``paths`` is the
    notebook's ``sys.path``: folders of it that exist here and are not on
    this engine's path are appended, so what the notebook imports from them
    (and pickles by reference) imports here too.
    Returns the digests of segments this engine could not map (it does not
    share the kernel's ``/dev/shm``): the kernel sends those arrays instead.
    """
    import cloudpickle

    _pickling.install()
    for digest in evict:
        _STORE.pop(digest, None)
        _REBIND.discard(digest)
    if evict:
        # a map's namespace and the notebook functions rebound to it form a
        # cycle; only the collector frees what an evicted object held
        _NAMESPACES.clear()
        import gc

        gc.collect()
    unmapped = []
    for digest, (kind, payload) in entries.items():
        if kind == "array":
            _STORE[digest] = arrays[payload]
            continue
        if kind == "shared":
            try:
                _STORE[digest] = _map_segment(payload)
            except OSError:
                unmapped.append(digest)
            continue
        _STORE[digest] = cloudpickle.loads(payload)
        if kind == "function":
            _REBIND.add(digest)
    for path in paths:
        if path not in sys.path and os.path.isdir(path):
            sys.path.append(path)
    for filename, lines in (sources or {}).items():
        linecache.cache[filename] = (sum(map(len, lines)), None, lines, filename)
    _NAMESPACES.clear()
    return unmapped


def _map_segment(segment: Any) -> Any:
    """The array in a shared-memory segment, mapped read-only.

    The mapping keeps the memory after the kernel removes the file; it is
    unmapped when the array is dropped (evicted from the store).
    """
    import mmap

    import numpy as np

    fd = os.open(segment.path, os.O_RDONLY)
    try:
        if os.fstat(fd).st_size != segment.nbytes:
            raise OSError(f"segment {segment.path} is not {segment.nbytes} bytes")
        memory = mmap.mmap(fd, segment.nbytes, mmap.MAP_SHARED, mmap.PROT_READ)
    finally:
        os.close(fd)
    # a read-only buffer: numpy refuses writes, and refuses to make it writeable
    return np.frombuffer(memory, dtype=segment.dtype).reshape(segment.shape)


@dataclass(frozen=True)
class TaskSpec:
    """What to run for each item, and with which names.

    ``element`` is an expression evaluated per item with the item bound to
    ``arguments`` (a ``%pmap`` element and its loop targets, or a call of the
    function given to ``pmap``).
    """

    key: str
    names: dict[str, str] = field(default_factory=dict)  # name -> digest
    modules: dict[str, str] = field(default_factory=dict)  # name -> module
    from_imports: dict[str, tuple[str, str]] = field(default_factory=dict)
    engine_side: tuple[str, ...] = ()
    element: str = ""
    arguments: tuple[str, ...] = ()
    seed: int | None = None
    entropy: int = 0
    timeout: float | None = None
    stop_on_error: bool = True
    filename: str = ELEMENT_FILENAME


class UndefinedNames(NameError):
    """Names the code needs that exist neither in the notebook nor here."""


def _engine_namespace() -> dict[str, Any]:
    """A copy of the engine's persistent namespace (where ``%px`` setup lands)."""
    return dict(_engine_user_ns())


def build_namespace(
    spec: TaskSpec, base: dict[str, Any] | None = None
) -> dict[str, Any]:
    """A namespace over the engine's own (or ``base``) with the spec's names.

    Notebook functions were shipped with their globals stripped; here they are
    rebound to this namespace, so they read every other shipped name from it.
    """
    ns = _engine_namespace() if base is None else base
    missing = [n for n in spec.engine_side if n not in ns and not _is_builtin(n)]
    if missing:
        raise UndefinedNames(
            f"name {missing[0]!r} is not defined in the notebook nor on the engines"
        )
    import importlib

    for name, module in spec.modules.items():
        ns[name] = importlib.import_module(module)
    for name, (module, attr) in spec.from_imports.items():
        obj: Any = importlib.import_module(module)
        for part in attr.split("."):
            obj = getattr(obj, part)
        ns[name] = obj
    for name, digest in spec.names.items():
        value = _STORE[digest]
        ns[name] = rebind_globals(value, ns) if digest in _REBIND else value
    return ns


def build_callable(
    spec: TaskSpec, base: dict[str, Any] | None = None
) -> Callable[..., Any]:
    """The function to call per item, in a namespace built once per map."""
    ns = _NAMESPACES.get(spec.key)
    if ns is None:
        ns = build_namespace(spec, base)
        source = f"lambda {', '.join(spec.arguments)}: ({spec.element})"
        lines = [source + "\n"]
        linecache.cache[spec.filename] = (len(source), None, lines, spec.filename)
        element = eval(compile(source, spec.filename, "eval"), ns)
        direct = _direct_call(spec, ns)
        ns["__paracell_element__"] = element if direct is None else direct
        _NAMESPACES[spec.key] = ns
        while len(_NAMESPACES) > _NAMESPACES_KEPT:
            _NAMESPACES.popitem(last=False)
    return ns["__paracell_element__"]  # type: ignore[no-any-return]


def _direct_call(spec: TaskSpec, ns: dict[str, Any]) -> Callable[..., Any] | None:
    """The function itself when the element only calls it with the item.

    ``lambda a: (f(a))`` is ``f`` for one positional argument.  Only for
    paracell's own wrapper (``pmap(func, ...)``): its frame is never shown in
    tracebacks, so calling ``f`` directly saves a call per item and changes
    nothing else.  A ``%pmap`` element keeps its frame (``<pmap>``).
    """
    if spec.filename != WRAPPER_FILENAME or len(spec.arguments) != 1:
        return None
    name, _, rest = spec.element.partition("(")
    if rest != f"{spec.arguments[0]})" or not name.isidentifier():
        return None
    func = ns.get(name)
    return func if callable(func) else None


def missing_names(names: Sequence[str]) -> list[str]:
    """Which of ``names`` this engine's namespace lacks (builtins count as there)."""
    ns = _engine_namespace()
    return [n for n in names if n not in ns and not _is_builtin(n)]


def unimportable(modules: Sequence[str]) -> list[str]:
    """Which of ``modules`` this engine cannot import."""
    import importlib

    failed = []
    for module in modules:
        try:
            importlib.import_module(module)
        except Exception:
            failed.append(module)
    return failed


def _is_builtin(name: str) -> bool:
    import builtins

    return hasattr(builtins, name)


# -- running items ---------------------------------------------------------


@dataclass
class ItemFailure:
    """An item's exception, as it travels back to the notebook."""

    index: int
    type_name: str
    message: str
    traceback: str
    exception: BaseException | None  # the original, when it could be pickled
    timed_out: bool = False


@dataclass
class ChunkOutcome:
    """What a chunk returns: values by position, failures, and timings."""

    first: int
    values: list[Any]
    failures: list[ItemFailure]
    started: float
    seconds: float
    host: str
    pid: int
    interrupted: bool = False
    # ran out of its time budget: the items after ``values`` were not run
    stopped: bool = False
    #: warnings the items raised: (item index, category, message, file, line)
    warnings: list[tuple[int, str, str, str, int]] = field(default_factory=list)


class ItemTimeout(Exception):
    """An item ran past ``--timeout``."""


def run_chunk(
    spec: TaskSpec,
    first: int,
    items: Sequence[Any],
    star: bool = True,
    base: dict[str, Any] | None = None,
    budget: float | None = None,
    check_results: bool = False,
) -> ChunkOutcome:
    """Run ``items`` (indices ``first``, ``first + 1``, ...) with the spec's code.

    ``items`` is any sequence: a list, a tuple, or a ``range`` (a slice of a
    ``range`` input travels as one).  Values come back in order; a failed
    item leaves a ``None`` placeholder and an :class:`ItemFailure`.  With
    ``spec.stop_on_error`` the chunk stops at the first failure.
    KeyboardInterrupt stops the chunk and returns what was done (marked
    ``interrupted``).  With a ``budget`` (seconds) no item starts after the
    items have run that long (at least one runs); the outcome is then marked
    ``stopped`` and the items after its values were not run.
    ``check_results`` pickles each value here first: a value that cannot
    travel back becomes its item's failure (the chunk was sent again with it
    after its reply could not be sent).
    """
    _pickling.install()
    func = build_callable(spec, base)
    values: list[Any] = []
    failures: list[ItemFailure] = []
    interrupted = False
    per_item_seed = spec.seed is not None
    if not per_item_seed:
        # Unseeded: one independent stream per chunk is enough (and cheap);
        # no two chunks, hence no two engines, share a state.
        seed_item(item_seed_sequence(None, first, entropy=spec.entropy))
    token = _set_reporter(_engine_reporter)
    started = time.time()
    caught: list[tuple[int, str, str, str, int]] = []
    try:
        if per_item_seed or spec.timeout is not None or not _EXTEND_KEEPS_PARTIAL:
            run = _run_each
        else:
            run = _run_all
        with _items_output(lambda: first + len(values), caught):
            seconds, interrupted, stopped = run(
                spec, func, first, items, star, values, failures, budget
            )
    finally:
        _reset_reporter(token)
    if check_results:
        _check_results(spec, first, values, failures)
    host, pid = engine_identity()
    return ChunkOutcome(
        first=first,
        values=values,
        failures=failures,
        started=started,
        seconds=seconds,
        host=host,
        pid=pid,
        interrupted=interrupted,
        stopped=stopped,
        warnings=caught,
    )


class _ItemStream:
    """A text stream that starts each line with the item that wrote it.

    The item is read when a line starts (``index()``), so the loop over the
    items pays nothing for it: items that print nothing cost nothing.
    """

    def __init__(self, stream: Any, index: Callable[[], int]) -> None:
        self._stream = stream
        self._index = index
        self._at_line_start = True

    def write(self, text: str) -> int:
        if not text:
            return 0
        prefix = f"[item {self._index()}] "
        out = []
        for line in text.splitlines(keepends=True):
            if self._at_line_start:
                out.append(prefix)
            out.append(line)
            self._at_line_start = line.endswith("\n")
        self._stream.write("".join(out))
        return len(text)

    def flush(self) -> None:
        self._stream.flush()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)


@contextlib.contextmanager
def _items_output(
    index: Callable[[], int], caught: list[tuple[int, str, str, str, int]]
) -> Iterator[None]:
    """While items run: their printed lines name the item, and their warnings
    are recorded (every one, with its item) instead of printed, so the
    notebook can show each warning once with the number of items it came
    from — as one process's default warning filter would."""
    import warnings

    def record(
        message: Warning | str,
        category: type[Warning],
        filename: str,
        lineno: int,
        file: Any = None,
        line: str | None = None,
    ) -> None:
        caught.append((index(), category.__name__, str(message), filename, lineno))

    out, err = sys.stdout, sys.stderr
    sys.stdout, sys.stderr = _ItemStream(out, index), _ItemStream(err, index)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("always")
            warnings.showwarning = record
            yield
    finally:
        sys.stdout, sys.stderr = out, err


def _check_results(
    spec: TaskSpec, first: int, values: list[Any], failures: list[ItemFailure]
) -> None:
    """Turn values that cannot be pickled into their items' failures."""
    failed = {f.index for f in failures}
    for offset, value in enumerate(values):
        if first + offset in failed:
            continue
        try:
            _pickling.dumps(value)
        except Exception as err:
            failures.append(
                ItemFailure(
                    index=first + offset,
                    type_name=type(err).__name__,
                    message=(
                        f"its result, a {type(value).__name__}, cannot be sent"
                        f" back to the notebook: {err}"
                    ),
                    traceback="",
                    exception=None,
                )
            )
            values[offset] = None
            if spec.stop_on_error:
                del values[offset + 1 :]
                break
    failures.sort(key=lambda f: f.index)


def _run_all(
    spec: TaskSpec,
    func: Callable[..., Any],
    first: int,
    items: Sequence[Any],
    star: bool,
    values: list[Any],
    failures: list[ItemFailure],
    budget: float | None,
) -> tuple[float, bool, bool]:
    """The items of a chunk without per-item work around them (no timeout,
    no per-item seed): ``list.extend`` over ``map`` runs the loop in C.

    ``values`` holds one entry per item tried, so after an exception its
    length is the failed item's position.  With a budget the items run in
    batches of 1, 2, 4, ... with the clock read between batches.  Returns
    the seconds spent in the items themselves (chunk sizes are derived from
    them), whether the chunk was interrupted, and whether it stopped at its
    budget.
    """
    it = iter(items)
    mapper = itertools.starmap if star else map
    seconds = 0.0
    batch = 1
    while True:
        tic = time.perf_counter()
        try:
            if budget is None:
                values.extend(mapper(func, it))
                return seconds + time.perf_counter() - tic, False, False
            while True:
                before = len(values)
                values.extend(mapper(func, itertools.islice(it, batch)))
                if len(values) - before < batch:  # all run
                    return seconds + time.perf_counter() - tic, False, False
                if seconds + time.perf_counter() - tic >= budget:
                    stopped = len(values) < len(items)
                    return seconds + time.perf_counter() - tic, False, stopped
                batch *= 2
        except KeyboardInterrupt:
            return seconds + time.perf_counter() - tic, True, False
        except BaseException as err:
            seconds += time.perf_counter() - tic
            failures.append(_failure(first + len(values), err))
            values.append(None)
            if spec.stop_on_error:
                return seconds, False, False


def _run_each(
    spec: TaskSpec,
    func: Callable[..., Any],
    first: int,
    items: Sequence[Any],
    star: bool,
    values: list[Any],
    failures: list[ItemFailure],
    budget: float | None,
) -> tuple[float, bool, bool]:
    """The items of a chunk one by one: seeded per item, each under the timer."""
    interrupted = stopped = False
    per_item_seed = spec.seed is not None
    # the items' own time (chunk sizes are derived from it), not set-up's
    tic = time.perf_counter()
    position = 0
    n = len(items)
    with _item_timer(spec.timeout) as arm:
        while position < n:
            try:
                for position in range(position, n):  # noqa: B020
                    if (
                        budget is not None
                        and position
                        and time.perf_counter() - tic >= budget
                    ):
                        stopped = True
                        break
                    if per_item_seed:
                        seed_item(item_seed_sequence(spec.seed, first + position))
                    item = items[position]
                    arm(True)
                    values.append(func(*item) if star else func(item))
                    arm(False)
                else:
                    position = n
                if stopped:
                    break
            except KeyboardInterrupt:
                arm(False)
                interrupted = True
                break
            except BaseException as err:
                arm(False)
                failures.append(_failure(first + position, err))
                values.append(None)
                position += 1
                if spec.stop_on_error:
                    break
    return time.perf_counter() - tic, interrupted, stopped


def _extend_keeps_partial() -> bool:
    """Whether ``list.extend`` keeps the items it got before its iterator
    raised (CPython's does); :func:`_run_all` relies on it to find the
    failed item."""

    def numbers() -> Iterator[int]:
        yield 1
        yield 2
        raise ValueError

    kept: list[int] = []
    with contextlib.suppress(ValueError):
        kept.extend(numbers())
    return kept == [1, 2]


_EXTEND_KEEPS_PARTIAL = _extend_keeps_partial()


@contextlib.contextmanager
def _item_timer(timeout: float | None) -> Iterator[Callable[[bool], None]]:
    """Yield ``arm(on)``: while armed, ItemTimeout fires after ``timeout`` s.

    Uses SIGALRM, so it works where items run: the process's main thread.
    """
    if timeout is None or threading.current_thread() is not threading.main_thread():
        yield lambda on: None
        return

    def expire(signum: int, frame: Any) -> None:
        raise ItemTimeout(f"item ran past its timeout of {timeout:g} s")

    def arm(on: bool) -> None:
        signal.setitimer(signal.ITIMER_REAL, timeout if on else 0)

    previous = signal.signal(signal.SIGALRM, expire)
    try:
        yield arm
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def _failure(index: int, err: BaseException) -> ItemFailure:
    exception: BaseException | None = err
    try:
        _pickling.dumps(err)
    except Exception:
        exception = None
    err.__traceback__ = _user_frames(err.__traceback__)
    text = "".join(traceback.format_exception(type(err), err, err.__traceback__))
    return ItemFailure(
        index=index,
        type_name=type(err).__name__,
        message=str(err),
        traceback=text,
        exception=exception,
        timed_out=isinstance(err, ItemTimeout),
    )


def _is_own(filename: str) -> bool:
    return filename in _OWN_FILES or os.path.abspath(filename) in _OWN_FILES


def _user_frames(tb: Any) -> Any:
    """Drop paracell's own frames from the front of a traceback."""
    while (
        tb is not None and os.path.abspath(tb.tb_frame.f_code.co_filename) in _OWN_FILES
    ):
        tb = tb.tb_next
    return tb


# -- progress from inside an item ------------------------------------------

_reporter: Callable[[float, float | None, str | None], None] | None = None
_last_publish = 0.0


def _set_reporter(
    reporter: Callable[[float, float | None, str | None], None] | None,
) -> Any:
    global _reporter
    previous, _reporter = _reporter, reporter
    return previous


def _reset_reporter(previous: Any) -> None:
    global _reporter
    _reporter = previous


def _engine_reporter(done: float, total: float | None, message: str | None) -> None:
    # ipyparallel's data publication streams to the client while the task
    # runs; throttled so a tight loop calling progress() costs nothing.
    global _last_publish
    now = time.monotonic()
    if now - _last_publish < 0.1 and (total is None or done < total):
        return
    _last_publish = now
    with contextlib.suppress(Exception):
        from ipyparallel.datapub import publish_data

        publish_data({"paracell_progress": (done, total, message)})


def progress(
    done: float, total: float | None = None, message: str | None = None
) -> None:
    """Report progress from inside an item or background cell (live).

    ``done`` out of ``total`` (optional) units of the current task, with an
    optional short message.  Outside paracell's tasks this does nothing.
    """
    reporter = _reporter
    if reporter is not None:
        reporter(done, total, message)


# -- background cells --------------------------------------------------------


@dataclass
class CellOutcome:
    """What a cell run on an engine sends back."""

    values: dict[str, bytes]  # name -> cloudpickle bytes
    unpicklable: dict[str, str]  # name -> why it cannot come back
    value: bytes | None  # the last expression's value, pickled, if it could be
    bundle: dict[str, Any] | None  # its rich display: mime type -> data
    failure: ItemFailure | None
    started: float
    seconds: float
    host: str
    pid: int
    interrupted: bool = False


def run_cell(
    spec: TaskSpec,
    source: str,
    filename: str,
    pull: Sequence[str],
    persistent: bool = False,
) -> CellOutcome:
    """Run a cell; send back the names in ``pull`` and its last value.

    By default the cell runs in a fresh namespace over the engine's own, so
    engine-side setup is visible but two jobs never see each other's
    leftovers; ``persistent`` runs it in the engine's namespace itself (for
    setup cells run on every engine).
    """
    import ast

    _pickling.install()
    ns = build_namespace(spec, _engine_user_ns() if persistent else None)
    lines = source.splitlines(keepends=True)
    linecache.cache[filename] = (len(source), None, lines, filename)
    tree = ast.parse(source, filename)
    last = None
    if tree.body and isinstance(tree.body[-1], ast.Expr):
        last = ast.Expression(tree.body[-1].value)
        tree.body.pop()
    seed_item(item_seed_sequence(spec.seed, 0, entropy=spec.entropy))
    started = time.time()
    tic = time.perf_counter()
    failure = None
    interrupted = False
    result = None
    token = _set_reporter(_engine_reporter)
    try:
        exec(compile(tree, filename, "exec"), ns)
        if last is not None:
            result = eval(compile(last, filename, "eval"), ns)
    except KeyboardInterrupt:
        interrupted = True
    except BaseException as err:
        failure = _failure(0, err)
    finally:
        _reset_reporter(token)
    seconds = time.perf_counter() - tic
    values: dict[str, bytes] = {}
    unpicklable: dict[str, str] = {}
    if failure is None and not interrupted:
        values, unpicklable = _pickle_each(ns, pull)
    value = bundle = None
    if result is not None:
        with contextlib.suppress(Exception):
            value = _pickling.dumps(result)
        bundle = _mime_bundle(result)
    host, pid = engine_identity()
    return CellOutcome(
        values=values,
        unpicklable=unpicklable,
        value=value,
        bundle=bundle,
        failure=failure,
        started=started,
        seconds=seconds,
        host=host,
        pid=pid,
        interrupted=interrupted,
    )


def _engine_user_ns() -> dict[str, Any]:
    ip = None
    with contextlib.suppress(Exception):
        from IPython import get_ipython

        ip = get_ipython()
    if ip is not None:
        return ip.user_ns  # type: ignore[no-any-return]
    return sys.modules["__main__"].__dict__


def _pickle_each(
    ns: dict[str, Any], names: Iterable[str]
) -> tuple[dict[str, bytes], dict[str, str]]:
    """``names`` present in ``ns``, each pickled on its own for the notebook;
    and, for those that cannot be, why."""
    values: dict[str, bytes] = {}
    failed: dict[str, str] = {}
    for name in names:
        if name not in ns:
            continue
        try:
            values[name] = _pickling.dumps(ns[name])
        except Exception as err:
            failed[name] = f"{type(err).__name__}: {err}"
    return values, failed


def _mime_bundle(value: Any) -> dict[str, Any]:
    """The value's rich display, computed where the value lives."""
    with contextlib.suppress(Exception):
        from IPython import get_ipython

        ip = get_ipython()
        if ip is not None:
            data, _ = ip.display_formatter.format(value)
            if data:
                return dict(data)
    return {"text/plain": repr(value)}


# -- statements of a task graph (``%%parallel --tasks``) ---------------------

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
    fetch: Sequence[tuple[tuple[str, int], str, Sequence[str]]],
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
    import io

    _pickling.install()
    address = _serve_values(authkey)
    ns, body, (seed, entropy) = _task_state(spec, job_key, source, filename)
    bad = _TASK_BAD.setdefault(job_key, set())
    if bad.intersection(after):
        bad.add(index)
        return StatementOutcome(
            index,
            time.time(),
            0.0,
            "",
            "",
            None,
            False,
            {},
            None,
            None,
            address,
            socket.gethostname(),
            skipped=True,
        )
    out, err = io.StringIO(), io.StringIO()
    saved = sys.stdout, sys.stderr
    sys.stdout, sys.stderr = out, err
    failure, interrupted, value, bundle = None, False, None, None
    fetched, fetch_seconds = 0, 0.0
    started, tic = time.time(), time.perf_counter()
    token = _set_reporter(_engine_reporter)
    try:
        fetched = _receive_values(ns, fetch, given, authkey)
        fetch_seconds = time.perf_counter() - tic
        seed_item(item_seed_sequence(seed, index, entropy=entropy))
        value, bundle = _execute(body[index], ns, filename, last_value)
    except KeyboardInterrupt:
        interrupted = True
        bad.add(index)
    except BaseException as error:
        failure = _failure(index, error)
        bad.add(index)
    finally:
        _reset_reporter(token)
        sys.stdout, sys.stderr = saved
    return StatementOutcome(
        index=index,
        started=started,
        seconds=time.perf_counter() - tic,
        stdout=out.getvalue(),
        stderr=err.getvalue(),
        failure=failure,
        interrupted=interrupted,
        sizes={n: _size_of(ns[n]) for n in writes if n in ns},
        pinned=tuple(n for n in writes if n in ns and _cannot_travel(ns[n])),
        value=value,
        bundle=bundle,
        address=address,
        host=socket.gethostname(),
        fetched=fetched,
        fetch_seconds=fetch_seconds,
    )


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
    statement: Any, ns: dict[str, Any], filename: str, last_value: bool
) -> tuple[bytes | None, dict[str, Any] | None]:
    """Run one statement; the cell's last expression gives its value (pickled)
    and rich display."""
    import ast

    if not (last_value and isinstance(statement, ast.Expr)):
        exec(compile(ast.Module([statement], []), filename, "exec"), ns)
        return None, None
    result = eval(compile(ast.Expression(statement.value), filename, "eval"), ns)
    if result is None:
        return None, None
    value = None
    with contextlib.suppress(Exception):
        value = _pickling.dumps(result)
    return value, _mime_bundle(result)


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
    return _pickle_each(_TASK_NS.get(job_key, {}), names)


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
