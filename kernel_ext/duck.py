"""The job's own in-memory DuckDB: ``query`` and ``load_data``, and the ``QueryResult`` they return.

Data moves as Arrow: query results are fetched as Arrow tables, and ``load_data`` hands DuckDB
an Arrow table (or the caller's DataFrame / Arrow object) to scan in place.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Iterator, Mapping, Sequence
from operator import itemgetter
from pathlib import Path
from typing import TYPE_CHECKING, Any

from analysis.errors import AnalysisError
from analysis.extras import require
from analysis.logs import emit, one_line

if TYPE_CHECKING:
    import duckdb
    import pyarrow as pa

__all__ = ["Duck", "LoadDataError", "QueryResult", "quote_identifier"]

_MODES = ("replace", "append")


class LoadDataError(AnalysisError, ValueError):
    """``load_data`` was given a table name, mode or data it cannot load."""


def quote_identifier(name: str) -> str:
    """``name`` as one quoted SQL identifier; rejects empty names and control characters."""
    if not isinstance(name, str) or not name or len(name) > 255:
        raise LoadDataError(f"Table name {name!r} must be a non-empty string of at most 255 characters.")
    if any(ord(ch) < 32 for ch in name):
        raise LoadDataError(f"Table name {name!r} contains control characters.")
    return '"' + name.replace('"', '""') + '"'


class QueryResult:
    """The result of a query: columns, rows, and conversions, backed by an Arrow table.

    Rows are built lazily on first use of :attr:`rows`, so a result that only goes on to
    pandas, polars or another table never becomes Python objects.

    Parameters
    ----------
    table
        The result's columns; ``None`` for a result that only reports a row count (``into=``).
    row_count
        Rows affected or loaded, for results without a table.
    sql_types
        The SQL types of the columns as the database named them; default: derived from Arrow.
    loaded_into
        The DuckDB table the rows went to (``into=``), for the notebook display.
    """

    #: Rows shown in a notebook (``%config AnalysisMagics.display_rows`` sets it).
    display_rows: int = 20

    def __init__(
        self,
        table: pa.Table | None,
        *,
        row_count: int | None = None,
        sql_types: Sequence[str] | None = None,
        loaded_into: str | None = None,
    ) -> None:
        self._data = table  # None: built on first use (an into= result needs no pyarrow)
        self._row_count = (table.num_rows if table is not None else 0) if row_count is None else row_count
        self._rows: list[dict[str, Any]] | None = None
        self._sql_types = list(sql_types) if sql_types is not None else None
        self.loaded_into = loaded_into

    @property
    def _table(self) -> pa.Table:
        if self._data is None:
            import pyarrow as pa

            self._data = pa.table({})
        return self._data

    @property
    def columns(self) -> list[str]:
        """Column names, in order."""
        return list(self._table.column_names)

    @property
    def sql_types(self) -> list[str]:
        """The SQL types of the columns (``DECIMAL(10,2)``, ``DATE``, ``VARCHAR``...), in order."""
        if self._sql_types is None:
            from analysis.display import sql_type

            self._sql_types = [sql_type(field.type) for field in self._table.schema]
        return list(self._sql_types)

    @property
    def rows(self) -> list[dict[str, Any]]:
        """Rows as dicts of column name to value (built once, then cached)."""
        if self._rows is None:
            self._rows = self._table.to_pylist(maps_as_pydicts="lossy")
        return self._rows

    @property
    def row_count(self) -> int:
        """Number of rows (for ``into=`` results: the rows loaded)."""
        return self._row_count

    def __len__(self) -> int:
        return self._row_count

    def __iter__(self) -> Iterator[dict[str, Any]]:
        return iter(self.rows)

    def __getitem__(self, index: int) -> dict[str, Any]:
        return self.rows[index]

    def arrow(self) -> pa.Table:
        """The result as a pyarrow Table (no copy)."""
        return self._table

    def df(self) -> Any:
        """The result as a pandas DataFrame, with the dtypes DuckDB's own ``.df()`` gives.

        DECIMAL becomes float64, DATE datetime64[us], INTERVAL timedelta64[us] (a month is 30
        days), integers and booleans with NULLs pandas' nullable ``Int64``/``boolean`` dtypes,
        UUID ``uuid.UUID`` objects. The conversion is columnar (no Python object per value,
        except for UUIDs). Needs pandas (``pip install 'analysis-kernel[pandas]'``).
        """
        require("pandas", "QueryResult.df()")
        from analysis.frames import to_pandas

        return to_pandas(self._table, self.sql_types if self._sql_types is not None else None)

    def pl(self) -> Any:
        """The result as a polars DataFrame (needs ``pip install 'analysis-kernel[polars]'``)."""
        pl = require("polars", "QueryResult.pl()")
        return pl.from_arrow(self._table)

    def plot(
        self,
        kind: str,
        *,
        x: str,
        y: str | None = None,
        color: str | None = None,
        agg: str = "sum",
        bins: int = 30,
        title: str | None = None,
        max_points: int = 2000,
    ) -> Any:
        """A chart of this result, aggregated in DuckDB, shown with Vega-Lite (SVG fallback).

        Parameters
        ----------
        kind
            ``"bar"`` and ``"line"`` (``agg(y)`` grouped by ``x`` and ``color``; count when no
            ``y``), ``"scatter"`` (``x`` against ``y``, sampled down to ``max_points``) or
            ``"histogram"`` (``x`` in ``bins`` equal bins).
        x, y, color
            Column names.
        agg
            ``sum``, ``avg``/``mean``, ``count``, ``min``, ``max`` or ``median``.
        """
        from analysis.charts import plot

        return plot(
            self._table, kind, x=x, y=y, color=color, agg=agg, bins=bins, title=title, max_points=max_points
        )

    def _repr_mimebundle_(self, include: Any = None, exclude: Any = None) -> dict[str, Any]:
        from analysis.display import query_result_bundle

        return query_result_bundle(self)

    def __repr__(self) -> str:
        return (
            f"<QueryResult {self._row_count} rows x {len(self.columns)} columns: {', '.join(self.columns)}>"
        )

    def __json__(self) -> list[dict[str, Any]]:
        """How a result encodes in JSON: its rows."""
        return self.rows

    def _repr_pretty_(self, printer: Any, cycle: bool) -> None:
        from analysis.display import text_table

        printer.text(text_table(self))

    def _repr_html_(self) -> str:
        from analysis.display import html_table

        return html_table(self)


def _table_from_dicts(rows: Sequence[Mapping[str, Any]]) -> pa.Table:
    """Columns = union of keys in first-seen order; each column's type inferred over all rows."""
    import pyarrow as pa

    if not rows:
        raise LoadDataError("load_data got an empty list: there are no columns to create a table from.")
    first = rows[0]
    if not isinstance(first, Mapping):
        raise LoadDataError(f"load_data expects a list of dicts; row 0 is {type(first).__name__}.")
    keys = list(first)
    try:
        # The fast path, when every row has exactly the first row's keys: one C-level pass per
        # column (a missing key raises KeyError), and the rows' sizes prove that no row has more.
        values = [list(map(itemgetter(key), rows)) for key in keys]
        if sum(map(len, rows)) == len(keys) * len(rows):
            return pa.Table.from_arrays([pa.array(column) for column in values], names=keys)
    except (KeyError, TypeError, pa.ArrowInvalid, pa.ArrowTypeError):  # not all dicts, or mixed types
        pass
    for i, row in enumerate(rows):
        if not isinstance(row, Mapping):
            raise LoadDataError(f"load_data expects a list of dicts; row {i} is {type(row).__name__}.")
    names = list(dict.fromkeys(itertools.chain.from_iterable(rows)))
    columns = {}
    for name in names:
        try:
            columns[name] = pa.array([r.get(name) for r in rows])
        except (pa.ArrowInvalid, pa.ArrowTypeError) as exc:
            raise LoadDataError(f"load_data cannot infer a type for column {name!r}: {exc}.") from exc
    return pa.table(columns)


