"""A hit loads the table its miss loaded, whichever format the entry is kept in (Parquet or Arrow IPC)."""

from __future__ import annotations

import hashlib
import threading
from pathlib import Path
from typing import Any

import orjson
import pytest

from analysis.cache_fill import CacheSlot, cached_query_into
from analysis.duck import Duck
from analysis.logs import redirect_emit
from analysis.result_cache import ResultCache
from analysis.runner import JobResult

from .conftest import CountingPostgres
from .test_in_process import _cache_lines, _context, _lines

#: Types that go through Parquet into DuckDB as they go through Arrow.
PARQUET_COLUMNS = (
    "n::int2 AS i2, n::int8 AS i8, (n / 3.0)::float4 AS f4, (n / 3.0)::float8 AS f8, "
    "(n / 4.0)::numeric(10, 2) AS dec, (n / 3.0)::numeric AS num, 'x' || n AS txt, n % 2 = 0 AS b, "
    "date '2024-02-29' + n AS d, timestamp '2024-01-01 12:00:00.123456' + n * interval '1 s' AS ts, "
    "timestamptz '2024-01-01 12:00:00+02' + n * interval '1 s' AS tstz, time '12:34:56.789' AS t, "
    "'\\x0102'::bytea AS bin, ARRAY[n, 2] AS arr, ARRAY['a', 'b'] AS tarr, NULL::int AS nul, "
    "CASE WHEN n = 2 THEN 'NaN'::float8 END AS nan"
)
#: Types that do not: such a result is an Arrow IPC file.
ARROW_COLUMNS = (
    "n, interval '1 day 2 hours' * n AS iv, 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11'::uuid AS u, "
    "'{\"a\": 1}'::jsonb AS j, ARRAY[(n / 4.0)::numeric(10, 2)] AS darr"
)
_DESCRIBE = "SELECT column_name, column_type FROM (DESCRIBE {table})"
_AS_TEXT = "SELECT COLUMNS(*)::VARCHAR FROM {table} ORDER BY ALL"


def _sql(columns: str) -> str:
    return f"SELECT {columns}, (SELECT counted(?)) AS c FROM generate_series(1, 3) AS n"


def _stored(root: Path, project: str) -> list[str]:
    folder = root / project / "analysis" / "cache"
    return sorted(p.suffix for p in folder.iterdir() if p.suffix in (".parquet", ".arrow"))


@pytest.mark.parametrize(("columns", "suffix"), [(PARQUET_COLUMNS, ".parquet"), (ARROW_COLUMNS, ".arrow")])
def test_a_hit_loads_the_table_its_miss_loaded(
    tmp_path: Path, sources_file: Path, counting_pg: CountingPostgres, columns: str, suffix: str
) -> None:
    tag = counting_pg.tag()
    seen = []
    with _context(tmp_path, sources_file) as ctx, _lines() as lines:
        for table in ("miss", "hit"):
            ctx.query_datasource("pg", _sql(columns), [tag], into=table, cache="1h")
            seen.append(
                (ctx.query(_DESCRIBE.format(table=table)).rows, ctx.query(_AS_TEXT.format(table=table)).rows)
            )
    assert seen[0] == seen[1] and len(seen[0][1]) == 3
    assert _cache_lines(lines) == ["miss", "stored", "hit"]
    assert _stored(tmp_path, "p1") == [suffix]
    assert counting_pg.calls(tag) == 1


_JOB = """
def run(ctx, parameters):
    out = []
    for i, columns in enumerate(parameters["columns"]):
        sql = f"SELECT {columns}, (SELECT counted(?)) AS c FROM generate_series(1, 3) AS n"
        ctx.query_datasource("pg", sql, [parameters["tag"]], into=f"t{i}", cache="1h")
        describe, text = (q.format(table=f"t{i}") for q in parameters["queries"])
        out.append([ctx.query(describe).rows, ctx.query(text).rows])
    return out
"""


def test_a_jobs_hit_loads_the_table_its_miss_loaded(
    run_script: Any, root: Path, sources_file: Path, counting_pg: CountingPostgres
) -> None:
    """In a job the Parquet entry is handed to the kernel as a file, the Arrow one streamed."""
    tag = counting_pg.tag()
    parameters = {"tag": tag, "columns": [PARQUET_COLUMNS, ARROW_COLUMNS], "queries": [_DESCRIBE, _AS_TEXT]}
    results: list[JobResult] = [run_script(_JOB, parameters, datasources_file=sources_file) for _ in range(2)]
    assert all(r.success for r in results), [r.to_dict() for r in results]
    assert results[0].result == results[1].result
    assert [line.split()[1] for line in results[1].logs if line.startswith("[cache]")] == ["hit", "hit"]
    assert _stored(root, "default") == [".arrow", ".parquet"]
    assert counting_pg.calls(tag) == 2


