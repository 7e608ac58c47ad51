"""``analysis worker``: run the jobs of ``analysis serve --workers`` on this machine.

``worker --db postgresql://... [--root DIR] [--concurrency N] [--queues Q,...] [--grace S]
[--metrics-port P]``. This module imports only argparse: procrastinate and the server's
libraries load when the command runs.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from pathlib import Path
from typing import Any

__all__ = ["add_subparser", "run_worker_command"]

EXIT_OK, EXIT_USAGE = 0, 2


def add_subparser(subparsers: Any) -> None:
    """Register ``worker`` on an argparse subparsers object."""
    worker: argparse.ArgumentParser = subparsers.add_parser(
        "worker", help="run queued jobs of 'analysis serve --workers' on this machine"
    )
    worker.add_argument("--db", required=True, metavar="URL", help="the server's store: postgresql://...")
    worker.add_argument(
        "--root", type=Path, default=Path(".analysis-worker"), metavar="DIR",
        help="this worker's working directory (default .analysis-worker)",
    )  # fmt: skip
    worker.add_argument("--concurrency", type=int, default=2, metavar="N", help="jobs at once (2)")
    worker.add_argument("--queues", default="", metavar="Q,...", help="queues to serve (default: all)")
    worker.add_argument("--name", default=None, help="name in job rows (default: host:pid)")
    worker.add_argument("--grace", type=float, default=30.0, metavar="SECONDS", help="SIGTERM grace (30)")
    worker.add_argument("--heartbeat", type=float, default=2.0, metavar="SECONDS", help="heartbeat (2)")
    worker.add_argument("--timeout", type=float, default=None, metavar="SECONDS", help="default job deadline")
    worker.add_argument("--max-result-bytes", type=int, default=None, metavar="N", help="JSON result limit")
    worker.add_argument(
        "--pool-size", type=int, default=None, metavar="N",
        help="warm kernels per project (default: --concurrency, up to 4); 0: cold kernels",
    )  # fmt: skip
    worker.add_argument(
        "--poll", type=float, default=5.0, metavar="SECONDS",
        help="look for queued jobs this often without a notice (5; notices wake a worker at once)",
    )  # fmt: skip
    worker.add_argument("--metrics-host", default="127.0.0.1", help="address of /metrics (127.0.0.1)")
    worker.add_argument("--metrics-port", type=int, default=None, metavar="PORT", help="serve /metrics")
    worker.set_defaults(handler=run_worker_command)


def run_worker_command(args: argparse.Namespace) -> int:
    """Run the worker until SIGTERM or SIGINT."""
    from analysis.extras import require

    for module in ("procrastinate", "sqlalchemy", "alembic", "prometheus_client"):
        require(module, "analysis worker")
    if args.concurrency < 1:
        sys.stderr.write("analysis worker: --concurrency must be at least 1\n")
        return EXIT_USAGE
    if args.pool_size is not None and args.pool_size < 0:
        sys.stderr.write("analysis worker: --pool-size must be 0 (cold kernels) or more\n")
        return EXIT_USAGE
    if args.poll <= 0:
        sys.stderr.write("analysis worker: --poll must be more than 0 seconds\n")
        return EXIT_USAGE
    if not args.db.startswith(("postgresql://", "postgresql+psycopg://")):
        sys.stderr.write("analysis worker: --db must be a PostgreSQL URL (postgresql://...)\n")
        return EXIT_USAGE
    from analysis.runner.server.worker import WorkerConfig, run_worker

    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    config = WorkerConfig(
        db_url=args.db, root=args.root, concurrency=args.concurrency,
        queues=tuple(q for q in args.queues.split(",") if q), name=args.name, grace_s=args.grace,
        heartbeat_s=args.heartbeat, pool_size=args.pool_size, metrics_host=args.metrics_host,
        metrics_port=args.metrics_port, poll_s=args.poll,
        job_options={
            name: value
            for name, value in (("timeout_s", args.timeout), ("max_result_bytes", args.max_result_bytes))
            if value is not None
        },
    )  # fmt: skip
    asyncio.run(run_worker(config))
    return EXIT_OK
