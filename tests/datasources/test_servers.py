"""The throw-away servers survive losing their port between picking it and binding it."""

from __future__ import annotations

import socket
from typing import Any

import pytest

from .conftest import servers


@pytest.mark.parametrize("make", [servers.PostgresServer, servers.MariaDBServer], ids=["postgres", "mariadb"])
def test_a_port_taken_before_the_server_binds_it_is_replaced(
    make: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    missing = make.available()
    if missing:
        pytest.skip(missing)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        picked: list[int] = []
        pick = servers.free_port

        def free_port() -> int:  # the first pick is a port another process binds before the server does
            picked.append(port if not picked else pick())
            return picked[-1]

        monkeypatch.setattr(servers, "free_port", free_port)
        server = make().start()
        try:
            assert picked[0] == port and server.port == picked[-1] != port
            probe = (
                server.psql("SELECT 41 + 1")
                if make is servers.PostgresServer
                else server.sql("SELECT 41 + 1")
            )
            assert probe.strip() == "42"
        finally:
            server.stop()
