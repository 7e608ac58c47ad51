"""The worker a server with a PostgreSQL store runs in its own process (``--local-workers N``).

With a PostgreSQL store, ``analysis serve`` queues every job through procrastinate; its local
worker takes jobs from that queue like any ``analysis worker`` (same task, same compare-and-set
claims, same heartbeats), with ``N`` slots, in the server's event loop. It works in
``{root}/.server/local-worker`` as a worker works in its own ``--root``: the server's project
folders (the datasources files the user edits, say) are never written by it. Its kernels are
the server's children (they die with it, kill -9 included); on shutdown it stops taking jobs,
lets running ones finish within the grace period, and cancels those still running then, as a
server with a SQLite store does (an ``analysis worker`` queues them again instead).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
from collections.abc import AsyncIterator
from typing import Any

from analysis.runner.server.config import ServerConfig
from analysis.runner.server.queue import open_app
from analysis.runner.server.store import Store
from analysis.runner.server.worker import WorkerConfig, WorkerMetrics, open_pool, procrastinate_worker

__all__ = ["local_worker"]

log = logging.getLogger("analysis.server")


@contextlib.asynccontextmanager
async def local_worker(store: Store, config: ServerConfig) -> AsyncIterator[None]:
    """Run ``config.local_workers`` job slots from the queue in the store's database, until exit."""
    if not config.local_workers:
        yield
        return
    app = open_app(config.db_url or "")  # its own app: the job task is registered on it
    async with app.open_async(), _running(app, store, config):
        yield


@contextlib.asynccontextmanager
async def _running(app: Any, store: Store, config: ServerConfig) -> AsyncIterator[None]:
    root = config.root.resolve() / ".server" / "local-worker"
    root.mkdir(parents=True, exist_ok=True)
    worker_config = WorkerConfig(
        db_url=config.db_url or "", root=root, concurrency=config.local_workers,
        name=f"{socket.gethostname()}:{os.getpid()}:local", grace_s=config.shutdown_grace_s,
        heartbeat_s=max(0.5, config.heartbeat_timeout_s / 5), job_options=config.job_options,
        pool_size=config.pool_size,
    )  # fmt: skip
    pool = open_pool(worker_config)
    metrics = WorkerMetrics(config.local_workers)
    worker = procrastinate_worker(
        app, store, worker_config, worker_config.name or "local", metrics, pool=pool,
        install_signal_handlers=False,  # uvicorn has them: the server's shutdown stops this worker
        server=True,
    )  # fmt: skip
    running = asyncio.create_task(worker.run())
    await asyncio.sleep(0)  # run() starts by clearing any earlier stop request
    try:
        yield
    finally:
        worker.stop()
        try:
            await running
        except Exception:
            log.exception("the local worker failed")
        finally:
            if pool is not None:
                await asyncio.to_thread(pool.close)
