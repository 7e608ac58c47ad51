"""The data broker: datasources and the file API reach a job's kernel only through the runner.

The runner starts one broker per job (:func:`serve_broker`) on a Unix socket in the job
directory, and the job document names the socket (relative to the job directory). The
kernel's ``ctx`` sends its datasource queries and file API requests there
(:mod:`analysis.broker_client`); the broker runs them with the same code ``ctx`` runs
in-process in a notebook (:class:`analysis.access.LocalAccess`), holding the credentials,
the pooled connections and the HTTP client, and streams results back as Arrow IPC.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from analysis.config import Settings
from analysis.deadline import Deadline
from analysis.runner.broker.environment import kernel_environ
from analysis.runner.broker.pool import ConnectionPool, shared_pool
from analysis.runner.broker.server import SOCKET_NAME, BrokerLimits, BrokerServer

__all__ = [
    "SOCKET_NAME",
    "BrokerLimits",
    "BrokerServer",
    "ConnectionPool",
    "kernel_environ",
    "serve_broker",
    "shared_pool",
]


@asynccontextmanager
async def serve_broker(
    job_dir: Path,
    project_id: str,
    settings: Settings,
    *,
    deadline: Deadline | None = None,
    pool: ConnectionPool | None = None,
    limits: BrokerLimits | None = None,
) -> AsyncIterator[BrokerServer]:
    """Serve a job's broker while the block runs; on exit cancel its requests and close its socket.

    Parameters
    ----------
    job_dir
        The job directory (it must exist); the socket is ``job_dir / SOCKET_NAME``.
    project_id
        The project whose datasources the job may use.
    settings
        The runner's settings (datasources file, secret key, file API and token).
    deadline
        The job's deadline.
    pool
        Connection pool; default the runner process's :func:`shared_pool`.
    limits
        Connection and framing limits.
    """
    import asyncio

    server = BrokerServer(
        job_dir,
        project_id,
        settings,
        deadline=deadline or Deadline(None),
        pool=pool if pool is not None else shared_pool(),
        limits=limits,
    ).start()
    try:
        yield server
    finally:
        await asyncio.to_thread(server.stop)