class Duck:
    """One in-memory DuckDB connection, opened on first use, owned by a ``Context``."""

    def __init__(self) -> None:
        self._con: duckdb.DuckDBPyConnection | None = None
        self._job_dir: Path | None = None

    def lock_down(self, job_dir: Path) -> None:
        """Inside a job: file access only under ``job_dir``, no extensions, configuration locked."""
        self._job_dir = job_dir

    @property
    def connection(self) -> duckdb.DuckDBPyConnection:
        """The DuckDB connection (created on first access, or the one a pooled kernel prepared)."""
        if self._con is None and self._job_dir is not None:
            self._con = _take_prepared(self._job_dir)
        if self._con is None:
            import duckdb

            if self._job_dir is None:
                self._con = duckdb.connect(":memory:")
            else:
                self._con = _connect_for_job()
                # allowed_directories only counts once external access is off; then lock it all
                self._con.execute("SET allowed_directories = [?]", [f"{self._job_dir}/"])
                self._con.execute("SET temp_directory = ?", [str(self._job_dir / "duckdb.tmp")])
                # outside the allowed directories: INSTALL is refused even where a download could work
                self._con.execute("SET extension_directory = '/nonexistent/duckdb-extensions'")
                self._con.execute("SET enable_external_access = false")
                self._con.execute("SET lock_configuration = true")
        return self._con

    @property
    def is_open(self) -> bool:
        """Whether a connection has been opened."""
        return self._con is not None

    def query(self, sql: str, params: Sequence[Any] | Mapping[str, Any] | None = None) -> QueryResult:
        """Run ``sql`` with bound ``params``; see ``Context.query``."""
        emit("query:duckdb", one_line(sql))
        rel = self.connection.sql(sql, params=params)
        if rel is None:  # a statement without a result set (DDL)
            return QueryResult(None, row_count=0)
        return QueryResult(rel.to_arrow_table(), sql_types=[str(t) for t in rel.types])

    def load_data(
        self, table: str, data: Any, *, mode: str = "replace", casts: Sequence[str | None] | None = None
    ) -> int:
        """Load ``data`` into ``table``; see ``Context.load_data``.

        ``casts`` (for the datasources' bulk paths) holds one SQL expression per column of
        ``data``, ``{}`` standing for the column, or ``None`` to keep it as it is: DuckDB
        converts while it loads (``"CAST({} AS DECIMAL(10,2))"``), no Python per batch.
        """
        target = quote_identifier(table)
        if mode not in _MODES:
            raise LoadDataError(f"load_data mode {mode!r} is not one of {', '.join(map(repr, _MODES))}.")
        source = self._as_scannable(data)
        con = self.connection
        view = "__analysis_load_data"
        con.register(view, source)
        try:
            columns = "*"
            if casts is not None and any(casts):
                # DuckDB's names for the columns (duplicates made unique); reads no rows
                described = con.execute(f"DESCRIBE {view}").fetchall()
                names = ['"' + str(row[0]).replace('"', '""') + '"' for row in described]
                columns = ", ".join(
                    name if cast is None else f"{cast.format(name)} AS {name}"
                    for name, cast in zip(names, casts, strict=True)
                )
            if mode == "append" and self._exists(table):
                sql = f"INSERT INTO {target} BY NAME SELECT {columns} FROM {view}"
            else:
                sql = f"CREATE OR REPLACE TABLE {target} AS SELECT {columns} FROM {view}"
            count = int(con.execute(sql).fetchall()[0][0])
        finally:
            con.unregister(view)
        emit("load_data", f"Loaded {count} rows into {table}")
        return count

    def _exists(self, table: str) -> bool:
        found = self.connection.execute(
            "SELECT count(*) FROM duckdb_tables() WHERE table_name = ? AND schema_name = current_schema()",
            [table],
        ).fetchall()
        return bool(found[0][0])

    @staticmethod
    def _as_scannable(data: Any) -> Any:
        """Something DuckDB can scan in place: Arrow, pandas, polars; dict rows become Arrow."""
        module = type(data).__module__.split(".")[0]
        if module == "nanoarrow":  # an Arrow C stream: the broker's into= results (no pyarrow import)
            return data
        if module == "duckdb" and type(data).__name__ == "DuckDBPyRelation":  # of this connection
            return data
        import pyarrow as pa

        if isinstance(data, QueryResult):
            return data.arrow()
        if isinstance(data, pa.Table | pa.RecordBatchReader):
            return data
        if isinstance(data, pa.RecordBatch):
            return pa.Table.from_batches([data])
        if module in ("pandas", "polars"):
            return data
        if isinstance(data, list | tuple):
            try:
                return _table_from_dicts(data)
            except (pa.ArrowInvalid, pa.ArrowTypeError) as exc:
                raise LoadDataError(f"load_data cannot infer column types: {exc}.") from exc
        raise LoadDataError(
            "load_data accepts a list of dicts, a pandas or polars DataFrame, a pyarrow Table or "
            f"RecordBatchReader, or a QueryResult; got {type(data).__name__}."
        )

    def interrupt(self) -> None:
        """Stop the running DuckDB query, if any; safe from another thread."""
        if self._con is not None:
            self._con.interrupt()

    def close(self) -> None:
        """Close the connection. Safe to call twice."""
        if self._con is not None:
            self._con.close()
            self._con = None


