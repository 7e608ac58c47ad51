"""``analysis deps build|list|prune``: manage the cache of per-analysis environments.

* ``build PATH [--project ID] [--root DIR] [--upgrade]``: resolve and build the environment of an
  analysis ahead of its first job (prints the environment's path and whether it was built or
  cached); ``--upgrade`` resolves again, replacing the stored lock, so later jobs get newer packages.
* ``list``: every cached environment, most recently used first, with its size and requirements.
* ``prune [--max-bytes N]``: evict least recently used environments not in use until the cache
  fits its budget (default ``ANALYSIS_DEPS_MAX_BYTES``; ``--max-bytes 0`` empties what is idle).

:func:`check_dependencies` is what ``analysis validate`` adds: it resolves without building.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from pathlib import Path
from typing import Any

__all__ = ["add_subparser", "check_dependencies", "run_deps_command"]

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


def add_subparser(subparsers: Any) -> argparse.ArgumentParser:
    """Register ``deps ...`` on an argparse subparsers object."""
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "deps", help="manage the cached environments of analyses that declare dependencies"
    )
    commands = parser.add_subparsers(dest="deps_command", required=True)
    build = commands.add_parser("build", help="resolve and build an analysis's environment ahead of time")
    build.add_argument("path", type=Path, help="a .py or .ipynb analysis")
    build.add_argument("--project", default=None, metavar="ID", help="project whose defaults apply")
    build.add_argument("--root", type=Path, default=None, metavar="DIR", help="projects root")
    build.add_argument(
        "--upgrade", action="store_true", help="resolve again instead of reusing the stored lock"
    )
    commands.add_parser("list", help="list cached environments, most recently used first")
    prune = commands.add_parser("prune", help="evict least recently used environments not in use")
    prune.add_argument("--max-bytes", type=int, default=None, metavar="N", help="budget to prune down to")
    parser.set_defaults(handler=run_deps_command)
    return parser


def _project_dir(path: Path, project: str | None, root: Path | None) -> Path | None:
    """The project folder whose defaults apply: given, or the one a saved analysis lives in."""
    if project is not None:
        from analysis.config import Settings
        from analysis.params import check_id

        check_id(project, "Project id")
        return (root or Settings.from_env().root) / project / "analysis"
    scripts = path.resolve().parent
    return scripts.parent if scripts.name == "scripts" and scripts.parent.name == "analysis" else None


def check_dependencies(path: Path) -> str:
    """Resolve the dependencies of the analysis at ``path`` (and keep the lock); what was found.

    Raises ``DependencyError`` when they conflict or cannot be found, ``InvalidAnalysisError``
    when they are malformed.
    """
    from analysis.runner.deps import DepsSettings, read_requirements
    from analysis.runner.deps.resolve import packages_to_install, resolve

    requirements = read_requirements(path, project_dir=_project_dir(path, None, None))
    requirements.check_python()
    if not requirements:
        return ""
    settings = DepsSettings.from_env()
    lock = asyncio.run(resolve(requirements, settings, timeout_s=settings.build_timeout_s))
    added = len(packages_to_install(lock))
    return f"; its dependencies resolve ({added} package{'s' if added != 1 else ''} added to the runtime's)"


def _human(size: int) -> str:
    value = float(size)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{size} B"


def run_deps_command(args: argparse.Namespace) -> int:
    """Run one ``analysis deps`` subcommand; the exit code."""
    from analysis.errors import AnalysisError
    from analysis.runner.deps import DepsSettings, list_environments, prepare, prune, read_requirements

    try:
        settings = DepsSettings.from_env()
    except ValueError as exc:
        sys.stderr.write(f"analysis: error: {exc}\n")
        return EXIT_USAGE
    if args.deps_command == "list":
        for env in list_environments(settings):
            used = time.strftime("%Y-%m-%d %H:%M", time.localtime(env.last_used))
            flag = " (in use)" if env.in_use else ""
            sys.stdout.write(
                f"{env.key}  {_human(env.size_bytes):>9}  used {used}{flag}  {' '.join(env.requirements)}\n"
            )
        return EXIT_OK
    if args.deps_command == "prune":
        for env in prune(settings, max_bytes=args.max_bytes):
            sys.stdout.write(f"removed {env.key} ({_human(env.size_bytes)})\n")
        return EXIT_OK
    if not args.path.is_file():
        sys.stderr.write(f"analysis: error: {args.path} does not exist\n")
        return EXIT_USAGE
    try:
        project_dir = _project_dir(args.path, args.project, args.root)
    except ValueError as exc:
        sys.stderr.write(f"analysis: error: {exc}\n")
        return EXIT_USAGE
    try:
        requirements = read_requirements(args.path, project_dir=project_dir)
        lease = asyncio.run(prepare(requirements, settings, upgrade=args.upgrade))
    except AnalysisError as exc:
        sys.stdout.write(f"failed ({exc.error_type}): {exc.message}\n")
        return EXIT_FAILED
    lease.release()
    if lease.path is None:
        sys.stdout.write(f"ok: {args.path} declares no dependencies; it runs in the runtime's environment\n")
    else:
        sys.stdout.write(f"{'built' if lease.built else 'cached'}: {lease.path}\n")
    return EXIT_OK
