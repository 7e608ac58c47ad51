"""Per-analysis environment figures, measured in one run on one machine (issue 13).

    .venv/bin/python bench/bench_deps.py [--repeat N] [--package tabulate==0.9.0]

1. First build of a small pure-Python dependency from a warm uv cache (target <= 3 s): the
   resolution (``uv pip compile``) plus the build (``uv venv`` + ``uv pip install``), and the build
   alone with the lock already stored.
2. Layered (the design in use: a venv holding only the analysis's packages, the runtime's added
   through a ``.pth``) against installed (a venv holding the runtime's packages too, linked from
   the same warm uv cache): build time and disk use.
3. A cold job whose environment is already built against a cold job without dependencies
   (target: within 20 ms; no kernel pool exists yet, so both start a fresh kernel), and the
   runner's own cost of finding the built environment (``lease_environment``), alone.

The package comes from the usual uv/pip index settings (PyPI here); the first, unmeasured build
warms uv's cache. Figures are medians of ``--repeat`` runs; ratios compare figures from this run.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import sys
import tempfile
from pathlib import Path

from timing import median_s

from analysis.runner import JobSpec, run_job
from analysis.runner.deps import DepsSettings, Requirements, lease_environment, prepare
from analysis.runner.deps.cache import tree_size
from analysis.runner.deps.resolve import runtime_packages
from analysis.runner.deps.uv import index_options, run_uv

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


def jobs(package: str, settings: DepsSettings, work: Path, repeat: int) -> list[tuple[str, float]]:
    plain = work / "plain.py"
    plain.write_text(SCRIPT)
    with_deps = work / "with_deps.py"
    with_deps.write_text(f'# /// script\n# dependencies = ["{package}"]\n# ///\n{SCRIPT}')
    root = work / ".clients"
    for path in (plain, with_deps):  # builds the environment, warms the page cache
        assert run_job(JobSpec(source_path=path, root=root)).success
    plain_s: list[float] = []
    deps_s: list[float] = []
    for _ in range(repeat):  # interleaved, so load on the machine hits both alike
        plain_s.append(median_s(lambda: run_job(JobSpec(source_path=plain, root=root)), 1))
        deps_s.append(median_s(lambda: run_job(JobSpec(source_path=with_deps, root=root)), 1))

    def lease() -> None:
        found = asyncio.run(lease_environment(with_deps, project_dir=None, timeout_s=None, settings=settings))
        found.release()

    return [
        ("cold job, no dependencies (ms)", sorted(plain_s)[len(plain_s) // 2] * 1000),
        ("cold job, environment built (ms)", sorted(deps_s)[len(deps_s) // 2] * 1000),
        ("finding the built environment (ms)", median_s(lease, 50) * 1000),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--package", default="tabulate==0.9.0", help="a small pure-Python package")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-deps-"))
    os.environ["ANALYSIS_DEPS_CACHE"] = str(work / "cache")
    settings = DepsSettings.from_env()
    requirements = Requirements((args.package,))
    try:
        rows = first_build(requirements, settings, args.repeat)
        layered_s = rows[1][1]
        layered_env = _build(requirements, settings)
        installed_s, installed_bytes = installed_variant(args.package, settings, work)
        rows += [
            ("layered: build (s)", layered_s),
            ("layered: disk (MiB)", tree_size(layered_env) / 2**20),
            ("installed: build (s)", installed_s),
            ("installed: disk (MiB)", installed_bytes / 2**20),
        ]
        rows += jobs(args.package, settings, work, args.repeat)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    figures = dict(rows)
    width = max(len(name) for name, _ in rows)
    print(f"{'figure':<{width}}  value   (package {args.package}, median of {args.repeat})")
    for name, value in rows:
        print(f"{name:<{width}}  {value:8.3f}")
    print(f"{'installed / layered build time':<{width}}  {installed_s / layered_s:8.1f}x")
    overhead = figures["cold job, environment built (ms)"] - figures["cold job, no dependencies (ms)"]
    print(f"{'built environment - no dependencies (ms)':<{width}}  {overhead:8.1f}")


if __name__ == "__main__":
    main()
