"""Starting and stopping job kernels: the one place a kernel process is launched.

A kernel is ``python -m analysis.kernel_app`` (ipykernel with bounded output and no TCP socket)
from the runner's own environment (so a plain venv install needs no kernelspec), talking over
IPC sockets in the job directory (mode 0700), in a process group of its own so that stopping it
stops everything it started. Sandboxed, it runs inside bubblewrap (:mod:`.sandbox`).

Limits are set in the child before it runs anything (``preexec_fn``), and the child gets
``PR_SET_PDEATHSIG``: when the runner dies, however it dies, the kernel (or the sandbox, whose
PID namespace then ends every process of the job) gets SIGKILL. The signal fires when the
*thread* that launched the kernel ends, so launch kernels from a long-lived thread (the event
loop's).
"""

from __future__ import annotations

import ctypes
import json
import os
import resource
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import psutil

from analysis.errors import KernelStartError
from analysis.runner import sandbox as sandboxing

__all__ = [
    "KernelProcess",
    "ProcessHandle",
    "child_setup",
    "children",
    "connection_file",
    "descendants",
    "kernel_args",
    "kernel_limits",
    "launch_kernel",
]

#: Longest path a Unix socket can bind on Linux (sun_path is 108 bytes, NUL included).
_MAX_SOCKET_PATH = 107
_PORTS = ("shell_port", "iopub_port", "stdin_port", "control_port", "hb_port")


class ProcessHandle(Protocol):
    """What the runner holds of the process it started for a kernel (a ``Popen``, or a zygote's child)."""

    returncode: int | None

    @property
    def pid(self) -> int: ...

    def poll(self) -> int | None: ...

    def wait(self) -> int: ...


