"""A pool of warm job kernels: started ahead of demand, each handed to one job, then discarded.

Pooled kernels are made by :mod:`~analysis.runner.pool_kernels` (forked from a zygote per key,
or started one by one; warm as they answer). A job that takes one adopts its job directory as
its own and its connected client: the runner then writes the job document there and serves the
job's broker in it, and the kernel (which sees the folder as ``/job`` in its sandbox) runs the
job as a cold kernel would. After its job the kernel is SIGKILLed; the pool's thread stops its
broker, reaps it and removes its directory.

Kernels are pooled per *key*: the project, the projects root, the interpreter and every launch
setting (limits, sandbox, working directory, environment), so a kernel never serves another
project or other limits. One thread, started with the pool and living as long as it, plans and
watches the kernels; it hands each batch of kernels to start to one of a few start threads,
which launch and warm their batches side by side and live as long as the pool too (a kernel
gets ``PR_SET_PDEATHSIG`` from the thread that launched it, so kernels die with the pool's owner
however it ends). The pool refills each key that was asked for in the background, replaces
kernels that died while idle, drops kernels idle longer than ``idle_timeout_s``, stays within
``max_pool_bytes`` (measured PSS of the idle kernels) and stops growing, and sheds idle kernels,
when the machine has less than ``min_available_bytes`` available.

:meth:`KernelPool.acquire` never waits: with no warm kernel for the key, the job starts cold.
:meth:`KernelPool.acquire_async` may wait for a kernel that is starting (see there).

An analysis with its own dependencies runs from a cached environment: its launch settings name
that environment's interpreter and folder, so its kernels are pooled apart, each holding a lease
on the environment, for at most ``max_environments`` environments
(:mod:`~analysis.runner.pool_environments`).
"""

from __future__ import annotations

import asyncio
import functools
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import psutil

from analysis.runner.pool_environments import PoolEnvironments
from analysis.runner.pool_kernels import KernelMaker, PoolKey, WarmKernel

if TYPE_CHECKING:
    from analysis.runner.deps import EnvironmentLease

__all__ = ["KernelPool", "PoolKey", "WarmKernel"]

#: Batches of kernels that start side by side (each warms its kernels in a loop of its own).
_PARALLEL_BATCHES = 4

#: What a kernel is taken to cost before one was measured (a cold kernel's RSS).
_FIRST_ESTIMATE = 150 * 1024**2


@dataclass
class _Planned:
    """A kernel the pool's thread decided to start, and the lease on its environment."""

    key: PoolKey
    project_id: str
    root: Path
    launch: dict[str, Any]
    lease: EnvironmentLease | None = None


def _settle(woken: asyncio.Future[str], why: str) -> None:
    if not woken.done():
        woken.set_result(why)


def pool_key(project_id: str, root: Path, launch: dict[str, Any]) -> PoolKey:
    """The key of the kernels a job with these launch settings may take."""
    settings = tuple(sorted((name, repr(value)) for name, value in launch.items()))
    return (project_id, _resolved(root) if root.is_absolute() else str(root.resolve()), settings)


@functools.lru_cache(maxsize=64)
def _resolved(root: Path) -> str:
    """An absolute ``root`` resolved, once (a job asks for its key several times; a relative
    root is resolved each time, as the working directory may change)."""
    return str(root.resolve())


