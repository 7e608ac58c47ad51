"""``analysis cache list|clear``: look at and empty the projects' result caches (README: "Result cache").

* ``list [--project P] [--datasource D]``: one line per entry: project, datasource, key, rows,
  size, age, and the start of its SQL (never a parameter value).
* ``clear [--project P] [--datasource D]``: removes those entries and says how many and how much.

Without ``--project`` every project under ``ANALYSIS_ROOT`` is included.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

__all__ = ["add_subparser", "run_cache_command"]

EXIT_OK, EXIT_USAGE = 0, 2


def add_subparser(subparsers: Any) -> argparse.ArgumentParser:
    """Register ``cache ...`` on an argparse subparsers object."""
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "cache", help="list or clear the projects' result caches"
    )
    commands = parser.add_subparsers(dest="cache_command", required=True)
    for name, text in (("list", "list cached results"), ("clear", "remove cached results")):
        command = commands.add_parser(name, help=text)
        command.add_argument("--project", default=None, metavar="ID", help="one project (default: all)")
        command.add_argument(
            "--datasource", default=None, metavar="NAME", help="one datasource (default: all)"
        )
    parser.set_defaults(handler=run_cache_command)
    return parser


def _caches(root: Path, project: str | None) -> list[tuple[str, Path]]:
    from analysis.params import check_id

    if project is not None:
        check_id(project, "project id")
        return [(project, root / project / "analysis" / "cache")]
    if not root.is_dir():
        return []
    return sorted(
        (p.name, p / "analysis" / "cache") for p in root.iterdir() if (p / "analysis" / "cache").is_dir()
    )


def run_cache_command(args: argparse.Namespace) -> int:
    """Run ``analysis cache ...``; return the exit code."""
    from analysis.config import Settings
    from analysis.result_cache import ResultCache
    from analysis.results import format_bytes

    settings = Settings.from_env()
    try:
        caches = _caches(settings.root, args.project)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    count = total = 0
    now = time.time()
    for project, folder in caches:
        cache = ResultCache(folder, max_bytes=settings.cache_max_bytes)
        for entry in cache.entries():
            meta = entry.meta
            if args.datasource is not None and meta.get("datasource") != args.datasource:
                continue
            size = int(meta.get("bytes", 0))
            count, total = count + 1, total + size
            if args.cache_command == "clear":
                cache.remove(entry.key)
                continue
            age = int(now - float(meta.get("created", now)))
            summary = str(meta.get("summary", "")).split(" ", 2)[-1]
            print(
                f"{project}\t{meta.get('datasource', '?')}\t{entry.key[:12]}\t{meta.get('rows', '?')} rows\t"
                f"{format_bytes(size)}\t{age} s old\t{'into ' if meta.get('into') else ''}{summary}"
            )
        if args.cache_command == "clear" and args.datasource is None:
            for leftover in [*folder.glob("*.lock"), *folder.glob(".*.tmp")]:
                leftover.unlink(missing_ok=True)
    verb = "removed" if args.cache_command == "clear" else "listed"
    print(f"{verb} {count} cached result{'s' if count != 1 else ''} ({format_bytes(total)})")
    return EXIT_OK
