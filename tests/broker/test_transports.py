"""One implementation, two transports: ``ctx`` in-process and through the broker give the same answers."""

from __future__ import annotations

import datetime as dt
import decimal
import math
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from analysis.access import LocalAccess
from analysis.broker_client import BrokerAccess
from analysis.broker_wire import decode_params, encode_params, error_from_wire, error_to_wire
from analysis.config import Settings
from analysis.context import Context
from analysis.duck import Duck
from analysis.errors import DatasourceError, DatasourceNotFoundError
from analysis.files import FileApiTimeoutError, FileNotFoundInApiError
from analysis.runner.broker import BrokerServer, ConnectionPool
from analysis.sources import Datasources

from .conftest import write_sources

PG_TYPES = """SELECT 1::int2 AS i2, 2::int8 AS i8, 1.5::float8 AS f, 12.34::numeric(10, 2) AS m,
    'x'::text AS t, DATE '2024-02-29' AS d, TIMESTAMP '2024-01-02 03:04:05.678' AS ts,
    TIMESTAMPTZ '2024-01-02 03:04:05+02' AS tz, '{"a": [1, 2]}'::jsonb AS j, ARRAY[1, 2] AS arr,
    '\\x00ff'::bytea AS b, NULL::text AS n, ? AS p"""


def test_params_survive_the_wire() -> None:
    values = [None, True, 7, 2**70, -1.25, math.inf, "text", b"\x00\xff", dt.date(2024, 2, 29),
              dt.datetime(2024, 1, 2, 3, 4, 5, 6, tzinfo=dt.UTC), dt.time(1, 2, 3),
              dt.timedelta(days=-1, seconds=5), decimal.Decimal("-12.340"), uuid.UUID(int=5),
              [1, [dt.date(2024, 1, 1), None]]]  # fmt: skip
    decoded = decode_params(encode_params(values))
    assert decoded == [list(v) if isinstance(v, list) else v for v in values]
    assert decode_params(encode_params({"a": decimal.Decimal("1.5")})) == {"a": decimal.Decimal("1.5")}
    assert math.isnan(decode_params(encode_params([math.nan]))[0])  # type: ignore[index]
    with pytest.raises(TypeError, match="of type object cannot be sent"):
        encode_params([object()])


def test_errors_keep_their_class_message_and_fields() -> None:
    for error in (
        DatasourceNotFoundError("Datasource 'x' is not configured."),
        FileNotFoundInApiError("file 'a' was not found.", file_id="a", path="/api/files/a"),
        FileApiTimeoutError("GET /x timed out.", path="/x", limit="read_timeout_s", limit_s=3.0),
    ):
        again = error_from_wire(error_to_wire(error))
        assert type(again) is type(error)
        assert str(again) == str(error) and vars(again) == vars(error)
        assert again.to_dict() == error.to_dict()  # type: ignore[attr-defined]
    unknown = error_from_wire({"class": "SystemExit", "message": "no"})
    assert type(unknown).__name__ == "AnalysisError"


@pytest.fixture
def pg_config(tmp_path: Path, pg_server: Any, secret_key: str) -> Path:
    return write_sources(tmp_path / "ds.toml", secret_key, pg=pg_server)


@pytest.fixture
def broker_ctx(make_broker: Callable[..., BrokerServer], pg_config: Path, secret_key: str) -> Any:
    server = make_broker(Settings(root=pg_config.parent, datasources_file=pg_config, secret_key=secret_key))
    ctx = Context(access=BrokerAccess(server.socket_path), settings=Settings())
    yield ctx
    ctx.close()


