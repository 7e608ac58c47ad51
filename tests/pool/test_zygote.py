"""Kernels forked from a zygote keep a cold sandboxed kernel's isolation (README, "Warm kernels")."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

from analysis.runner.jobdirs import claim_job_dir
from analysis.runner.kernels import KernelProcess
from analysis.runner.pool import KernelPool, WarmKernel
from analysis.runner.sandbox import sandbox_available
from analysis.runner.service import AnalysisService
from analysis.runner.zygote import Zygote

pytestmark = pytest.mark.skipif(sandbox_available() is not None, reason="zygotes serve sandboxed kernels")

from tests.pool.test_pool import pool_of, save, wait_for  # noqa: E402
from tests.sandbox.test_escapes import THREADS_PROBE  # noqa: E402


@pytest.fixture
def zygote(root: Path, no_leftovers: None) -> Iterator[Zygote]:
    folder = root / "default" / "analysis" / "temp" / "zygote-test"
    folder.mkdir(mode=0o700, parents=True)
    claim_job_dir(folder)
    started = Zygote(folder)
    try:
        yield started
    finally:
        started.close()
        for path in sorted(folder.rglob("*"), reverse=True):
            path.unlink() if not path.is_dir() or path.is_symlink() else path.rmdir()
        folder.rmdir()


def fork(zygote: Zygote, name: str, **limits: Any) -> KernelProcess:
    job_dir = zygote.folder / name
    job_dir.mkdir(mode=0o700)
    return zygote.fork(job_dir, max_tmp_bytes=8 * 1024**2, **limits)


def run(kernel: KernelProcess, code: str) -> str:
    """Run ``code`` in the kernel; what it printed (an error fails the test)."""

    async def go() -> str:
        from jupyter_client.asynchronous.client import AsyncKernelClient

        client: Any = AsyncKernelClient()
        client.load_connection_info(kernel.connection_info)
        client.start_channels(hb=False)
        out: list[str] = []

        def hook(msg: dict[str, Any]) -> None:
            if msg["msg_type"] == "stream":
                out.append(msg["content"]["text"])
            if msg["msg_type"] == "error":
                out.append("ERROR " + msg["content"]["evalue"])

        try:
            await client.wait_for_ready(timeout=60)
            await client.execute_interactive(textwrap.dedent(code), timeout=60, output_hook=hook)
        finally:
            client.stop_channels()
        return "".join(out)

    return asyncio.run(go())


def test_forked_kernels_do_not_see_each_other(zygote: Zygote) -> None:
    one, two = fork(zygote, "one"), fork(zygote, "two")
    try:
        run(one, "open('/tmp/secret', 'w').write('one'); open('/job/mine', 'w').write('one')")
        seen = run(
            two,
            """
            import os
            print('secret' in os.listdir('/tmp'), 'mine' in os.listdir('/job'), os.listdir('/jobs'))
            print(sorted(int(p) for p in os.listdir('/proc') if p.isdigit()))
            """,
        )
        assert seen.splitlines() == ["False False []", "[1, 2]"]  # no sibling's files, its own PIDs only
        assert (zygote.folder / "one" / "mine").read_text() == "one"
    finally:
        one.kill()
        two.kill()


def test_forked_kernel_keeps_what_the_sandbox_binds_under_tmp_read_only(
    root: Path, tmp_path: Path, no_leftovers: None
) -> None:
    # a checkout or an environment under /tmp (a CI clone, a test's environment) is bound
    # there; the kernel's own /tmp must not hide it, nor make it writable
    env = tmp_path / "env-under-tmp"
    (env / "lib").mkdir(parents=True)
    (env / "lib" / "marker.txt").write_text("from the environment")
    for path in (tmp_path, env, env / "lib"):
        path.chmod(0o755)
    (env / "lib" / "marker.txt").chmod(0o644)
    folder = root / "default" / "analysis" / "temp" / "zygote-test"
    folder.mkdir(mode=0o700, parents=True)
    claim_job_dir(folder)
    zygote = Zygote(folder, python_env=env)
    kernel = fork(zygote, "one")
    try:
        seen = run(
            kernel,
            f"""
            print(open({str(env / "lib" / "marker.txt")!r}).read())
            try:
                open({str(env / "lib" / "new.txt")!r}, 'w')
            except OSError as exc:
                print(exc.strerror)
            open('/tmp/mine', 'w').write('x')
            """,
        )
        assert seen.splitlines() == ["from the environment", "Read-only file system"]
        assert not (env / "lib" / "new.txt").exists()
    finally:
        kernel.kill()
        zygote.close()
        shutil.rmtree(folder)


def test_forked_kernel_has_its_own_loopback(zygote: Zygote) -> None:
    one, two = fork(zygote, "one"), fork(zygote, "two")
    try:
        port = run(
            one,
            """
            import socket
            server = socket.socket(); server.bind(('127.0.0.1', 0)); server.listen()
            print(server.getsockname()[1])
            """,
        ).strip()
        reached = run(
            two,
            f"""
            import socket
            try:
                socket.create_connection(('127.0.0.1', {port}), timeout=2); print('reached')
            except OSError:
                print('refused')
            """,
        )
        assert reached.strip() == "refused"
    finally:
        one.kill()
        two.kill()


def test_forked_kernel_cannot_undo_its_sandbox(zygote: Zygote) -> None:
    kernel = fork(zygote, "one")
    try:
        tried = run(
            kernel,
            """
            import subprocess, sys
            probe = (
                "import ctypes; libc = ctypes.CDLL(None, use_errno=True); "
                "print(libc.unshare(0x10000000), libc.umount2(b'/job', 2), libc.umount2(b'/tmp', 2))"
            )
            print(subprocess.run([sys.executable, '-c', probe], capture_output=True, text=True).stdout)
            print([line.split()[1] for line in open('/proc/self/status') if line.startswith('CapEff')])
            """,
        )
        # no new user namespace (where it would be root), no unmounting its /job or /tmp, no capability
        assert tried.split() == ["-1", "-1", "-1", "['0000000000000000']"]
    finally:
        kernel.kill()


def test_forked_kernel_gets_the_jobs_limits(zygote: Zygote) -> None:
    kernel = fork(zygote, "one", max_memory_bytes=3 * 1024**3, max_processes=40, max_cpu_s=100)
    try:
        limits = run(
            kernel,
            """
            from resource import RLIMIT_AS, RLIMIT_CPU, RLIMIT_NPROC, getrlimit
            print([getrlimit(r)[0] for r in (RLIMIT_AS, RLIMIT_NPROC, RLIMIT_CPU)])
            """,
        )
        assert limits.strip() == f"[{3 * 1024**3}, 40, 100]"
    finally:
        kernel.kill()


def test_killed_kernel_reports_its_signal_and_leaves_nothing(zygote: Zygote) -> None:
    kernel = fork(zygote, "one")
    run(kernel, "pass")  # it answers: it is running
    pid = kernel.kernel_pid()
    assert pid is not None
    os.kill(pid, signal.SIGTERM)
    wait_for(lambda: not kernel.is_alive(), "the kernel to end")
    assert kernel.exit_description() == "was killed by SIGTERM"
    other = fork(zygote, "two")
    run(other, "pass")
    pid = other.kernel_pid()
    assert pid is not None
    os.kill(pid, signal.SIGKILL)
    wait_for(lambda: not other.is_alive(), "the other kernel to end")
    assert other.exit_description() == "was killed by SIGKILL"
    assert not psutil.pid_exists(kernel.pid) or psutil.Process(kernel.pid).status() == psutil.STATUS_ZOMBIE


def test_killed_zygote_takes_its_kernels_and_the_pool_starts_another(root: Path, no_leftovers: None) -> None:
    save(root, "trivial", 'def run(ctx, parameters):\n    return ctx.query("select 1 as x").rows\n')
    with AnalysisService(root, pool_size=2, sandbox="on") as service:
        pool_of(service).zygotes = True
        service.warm_up()
        wait_for(lambda: pool_of(service).idle_count() == 2, "two warm kernels")
        kernels = pool_of(service).idle_kernels()
        assert pool_of(service).stats["zygotes"] == 1
        zygote = kernels[0].zygote
        assert zygote is not None and all(k.zygote is zygote for k in kernels)
        os.killpg(zygote.popen.pid, signal.SIGKILL)
        wait_for(lambda: not any(k.kernel.is_alive() for k in kernels), "its kernels to die")
        wait_for(lambda: not set(map(id, kernels)) & set(map(id, pool_of(service).idle_kernels())), "removal")
        wait_for(lambda: pool_of(service).idle_count() == 2, "two new warm kernels")
        assert pool_of(service).stats["zygotes"] == 2
        assert service.submit_analysis_job("trivial", {}).result == [{"x": 1}]


def test_cpu_limit_of_a_forked_kernel_is_reported(root: Path, no_leftovers: None) -> None:
    save(root, "spin", "def run(ctx, parameters):\n    while True:\n        pass\n")
    with AnalysisService(root, pool_size=1, sandbox="on", max_cpu_s=2, timeout_s=60) as service:
        pool_of(service).zygotes = True
        service.warm_up()
        wait_for(lambda: pool_of(service).idle_count() == 1, "a warm kernel")
        result = service.submit_analysis_job("spin", {})
        assert pool_of(service).stats["warm"] == 1
    assert result.error_type == "resource_limit", result.error
    assert "CPU time limit of 2 s (max_cpu_s)" in (result.error or "")


def test_a_job_finding_no_idle_kernel_gets_one_forked_for_it(root: Path, no_leftovers: None) -> None:
    launch = {"sandboxed": True}
    pool = KernelPool(1, zygotes=True)
    try:
        pool.want("default", root, launch)
        wait_for(lambda: pool.idle_count() == 1, "a warm kernel")
        first = pool.acquire("default", root, launch)
        assert first is not None
        pool.start_s = 120.0  # the wait is bounded by a start's time: no race with a slow machine

        async def two_jobs() -> list[WarmKernel | None]:
            jobs = [pool.acquire_async("default", root, launch) for _ in range(2)]
            return list(await asyncio.gather(*jobs))

        # one waits for the kernel refilling the pool, the other for one forked for it: none cold
        taken = asyncio.run(two_jobs())
        assert all(warm is not None and warm.kernel.is_alive() for warm in taken)
        assert pool.stats["cold"] == 0 and pool.stats["zygotes"] == 1
        for warm in [first, *taken]:
            assert warm is not None
            pool.retire(warm)
    finally:
        pool.close()


def test_jobs_that_find_no_idle_kernel_wait_for_forks_however_long_a_start_took(
    root: Path, no_leftovers: None
) -> None:
    # start_s is the pool's last start time, the bound for waiting on a kernel started one by
    # one; a fork costs a fifth of a cold start, so a job waits for its fork instead: none of
    # these four jobs (pool of one) starts cold, though each fork takes longer than start_s
    launch = {"sandboxed": True}
    pool = KernelPool(1, zygotes=True)
    try:
        pool.want("default", root, launch)
        wait_for(lambda: pool.idle_count() == 1, "a warm kernel")
        pool.start_s = 0.001

        async def four_jobs() -> list[WarmKernel | None]:
            return list(
                await asyncio.gather(*(pool.acquire_async("default", root, launch) for _ in range(4)))
            )

        taken = asyncio.run(four_jobs())
        assert all(warm is not None and warm.kernel.is_alive() for warm in taken), pool.stats
        assert pool.stats["cold"] == 0 and pool.stats["warm"] == 4
        assert len({warm.job_dir for warm in taken if warm is not None}) == 4
        for warm in taken:
            assert warm is not None
            pool.retire(warm)
    finally:
        pool.close()


def test_a_burst_of_100_jobs_all_finish_on_forked_kernels(root: Path, no_leftovers: None) -> None:
    # a pool of 2: the other 98 jobs each get a kernel forked for them (a fifth of a cold start's
    # CPU) instead of 98 cold starts; the runner's descriptors and the sandboxes all hold
    save(root, "trivial", 'def run(ctx, parameters):\n    return ctx.query("select 1 as x").rows\n')
    with AnalysisService(root, pool_size=2, sandbox="on", timeout_s=120) as service:
        pool_of(service).zygotes = True
        service.warm_up()
        wait_for(lambda: pool_of(service).idle_count() == 2, "two warm kernels")

        async def burst() -> list[Any]:
            jobs = [service.submit_analysis_job_async("trivial", {}) for _ in range(100)]
            return [result.result for result in await asyncio.gather(*jobs)]

        assert asyncio.run(burst()) == [[{"x": 1}]] * 100
        assert pool_of(service).stats["warm"] == 100 and pool_of(service).stats["cold"] == 0


def test_a_kernel_whose_sandbox_cannot_be_made_ends_and_its_log_says_why(zygote: Zygote) -> None:
    # the zygote answers a fork at once; a keeper that cannot make the kernel's mounts (here a
    # /tmp of a size tmpfs refuses) ends, with the reason in the kernel's log, and the zygote
    # goes on serving
    job_dir = zygote.folder / "bad"
    job_dir.mkdir(mode=0o700)
    kernel = zygote.fork(job_dir, max_tmp_bytes=-1)
    wait_for(lambda: not kernel.is_alive(), "the kernel's keeper to end")
    assert kernel.exit_description() == "exited with code 1"
    assert "mounting /job" in kernel.log_tail()
    kernel.kill()
    good = fork(zygote, "good")
    assert run(good, "print(6 * 7)").strip() == "42"
    good.kill()


def test_forked_kernels_draw_their_own_random_numbers(root: Path, no_leftovers: None) -> None:
    # every kernel is a copy of its zygote, which has imported the job modules and opened a
    # DuckDB database: a generator seeded there (numpy's global one, if the zygote imported
    # numpy.random) would give every job the same numbers
    save(
        root,
        "draws",
        """
        import random

        import numpy

        def run(ctx, parameters):
            duck = ctx.query("select random() as r, gen_random_uuid()::varchar as u").rows[0]
            return [duck["r"], duck["u"], random.random(), float(numpy.random.rand())]
        """,
    )
    with AnalysisService(root, pool_size=2, sandbox="on", timeout_s=120) as service:
        pool_of(service).zygotes = True
        service.warm_up()
        wait_for(lambda: pool_of(service).idle_count() == 2, "two warm kernels")
        draws = [service.submit_analysis_job("draws", {}) for _ in range(4)]
        assert all(draw.success for draw in draws), [draw.error for draw in draws]
        assert pool_of(service).stats["warm"] == 4 and pool_of(service).stats["cold"] == 0
    for kind in zip(*(draw.result for draw in draws), strict=True):
        assert len(set(kind)) == 4, kind


def test_forked_kernels_leave_the_runner_a_core(root: Path, no_leftovers: None) -> None:
    # the zygote's database runs one worker (no thread before a fork); each job gets a job's count
    save(root, "threads", THREADS_PROBE)
    with AnalysisService(root, pool_size=1, sandbox="on", timeout_s=120) as service:
        pool_of(service).zygotes = True
        service.warm_up()
        wait_for(lambda: pool_of(service).idle_count() == 1, "a warm kernel")
        result = service.submit_analysis_job("threads", {})
        assert pool_of(service).stats["warm"] == 1
    assert result.success, result.to_dict()
    expected = max(1, len(os.sched_getaffinity(0)) - 1)
    assert result.result == {"threads": expected, "set": "Invalid Input Error"}