@dataclass
class KernelProcess:
    """A running kernel: its process, connection info, and the folder of its sockets."""

    popen: ProcessHandle
    connection_info: dict[str, Any]
    log_path: Path
    socket_dir: Path
    #: The descriptor behind a ``/proc/self/fd/N`` socket folder (a job directory too deep for a
    #: Unix socket's path), closed by :meth:`cleanup`.
    socket_dir_fd: int | None = None
    sandboxed: bool = False
    #: Finds the kernel's host pid when ``popen`` is not the kernel (default: by its command line).
    find_kernel: Callable[[], int | None] | None = field(default=None, repr=False)
    _kernel_pid: int | None = field(default=None, repr=False)

    @property
    def pid(self) -> int:
        """The process id of what the runner started (the kernel, or bubblewrap around it)."""
        return self.popen.pid

    def kernel_pid(self) -> int | None:
        """The host process id of the kernel itself (inside the sandbox, bubblewrap's grandchild)."""
        if not self.sandboxed:
            return self.pid
        if self._kernel_pid is None and self.find_kernel is not None:
            self._kernel_pid = self.find_kernel()
        elif self._kernel_pid is None:
            for pid in descendants(self.pid):
                try:
                    if psutil.Process(pid).cmdline()[1:3] == ["-m", "analysis.kernel_app"]:  # not bwrap's
                        self._kernel_pid = pid
                        break
                except psutil.Error:
                    continue
        return self._kernel_pid

    def is_alive(self) -> bool:
        """Whether the kernel process is still running."""
        return self.popen.poll() is None

    def exit_description(self) -> str:
        """How the process ended, in words (``killed by SIGKILL``, ``exited with code 3``)."""
        code = self.popen.poll()
        if code is None:
            return "is still running"
        if code < 0:
            try:
                name = signal.Signals(-code).name
            except ValueError:
                name = f"signal {-code}"
            return f"was killed by {name}"
        return f"exited with code {code}"

    def log_tail(self, max_bytes: int = 2000) -> str:
        """The end of what the kernel process wrote to its own stdout/stderr."""
        try:
            with self.log_path.open("rb") as fh:
                fh.seek(0, os.SEEK_END)
                fh.seek(max(0, fh.tell() - max_bytes))
                return fh.read().decode("utf-8", "replace").strip()
        except OSError:
            return ""

    def interrupt(self) -> None:
        """Send SIGINT to the kernel (ipykernel turns it into KeyboardInterrupt)."""
        pid = self.kernel_pid() if self.is_alive() else None
        if pid is not None:
            try:
                os.kill(pid, signal.SIGINT)
            except ProcessLookupError:
                pass

    def kill(self) -> None:
        """SIGKILL the kernel's whole process tree and reap it; safe to call twice."""
        victims: list[psutil.Process] = []
        for pid in descendants(self.pid):
            try:
                victims.append(psutil.Process(pid))
            except psutil.Error:
                pass
        try:
            os.killpg(self.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        for proc in victims:  # children that left the process group
            try:
                proc.kill()
            except psutil.Error:
                pass
        self.popen.wait()
        _wait_dead(victims, timeout_s=2.0)

    def cleanup(self) -> None:
        """Close the descriptor of a ``/proc/self/fd/N`` socket folder; safe to call twice."""
        fd, self.socket_dir_fd = self.socket_dir_fd, None
        if fd is not None:
            os.close(fd)


def children(pid: int) -> list[int]:
    """The pids of ``pid``'s children, from ``/proc/PID/task/TID/children`` (each thread's own)."""
    found: list[int] = []
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return found
    for task in tasks:
        try:
            with open(f"/proc/{pid}/task/{task}/children") as fh:
                found += [int(child) for child in fh.read().split()]
        except (OSError, ValueError):
            continue
    return found


def descendants(pid: int) -> list[int]:
    """The pids of the processes below ``pid``.

    Only that subtree is read; ``psutil.Process.children`` reads every process's ``stat`` on the
    machine to build its parent map, which cost the runner about 5 ms per call with a few hundred
    processes, several times per job.
    """
    found: list[int] = []
    todo = [pid]
    while todo:
        below = children(todo.pop())
        found += below
        todo += below
    return found


def _wait_dead(procs: list[psutil.Process], *, timeout_s: float) -> None:
    """Wait until ``procs`` are gone or zombies (dead; reaped by whoever adopted them)."""
    give_up = time.monotonic() + timeout_s
    while procs and time.monotonic() < give_up:
        procs = [p for p in procs if _alive(p)]
        if procs:
            time.sleep(0.01)


def _alive(proc: psutil.Process) -> bool:
    try:
        return bool(proc.status() != psutil.STATUS_ZOMBIE)
    except psutil.NoSuchProcess:
        return False


def _socket_dir(job_dir: Path) -> tuple[Path, int | None]:
    """Where the IPC sockets are reached: the job directory, or the same folder by a short path.

    A Unix socket's path is at most 107 bytes. For a deeper job directory the runner opens it
    (``O_PATH``) and uses ``/proc/self/fd/N``: nothing to create beside the job, nothing left
    behind if the runner dies. An unsandboxed kernel inherits the descriptor under the same
    number, so the path means the same folder in both processes; a sandboxed one binds in
    ``/job`` whatever the host path is.
    """
    resolved = job_dir.resolve()
    if len(str(resolved / "k-5").encode()) <= _MAX_SOCKET_PATH:
        return resolved, None
    fd = os.open(resolved, os.O_PATH | os.O_DIRECTORY)
    return Path(f"/proc/self/fd/{fd}"), fd


_PR_SET_PDEATHSIG = 1
_LIBC = ctypes.CDLL(None, use_errno=True)  # loaded here: the child must not dlopen after fork


def connection_file(job_dir: Path, *, sandboxed: bool) -> tuple[dict[str, Any], Path, int | None]:
    """Write ``job_dir/kernel.json`` (IPC sockets, a fresh key) for a kernel that sees ``job_dir``.

    Returns the connection info as the runner uses it, the socket folder it connects to, and
    the descriptor behind that folder when it is a ``/proc/self/fd/N`` path
    (closed by :meth:`KernelProcess.cleanup`).
    """
    socket_dir, socket_fd = _socket_dir(job_dir)
    inside = sandboxing.JOB_DIR if sandboxed else socket_dir
    info: dict[str, Any] = {name: i + 1 for i, name in enumerate(_PORTS)}
    info.update(
        ip=str(inside / "k"),
        key=secrets.token_hex(32),
        transport="ipc",
        signature_scheme="hmac-sha256",
        kernel_name="analysis",
    )
    fd = os.open(job_dir / "kernel.json", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as fh:
        json.dump(info, fh)
    info["ip"] = str(socket_dir / "k")  # where the runner connects
    return info, socket_dir, socket_fd


def kernel_args(max_processes: int | None, *, warm_up: Path | None = None) -> list[str]:
    """The ``analysis.kernel_app`` options of a job kernel (a process limit only when sandboxed).

    ``warm_up``: the job directory as the kernel sees it, for a pooled kernel: it imports what a
    job imports and opens the job's DuckDB connection before it answers its first request.
    """
    args = ["--HistoryManager.enabled=False", "--IPKernelApp.quiet=True"]
    if max_processes is not None:
        args.append(f"--max-processes={max_processes}")
    if warm_up is not None:
        args.append(f"--analysis-warm-up={warm_up}")  # analysis.kernel_app.WARM_UP_OPTION
    return args


def kernel_limits(
    max_memory_bytes: int | None, max_cpu_s: int | None, max_file_bytes: int | None
) -> dict[int, int]:
    """The resource limits (``RLIMIT_*`` to value) a kernel process sets before it runs anything."""
    return {
        which: value
        for which, value in (
            (resource.RLIMIT_AS, max_memory_bytes),
            (resource.RLIMIT_CPU, max_cpu_s),
            (resource.RLIMIT_FSIZE, max_file_bytes),
        )
        if value is not None
    }


def child_setup(limits: dict[int, int], plan: sandboxing.SandboxPlan | None) -> Callable[[], None]:
    """What the child runs before ``exec``: drop root for a sandbox, set limits, die with the runner."""
    parent = os.getpid()

    def setup() -> None:
        if plan is not None:
            sandboxing.stage_and_drop(plan.stage)
        for which, value in limits.items():
            soft, hard = (value, value + 5) if which == resource.RLIMIT_CPU else (value, value)
            resource.setrlimit(which, (soft, hard))
        if plan is None:  # after setuid: changing credentials clears the parent-death signal
            _LIBC.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        # else bubblewrap's --die-with-parent sets it once its sandbox no longer waits for it:
        # killed earlier, it left its sandbox's init waiting forever (see sandbox.py's lifeline)
        if os.getppid() != parent:  # the runner died before prctl (or before bubblewrap)
            os._exit(1)

    return setup


def launch_kernel(
    job_dir: Path,
    *,
    cwd: Path | None = None,
    env: dict[str, str] | None = None,
    base_env: dict[str, str] | None = None,
    max_memory_bytes: int | None = None,
    max_cpu_s: int | None = None,
    max_file_bytes: int | None = None,
    max_processes: int | None = None,
    max_tmp_bytes: int | None = None,
    sandboxed: bool = False,
    python: str | None = None,
    python_env: Path | None = None,
    warm_up: bool = False,
) -> KernelProcess:
    """Start a kernel for one job, with its sockets and files in ``job_dir``.

    Parameters
    ----------
    job_dir
        The job's private directory (mode 0700); it must exist.
    cwd
        Working directory of an unsandboxed kernel; default the runner's (sandboxed: ``/job``).
    env
        Extra environment variables for an unsandboxed kernel.
    base_env
        The environment an unsandboxed kernel starts from; default the runner's (``os.environ``).
        A sandboxed kernel gets only the sandbox's allow-list.
    max_memory_bytes
        Address-space limit of each process (``RLIMIT_AS``): allocations past it raise MemoryError.
    max_cpu_s
        CPU-time limit of each process (``RLIMIT_CPU``): past it the process gets SIGXCPU.
    max_file_bytes
        Largest file a process may write (``RLIMIT_FSIZE``): past it writes fail with EFBIG.
    max_processes
        Sandboxed only: processes of the job (``RLIMIT_NPROC`` in the sandbox's user namespace).
    max_tmp_bytes
        Sandboxed only: size of the private ``/tmp``.
    sandboxed
        Run the kernel inside bubblewrap (see :mod:`analysis.runner.sandbox`).
    python
        The interpreter to run the kernel with (an analysis's own environment); default the runner's.
    python_env
        The environment ``python`` belongs to, when it is not the runner's: a sandbox binds it
        read-only.
    warm_up
        Have the kernel do, as it starts, what every job does first (a pooled kernel: see
        :func:`kernel_args`).
    """
    info, socket_dir, socket_fd = connection_file(job_dir, sandboxed=sandboxed)
    inside = sandboxing.JOB_DIR if sandboxed else socket_dir
    args = kernel_args(
        max_processes if sandboxed else None,
        warm_up=sandboxing.job_dir_seen(job_dir, sandboxed=sandboxed) if warm_up else None,
    )
    limits = kernel_limits(max_memory_bytes, max_cpu_s, max_file_bytes)
    plan: sandboxing.SandboxPlan | None = None
    interpreter = python or sys.executable
    if sandboxed:
        sandboxing.prepare_job_dir(job_dir)
        kernel_argv = [interpreter, "-m", "analysis.kernel_app", "-f", str(inside / "kernel.json")]
        plan = sandboxing.plan(
            kernel_argv + args,
            job_dir=job_dir,
            max_tmp_bytes=max_tmp_bytes,
            read_only=[python_env] if python_env is not None else [],
        )
        argv, kernel_env, cwd = plan.argv, plan.env, None
    else:
        argv = [interpreter, "-m", "analysis.kernel_app", "-f", str(job_dir / "kernel.json"), *args]
        kernel_env = {
            **(os.environ if base_env is None else base_env),
            "IPYTHONDIR": str(job_dir / "ipython"),
            "PYDEVD_DISABLE_FILE_VALIDATION": "1",
            "JUPYTER_PLATFORM_DIRS": "1",
            **(env or {}),
        }
    log_path = job_dir / "kernel.log"
    try:
        with log_path.open("wb") as log:
            popen = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=cwd,
                env=kernel_env,
                start_new_session=True,
                # unsandboxed, the kernel binds in /proc/self/fd/N of a deep job directory
                pass_fds=plan.pass_fds if plan else (() if socket_fd is None else (socket_fd,)),
                # only the child can set its parent-death signal; the setup calls no locks
                preexec_fn=child_setup(limits, plan),  # noqa: PLW1509
            )
    except (OSError, subprocess.SubprocessError, ValueError) as exc:
        if socket_fd is not None:
            os.close(socket_fd)
        detail = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise KernelStartError(f"The kernel could not be started ({argv[0]}): {detail}.") from exc
    finally:
        if plan is not None:
            plan.close_fds()
    return KernelProcess(popen, info, log_path, socket_dir, socket_fd, sandboxed)
