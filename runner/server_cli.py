"""``analysis serve`` and ``analysis token create``: run the HTTP service, mint its tokens.

* ``serve --root R [--host 127.0.0.1] [--port 8000] [--db URL]``: the server under uvicorn.
  SIGTERM stops accepting, lets running jobs finish within ``--grace`` seconds, then cancels them.
  With a PostgreSQL store, jobs are queued through procrastinate; the server's local worker
  (``--local-workers N``, default ``--max-concurrent-jobs``) and ``analysis worker`` processes run them.
* ``token create --project P`` (or ``--admin``): prints a new bearer token once; only its hash
  is stored.

This module imports only argparse: the server's libraries (the ``server`` extra) load when a
command runs.
"""

from __future__ import annotations

import argparse
import math
import os
import socket
import sys
from pathlib import Path
from typing import Any

__all__ = ["add_subparsers", "run_serve", "run_token"]

EXIT_OK, EXIT_USAGE = 0, 2
_SERVER_MODULES = ("sqlalchemy", "alembic", "croniter", "prometheus_client", "uvicorn")


def _store_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--root",
        type=Path,
        default=None,
        metavar="DIR",
        help="projects root (default: $ANALYSIS_ROOT or .clients)",
    )
    parser.add_argument(
        "--db",
        default=None,
        metavar="URL",
        help="store URL (default: SQLite under the root); postgresql://...",
    )


def add_subparsers(subparsers: Any) -> None:
    """Register ``serve`` and ``token`` on an argparse subparsers object."""
    serve: argparse.ArgumentParser = subparsers.add_parser("serve", help="run the analysis HTTP service")
    _store_arguments(serve)
    serve.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    serve.add_argument("--port", type=int, default=8000, help="port (default 8000; 0 picks a free one)")
    serve.add_argument("--max-concurrent-jobs", type=int, default=None, metavar="N", help="default: cores")
    serve.add_argument(
        "--max-jobs-per-project", type=int, default=None, metavar="N",
        help="default: --max-concurrent-jobs; PostgreSQL store: across every worker, default no cap",
    )  # fmt: skip
    serve.add_argument("--max-queued-jobs", type=int, default=10_000, metavar="N")
    serve.add_argument("--grace", type=float, default=30.0, metavar="SECONDS", help="shutdown grace (30)")
    serve.add_argument("--timeout", type=float, default=None, metavar="SECONDS", help="default job deadline")
    serve.add_argument(
        "--max-result-bytes", type=int, default=None, metavar="N", help="JSON result limit (10 MiB)"
    )
    serve.add_argument(
        "--max-artifact-bytes", type=int, default=None, metavar="N", help="Parquet artifact limit (1 GiB)"
    )
    serve.add_argument(
        "--artifact-ttl", type=float, default=7 * 24 * 3600.0, metavar="SECONDS",
        help="keep large-result artifacts this long after their job (7 days); 0: forever",
    )  # fmt: skip
    serve.add_argument(
        "--pool-size", type=int, default=None, metavar="N",
        help="warm kernels per project (default: its job slots, up to 4); 0: cold kernels",
    )  # fmt: skip
    serve.add_argument(
        "--local-workers", type=int, default=None, metavar="N",
        help="PostgreSQL store: queued jobs this server runs itself at once (default: "
        "--max-concurrent-jobs); 0: only 'analysis worker' processes run them",
    )  # fmt: skip
    serve.add_argument(
        "--workers", action="store_true", help="the same as --local-workers 0 (PostgreSQL store)"
    )  # fmt: skip
    serve.add_argument(
        "--heartbeat-timeout", type=float, default=10.0, metavar="SECONDS",
        help="PostgreSQL store: a worker silent this long is lost (10)",
    )  # fmt: skip
    serve.set_defaults(handler=run_serve)

    token: argparse.ArgumentParser = subparsers.add_parser("token", help="manage the server's bearer tokens")
    commands = token.add_subparsers(dest="token_command", required=True)
    create = commands.add_parser("create", help="print a new token (scoped to a project, or admin)")
    _store_arguments(create)
    scope = create.add_mutually_exclusive_group(required=True)
    scope.add_argument("--project", metavar="ID", help="the one project the token may use")
    scope.add_argument("--admin", action="store_true", help="a token for every project and /metrics")
    create.set_defaults(handler=run_token)


