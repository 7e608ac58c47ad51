"""The broker of one job: a Unix socket in the job directory, served by threads in the runner.

It holds what the kernel must not: the project's datasource credentials (resolved by the
datasource kinds from the runner's settings), connections leased from the runner's
:class:`~analysis.runner.broker.pool.ConnectionPool`, and the file API client with its token.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from analysis.access import LocalAccess
from analysis.config import Settings
from analysis.deadline import Deadline
from analysis.errors import KernelStartError
from analysis.runner.broker.pool import ConnectionPool
from analysis.runner.broker.session import BrokerSession
from analysis.runner.broker.sources import PooledSources, warm_up
from analysis.sources import load_config

if TYPE_CHECKING:
    from analysis.files._http import HttpSession

__all__ = ["BrokerLimits", "BrokerServer", "SOCKET_NAME"]

#: The broker's socket, relative to the job directory (the job document names it).
SOCKET_NAME = "broker.sock"
_MAX_SOCKET_PATH = 107
_SEND_BUFFER_BYTES = 4 * 1024 * 1024
_log = logging.getLogger("analysis.runner.broker")


@dataclass(frozen=True)
class BrokerLimits:
    """Limits on what one job's kernel may do to its broker.

    Parameters
    ----------
    max_connections
        Connections a kernel may hold open at once; more are refused.
    frame_timeout_s
        Once a request frame has begun, the most time the rest of it may take.
    stop_timeout_s
        How long stopping waits for requests to wind down after cancelling them.
    max_request_memory_bytes
        How much the runner process may grow while answering one request (a result without
        ``into=`` is built whole in the runner); past it the request is cancelled with
        ``resource_limit``. ``None``: no limit.
    """

    max_connections: int = 4
    frame_timeout_s: float = 10.0
    stop_timeout_s: float = 10.0
    max_request_memory_bytes: int | None = 2 * 1024**3


class BrokerServer:
    """Serves one job's kernel (see the module docstring). Start with :meth:`start`, end with :meth:`stop`.

    Parameters
    ----------
    job_dir
        The job directory; the socket is ``job_dir / SOCKET_NAME``.
    project_id
        The only project whose datasources the job may use.
    settings
        The runner's settings: where the project's datasources file is, the secret key, the
        file API and its token.
    deadline
        The job's deadline; requests get what is left of it, and are cancelled when it passes.
    pool
        Where connections are leased from and given back to.
    limits
        Connection and framing limits.
    """

    def __init__(
        self,
        job_dir: Path,
        project_id: str,
        settings: Settings,
        *,
        deadline: Deadline,
        pool: ConnectionPool,
        limits: BrokerLimits | None = None,
    ) -> None:
        self.job_dir = job_dir
        self.project_id = project_id
        self.settings = settings
        self.deadline = deadline
        self.pool = pool
        self.limits = limits or BrokerLimits()
        self.stopping = threading.Event()
        #: Who leases the pool's datasources: a datasource another job used has its session reset.
        self.job = uuid.uuid4().hex
        self._listener: socket.socket | None = None
        self._sessions: dict[BrokerSession, threading.Thread] = {}
        self._lock = threading.Lock()
        self._accept_thread: threading.Thread | None = None
        self._config_path = settings.datasources_path(project_id)
        self._config: dict[str, dict[str, Any]] | None = None
        self._http: HttpSession | None = None

    @property
    def socket_path(self) -> Path:
        """Where the socket is."""
        return self.job_dir / SOCKET_NAME

    # -- lifecycle ------------------------------------------------------------------------------
    def start(self) -> BrokerServer:
        """Bind the socket (mode 0600) and start accepting connections."""
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        path = str(self.socket_path)
        dir_fd = None
        try:
            if len(path.encode()) > _MAX_SOCKET_PATH:
                dir_fd = os.open(self.job_dir, os.O_PATH)
                path = f"/proc/self/fd/{dir_fd}/{SOCKET_NAME}"
            listener.bind(path)
            os.chmod(path, 0o600)  # in a 0700 job directory: nobody else could reach it meanwhile
            listener.listen(self.limits.max_connections)
        except OSError as exc:
            listener.close()
            raise KernelStartError(
                f"The job's data broker could not listen on its socket: {exc.strerror}."
            ) from None
        finally:
            if dir_fd is not None:
                os.close(dir_fd)
        self._listener = listener
        self._accept_thread = threading.Thread(target=self._accept, name="analysis-broker", daemon=True)
        self._accept_thread.start()
        # the drivers' imports while the kernel starts, not in the job's first query
        threading.Thread(
            target=warm_up, args=(self._config_path,), name="analysis-broker-warm-up", daemon=True
        ).start()
        return self

    def _accept(self) -> None:
        assert self._listener is not None
        while not self.stopping.is_set():
            try:
                sock, _ = self._listener.accept()
            except OSError:  # shut down by stop()
                return
            sock.settimeout(None)
            try:  # let a result run ahead of the kernel by a few MiB: fewer hand-offs between the two
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, _SEND_BUFFER_BYTES)
            except OSError:
                pass
            with self._lock:
                full = len(self._sessions) >= self.limits.max_connections
                if not full:
                    session = BrokerSession(self, sock)
                    thread = threading.Thread(target=self._serve, args=(session,), daemon=True)
                    self._sessions[session] = thread
            if full:
                BrokerSession(self, sock)._refuse(
                    f"the job already has {self.limits.max_connections} connections open (max_connections)"
                )
                sock.close()
                continue
            thread.start()

    def _serve(self, session: BrokerSession) -> None:
        try:
            session.serve()
        finally:
            with self._lock:
                self._sessions.pop(session, None)

    def stop(self) -> None:
        """Cancel running requests, close every connection, give connections back, remove the socket."""
        self.stopping.set()
        if self._listener is not None:
            try:
                self._listener.shutdown(socket.SHUT_RDWR)  # wakes accept() at once
            except OSError:
                pass
        if self._accept_thread is not None:
            self._accept_thread.join()
        if self._listener is not None:
            self._listener.close()
        with self._lock:
            sessions = dict(self._sessions)
        for session in sessions:
            session.cancel()
            try:
                session.sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        give_up = time.monotonic() + self.limits.stop_timeout_s
        for thread in sessions.values():
            thread.join(max(0.0, give_up - time.monotonic()))
        if any(t.is_alive() for t in sessions.values()):
            _log.warning(
                "broker requests still running %.0f s after the job ended", self.limits.stop_timeout_s
            )
        http, self._http = self._http, None
        if http is not None:
            http.close()
        try:
            self.socket_path.unlink(missing_ok=True)
        except OSError:
            pass

    # -- what sessions use ----------------------------------------------------------------------
    def access(self) -> tuple[LocalAccess, PooledSources]:
        """The broker code for one request, and its datasources, leased from the pool."""
        if self._config is None:
            self._config = load_config(self._config_path)
        sources = PooledSources(
            self.pool,
            self.project_id,
            self._config_path,
            config=self._config,
            secret_key=self.settings.secret_key,
            environ=self.settings.environ,
            job=self.job,
        )
        cache_dir = self.settings.cache_dir(self.project_id)
        return LocalAccess(sources, self.settings, cache_dir=cache_dir), sources

    def http(self) -> HttpSession:
        """The job's file API session (opened on first use) with the runner's token."""
        from analysis.files import FileApiLimits, FileApiNotConfiguredError
        from analysis.files._http import HttpSession

        with self._lock:
            if self._http is None:
                if not self.settings.backend_url:
                    raise FileApiNotConfiguredError(
                        "no file API is configured: set ANALYSIS_BACKEND_URL (or BACKEND_URL)."
                    )
                self._http = HttpSession(
                    base_url=self.settings.backend_url,
                    token=self.settings.backend_token,
                    limits=FileApiLimits(max_body_bytes=self.settings.files_max_bytes),
                    deadline=self.deadline,
                )
            return self._http

    def remaining_s(self) -> float | None:
        """Seconds left before the job's deadline (``None``: no deadline)."""
        return self.deadline.remaining_s()

    def deadline_passed(self) -> bool:
        """Whether the job's deadline has passed."""
        return self.deadline.expired()