def test_the_broker_gives_what_in_process_gives(
    broker_ctx: Context, pg_config: Path, secret_key: str
) -> None:
    local = Context(settings=Settings(datasources_file=pg_config, secret_key=secret_key))
    try:
        for ctx in (local, broker_ctx):
            ctx.query_datasource("pg", PG_TYPES, ["param"], into="t")
        here = local.query_datasource("pg", PG_TYPES, ["param"])
        there = broker_ctx.query_datasource("pg", PG_TYPES, ["param"])
        assert there.arrow().equals(here.arrow()) and there.rows == here.rows
        assert broker_ctx.query("SELECT * FROM t").rows == local.query("SELECT * FROM t").rows
        assert broker_ctx.query("DESCRIBE t").rows == local.query("DESCRIBE t").rows
        for ctx in (local, broker_ctx):
            with pytest.raises(DatasourceError, match=r"Datasource 'pg' \(postgres\): the query failed"):
                ctx.query_datasource("pg", "SELEC broken")
            with pytest.raises(DatasourceNotFoundError, match="'nope' is not configured"):
                ctx.query_datasource("nope", "SELECT 1")
            assert ctx.datasource_names() == ["pg"]
    finally:
        local.close()


def test_an_interrupt_from_another_thread_cancels_the_server_query(
    broker_ctx: Context, pg_server: Any
) -> None:
    errors: list[BaseException] = []

    def query() -> None:
        try:
            broker_ctx.query_datasource("pg", "SELECT pg_sleep(60) AS interrupted_sleep")
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=query)
    thread.start()
    running = (
        "SELECT count(*) FROM pg_stat_activity WHERE state = 'active' "
        "AND query LIKE '%interrupted_sleep%' AND pid <> pg_backend_pid()"
    )
    give_up = time.monotonic() + 20
    while pg_server.psql(running).strip() != "1":
        assert time.monotonic() < give_up
        time.sleep(0.05)
    broker_ctx.interrupt()  # what the job's deadline watchdog calls
    thread.join(30)
    assert len(errors) == 1 and isinstance(errors[0], DatasourceError), errors
    while pg_server.psql(running).strip() != "0":
        assert time.monotonic() < give_up
        time.sleep(0.05)
    assert broker_ctx.query_datasource("pg", "SELECT 2 AS two").rows == [{"two": 2}]  # reconnects


def test_projects_never_share_a_pooled_connection(
    make_broker: Callable[..., BrokerServer], pg_config: Path, secret_key: str
) -> None:
    pool = ConnectionPool()
    settings = Settings(root=pg_config.parent, datasources_file=pg_config, secret_key=secret_key)
    pids: dict[str, list[int]] = {}
    for project in ("alpha", "beta", "alpha", "beta"):
        access = BrokerAccess(make_broker(settings, project_id=project, pool=pool).socket_path)
        try:
            table = access.query("pg", "SELECT pg_backend_pid() AS pid", None, timeout_s=None)
        finally:
            access.close()
        pids.setdefault(project, []).append(table.column("pid")[0].as_py())
        time.sleep(0.2)  # let the broker give the connection back after the answer
    assert pids["alpha"][0] == pids["alpha"][1]
    assert pids["beta"][0] == pids["beta"][1]
    assert pids["alpha"][0] != pids["beta"][0]


def test_in_a_notebook_ctx_runs_the_broker_code_in_process(tmp_path: Path, shop_db: Path) -> None:
    config = write_sources(tmp_path / "ds.toml", "", sqlite=shop_db)
    ctx = Context(settings=Settings(datasources_file=config))
    try:
        assert isinstance(ctx._access, LocalAccess)
        assert isinstance(ctx._access.sources, Datasources)
        assert ctx.query_datasource("shop", "SELECT count(*) AS n FROM orders").rows == [{"n": 3}]
    finally:
        ctx.close()


def test_file_errors_cross_the_socket_with_their_class(
    make_broker: Callable[..., BrokerServer], file_server: str, tmp_path: Path
) -> None:
    from .conftest import TOKEN

    server = make_broker(Settings(root=tmp_path, backend_url=file_server, backend_token=TOKEN))
    access = BrokerAccess(server.socket_path)
    duck = Duck()
    files = access.files(deadline=Context().deadline, duck=duck)
    try:
        with pytest.raises(FileNotFoundInApiError) as info:
            files.read("missing.csv")
        assert info.value.file_id == "missing.csv" and info.value.status == 404
        assert files.read("notes.txt") == b"hello from the file API\n"
        assert TOKEN not in repr(files) + repr(access)
    finally:
        files.close()
        access.close()
        duck.close()


