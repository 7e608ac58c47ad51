"""Per-analysis environment figures, measured in one run on one machine (issue 13).

    .venv/bin/python bench/bench_deps.py [--repeat N] [--jobs N] [--package tabulate==0.9.0]
        [--sandbox auto|on|off] [--no-installed]

1. First build of a small pure-Python dependency from a warm uv cache (target <= 3 s): the
   resolution (``uv pip compile``) plus the build (``uv venv`` + ``uv pip install``), and the build
   alone with the lock already stored.
2. Layered (the design in use: a venv holding only the analysis's packages, the runtime's added
   through a ``.pth``) against installed (a venv holding the runtime's packages too, linked from
   the same warm uv cache): build time and disk use.
3. A job whose environment is already built against a job without dependencies, both with the
   pool warm (target: within 20 ms): ``AnalysisService(pool_size=1)``, each job submitted once
   both have a warm kernel, the two kinds interleaved, p50 of ``--jobs`` each (submit to
   envelope); then the same two cold (no pool), and the runner's own cost of finding the built
   environment (``lease_environment``), alone.

The package comes from the usual uv/pip index settings (PyPI here); the first, unmeasured build
warms uv's cache. Figures are medians of ``--repeat`` runs unless said; ratios compare figures
from this run. The load average (``uptime``) is printed before and after: the machine is shared.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

from timing import median_s

from analysis.runner import JobSpec, run_job
from analysis.runner.deps import DepsSettings, Requirements, lease_environment, prepare
from analysis.runner.deps.cache import tree_size
from analysis.runner.deps.resolve import runtime_packages
from analysis.runner.deps.uv import index_options, run_uv
from analysis.runner.service import AnalysisService

SCRIPT = "def run(ctx, parameters):\n    return 1\n"


def _build(requirements: Requirements, settings: DepsSettings) -> Path:
    lease = asyncio.run(prepare(requirements, settings))
    lease.release()
    assert lease.path is not None
    return lease.path


def first_build(requirements: Requirements, settings: DepsSettings, repeat: int) -> list[tuple[str, float]]:
    env = _build(requirements, settings)  # warms uv's cache

    def resolve_and_build() -> None:
        shutil.rmtree(env, ignore_errors=True)
        shutil.rmtree(settings.cache_dir / "resolutions", ignore_errors=True)
        _build(requirements, settings)

    def build_only() -> None:
        shutil.rmtree(env, ignore_errors=True)
        _build(requirements, settings)

    return [
        ("first build, resolve + build (s)", median_s(resolve_and_build, repeat)),
        ("first build, lock stored (s)", median_s(build_only, repeat)),
    ]


def installed_variant(package: str, settings: DepsSettings, work: Path) -> tuple[float, int]:
    """Build time and size of a venv holding the runtime's packages and ``package``."""
    pins = [f"{n}=={v}" for n, v in runtime_packages().items() if n != "analysis-kernel"]
    listed = work / "all.txt"
    listed.write_text("\n".join([*pins, package]) + "\n")
    target = work / "installed"

    async def build() -> None:
        shutil.rmtree(target, ignore_errors=True)
        await run_uv(
            ["venv", "--quiet", "--python", sys.executable, str(target)], environ=os.environ, timeout_s=None
        )
        args = ["pip", "install", "--quiet", "--no-deps", "--python", str(target / "bin" / "python")]
        await run_uv(
            [*args, "-r", str(listed), *index_options(os.environ)], environ=os.environ, timeout_s=None
        )

    asyncio.run(build())  # warms uv's cache with every runtime package
    seconds = median_s(lambda: asyncio.run(build()), 3)
    return seconds, tree_size(target)


def _save(work: Path, package: str) -> tuple[Path, Path, Path]:
    """The projects root, and a plain and a with-dependencies analysis saved in it."""
    root = work / "projects" / ".clients"
    scripts = root / "default" / "analysis" / "scripts"
    scripts.mkdir(parents=True)
    plain = scripts / "plain.py"
    plain.write_text(SCRIPT)
    with_deps = scripts / "with_deps.py"
    with_deps.write_text(f'# /// script\n# dependencies = ["{package}"]\n# ///\n{SCRIPT}')
    for path in [work, root.parent, *root.parent.rglob("*")]:  # the projects, readable by a sandbox's user
        if not path.is_symlink():  # never what a link points to (an interpreter, say)
            path.chmod(0o755 if path.is_dir() else 0o644)
    return root, plain, with_deps


def _wait_warm(service: AnalysisService, count: int) -> None:
    assert service.pool is not None
    give_up = time.monotonic() + 120
    while service.pool.idle_count() < count:
        if time.monotonic() > give_up:
            raise RuntimeError("the pool did not refill within 120 s")
        time.sleep(0.01)


