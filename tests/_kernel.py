"""A real Jupyter kernel for tests: run code, collect what a front end gets."""

from __future__ import annotations

import contextlib
import os
import queue
import signal
import time
from dataclasses import dataclass, field
from typing import Any

from jupyter_client.manager import KernelManager


@dataclass
class Execution:
    """What one ``execute_request`` produced, as a front end receives it."""

    reply: dict[str, Any]
    stdout: str = ""
    stderr: str = ""
    displays: list[dict[str, Any]] = field(default_factory=list)
    error: dict[str, Any] | None = None
    #: every iopub message seen while waiting (other requests' too: widget
    #: messages from a job's thread can arrive before this request's idle)
    messages: list[dict[str, Any]] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.reply["status"] == "ok"


class Kernel:
    """A started kernel with a blocking client."""

    def __init__(self) -> None:
        self.manager = KernelManager(kernel_name="python3")
        self.manager.start_kernel()
        self.client = self.manager.client()
        self.client.start_channels()
        self.client.wait_for_ready(timeout=60)
        # a kernel that stops answering dumps its threads' stacks into the
        # test's captured stderr (see run): what it was stuck on
        self.client.execute_interactive(
            "import faulthandler, signal\n"
            "faulthandler.register(signal.SIGUSR1, all_threads=True)",
            silent=True,
            store_history=False,
            timeout=60,
        )

    @property
    def pid(self) -> int:
        return self.manager.provisioner.process.pid  # type: ignore[union-attr]

    def run(self, code: str, timeout: float = 120) -> Execution:
        msg_id = self.client.execute(code)
        result = Execution(reply={})
        while True:
            try:
                msg = self.client.get_iopub_msg(timeout=timeout)
            except queue.Empty:
                self._dump_stacks()
                raise TimeoutError(
                    f"no idle status after {timeout} s for {code!r}"
                ) from None
            result.messages.append(msg)
            if msg["parent_header"].get("msg_id") != msg_id:
                continue
            kind, content = msg["msg_type"], msg["content"]
            if kind == "stream":
                if content["name"] == "stdout":
                    result.stdout += content["text"]
                else:
                    result.stderr += content["text"]
            elif kind in ("execute_result", "display_data"):
                result.displays.append(content["data"])
            elif kind == "error":
                result.error = content
            elif kind == "status" and content["execution_state"] == "idle":
                break
        result.reply = self._reply_to(msg_id, timeout)
        return result

    def _reply_to(self, msg_id: str, timeout: float) -> dict[str, Any]:
        """The shell reply to ``msg_id``; replies to other requests (a second
        kernel_info_reply from ``wait_for_ready`` on a busy machine) are
        skipped, so a run never takes its predecessor's reply."""
        while True:
            reply = self.client.get_shell_msg(timeout=timeout)
            if reply["parent_header"].get("msg_id") == msg_id:
                return reply["content"]  # type: ignore[no-any-return]

    def _dump_stacks(self) -> None:
        with contextlib.suppress(Exception):
            os.kill(self.pid, signal.SIGUSR1)
            time.sleep(1.0)

    def wait_started(self, msg_id: str, timeout: float = 30) -> None:
        """Wait until the kernel runs ``msg_id``'s code (its ``execute_input``).

        Until then the kernel ignores SIGINT (it only catches it while a
        request is handled): an interrupt sent earlier is lost, as in any
        front end, and the cell runs to its end.
        """
        deadline = time.monotonic() + timeout
        while True:
            msg = self.client.get_iopub_msg(
                timeout=max(0.0, deadline - time.monotonic())
            )
            if (
                msg["msg_type"] == "execute_input"
                and msg["parent_header"].get("msg_id") == msg_id
            ):
                return

    def interrupt(self, msg_id: str, timeout: float = 30) -> dict[str, Any]:
        """Interrupt the kernel and return the reply to ``msg_id``."""
        self.manager.interrupt_kernel()
        while True:
            reply = self.client.get_shell_msg(timeout=timeout)
            if reply["parent_header"].get("msg_id") == msg_id:
                return reply  # type: ignore[no-any-return]

    def shutdown(self) -> None:
        self.client.stop_channels()
        if self.manager.is_alive():
            self.manager.shutdown_kernel(now=False)
