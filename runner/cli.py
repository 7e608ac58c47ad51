"""The ``analysis`` command line: ``run`` and ``validate`` (README, "Headless: the runner"), and friends.

Exit codes: 0 success, 1 the analysis failed (the envelope is still printed; Ctrl-C and SIGTERM
cancel the job and print its ``cancelled`` envelope), 2 usage error.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import os
import signal
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

__all__ = ["build_parser", "main"]

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        self.print_usage(sys.stderr)
        sys.stderr.write(f"analysis: error: {message}\n")
        raise SystemExit(EXIT_USAGE)


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"must be a positive number of seconds, not {text!r}")
    return value


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive integer, not {text!r}")
    return value


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("analysis-kernel")
    except PackageNotFoundError:  # pragma: no cover - running from a source tree
        return "unknown"


def build_parser() -> argparse.ArgumentParser:
    """The ``analysis`` argument parser with every subcommand."""
    parser = _Parser(prog="analysis", description="Run and check analyses headless.")
    parser.add_argument("--version", action="version", version=f"analysis {_version()}")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    run = commands.add_parser(
        "run", help="run a .py or .ipynb analysis in a fresh kernel and print its envelope"
    )
    run.add_argument("path", type=Path, help="a .py file defining run(ctx, parameters), or a notebook")
    run.add_argument(
        "-p",
        "--param",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a parameter; VALUE is JSON where valid, else a string (repeatable)",
    )
    run.add_argument("--params-json", metavar="JSON", help="parameters as one JSON object (-p wins)")
    run.add_argument("--project", default="default", metavar="ID", help="project id (default: default)")
    run.add_argument(
        "--timeout",
        type=_positive_float,
        default=300.0,
        metavar="SECONDS",
        help="whole-run deadline (default: 300)",
    )
    run.add_argument(
        "--max-result-bytes",
        type=_positive_int,
        default=10 * 1024 * 1024,
        metavar="N",
        help="limit of the encoded result (default: 10485760)",
    )
    run.add_argument(
        "--max-memory-bytes",
        type=_positive_int,
        default=None,
        metavar="N",
        help="address-space limit of each process of the job (default: none)",
    )
    run.add_argument(
        "--max-cpu-s",
        type=_positive_int,
        default=None,
        metavar="SECONDS",
        help="CPU-time limit of each process of the job (default: none)",
    )
    run.add_argument(
        "--max-disk-bytes",
        type=_positive_int,
        default=None,
        metavar="N",
        help="limit of the job directory and of any one file (default: 1073741824)",
    )
    run.add_argument(
        "--max-tmp-bytes",
        type=_positive_int,
        default=None,
        metavar="N",
        help="sandboxed: size of the private /tmp (default: 536870912)",
    )
    run.add_argument(
        "--max-processes",
        type=_positive_int,
        default=None,
        metavar="N",
        help="sandboxed: processes and threads of the job (default: 256)",
    )
    run.add_argument(
        "--sandbox",
        choices=("auto", "on", "off"),
        default=None,
        help="run the kernel in a bubblewrap sandbox (default: $ANALYSIS_SANDBOX, else off)",
    )
    run.add_argument(
        "--root",
        type=Path,
        default=None,
        metavar="DIR",
        help="projects root (default: $ANALYSIS_ROOT or .clients)",
    )
    run.add_argument(
        "--datasources",
        type=Path,
        default=None,
        metavar="FILE",
        help="datasources file to use instead of the project's",
    )
    run.add_argument(
        "--output-notebook",
        type=Path,
        default=None,
        metavar="FILE",
        help="for a notebook: write the executed notebook here (after every cell)",
    )
    run.add_argument(
        "--result-file",
        type=Path,
        default=None,
        metavar="FILE.parquet",
        help="a table result over --max-result-bytes goes here as Parquet (the envelope has a preview)",
    )
    run.add_argument(
        "--progress",
        action="store_true",
        help="progress on stderr: per cell for a notebook, per step for a script",
    )
    run.add_argument(
        "--log-output",
        action="store_true",
        help="copy the job's output and log lines to stderr as they are printed",
    )
    run.set_defaults(handler=_cmd_run, parser=run)

    validate = commands.add_parser("validate", help="check an analysis without running it")
    validate.add_argument("path", type=Path)
    validate.set_defaults(handler=_cmd_validate, parser=validate)

    from analysis.runner import fileserver

    fileserver.add_subparser(commands)

    from analysis.runner import datasource_cli

    datasource_cli.add_subparser(commands)

    from analysis.runner import deps_cli

    deps_cli.add_subparser(commands)

    from analysis.runner import server_cli, server_client

    server_cli.add_subparsers(commands)
    server_client.add_subparsers(commands)

    from analysis.runner import cache_cli

    cache_cli.add_subparser(commands)

    from analysis.runner.server import worker_cli

    worker_cli.add_subparser(commands)
    return parser


def _cmd_run(args: argparse.Namespace) -> int:
    from analysis.config import Settings
    from analysis.errors import InvalidParametersError
    from analysis.params import check_id, parse_assignments
    from analysis.runner.jobs import JobSpec

    try:
        check_id(args.project, "Project id")
    except ValueError as exc:
        raise _usage(str(exc)) from None
    if args.path.suffix not in (".py", ".ipynb"):
        raise _usage(f"{args.path} is neither a .py nor an .ipynb analysis")
    if args.output_notebook is not None and args.path.suffix != ".ipynb":
        raise _usage("--output-notebook is for .ipynb analyses")
    if not args.path.is_file():
        raise _usage(f"{args.path} does not exist")
    if args.result_file is not None and not args.result_file.resolve().parent.is_dir():
        raise _usage(f"--result-file: the folder of {args.result_file} does not exist")
    if args.datasources is not None and not args.datasources.is_file():
        raise _usage(f"datasources file {args.datasources} does not exist")
    try:
        parameters = _strict_json(args.params_json) if args.params_json else {}
        if not isinstance(parameters, dict):
            raise InvalidParametersError("--params-json must be a JSON object")
        parameters.update(parse_assignments(args.param))
    except RecursionError:
        raise _usage("invalid parameters: nested too deeply to be read") from None
    except (ValueError, InvalidParametersError) as exc:
        raise _usage(f"invalid parameters: {exc}") from None
    limits = {
        name: getattr(args, name)
        for name in ("max_disk_bytes", "max_tmp_bytes", "max_processes")
        if getattr(args, name) is not None
    }
    spec = JobSpec(
        source_path=args.path,
        parameters=parameters,
        project_id=args.project,
        root=args.root or Settings.from_env().root,
        timeout_s=args.timeout,
        max_result_bytes=args.max_result_bytes,
        max_memory_bytes=args.max_memory_bytes,
        max_cpu_s=args.max_cpu_s,
        datasources_file=args.datasources,
        output_notebook=args.output_notebook,
        progress=args.progress,
        log_output=args.log_output,
        sandbox=args.sandbox,
        **limits,
    )
    if args.result_file is None:
        result = asyncio.run(_run_until_stopped(spec))
    else:  # the artifact lands next to the target, then takes its name
        with tempfile.TemporaryDirectory(prefix=".analysis-", dir=args.result_file.resolve().parent) as tmp:
            spec = dataclasses.replace(spec, artifact_dir=Path(tmp))
            result = asyncio.run(_run_until_stopped(spec))
            artifact = Path(tmp) / f"{spec.job_id}.parquet"
            if artifact.exists():
                os.replace(artifact, args.result_file)
    sys.stdout.write(result.to_json() + "\n")
    return EXIT_OK if result.success else EXIT_FAILED


async def _run_until_stopped(spec: Any) -> Any:
    """Run the job; SIGTERM (what service managers send) cancels it like Ctrl-C does."""
    from analysis.runner.jobs import run_job_to_envelope

    task = asyncio.current_task()
    assert task is not None
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, task.cancel)
    try:
        return await run_job_to_envelope(spec)
    finally:
        loop.remove_signal_handler(signal.SIGTERM)


def _strict_json(text: str) -> Any:
    """``json.loads`` that refuses ``NaN`` and ``Infinity``, which are not JSON."""

    def refuse(name: str) -> Any:
        raise ValueError(f"{name} is not JSON")

    return json.loads(text, parse_constant=refuse)


def _cmd_validate(args: argparse.Namespace) -> int:
    from analysis.errors import AnalysisError
    from analysis.runner.deps_cli import check_dependencies
    from analysis.runner.service import validate_file

    if not args.path.is_file():
        raise _usage(f"{args.path} does not exist")
    try:
        what = validate_file(args.path) + check_dependencies(args.path)
    except AnalysisError as exc:
        sys.stdout.write(f"invalid: {exc.message}\n")
        return EXIT_FAILED
    sys.stdout.write(f"ok: {args.path} is {what}\n")
    return EXIT_OK


class _UsageError(Exception):
    pass


def _usage(message: str) -> _UsageError:
    return _UsageError(message)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``analysis`` console script; returns the exit code."""
    parser = build_parser()
    args, unknown = parser.parse_known_args(argv)
    if unknown:  # name the subcommand's own usage, not the top-level one
        getattr(args, "parser", parser).error(f"unrecognized arguments: {' '.join(unknown)}")
    try:
        code: int = args.handler(args)
    except _UsageError as exc:
        sys.stderr.write(f"analysis: error: {exc}\n")
        return EXIT_USAGE
    return code


if __name__ == "__main__":
    sys.exit(main())