def warm_jobs(root: Path, jobs: int, sandbox: str) -> tuple[list[tuple[str, float]], int]:
    """p50 (and p90) of warm jobs with and without dependencies; how many fell back to cold."""
    times: dict[str, list[float]] = {"plain": [], "with_deps": []}
    cold = 0
    with AnalysisService(root, pool_size=1, sandbox=sandbox) as service:
        assert service.pool is not None
        for name in times:  # the pool now keeps a kernel for each (its environment is built)
            first = service.submit_analysis_job(name, {})
            assert first.success, first.to_dict()
        for _ in range(jobs):
            for name, measured in times.items():  # interleaved, so load hits both alike
                _wait_warm(service, 2)  # both kinds have their warm kernel
                warm_before = service.pool.stats["warm"]
                started = time.perf_counter()
                result = service.submit_analysis_job(name, {})
                elapsed = time.perf_counter() - started
                assert result.success, result.error
                if service.pool.stats["warm"] == warm_before + 1:
                    measured.append(elapsed)
                else:
                    cold += 1
    rows = []
    for name, label in (("plain", "no dependencies"), ("with_deps", "environment built")):
        ordered = sorted(times[name])
        rows.append((f"warm job, {label}, p50 (ms)", statistics.median(ordered) * 1000))
        rows.append((f"warm job, {label}, p90 (ms)", ordered[int(0.9 * (len(ordered) - 1))] * 1000))
    return rows, cold


def cold_jobs(root: Path, plain: Path, with_deps: Path, repeat: int, sandbox: str) -> list[tuple[str, float]]:
    plain_s: list[float] = []
    deps_s: list[float] = []
    for _ in range(repeat):  # interleaved, so load on the machine hits both alike
        plain_s.append(median_s(lambda: run_job(JobSpec(source_path=plain, root=root, sandbox=sandbox)), 1))
        deps_s.append(
            median_s(lambda: run_job(JobSpec(source_path=with_deps, root=root, sandbox=sandbox)), 1)
        )
    return [
        ("cold job, no dependencies (ms)", statistics.median(plain_s) * 1000),
        ("cold job, environment built (ms)", statistics.median(deps_s) * 1000),
    ]


def lease_cost(with_deps: Path, settings: DepsSettings) -> list[tuple[str, float]]:
    def lease() -> None:
        found = asyncio.run(lease_environment(with_deps, project_dir=None, timeout_s=None, settings=settings))
        found.release()

    return [("finding the built environment (ms)", median_s(lease, 50) * 1000)]


def load() -> str:
    one, five, _ = os.getloadavg()
    return f"load average {one:.2f} (1 min), {five:.2f} (5 min) on {os.cpu_count()} cores"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--jobs", type=int, default=30, help="warm jobs of each kind (p50 of these)")
    parser.add_argument("--package", default="tabulate==0.9.0", help="a small pure-Python package")
    parser.add_argument("--sandbox", default="auto")
    parser.add_argument("--no-installed", action="store_true", help="skip the installed-variant build")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-deps-"))
    os.environ["ANALYSIS_DEPS_CACHE"] = str(work / "cache")
    settings = DepsSettings.from_env()
    requirements = Requirements((args.package,))
    loads = [f"before: {load()}"]
    try:
        rows = first_build(requirements, settings, args.repeat)
        layered_s = rows[1][1]
        layered_env = _build(requirements, settings)
        rows += [("layered: build (s)", layered_s), ("layered: disk (MiB)", tree_size(layered_env) / 2**20)]
        if not args.no_installed:
            installed_s, installed_bytes = installed_variant(args.package, settings, work)
            rows += [
                ("installed: build (s)", installed_s),
                ("installed: disk (MiB)", installed_bytes / 2**20),
            ]
        root, plain, with_deps = _save(work, args.package)
        loads.append(f"warm jobs: {load()}")
        warm_rows, cold = warm_jobs(root, args.jobs, args.sandbox)
        rows += warm_rows
        rows += cold_jobs(root, plain, with_deps, args.repeat, args.sandbox)
        rows += lease_cost(with_deps, settings)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    loads.append(f"after: {load()}")
    figures = dict(rows)
    width = max(len(name) for name, _ in rows) + 13  # the differences' labels below are longer
    print(f"{'figure':<{width}}  value   (package {args.package}, median of {args.repeat} unless p50/p90)")
    for name, value in rows:
        print(f"{name:<{width}}  {value:8.3f}")
    if "installed: build (s)" in figures:
        ratio = figures["installed: build (s)"] / layered_s
        print(f"{'installed / layered build time':<{width}}  {ratio:8.1f}x")
    warm = figures["warm job, environment built, p50 (ms)"] - figures["warm job, no dependencies, p50 (ms)"]
    print(f"{'warm: built environment - no dependencies, p50 (ms)':<{width}}  {warm:8.1f}  (target <= 20)")
    cold_gap = figures["cold job, environment built (ms)"] - figures["cold job, no dependencies (ms)"]
    print(f"{'cold: built environment - no dependencies (ms)':<{width}}  {cold_gap:8.1f}")
    print(f"warm jobs: {args.jobs} of each kind submitted; {cold} found no warm kernel (not counted)")
    for line in loads:
        print(line)


if __name__ == "__main__":
    main()
