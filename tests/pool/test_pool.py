"""The kernel pool with real (sandboxed where bubblewrap works) kernels: handover, faults, cleanup."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import psutil
import pytest

from analysis.runner.pool import KernelPool, WarmKernel
from analysis.runner.sandbox import sandbox_available
from analysis.runner.service import AnalysisService

MODE = "on" if sandbox_available() is None else "off"
TRIVIAL = 'def run(ctx, parameters):\n    return ctx.query("select 1 as x").rows\n'


def wait_for(condition: Callable[[], bool], what: str, timeout_s: float = 90.0) -> None:
    give_up = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < give_up, f"timed out waiting for {what}"
        time.sleep(0.05)


def save(root: Path, name: str, source: str, project: str = "default") -> None:
    scripts = root / project / "analysis" / "scripts"
    scripts.mkdir(parents=True, exist_ok=True)
    (scripts / f"{name}.py").write_text(textwrap.dedent(source), encoding="utf-8")


@pytest.fixture
def service(root: Path, no_leftovers: None) -> Iterator[AnalysisService]:
    save(root, "trivial", TRIVIAL)
    with AnalysisService(root, pool_size=2, sandbox=MODE, timeout_s=60) as svc:
        yield svc


def pool_of(service: AnalysisService) -> KernelPool:
    assert service.pool is not None
    return service.pool


def warm(service: AnalysisService, count: int = 2, project: str = "default") -> list[WarmKernel]:
    service.warm_up(project)
    wait_for(lambda: pool_of(service).idle_count() >= count, f"{count} warm kernels")
    return pool_of(service).idle_kernels()


def test_default_service_has_no_pool(root: Path) -> None:
    assert AnalysisService(root).pool is None


def test_a_job_takes_a_warm_kernel_and_the_kernel_is_discarded(service: AnalysisService) -> None:
    kernels = warm(service)
    result = service.submit_analysis_job("trivial", {})
    assert result.success, result.error
    assert result.result == [{"x": 1}]
    assert pool_of(service).stats["warm"] == 1
    used = [k for k in kernels if k not in pool_of(service).idle_kernels()]
    assert len(used) == 1
    wait_for(lambda: not used[0].kernel.is_alive() and not used[0].job_dir.exists(), "the used kernel gone")


def test_a_job_takes_the_warm_kernels_ready_connection(service: AnalysisService) -> None:
    # the pool hands over the client that saw the kernel answer: the job does not connect again
    kernels = warm(service)
    assert all(k.client is not None for k in kernels)
    assert service.submit_analysis_job("trivial", {}).result == [{"x": 1}]
    used = [k for k in kernels if k not in pool_of(service).idle_kernels()]
    assert len(used) == 1 and used[0].client is None
    assert all(k.client is not None for k in pool_of(service).idle_kernels())


def test_pooled_duckdb_connection_is_locked_down(service: AnalysisService, root: Path) -> None:
    save(
        root,
        "escape",
        "def run(ctx, parameters):\n"
        "    return ctx.query(\"select * from read_text('/etc/hostname')\").rows\n",
    )
    warm(service)
    result = service.submit_analysis_job("escape", {})
    assert pool_of(service).stats["warm"] == 1
    assert not result.success
    assert "/etc/hostname" in (result.error or "")


def test_kernels_are_not_shared_across_projects_or_limits(service: AnalysisService, root: Path) -> None:
    save(root, "trivial", TRIVIAL, project="other")
    kernels = warm(service)
    assert service.submit_analysis_job("trivial", {}, project_id="other").success
    assert service.submit_analysis_job("trivial", {}, max_cpu_s=100).success
    idle = pool_of(service).idle_kernels()
    assert all(k in idle and k.kernel.is_alive() for k in kernels)  # the default project's, untouched


def test_kernel_killed_while_idle_is_replaced(service: AnalysisService) -> None:
    victim = warm(service)[0]
    pid = victim.kernel.kernel_pid()
    assert pid is not None
    os.kill(pid, signal.SIGKILL)
    wait_for(lambda: victim not in pool_of(service).idle_kernels(), "the dead kernel removed")
    wait_for(lambda: pool_of(service).idle_count() == 2, "a replacement")
    assert all(k.kernel.is_alive() for k in pool_of(service).idle_kernels())
    assert pool_of(service).stats["replaced"] >= 1
    assert service.submit_analysis_job("trivial", {}).success


def test_kernel_killed_while_handed_over_falls_back_to_cold(
    service: AnalysisService, monkeypatch: pytest.MonkeyPatch
) -> None:
    warm(service)
    pool = pool_of(service)
    acquire = pool.acquire

    def acquire_and_kill(*args: object, **kwargs: object) -> WarmKernel | None:
        taken = acquire(*args, **kwargs)  # type: ignore[arg-type]
        assert taken is not None
        taken.kernel.kill()
        return taken

    monkeypatch.setattr(pool, "acquire", acquire_and_kill)
    result = service.submit_analysis_job("trivial", {})
    assert result.success, result.error
    assert result.result == [{"x": 1}]


def test_kernel_killed_mid_job_is_reported_and_not_returned(service: AnalysisService, root: Path) -> None:
    save(
        root,
        "suicide",
        "import os, signal\ndef run(ctx, parameters):\n    os.kill(os.getpid(), signal.SIGKILL)\n",
    )
    kernels = warm(service)
    result = service.submit_analysis_job("suicide", {})
    assert result.error_type == "kernel_died", result.error
    assert pool_of(service).stats["warm"] == 1
    wait_for(lambda: pool_of(service).idle_count() == 2, "the pool refilled")
    assert len(set(map(id, pool_of(service).idle_kernels())) - set(map(id, kernels))) == 1
    assert service.submit_analysis_job("trivial", {}).success


def test_pooled_job_keeps_its_deadline(service: AnalysisService, root: Path) -> None:
    save(root, "slow", "import time\ndef run(ctx, parameters):\n    time.sleep(60)\n")
    warm(service)
    result = service.submit_analysis_job("slow", {}, timeout_s=1)
    assert pool_of(service).stats["warm"] == 1
    assert result.error_type == "timeout", result.error


def test_cancelled_pooled_job_leaves_nothing(service: AnalysisService, root: Path) -> None:
    save(root, "slow", "import time\ndef run(ctx, parameters):\n    time.sleep(60)\n")
    warm(service)

    async def cancel_midway() -> None:
        task = asyncio.create_task(service.submit_analysis_job_async("slow", {}))
        await asyncio.sleep(1.0)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(cancel_midway())
    assert pool_of(service).stats["warm"] == 1
    # closing the service (the fixture) and no_leftovers check that nothing runs and no folder is left


def test_burst_larger_than_the_pool_all_finish(service: AnalysisService) -> None:
    warm(service)

    async def burst() -> list[bool]:
        jobs = [service.submit_analysis_job_async("trivial", {}) for _ in range(6)]
        return [r.success for r in await asyncio.gather(*jobs)]

    assert asyncio.run(burst()) == [True] * 6
    stats = pool_of(service).stats
    assert stats["warm"] >= 1 and stats["warm"] + stats["cold"] == 6


OWNER = """
import sys, time
from analysis.runner.service import AnalysisService
svc = AnalysisService(sys.argv[1], pool_size=2, sandbox=sys.argv[2])
svc.warm_up()
while svc.pool.idle_count() < 2:
    time.sleep(0.05)