#: What a job's connection is opened with, before it is locked down.
_JOB_CONFIG: dict[str, str | bool | int | float | list[str]] = {
    "autoinstall_known_extensions": False,
    "autoload_known_extensions": False,
}
#: Settings a zygote's database starts without (they start threads) and a forked kernel sets.
_THREADS = {"threads": 1, "async_threads": 0}


def job_threads() -> int:
    """DuckDB worker threads of a job: all but one of the CPUs this process may run on, at least one.

    The runner keeps that core: its data broker decodes the job's datasource results while
    this DuckDB loads them, and it serves the other jobs. Two workers on a 2-core machine cost
    a load 45-60 ms more CPU than one, for the same wall time (README, "Limits per job").
    """
    return max(1, len(os.sched_getaffinity(0)) - 1)


#: The in-memory database a zygote opens before its forks, by name (see ``open_before_forks``).
_UNFORKED = ":memory:analysis-zygote"
#: The zygote's connection to it, until a forked kernel opens its own.
_unforked: list[duckdb.DuckDBPyConnection] = []


def open_before_forks() -> None:
    """In a zygote: open the in-memory database each forked kernel makes its job's connection on.

    Opening a database and running its first statement is a third of a forked kernel's own CPU
    time; done here, the kernels share it copy-on-write. With one worker and no async threads
    DuckDB starts no thread, so the zygote can still fork. It holds no data: each kernel has its
    own copy of the (empty) database after the fork.
    """
    import duckdb

    con = duckdb.connect(_UNFORKED, config={**_JOB_CONFIG, **_THREADS})
    con.sql("select 1").to_arrow_table()
    _unforked.append(con)


