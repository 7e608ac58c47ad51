"""The kernel side of the data broker: ``ctx`` datasources and files over the job's Unix socket.

In a job the kernel holds no credentials. :class:`BrokerAccess` sends each datasource query
or file API request to the runner's broker (:mod:`analysis.runner.broker`) over the socket the
job document names, and gets back log lines, the body (an Arrow IPC stream, or file bytes)
and a final status; see :mod:`analysis.broker_wire` for the framing. An error raised in the
broker comes back as the same ``analysis`` exception class with the same message.

Cancelling is closing: :meth:`BrokerAccess.interrupt` (the job's deadline watchdog) or a
``KeyboardInterrupt`` closes the connection, and the broker cancels the request and its
server-side statement. The next call opens a new connection.
"""

from __future__ import annotations

import json
import os
import socket
import sys
import threading
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from analysis.access import DataAccess
from analysis.broker_wire import (
    CASTS_KEY,
    DATA,
    MAX_RESPONSE_FRAME_BYTES,
    WireError,
    encode_params,
    error_from_wire,
    recv_frame_head,
    recv_header_payload,
    send_header,
)
from analysis.errors import AnalysisError, DatasourceError, FileApiError

if TYPE_CHECKING:
    import pyarrow as pa

    from analysis.deadline import Deadline
    from analysis.files import Files
    from analysis.files._http import QueryParams
    from analysis.files._load import SupportsLoadData
    from analysis.sources import Params

__all__ = ["BrokerAccess"]

_T = TypeVar("_T")
#: Longest path a Unix socket can be addressed by (sun_path is 108 bytes, NUL included).
_MAX_SOCKET_PATH = 107


class _Response:
    """One response being read: log lines go to stderr, body bytes to :meth:`readinto`, then the final header.

    Body bytes go from the socket straight into the reader's buffer: a data frame's head is
    read, then its bytes as the reader asks for them, with no buffer of our own between.
    """

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock
        self._left = 0  # bytes of the current data frame not read yet
        self.final: dict[str, Any] | None = None

    def _next(self) -> bool:
        """Read frames up to the next body bytes; ``False`` once the final header came instead."""
        while self._left == 0:
            if self.final is not None:
                return False
            kind, length = recv_frame_head(self._sock, max_bytes=MAX_RESPONSE_FRAME_BYTES)
            if kind == DATA:
                self._left = length
                continue
            header = recv_header_payload(self._sock, length)
            if isinstance(header.get("log"), str):
                sys.stderr.write(header["log"] + "\n")
                sys.stderr.flush()
            else:
                self.final = header
        return True

    def _recv_into(self, view: memoryview) -> int:
        """Read up to ``len(view)`` bytes of the current data frame into ``view``."""
        n = self._sock.recv_into(view, min(len(view), self._left))
        if n == 0:
            raise WireError(f"the connection closed with {self._left} bytes of a frame unread")
        self._left -= n
        return n

    def _frame(self) -> bytearray:
        """The rest of the current data frame."""
        piece = bytearray(self._left)
        view, got = memoryview(piece), 0
        while got < len(piece):
            got += self._recv_into(view[got:])
        return piece

    def chunks(self) -> Any:
        """Yield the body's pieces (``bytes``) as they arrive; stops at the final header."""
        while self._next():
            yield bytes(self._frame())

    # the file protocol pyarrow and nanoarrow read an IPC stream from
    closed = False

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytearray:
        """Up to ``size`` bytes (all, if negative); fewer only at the body's end."""
        if size >= 0:
            out = bytearray(size)
            return out[: self.readinto(out)] if size else out
        out = bytearray()
        while self._next():
            out += self._frame()
        return out

    def readinto(self, target: Any) -> int:
        """Fill ``target`` with the body's next bytes (fewer only at its end); how nanoarrow reads."""
        view = memoryview(target).cast("B")
        filled = 0
        while filled < len(view) and self._next():
            filled += self._recv_into(view[filled:])
        return filled

    def final_first(self) -> dict[str, Any] | None:
        """Wait for the body's first bytes or the final header; the final header if it came first."""
        return None if self._next() else self.final

    def finish(self) -> dict[str, Any]:
        """Read (and drop) what is left of the body; return the final header."""
        while self._next():
            self._frame()
        assert self.final is not None
        return self.final


