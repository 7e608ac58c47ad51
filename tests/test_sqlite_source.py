"""The embedded sqlite datasource kind and the datasource registry, in process."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest

from analysis.config import Settings
from analysis.context import Context
from analysis.errors import DatasourceError, DatasourceNotFoundError, JobTimeoutError


@pytest.fixture
def ctx(tmp_path: Path) -> Iterator[Context]:
    db = tmp_path / "data" / "shop.db"
    db.parent.mkdir()
    con = sqlite3.connect(db)
    con.executescript(
        "CREATE TABLE orders (id INTEGER, amount REAL, note TEXT);"
        "INSERT INTO orders VALUES (1, 9.5, 'a'), (2, 20.0, NULL), (3, 1.25, 'c');"
    )
    con.commit()
    con.close()
    config = tmp_path / "datasources.toml"
    config.write_text(
        '[shop]\nkind = "sqlite"\npath = "data/shop.db"\n\n[other]\nkind = "sqlite"\npath = "x.db"\n'
    )
    context = Context(settings=Settings(datasources_file=config))
    yield context
    context.close()


def test_query_with_bound_parameters(ctx: Context, capsys: pytest.CaptureFixture[str]) -> None:
    result = ctx.query_datasource("shop", "SELECT id, note FROM orders WHERE amount > ? ORDER BY id", [5])
    assert result.rows == [{"id": 1, "note": "a"}, {"id": 2, "note": None}]
    assert (
        "[query:datasource] shop SELECT id, note FROM orders WHERE amount > ? ORDER BY id"
        in capsys.readouterr().err
    )
    evil = "'; DROP TABLE orders; --"
    assert ctx.query_datasource("shop", "SELECT ? AS v", [evil]).rows == [{"v": evil}]


def test_into_streams_into_duckdb(ctx: Context) -> None:
    result = ctx.query_datasource("shop", "SELECT * FROM orders", into="orders")
    assert result.row_count == 3 and result.rows == []
    assert ctx.query("SELECT sum(amount) AS s FROM orders").rows == [{"s": 30.75}]


def test_read_only_by_default(ctx: Context) -> None:
    with pytest.raises(DatasourceError, match=r"'shop'.*readonly"):
        ctx.query_datasource("shop", "DELETE FROM orders")
    assert ctx.query_datasource("shop", "SELECT count(*) AS n FROM orders").rows == [{"n": 3}]


def test_unknown_name_lists_the_configured_ones(ctx: Context) -> None:
    with pytest.raises(DatasourceNotFoundError, match=r"'nope' is not configured \(configured: other, shop"):
        ctx.query_datasource("nope", "SELECT 1")


def test_missing_file_is_a_datasource_error(ctx: Context) -> None:
    with pytest.raises(DatasourceError, match=r"'other'.*does not exist"):
        ctx.query_datasource("other", "SELECT 1")


def test_unknown_kind(tmp_path: Path) -> None:
    config = tmp_path / "ds.toml"
    config.write_text('[x]\nkind = "oracle"\n')
    context = Context(settings=Settings(datasources_file=config))
    with pytest.raises(DatasourceError, match="unknown kind 'oracle'"):
        context.query_datasource("x", "SELECT 1")
    context.close()


def test_statement_time_limit_is_the_jobs_deadline(tmp_path: Path, ctx: Context) -> None:
    from analysis.deadline import Deadline

    ctx.deadline = Deadline.after(0.5)
    slow = "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c) SELECT count(*) FROM c"
    with pytest.raises(JobTimeoutError, match=r"0.5 s deadline while querying 'shop'") as info:
        ctx.query_datasource("shop", slow)
    assert isinstance(info.value.__cause__, DatasourceError)
    assert "cancelled at its time limit" in str(info.value.__cause__)


def test_read_write_commits_each_statement(tmp_path: Path) -> None:
    db = tmp_path / "rw.db"
    con = sqlite3.connect(db)
    con.execute("CREATE TABLE t (x INTEGER)")
    con.commit()
    con.close()
    config = tmp_path / "ds.toml"
    config.write_text('[rw]\nkind = "sqlite"\npath = "rw.db"\nread_only = false\n')
    context = Context(settings=Settings(datasources_file=config))
    try:
        context.query_datasource("rw", "INSERT INTO t VALUES (?), (?)", [1, 2])
        with pytest.raises(DatasourceError, match="no such table"):
            context.query_datasource("rw", "INSERT INTO missing VALUES (1)")
        # another connection sees the rows while the job's connection is still open
        other = sqlite3.connect(db, timeout=0.5)
        assert other.execute("SELECT count(*) FROM t").fetchone() == (2,)
        other.execute("INSERT INTO t VALUES (3)")  # and is not locked out by an open transaction
        other.commit()
        other.close()
    finally:
        context.close()
    assert sqlite3.connect(db).execute("SELECT sum(x) FROM t").fetchone() == (6,)


def test_read_only_must_be_a_boolean(tmp_path: Path) -> None:
    config = tmp_path / "ds.toml"
    config.write_text('[x]\nkind = "sqlite"\npath = "x.db"\nread_only = "false"\n')
    context = Context(settings=Settings(datasources_file=config))
    with pytest.raises(DatasourceError, match="read_only must be true or false"):
        context.query_datasource("x", "SELECT 1")
    context.close()
