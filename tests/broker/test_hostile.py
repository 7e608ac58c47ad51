"""A kernel that misbehaves on the broker's socket, played by a raw socket client.

Each test sends what a hostile or broken kernel could (garbage, oversized or malformed frames,
slow frames, floods, disconnects mid-query and mid-stream) and checks that it gets an error
or is cut off, and that the broker still answers a well-behaved client afterwards.
"""

from __future__ import annotations

import contextlib
import os
import socket
import struct
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import pytest

from analysis.broker_wire import encode_params
from analysis.config import Settings
from analysis.runner.broker import BrokerServer, ConnectionPool

from .conftest import servers, write_sources


def connect(server: BrokerServer) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    fd = os.open(server.job_dir, os.O_PATH)
    try:
        sock.connect(f"/proc/self/fd/{fd}/{server.socket_path.name}")
    finally:
        os.close(fd)
    sock.settimeout(30)
    return sock


def header(obj: Any) -> bytes:
    payload = obj if isinstance(obj, bytes) else orjson.dumps(obj)
    return b"H" + struct.pack(">I", len(payload)) + payload


def frames(sock: socket.socket) -> list[tuple[str, Any]]:
    """Every frame until the broker's final header, or until it closes the connection."""
    out: list[tuple[str, Any]] = []
    buf = b""
    while True:
        while len(buf) < 5 or len(buf) < 5 + struct.unpack(">I", buf[1:5])[0]:
            chunk = sock.recv(1 << 20)
            if not chunk:
                return out
            buf += chunk
        size = struct.unpack(">I", buf[1:5])[0]
        kind, payload, buf = chr(buf[0]), buf[5 : 5 + size], buf[5 + size :]
        if kind == "D":
            out.append((kind, payload))
            continue
        head = orjson.loads(payload)
        out.append((kind, head))
        if "ok" in head:
            return out


def closed(sock: socket.socket) -> bool:
    """Whether the broker closed the connection (EOF within 30 s)."""
    try:
        return sock.recv(1) == b""
    except ConnectionResetError:
        return True


def final(sock: socket.socket, request: Any) -> dict[str, Any]:
    sock.sendall(header(request))
    got = frames(sock)
    assert got and got[-1][0] == "H", got
    return dict(got[-1][1])


def names_work(server: BrokerServer) -> bool:
    with connect(server) as sock:
        return final(sock, {"op": "names"}) == {"ok": True, "names": ["shop"]}


@pytest.fixture
def broker(make_broker: Callable[..., BrokerServer], tmp_path: Path, shop_db: Path) -> BrokerServer:
    config = write_sources(tmp_path / "ds.toml", "unused", sqlite=shop_db)
    return make_broker(
        Settings(root=tmp_path, datasources_file=config), frame_timeout_s=0.5, max_connections=3
    )


def test_a_good_request_streams_arrow(broker: BrokerServer) -> None:
    import pyarrow as pa

    with connect(broker) as sock:
        sock.sendall(header({"op": "query", "name": "shop", "sql": "SELECT * FROM orders WHERE id > ?",
                             "params": encode_params([1]), "into": False, "cache": None}))  # fmt: skip
        got = frames(sock)
    logs = [h["log"] for k, h in got if k == "H" and "log" in h]
    body = b"".join(p for k, p in got if k == "D")
    assert logs == ["[query:datasource] shop SELECT * FROM orders WHERE id > ?"]
    assert pa.ipc.open_stream(body).read_all().to_pylist() == [
        {"id": 2, "item": "pear", "amount": 2.25},
        {"id": 3, "item": "fig", "amount": None},
    ]
    assert got[-1] == ("H", {"ok": True, "rows": 2})


_QUERY = {"op": "query", "name": "shop", "sql": "SELECT 1", "params": None, "into": False, "cache": None}
_FILES = {"op": "files.get", "path": "/api/files", "params": {}, "file_id": None, "cache": None}


