"""One kernel connection to the broker: read a request, run it with the broker code, stream the answer.

Requests run one at a time per connection. While one runs, a watcher thread looks at the
socket: the kernel closing it (an interrupt, the job's watchdog, a crash) or sending anything
before the answer is complete cancels the request, and with it the statement on the
database server. The job's deadline does the same. Log lines the broker code emits
(``[query:datasource]``, ``[files]``) are sent to the kernel as they happen, so they reach the
job's log in order.
"""

from __future__ import annotations

import logging
import os
import select
import socket
import threading
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import psutil

from analysis.access import LocalAccess
from analysis.broker_wire import (
    MAX_REQUEST_BYTES,
    WireError,
    error_to_wire,
    recv_frame,
    send_data,
    send_header,
)
from analysis.errors import AnalysisError, DatasourceError, ResourceLimitError
from analysis.logs import redirect_emit
from analysis.results import format_bytes
from analysis.runner.broker.cache_handoff import HandoffSink
from analysis.runner.broker.requests import FilesGet, Names, Query, parse_request

if TYPE_CHECKING:
    from analysis.runner.broker.server import BrokerServer
    from analysis.runner.broker.sources import PooledSources

__all__ = ["BrokerSession"]

_log = logging.getLogger("analysis.runner.broker")
_WATCH_EVENTS = select.POLLIN | select.POLLHUP | select.POLLERR | select.POLLRDHUP
_POLL_MS = 100


class _KernelGoneError(Exception):
    """The kernel's socket failed (it hung up) or the request was cancelled: no answer can go out.

    Only the session's own socket operations raise it: an ``OSError`` of the broker code (the
    file API refusing connections is a ``ConnectionError``) is that request's error, answered
    as any other.
    """


