"""MySQL/MariaDB sessions kept between calls (the driver's, and the ODBC one of `into=`) stay known."""

from __future__ import annotations

import datetime as dt
import time
from typing import Any

import pytest

from analysis.errors import DatasourceError

from .conftest import servers, source_config

ROWS = "SELECT CAST(seq AS SIGNED) AS n FROM seq_1_to_50000"  # signed BIGINT: the ODBC path


def _connections(source: Any) -> int:
    """The server's count of connections opened since it started (asked on ``source``'s own session)."""
    table = source.query("SHOW GLOBAL STATUS LIKE 'Connections'", None, timeout_s=5)
    return int(table.column(1)[0].as_py())


def _user_sessions(server: Any) -> list[int]:
    out = server.sql(f"SELECT ID FROM information_schema.PROCESSLIST WHERE USER = '{servers.USER}'")
    return [int(i) for i in out.split()]


def _loaded(duck: Any, table: str) -> tuple[int, int]:
    ((count, total),) = duck.connection.sql(f"SELECT count(*), sum(n) FROM {table}").fetchall()
    return int(count), int(total)


def test_into_reuses_its_odbc_connection(my: Any, duck: Any, odbc_driver: str) -> None:
    assert my.query_into(duck, "a", ROWS, None, timeout_s=10) == 50_000
    before = _connections(my)
    assert my.query_into(duck, "b", ROWS + " WHERE seq > ?", [49_990], timeout_s=10) == 10
    assert my.query_into(duck, "c", ROWS, None, timeout_s=10) == 50_000
    assert _connections(my) == before  # was one new server connection per call
    assert _loaded(duck, "c") == (50_000, 50_000 * 50_001 // 2)


def test_into_replaces_an_odbc_connection_that_died_while_idle(
    my: Any, my_server: Any, duck: Any, odbc_driver: str
) -> None:
    my.query("SELECT 1", None, timeout_s=5)
    others = set(_user_sessions(my_server))  # this source's, and other tests' (pooled by brokers)
    assert my.query_into(duck, "a", ROWS, None, timeout_s=10) == 50_000
    idle = [i for i in _user_sessions(my_server) if i not in others]
    assert len(idle) == 1  # the ODBC session, kept for the next call
    my_server.sql(f"KILL CONNECTION {idle[0]}")  # a server restart or an idle timeout
    assert my.query_into(duck, "b", ROWS, None, timeout_s=10) == 50_000
    assert _loaded(duck, "b") == (50_000, 50_000 * 50_001 // 2)


class _HangsUp:
    """A sink that takes one batch and fails as the broker's does when the kernel hangs up mid-stream."""

    connection = None

    def load_data(self, table: str, data: Any, **_: Any) -> int:
        next(iter(data))
        raise ConnectionResetError("the kernel hung up")


def test_into_abandoned_part_way_leaves_the_source_usable_and_no_session_behind(
    my: Any, my_server: Any, duck: Any, odbc_driver: str
) -> None:
    my.query("SELECT 1", None, timeout_s=5)
    others = set(_user_sessions(my_server))  # this source's, and other tests' (pooled by brokers)
    with pytest.raises(ConnectionResetError):
        my.query_into(_HangsUp(), "t", ROWS, None, timeout_s=10)
    give_up = time.monotonic() + 5  # the server ends a session a moment after its client left
    while not set(_user_sessions(my_server)) <= others and time.monotonic() < give_up:
        time.sleep(0.05)
    assert set(_user_sessions(my_server)) <= others  # the abandoned ODBC session was closed
    assert my.query_into(duck, "t", ROWS, None, timeout_s=10) == 50_000
    assert _loaded(duck, "t") == (50_000, 50_000 * 50_001 // 2)


def test_each_call_gets_its_own_time_limit_on_the_kept_connection(
    my: Any, duck: Any, odbc_driver: str
) -> None:
    sleep = "SELECT SLEEP(1) AS s"  # an integer column: the ODBC path
    with pytest.raises(DatasourceError, match=r"cancelled at its time limit of 0\.3 s"):
        my.query_into(duck, "s", sleep, None, timeout_s=0.3)
    assert my.query_into(duck, "s", sleep, None, timeout_s=30) == 1  # not the last call's 0.3 s
    before = _connections(my)
    with pytest.raises(DatasourceError, match=r"time limit of 0\.3 s"):
        my.query_into(duck, "s", sleep, None, timeout_s=0.3)
    assert my.query_into(duck, "s", sleep, None, timeout_s=30) == 1
    assert _connections(my) == before + 1  # a cancelled statement's connection is not kept


def test_kept_sessions_get_their_settings_again_whatever_ran_on_them(
    my_server: Any, duck: Any, odbc_driver: str
) -> None:
    from analysis.sources.mysql import MySQLDatasource

    source = MySQLDatasource("shop", source_config("mysql", my_server, read_only=False))
    try:
        source.query("DROP PROCEDURE IF EXISTS shift_zone", None, timeout_s=5)
        source.query(
            "CREATE PROCEDURE shift_zone() BEGIN SET time_zone = '+05:00'; SELECT 1 AS x; END",
            None,
            timeout_s=5,
        )
        assert source.query_into(duck, "z", "CALL shift_zone()", None, timeout_s=10) == 1
        sql = "SELECT @@time_zone AS tz, CAST(FROM_UNIXTIME(0) AS DATETIME) AS epoch"
        assert source.query_into(duck, "z", sql, None, timeout_s=10) == 1
        assert source.query("CALL shift_zone()", None, timeout_s=10).to_pylist() == [{"x": 1}]
        rows = source.query(sql, None, timeout_s=10).to_pylist()  # the driver's own session
        assert rows == [{"tz": "+00:00", "epoch": dt.datetime(1970, 1, 1)}]
    finally:
        source.close()
    # the next statement on the kept session runs in UTC again, as every datasource statement does
    assert duck.connection.sql("SELECT tz, epoch FROM z").fetchall() == [("+00:00", dt.datetime(1970, 1, 1))]


def test_a_call_leaves_the_session_ready_for_the_next_statement(my_server: Any) -> None:
    from analysis.sources.mysql import MySQLDatasource

    source = MySQLDatasource("shop", source_config("mysql", my_server, read_only=False))
    try:
        source.query("DROP PROCEDURE IF EXISTS echo_n", None, timeout_s=5)
        source.query("CREATE PROCEDURE echo_n(n INT) BEGIN SELECT n AS n; END", None, timeout_s=5)
        assert source.query("CALL echo_n(3)", None, timeout_s=5).to_pylist() == [{"n": 3}]
        # was [] (the CALL's status, left unread, taken for this statement's answer)
        assert source.query("SELECT 1 AS one", None, timeout_s=5).to_pylist() == [{"one": 1}]
        assert source.query("CALL echo_n(?)", [7], timeout_s=5).to_pylist() == [{"n": 7}]
        # was "Incorrect number of arguments executing prepared statement (error 1210)"
        assert source.query("SELECT ? AS two", [2], timeout_s=5).to_pylist() == [{"two": 2}]
    finally:
        source.close()
