"""Sending a result to the kernel as an Arrow IPC stream, in body frames of at most 1 MiB."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from typing import Any

from analysis.broker_wire import CASTS_KEY

__all__ = ["ArrowSink"]

_FRAME_BYTES = 1024 * 1024


class _Frames:
    """A write-only file that hands its bytes to ``send`` in pieces of at most ``_FRAME_BYTES``."""

    closed = False

    def __init__(self, send: Callable[[bytearray | memoryview], None]) -> None:
        self._send = send
        self._buf = bytearray()

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        view = memoryview(data).cast("B")
        if len(self._buf) + len(view) < _FRAME_BYTES:
            self._buf += view
            return len(view)
        self.flush()
        for start in range(0, len(view), _FRAME_BYTES):  # a large buffer: sent in place, piece by piece
            self._send(view[start : start + _FRAME_BYTES])
        return len(view)

    def flush(self) -> None:
        if self._buf:
            buf, self._buf = self._buf, bytearray()
            self._send(buf)

    def close(self) -> None:
        self.flush()


class ArrowSink:
    """Takes the place of the kernel's DuckDB for a datasource kind: ``load_data`` streams to the kernel.

    The datasource kinds end ``query_into`` with ``duck.load_data(table, data)``; here ``data``
    (an Arrow table or record batch reader) is written batch by batch as an IPC stream, so the
    rows are never Python objects on either side.
    """

    def __init__(self, send: Callable[[bytearray | memoryview], None]) -> None:
        self._send = send

    #: Nothing to open while a datasource connects: the job's DuckDB is in the kernel.
    connection = None

    def load_data(
        self, table: str, data: Any, *, mode: str = "replace", casts: Sequence[str | None] | None = None
    ) -> int:
        """Stream ``data`` to the kernel; return the number of rows sent.

        ``casts`` (see ``Duck.load_data``) travel in the stream's schema metadata, so the kernel's
        DuckDB converts the columns while it loads them, as it does in-process.
        """
        import pyarrow as pa

        if isinstance(data, pa.Table):
            batches: Any = data.to_batches(max_chunksize=128 * 1024)
            schema = data.schema
        elif isinstance(data, pa.RecordBatchReader):
            batches, schema = data, data.schema
        else:
            raise TypeError(f"the broker streams Arrow tables and readers, not {type(data).__name__}")
        if casts is not None and any(casts):
            schema = schema.with_metadata({**(schema.metadata or {}), CASTS_KEY: json.dumps(list(casts))})
        frames = _Frames(self._send)
        rows = 0
        with pa.ipc.new_stream(pa.PythonFile(frames, mode="w"), schema) as writer:
            frames.flush()  # the schema now: the kernel sets up its reader while the first batch comes
            for batch in batches:
                writer.write_batch(batch)
                rows += batch.num_rows
        frames.flush()
        return rows