def _arrow_stream(response: _Response) -> pa.RecordBatchReader:
    """The response body as an Arrow stream reader (a result without ``into=``).

    Called once the request is sent, so importing pyarrow overlaps with the broker running the query.
    """
    import pyarrow as pa

    return pa.ipc.open_stream(pa.PythonFile(response, mode="r"))


def _c_stream(response: _Response) -> Any:
    """The response body as an Arrow C stream that DuckDB scans, read with nanoarrow.

    nanoarrow rather than pyarrow: its import costs about 30 ms where pyarrow's costs 0.2-0.3 s,
    which the first ``into=`` of a job would pay (the rows never become pyarrow objects anyway).
    """
    import nanoarrow  # type: ignore[import-untyped]
    from nanoarrow.ipc import InputStream  # type: ignore[import-untyped]

    return nanoarrow.ArrayStream(InputStream.from_readable(response))


def _load_stream(sink: SupportsLoadData, table: str, response: _Response, directory: Path) -> int:
    """Load an ``into=`` stream, applying the casts the broker put in its schema metadata.

    Called once the request is sent: the job's DuckDB opens and the stream reader is imported
    (on a job's first call) while the broker connects and runs the query, before the first
    bytes are awaited.
    A cached result may come as a file in ``directory`` instead (:mod:`analysis.cache_handoff`).
    """
    import duckdb
    import nanoarrow.ipc  # noqa: F401  # imported while the broker works: _c_stream needs it

    getattr(sink, "connection", None)
    final = response.final_first()
    if final is not None and final.get("ok") and "cached_file" in final:
        from analysis.cache_handoff import load_handed

        return load_handed(sink, table, final, directory)
    try:
        reader = _c_stream(response)
        raw = dict(reader.schema.metadata.items()).get(CASTS_KEY)
    except (OSError, WireError, EOFError):
        raise  # the connection was lost
    except Exception as exc:  # nanoarrow's, on a stream that is not Arrow IPC
        raise DatasourceError(f"The data broker sent a malformed result stream ({exc}).") from None
    casts = None if raw is None else json.loads(raw)
    if casts is not None and not (
        isinstance(casts, list)
        and len(casts) == reader.schema.n_fields
        and all(c is None or (isinstance(c, str) and c.count("{}") == 1) for c in casts)
    ):
        raise DatasourceError("The data broker sent a malformed result stream (its column casts).")
    try:
        return sink.load_data(table, reader, casts=casts)
    except duckdb.Error as exc:  # a cast failed, or the stream broke off (the broker's error wins)
        raise DatasourceError(f"The result could not be loaded into DuckDB table {table!r}: {exc}") from None


