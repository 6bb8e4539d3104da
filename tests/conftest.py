"""Fixtures shared by the suite.

Every test runs with its own IPYTHONDIR (so profiles and connection files
never touch the user's), and an autouse fixture fails any test that leaves a
controller, engine or nanny process behind.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import time
from collections.abc import Iterator
from typing import Any

import psutil
import pytest

# Before anything imports IPython or ipyparallel: kernels and clusters started
# by the tests inherit this, and the leak check looks for it.
# Processes the tests start that import this module again (spawned workers)
# use the run's folder; only the run that made it removes it.
_MADE_HERE = "PARACELL_TESTS_IPYTHONDIR" not in os.environ
IPYTHONDIR = os.environ.get("PARACELL_TESTS_IPYTHONDIR") or tempfile.mkdtemp(
    prefix="paracell-tests-ipython-"
)
os.environ["PARACELL_TESTS_IPYTHONDIR"] = IPYTHONDIR
os.environ["IPYTHONDIR"] = IPYTHONDIR
os.environ.setdefault("JUPYTER_PLATFORM_DIRS", "1")

ARTIFACTS = os.path.join(os.path.dirname(os.path.dirname(__file__)), "test-artifacts")


# Local engines are forked (kernel_backend/_forkengines.py): their command
# line is their parent's, their process name says what they are.
_FORKED_ROLES = {
    "ipengine": "ipyparallel.engine",
    "ipengine-nanny": "ipyparallel.engine.nanny",
    "ipengine-fork": "paracell.forkengines",
}


def _role(proc: psutil.Process) -> str | None:
    """What a cluster process is, as the module ipyparallel runs it as."""
    role = _FORKED_ROLES.get(proc.info["name"] or "")
    if role is not None:
        return role
    for arg in proc.info["cmdline"] or []:
        if arg.startswith("ipyparallel."):
            return arg
        if "from ipyparallel.controller import app" in arg:
            return "ipyparallel.controller"  # kernel_backend/_quickcontroller.py
    return None


def cluster_processes() -> dict[int, str]:
    """ipyparallel processes started under this test run's IPYTHONDIR."""
    found = {}
    for proc in psutil.process_iter(["pid", "name", "cmdline"]):
        role = _role(proc)
        if role is None:
            continue
        try:
            if proc.environ().get("IPYTHONDIR") != IPYTHONDIR:
                continue
            if proc.status() == psutil.STATUS_ZOMBIE:
                continue
        except psutil.Error:
            continue
        found[proc.info["pid"]] = role
    return found


def wait_for_no_new_processes(
    before: set[int], timeout: float = 10.0
) -> dict[int, str]:
    """Processes not in ``before`` still running after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        left = {p: m for p, m in cluster_processes().items() if p not in before}
        if not left or time.monotonic() > deadline:
            return left
        time.sleep(0.1)


def wait_until(predicate: Any, timeout: float = 10.0) -> bool:
    """Poll ``predicate`` until it holds; False after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def kill_all(pids: set[int] | dict[int, str]) -> None:
    for pid in list(pids):
        with contextlib.suppress(psutil.Error):
            psutil.Process(pid).kill()


@pytest.fixture(autouse=True)
def no_leftover_processes(request: pytest.FixtureRequest) -> Iterator[None]:
    """Fail a test that leaves cluster processes running (and clean them up)."""
    before = set(cluster_processes())
    yield
    allowed = set(getattr(request.config, "_paracell_allowed_pids", set()))
    left = wait_for_no_new_processes(before | allowed)
    if left:
        kill_all(left)
        pytest.fail(f"test left cluster processes running: {left}")


@pytest.fixture
def artifacts_dir() -> str:
    os.makedirs(ARTIFACTS, exist_ok=True)
    return ARTIFACTS


@pytest.fixture
def shared_cluster(request: pytest.FixtureRequest) -> Iterator[object]:
    """The default session, running 2 local engines, kept across tests.

    Its processes are allowed to outlive each test; the session's end stops
    it (see ``_stop_shared_cluster``).
    """
    from paracell.kernel_backend import default_session

    session = default_session()
    if not session.active or session.status().live_engines != 2:
        session.stop()
        session.start(2)
        request.config._paracell_allowed_pids = set(cluster_processes())  # type: ignore[attr-defined]
    yield session
    if session.active:
        # engines that replaced stuck ones belong to the shared cluster too
        request.config._paracell_allowed_pids = set(session.process_ids())  # type: ignore[attr-defined]


