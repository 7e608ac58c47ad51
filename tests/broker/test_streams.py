"""The broker's side of a result stream (``ArrowSink``), read back by the kernel's own reader.

The two ends meet over a socket pair: the runner's sink writes body frames, the kernel's
``_Response`` and nanoarrow read them, as in a job.
"""

from __future__ import annotations

import datetime as dt
import json
import socket
import threading
from decimal import Decimal
from typing import Any

import pyarrow as pa
import pytest

from analysis.broker_client import _c_stream, _Response
from analysis.broker_wire import CASTS_KEY, send_data, send_header
from analysis.runner.broker.streams import ArrowSink


def _through_the_socket(data: Any, casts: list[str | None] | None = None) -> tuple[int, pa.Table]:
    """Stream ``data`` with ``ArrowSink``; what the kernel's reader makes of it, and the rows sent."""
    runner, kernel = socket.socketpair()
    sent: list[int] = []
    failed: list[BaseException] = []

    def broker() -> None:
        try:
            sent.append(ArrowSink(lambda body: send_data(runner, body)).load_data("t", data, casts=casts))
            send_header(runner, {"ok": True})
        except BaseException as exc:  # handed to the test
            failed.append(exc)

    thread = threading.Thread(target=broker)
    thread.start()
    try:
        response = _Response(kernel)
        assert response.final_first() is None
        table = pa.RecordBatchReader.from_stream(_c_stream(response)).read_all()
        assert response.finish() == {"ok": True}
    finally:
        thread.join(30)
        runner.close()
        kernel.close()
    assert not failed, failed
    return sent[0], table


def test_a_table_arrives_whole_with_its_types_nulls_and_casts() -> None:
    rows = 30_000
    table = pa.table(
        {
            "id": pa.array([None if i % 7 == 0 else i for i in range(rows)], pa.int64()),
            "name": [f"name-{i}" * (1 + i % 3) for i in range(rows)],
            "amount": pa.array([Decimal(i) / 100 for i in range(rows)], pa.decimal128(10, 2)),
            "at": pa.array([dt.datetime(2024, 1, 1, tzinfo=dt.UTC)] * rows, pa.timestamp("us", tz="UTC")),
            "pair": pa.array([{"a": i, "b": str(i)} for i in range(rows)]),
        }
    )
    piece = table.slice(5, rows - 10)  # views with offsets, in batches of 4,096 rows
    reader = pa.RecordBatchReader.from_batches(piece.schema, piece.to_batches(max_chunksize=4096))
    count, got = _through_the_socket(reader, casts=[None, "{}::VARCHAR", None, None, None])
    assert count == rows - 10
    assert got.equals(piece)
    assert json.loads(got.schema.metadata[CASTS_KEY]) == [None, "{}::VARCHAR", None, None, None]


def test_a_batch_larger_than_a_frame_and_an_empty_result() -> None:
    big = pa.table({"text": ["x" * 1000] * 5000})  # about 5 MB in one batch: several 1 MiB frames
    assert _through_the_socket(big.combine_chunks()) == (5000, big)
    empty = pa.table({"id": pa.array([], pa.int32())})
    count, got = _through_the_socket(empty)
    assert count == 0 and got.num_rows == 0 and got.schema == empty.schema


@pytest.mark.parametrize("nested", [False, True])
def test_dictionary_columns_arrive_with_their_dictionaries(nested: bool) -> None:
    codes = pa.DictionaryArray.from_arrays(pa.array([0, 1, 0, None, 2] * 1000, pa.int8()), ["a", "b", "c"])
    column: pa.Array = (
        pa.ListArray.from_arrays(pa.array(range(0, 5001, 5), pa.int32()), codes) if nested else codes
    )
    table = pa.table({"k": column, "n": pa.array(range(len(column)), pa.int64())})
    count, got = _through_the_socket(pa.RecordBatchReader.from_batches(table.schema, table.to_batches(300)))
    assert count == len(column)
    assert got.equals(table)