print(" ".join(str(k.kernel.kernel_pid()) for k in svc.pool.idle_kernels()), flush=True)
time.sleep(600)
"""


def test_owner_killed_leaves_no_kernel_running(root: Path, tmp_path: Path) -> None:
    script = tmp_path / "owner.py"
    script.write_text(OWNER, encoding="utf-8")
    owner = subprocess.Popen(
        [sys.executable, str(script), str(root), MODE], stdout=subprocess.PIPE, text=True
    )
    try:
        assert owner.stdout is not None
        pids = [int(pid) for pid in owner.stdout.readline().split()]
        assert len(pids) == 2 and all(psutil.pid_exists(pid) for pid in pids)
    finally:
        owner.kill()
        owner.wait()
        if owner.stdout is not None:
            owner.stdout.close()
    wait_for(lambda: not any(_running(pid) for pid in pids), "the pooled kernels to die", 10.0)


def _running(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def test_closing_the_pool_stops_idle_kernels(root: Path, no_leftovers: None) -> None:
    save(root, "trivial", TRIVIAL)
    svc = AnalysisService(root, pool_size=2, sandbox=MODE)
    kernels = warm(svc)
    svc.close()
    assert not any(k.kernel.is_alive() or k.job_dir.exists() for k in kernels)


def test_idle_pool_shrinks_after_idle_timeout(root: Path, no_leftovers: None) -> None:
    pool = KernelPool(2, idle_timeout_s=3.0)
    try:
        pool.want("default", root, {"sandboxed": MODE == "on"})
        wait_for(lambda: pool.stats["started"] == 2, "two kernels started")
        # no job comes: after the idle timeout the project's kernels are stopped, none restarted
        wait_for(lambda: not list(root.glob("*/analysis/temp/*")), "the idle kernels removed")
        assert pool.idle_count() == 0 and pool.stats["started"] == 2
    finally:
        pool.close()


def test_low_memory_sheds_idle_kernels(root: Path, no_leftovers: None) -> None:
    pool = KernelPool(2)
    try:
        pool.want("default", root, {"sandboxed": MODE == "on"})
        wait_for(lambda: pool.idle_count() == 2, "two warm kernels")
        kernels = pool.idle_kernels()
        pool.min_available_bytes = psutil.virtual_memory().total * 2  # as if memory ran short
        wait_for(lambda: pool.stats["shed"] == 2, "the idle kernels shed")
        wait_for(lambda: not any(k.kernel.is_alive() for k in kernels), "the shed kernels stopped")
        assert pool.idle_count() == 0 and pool.stats["started"] == 2
    finally:
        pool.close()