@pytest.fixture(scope="session", autouse=True)
def _stop_shared_cluster() -> Iterator[None]:
    yield
    from paracell.kernel_backend import default_session

    default_session().stop()
    left = wait_for_no_new_processes(set())
    kill_all(left)
    assert not left, f"cluster processes left at the end of the run: {left}"


@pytest.fixture(scope="session")
def ip():
    """A real in-process IPython shell with paracell loaded."""
    from IPython.testing.globalipapp import start_ipython

    shell = start_ipython()
    shell.run_line_magic("load_ext", "paracell")
    return shell


def settle_jobs(ip: Any) -> None:
    """End a test's background jobs: cancel what runs, deliver what finished
    (a cell runs, as the next one would), forget them all."""
    from paracell.kernel_backend import default_jobs

    manager = default_jobs()
    for job in manager.jobs():
        if not job.done():
            job.cancel()
    manager.wait(manager.jobs(), timeout=10)
    ip.run_cell("pass").raise_error()  # delivers what finished
    manager.clear()


@pytest.fixture
def no_other_cluster() -> None:
    """Stop the shared cluster: the test counts cluster processes itself."""
    from paracell.kernel_backend import default_session

    default_session().stop()


# -- browser tests: a real JupyterLab driven by Chromium (see tests/_lab.py) --

_REPORTS = pytest.StashKey[dict[str, pytest.TestReport]]()


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """The run's IPYTHONDIR goes when the run has passed; after a failure it
    stays, with the clusters' logs, and its path is printed."""
    if not _MADE_HERE:
        return
    if session.testsfailed or exitstatus:
        print(f"\n(the run's IPYTHONDIR, with the clusters' logs: {IPYTHONDIR})")
        return
    import atexit
    import shutil

    # at exit: the last kernels and engines have let go of it by then
    atexit.register(shutil.rmtree, IPYTHONDIR, ignore_errors=True)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    """Keep each phase's report on the test, for fixtures to see failures."""
    report = yield
    item.stash.setdefault(_REPORTS, {})[report.when] = report
    return report


@pytest.fixture(scope="session")
def lab() -> Iterator[Any]:
    """A JupyterLab server shared by the run's browser tests (a ``_lab.Lab``)."""
    from _lab import Lab

    with Lab() as server:
        yield server


@pytest.fixture
def chromium() -> Iterator[Any]:
    """Headless Chromium under Playwright, for one test (a ``_lab.Browser``).

    Not shared across tests: while Playwright's sync API runs, its event loop
    counts as running in the main thread, and ``asyncio.run`` there fails.
    """
    from _lab import Browser

    with Browser() as browser:
        yield browser


@pytest.fixture
def open_notebook(
    request: pytest.FixtureRequest, lab: Any, chromium: Any, no_other_cluster: None
) -> Iterator[Any]:
    """``open_notebook(nb, name="")``: a ``_lab.Notebook`` open in a fresh page,
    its kernel idle; ``nb`` is an nbformat notebook or an ``.ipynb`` path.

    The shared cluster is stopped first: these tests count the processes of
    the clusters their notebooks start.  After the test, a failed test leaves
    a screenshot and the server's log in test-artifacts/; then the pages
    close and every kernel is shut down.
    """
    from _lab import Notebook

    test = "".join(c if c.isalnum() or c in "-_." else "_" for c in request.node.name)
    opened: list[Any] = []

    def open_(nb: Any, name: str = "") -> Any:
        name = lab.add_notebook(nb, name or f"{test}-{len(opened)}.ipynb")
        notebook = Notebook(lab, chromium.new_page(), name, ARTIFACTS)
        opened.append(notebook)
        return notebook.open()

    yield open_
    call = request.node.stash.get(_REPORTS, {}).get("call")
    failed = call is not None and call.failed
    for i, notebook in enumerate(opened):
        if failed:
            with contextlib.suppress(Exception):
                notebook.screenshot(f"{test}-failed-{i}")
        with contextlib.suppress(Exception):
            notebook.page.context.close()
    if failed:
        os.makedirs(ARTIFACTS, exist_ok=True)
        with open(os.path.join(ARTIFACTS, f"{test}-failed-server.log"), "w") as log:
            log.write(lab.log_tail(100_000))
    lab.shutdown_kernels()


# -- launcher tests: Slurm, a second host over SSH, Open MPI (scripts/hpc) ----

HPC_SCRIPT = os.path.join(os.path.dirname(os.path.dirname(__file__)), "scripts", "hpc")
#: the second host: a network namespace behind a veth pair (see scripts/hpc)
SSH_HOST = "10.213.0.2"
SSH_HOST_SIDE = "10.213.0.1"
SSH_NETNS = "paracell-ssh"


