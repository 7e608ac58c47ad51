"""The runner's side of a kernel fork server (:mod:`analysis.zygote`): start it, fork kernels from it.

A :class:`Zygote` serves one pool key: it runs in the sandbox a cold kernel of that key would
run in (same interpreter, same read-only folders, the same bubblewrap options but one: it may
create user namespaces, which it needs to give each kernel its own), with the key's pool
folder at :data:`analysis.zygote.JOBS`. It is launched like a kernel (from the pool's thread,
with ``PR_SET_PDEATHSIG``), so it and every kernel it forked die with the pool's owner.

:meth:`Zygote.fork` returns a :class:`~analysis.runner.kernels.KernelProcess` like
:func:`~analysis.runner.kernels.launch_kernel`'s: its process is the kernel's keeper (a child of
the zygote, found by its pid in the zygote's PID namespace), which ends as the kernel ends;
the zygote reaps it and reports its exit status.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import psutil

from analysis.errors import KernelStartError
from analysis.runner import sandbox as sandboxing
from analysis.runner.kernels import (
    KernelProcess,
    child_setup,
    children,
    connection_file,
    descendants,
    kernel_args,
    kernel_limits,
)

__all__ = ["ZYGOTE_ENV", "Zygote"]

#: Set in a zygote's sandbox: nothing it imports may start a thread (a fork keeps only one).
#: PyArrow's jemalloc would start a background purging thread, OpenBLAS a pool of workers.
ZYGOTE_ENV = {"JE_ARROW_MALLOC_CONF": "background_thread:false", "OPENBLAS_NUM_THREADS": "1"}
_JOBS = Path("/jobs")  # analysis.zygote.JOBS (not imported: the runner does not import IPython)


class _Child:
    """A kernel's keeper process, as :class:`~analysis.runner.kernels.ProcessHandle`."""

    def __init__(self, zygote: Zygote, pid: int, inner_pid: int) -> None:
        self.pid, self.inner_pid, self.zygote = pid, inner_pid, zygote
        self.returncode: int | None = None

    def poll(self) -> int | None:
        if self.returncode is None and not _running(self.pid):  # it stays a zombie until we reap it
            self.returncode = self.zygote.wait(self.inner_pid)
        return self.returncode

    def wait(self) -> int:
        # polled, not a blocking request: the zygote would wait for this keeper to end (a dying
        # kernel's memory to be freed, its namespaces torn down) instead of forking other kernels
        while self.poll() is None:
            time.sleep(0.002)
        assert self.returncode is not None
        return self.returncode

    def find_kernel(self) -> int | None:
        """The kernel's host pid: the keeper's descendant that is PID 2 of its own namespace."""
        for pid in descendants(self.pid):
            if _ns_pids(pid)[-1:] == [2] and len(_ns_pids(pid)) == 3:
                return pid
        return None


def _running(pid: int) -> bool:
    """Whether ``pid`` runs (not a zombie), from its ``/proc`` state (psutil's costs ten times more)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            state = fh.read().rpartition(b")")[2].split(None, 1)[0]
    except (OSError, IndexError):
        return False
    return state not in (b"Z", b"X")


def _ns_pids(pid: int) -> list[int]:
    """The pid of ``pid`` in each PID namespace it is in, the host's first."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("NSpid:"):
                return [int(part) for part in line.split()[1:]]
    except (OSError, ValueError):
        pass
    return []