def _root(args: argparse.Namespace) -> Path:
    from analysis.config import Settings

    root: Path = args.root or Settings.from_env().root
    return root


def _require_server() -> None:
    from analysis.extras import require

    for module in _SERVER_MODULES:
        require(module, "analysis serve")


def run_serve(args: argparse.Namespace) -> int:
    """Run the server until SIGINT or SIGTERM."""
    _require_server()
    import uvicorn

    from analysis.runner.server.app import create_app
    from analysis.runner.server.config import ServerConfig

    for name in ("max_concurrent_jobs", "max_jobs_per_project", "max_queued_jobs"):
        value = getattr(args, name)
        if value is not None and value < 1:
            sys.stderr.write(f"analysis serve: --{name.replace('_', '-')} must be at least 1\n")
            return EXIT_USAGE
    if args.pool_size is not None and args.pool_size < 0:
        sys.stderr.write("analysis serve: --pool-size must be 0 (cold kernels) or more\n")
        return EXIT_USAGE
    if not math.isfinite(args.artifact_ttl) or args.artifact_ttl < 0:
        sys.stderr.write("analysis serve: --artifact-ttl must be 0 (keep forever) or more seconds\n")
        return EXIT_USAGE
    queued = (args.db or "").startswith(("postgresql://", "postgresql+psycopg://"))
    for flag, given in (("--workers", args.workers), ("--local-workers", args.local_workers is not None)):
        if given and not queued:
            sys.stderr.write(f"analysis serve: {flag} needs --db postgresql://... (a queue in PostgreSQL)\n")
            return EXIT_USAGE
    if args.workers and args.local_workers:
        sys.stderr.write("analysis serve: --workers means --local-workers 0; give one of them\n")
        return EXIT_USAGE
    if args.local_workers is not None and args.local_workers < 0:
        sys.stderr.write("analysis serve: --local-workers must be 0 (no local jobs) or more\n")
        return EXIT_USAGE
    slots = args.max_concurrent_jobs or os.cpu_count() or 1
    local = 0 if args.workers else (slots if args.local_workers is None else args.local_workers)
    config = ServerConfig(
        root=_root(args),
        db_url=args.db,
        max_concurrent_jobs=slots,
        max_jobs_per_project=args.max_jobs_per_project,
        max_queued_jobs=args.max_queued_jobs,
        shutdown_grace_s=args.grace,
        workers=queued,
        local_workers=local if queued else 0,
        heartbeat_timeout_s=args.heartbeat_timeout,
        pool_size=args.pool_size,
        artifact_ttl_s=args.artifact_ttl or None,
        job_options={
            name: value
            for name, value in (
                ("timeout_s", args.timeout),
                ("max_result_bytes", args.max_result_bytes),
                ("max_artifact_bytes", args.max_artifact_bytes),
            )
            if value is not None
        },
    )
    try:
        listener = _listen(args.host, args.port)
    except OSError as exc:
        sys.stderr.write(f"analysis serve: cannot listen on {args.host}:{args.port}: {exc.strerror or exc}\n")
        return EXIT_USAGE
    host, port = listener.getsockname()[:2]
    sys.stderr.write(f"analysis serve: listening on http://{_url_host(host)}:{port}\n")
    sys.stderr.flush()
    server = uvicorn.Server(
        uvicorn.Config(create_app(config), log_level="warning", timeout_graceful_shutdown=5, lifespan="on")
    )
    server.run(sockets=[listener])
    return EXIT_OK


def _listen(host: str, port: int) -> socket.socket:
    """A listening socket on ``host:port``; port 0 takes a free one, which the socket then holds."""
    family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    listener = socket.socket(family, kind, proto)
    try:
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(address)
        listener.listen(2048)
    except OSError:
        listener.close()
        raise
    return listener


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def run_token(args: argparse.Namespace) -> int:
    """Create a token and print it."""
    _require_server()
    from analysis.params import check_id
    from analysis.runner.server.auth import create_token
    from analysis.runner.server.store import default_url, open_store

    if args.project is not None:
        try:
            check_id(args.project, "Project id")
        except ValueError as exc:
            sys.stderr.write(f"analysis token: {exc}\n")
            return EXIT_USAGE
    root = _root(args)
    store = open_store(args.db or default_url(root.resolve()))
    try:
        token = create_token(store, project_id=args.project, admin=args.admin)
    finally:
        store.close()
    sys.stdout.write(token + "\n")
    return EXIT_OK