class KernelPool:
    """Warm kernels per project and launch settings (README, "Warm kernels").

    Parameters
    ----------
    size
        Warm kernels kept ready per key that jobs asked for.
    idle_timeout_s
        A key with no job for this long loses its warm kernels (they are started again on demand).
    max_pool_bytes
        Memory budget of the idle kernels (their PSS); ``None``: no budget.
    min_available_bytes
        Below this much available memory the pool starts no kernel and sheds idle ones.
    start_timeout_s
        How long a pooled kernel may take to start and warm up before it is given up.
    max_environments
        How many dependency environments (README, "Dependencies per analysis") keep warm kernels
        at once, the most recently used; the runtime's own environment is not counted.
    zygotes
        Fork sandboxed kernels from a zygote per key (:mod:`analysis.runner.zygote`), which
        imports once (the default: README, "Warm kernels"); ``False``: start each kernel as a
        cold one (a process of its own).
    """

    def __init__(
        self,
        size: int,
        *,
        idle_timeout_s: float = 600.0,
        max_pool_bytes: int | None = None,
        min_available_bytes: int = 1024**3,
        start_timeout_s: float = 60.0,
        max_environments: int = 4,
        zygotes: bool = True,
    ) -> None:
        if size < 1:
            raise ValueError(f"A kernel pool needs a size of at least 1, not {size}.")
        self._environments = PoolEnvironments(max_environments)
        self.size = size
        self.idle_timeout_s = idle_timeout_s
        self.max_pool_bytes = max_pool_bytes
        self.min_available_bytes = min_available_bytes
        self.start_timeout_s = start_timeout_s
        self._idle: dict[PoolKey, list[WarmKernel]] = {}
        self._wanted: dict[PoolKey, tuple[str, Path, dict[str, Any], float]] = {}
        self._lock = threading.Condition()
        self._closed = False
        self._dead: list[WarmKernel] = []
        self._finished = False
        self._starting: dict[PoolKey, int] = {}
        #: Jobs waiting for a kernel of the key.
        self._waiting: dict[PoolKey, int] = {}
        #: Kernels to fork now for jobs waiting for one (counted in ``_starting`` already).
        self._demand: dict[PoolKey, int] = {}
        self._wakers: dict[PoolKey, list[tuple[asyncio.AbstractEventLoop, asyncio.Future[str]]]] = {}
        #: Batches of kernels starting side by side, each in a thread of its own.
        self._batches = ThreadPoolExecutor(_PARALLEL_BATCHES, thread_name_prefix="analysis-kernel-start")
        #: Seconds a kernel took to start and warm up (the last batch): about a cold start.
        self.start_s = 1.0
        self.stats = {
            "warm": 0,
            "cold": 0,
            "started": 0,
            "replaced": 0,
            "shed": 0,
            "evicted": 0,
            "zygotes": 0,
        }
        self._maker = KernelMaker(start_timeout_s, zygotes=zygotes, stats=self.stats)
        self._thread = threading.Thread(target=self._run, name="analysis-kernel-pool", daemon=True)
        self._thread.start()

    # -- the jobs' side ------------------------------------------------------------------------

    def want(
        self, project_id: str, root: Path, launch: dict[str, Any], *, lease: EnvironmentLease | None = None
    ) -> PoolKey:
        """Keep warm kernels for this key (refilled in the background); its key.

        A key whose kernels run from a dependency environment (``launch["python_env"]``) is kept
        only with the ``lease`` of a job on that environment: each new kernel takes its own.
        """
        key = pool_key(project_id, root, launch)
        with self._lock:
            if self._closed or not self._environments.remember(key, launch, lease):
                return key
            self._wanted[key] = (project_id, root, dict(launch), time.monotonic())
            for evicted in self._environments.over_limit(self._wanted):
                self.stats["evicted"] += len(self._idle.get(evicted, []))
                self._dead += self._forget(evicted)
            self._lock.notify_all()
        return key

    def acquire(
        self,
        project_id: str,
        root: Path,
        launch: dict[str, Any],
        *,
        count_cold: bool = True,
        lease: EnvironmentLease | None = None,
    ) -> WarmKernel | None:
        """A warm kernel for this key, now, or ``None`` (the job then starts cold); never waits.

        ``lease``: the job's lease on its dependency environment, if it has one (see :meth:`want`).
        """
        key = self.want(project_id, root, launch, lease=lease)
        warm = self._take(key)
        if warm is None:
            with self._lock:
                self.stats["cold"] += count_cold
        return warm

    def _take(self, key: PoolKey) -> WarmKernel | None:
        """An idle live kernel of ``key`` (dead ones go to be discarded), or ``None``."""
        with self._lock:
            idle = self._idle.get(key, [])
            while idle:
                warm = idle.pop(0)
                if warm.kernel.is_alive():
                    self.stats["warm"] += 1
                    self._lock.notify_all()
                    return warm
                self._discard_later(warm)
            self._lock.notify_all()
        return None

    def retire(self, warm: WarmKernel) -> None:
        """Take back a kernel whose job ended: the pool's thread kills it and removes its directory."""
        warm.signal_kill()
        with self._lock:
            if not self._finished:
                self._dead.append(warm)
                self._lock.notify_all()
                return
        warm.discard()

    async def acquire_async(
        self, project_id: str, root: Path, launch: dict[str, Any], *, lease: EnvironmentLease | None = None
    ) -> WarmKernel | None:
        """As :meth:`acquire`, but a job may wait for a kernel that is starting.

        When its key has a zygote, a job that finds no idle kernel has one forked for it (a
        fifth of a cold start's CPU, started at once) and takes the first kernel of its key that
        is ready; it starts cold only if the pool cannot start one (the zygote died, the memory
        budget, a failed start). Without a zygote a pooled kernel costs what a cold start costs:
        a job waits at most as long as a kernel takes to start (:attr:`start_s`), and only while a
        kernel of its key is starting that no other waiting job counts on; else it gets ``None``
        at once and starts cold.
        """
        warm = self.acquire(project_id, root, launch, count_cold=False, lease=lease)
        if warm is None:
            warm = await self._wait_for_starting(project_id, root, launch, lease)
        if warm is None:
            with self._lock:
                self.stats["cold"] += 1
        return warm

    async def _wait_for_starting(
        self, project_id: str, root: Path, launch: dict[str, Any], lease: EnvironmentLease | None
    ) -> WarmKernel | None:
        key = pool_key(project_id, root, launch)
        loop = asyncio.get_running_loop()
        with self._lock:
            forking = self._maker.forking(key)
            if self._waiting.get(key, 0) >= self._starting.get(key, 0):
                if not forking:
                    return None
                # every kernel starting is someone else's: have one forked for this job
                self._demand[key] = self._demand.get(key, 0) + 1
                self._starting[key] = self._starting.get(key, 0) + 1
                self._lock.notify_all()
            self._waiting[key] = self._waiting.get(key, 0) + 1
            give_up = time.monotonic() + (self.start_timeout_s if forking else self.start_s)
        try:
            while True:
                woken: asyncio.Future[str] = loop.create_future()
                with self._lock:
                    self._wakers.setdefault(key, []).append((loop, woken))
                try:
                    warm = self._take(key)
                    if warm is not None:
                        return warm
                    why = await asyncio.wait_for(woken, max(0.0, give_up - time.monotonic()))
                except TimeoutError:
                    return None
                finally:
                    with self._lock:
                        if (loop, woken) in self._wakers.get(key, []):
                            self._wakers[key].remove((loop, woken))
                if why != "ready" or (not forking and not self._starting.get(key, 0)):
                    return self._take(key)
        finally:
            with self._lock:
                self._waiting[key] -= 1

    def _wake(self, key: PoolKey, why: str) -> None:
        """Under the lock: wake the jobs waiting for a kernel of ``key`` (``ready``: one is idle;
        anything else: none is coming for them, they start cold)."""
        for loop, woken in self._wakers.pop(key, []):
            try:
                loop.call_soon_threadsafe(_settle, woken, why)
            except RuntimeError:  # its loop has ended (and the job with it)
                pass

    @property
    def zygotes(self) -> bool:
        """Whether sandboxed kernels are forked from a zygote (set it before the first job)."""
        return self._maker.zygotes

    @zygotes.setter
    def zygotes(self, value: bool) -> None:
        self._maker.zygotes = value

    @property
    def zygote_error(self) -> str | None:
        """Why the last zygote could not start (its key's kernels then start one by one)."""
        return self._maker.zygote_error

    def idle_count(self, key: PoolKey | None = None) -> int:
        """How many warm kernels wait (for ``key``, or in all)."""
        with self._lock:
            if key is not None:
                return len(self._idle.get(key, []))
            return sum(len(kernels) for kernels in self._idle.values())

    def idle_kernels(self) -> list[WarmKernel]:
        """The idle warm kernels (a copy of the list; for inspection and tests)."""
        with self._lock:
            return [warm for kernels in self._idle.values() for warm in kernels]

    def close(self) -> None:
        """Stop refilling and kill every idle kernel.

        Kernels handed to jobs that still run die too (they get the parent-death signal of the
        pool's start threads, which end with it): close the pool once its jobs have ended.
        """
        with self._lock:
            self._closed = True
            self._lock.notify_all()
        if self._thread is not threading.current_thread():
            self._thread.join()

    def __enter__(self) -> KernelPool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- the pool's thread ---------------------------------------------------------------------

    def _is_wanted(self, key: PoolKey) -> bool:
        with self._lock:
            return key in self._wanted

    def _discard_later(self, warm: WarmKernel) -> None:
        self._dead.append(warm)
        self.stats["replaced"] += 1

    def _forget(self, key: PoolKey) -> list[WarmKernel]:
        """Under the lock: stop keeping ``key`` warm; its idle kernels, to be discarded (with their
        leases), and no fork for its waiting jobs, who are woken to start cold."""
        self._wanted.pop(key, None)
        self._environments.forget(key)
        self._starting[key] = self._starting.get(key, 0) - self._demand.pop(key, 0)
        self._wake(key, "gone")
        return self._idle.pop(key, [])

    def _hold_environments(self, plan: list[_Planned]) -> list[_Planned]:
        """Under the lock: the planned kernels whose environment's lease could be taken (each
        entry then carries its kernel's lease).

        The key of a kernel whose environment is gone (or being pruned) is forgotten until a job
        leases the environment again.
        """
        kept = []
        for entry in plan:
            ok, lease = self._environments.hold(entry.key, entry.launch)
            if ok:
                entry.lease = lease
                kept.append(entry)
            else:
                self._starting[entry.key] -= 1
                self._dead += self._forget(entry.key)
        return kept

    def _run(self) -> None:
        try:
            while True:
                with self._lock:
                    if self._closed:
                        break
                    self._lock.wait(0.25)
                    if self._closed:
                        break
                    dead, self._dead = self._dead, []
                    shed = self._shed()
                    plan = self._hold_environments(self._plan())
                for warm in dead + shed:
                    warm.discard()
                self._maker.close_unused(self._is_wanted)
                if plan:
                    self._batches.submit(self._start, plan)
        finally:
            with self._lock:
                for key in list(self._wakers):
                    self._wake(key, "closed")
            self._batches.shutdown(wait=True)
            with self._lock:
                left = [warm for kernels in self._idle.values() for warm in kernels] + self._dead
                self._idle.clear()
                self._dead = []
                self._finished = True
            for warm in left:
                warm.discard()
            self._maker.close()

    def _shed(self) -> list[WarmKernel]:
        """Under the lock: take out idle kernels that died, idled too long, or must go for memory."""
        now, out = time.monotonic(), []
        for key in list(self._wanted):
            if now - self._wanted[key][3] > self.idle_timeout_s:
                out += self._forget(key)
        for kernels in self._idle.values():
            for warm in [w for w in kernels if not w.kernel.is_alive()]:
                kernels.remove(warm)
                out.append(warm)
                self.stats["replaced"] += 1
        if psutil.virtual_memory().available < self.min_available_bytes:
            for kernels in self._idle.values():
                while kernels:
                    out.append(kernels.pop())
                    self.stats["shed"] += 1
        return out

    def _plan(self) -> list[_Planned]:
        """Under the lock: the kernels to start now (within the memory budget and what is available).

        A key keeps ``size`` kernels idle or starting, and forks one more for each job waiting
        for a kernel when every kernel starting is already another waiting job's.
        """
        if psutil.virtual_memory().available < self.min_available_bytes:
            for key in list(self._wanted):
                self._starting[key] = self._starting.get(key, 0) - self._demand.pop(key, 0)
                self._wake(key, "full")
            return []
        idle = [w for kernels in self._idle.values() for w in kernels]
        used = sum(w.pss_bytes for w in idle)
        each = max((w.pss_bytes for w in idle), default=_FIRST_ESTIMATE)
        plan: list[_Planned] = []
        for key, (project_id, root, launch, _) in self._wanted.items():
            demand = self._demand.pop(key, 0)  # already counted as starting
            refill = self.size - len(self._idle.get(key, [])) - (self._starting.get(key, 0) - demand)
            for extra in range(demand + max(0, refill)):
                if self.max_pool_bytes is not None and used + each > self.max_pool_bytes:
                    self._starting[key] -= max(0, demand - extra)  # its jobs will start cold
                    self._wake(key, "full")
                    break
                used += each
                plan.append(_Planned(key, project_id, root, launch))
                if extra >= demand:
                    self._starting[key] = self._starting.get(key, 0) + 1
        return plan

    def _start(self, plan: list[_Planned]) -> None:
        """In a thread of its own: launch the planned kernels, then warm each and make it available."""
        began = time.monotonic()
        ready: set[PoolKey] = set()
        try:
            ready = self._start_batch(plan)
        finally:
            with self._lock:
                for entry in plan:
                    self._starting[entry.key] -= 1
                for key in {entry.key for entry in plan}:
                    self._wake(key, "ready" if key in ready else "failed")
                self.start_s = max(0.5, time.monotonic() - began)
                self._lock.notify_all()

    def _start_batch(self, plan: list[_Planned]) -> set[PoolKey]:
        """Launch and warm the planned kernels; the keys that got a kernel ready."""
        started: list[tuple[PoolKey, WarmKernel]] = []
        for entry in plan:
            warm = self._maker.launch(entry.key, entry.project_id, entry.root, entry.launch, entry.lease)
            if warm is not None:
                started.append((entry.key, warm))
                with self._lock:
                    self.stats["started"] += 1
        ready: set[PoolKey] = set()
        for (key, warm), ok in zip(started, self._maker.warm([warm for _, warm in started]), strict=True):
            if not ok:
                warm.discard()
                continue
            warm.pss_bytes = self._maker.pss(key, warm)
            warm.idle_since = time.monotonic()
            with self._lock:
                if self._closed or key not in self._wanted:
                    self._dead.append(warm)
                    continue
                self._idle.setdefault(key, []).append(warm)
                ready.add(key)
                self._wake(key, "ready")
                self._lock.notify_all()
        return ready
