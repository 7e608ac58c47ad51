"""Clients of ``analysis serve``: ``analysis jobs``, ``analysis schedule``, ``analysis analyses``.

They talk to ``--url`` (default ``$ANALYSIS_SERVER_URL``, else ``http://127.0.0.1:8000``) with
``--token`` (default ``$ANALYSIS_SERVER_TOKEN``) for ``--project``. Exit codes as ``analysis run``:
0 success, 1 the job failed or was cancelled, 2 a usage error or a refused request (the server's
message is printed).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

__all__ = ["add_subparsers"]

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2
_DEFAULT_URL = "http://127.0.0.1:8000"


class _RefusedError(Exception):
    """The server refused a request; the message is the server's."""


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--url", default=None, help=f"server URL (default: $ANALYSIS_SERVER_URL or {_DEFAULT_URL})"
    )
    parser.add_argument("--token", default=None, help="bearer token (default: $ANALYSIS_SERVER_TOKEN)")
    parser.add_argument("--project", default="default", metavar="ID", help="project id (default: default)")


def _params(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-p", "--param", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--params-json", metavar="JSON", help="parameters as one JSON object (-p wins)")


def add_subparsers(subparsers: Any) -> None:
    """Register ``jobs``, ``schedule`` and ``analyses`` on an argparse subparsers object."""
    jobs = subparsers.add_parser("jobs", help="jobs of an analysis server").add_subparsers(
        dest="jobs_command", required=True
    )
    submit = jobs.add_parser("submit", help="submit a job; with --wait, print its envelope")
    submit.add_argument("analysis_id")
    submit.add_argument("--version", default=None, help="run this version (default: the saved analysis)")
    submit.add_argument("--wait", type=float, default=0.0, metavar="SECONDS")
    _params(submit)
    listing = jobs.add_parser("list", help="newest jobs first")
    listing.add_argument("--status", default=None)
    listing.add_argument("--analysis", default=None, metavar="ID")
    listing.add_argument("--limit", type=int, default=20)
    for name, text in (("show", "print a job"), ("cancel", "cancel a job"), ("logs", "print a job's logs")):
        command = jobs.add_parser(name, help=text)
        command.add_argument("job_id")
        if name == "logs":
            command.add_argument("--follow", action="store_true", help="stream until the job ends")
    for command in jobs.choices.values():
        _common(command)
        command.set_defaults(handler=_run_jobs)

    schedule = subparsers.add_parser("schedule", help="cron schedules of an analysis server").add_subparsers(
        dest="schedule_command", required=True
    )
    add = schedule.add_parser("add", help="run an analysis on a cron schedule")
    add.add_argument("analysis_id")
    add.add_argument("--cron", required=True)
    add.add_argument("--timezone", default="UTC")
    add.add_argument("--overlap", choices=["skip", "queue", "cancel_previous"], default="skip")
    add.add_argument("--missed", choices=["skip", "run_once"], default="skip")
    _params(add)
    schedule.add_parser("list", help="the project's schedules")
    for name in ("pause", "resume", "rm"):
        schedule.add_parser(name, help=f"{name} a schedule").add_argument("schedule_id")
    for command in schedule.choices.values():
        _common(command)
        command.set_defaults(handler=_run_schedule)

    analyses = subparsers.add_parser("analyses", help="analysis versions on a server").add_subparsers(
        dest="analyses_command", required=True
    )
    push = analyses.add_parser("push", help="upload a .py or .ipynb as a new version")
    push.add_argument("path", type=Path)
    push.add_argument("--id", default=None, help="analysis id (default: the file's stem)")
    push.add_argument("--retries", type=int, default=0, help="re-runs after a lost server (default 0)")
    analyses.add_parser("versions", help="versions of an analysis").add_argument("analysis_id")
    for command in analyses.choices.values():
        _common(command)
        command.set_defaults(handler=_run_analyses)


class _Client:
    def __init__(self, args: argparse.Namespace) -> None:
        import httpx

        from analysis.config import Settings

        env = Settings.from_env().environ
        url = args.url or env.get("ANALYSIS_SERVER_URL") or _DEFAULT_URL
        token = args.token or env.get("ANALYSIS_SERVER_TOKEN")
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.base = f"/v1/projects/{args.project}"
        self.http = httpx.Client(base_url=url.rstrip("/"), headers=headers, timeout=None)

    def request(self, method: str, path: str, **kwargs: Any) -> Any:
        import httpx

        try:
            answer = self.http.request(method, self.base + path, **kwargs)
        except httpx.TransportError as exc:
            raise _RefusedError(f"cannot reach the server at {self.http.base_url}: {exc}") from None
        if answer.status_code >= 400:
            try:
                message = answer.json()["error"]["message"]
            except (ValueError, KeyError, TypeError):
                message = answer.text[:500]
            raise _RefusedError(f"{answer.status_code}: {message}")
        return answer.json() if answer.content else None

    def close(self) -> None:
        self.http.close()


