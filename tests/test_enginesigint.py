"""An interrupt never ends an engine: SIGINT landing in ipykernel's own steps
around a request's handler, or in the event loop, where nothing catches
``KeyboardInterrupt``, is dropped; anywhere else in a request it
interrupts, as before."""

from __future__ import annotations

import signal
import sys
from typing import Any

import pytest

from paracell.kernel_backend import _enginesigint


def _frame_of(name: str, filename: str) -> Any:
    """A live frame of a function called ``name``, compiled from ``filename``."""
    ns: dict[str, Any] = {"sys": sys}
    exec(compile(f"def {name}():\n    return sys._getframe()\n", filename, "exec"), ns)
    return ns[name]()


def test_sigint_in_ipykernels_steps_around_the_handler_is_dropped() -> None:
    for name in ("dispatch_shell", "pre_handler_hook", "post_handler_hook"):
        frame = _frame_of(name, "/somewhere/ipykernel/kernelbase.py")
        assert _enginesigint._interrupt(signal.SIGINT, frame) is None
    # the names ipykernel uses today
    from ipykernel.kernelbase import Kernel

    for method in (
        Kernel.dispatch_shell,
        Kernel.pre_handler_hook,
        Kernel.post_handler_hook,
    ):
        assert _enginesigint._unguarded(method.__code__), method.__name__
    # the event loop, between the steps of a request that awaits
    import asyncio.base_events

    loop_step = asyncio.base_events.BaseEventLoop._run_once
    assert _enginesigint._unguarded(loop_step.__code__)


@pytest.mark.parametrize(
    ("name", "filename"),
    [
        ("run_cell", "<cell>"),  # the user's code
        ("apply_request", "/somewhere/ipyparallel/engine/kernel.py"),  # caught there
        ("dispatch_shell", "/home/me/my_own_module.py"),  # a name alone is not enough
    ],
)
def test_sigint_anywhere_else_in_a_request_interrupts(name: str, filename: str) -> None:
    with pytest.raises(KeyboardInterrupt):
        _enginesigint._interrupt(signal.SIGINT, _frame_of(name, filename))


def test_the_kernels_hook_installs_the_handler_and_keeps_what_was_there() -> None:
    class Kernel:
        saved_sigint_handler: Any = None

        def pre_handler_hook(self) -> None:
            raise AssertionError("replaced")

    class App:
        kernel = Kernel()

    before = signal.getsignal(signal.SIGINT)
    try:
        _enginesigint.install(App)
        App.kernel.pre_handler_hook()
        assert signal.getsignal(signal.SIGINT) is _enginesigint._interrupt
        assert App.kernel.saved_sigint_handler is before  # put back after
        hook = App.kernel.pre_handler_hook
        _enginesigint.install(App)  # twice: once
        assert App.kernel.pre_handler_hook is hook
    finally:
        signal.signal(signal.SIGINT, before)


@pytest.mark.cluster
def test_engines_interrupt_requests_with_the_guarded_handler(
    shared_cluster: Any,
) -> None:
    from paracell import parallel

    parallel("x = 1", targets="all", namespace={})  # every engine set up

    def handler() -> tuple[str, str]:
        import signal

        current = signal.getsignal(signal.SIGINT)
        return getattr(current, "__module__", ""), getattr(current, "__name__", "")

    view = shared_cluster.client[:]
    for module, name in view.apply_sync(handler):
        assert (module, name) == ("paracell.kernel_backend._enginesigint", "_interrupt")