class BrokerAccess(DataAccess):
    """Datasources and files reached through the runner's broker (see the module docstring).

    Parameters
    ----------
    socket_path
        The broker's socket in the job directory.
    """

    def __init__(self, socket_path: Path) -> None:
        self.socket_path = socket_path
        self._sock: socket.socket | None = None
        self._lock = threading.Lock()
        self._busy: socket.socket | None = None

    def __repr__(self) -> str:
        return f"<BrokerAccess {self.socket_path.name}>"

    # -- the connection -------------------------------------------------------------------------
    def _connect(self, error_cls: type[AnalysisError]) -> socket.socket:
        if self._sock is not None:
            return self._sock
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        path = str(self.socket_path)
        dir_fd = None
        try:
            if len(path.encode()) > _MAX_SOCKET_PATH:  # address it through a short /proc path
                dir_fd = os.open(self.socket_path.parent, os.O_PATH)
                path = f"/proc/self/fd/{dir_fd}/{self.socket_path.name}"
            sock.connect(path)
        except OSError as exc:
            sock.close()
            raise error_cls(
                f"The runner's data broker cannot be reached at {self.socket_path.name} ({exc.strerror})."
            ) from None
        finally:
            if dir_fd is not None:
                os.close(dir_fd)
        self._sock = sock
        return sock

    def _drop(self) -> None:
        sock, self._sock = self._sock, None
        if sock is not None:
            sock.close()

    def _call(
        self,
        request: Mapping[str, Any],
        error_cls: type[AnalysisError],
        consume: Callable[[_Response], _T],
    ) -> tuple[_T, dict[str, Any]]:
        """Send ``request``, let ``consume`` read the body, return its value and the final header."""
        with self._lock:
            sock = self._connect(error_cls)
            response = _Response(sock)
            self._busy = sock
            try:
                send_header(sock, request)
                value = consume(response)
                final = response.finish()
            except (OSError, WireError, EOFError) as exc:
                self._drop()
                if response.final is not None and not response.final.get("ok"):
                    raise error_from_wire(response.final.get("error")) from None
                raise error_cls(f"The connection to the runner's data broker was lost ({exc}).") from None
            except BaseException:  # KeyboardInterrupt, or the body could not be used
                self._drop()
                if response.final is not None and not response.final.get("ok"):
                    raise error_from_wire(response.final.get("error")) from None
                raise
            finally:
                self._busy = None
        if not final.get("ok"):
            raise error_from_wire(final.get("error"))
        return value, final

    # -- DataAccess -----------------------------------------------------------------------------
    def query(
        self, name: str, sql: str, params: Params, *, timeout_s: float | None, cache_s: float | None = None
    ) -> pa.Table:
        request = {
            "op": "query",
            "name": name,
            "sql": sql,
            "params": encode_params(params),
            "into": False,
            "cache": cache_s,
        }
        table, _ = self._call(request, DatasourceError, lambda r: _arrow_stream(r).read_all())
        return table

    def query_into(
        self,
        sink: SupportsLoadData,
        table: str,
        name: str,
        sql: str,
        params: Params,
        *,
        timeout_s: float | None,
        cache_s: float | None = None,
    ) -> int:
        from analysis.duck import quote_identifier

        quote_identifier(table)  # a bad name fails here, before the datasource runs anything
        request = {
            "op": "query",
            "name": name,
            "sql": sql,
            "params": encode_params(params),
            "into": True,
            "cache": cache_s,
        }
        directory = self.socket_path.parent
        count, _ = self._call(request, DatasourceError, lambda r: _load_stream(sink, table, r, directory))
        return count

    def names(self) -> list[str]:
        _, final = self._call({"op": "names"}, DatasourceError, lambda r: None)
        return [str(n) for n in final.get("names", [])]

    def files(self, *, deadline: Deadline, duck: SupportsLoadData) -> Files:
        from analysis.broker_files import BrokerFiles

        return BrokerFiles(self, deadline=deadline, duck=duck)

    def get_file(
        self,
        path: str,
        sink: Callable[[bytes], object],
        params: QueryParams | None,
        file_id: str | None,
        cache_s: float | None = None,
    ) -> dict[str, str]:
        """``GET path`` on the file API through the broker; the body goes to ``sink``.

        ``cache_s`` (a file's content only): the broker answers from the result cache.
        """
        request = {
            "op": "files.get",
            "path": path,
            "params": dict(params or {}),
            "file_id": file_id,
            "cache": cache_s,
        }

        def feed(response: _Response) -> None:
            for piece in response.chunks():
                sink(piece)

        _, final = self._call(request, FileApiError, feed)
        headers = final.get("headers")
        return {str(k): str(v) for k, v in headers.items()} if isinstance(headers, dict) else {}

    def interrupt(self) -> None:
        busy = self._busy
        if busy is not None:
            try:
                busy.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def close(self) -> None:
        with self._lock:
            self._drop()