def _parameters(args: argparse.Namespace) -> dict[str, Any]:
    from analysis.params import parse_assignments

    try:
        parameters = json.loads(args.params_json) if args.params_json else {}
        if not isinstance(parameters, dict):
            raise ValueError("--params-json must be a JSON object")
        parameters.update(parse_assignments(args.param))
    except ValueError as exc:
        raise _RefusedError(f"invalid parameters: {exc}") from None
    return parameters


def _print(value: Any) -> None:
    sys.stdout.write(json.dumps(value, indent=2, ensure_ascii=False) + "\n")


def _job_exit(job: dict[str, Any]) -> int:
    return EXIT_FAILED if job["status"] in ("failed", "cancelled") else EXIT_OK


def _guarded(handler: Any, args: argparse.Namespace) -> int:
    client = None
    try:
        client = _Client(args)
        code: int = handler(client, args)
        return code
    except _RefusedError as exc:
        sys.stderr.write(f"analysis: error: {exc}\n")
        return EXIT_USAGE
    finally:
        if client is not None:
            client.close()


def _run_jobs(args: argparse.Namespace) -> int:
    return _guarded(_jobs, args)


def _jobs(client: _Client, args: argparse.Namespace) -> int:
    command = args.jobs_command
    if command == "submit":
        body = {"analysis_id": args.analysis_id, "parameters": _parameters(args), "wait": args.wait}
        if args.version:
            body["version"] = args.version
        job = client.request("POST", "/jobs", json=body)
        _print(job["envelope"] if job["envelope"] else job)
        return _job_exit(job)
    if command == "list":
        query = {k: v for k, v in (("status", args.status), ("analysis_id", args.analysis)) if v}
        for job in client.request("GET", "/jobs", params={**query, "limit": args.limit})["jobs"]:
            fields = (job["id"], f"{job['status']:<9}", job["analysis_id"], job["trigger"], job["created_at"])
            sys.stdout.write("  ".join(fields) + "\n")
        return EXIT_OK
    if command == "show":
        job = client.request("GET", f"/jobs/{args.job_id}")
        _print(job)
        return _job_exit(job)
    if command == "cancel":
        job = client.request("POST", f"/jobs/{args.job_id}/cancel")
        sys.stdout.write(f"{job['id']} {job['status']}\n")
        return EXIT_OK
    return _logs(client, args)


def _logs(client: _Client, args: argparse.Namespace) -> int:
    if not args.follow:
        job = client.request("GET", f"/jobs/{args.job_id}")
        for line in (job["envelope"] or {}).get("logs", []):
            sys.stdout.write(line + "\n")
        return _job_exit(job)
    client.request("GET", f"/jobs/{args.job_id}")  # a clear error for an unknown job
    status = "running"
    with client.http.stream("GET", f"{client.base}/jobs/{args.job_id}/events") as stream:
        for line in stream.iter_lines():
            if not line.startswith("data: "):
                continue
            event = json.loads(line.removeprefix("data: "))
            if event["type"] == "log":
                sys.stdout.write(event["line"] + "\n")
                sys.stdout.flush()
            elif event["type"] == "end":
                status = event["status"]
    return _job_exit({"status": status})


def _run_schedule(args: argparse.Namespace) -> int:
    return _guarded(_schedule, args)


def _schedule(client: _Client, args: argparse.Namespace) -> int:
    command = args.schedule_command
    if command == "add":
        body = {
            "analysis_id": args.analysis_id, "cron": args.cron, "timezone": args.timezone,
            "overlap": args.overlap, "missed": args.missed, "parameters": _parameters(args),
        }  # fmt: skip
        _print(client.request("POST", "/schedules", json=body))
    elif command == "list":
        for row in client.request("GET", "/schedules")["schedules"]:
            state = "paused" if row["paused"] else f"next {row['next_run_at']}"
            sys.stdout.write(
                f"{row['id']}  {row['analysis_id']}  {row['cron']} ({row['timezone']})  {state}\n"
            )
    elif command == "rm":
        client.request("DELETE", f"/schedules/{args.schedule_id}")
    else:
        _print(client.request("POST", f"/schedules/{args.schedule_id}/{command}"))
    return EXIT_OK


def _run_analyses(args: argparse.Namespace) -> int:
    return _guarded(_analyses, args)


def _analyses(client: _Client, args: argparse.Namespace) -> int:
    if args.analyses_command == "push":
        path: Path = args.path
        if path.suffix not in (".py", ".ipynb") or not path.is_file():
            raise _RefusedError(f"{path} is not a .py or .ipynb file")
        body = {"source": path.read_text(encoding="utf-8"), "kind": path.suffix[1:], "retries": args.retries}
        version = client.request("PUT", f"/analyses/{args.id or path.stem}", json=body)
        sys.stdout.write(f"{version['analysis_id']} {version['version']}\n")
        return EXIT_OK
    for row in client.request("GET", f"/analyses/{args.analysis_id}/versions")["versions"]:
        sys.stdout.write(f"{row['version']}  {row['kind']}  {row['size_bytes']} bytes  {row['created_at']}\n")
    return EXIT_OK
