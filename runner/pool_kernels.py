"""Making a kernel pool's kernels: launched (forked from a zygote per key, or one by one) and warm.

A sandboxed pooled kernel is forked from its key's zygote (:mod:`analysis.runner.zygote`: same
sandbox and limits as a cold kernel, imports done once), in a job directory of its own in the
zygote's folder under its project's ``analysis/temp``; an unsandboxed one (or one whose zygote
cannot start) is started as a cold one (:func:`~analysis.runner.kernels.launch_kernel`). Either
way it is told to warm up as it starts (``--analysis-warm-up``: the imports of a job and the
job's locked-down DuckDB connection), and a kernel is warm once it has answered on shell and
iopub; the connected client is kept for the job that takes it.

:class:`KernelMaker` is used by :class:`~analysis.runner.pool.KernelPool`'s start threads, which
call it side by side: a key's zygote is made once, under a lock.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from analysis.runner.jobdirs import claim_job_dir
from analysis.runner.kernel_messages import connected
from analysis.runner.kernels import KernelProcess, descendants, launch_kernel
from analysis.runner.zygote import Zygote

if TYPE_CHECKING:
    from analysis.runner.deps import EnvironmentLease

__all__ = ["KernelMaker", "PoolKey", "WarmKernel"]

#: The launch settings a zygote's kernel gets at its fork (the others are the zygote's own).
_FORK_LIMITS = ("max_memory_bytes", "max_cpu_s", "max_file_bytes", "max_processes", "max_tmp_bytes")

#: How often a key's kernels have their PSS measured again (the others get the last measure).
_PSS_EVERY_S = 5.0

#: The pool's key of a kernel: project, projects root, and every launch setting.
PoolKey = tuple[str, str, tuple[tuple[str, str], ...]]


@dataclass
class WarmKernel:
    """A warmed kernel waiting for its job, the job directory it owns, and its environment's lease."""

    kernel: KernelProcess
    job_dir: Path
    #: A connected ``AsyncKernelClient`` that has seen the kernel answer on shell and iopub; the
    #: job takes it (:meth:`take_client`) instead of connecting and waiting for the kernel again.
    client: Any = None
    #: The zygote it was forked from, if any.
    zygote: Zygote | None = None
    pss_bytes: int = 0
    idle_since: float = field(default_factory=time.monotonic)
    lease: EnvironmentLease | None = None
    _cleanups: list[Callable[[], None]] = field(default_factory=list, repr=False)

    def on_discard(self, cleanup: Callable[[], None]) -> None:
        """Have :meth:`discard` call ``cleanup`` first (the job's broker: stopped off the job's path)."""
        self._cleanups.append(cleanup)

    def signal_kill(self) -> None:
        """SIGKILL the kernel's process group now (a sandbox's whole PID namespace ends with it)."""
        try:
            os.killpg(self.kernel.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass

    def take_client(self) -> Any:
        """The ready client of the kernel, handed over once (``None`` after)."""
        client, self.client = self.client, None
        return client

    def discard(self) -> None:
        """Kill the kernel and remove its job directory, then let go of its environment."""
        try:
            while self._cleanups:
                self._cleanups.pop()()
            client = self.take_client()
            if client is not None:
                client.stop_channels()
            self.kernel.kill()
            self.kernel.cleanup()
        finally:
            shutil.rmtree(self.job_dir, ignore_errors=True)
            if self.zygote is not None:
                self.zygote.kernels.discard(self.job_dir)
            if self.lease is not None:
                self.lease.release()


class KernelMaker:
    """Launches and warms the kernels of a pool (see the module's documentation).

    Parameters
    ----------
    start_timeout_s
        How long a kernel (or a zygote) may take to start and warm up before it is given up.
    zygotes
        Fork sandboxed kernels from a zygote per key; ``False``: start each as a cold one.
    stats
        The pool's counters: ``zygotes`` counts the zygotes started.
    """

    def __init__(self, start_timeout_s: float, *, zygotes: bool, stats: dict[str, int]) -> None:
        self.start_timeout_s = start_timeout_s
        self.zygotes = zygotes
        self.stats = stats
        #: Why the last zygote could not start (its key's kernels then start one by one).
        self.zygote_error: str | None = None
        self._zygotes: dict[PoolKey, Zygote | None] = {}
        self._zygote_lock = threading.Lock()
        import zmq.asyncio

        # one zmq context for the kernels' clients, whichever start thread connects them; a job
        # closing the client it took does not pay for terminating a context
        self._context: Any = zmq.asyncio.Context()
        self._pss_measured: dict[PoolKey, tuple[float, int]] = {}

    def forking(self, key: PoolKey) -> bool:
        """Whether ``key``'s kernels are forked from a live zygote (a fifth of a cold start)."""
        zygote = self._zygotes.get(key)
        return zygote is not None and zygote.is_alive()

    def launch(
        self,
        key: PoolKey,
        project_id: str,
        root: Path,
        launch: dict[str, Any],
        lease: EnvironmentLease | None,
    ) -> WarmKernel | None:
        """Start a kernel of ``key`` (it warms up as it starts); ``None`` if it could not start
        (``lease``, the kernel's hold on its environment, is then released)."""
        zygote = self._zygote(key, project_id, root, launch)
        parent = root / project_id / "analysis" / "temp" if zygote is None else zygote.folder
        job_dir = parent / f"pool-{uuid.uuid4().hex[:16]}"
        try:
            job_dir.mkdir(mode=0o700, parents=True)
            claim_job_dir(job_dir)
            if zygote is not None:
                limits = {name: launch.get(name) for name in _FORK_LIMITS}
                kernel = zygote.fork(job_dir, warm_up=True, **limits)
            else:
                kernel = launch_kernel(job_dir, warm_up=True, **launch)
        except Exception:  # its job will start cold instead
            shutil.rmtree(job_dir, ignore_errors=True)
            if lease is not None:
                lease.release()
            return None
        if zygote is not None:
            zygote.kernels.add(job_dir)
        return WarmKernel(kernel, job_dir, zygote=zygote, lease=lease)

    def warm(self, kernels: list[WarmKernel]) -> list[bool]:
        """Wait for each kernel to answer; whether each is ready for a job (keeping its client)."""
        # a loop per batch, closed after it: the kept clients' sockets then register with the loop
        # of the job that takes them, and nothing in this thread watches them any more
        loop = asyncio.new_event_loop()
        try:
            return loop.run_until_complete(self._warm_all(kernels))
        finally:
            loop.close()

    def pss(self, key: PoolKey, warm: WarmKernel) -> int:
        """A new kernel's PSS: measured for one kernel of a key every few seconds (reading its
        ``smaps_rollup`` costs milliseconds), the key's last measure for the others."""
        measured = self._pss_measured.get(key)
        if measured is None or time.monotonic() - measured[0] > _PSS_EVERY_S:
            measured = (time.monotonic(), _pss(warm.kernel))
            self._pss_measured[key] = measured
        return measured[1]

    def _zygote(self, key: PoolKey, project_id: str, root: Path, launch: dict[str, Any]) -> Zygote | None:
        """The key's zygote, started if need be; ``None``: launch kernels one by one (unsandboxed,
        zygotes off, or the zygote cannot start here: :attr:`zygote_error` says why)."""
        if not (self.zygotes and launch.get("sandboxed")):
            return None
        with self._zygote_lock:  # the start threads ask side by side: one zygote per key
            if key in self._zygotes and self._zygotes[key] is None:  # it could not start here
                return None
            zygote = self._zygotes.get(key)
            if zygote is not None and zygote.is_alive():
                return zygote
            if zygote is not None:  # it died: its kernels died with it
                self._close_zygote(key)
            folder = root / project_id / "analysis" / "temp" / f"zygote-{uuid.uuid4().hex[:8]}"
            try:
                folder.mkdir(mode=0o700, parents=True)
                claim_job_dir(folder)
                zygote = Zygote(
                    folder,
                    python=launch.get("python"),
                    python_env=launch.get("python_env"),
                    start_timeout_s=self.start_timeout_s,
                )
            except Exception as exc:
                shutil.rmtree(folder, ignore_errors=True)
                self.zygote_error = f"{type(exc).__name__}: {exc}"
                self._zygotes[key] = None
                return None
            self._zygotes[key] = zygote
            self.stats["zygotes"] += 1
            return zygote

    def _close_zygote(self, key: PoolKey) -> None:
        zygote = self._zygotes.pop(key, None)
        if zygote is not None:
            zygote.close()
            shutil.rmtree(zygote.folder, ignore_errors=True)

    def close_unused(self, wanted: Callable[[PoolKey], bool]) -> None:
        """Stop the zygotes of keys no longer ``wanted`` once none of their kernels is in use."""
        with self._zygote_lock:
            unused = [
                key
                for key, zygote in list(self._zygotes.items())
                if not wanted(key) and (zygote is None or not zygote.kernels)
            ]
            for key in unused:
                self._close_zygote(key)

    def close(self) -> None:
        """Stop every zygote (their kernels die with them) and the clients' context."""
        with self._zygote_lock:
            for key in list(self._zygotes):
                self._close_zygote(key)
        self._context.destroy(linger=0)

    async def _warm_all(self, kernels: list[WarmKernel]) -> list[bool]:
        return list(await asyncio.gather(*(self._warm_up(warm) for warm in kernels)))

    async def _warm_up(self, warm: WarmKernel) -> bool:
        """Wait for the kernel to answer (it warmed up as it started); whether it is ready for a job."""
        from jupyter_client.asynchronous.client import AsyncKernelClient

        client: Any = AsyncKernelClient(context=self._context)
        client.load_connection_info(warm.kernel.connection_info)
        # no heartbeat thread: jupyter_client's spins if stopped before it ran; the process is watched
        client.start_channels(hb=False)
        try:
            await connected(client, warm.kernel, self.start_timeout_s)
            ok = warm.kernel.is_alive()
        except Exception:  # a kernel that does not start (or warm up) is not pooled
            ok = False
        if ok:
            warm.client = client
        else:
            client.stop_channels()
        return ok


def _pss(kernel: KernelProcess) -> int:
    """Proportional set size of the kernel's process tree (shared pages split among sharers)."""
    total = 0
    for pid in [kernel.pid, *descendants(kernel.pid)]:
        try:
            with open(f"/proc/{pid}/smaps_rollup") as fh:
                for line in fh:
                    if line.startswith("Pss:"):
                        total += int(line.split()[1]) * 1024
                        break
        except (OSError, ValueError, IndexError):
            continue
    return total
