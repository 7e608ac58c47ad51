"""A time budget for one whole HTTP attempt, enforced at the socket: connect, headers and body.

httpx's timeouts bound each socket operation, so a server that sends its status line and
headers one byte a second never trips them, and the body loop's own clock check only starts
once the headers are in. Here every socket operation of the attempt gets the smaller of its
own timeout and the time left in the attempt, so the attempt ends on time wherever it stalls.

The budget is per thread (a ``Files`` client may be shared by threads) and is set by
``HttpSession`` around each attempt with :meth:`AttemptBudget.until`.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import Any

import httpcore
import httpx

__all__ = ["AttemptBudget", "BudgetTransport"]


class AttemptBudget:
    """When the current thread's attempt must end, and which limit that instant comes from."""

    def __init__(self) -> None:
        self._local = threading.local()

    @contextmanager
    def until(self, end: float | None, limit: str) -> Iterator[None]:
        """Within the block, socket operations end by ``end`` (``time.monotonic()``); ``None``: no end."""
        self._local.end, self._local.limit, self._local.bound = end, limit, False
        try:
            yield
        finally:
            self._local.end = None

    def fired(self) -> str | None:
        """The limit that cut the last socket operation short (``None``: its own timeout did)."""
        return getattr(self._local, "limit", None) if getattr(self._local, "bound", False) else None

    def clamp(self, timeout: float | None, error: type[Exception]) -> float | None:
        """``timeout`` cut to the time left; raise ``error`` when none is left."""
        end = getattr(self._local, "end", None)
        if end is None:
            return timeout
        left = end - time.monotonic()
        if left <= 0:
            self._local.bound = True
            raise error("the attempt's time budget is spent")
        self._local.bound = timeout is None or left < timeout
        return left if self._local.bound else timeout


class _BudgetStream(httpcore.NetworkStream):
    """A network stream whose every read and write is clamped to the attempt's budget."""

    def __init__(self, stream: httpcore.NetworkStream, budget: AttemptBudget) -> None:
        self._stream = stream
        self._budget = budget

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        return self._stream.read(max_bytes, self._budget.clamp(timeout, httpcore.ReadTimeout))

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        self._stream.write(buffer, self._budget.clamp(timeout, httpcore.WriteTimeout))

    def close(self) -> None:
        self._stream.close()

    def start_tls(
        self, ssl_context: Any, server_hostname: str | None = None, timeout: float | None = None
    ) -> httpcore.NetworkStream:
        timeout = self._budget.clamp(timeout, httpcore.ConnectTimeout)
        return _BudgetStream(self._stream.start_tls(ssl_context, server_hostname, timeout), self._budget)

    def get_extra_info(self, info: str) -> Any:
        return self._stream.get_extra_info(info)


class _BudgetBackend(httpcore.NetworkBackend):
    """httpcore's blocking socket backend, its connects and streams clamped to the budget."""

    def __init__(self, budget: AttemptBudget) -> None:
        self._backend = httpcore.SyncBackend()
        self._budget = budget

    def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.NetworkStream:
        timeout = self._budget.clamp(timeout, httpcore.ConnectTimeout)
        stream = self._backend.connect_tcp(host, port, timeout, local_address, socket_options)
        return _BudgetStream(stream, self._budget)

    def connect_unix_socket(
        self, path: str, timeout: float | None = None, socket_options: Iterable[Any] | None = None
    ) -> httpcore.NetworkStream:
        timeout = self._budget.clamp(timeout, httpcore.ConnectTimeout)
        return _BudgetStream(self._backend.connect_unix_socket(path, timeout, socket_options), self._budget)

    def sleep(self, seconds: float) -> None:
        self._backend.sleep(seconds)


class BudgetTransport(httpx.HTTPTransport):
    """httpx's default transport (no proxies from the environment), its sockets under ``budget``."""

    def __init__(self, budget: AttemptBudget) -> None:
        super().__init__(trust_env=False)
        limits = httpx.Limits(max_connections=100, max_keepalive_connections=20, keepalive_expiry=5.0)
        self._pool = httpcore.ConnectionPool(
            ssl_context=httpx.create_ssl_context(trust_env=False),
            max_connections=limits.max_connections,
            max_keepalive_connections=limits.max_keepalive_connections,
            keepalive_expiry=limits.keepalive_expiry,
            network_backend=_BudgetBackend(budget),
        )