def test_a_batch_larger_than_a_frame_streams_in_pieces(broker_ctx: Context) -> None:
    # 70,000 rows of 1,000 characters: one 70 MB record batch, more than a kernel accepts in one frame
    sql = "SELECT g, repeat('x', 1000) AS pad FROM generate_series(1, 70000) g"
    result = broker_ctx.query_datasource("pg", sql)
    assert result.row_count == 70000
    assert result.arrow().column("pad")[69999].as_py() == "x" * 1000


_INTERRUPTED_CLIENT = """
import sys
from pathlib import Path
from analysis.broker_client import BrokerAccess

access = BrokerAccess(Path(sys.argv[1]))
try:
    access.query("pg", "SELECT pg_sleep(60) AS sigint_sleep", None, timeout_s=None)
except KeyboardInterrupt:
    print("interrupted")
"""


def test_a_keyboard_interrupt_cancels_the_server_query(
    make_broker: Callable[..., BrokerServer], pg_config: Path, secret_key: str, pg_server: Any
) -> None:
    import signal
    import subprocess
    import sys

    server = make_broker(Settings(root=pg_config.parent, datasources_file=pg_config, secret_key=secret_key))
    running = (
        "SELECT count(*) FROM pg_stat_activity WHERE state = 'active' "
        "AND query LIKE '%sigint_sleep%' AND pid <> pg_backend_pid()"
    )
    # a process of its own, like a kernel (whose SIGINT is how the runner interrupts it)
    kernel = subprocess.Popen(
        [sys.executable, "-c", _INTERRUPTED_CLIENT, str(server.socket_path)],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        give_up = time.monotonic() + 30
        while pg_server.psql(running).strip() != "1":
            assert time.monotonic() < give_up and kernel.poll() is None
            time.sleep(0.05)
        kernel.send_signal(signal.SIGINT)
        out, _ = kernel.communicate(timeout=30)
    finally:
        kernel.kill()
        kernel.wait()
    assert out.strip() == "interrupted"
    give_up = time.monotonic() + 10
    while pg_server.psql(running).strip() != "0":
        assert time.monotonic() < give_up, "the statement kept running after the interrupt"
        time.sleep(0.05)
    access = BrokerAccess(server.socket_path)
    try:
        assert access.query("pg", "SELECT 3 AS three", None, timeout_s=None).to_pylist() == [{"three": 3}]
    finally:
        access.close()


@pytest.mark.parametrize("into", [False, True])
def test_a_pooled_connection_that_died_while_idle_is_replaced(
    into: bool, make_broker: Callable[..., BrokerServer], pg_config: Path, secret_key: str, pg_server: Any
) -> None:
    pool = ConnectionPool()
    settings = Settings(root=pg_config.parent, datasources_file=pg_config, secret_key=secret_key)
    duck = Duck()

    def backend_pid() -> int:
        access = BrokerAccess(make_broker(settings, pool=pool).socket_path)
        try:
            if into:
                access.query_into(duck, "p", "pg", "SELECT pg_backend_pid() AS pid", None, timeout_s=None)
                return int(duck.query("SELECT pid FROM p").rows[0]["pid"])
            table = access.query("pg", "SELECT pg_backend_pid() AS pid", None, timeout_s=None)
            return int(table.column("pid")[0].as_py())
        finally:
            access.close()

    try:
        first = backend_pid()
        give_up = time.monotonic() + 10
        while pool.idle_count() != 1:  # given back after the answer
            assert time.monotonic() < give_up
            time.sleep(0.02)
        pg_server.psql(f"SELECT pg_terminate_backend({first})")  # e.g. a server restart or idle timeout
        second = backend_pid()
        assert second != first
        assert backend_pid() == second  # and the new connection is pooled in turn
    finally:
        duck.close()
        pool.close()
