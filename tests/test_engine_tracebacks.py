"""An error raised where paracell runs the user's code shows the user's
frames only: none of the engine-side modules' (run here, in-process)."""

from __future__ import annotations

import pytest

from paracell.kernel_backend._engine import TaskSpec
from paracell.kernel_backend._enginecell import run_cell
from paracell.kernel_backend._enginemap import run_chunk
from paracell.kernel_backend._enginetasks import forget_task_job, run_statement

USER_CODE = "def fragile(x):\n    raise ValueError(f'bad input {x}')\n"


def user_namespace() -> dict[str, object]:
    ns: dict[str, object] = {"__builtins__": __builtins__}
    exec(compile(USER_CODE, "<user>", "exec"), ns)
    return ns


@pytest.mark.parametrize(
    "options", [{}, {"seed": 3}, {"timeout": 5.0}], ids=["in-C", "seeded", "timed"]
)
def test_a_failed_items_traceback_starts_at_the_element(options):
    spec = TaskSpec(
        key=f"tb-{options}", element="fragile(x)", arguments=("x",), **options
    )
    out = run_chunk(spec, 0, range(2), False, user_namespace())
    (failure,) = out.failures
    assert failure.traceback.startswith("Traceback")
    assert 'File "<pmap>"' in failure.traceback
    assert 'File "<user>", line 2, in fragile' in failure.traceback
    assert "kernel_backend" not in failure.traceback


def test_a_failed_cells_traceback_starts_at_the_cell():
    spec = TaskSpec(key="tb-cell")
    out = run_cell(spec, "x = 1\nraise ValueError('nope')", "<tb-cell>", ["x"])
    assert out.failure is not None
    assert 'File "<tb-cell>", line 2' in out.failure.traceback
    assert "kernel_backend" not in out.failure.traceback


def test_a_failed_statements_traceback_starts_at_the_statement():
    spec = TaskSpec(key="tb-statement")
    source = "x = 1\nraise ValueError('nope')"
    try:
        for index in (0, 1):
            out = run_statement(
                spec, "tb-job", source, "<tb-tasks>", index, (), None, ["x"], b"tb"
            )
        assert out.failure is not None
        assert 'File "<tb-tasks>", line 2' in out.failure.traceback
        assert "kernel_backend" not in out.failure.traceback
        # a statement sent to follow the failed one is skipped, not run
        out = run_statement(
            None, "tb-job", None, "<tb-tasks>", 0, (), None, [], b"tb", after=[1]
        )
        assert out.skipped
    finally:
        forget_task_job("tb-job")


@pytest.mark.parametrize("options", [{}, {"seed": 3}], ids=["in-C", "seeded"])
def test_a_mapped_functions_traceback_starts_in_the_function(options):
    from paracell.kernel_backend._engine import WRAPPER_FILENAME

    ns = user_namespace()
    ns["__paracell_func__"] = ns["fragile"]
    spec = TaskSpec(
        key=f"tb-func-{options}",
        element="__paracell_func__(__paracell_item__)",
        arguments=("__paracell_item__",),
        filename=WRAPPER_FILENAME,
        **options,
    )
    out = run_chunk(spec, 0, range(2), False, ns)
    (failure,) = out.failures
    assert 'File "<user>", line 2, in fragile' in failure.traceback
    assert WRAPPER_FILENAME not in failure.traceback
    assert "kernel_backend" not in failure.traceback
