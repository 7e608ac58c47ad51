"""The result cache in-process (a notebook's ``ctx``), against a real PostgreSQL server.

Each test counts on the server how many times its query ran (``counted(tag)``, see conftest).
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from cryptography.fernet import Fernet

from analysis.config import Settings
from analysis.context import Context
from analysis.deadline import Deadline
from analysis.errors import DatasourceError, JobTimeoutError
from analysis.logs import redirect_emit
from analysis.result_cache import cache_stats, project_cache_stats

from .conftest import CountingPostgres


def _sql(rows: int = 3, sleep_s: float = 0) -> str:
    sleep = f", (SELECT pg_sleep({sleep_s})) AS z" if sleep_s else ""
    return f"SELECT n, (SELECT counted(?)) AS c{sleep} FROM generate_series(1, {rows}) AS n"


@contextmanager
def _context(
    root: Path,
    sources: Path,
    *,
    project: str = "p1",
    max_bytes: int = 1024**3,
    deadline: Deadline | None = None,
) -> Iterator[Context]:
    settings = Settings(root=root, datasources_file=sources, secret_key=_key(), cache_max_bytes=max_bytes)
    ctx = Context(project_id=project, settings=settings, deadline=deadline)
    try:
        yield ctx
    finally:
        ctx.close()


def _key() -> str:
    import os

    return os.environ["ANALYSIS_SECRET_KEY"]


@contextmanager
def _lines() -> Iterator[list[str]]:
    lines: list[str] = []
    with redirect_emit(lines.append):
        yield lines


def _cache_lines(lines: list[str]) -> list[str]:
    return [line.split()[1] for line in lines if line.startswith("[cache]")]


def _cache_files(root: Path, project: str = "p1") -> list[str]:
    folder = root / project / "analysis" / "cache"
    return sorted(p.name for p in folder.iterdir() if not p.name.endswith(".lock")) if folder.is_dir() else []


def test_second_query_is_a_hit_and_never_reaches_the_server(
    tmp_path: Path, sources_file: Path, counting_pg: CountingPostgres
) -> None:
    tag = counting_pg.tag()
    before = cache_stats().snapshot()
    with _context(tmp_path, sources_file) as ctx, _lines() as lines:
        first = ctx.query_datasource("pg", _sql(), [tag], cache="15m").rows
        second = ctx.query_datasource("pg", _sql(), [tag], cache="15m").rows
        n = ctx.query_datasource("pg", _sql(1000), [tag], into="t", cache=900).row_count
        m = ctx.query_datasource("pg", _sql(1000), [tag], into="t2", cache=900).row_count
        loaded = ctx.query("SELECT count(*) AS n, sum(n) AS s FROM t2").rows[0]
    assert first == second == [{"n": i, "c": 1} for i in (1, 2, 3)]
    assert (n, m, loaded) == (1000, 1000, {"n": 1000, "s": 500500})
    assert counting_pg.calls(tag) == 2  # one per distinct query; the repeats were hits
    assert _cache_lines(lines) == ["miss", "stored", "hit", "miss", "stored", "hit"]
    assert not any(tag in line for line in lines), "a parameter value reached the log"
    assert len(_cache_files(tmp_path)) == 4  # two entries: data and metadata
    after = cache_stats().snapshot()
    assert {k: after[k] - before[k] for k in ("hits", "misses", "stored")} == {
        "hits": 2,
        "misses": 2,
        "stored": 2,
    }
    assert after["bytes_read"] > before["bytes_read"] and after["bytes_written"] > before["bytes_written"]


def test_without_cache_every_query_runs(
    tmp_path: Path, sources_file: Path, counting_pg: CountingPostgres
) -> None:
    tag = counting_pg.tag()
    with _context(tmp_path, sources_file) as ctx, _lines() as lines:
        ctx.query_datasource("pg", _sql(), [tag])
        ctx.query_datasource("pg", _sql(), [tag], cache=0)
    assert counting_pg.calls(tag) == 2
    assert _cache_lines(lines) == [] and _cache_files(tmp_path) == []


def test_datasource_default_ttl(tmp_path: Path, sources_file: Path, counting_pg: CountingPostgres) -> None:
    tag = counting_pg.tag()
    with _context(tmp_path, sources_file) as ctx:
        ctx.query_datasource("pg_default", _sql(), [tag])
        ctx.query_datasource("pg_default", _sql(), [tag])
        ctx.query_datasource("pg_default", _sql(), [tag], cache=0)  # 0 turns the default off
    assert counting_pg.calls(tag) == 2


def test_an_expired_entry_is_fetched_again(
    tmp_path: Path, sources_file: Path, counting_pg: CountingPostgres
) -> None:
    tag = counting_pg.tag()
    with _context(tmp_path, sources_file) as ctx, _lines() as lines:
        ctx.query_datasource("pg", _sql(), [tag], cache="1s")
        time.sleep(1.2)
        ctx.query_datasource("pg", _sql(), [tag], cache="1s")
        ctx.query_datasource("pg", _sql(), [tag], cache="1h")  # the refreshed entry is young enough
    assert counting_pg.calls(tag) == 2
    assert _cache_lines(lines) == ["miss", "stored", "miss", "stored", "hit"]


def test_a_changed_parameter_is_another_entry(
    tmp_path: Path, sources_file: Path, counting_pg: CountingPostgres
) -> None:
    tag, other = counting_pg.tag(), counting_pg.tag()
    with _context(tmp_path, sources_file) as ctx:
        a = ctx.query_datasource("pg", _sql(), [tag], cache="1h").rows
        b = ctx.query_datasource("pg", _sql(), [other], cache="1h").rows
        ctx.query_datasource("pg", _sql(), [tag], cache="1h")
        ctx.query_datasource("pg", _sql(4), [tag], cache="1h")  # other SQL text
    assert a == b
    assert (counting_pg.calls(tag), counting_pg.calls(other)) == (2, 1)


def test_no_hit_across_projects(tmp_path: Path, sources_file: Path, counting_pg: CountingPostgres) -> None:
    tag = counting_pg.tag()
    for project in ("p1", "p2", "p1"):
        with _context(tmp_path, sources_file, project=project) as ctx:
            ctx.query_datasource("pg", _sql(), [tag], cache="1h")
    assert counting_pg.calls(tag) == 2
    assert len(_cache_files(tmp_path, "p1")) == len(_cache_files(tmp_path, "p2")) == 2


def test_a_corrupt_entry_is_dropped_and_fetched_again(
    tmp_path: Path, sources_file: Path, counting_pg: CountingPostgres
) -> None:
    tag = counting_pg.tag()
    with _context(tmp_path, sources_file) as ctx, _lines() as lines:
        expected = ctx.query_datasource("pg", _sql(50), [tag], into="t", cache="1h").row_count
        [data] = (tmp_path / "p1" / "analysis" / "cache").glob("*.parquet")
        raw = bytearray(data.read_bytes())
        raw[len(raw) // 2] ^= 0xFF  # one flipped byte inside the column data
        data.write_bytes(raw)
        again = ctx.query_datasource("pg", _sql(50), [tag], into="t", cache="1h").row_count
        total = ctx.query("SELECT sum(n) AS s FROM t").rows[0]["s"]
        ctx.query_datasource("pg", _sql(50), [tag], into="t", cache="1h")
    assert expected == again == 50 and total == 50 * 51 // 2
    assert counting_pg.calls(tag) == 2
    assert _cache_lines(lines) == ["miss", "stored", "dropped", "miss", "stored", "hit"]


def test_least_recently_used_entries_are_evicted(
    tmp_path: Path, sources_file: Path, counting_pg: CountingPostgres
) -> None:
    tags = [counting_pg.tag() for _ in range(3)]
    with _context(tmp_path, sources_file) as ctx:
        ctx.query_datasource("pg", _sql(2000), [tags[0]], cache="1h")
    [meta] = (tmp_path / "p1" / "analysis" / "cache").glob("*.json")
    one = int(__import__("json").loads(meta.read_text())["bytes"])
    with _context(tmp_path, sources_file, max_bytes=2 * one + one // 2) as ctx, _lines() as lines:
        ctx.query_datasource("pg", _sql(2000), [tags[1]], cache="1h")
        ctx.query_datasource("pg", _sql(2000), [tags[0]], cache="1h")  # a hit: now the most recent
        ctx.query_datasource("pg", _sql(2000), [tags[2]], cache="1h")  # over budget: evicts tags[1]
        ctx.query_datasource("pg", _sql(2000), [tags[0]], cache="1h")
        ctx.query_datasource("pg", _sql(2000), [tags[1]], cache="1h")
    assert [counting_pg.calls(t) for t in tags] == [1, 2, 1]
    assert "evicted" in _cache_lines(lines)
    assert len(_cache_files(tmp_path)) == 4


def test_concurrent_misses_run_the_query_once(
    tmp_path: Path, sources_file: Path, counting_pg: CountingPostgres
) -> None:
    tag = counting_pg.tag()
    results: list[object] = []
    start = threading.Barrier(3)

    def one() -> None:
        with _context(tmp_path, sources_file) as ctx:
            start.wait()
            results.append(ctx.query_datasource("pg", _sql(3, 2), [tag], cache="1h").rows)

    threads = [threading.Thread(target=one) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert len(results) == 3 and results[0] == results[1] == results[2]
    assert counting_pg.calls(tag) == 1


def test_a_cancelled_fill_stores_nothing(
    tmp_path: Path, sources_file: Path, counting_pg: CountingPostgres
) -> None:
    tag = counting_pg.tag()
    with _context(tmp_path, sources_file, deadline=Deadline(1.0)) as ctx, pytest.raises(JobTimeoutError):
        ctx.query_datasource("pg", _sql(3, 60), [tag], into="t", cache="1h")
    assert _cache_files(tmp_path) == []  # no entry, no temporary file
    with _context(tmp_path, sources_file) as ctx, _lines() as lines:
        ctx.query_datasource("pg", _sql(3), [tag], cache="1h")
    assert _cache_lines(lines) == ["miss", "stored"]


@pytest.mark.parametrize("bad", ["soon", "-5", -1, "10y", 10**9, True])
def test_a_bad_duration_is_refused(tmp_path: Path, sources_file: Path, bad: object) -> None:
    with _context(tmp_path, sources_file) as ctx, pytest.raises(DatasourceError, match="is not a duration"):
        ctx.query_datasource("pg", "SELECT 1", cache=bad)  # type: ignore[arg-type]


def test_a_hit_has_the_types_of_a_miss(
    tmp_path: Path, sources_file: Path, counting_pg: CountingPostgres
) -> None:
    """into= keeps the column casts of the bulk path; rows and into= are separate entries."""
    tag = counting_pg.tag()
    sql = "SELECT CAST(12.34 AS NUMERIC(10, 2)) AS m, DATE '2024-02-29' AS d, (SELECT counted(?)) AS c"
    seen = []
    with _context(tmp_path, sources_file) as ctx:
        for _ in range(2):
            ctx.query_datasource("pg", sql, [tag], into="t", cache="1h")
            types = {r["column_name"]: r["column_type"] for r in ctx.query("DESCRIBE t").rows}
            rows = ctx.query_datasource("pg", sql, [tag], cache="1h").rows
            seen.append((types, rows))
    assert seen[0] == seen[1]
    assert seen[0][0]["m"] == "DECIMAL(10,2)" and str(seen[0][1][0]["m"]) == "12.34"
    assert counting_pg.calls(tag) == 2


def test_a_bad_default_duration_names_the_datasource(tmp_path: Path, sources_file: Path) -> None:
    sources_file.write_text(sources_file.read_text().replace("cache_ttl_s = 3600", 'cache_ttl_s = "soon"'))
    with (
        _context(tmp_path, sources_file) as ctx,
        pytest.raises(
            DatasourceError, match="'pg_default': cache_ttl_s in the datasources file: cache='soon'"
        ),
    ):
        ctx.query_datasource("pg_default", "SELECT 1")


def test_a_hit_does_not_open_the_datasource(
    tmp_path: Path, sources_file: Path, counting_pg: CountingPostgres, monkeypatch: pytest.MonkeyPatch
) -> None:
    tag = counting_pg.tag()
    with _context(tmp_path, sources_file) as ctx:
        ctx.query_datasource("pg", _sql(), [tag], into="t", cache="1h")
        ctx.query_datasource("pg", _sql(), [tag], cache="1h")
    # the password can no longer be decrypted: only a query that reaches the database needs it
    monkeypatch.setenv("ANALYSIS_SECRET_KEY", Fernet.generate_key().decode())
    with _context(tmp_path, sources_file) as ctx, _lines() as lines:
        n = ctx.query_datasource("pg", _sql(), [tag], into="t", cache="1h").row_count
        rows = ctx.query_datasource("pg", _sql(), [tag], cache="1h").rows
        with pytest.raises(DatasourceError, match="ANALYSIS_SECRET_KEY"):
            ctx.query_datasource("pg", _sql(4), [tag], cache="1h")  # a miss
    assert n == 3 and rows == [{"n": i, "c": 1} for i in (1, 2, 3)]
    assert _cache_lines(lines) == ["hit", "hit"]  # the miss failed opening the datasource
    assert counting_pg.calls(tag) == 2


def test_damage_after_a_checked_hit_is_still_caught(
    tmp_path: Path, sources_file: Path, counting_pg: CountingPostgres
) -> None:
    tag = counting_pg.tag()
    with _context(tmp_path, sources_file) as ctx, _lines() as lines:
        ctx.query_datasource("pg", _sql(50), [tag], into="t", cache="1h")
        time.sleep(0.2)  # the entry's change time is in the past: the first hit's check is remembered
        ctx.query_datasource("pg", _sql(50), [tag], into="t", cache="1h")
        [data] = (tmp_path / "p1" / "analysis" / "cache").glob("*.parquet")
        with data.open("r+b") as handle:  # one byte flipped in place: same file, same size
            handle.seek(data.stat().st_size // 2)
            byte = handle.read(1)[0]
            handle.seek(-1, 1)
            handle.write(bytes([byte ^ 0xFF]))
        again = ctx.query_datasource("pg", _sql(50), [tag], into="t", cache="1h").row_count
        total = ctx.query("SELECT sum(n) AS s FROM t").rows[0]["s"]
    assert again == 50 and total == 50 * 51 // 2
    assert _cache_lines(lines) == ["miss", "stored", "hit", "dropped", "miss", "stored"]
    assert counting_pg.calls(tag) == 2


def test_counters_are_kept_per_project(
    tmp_path: Path, sources_file: Path, counting_pg: CountingPostgres
) -> None:
    tag = counting_pg.tag()
    projects = ("count-a", "count-b")
    before = {p: cache_stats(p).snapshot() for p in projects}
    for project in ("count-a", "count-a", "count-b"):
        with _context(tmp_path, sources_file, project=project) as ctx:
            ctx.query_datasource("pg", _sql(), [tag], cache="1h")
    after = {p: cache_stats(p).snapshot() for p in projects}
    delta = {p: {k: after[p][k] - before[p][k] for k in ("hits", "misses", "stored")} for p in projects}
    assert delta == {
        "count-a": {"hits": 1, "misses": 1, "stored": 1},
        "count-b": {"hits": 0, "misses": 1, "stored": 1},
    }
    assert project_cache_stats()["count-a"]["bytes_read"] > 0


def test_a_killed_fills_temporary_file_is_removed_a_day_later(
    tmp_path: Path, sources_file: Path, counting_pg: CountingPostgres
) -> None:
    folder = tmp_path / "p1" / "analysis" / "cache"
    folder.mkdir(parents=True)
    old, fresh = folder / f".{'a' * 64}.4242.1.tmp", folder / f".{'b' * 64}.4243.1.tmp"
    for path in (old, fresh):
        path.write_bytes(b"\0" * 1000)  # what a runner killed mid-fill leaves
    two_days_ago = time.time() - 2 * 86400
    os.utime(old, (two_days_ago, two_days_ago))
    with _context(tmp_path, sources_file) as ctx, _lines() as lines:
        ctx.query_datasource("pg", _sql(), [counting_pg.tag()], cache="1h")
    assert _cache_lines(lines) == ["miss", "stored"]
    assert not old.exists() and fresh.exists()  # a fill under way elsewhere is left alone
