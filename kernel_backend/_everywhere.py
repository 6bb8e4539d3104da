"""A cell run on every engine (``%%parallel --all``): for imports and
per-engine set-up; what the cell defines stays on the engines."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ._engine import TaskSpec
from ._enginecell import CellOutcome, run_cell
from ._errors import EnginesDied, InvalidRequest
from ._jobs import JobError
from ._names import cell_reads, check_syntax
from ._pool import OUTPUT_WAIT, SETTLE
from ._seeding import fresh_entropy
from ._shipment import Shipment, prepare_shipment
from ._stale import STUCK_AFTER
from ._waiting import wait_for

__all__ = ["EngineRun", "run_everywhere"]


@dataclass
class EngineRun:
    """One engine's part of a cell run on several engines (``--all``)."""

    engine: int
    stdout: str
    stderr: str
    values: dict[str, Any]
    bundle: dict[str, Any] | None
    error: JobError | None


def _settle_stale(session: Any, targets: Sequence[int] | None) -> None:
    """Wait until no target engine still runs cancelled work.

    A cell sent to every engine must not queue behind a cancelled task that
    would not stop: the wait drives the probes that free such an engine (or
    replace it, when it is stuck for good), then brings replacements up.
    """
    deadline = time.monotonic() + STUCK_AFTER + 10.0
    while True:
        stale = session.stale_engines()
        if targets is not None:
            stale &= set(targets)
        if not stale:
            break
        if time.monotonic() > deadline:
            raise JobError(
                f"engine {', '.join(map(str, sorted(stale)))} still runs cancelled"
                " work that does not stop; %cluster restart replaces the engines"
            )
        time.sleep(0.05)
    session.ensure_engines()  # stuck engines were replaced: bring them back


def run_everywhere(
    session: Any,
    source: str,
    namespace: Mapping[str, Any],
    *,
    targets: Sequence[int] | None = None,
    outputs: Sequence[str] = (),
    seed: int | None = None,
    filename: str = "<cell>",
    ship_large: bool = False,
) -> list[EngineRun]:
    """Run a cell on each target engine, in the engine's own namespace.

    For imports and per-engine setup: what the cell defines stays on the
    engines.  Blocks; an interrupt stops the cell everywhere.
    """
    check_syntax(source, filename)  # the user's SyntaxError, here
    _settle_stale(session, targets)
    chosen = _chosen_engines(session, targets)
    # busy: nothing the shipment relies on is released before the cells are
    # on their way (engines run their tasks in order)
    with session.busy():
        shipment = _send_names(session, chosen, source, namespace, ship_large)
        spec = TaskSpec(
            key=f"everywhere-{time.time()}",
            **{**shipment.spec_names(), "engine_side": ()},
            seed=seed,
            entropy=fresh_entropy(),
        )
        client = session.client
        tasks = {
            client[eid].apply_async(
                run_cell, spec, source, filename, list(outputs), True
            ): eid
            for eid in chosen
        }
    try:
        # short waits keep an interrupt responsive; ``wait_for`` says what is
        # still running, so the tasks' locks are not taken again around it
        # (an interrupt landing as ``done()`` has taken one leaves it taken)
        pending: set[Any] = set(tasks)
        while pending:
            _, pending = wait_for(pending, 0.1)
    except BaseException:
        session.interrupt(tasks)
        raise
    runs = [_engine_run(session, ar, eid) for ar, eid in tasks.items()]
    return sorted(runs, key=lambda r: r.engine)


def _chosen_engines(session: Any, targets: Sequence[int] | None) -> list[int]:
    """The engines the cell runs on: ``targets`` (each must be up), or every
    engine up now."""
    live = session.engine_ids()
    if targets is None:
        if not live:
            raise InvalidRequest(
                "the cluster has no engines to run the cell on"
                + (
                    " (engines on demand start for maps and background jobs;"
                    " --all runs on the engines up now)"
                    if getattr(session, "demand", None) is not None
                    else "; add some with %cluster scale N"
                )
            )
        return list(live)
    unknown = [t for t in targets if t not in live]
    if unknown or not targets:
        raise InvalidRequest(
            f"--targets names engine {unknown[0] if unknown else '(none)'},"
            f" which is not running (engines: {', '.join(map(str, live)) or 'none'})"
        )
    return list(targets)


def _send_names(
    session: Any,
    engines: list[int],
    source: str,
    namespace: Mapping[str, Any],
    ship_large: bool,
) -> Shipment:
    """Send the engines the notebook's names the cell reads."""
    shipment = prepare_shipment(
        cell_reads(source, namespace), namespace, ship_large=ship_large
    )
    # names the notebook lacks may be defined by the cell itself on engines
    try:
        sent: Shipment = session.shipper.send(
            session.client, engines, shipment, require_engine_side=False
        )
    except EnginesDied as err:
        session.forget_engines(err.engines)
        raise JobError(
            f"engine {', '.join(map(str, sorted(err.engines)))} died while the"
            " cell's names were sent to it; the cell ran nowhere"
        ) from None
    return sent


def _engine_run(session: Any, ar: Any, eid: int) -> EngineRun:
    """What the cell did on one engine: output, names, display, error."""
    with contextlib.suppress(Exception):
        ar.wait_for_output(OUTPUT_WAIT)  # the result can come before the output
    stdout, stderr = getattr(ar, "stdout", ""), getattr(ar, "stderr", "")
    error: JobError | None = None
    values: dict[str, Any] = {}
    bundle = None
    try:
        outcome: CellOutcome = ar.get(SETTLE)
    except Exception as err:
        error = JobError(f"engine {eid} could not run the cell: {err}")
    else:
        error, values = _outcome_values(eid, outcome)
        bundle = outcome.bundle
    finally:
        session.purge(ar)
    return EngineRun(eid, stdout, stderr, values, bundle, error)


def _outcome_values(
    eid: int, outcome: CellOutcome
) -> tuple[JobError | None, dict[str, Any]]:
    """The cell's error on ``eid`` (its own, or a name that could not come
    back) and the names that did."""
    import cloudpickle

    error: JobError | None = None
    if outcome.failure is not None:
        error = JobError(
            f"engine {eid}: {outcome.failure.type_name}: {outcome.failure.message}",
            outcome.failure.traceback,
        )
    elif outcome.interrupted:
        error = JobError(f"engine {eid}: interrupted")
    values: dict[str, Any] = {}
    for name, data in outcome.values.items():
        try:
            values[name] = cloudpickle.loads(data)
        except Exception as err:
            error = error or JobError(
                f"engine {eid}: {name!r} could not come back:"
                f" {type(err).__name__}: {err}"
            )
    for name, why in outcome.unpicklable.items():
        error = error or JobError(f"engine {eid}: {name!r} could not come back: {why}")
    return error, values