def test_an_entry_kept_as_arrow_ipc_before_parquet_still_hits(
    tmp_path: Path, sources_file: Path, counting_pg: CountingPostgres
) -> None:
    """Entries written by earlier versions (an Arrow IPC file, no format in the metadata) stay usable."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    tag = counting_pg.tag()
    sql = _sql("n, (n / 4.0)::numeric(10, 2) AS m")
    with _context(tmp_path, sources_file) as ctx, _lines() as lines:
        ctx.query_datasource("pg", sql, [tag], into="miss", cache="1h")
        folder = tmp_path / "p1" / "analysis" / "cache"
        [parquet] = folder.glob("*.parquet")
        table = pq.read_table(parquet)
        legacy = parquet.with_suffix(".arrow")
        with pa.OSFile(str(legacy), "wb") as sink, pa.ipc.new_file(sink, table.schema) as writer:
            writer.write_table(table)
        parquet.unlink()
        meta_path = parquet.with_suffix(".json")
        meta = orjson.loads(meta_path.read_bytes())
        del meta["format"]
        meta.update(bytes=legacy.stat().st_size, sha256=hashlib.sha256(legacy.read_bytes()).hexdigest())
        meta_path.write_bytes(orjson.dumps(meta))
        ctx.query_datasource("pg", sql, [tag], into="hit", cache="1h")
        same = ctx.query("SELECT count(*) AS n FROM (SELECT * FROM miss EXCEPT SELECT * FROM hit)").rows
        types = ctx.query("SELECT typeof(m) AS t FROM hit LIMIT 1").rows
    assert same == [{"n": 0}] and types == [{"t": "DECIMAL(10,2)"}]
    assert _cache_lines(lines) == ["miss", "stored", "hit"]
    assert counting_pg.calls(tag) == 1


def test_a_result_a_cast_would_round_goes_to_the_caller_but_is_not_kept(tmp_path: Path) -> None:
    """DuckDB rounds ``CAST('1.005' AS DECIMAL(10, 2))``; Arrow will not, so the entry is not stored."""
    import pyarrow as pa

    cache = ResultCache(tmp_path / "p1" / "analysis" / "cache", max_bytes=1 << 30)
    slot = CacheSlot(cache, "a" * 64, "src aaaaaaaaaaaa SELECT", 3600.0, "src")
    table = pa.table({"m": ["1.25", "1.005"]})

    def run(sink: Any) -> int:  # what a datasource kind's query_into does
        return int(sink.load_data("t", table, casts=["CAST({} AS DECIMAL(10, 2))"]))

    duck = Duck()
    lines: list[str] = []
    try:
        with redirect_emit(lines.append):
            rows = cached_query_into(slot, duck, "t", run, timeout_s=None, cancelled=threading.Event())
        loaded = duck.connection.execute("SELECT CAST(m AS VARCHAR) FROM t ORDER BY m").fetchall()
    finally:
        duck.close()
    assert rows == 2 and loaded == [("1.01",), ("1.25",)]
    assert [line.split()[1:3] for line in lines if line.startswith("[cache]")] == [
        ["miss", "src"],
        ["not", "stored"],
    ]
    assert not [p for p in cache.folder.iterdir() if not p.name.endswith(".lock")]


def test_an_entry_that_is_not_parquet_is_dropped_before_duckdb_sees_it(
    tmp_path: Path, sources_file: Path, counting_pg: CountingPostgres
) -> None:
    """Its checksum matches (the metadata was rewritten too), its footer does not: dropped, fetched again."""
    tag = counting_pg.tag()
    sql = _sql("n")
    with _context(tmp_path, sources_file) as ctx, _lines() as lines:
        ctx.query_datasource("pg", sql, [tag], into="t", cache="1h")
        [parquet] = (tmp_path / "p1" / "analysis" / "cache").glob("*.parquet")
        parquet.write_bytes(b"PAR1 but not a Parquet file")
        meta_path = parquet.with_suffix(".json")
        meta = orjson.loads(meta_path.read_bytes())
        meta.update(bytes=parquet.stat().st_size, sha256=hashlib.sha256(parquet.read_bytes()).hexdigest())
        meta_path.write_bytes(orjson.dumps(meta))
        again = ctx.query_datasource("pg", sql, [tag], into="t", cache="1h").row_count
    assert again == 3
    assert _cache_lines(lines) == ["miss", "stored", "dropped", "miss", "stored"]
    assert counting_pg.calls(tag) == 2