def _connect_for_job() -> duckdb.DuckDBPyConnection:
    """A new connection for the job: on the database opened before the fork, or a new database."""
    import duckdb

    if not _unforked:
        return duckdb.connect(":memory:", config={**_JOB_CONFIG, "threads": job_threads()})
    # a connection made in this kernel (found by the database's name), none of the state of
    # the zygote's, which it then closes
    con = duckdb.connect(_UNFORKED, config={**_JOB_CONFIG, **_THREADS})
    _unforked.pop().close()
    # this kernel's threads, as a database opened in it would have
    con.execute(f"SET threads = {job_threads()}")
    con.execute("RESET async_threads")
    return con


#: A pooled kernel's locked-down connection, opened before its job arrives, by job directory.
_prepared: dict[Path, duckdb.DuckDBPyConnection] = {}


def prepare_connection(job_dir: str) -> None:
    """Open the locked-down connection of a job in ``job_dir`` now (a pooled kernel, while idle)."""
    duck = Duck()
    duck.lock_down(Path(job_dir))
    # a connection's first statement costs more than the next (tokenizer, Arrow export): paid now
    duck.connection.sql("select 1").to_arrow_table()
    _prepared[Path(job_dir)] = duck.connection


def _take_prepared(job_dir: Path) -> duckdb.DuckDBPyConnection | None:
    """The connection prepared for ``job_dir``, if any; it is handed out once."""
    return _prepared.pop(job_dir, None)
