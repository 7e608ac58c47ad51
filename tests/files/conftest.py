"""Fixtures for the file API tests: sample files, the reference server on loopback, a faulty server.

The reference server (``analysis.runner.fileserver``) runs under uvicorn in a thread on a free
127.0.0.1 port. ``FaultServer`` is a small raw-socket HTTP/1.1 server that misbehaves on purpose,
so faults are real bytes on a real socket, not mocks.
"""

from __future__ import annotations

import json
import socket
import socketserver
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from analysis.config import Settings
from analysis.files import FileApiLimits, Files

TOKEN = "s3cret-token-for-tests-only"

# -- sample files ---------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def file_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder of sample files: CSV, Parquet, JSON array, JSON lines, text, binary, a conversation."""
    root = tmp_path_factory.mktemp("files")
    (root / "sales.csv").write_text(
        "region;amount;day\nnorth;10.5;2024-01-02\nsouth;7;2024-01-03\neast;;2024-01-04\n"
    )
    pq.write_table(pa.table({"id": [1, 2, 3], "name": ["a", "b", None]}), root / "people.parquet")
    (root / "events.json").write_text(json.dumps([{"kind": "open", "n": 1}, {"kind": "close", "n": 2}]))
    (root / "events.jsonl").write_text('{"kind": "open", "n": 1}\n{"kind": "close", "n": 2}\n{"kind": "x"}\n')
    (root / "notes.txt").write_text(
        "Quarterly notes: the zebra migration report is attached.\n", encoding="utf-8"
    )
    (root / "latin.txt").write_bytes("café".encode("latin-1"))
    (root / "blob.bin").write_bytes(bytes(range(256)) * 4)
    (root / ".hidden.csv").write_text("a\n1\n")
    (root / "has space.csv").write_text("a\n1\n")
    conv = root / "conv-1"
    conv.mkdir()
    (conv / "budget.csv").write_text("item,cost\nrent,100\nfood,50\n")
    outside = tmp_path_factory.mktemp("outside")
    (outside / "secret.txt").write_text("do not serve\n")
    (root / "escape.txt").symlink_to(outside / "secret.txt")
    return root


# -- servers in threads ---------------------------------------------------------------------------


class UvicornThread:
    """uvicorn serving an ASGI app on a free loopback port, in a daemon thread."""

    def __init__(self, app: Any) -> None:
        import uvicorn

        config = uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning", lifespan="off", ws="none")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, name="uvicorn-files", daemon=True)

    def __enter__(self) -> str:
        self.thread.start()
        deadline = time.monotonic() + 60  # a wait, not a speed check: a loaded machine may be slow
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.01)
        port = self.server.servers[0].sockets[0].getsockname()[1]
        return f"http://127.0.0.1:{port}"

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(10)


@pytest.fixture(scope="session")
def server_url(file_root: Path) -> Iterator[str]:
    """Base URL of the reference server over ``file_root``, token ``TOKEN`` required."""
    from analysis.runner.fileserver import create_app

    with UvicornThread(create_app(file_root, token=TOKEN)) as url:
        yield url


@pytest.fixture
def make_files() -> Iterator[Callable[..., Files]]:
    """Build ``Files`` clients (closed after the test): ``make_files(url, token=..., **limits)``."""
    made: list[Files] = []

    def make(
        url: str, *, token: str | None = TOKEN, deadline: Any = None, duck: Any = None, **limits: Any
    ) -> Files:
        settings = Settings(backend_url=url, backend_token=token)
        base = {"backoff_initial_s": 0.05, "backoff_max_s": 0.2} | limits
        files = Files(settings=settings, deadline=deadline, duck=duck, limits=FileApiLimits(**base))
        made.append(files)
        return files

    yield make
    for files in made:
        files.close()


# -- the faulty server ----------------------------------------------------------------------------


