"""The result cache in the runner's broker, spoken to over its socket as a kernel would."""

from __future__ import annotations

import socket
import struct
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from analysis.config import Settings
from analysis.deadline import Deadline
from analysis.runner.broker import BrokerServer, ConnectionPool

from .conftest import CountingPostgres


@pytest.fixture
def broker(tmp_path: Path, sources_file: Path, secret_key: str) -> Iterator[BrokerServer]:
    job_dir = tmp_path / "job"
    job_dir.mkdir(mode=0o700)
    settings = Settings(root=tmp_path / "root", datasources_file=sources_file, secret_key=secret_key)
    pool = ConnectionPool()
    server = BrokerServer(job_dir, "p1", settings, deadline=Deadline(None), pool=pool).start()
    try:
        yield server
    finally:
        server.stop()
        pool.close()


def _connect(server: BrokerServer) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.connect(str(server.socket_path))
    sock.settimeout(60)
    return sock


def _send(sock: socket.socket, request: dict[str, Any]) -> None:
    payload = orjson.dumps(request)
    sock.sendall(b"H" + struct.pack(">I", len(payload)) + payload)


def _logs_until_final(sock: socket.socket) -> tuple[list[str], dict[str, Any]]:
    logs: list[str] = []
    buf = b""
    while True:
        while len(buf) < 5 or len(buf) < 5 + struct.unpack(">I", buf[1:5])[0]:
            chunk = sock.recv(1 << 20)
            assert chunk, "the broker closed the connection"
            buf += chunk
        size = struct.unpack(">I", buf[1:5])[0]
        kind, payload, buf = buf[:1], buf[5 : 5 + size], buf[5 + size :]
        if kind == b"H":
            header = orjson.loads(payload)
            if "log" in header:
                logs.append(header["log"])
            else:
                return logs, header


def _wait(check: Callable[[], bool], timeout_s: float = 60) -> bool:
    give_up = time.monotonic() + timeout_s
    while time.monotonic() < give_up:
        if check():
            return True
        time.sleep(0.05)
    return check()


def test_a_kernel_hanging_up_mid_fill_leaves_no_entry(
    broker: BrokerServer, tmp_path: Path, counting_pg: CountingPostgres
) -> None:
    tag = counting_pg.tag()
    sql = "SELECT g, repeat('x', 100) AS pad, (SELECT counted(?)) AS c FROM generate_series(1, 600000) g"
    request = {
        "op": "query",
        "name": "pg",
        "sql": sql,
        "params": {"positional": [tag]},
        "into": True,
        "cache": 3600,
    }
    folder = tmp_path / "root" / "p1" / "analysis" / "cache"
    sock = _connect(broker)
    _send(sock, request)
    received = 0
    while received < 2 << 20:  # the body is flowing: the fill has begun
        chunk = sock.recv(1 << 16)
        assert chunk
        received += len(chunk)
    assert list(folder.glob(".*.tmp")), "the fill should be writing its temporary file"
    sock.close()
    assert _wait(lambda: not list(folder.glob(".*.tmp")))  # removed once the broker saw the hang-up
    assert not [p for p in folder.iterdir() if p.suffix in (".json", ".parquet", ".arrow")]

    with _connect(broker) as again:
        _send(again, request)
        logs, final = _logs_until_final(again)
    assert final == {"ok": True, "rows": 600000}
    assert [line.split()[1] for line in logs if line.startswith("[cache]")] == ["miss", "stored"]
    assert not any(tag in line for line in logs)
    assert counting_pg.calls(tag) == 2


def test_a_cached_query_is_logged_without_the_password(broker: BrokerServer) -> None:
    from .conftest import servers

    # a query that quotes the datasource's password: the broker learns it when it opens the
    # datasource, which a cached query does only on a miss, before its line is logged
    sql = f"SELECT '{servers.PASSWORD}' AS p, 'ok' AS q"
    request = {"op": "query", "name": "pg", "sql": sql, "params": None, "into": True, "cache": 3600}
    lines: list[str] = []
    for _ in range(2):
        with _connect(broker) as sock:
            _send(sock, request)
            logs, final = _logs_until_final(sock)
        assert final["ok"] is True and final["rows"] == 1
        lines += logs
    assert [line.split()[:2] for line in lines if not line.startswith("[load_data]")] == [
        ["[query:datasource]", "pg"],
        ["[cache]", "miss"],
        ["[cache]", "stored"],
        ["[query:datasource]", "pg"],
        ["[cache]", "hit"],
    ]
    assert not any(servers.PASSWORD in line for line in lines), lines
    assert "SELECT '***' AS p" in lines[0]


def test_a_hit_hands_the_kernel_its_own_read_only_copy(
    broker: BrokerServer, tmp_path: Path, counting_pg: CountingPostgres
) -> None:
    """A Parquet hit comes as a file in the job directory: a copy, so the kernel cannot touch the entry."""
    import duckdb

    tag = counting_pg.tag()
    sql = (
        "SELECT n, CAST(n / 4.0 AS NUMERIC(10, 2)) AS m, (SELECT counted(?)) AS c "
        "FROM generate_series(1, 1000) AS n"
    )
    params = {"positional": [tag]}
    request = {"op": "query", "name": "pg", "sql": sql, "params": params, "into": True, "cache": 3600}
    finals = []
    for _ in range(3):
        with _connect(broker) as sock:
            _send(sock, request)
            _, final = _logs_until_final(sock)
        finals.append(final)
        if "cached_file" in final:
            copy = broker.job_dir / final["cached_file"]
            entry = next((tmp_path / "root" / "p1" / "analysis" / "cache").glob("*.parquet"))
            assert copy.stat().st_ino != entry.stat().st_ino and copy.stat().st_mode & 0o777 == 0o444
            assert final["casts"] is None  # the decimal column was stored as DECIMAL(10,2)
            found = duckdb.sql(f"SELECT sum(n), CAST(sum(m) AS VARCHAR), typeof(any_value(m)) FROM '{copy}'")
            assert found.fetchall() == [(500500, "125125.00", "DECIMAL(10,2)")]
            copy.chmod(0o644)  # the kernel owns its copy: scribbling on it changes nothing in the cache
            copy.write_bytes(b"not parquet")
    assert "cached_file" not in finals[0] and all("cached_file" in f for f in finals[1:])
    assert finals[1]["cached_file"] != finals[2]["cached_file"]
    assert [f["rows"] for f in finals] == [1000, 1000, 1000]
    assert counting_pg.calls(tag) == 1
