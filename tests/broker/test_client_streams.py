"""The kernel side of ``into=``: a result stream that breaks is a ``DatasourceError``, and no table is left.

A real broker does not send broken streams, so a small fake one on the job's socket plays the
runner's part (a fault at the protocol edge); the kernel side is the real ``BrokerAccess`` and
DuckDB.
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pyarrow as pa
import pytest

from analysis.broker_client import BrokerAccess
from analysis.broker_wire import MAX_REQUEST_BYTES, recv_frame, send_data, send_header
from analysis.duck import Duck
from analysis.errors import DatasourceError


def _ipc(rows: int) -> bytes:
    table = pa.table({"id": pa.array(range(rows), pa.int64()), "name": [f"n{i}" for i in range(rows)]})
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        for batch in table.to_batches(max_chunksize=10_000):
            writer.write_batch(batch)
    return bytes(sink.getvalue().to_pybytes())


@pytest.fixture
def fake_broker(tmp_path: Path) -> Iterator[Callable[[Callable[[socket.socket], None]], Path]]:
    """Serve one request on a Unix socket with ``answer(sock)``; yields a function that starts it."""
    threads: list[threading.Thread] = []
    path = tmp_path / "broker.sock"
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(path))
    listener.listen()

    def start(answer: Callable[[socket.socket], None]) -> Path:
        def serve() -> None:
            conn, _ = listener.accept()
            with conn:
                recv_frame(conn, max_bytes=MAX_REQUEST_BYTES, headers_only=True)
                answer(conn)

        thread = threading.Thread(target=serve, daemon=True)
        thread.start()
        threads.append(thread)
        return path

    yield start
    listener.close()
    for thread in threads:
        thread.join(10)


def _into(path: Path) -> tuple[BaseException | None, bool]:
    """Run an ``into=`` against the fake broker: the error raised, and whether table ``t`` exists."""
    access, duck = BrokerAccess(path), Duck()
    try:
        access.query_into(duck, "t", "pg", "SELECT 1", None, timeout_s=10)
        error = None
    except BaseException as exc:  # what the user's code would see
        error = exc
    finally:
        access.close()
    try:
        tables = duck.connection.sql("SELECT count(*) FROM duckdb_tables() WHERE table_name = 't'").fetchall()
        exists = tables[0][0] > 0
    finally:
        duck.close()
    return error, exists


def test_a_stream_cut_off_mid_body_is_a_datasource_error(fake_broker: Callable[..., Path]) -> None:
    body = _ipc(100_000)
    path = fake_broker(lambda conn: send_data(conn, body[: len(body) // 2]))  # then hangs up
    error, exists = _into(path)
    assert isinstance(error, DatasourceError), repr(error)
    assert "could not be loaded into DuckDB table 't'" in str(error) and not exists


def test_a_body_that_is_not_arrow_is_a_datasource_error(fake_broker: Callable[..., Path]) -> None:
    def garbage(conn: socket.socket) -> None:
        send_data(conn, b"\xff" * 1000)
        send_header(conn, {"ok": True, "rows": 1})

    error, exists = _into(fake_broker(garbage))
    assert isinstance(error, DatasourceError), repr(error)
    assert "malformed result stream" in str(error) and not exists


def test_the_brokers_own_error_wins_over_the_broken_body(fake_broker: Callable[..., Path]) -> None:
    body = _ipc(100_000)

    def cancelled(conn: socket.socket) -> None:
        send_data(conn, body[: len(body) // 2])
        send_header(
            conn, {"ok": False, "error": {"class": "DatasourceError", "message": "it was cancelled."}}
        )

    error, exists = _into(fake_broker(cancelled))
    assert isinstance(error, DatasourceError) and str(error) == "it was cancelled." and not exists


def test_a_whole_stream_loads(fake_broker: Callable[..., Path]) -> None:
    body = _ipc(25_000)

    def whole(conn: socket.socket) -> None:
        for start in range(0, len(body), 4096):  # small frames: reads span them
            send_data(conn, body[start : start + 4096])
        send_header(conn, {"ok": True, "rows": 25_000})

    path = fake_broker(whole)
    access, duck = BrokerAccess(path), Duck()
    try:
        assert access.query_into(duck, "t", "pg", "SELECT 1", None, timeout_s=10) == 25_000
        loaded = duck.connection.sql("SELECT count(*), sum(id), max(name) FROM t").fetchall()
        assert loaded == [(25_000, sum(range(25_000)), "n9999")]
    finally:
        access.close()
        duck.close()


def test_log_lines_between_body_frames_go_to_stderr_and_the_rows_load(
    fake_broker: Callable[..., Path], capsys: pytest.CaptureFixture[str]
) -> None:
    body = _ipc(25_000)
    middle = len(body) // 2 + 3  # a frame boundary in the middle of an Arrow message

    def interleaved(conn: socket.socket) -> None:
        send_data(conn, body[:middle])
        send_header(conn, {"log": "[query:pg] half way"})
        send_data(conn, body[middle:])
        send_header(conn, {"ok": True, "rows": 25_000})

    path = fake_broker(interleaved)
    access, duck = BrokerAccess(path), Duck()
    try:
        assert access.query_into(duck, "t", "pg", "SELECT 1", None, timeout_s=10) == 25_000
        assert duck.connection.sql("SELECT count(*), sum(id) FROM t").fetchall() == [
            (25_000, sum(range(25_000)))
        ]
    finally:
        access.close()
        duck.close()
    assert "[query:pg] half way" in capsys.readouterr().err


def test_file_bodies_arrive_as_bytes_one_piece_per_frame(fake_broker: Callable[..., Path]) -> None:
    def two_frames(conn: socket.socket) -> None:
        send_data(conn, b"hello ")
        send_data(conn, b"world")
        send_header(conn, {"ok": True, "headers": {"content-type": "text/plain"}})

    access = BrokerAccess(fake_broker(two_frames))
    pieces: list[object] = []
    try:
        headers = access.get_file("/api/files/x/content", pieces.append, None, "x")
    finally:
        access.close()
    assert pieces == [b"hello ", b"world"] and all(type(p) is bytes for p in pieces)
    assert headers == {"content-type": "text/plain"}