def hpc(*args: str) -> str:
    """Run ``scripts/hpc ARGS``; its stdout (it fails the test on an error)."""
    import subprocess

    done = subprocess.run(
        [HPC_SCRIPT, *args], capture_output=True, text=True, timeout=600, check=False
    )
    if done.returncode != 0:
        pytest.fail(f"scripts/hpc {' '.join(args)} failed:\n{done.stderr[-3000:]}")
    return done.stdout


def _stop_and_remove(command: str, where: str) -> None:
    """``scripts/hpc COMMAND WHERE``, then remove WHERE (keys, logs, state)."""
    import shutil

    try:
        hpc(command, where)
    finally:
        shutil.rmtree(where, ignore_errors=True)


def _setting(output: str, name: str) -> str:
    for line in output.splitlines():
        if line.startswith(f"{name}="):
            return line.partition("=")[2]
    raise AssertionError(f"scripts/hpc printed no {name}: {output!r}")


@pytest.fixture(scope="session")
def hpc_dir() -> Iterator[str]:
    """A directory for the run's Slurm and SSH set-up files, removed after."""
    import shutil

    where = tempfile.mkdtemp(prefix="paracell-tests-hpc-")
    yield where
    shutil.rmtree(where, ignore_errors=True)


@pytest.fixture(scope="session")
def slurm(request: pytest.FixtureRequest, hpc_dir: str) -> str:
    """A one-node Slurm for the run; ``SLURM_CONF`` is set for this process
    and the kernels it starts.  Its daemons stop at the end of the run."""
    where = os.path.join(hpc_dir, "slurm")
    request.addfinalizer(lambda: _stop_and_remove("slurm-stop", where))
    conf = _setting(hpc("slurm-start", where), "SLURM_CONF")
    os.environ["SLURM_CONF"] = conf
    return conf


@pytest.fixture(scope="session")
def ssh_host(request: pytest.FixtureRequest, hpc_dir: str) -> str:
    """A second host reachable over SSH at ``SSH_HOST``, for the run.

    Profile ``hpc`` (in the tests' IPYTHONDIR) tells ssh how to reach it;
    the namespace, its sshd and whatever runs there go at the end of the run.
    """
    where = os.path.join(hpc_dir, "ssh")
    request.addfinalizer(lambda: _stop_and_remove("ssh-stop", where))
    ssh_config = _setting(hpc("ssh-start", where), "SSH_CONFIG")
    settings = (
        "# how paracell's tests reach their second host (scripts/hpc ssh-start)\n"
        f"c.SSHLauncher.ssh_args = ['-F', {ssh_config!r}]\n"
        f"c.SSHLauncher.scp_args = ['-F', {ssh_config!r}]\n"
    )
    # profile hpc_hosts names the host too, as ipcluster users' profiles do
    hosts = f"c.SSHEngineSetLauncher.engines = {{'root@{SSH_HOST}': 1}}\n"
    for name, text in (("hpc", settings), ("hpc_hosts", settings + hosts)):
        profile = os.path.join(IPYTHONDIR, f"profile_{name}")
        os.makedirs(profile, exist_ok=True)
        with open(os.path.join(profile, "ipcluster_config.py"), "w") as f:
            f.write(text)
    return SSH_HOST


@pytest.fixture(scope="session")
def mpi() -> None:
    """Open MPI and mpi4py; as root, the settings Open MPI wants for that.

    Oversubscribing lets ``-n 2`` run on a one-core machine.
    """
    hpc("install")
    if os.geteuid() == 0:
        os.environ["OMPI_ALLOW_RUN_AS_ROOT"] = "1"
        os.environ["OMPI_ALLOW_RUN_AS_ROOT_CONFIRM"] = "1"
    # Open MPI reads its MCA variables case-sensitively
    os.environ["OMPI_MCA_rmaps_base_oversubscribe"] = "1"  # noqa: SIM112


def netns_processes() -> dict[int, str]:
    """Processes running in the second host's namespace, but its sshd listener."""
    import subprocess

    pids = subprocess.run(
        ["ip", "netns", "pids", SSH_NETNS], capture_output=True, text=True, check=False
    ).stdout.split()
    found = {}
    for pid in map(int, pids):
        with contextlib.suppress(psutil.Error):
            cmdline = " ".join(psutil.Process(pid).cmdline())
            if "[listener]" not in cmdline:
                found[pid] = cmdline
    return found


def slurm_jobs() -> list[str]:
    """Jobs in the test Slurm's queue (``squeue``), completing ones included."""
    import subprocess

    out = subprocess.run(
        ["squeue", "-h", "-r", "-o", "%i %T"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return [line.strip() for line in out.splitlines() if line.strip()]
