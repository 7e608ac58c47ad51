"""Sending a result to the kernel as an Arrow IPC stream, in body frames of at most 1 MiB.

The frames go out from a sender thread, through a queue of at most ``_AHEAD_BYTES``: while
the kernel is still busy (its first ``into=`` imports pyarrow and DuckDB, then DuckDB loads
each batch), the datasource's reader goes on decoding the next batches instead of waiting
for the socket.
"""

from __future__ import annotations

import json
import threading
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any

from analysis.broker_wire import CASTS_KEY

__all__ = ["ArrowSink"]

_FRAME_BYTES = 1024 * 1024
#: How far the reader may run ahead of the kernel: frames queued in the runner, not yet sent.
_AHEAD_BYTES = 64 * 1024 * 1024


class _Sender:
    """Hands frames to ``send`` on its own thread; :meth:`put` blocks while ``_AHEAD_BYTES`` are queued.

    An error of ``send`` (the kernel hung up, the request was cancelled) is raised by the next
    :meth:`put` or by :meth:`close`; frames still queued then are dropped.
    """

    def __init__(self, send: Callable[[bytearray | memoryview], None]) -> None:
        self._send = send
        self._queue: deque[bytearray | memoryview | None] = deque()
        self._queued = 0
        self._error: BaseException | None = None
        self._ready = threading.Condition()
        self._thread = threading.Thread(target=self._run, name="analysis-broker-send", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while True:
            with self._ready:
                while not self._queue:
                    self._ready.wait()
                frame = self._queue.popleft()
            if frame is None:
                return
            try:
                self._send(frame)
            except BaseException as exc:  # handed to the reading thread
                with self._ready:
                    self._error = exc
                    self._queue.clear()
                    self._queued = 0
                    self._ready.notify_all()
                return
            with self._ready:
                self._queued -= len(frame)
                self._ready.notify_all()

    def _raise(self) -> None:
        if self._error is not None:
            raise self._error

    def put(self, frame: bytearray | memoryview) -> None:
        with self._ready:
            while self._error is None and self._queued >= _AHEAD_BYTES:
                self._ready.wait()
            self._raise()
            self._queue.append(frame)
            self._queued += len(frame)
            self._ready.notify_all()

    def close(self, *, drain: bool) -> None:
        """Stop the thread: after the queued frames (``drain``) or dropping them; raise its error, if any."""
        with self._ready:
            if not drain:
                self._queue.clear()
                self._queued = 0
            self._queue.append(None)
            self._ready.notify_all()
        self._thread.join()
        if drain:
            self._raise()


class _Frames:
    """A write-only file that cuts its bytes into frames of at most ``_FRAME_BYTES`` for ``put``."""

    closed = False

    def __init__(self, put: Callable[[bytearray], None]) -> None:
        self._put = put
        self._buf = bytearray()

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        view = memoryview(data).cast("B")
        if len(self._buf) + len(view) < _FRAME_BYTES:
            self._buf += view
            return len(view)
        self.flush()
        for start in range(0, len(view), _FRAME_BYTES):  # copied: the writer may reuse its buffer
            self._put(bytearray(view[start : start + _FRAME_BYTES]))
        return len(view)

    def flush(self) -> None:
        if self._buf:
            buf, self._buf = self._buf, bytearray()
            self._put(buf)

    def close(self) -> None:
        self.flush()


class ArrowSink:
    """Takes the place of the kernel's DuckDB for a datasource kind: ``load_data`` streams to the kernel.

    The datasource kinds end ``query_into`` with ``duck.load_data(table, data)``; here ``data``
    (an Arrow table or record batch reader) is written batch by batch as an IPC stream, so the
    rows are never Python objects on either side. While it runs, the body goes out from a
    sender thread (see the module docstring): nothing else may write to the connection then.
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
        sender = _Sender(self._send)
        rows = 0
        try:
            if _has_dictionary(schema):  # dictionaries are messages of their own: the stream writer
                rows = _write_stream(schema, batches, sender.put)
            else:
                # the messages a stream writer would write, each serialized once in C++ and sent
                # in frames that are views of it (no Python write per buffer, no copy)
                _put_message(sender.put, schema.serialize())  # the kernel sets up its reader meanwhile
                for batch in batches:
                    _put_message(sender.put, batch.serialize())  # the kernel loads it meanwhile
                    rows += batch.num_rows
                sender.put(memoryview(_END_OF_STREAM))
        except BaseException:
            sender.close(drain=False)
            raise
        sender.close(drain=True)
        return rows


#: The end-of-stream marker of the Arrow IPC stream format (a continuation and a zero length).
_END_OF_STREAM = b"\xff\xff\xff\xff\x00\x00\x00\x00"


def _put_message(put: Callable[[Any], None], message: Any) -> None:
    """Hand an encapsulated IPC message (a ``pyarrow.Buffer``) to ``put`` in frames of its memory."""
    view = memoryview(message)
    for start in range(0, len(view), _FRAME_BYTES):
        put(view[start : start + _FRAME_BYTES])


def _has_dictionary(schema: Any) -> bool:
    """Whether a field of ``schema``, nested ones included, is dictionary-encoded."""
    import pyarrow as pa

    def nested(typ: Any) -> bool:
        if pa.types.is_dictionary(typ):
            return True
        return any(nested(typ.field(i).type) for i in range(typ.num_fields))

    return any(nested(field.type) for field in schema)


def _write_stream(schema: Any, batches: Any, put: Callable[[Any], None]) -> int:
    """Write ``batches`` with pyarrow's stream writer (dictionaries and their deltas); the row count."""
    import pyarrow as pa

    frames = _Frames(put)
    rows = 0
    with pa.ipc.new_stream(pa.PythonFile(frames, mode="w"), schema) as writer:
        frames.flush()
        for batch in batches:
            writer.write_batch(batch)
            rows += batch.num_rows
            frames.flush()
    frames.flush()
    return rows
