"""What a map's tasks print, read while they run and after they finish."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from ._pool import EnginePool, task_output

__all__ = ["TaskOutput"]

#: How long a finished task's printed output is waited for after its result.
_OUTPUT_GRACE = 1.0


class TaskOutput:
    """The printed output of a map's tasks, taken as whole lines.

    ``add_lines(engine, text)`` keeps a task's new text and returns the lines
    to show (see :meth:`._mapjob.MapJob.add_lines`).  A task is dropped from
    ``pool``'s caches once its output has been read to the end.
    """

    def __init__(
        self, pool: EnginePool, add_lines: Callable[[int, str], list[str]]
    ) -> None:
        self._pool = pool
        self._add_lines = add_lines
        # task -> (engine, characters of stdout and stderr already taken,
        # when it finished)
        self._tasks: dict[Any, tuple[int, int, int, float | None]] = {}

    def watch(self, task: Any, engine: int) -> None:
        """Read what ``task``, sent to ``engine``, prints."""
        self._tasks[task] = (engine, 0, 0, None)

    def finished(self, task: Any) -> None:
        """``task``'s result came: read its output to the end, then drop it."""
        if task in self._tasks:
            eid, out, err, _ = self._tasks[task]
            self._tasks[task] = (eid, out, err, time.monotonic())

    def forget(self, task: Any) -> None:
        """Stop reading ``task``'s output (it is dropped elsewhere)."""
        self._tasks.pop(task, None)

    def read(self, final: bool = False) -> tuple[str, ...]:
        """The lines running and finished tasks printed since the last look.

        A task's output can arrive after its result, so a finished task is
        read until its output is complete (or for ``_OUTPUT_GRACE`` s), and
        only then dropped from the client's caches; ``final`` waits for it
        (up to ``_OUTPUT_GRACE`` s in all) and drops every finished task.
        """
        if not self._tasks:
            return ()
        now = time.monotonic()
        if final:
            deadline = now + _OUTPUT_GRACE
            for task, (_, _, _, ended) in list(self._tasks.items()):
                if ended is not None:
                    task.wait_for_output(max(0.0, deadline - time.monotonic()))
        lines: list[str] = []
        for task in list(self._tasks):
            lines += self._read_task(task)
            ended = self._tasks[task][3]
            if ended is not None and (
                final
                or getattr(task, "_output_ready", True)
                or now - ended > _OUTPUT_GRACE
            ):
                del self._tasks[task]
                self._pool.purge(task)
        return tuple(lines)

    def _read_task(self, task: Any) -> list[str]:
        """The new lines of one task (all its new text once it is over)."""
        eid, out, err, ended = self._tasks[task]
        stdout, stderr = task_output(task, "stdout"), task_output(task, "stderr")
        lines: list[str] = []
        for text, offset in ((stdout, out), (stderr, err)):
            if len(text) > offset:
                # whole lines only, unless the task is over
                end = len(text) if ended else text.rfind("\n", offset) + 1
                if end > offset:
                    lines += self._add_lines(eid, text[offset:end])
                    if text is stdout:
                        out = end
                    else:
                        err = end
        self._tasks[task] = (eid, out, err, ended)
        return lines
