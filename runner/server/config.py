"""``ServerConfig``: the limits and defaults of one ``analysis serve``."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["DEFAULT_POOL_CAP", "ServerConfig", "default_pool_size"]

#: The default pool holds as many warm kernels per project as it may run jobs at once, up to this.
DEFAULT_POOL_CAP = 4


def default_pool_size(slots: int) -> int:
    """Warm kernels per project when none was asked for: one per job slot, up to :data:`DEFAULT_POOL_CAP`."""
    return max(1, min(slots, DEFAULT_POOL_CAP))


@dataclass(frozen=True)
class ServerConfig:
    """Options of the server. ``None`` means the default named below.

    Parameters
    ----------
    root
        Root folder of the projects (where saved analyses and job directories live).
    db_url
        The store: a SQLAlchemy URL (``postgresql://...``); default: SQLite under ``root``.
    max_concurrent_jobs
        Jobs running at once, over every project (default: the number of cores). With
        ``workers``: the default of ``local_workers``.
    max_jobs_per_project
        Jobs of one project running at once (default: ``max_concurrent_jobs``). With ``workers``:
        across every worker and server (default: no cap but the workers' slots).
    max_queued_jobs
        Past this many queued jobs, a submit answers 429 with ``Retry-After``.
    shutdown_grace_s
        On SIGTERM, how long running jobs may take to finish before they are cancelled.
    max_body_bytes
        Largest request body accepted (413 beyond).
    max_wait_s
        Longest ``wait`` a submit may ask for.
    schedule_tick_s
        How often schedules are checked.
    job_options
        Defaults of every job (``timeout_s``, ``max_result_bytes``...; see ``JobSpec``).
    workers
        Queue jobs through procrastinate (PostgreSQL store only) for ``analysis worker``
        processes and the server's local worker, instead of dispatching them in this process
        (``analysis serve`` sets it for every PostgreSQL store).
    local_workers
        With ``workers``: job slots of the worker the server runs itself (``0``: none, jobs
        run only on ``analysis worker`` processes).
    heartbeat_timeout_s
        With ``workers``: a worker silent this long is lost; its jobs are retried or failed.
    artifact_ttl_s
        How long the Parquet artifact of a large result is kept after its job ended (then its
        download answers 410); ``None``: forever. Default: 7 days.
    pool_size
        Warm kernels kept ready per project that ran a job (README, "Warm kernels"); ``0``: every
        job starts a cold kernel. Default: :data:`DEFAULT_POOL_CAP` or fewer (see :attr:`warm_kernels`).
    """

    root: Path
    db_url: str | None = None
    max_concurrent_jobs: int = field(default_factory=lambda: os.cpu_count() or 1)
    max_jobs_per_project: int | None = None
    max_queued_jobs: int = 10_000
    shutdown_grace_s: float = 30.0
    max_body_bytes: int = 10 * 1024 * 1024
    max_wait_s: float = 300.0
    schedule_tick_s: float = 1.0
    job_options: dict[str, Any] = field(default_factory=dict)
    workers: bool = False
    local_workers: int = 0
    heartbeat_timeout_s: float = 10.0
    pool_size: int | None = None
    artifact_ttl_s: float | None = 7 * 24 * 3600.0

    @property
    def project_cap(self) -> int:
        """Jobs of one project that may run at once."""
        return self.max_jobs_per_project or self.max_concurrent_jobs

    @property
    def warm_kernels(self) -> int:
        """Warm kernels per project: ``pool_size``, else one per job a project may run at once (up to 4)."""
        return default_pool_size(self.project_cap) if self.pool_size is None else self.pool_size
