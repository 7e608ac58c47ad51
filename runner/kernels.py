"""Starting and stopping job kernels: the one place a kernel process is launched.

A kernel is ``python -m ipykernel_launcher`` from the runner's own environment (so a plain venv
install needs no kernelspec), talking over IPC sockets in the job directory (mode 0700), in a
process group of its own so that stopping it stops everything it started.
"""

from __future__ import annotations

import json
import os
import resource
import secrets
import signal
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil

from analysis.errors import KernelStartError

__all__ = ["KernelProcess", "launch_kernel"]

#: Longest path a Unix socket can bind on Linux (sun_path is 108 bytes, NUL included).
_MAX_SOCKET_PATH = 107
_PORTS = ("shell_port", "iopub_port", "stdin_port", "control_port", "hb_port")


@dataclass
class KernelProcess:
    """A running kernel: its process, connection info, and the folder of its sockets."""

    popen: subprocess.Popen[bytes]
    connection_info: dict[str, Any]
    log_path: Path
    socket_dir: Path
    owns_socket_dir: bool = False
    _group: int | None = field(default=None, repr=False)

    @property
    def pid(self) -> int:
        """The kernel's process id."""
        return self.popen.pid

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
        if self.is_alive():
            try:
                os.kill(self.pid, signal.SIGINT)
            except ProcessLookupError:
                pass

    def kill(self) -> None:
        """SIGKILL the kernel's whole process tree and reap it; safe to call twice."""
        victims: list[psutil.Process] = []
        try:
            victims = psutil.Process(self.pid).children(recursive=True)
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
        psutil.wait_procs(victims, timeout=2)

    def cleanup(self) -> None:
        """Remove the socket folder if it lives outside the job directory."""
        if self.owns_socket_dir:
            for path in self.socket_dir.iterdir():
                path.unlink(missing_ok=True)
            self.socket_dir.rmdir()


def _socket_dir(job_dir: Path) -> tuple[Path, bool]:
    """Where the IPC sockets go: the job directory, or a short private temp folder if its path is too long."""
    longest = len(str((job_dir / "k-5").resolve()).encode())
    if longest <= _MAX_SOCKET_PATH:
        return job_dir.resolve(), False
    return Path(tempfile.mkdtemp(prefix="analysis-k-")), True


def launch_kernel(
    job_dir: Path,
    *,
    cwd: Path | None = None,
    env: dict[str, str] | None = None,
    base_env: dict[str, str] | None = None,
    max_memory_bytes: int | None = None,
    max_cpu_s: int | None = None,
    python: str | None = None,
) -> KernelProcess:
    """Start an ipykernel for one job, with its sockets and files in ``job_dir``.

    Parameters
    ----------
    job_dir
        The job's private directory (mode 0700); it must exist.
    cwd
        Working directory of the kernel; default the runner's.
    env
        Extra environment variables for the kernel.
    base_env
        The environment the kernel starts from; default the runner's (``os.environ``).
    max_memory_bytes
        Address-space limit of the kernel (``RLIMIT_AS``): allocations past it raise MemoryError.
    max_cpu_s
        CPU-time limit of the kernel (``RLIMIT_CPU``): past it the kernel gets SIGXCPU.
    python
        The interpreter to run the kernel with (an analysis's own environment); default the runner's.
    """
    socket_dir, owns = _socket_dir(job_dir)
    info: dict[str, Any] = {name: i + 1 for i, name in enumerate(_PORTS)}
    info.update(
        ip=str(socket_dir / "k"),
        key=secrets.token_hex(32),
        transport="ipc",
        signature_scheme="hmac-sha256",
        kernel_name="analysis",
    )
    connection_file = job_dir / "kernel.json"
    fd = os.open(connection_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as fh:
        json.dump(info, fh)
    kernel_env = {
        **(os.environ if base_env is None else base_env),
        "IPYTHONDIR": str(job_dir / "ipython"),
        "PYDEVD_DISABLE_FILE_VALIDATION": "1",
        "JUPYTER_PLATFORM_DIRS": "1",
        **(env or {}),
    }
    argv = [
        python or sys.executable,
        "-m",
        "ipykernel_launcher",
        "-f",
        str(connection_file),
        "--HistoryManager.enabled=False",
        "--IPKernelApp.quiet=True",
    ]
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
            )
    except OSError as exc:
        if owns:
            socket_dir.rmdir()
        raise KernelStartError(f"The kernel could not be started ({argv[0]}): {exc.strerror}.") from exc
    kernel = KernelProcess(popen, info, log_path, socket_dir, owns)
    try:  # set at once, long before the kernel runs any analysis code (it is still importing)
        if max_memory_bytes is not None:
            resource.prlimit(popen.pid, resource.RLIMIT_AS, (max_memory_bytes, max_memory_bytes))
        if max_cpu_s is not None:
            resource.prlimit(popen.pid, resource.RLIMIT_CPU, (max_cpu_s, max_cpu_s + 5))
    except (OSError, ValueError) as exc:
        kernel.kill()
        kernel.cleanup()
        raise KernelStartError(f"The kernel's resource limits could not be set: {exc}.") from exc
    return kernel