@dataclass
class Reply:
    """What the fault server does for one request."""

    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""
    #: "normal", "hang" (never answer), "trickle" (body a byte a second), "trickle_head" (status
    #: line and headers a byte a second), "truncate" (close mid-body), "chunked" (no
    #: content-length, body in chunks), "close" (close without a response)
    mode: str = "normal"


Script = Callable[[str, dict[str, str]], Reply]


class _Handler(socketserver.BaseRequestHandler):
    server: FaultServer

    def handle(self) -> None:
        sock: socket.socket = self.request
        sock.settimeout(30)
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = sock.recv(65536)
            if not chunk:
                return
            data += chunk
        head = data.split(b"\r\n\r\n", 1)[0].decode("latin-1").split("\r\n")
        target = head[0].split(" ")[1]
        headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in head[1:])}
        self.server.requests.append((target, headers))
        reply = self.server.script(target, headers)
        if reply.mode == "hang":
            self.server.stop.wait(30)
            return
        if reply.mode == "close":
            return
        lines = [f"HTTP/1.1 {reply.status} X"]
        hdrs = {"connection": "close", **reply.headers}
        if reply.mode == "chunked":
            hdrs["transfer-encoding"] = "chunked"
        elif "content-length" not in hdrs:
            hdrs["content-length"] = str(len(reply.body))
        lines += [f"{k}: {v}" for k, v in hdrs.items()]
        head_bytes = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
        try:
            if reply.mode == "trickle_head":
                for i in range(len(head_bytes)):
                    if self.server.stop.wait(1.0):
                        return
                    sock.sendall(head_bytes[i : i + 1])
            else:
                sock.sendall(head_bytes)
            if reply.mode == "trickle":
                for i in range(len(reply.body)):
                    if self.server.stop.wait(1.0):
                        return
                    sock.sendall(reply.body[i : i + 1])
            elif reply.mode == "truncate":
                sock.sendall(reply.body[: len(reply.body) // 2])
            elif reply.mode == "chunked":
                for i in range(0, len(reply.body), 65536):
                    part = reply.body[i : i + 65536]
                    sock.sendall(f"{len(part):x}\r\n".encode() + part + b"\r\n")
                sock.sendall(b"0\r\n\r\n")
            else:
                sock.sendall(reply.body)
        except OSError:
            return  # the client hung up, as it should on a body over the cap


class FaultServer(socketserver.ThreadingTCPServer):
    """A raw HTTP/1.1 server on 127.0.0.1 whose replies a test scripts; records every request."""

    daemon_threads = True
    allow_reuse_address = True
    Reply = Reply

    @staticmethod
    def json(payload: Any, status: int = 200, headers: dict[str, str] | None = None) -> Reply:
        """A JSON reply."""
        hdrs = {"content-type": "application/json", **(headers or {})}
        return Reply(status, hdrs, json.dumps(payload).encode())

    def paths(self) -> list[str]:
        """The request targets received so far."""
        return [target for target, _ in self.requests]

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.script: Script = lambda target, headers: Reply(404)
        self.requests: list[tuple[str, dict[str, str]]] = []
        self.stop = threading.Event()
        self.url = f"http://127.0.0.1:{self.server_address[1]}"
        self._thread = threading.Thread(
            target=self.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )

    def start(self) -> FaultServer:
        self._thread.start()
        return self

    def close(self) -> None:
        self.stop.set()
        self.shutdown()
        self.server_close()
        self._thread.join(5)


@pytest.fixture
def fault_server() -> Iterator[FaultServer]:
    """A fresh misbehaving server per test."""
    server = FaultServer().start()
    try:
        yield server
    finally:
        server.close()


@pytest.fixture
def other_fault_server() -> Iterator[FaultServer]:
    """A second fault server: another origin (another port) on loopback."""
    server = FaultServer().start()
    try:
        yield server
    finally:
        server.close()


@pytest.fixture(scope="session")
def token() -> str:
    """The bearer token the reference server requires."""
    return TOKEN