class Zygote:
    """A fork server for the kernels of one pool key, sandboxed, its folder ``folder``.

    Parameters
    ----------
    folder
        The key's pool folder (mode 0700, claimed by this runner); each kernel gets a folder in it.
    python
        The interpreter of the kernels; default the runner's.
    python_env
        The environment ``python`` belongs to, when it is not the runner's (bound read-only).
    start_timeout_s
        How long the zygote may take to import before it is given up.
    """

    def __init__(
        self,
        folder: Path,
        *,
        python: str | None = None,
        python_env: Path | None = None,
        start_timeout_s: float = 60.0,
    ) -> None:
        self.folder = folder
        #: The job directories of its kernels that are not discarded yet (kept by the pool).
        self.kernels: set[Path] = set()
        self._lock = threading.Lock()
        self._server_pid: int | None = None
        sandboxing.prepare_job_dir(folder)
        plan = sandboxing.plan(
            [python or sys.executable, "-m", "analysis.zygote"],
            job_dir=folder,
            max_tmp_bytes=64 * 1024**2,
            read_only=[python_env] if python_env is not None else [],
            mount_at=_JOBS,
            user_namespaces=True,
            env=ZYGOTE_ENV,
        )
        try:
            with (folder / "zygote.log").open("wb") as log:
                self.popen = subprocess.Popen(
                    plan.argv,
                    stdin=subprocess.PIPE,
                    stdout=subprocess.PIPE,
                    stderr=log,
                    env=plan.env,
                    start_new_session=True,
                    pass_fds=plan.pass_fds,
                    preexec_fn=child_setup({}, plan),  # noqa: PLW1509
                )
        except (OSError, subprocess.SubprocessError) as exc:
            raise KernelStartError(f"The kernel zygote could not be started: {exc}.") from exc
        finally:
            plan.close_fds()
        ready = self._read(start_timeout_s)
        if not ready.get("ready"):
            self.close()
            raise KernelStartError(f"The kernel zygote did not start: {self.log_tail()}")

    def is_alive(self) -> bool:
        """Whether the zygote still runs."""
        return self.popen.poll() is None

    def log_tail(self, max_bytes: int = 2000) -> str:
        """The end of what the zygote wrote to its stderr."""
        try:
            return (self.folder / "zygote.log").read_bytes()[-max_bytes:].decode("utf-8", "replace").strip()
        except OSError:
            return ""

    def fork(
        self,
        job_dir: Path,
        *,
        max_memory_bytes: int | None = None,
        max_cpu_s: int | None = None,
        max_file_bytes: int | None = None,
        max_processes: int | None = None,
        max_tmp_bytes: int | None = None,
        warm_up: bool = False,
    ) -> KernelProcess:
        """Start a kernel in ``job_dir`` (a new folder directly in :attr:`folder`), with these limits
        (``warm_up``: as :func:`~analysis.runner.kernels.launch_kernel`'s)."""
        if job_dir.parent != self.folder:
            raise ValueError(f"A zygote's kernel folder must be in {self.folder}, not {job_dir}.")
        info, socket_dir, socket_fd = connection_file(job_dir, sandboxed=True)
        sandboxing.prepare_job_dir(job_dir)
        request = {
            "fork": job_dir.name,
            "argv": [
                "-f",
                "/job/kernel.json",
                *kernel_args(max_processes, warm_up=sandboxing.JOB_DIR if warm_up else None),
            ],
            "limits": kernel_limits(max_memory_bytes, max_cpu_s, max_file_bytes),
            "max_tmp_bytes": max_tmp_bytes,
        }
        answer = self._request(request)
        pid = answer.get("pid")
        host_pid = self._host_pid(pid) if isinstance(pid, int) else None
        if host_pid is None or not isinstance(pid, int):
            if socket_fd is not None:
                os.close(socket_fd)
            raise KernelStartError(f"The zygote could not fork a kernel: {answer.get('error', 'no pid')}.")
        child = _Child(self, host_pid, pid)
        return KernelProcess(
            child,
            info,
            job_dir / "kernel.log",
            socket_dir,
            socket_fd,
            sandboxed=True,
            find_kernel=child.find_kernel,
        )

    def wait(self, inner_pid: int) -> int | None:
        """Reap a kernel's keeper (by its pid in the zygote's namespace) if it has ended: its exit
        status, or ``None`` while it runs."""
        answer = self._request({"wait": inner_pid})
        if "error" in answer:  # already reaped, or the zygote is gone (its kernels with it)
            return -signal.SIGKILL
        status = answer.get("status")
        return status if isinstance(status, int) else None

    def close(self) -> None:
        """Stop the zygote (its kernels die with it: they are in its PID namespace).

        It is asked to end (its stdin closes) and killed if it has not within two seconds.
        """
        with self._lock:
            for pipe in (self.popen.stdin, self.popen.stdout):
                if pipe is not None:
                    pipe.close()
        try:
            self.popen.wait(timeout=2.0)
        except subprocess.TimeoutExpired:
            try:
                os.killpg(self.popen.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
            self.popen.wait()

    def _host_pid(self, inner_pid: int) -> int | None:
        if self._server_pid is None:  # the zygote's Python process, below bubblewrap
            for pid in descendants(self.popen.pid):
                try:
                    if psutil.Process(pid).cmdline()[1:3] == ["-m", "analysis.zygote"]:
                        self._server_pid = pid
                        break
                except psutil.Error:
                    continue
        for pid in children(self._server_pid) if self._server_pid is not None else []:
            if _ns_pids(pid)[1:2] == [inner_pid]:
                return pid
        return None

    def _request(self, request: dict[str, Any]) -> dict[str, Any]:
        with self._lock:
            if self.popen.stdin is None or self.popen.stdin.closed or self.popen.poll() is not None:
                return {"error": "the zygote has ended"}
            try:
                self.popen.stdin.write(json.dumps(request).encode() + b"\n")
                self.popen.stdin.flush()
            except OSError:
                return {"error": "the zygote has ended"}
            return self._read(None)

    def _read(self, timeout_s: float | None) -> dict[str, Any]:
        assert self.popen.stdout is not None
        if timeout_s is not None:
            give_up = time.monotonic() + timeout_s
            import select

            while not select.select([self.popen.stdout], [], [], 0.1)[0]:
                if time.monotonic() > give_up or self.popen.poll() is not None:
                    return {}
        line = self.popen.stdout.readline()
        try:
            answer = json.loads(line) if line else {"error": "the zygote has ended"}
        except ValueError:
            answer = {"error": f"the zygote answered {line[:200]!r}"}
        return answer if isinstance(answer, dict) else {"error": "bad answer"}