class BrokerSession:
    """Serves one connection of a job's kernel until it closes or the broker stops."""

    def __init__(self, server: BrokerServer, sock: socket.socket) -> None:
        self.server = server
        self.sock = sock
        self._access: LocalAccess | None = None
        self._cancelled = threading.Event()
        self._broken = False  # the kernel hung up or sent bytes mid-answer
        self._over_memory = False  # the runner grew past max_request_memory_bytes
        self._sent = False  # part of a body went out
        self._handed: dict[str, Any] = {}  # a cached result handed over as a file (cache_handoff)

    # -- the connection -------------------------------------------------------------------------
    def serve(self) -> None:
        """Answer requests until the kernel disconnects, breaks the protocol, or the broker stops."""
        try:
            while self._wait_readable():
                self.sock.settimeout(self.server.limits.frame_timeout_s)
                try:
                    _, header = recv_frame(self.sock, max_bytes=MAX_REQUEST_BYTES, headers_only=True)
                    request = parse_request(header)
                except EOFError:
                    return
                except (WireError, TimeoutError) as exc:
                    self._refuse(f"{exc}" if isinstance(exc, WireError) else "a frame arrived too slowly")
                    return
                self.sock.settimeout(None)
                if not self._run(request):
                    return
        except OSError:
            return  # the kernel went away while we answered
        finally:
            self.sock.close()

    def _wait_readable(self) -> bool:
        poller = select.poll()
        poller.register(self.sock, _WATCH_EVENTS)
        while not self.server.stopping.is_set():
            if poller.poll(_POLL_MS):
                return True
        return False

    def _refuse(self, why: str) -> None:
        message = f"The data broker refused the request and closed the connection: {why}."
        try:
            self.sock.settimeout(1.0)
            send_header(self.sock, {"ok": False, "error": error_to_wire(AnalysisError(message))})
        except OSError:
            pass

    def cancel(self) -> None:
        """Cancel the running request (from another thread)."""
        self._cancelled.set()
        access = self._access
        if access is not None:
            access.interrupt()

    # -- one request ----------------------------------------------------------------------------
    def _run(self, request: Names | Query | FilesGet) -> bool:
        """Answer one request; ``False`` when the connection must be closed."""
        self._cancelled.clear()
        self._broken = self._over_memory = self._sent = False
        try:
            access, sources = self.server.access()
        except AnalysisError as exc:  # e.g. the project's datasources file cannot be read
            send_header(self.sock, {"ok": False, "error": error_to_wire(exc)})
            return True
        self._access = access
        try:
            with self._watch(), redirect_emit(lambda line: self._send_log(access.redactor.scrub(line))):
                final = self._answer(access, sources, request)
        except (_KernelGoneError, WireError):  # the kernel is gone, or it sent bytes mid-answer
            sources.discard()
            return False
        except AnalysisError as exc:
            final = {"ok": False, "error": error_to_wire(exc)}
        except Exception as exc:  # a bug of ours: say what, not the details (they may hold secrets)
            _log.error("a broker request failed with %s", type(exc).__name__)
            error = AnalysisError(f"The data broker failed on this request ({type(exc).__name__}).")
            final = {"ok": False, "error": error_to_wire(error)}
            sources.discard()
        finally:
            self._access = None
            if self._cancelled.is_set():
                sources.discard()
            access.close()
        if self._broken:
            self._refuse("the kernel sent data before the answer was complete, or hung up")
            return False
        if self._over_memory:
            final = {"ok": False, "error": error_to_wire(self._memory_error())}
        if self.server.stopping.is_set():
            return False
        send_header(self.sock, final)
        return True

    def _answer(
        self, access: LocalAccess, sources: PooledSources, request: Names | Query | FilesGet
    ) -> dict[str, Any]:
        if isinstance(request, Names):
            return {"ok": True, "names": access.names()}
        if isinstance(request, Query):
            timeout_s = self.server.remaining_s()
            if timeout_s is not None and timeout_s <= 0:
                raise DatasourceError(
                    f"Datasource {request.name!r}: the job's deadline has passed; the query was not run."
                )
            try:
                rows = self._query(access, request, timeout_s)
            except DatasourceError as exc:
                if self._sent or not sources.maybe_stale(request.name, exc):
                    raise
                sources.replace(request.name)  # a pooled connection that died while idle: once more
                with redirect_emit(lambda line: None):  # its log line is out already
                    rows = self._query(access, request, timeout_s)
            self._check_cancelled()
            return {"ok": True, "rows": rows, **self._handed}
        if request.cache_s and request.file_id is not None:
            from analysis.file_cache import cached_get
            from analysis.result_cache import ResultCache

            settings = self.server.settings
            cache = ResultCache(
                settings.cache_dir(self.server.project_id), max_bytes=settings.cache_max_bytes
            )
            headers: Mapping[str, str] = cached_get(
                self.server.http(),
                cache,
                request.file_id,
                self._send_body,
                request.cache_s,
                cancelled=self._cancelled,
            )
        else:
            headers = self.server.http().get(
                request.path, self._send_body, params=request.params or None, file_id=request.file_id
            )
        self._check_cancelled()
        return {"ok": True, "headers": {"content-type": headers.get("content-type") or ""}}

    def _query(self, access: LocalAccess, request: Query, timeout_s: float | None) -> int:
        sink = HandoffSink(self._send_body, self.server.job_dir)
        self._handed = sink.handed  # filled if a cached result is handed over as a file
        if request.into:
            return access.query_into(
                sink,
                "result",
                request.name,
                request.sql,
                request.params,
                timeout_s=timeout_s,
                cache_s=request.cache_s,
            )
        table = access.query(
            request.name, request.sql, request.params, timeout_s=timeout_s, cache_s=request.cache_s
        )
        return sink.load_data("result", table)

    def _check_cancelled(self) -> None:
        if self._over_memory:
            raise self._memory_error()
        if self._cancelled.is_set():
            raise _KernelGoneError("the request was cancelled")

    def _memory_error(self) -> ResourceLimitError:
        limit = self.server.limits.max_request_memory_bytes or 0
        return ResourceLimitError(
            f"The request needed more than the data broker's limit of {format_bytes(limit)} "
            "(max_request_memory_bytes) and was cancelled; stream large results into DuckDB with into=."
        )

    def _send_body(self, data: bytes | bytearray | memoryview) -> None:
        self._check_cancelled()
        self._sent = True
        try:
            send_data(self.sock, data)
        except OSError as exc:
            raise _KernelGoneError(str(exc)) from exc

    def _send_log(self, line: str) -> None:
        try:
            send_header(self.sock, {"log": line})
        except OSError as exc:
            raise _KernelGoneError(str(exc)) from exc

    @contextmanager
    def _watch(self) -> Iterator[None]:
        """Cancel the request if the kernel disconnects or sends anything, or the deadline passes."""
        done = threading.Event()
        wake_r, wake_w = os.pipe()  # ends the watcher's poll at once when the answer is complete
        thread = threading.Thread(target=self._watcher, args=(done, self.cancel, wake_r), daemon=True)
        thread.start()
        try:
            yield
        finally:
            done.set()
            os.write(wake_w, b"x")
            thread.join()
            os.close(wake_r)
            os.close(wake_w)

    def _watcher(self, done: threading.Event, cancel: Callable[[], None], wake: int) -> None:
        poller = select.poll()
        poller.register(self.sock, _WATCH_EVENTS)
        poller.register(wake, select.POLLIN)
        process = psutil.Process()
        limit = self.server.limits.max_request_memory_bytes
        ceiling = None if limit is None else process.memory_info().rss + limit
        while not done.is_set():
            if any(fd != wake for fd, _ in poller.poll(_POLL_MS)):
                self._broken = True
            if ceiling is not None and process.memory_info().rss > ceiling:
                self._over_memory = True
            if (
                self._broken
                or self._over_memory
                or self.server.stopping.is_set()
                or self.server.deadline_passed()
            ):
                cancel()
                return
