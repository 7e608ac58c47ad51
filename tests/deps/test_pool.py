"""Warm kernels per dependency environment: real kernels, environments built offline from tiny wheels."""

from __future__ import annotations

import asyncio
import textwrap
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from analysis.runner.deps import DepsSettings, Requirements, list_environments, prepare, prune
from analysis.runner.pool import KernelPool, WarmKernel
from analysis.runner.sandbox import sandbox_available
from analysis.runner.service import AnalysisService

pytestmark = pytest.mark.slow

MODE = "on" if sandbox_available() is None else "off"

USES_TINYPKG = """
# /// script
# dependencies = ["tinypkg=={version}"]
# ///
def run(ctx, parameters):
    import sys
    import tinypkg
    return {{"version": tinypkg.__version__, "python": sys.executable, "x": ctx.query("select 1 as x").rows}}
"""
PLAIN = 'def run(ctx, parameters):\n    return ctx.query("select 1 as x").rows\n'


def wait_for(condition: Callable[[], bool], what: str, timeout_s: float = 60.0) -> None:
    give_up = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < give_up, f"timed out waiting for {what}"
        time.sleep(0.05)


def save(root: Path, name: str, source: str) -> Path:
    scripts = root / "default" / "analysis" / "scripts"
    scripts.mkdir(parents=True, exist_ok=True)
    path = scripts / f"{name}.py"
    path.write_text(textwrap.dedent(source), encoding="utf-8")
    return path


def save_pinned(root: Path) -> None:
    """Analyses ``one`` (tinypkg 1.0) and ``two`` (tinypkg 2.0): two environments."""
    save(root, "one", USES_TINYPKG.format(version="1.0"))
    save(root, "two", USES_TINYPKG.format(version="2.0"))


def env_of(settings: DepsSettings, requirement: str) -> Path:
    (env,) = [e for e in list_environments(settings) if requirement in e.requirements]
    return env.path


def warm_of(pool: KernelPool | None, env: Path | None) -> list[WarmKernel]:
    """The idle kernels of ``env`` (``None``: the runtime's own environment)."""
    assert pool is not None
    return [w for w in pool.idle_kernels() if (w.lease.path if w.lease else None) == env]


def test_a_job_with_dependencies_takes_a_warm_kernel_of_its_environment(
    root: Path, deps_env: DepsSettings, no_leftovers: None
) -> None:
    save_pinned(root)
    with AnalysisService(root, pool_size=1, sandbox=MODE, timeout_s=120) as service:
        assert service.pool is not None
        first = service.submit_analysis_job("one", {})  # builds the environment
        assert first.success, first.to_dict()
        env = env_of(deps_env, "tinypkg==1.0")
        wait_for(lambda: len(warm_of(service.pool, env)) == 1, "a warm kernel of the environment")
        (kernel,) = warm_of(service.pool, env)

        other = service.submit_analysis_job("two", {})  # another environment: not that kernel
        assert other.success and other.result["version"] == "2.0", other.to_dict()  # type: ignore[index]
        assert warm_of(service.pool, env) == [kernel] and kernel.kernel.is_alive()

        taken = service.pool.stats["warm"]
        second = service.submit_analysis_job("one", {})
        assert second.success, second.to_dict()
        assert second.result == first.result  # same packages, same interpreter
        assert service.pool.stats["warm"] == taken + 1
        assert kernel not in service.pool.idle_kernels()
        wait_for(lambda: not kernel.kernel.is_alive() and not kernel.job_dir.exists(), "the used kernel gone")


def test_an_environment_with_warm_kernels_is_never_pruned(
    root: Path, deps_env: DepsSettings, no_leftovers: None
) -> None:
    save_pinned(root)
    with AnalysisService(root, pool_size=1, sandbox=MODE, timeout_s=120) as service:
        assert service.submit_analysis_job("one", {}).success
        env = env_of(deps_env, "tinypkg==1.0")
        wait_for(lambda: len(warm_of(service.pool, env)) == 1, "a warm kernel of the environment")
        (kernel,) = warm_of(service.pool, env)

        assert prune(deps_env, max_bytes=0) == []  # no job runs, but the idle kernel uses it
        assert [e.in_use for e in list_environments(deps_env)] == [True]
        assert service.pool is not None
        taken = service.pool.stats["warm"]
        result = service.submit_analysis_job("one", {})  # the environment is still there
        assert result.success and result.result["version"] == "1.0", result.to_dict()  # type: ignore[index]
        assert service.pool.stats["warm"] == taken + 1
        wait_for(lambda: not kernel.kernel.is_alive(), "the used kernel gone")
    # the service closed: its kernels are gone, and with them their hold on the environment
    assert [e.path for e in prune(deps_env, max_bytes=0)] == [env]


def test_only_the_latest_environments_keep_warm_kernels(
    root: Path, deps_env: DepsSettings, no_leftovers: None
) -> None:
    save_pinned(root)
    save(root, "plain", PLAIN)
    with AnalysisService(root, pool_size=1, pool_environments=1, sandbox=MODE, timeout_s=120) as service:
        assert service.submit_analysis_job("plain", {}).success
        assert service.submit_analysis_job("one", {}).success
        one = env_of(deps_env, "tinypkg==1.0")
        wait_for(lambda: len(warm_of(service.pool, one)) == 1, "a warm kernel of environment one")
        (kernel_one,) = warm_of(service.pool, one)

        assert service.submit_analysis_job("two", {}).success
        two = env_of(deps_env, "tinypkg==2.0")
        wait_for(lambda: len(warm_of(service.pool, two)) == 1, "a warm kernel of environment two")
        wait_for(lambda: not kernel_one.kernel.is_alive(), "environment one's kernel discarded")
        assert warm_of(service.pool, one) == []
        wait_for(lambda: len(warm_of(service.pool, None)) == 1, "the runtime's kernel kept (not counted)")
        assert service.pool is not None and service.pool.stats["evicted"] == 1

        # its lease ends once it is gone: environment one may go, two (a warm kernel) may not
        wait_for(lambda: not kernel_one.job_dir.exists(), "environment one's kernel removed")
        wait_for(
            lambda: [e.in_use for e in list_environments(deps_env) if e.path == one] == [False],
            "environment one released",
        )
        assert [e.path for e in prune(deps_env, max_bytes=0)] == [one]
        again = service.submit_analysis_job("one", {})  # rebuilt, cold
        assert again.success and again.result["version"] == "1.0", again.to_dict()  # type: ignore[index]


def test_a_shared_lease_holds_the_environment_and_none_is_given_once_it_is_gone(
    deps_env: DepsSettings,
) -> None:
    lease = asyncio.run(prepare(Requirements(("other1",)), deps_env))
    lease.release()
    held = lease.share()  # from a released lease: what the pool keeps to start kernels later
    assert held is not None and held.path == lease.path and held.python == lease.python
    assert prune(deps_env, max_bytes=0) == []
    held.release()
    assert [e.path for e in prune(deps_env, max_bytes=0)] == [lease.path]
    assert lease.share() is None