@pytest.mark.parametrize(
    ("sent", "says"),
    [
        (b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", "unexpected frame kind"),
        (b"D" + struct.pack(">I", 3) + b"abc", "unexpected frame kind"),
        (b"H" + struct.pack(">I", 2**31), "over the 4194304-byte limit"),
        (header(b"{not json"), "not valid JSON"),
        (header([1, 2]), "must be a JSON object"),
        (header({"op": "drop_tables"}), "unknown request op"),
        (header({"op": "names", "project": "other"}), "unknown fields ['project']"),
        (
            header({"op": "query", "name": "shop", "sql": "SELECT 1", "params": None}),
            "missing ['cache', 'into']",
        ),
        (header({**_QUERY, "into": "yes"}), "'into'"),
        (header({**_QUERY, "name": ""}), "'name'"),
        (header({**_QUERY, "cache": "15m"}), "'cache' must be null or a number of seconds"),
        (header({**_QUERY, "cache": -1}), "'cache' must be null or a number of seconds"),
        (header({**_QUERY, "cache": 1e12}), "'cache' must be null or a number of seconds"),
        (header({**_QUERY, "cache": True}), "'cache' must be null or a number of seconds"),
        (
            header(
                {
                    "op": "query",
                    "name": "shop",
                    "sql": "SELECT ?",
                    "params": {"positional": [{"$t": "pickle", "v": "x"}]},
                    "into": False,
                    "cache": None,
                }
            ),
            "unknown type tag",
        ),
        (
            header({**_QUERY, "sql": "SELECT ?", "params": [1]}),
            "params must",
        ),
        (
            header({**_FILES, "path": "/api/files/../../etc/passwd"}),
            "not a file API path",
        ),
        (header({**_FILES, "path": "/admin"}), "not a file API path"),
        (header({**_FILES, "cache": 60}), "'cache' applies only to a file's content"),
        (header({**_FILES, "cache": "1h"}), "'cache' must be null or a number of seconds"),
        (
            header({**_FILES, "params": {"q": {"$ne": 1}}}),
            "file API parameters",
        ),
    ],
)
def test_malformed_input_gets_an_error_and_is_cut_off(broker: BrokerServer, sent: bytes, says: str) -> None:
    with connect(broker) as sock:
        sock.sendall(sent)
        got = frames(sock)
        assert len(got) == 1 and got[0][1]["ok"] is False, got
        assert "refused the request" in got[0][1]["error"]["message"]
        assert says in got[0][1]["error"]["message"]
        assert closed(sock)
    assert names_work(broker)


def test_a_frame_that_arrives_too_slowly_is_cut_off(broker: BrokerServer) -> None:
    with connect(broker) as sock:
        sock.sendall(b"H" + struct.pack(">I", 100) + b'{"op": ')  # and then nothing more
        got = frames(sock)
        assert "too slowly" in got[0][1]["error"]["message"]
        assert closed(sock)
    assert names_work(broker)


def test_an_idle_connection_between_requests_is_kept(broker: BrokerServer) -> None:
    with connect(broker) as sock:
        assert final(sock, {"op": "names"})["ok"]
        time.sleep(1.5)  # three times the frame timeout: waiting for the next request is not slow
        assert final(sock, {"op": "names"})["names"] == ["shop"]


def test_connections_past_the_limit_are_refused(broker: BrokerServer) -> None:
    held = [connect(broker) for _ in range(3)]
    try:
        for sock in held:
            assert final(sock, {"op": "names"})["ok"]
        with connect(broker) as extra:
            got = frames(extra)
            assert "max_connections" in got[0][1]["error"]["message"]
            assert closed(extra)
        held.pop().close()

        def slot_free() -> bool:  # the closed connection's thread ends asynchronously
            try:
                return names_work(broker)
            except (OSError, AssertionError):
                return False

        assert _wait(slot_free)
    finally:
        for sock in held:
            sock.close()


def test_a_flood_of_connections_leaves_no_thread_behind(broker: BrokerServer) -> None:
    before = {t.ident for t in threading.enumerate()}
    threads_before = len(before)
    for i in range(300):
        with connect(broker) as sock, contextlib.suppress(OSError):  # refused past max_connections
            if i % 3 == 0:
                sock.sendall(os.urandom(64))
            elif i % 3 == 1:
                sock.sendall(header({"op": "names"})[:7])  # hang up mid-frame
    give_up = time.monotonic() + 20
    while threading.active_count() > threads_before and time.monotonic() < give_up:
        time.sleep(0.05)
    left = [f"{t.name} (daemon={t.daemon})" for t in threading.enumerate() if t.ident not in before]
    assert threading.active_count() <= threads_before, left
    # connections of the flood still in the listen backlog are accepted (and end) after the
    # threads above did: for a moment they may hold the job's slots, and a new one is refused
    assert _wait(lambda: names_work(broker), within_s=20)


# -- against a real database: disconnects must cancel and must not leak connections -------------
def _connections(pg: Any) -> int:
    out = pg.psql(f"SELECT count(*) FROM pg_stat_activity WHERE usename = '{servers.USER}'")
    return int(out.strip())


def _wait(check: Callable[[], bool], within_s: float = 10.0) -> bool:
    give_up = time.monotonic() + within_s
    while not check():
        if time.monotonic() > give_up:
            return False
        time.sleep(0.05)
    return True


@pytest.fixture
def pg_broker(
    make_broker: Callable[..., BrokerServer], tmp_path: Path, pg_server: Any, secret_key: str
) -> Any:
    config = write_sources(tmp_path / "pg.toml", secret_key, pg=pg_server)
    pool = ConnectionPool()
    settings = Settings(root=tmp_path, datasources_file=config, secret_key=secret_key)
    server = make_broker(settings, pool=pool)
    assert _wait(lambda: _connections(pg_server) == 0)
    return server, pool


@pytest.mark.parametrize("into", [False, True])
def test_disconnect_mid_query_cancels_it_on_the_server(pg_broker: Any, pg_server: Any, into: bool) -> None:
    server, pool = pg_broker
    sock = connect(server)
    sock.sendall(header({"op": "query", "name": "pg", "sql": "SELECT pg_sleep(60) AS hostile_sleep",
                         "params": None, "into": into, "cache": None}))  # fmt: skip
    running = "SELECT count(*) FROM pg_stat_activity WHERE state = 'active' AND query LIKE '%hostile_sleep%'"
    assert _wait(lambda: int(pg_server.psql(running + " AND pid <> pg_backend_pid()").strip()) == 1)
    sock.close()
    assert _wait(lambda: int(pg_server.psql(running + " AND pid <> pg_backend_pid()").strip()) == 0)
    assert _wait(lambda: _connections(pg_server) == 0)  # the cancelled connection was closed, not kept
    assert pool.idle_count() == 0


@pytest.mark.parametrize("into", [False, True])
def test_disconnect_mid_stream_leaks_no_connection(pg_broker: Any, pg_server: Any, into: bool) -> None:
    server, pool = pg_broker
    sock = connect(server)
    sql = "SELECT g, repeat('x', 100) AS pad FROM generate_series(1, 600000) g"
    sock.sendall(header({**_QUERY, "name": "pg", "into": into, "sql": sql}))
    buf = b""
    while len(buf) < 2 << 20:  # wait for body frames to flow, then hang up
        chunk = sock.recv(1 << 16)
        assert chunk
        buf += chunk
    sock.close()
    assert _wait(lambda: _connections(pg_server) == 0)
    assert pool.idle_count() == 0
    with connect(server) as again:  # and the broker still serves
        sock2 = again
        sock2.sendall(header({"op": "query", "name": "pg", "sql": "SELECT 41 + 1 AS n", "params": None,
                              "into": False, "cache": None}))  # fmt: skip
        assert frames(sock2)[-1][1] == {"ok": True, "rows": 1}


def test_sending_during_an_answer_cancels_it(pg_broker: Any, pg_server: Any) -> None:
    server, _ = pg_broker
    with connect(server) as sock:
        sock.sendall(header({"op": "query", "name": "pg", "sql": "SELECT pg_sleep(60) AS pipelined_sleep",
                             "params": None, "into": False, "cache": None}))  # fmt: skip
        running = (
            "SELECT count(*) FROM pg_stat_activity WHERE state = 'active' AND query LIKE '%pipelined_sleep%'"
            " AND pid <> pg_backend_pid()"
        )
        assert _wait(lambda: int(pg_server.psql(running).strip()) == 1)
        sock.sendall(header({"op": "names"}))  # not allowed before the answer is complete
        assert _wait(lambda: int(pg_server.psql(running).strip()) == 0)
        try:
            got = frames(sock)
        except ConnectionResetError:  # closed with our request unread
            got = []
        assert [h["ok"] for k, h in got if k == "H" and "ok" in h] in ([], [False])
        assert closed(sock)


def test_a_result_too_big_for_the_runner_is_cancelled(
    make_broker: Callable[..., BrokerServer], tmp_path: Path, pg_server: Any, secret_key: str
) -> None:
    config = write_sources(tmp_path / "big.toml", secret_key, pg=pg_server)
    pool = ConnectionPool()
    settings = Settings(root=tmp_path, datasources_file=config, secret_key=secret_key)
    server = make_broker(settings, pool=pool, max_request_memory_bytes=64 * 1024 * 1024)
    sql = "SELECT repeat('x', 1000) AS pad FROM generate_series(1, 1000000)"  # about 1 GB of rows
    with connect(server) as sock:
        answer = final(
            sock, {"op": "query", "name": "pg", "sql": sql, "params": None, "into": False, "cache": None}
        )
        assert answer["ok"] is False and answer["error"]["class"] == "ResourceLimitError", answer
        assert "max_request_memory_bytes" in answer["error"]["message"]
        assert "into=" in answer["error"]["message"]
        small = {
            "op": "query",
            "name": "pg",
            "sql": "SELECT 1 AS one",
            "params": None,
            "into": False,
            "cache": None,
        }
        assert final(sock, small) == {"ok": True, "rows": 1}  # the same connection still serves
    assert _wait(lambda: _connections(pg_server) <= 1)  # the cancelled connection was closed
