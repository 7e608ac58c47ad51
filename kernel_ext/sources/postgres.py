"""The ``postgres`` datasource kind: psycopg 3 for ordinary results, ADBC (COPY binary) for ``into=``.

Every statement runs in its own transaction (``READ ONLY`` unless ``read_only = false``; a
read-only one is rolled back) with ``statement_timeout`` set to what is left of the job's
deadline, so the server stops it even if this process is gone. Statements go over the
extended protocol (one statement per call, values bound server-side as ``$n``).

``query_into`` reads with the ADBC PostgreSQL driver, which runs ``COPY (query) TO STDOUT
(FORMAT binary)`` and decodes it into Arrow in C++; the batches stream into DuckDB, which
casts NUMERIC(p, s) (text from the driver) to DECIMAL(p, s) as it loads (unconstrained
NUMERIC to DOUBLE). The driver's own NUMERIC decoding (binary to text) costs about three
times what all the other columns of a typical table cost together, so when the result has
NUMERIC columns the statement is described first and, if it can be, run as
``SELECT c0, c1::text, ... FROM (query) AS q(c0, c1, ...)``: the server formats the text on
its own core, and the columns keep their names, order, values and DuckDB types.

``interrupt()`` (another thread) cancels the running statement with the libpq cancel request.
"""

from __future__ import annotations

import threading
import urllib.parse
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import pyarrow as pa

from analysis.errors import DatasourceError
from analysis.sources.base import Params, ServerDatasource
from analysis.sources.placeholders import PlaceholderError, to_native

if TYPE_CHECKING:
    import psycopg

    from analysis.duck import Duck

__all__ = ["PostgresDatasource"]

#: PostgreSQL type name -> Arrow type, for building the result of ``query``.
_ARROW_TYPES: dict[str, pa.DataType] = {
    "bool": pa.bool_(),
    "int2": pa.int16(),
    "int4": pa.int32(),
    "int8": pa.int64(),
    "oid": pa.int64(),
    "float4": pa.float32(),
    "float8": pa.float64(),
    "text": pa.string(),
    "varchar": pa.string(),
    "bpchar": pa.string(),
    "name": pa.string(),
    "date": pa.date32(),
    "time": pa.time64("us"),
    "timestamp": pa.timestamp("us"),
    "timestamptz": pa.timestamp("us", tz="UTC"),
    "interval": pa.duration("us"),  # psycopg gives a timedelta (a month counted as 30 days)
    "uuid": pa.uuid(),
    "json": pa.json_(),
    "jsonb": pa.json_(),
    "bytea": pa.binary(),
}
_NUMERIC_OID = 1700
#: The bulk path's batch size: small enough that reading, sending and loading overlap.
_BATCH_HINT_BYTES = 2 * 1024 * 1024


def _numeric_type(fmod: int | None) -> pa.DataType | None:
    """DECIMAL(p, s) for a NUMERIC type modifier, ``None`` when unconstrained or too wide."""
    if fmod is None or fmod < 4:
        return None
    precision, scale = ((fmod - 4) >> 16) & 0xFFFF, (fmod - 4) & 0xFFFF
    return pa.decimal128(precision, scale) if 0 < precision <= 38 else None


def _column_type(conn: psycopg.Connection[Any], oid: int, fmod: int | None) -> pa.DataType | None:
    from psycopg.postgres import types

    if oid == _NUMERIC_OID:
        return _numeric_type(fmod)
    info = types.get(oid) or conn.adapters.types.get(oid)
    if info is None:
        return None
    if info.oid != oid and info.array_oid == oid:  # an array of info
        inner = pa.decimal128(38, 10) if info.oid == _NUMERIC_OID else _ARROW_TYPES.get(info.name)
        return pa.list_(inner) if inner is not None else None
    return _ARROW_TYPES.get(info.name)


def _to_arrow_column(values: list[Any], typ: pa.DataType | None) -> pa.Array:
    if typ is not None:
        try:
            if pa.types.is_decimal(typ) or (pa.types.is_list(typ) and pa.types.is_decimal(typ.value_type)):
                return pa.array(values, type=typ)
            if isinstance(typ, pa.UuidType):
                return pa.array([None if v is None else v.bytes for v in values], type=typ)
            return pa.array(values, type=typ)
        except (pa.ArrowInvalid, pa.ArrowTypeError, OverflowError):
            pass
    try:
        return pa.array(values)
    except (pa.ArrowInvalid, pa.ArrowTypeError, OverflowError):
        return pa.array([None if v is None else str(v) for v in values], type=pa.string())


def _bulk_cast(field: pa.Field) -> str | None:
    """The SQL that gives a column from ADBC its DuckDB type (``{}`` is the column), or ``None``.

    NUMERIC(p, s) arrives as text and becomes DECIMAL(p, s) (DOUBLE when unconstrained or wider
    than DuckDB's 38 digits), an oid (unsigned) as a signed INTEGER; types without an Arrow
    equivalent arrive as their bytes, which DuckDB reads as BLOB.
    """
    meta = field.metadata or {}
    pg_type = meta.get(b"POSTGRESQL:type")
    if pg_type == b"numeric":
        decimal = _numeric_type(int(meta.get(b"POSTGRESQL:typmod", b"-1")))
        return (
            f"CAST({{}} AS DECIMAL({decimal.precision}, {decimal.scale}))"
            if decimal
            else "CAST({} AS DOUBLE)"
        )
    if pg_type == b"_numeric":
        return "CAST({} AS DECIMAL(38, 10)[])"
    if pg_type == b"oid":
        return "(CAST({} AS BIGINT) & 4294967295)"
    return None


def _numeric_as_text(sql: str, described: pa.Schema) -> str | None:
    """``sql`` wrapped so that its NUMERIC columns arrive as the server's text, or ``None`` if it has none.

    The result keeps every column's name (duplicates included) and position; the rows come
    in the statement's own order (PostgreSQL does not reorder a projection of a subquery).
    Arrays of NUMERIC are left to the driver.
    """
    numeric = {i for i, f in enumerate(described) if (f.metadata or {}).get(b"POSTGRESQL:type") == b"numeric"}
    if not numeric:
        return None
    columns = ", ".join(
        f"c{i}{'::text' if i in numeric else ''} AS " + '"' + field.name.replace('"', '""') + '"'
        for i, field in enumerate(described)
    )
    aliases = ", ".join(f"c{i}" for i in range(len(described)))
    return f"SELECT {columns} FROM (\n{sql}) AS _analysis_numeric_as_text({aliases})"


def _copy_body(sql: str) -> str:
    """``sql`` as the body of ``COPY (...)``: without a final ``;``, ending in a newline.

    The newline ends a trailing ``--`` comment, which would otherwise swallow the ``)``.
    """
    body = sql.rstrip()
    return (body[:-1] if body.endswith(";") else body) + "\n"


def _cancelled(exc: Exception) -> bool:
    """Whether an ADBC error says the statement was cancelled (``interrupt()`` or its time limit)."""
    text = str(exc)
    return "57014" in (getattr(exc, "sqlstate", None) or "", text[:200]) or "canceling statement" in text


class PostgresDatasource(ServerDatasource):
    """A PostgreSQL database reached with psycopg 3 (and ADBC for bulk reads)."""

    kind = "postgres"
    default_port = 5432
    requires = ("psycopg", "adbc_driver_manager", "adbc_driver_postgresql")

    def __init__(self, name: str, config: dict[str, Any]) -> None:
        super().__init__(name, config)
        self._conn: psycopg.Connection[Any] | None = None
        self._adbc: tuple[Any, Any] | None = None  # (AdbcConnection, AdbcDatabase) of the bulk path
        self._adbc_statement: Any = None
        self._lock = threading.Lock()
        self._running: str | None = None  # "psycopg" / "adbc" while a statement runs

    # -- connections ------------------------------------------------------------------------
    def _connect(self) -> psycopg.Connection[Any]:
        import psycopg
        from psycopg.adapt import Loader
        from psycopg.pq import Format

        if self._conn is not None and not self._conn.closed:
            return self._conn

        class _JsonText(Loader):
            def load(self, data: Any) -> str:
                return bytes(data).decode("utf-8")

        class _JsonbBinaryText(Loader):
            format = Format.BINARY

            def load(self, data: Any) -> str:
                return bytes(data[1:]).decode("utf-8")  # version byte, then the text

        class _JsonBinaryText(_JsonText):
            format = Format.BINARY

        try:
            conn = psycopg.connect(
                host=self.host,
                port=self.port,
                dbname=self.database,
                user=self.user,
                password=self.password.reveal() if self.password else None,
                connect_timeout=max(2, round(self.connect_timeout_s)),
                application_name="analysis",
                autocommit=False,
            )
        except psycopg.Error as exc:
            raise self.error(f"cannot connect to {self.host}:{self.port}: {exc}") from None
        conn.read_only = self.read_only
        for name in ("json", "jsonb"):
            conn.adapters.register_loader(name, _JsonText)
        conn.adapters.register_loader("json", _JsonBinaryText)
        conn.adapters.register_loader("jsonb", _JsonbBinaryText)
        self._conn = conn
        return conn

    def _adbc_connect(self, meanwhile: Callable[[], object]) -> tuple[Any, Any]:
        """The ADBC connection of the bulk path, opened on first use while ``meanwhile()`` runs.

        The connection is mostly waiting on the network (the driver releases the GIL), so the
        first ``into=`` of a job opens it while ``meanwhile`` opens the job's DuckDB.
        """
        if self._adbc is not None:
            meanwhile()
            return self._adbc
        outcome: list[tuple[Any, Any] | BaseException] = []

        def connect() -> None:
            try:
                outcome.append(self._adbc_open())
            except BaseException as exc:  # handed to the caller's thread
                outcome.append(exc)

        worker = threading.Thread(target=connect, name=f"analysis-connect-{self.name}", daemon=True)
        worker.start()
        try:
            meanwhile()
        finally:
            worker.join()
            if outcome and not isinstance(outcome[0], BaseException):
                self._adbc = outcome[0]
        if isinstance(outcome[0], BaseException):
            raise outcome[0]
        return outcome[0]

    def _adbc_open(self) -> tuple[Any, Any]:
        """A new ADBC connection and its database.

        The driver manager's own classes, not its DB-API module: that one imports pandas and
        pyarrow.dataset, about 0.4 s that the first ``into=`` of every job would pay.
        """
        import adbc_driver_manager
        import adbc_driver_postgresql  # type: ignore[import-untyped]

        user = urllib.parse.quote(self.user or "", safe="")
        password = urllib.parse.quote(self.password.reveal(), safe="") if self.password else ""
        auth = f"{user}:{password}@" if password else (f"{user}@" if user else "")
        host = f"[{self.host}]" if ":" in self.host else self.host
        query = urllib.parse.urlencode(
            {"connect_timeout": max(2, round(self.connect_timeout_s)), "application_name": "analysis"}
        )
        database = urllib.parse.quote(self.database or "", safe="")
        uri = f"postgresql://{auth}{host}:{self.port}/{database}?{query}"
        try:
            db = adbc_driver_postgresql.connect(uri)
            try:
                return adbc_driver_manager.AdbcConnection(db), db  # autocommit, ADBC's default
            except BaseException:
                db.close()
                raise
        except adbc_driver_manager.Error as exc:
            raise self.error(f"cannot connect to {self.host}:{self.port}: {exc}") from None

    # -- queries ----------------------------------------------------------------------------
    def _native(self, sql: str, params: Params) -> tuple[str, list[Any] | None]:
        try:
            native = to_native(sql, params, "postgres")
        except PlaceholderError as exc:
            raise self.error(exc) from None
        return native.sql, (list(native.params) if isinstance(native.params, Sequence) else None)

    def _timeout_ms(self, timeout_s: float | None) -> int:
        limit = self.limit_s(timeout_s)
        return 0 if limit is None else max(1, int(limit * 1000))

    def _translate(self, exc: Exception, timeout_s: float | None) -> DatasourceError:
        import psycopg
        from psycopg import errors

        if isinstance(exc, errors.QueryCanceled):
            limit = self.limit_s(timeout_s)
            if "statement timeout" in str(exc) and limit is not None:
                return self.error(f"the statement was cancelled at its time limit of {limit:g} s")
            return self.error("the statement was cancelled")
        if isinstance(exc, errors.ReadOnlySqlTransaction):
            return self.error(f"it is read-only, so the statement was refused ({exc})")
        if isinstance(exc, psycopg.OperationalError):
            return self.error(f"the connection failed: {exc}")
        return self.error(f"the query failed: {exc}")

    def query(self, sql: str, params: Params, *, timeout_s: float | None) -> pa.Table:
        import psycopg

        text, values = self._native(sql, params)
        with self._lock:
            conn = self._connect()
            try:
                self._running = "psycopg"
                with psycopg.RawCursor(conn) as cur:
                    cur.execute(
                        "SELECT set_config('statement_timeout', $1, true)", [str(self._timeout_ms(timeout_s))]
                    )
                    cur.execute(text, values, binary=True)
                    description = cur.description
                    rows = cur.fetchall() if description is not None else []
                self._running = None
                if self.read_only:
                    conn.rollback()
                else:
                    conn.commit()
            except psycopg.Error as exc:
                self._running = None
                self._reset()
                raise self._translate(exc, timeout_s) from None
        if description is None:
            return pa.table({})
        columns = list(zip(*rows, strict=True)) if rows else [() for _ in description]
        arrays: dict[str, pa.Array] = {}
        for col, values_ in zip(description, columns, strict=True):
            typ = _column_type(conn, col.type_code, self._fmod(col))
            arrays[self._unique(arrays, col.name)] = _to_arrow_column(list(values_), typ)
        return pa.table(arrays)

    @staticmethod
    def _fmod(col: Any) -> int | None:
        if col.type_code != _NUMERIC_OID or col.precision is None:
            return None
        return int(((col.precision << 16) | (col.scale or 0)) + 4)

    @staticmethod
    def _unique(seen: dict[str, Any], name: str) -> str:
        out, n = name, 1
        while out in seen:
            n += 1
            out = f"{name}_{n}"
        return out

    def _reset(self) -> None:
        """Roll back after a failure; drop the connection if it is broken."""
        conn = self._conn
        if conn is None:
            return
        try:
            if conn.closed or conn.broken:
                raise ConnectionError
            conn.rollback()
        except Exception:
            self._conn = None
            try:
                conn.close()
            except Exception:
                pass

    def query_into(self, duck: Duck, table: str, sql: str, params: Params, *, timeout_s: float | None) -> int:
        import adbc_driver_manager
        import duckdb

        text, values = self._native(sql, params)
        with self._lock:
            conn, _ = self._adbc_connect(lambda: duck.connection)
            settings = (
                f"SET statement_timeout = {self._timeout_ms(timeout_s)}",
                "SET default_transaction_read_only = " + ("on" if self.read_only else "off"),
            )
            try:
                stmt = adbc_driver_manager.AdbcStatement(conn)
            except adbc_driver_manager.Error as exc:
                raise self.error(f"the connection failed: {exc}") from None
            self._adbc_statement = stmt
            reader: pa.RecordBatchReader | None = None
            try:
                self._running = "adbc"
                for statement in settings:
                    stmt.set_sql_query(statement)
                    stmt.execute_update()
                described = self._prepare(stmt, _copy_body(text), values)
                stmt.set_options(**{"adbc.postgresql.batch_size_hint_bytes": str(_BATCH_HINT_BYTES)})
                handle, _ = stmt.execute_query()
                reader = pa.RecordBatchReader.from_stream(handle)
                fields = described if described is not None else reader.schema
                return duck.load_data(table, reader, casts=[_bulk_cast(field) for field in fields])
            except (adbc_driver_manager.Error, duckdb.Error) as exc:
                raise self._translate_adbc(exc, timeout_s) from None
            finally:
                self._running = None
                self._adbc_statement = None
                try:
                    if reader is not None:
                        reader.close()  # the result stream, before its statement
                    stmt.close()
                except adbc_driver_manager.Error:
                    self._drop_adbc()

    @staticmethod
    def _prepare(stmt: Any, text: str, values: list[Any] | None) -> pa.Schema | None:
        """Set ``stmt`` to run ``text`` (NUMERIC columns as text when it has them; see the module docstring).

        Returns the statement's described columns when the text form is used (the casts come
        from them), ``None`` when ``text`` runs as it is.
        """
        import adbc_driver_manager

        def use(sql: str) -> None:
            stmt.set_sql_query(sql)
            if values:
                stmt.bind(pa.record_batch([[v] for v in values], names=[str(i) for i in range(len(values))]))

        def describe() -> pa.Schema | None:
            try:
                return pa.schema(stmt.execute_schema())  # PREPARE and describe: nothing runs
            except adbc_driver_manager.Error as exc:
                if _cancelled(exc):  # interrupt() hit the describe: the statement must not run
                    raise
                return None

        use(text)
        described = describe()  # None: running it says what is wrong
        wrapped = None if described is None else _numeric_as_text(text, described)
        if described is None or wrapped is None:
            return None
        use(wrapped)
        again = describe()  # None: not a statement that can be wrapped (a data-modifying WITH, ...)
        if again is not None and len(again) == len(described):
            return described
        use(text)
        return None

    def _translate_adbc(self, exc: Exception, timeout_s: float | None) -> DatasourceError:
        text = str(exc)
        sqlstate = getattr(exc, "sqlstate", None) or ""
        if _cancelled(exc):
            limit = self.limit_s(timeout_s)
            if "statement timeout" in text and limit is not None:
                return self.error(f"the statement was cancelled at its time limit of {limit:g} s")
            return self.error("the statement was cancelled")
        if sqlstate == "25006" or "read-only transaction" in text:
            return self.error(f"it is read-only, so the statement was refused ({text})")
        self._drop_adbc_if_broken()
        return self.error(f"the query failed: {text}")

    def _drop_adbc_if_broken(self) -> None:
        import adbc_driver_manager

        if self._adbc is None:
            return
        try:
            self._adbc_execute("SELECT 1")
        except adbc_driver_manager.Error:
            self._drop_adbc()

    def _adbc_execute(self, sql: str) -> None:
        """Run ``sql`` on the open ADBC connection, its result (if any) unread."""
        import adbc_driver_manager

        assert self._adbc is not None
        stmt = adbc_driver_manager.AdbcStatement(self._adbc[0])
        try:
            stmt.set_sql_query(sql)
            stmt.execute_update()
        finally:
            stmt.close()

    def _drop_adbc(self) -> None:
        handles, self._adbc = self._adbc, None
        for handle in handles or ():  # the connection, then its database
            try:
                handle.close()
            except Exception:
                pass

    # -- lifecycle --------------------------------------------------------------------------
    def interrupt(self) -> None:
        running = self._running
        try:
            if running == "psycopg" and self._conn is not None:
                self._conn.cancel_safe(timeout=min(5.0, self.connect_timeout_s))
            elif running == "adbc" and self._adbc_statement is not None:
                self._adbc_statement.cancel()
        except Exception:
            pass

    def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()
        self._drop_adbc()

    def reset_session(self) -> None:
        """``DISCARD ALL`` on each open connection (settings, ``search_path``, temporary tables,
        prepared statements, advisory locks, ``LISTEN``); a connection that fails it is closed."""
        try:
            if self._conn is not None and not self._conn.closed:
                self._conn.autocommit = True  # DISCARD ALL cannot run inside a transaction
                self._conn.execute("DISCARD ALL")
                self._conn.autocommit = False
            if self._adbc is not None:
                self._adbc_execute("DISCARD ALL")
        except Exception:
            self.close()

    def server_version(self) -> str:
        """The server's version string (``SHOW server_version``)."""
        table = self.query("SHOW server_version", None, timeout_s=self.connect_timeout_s)
        return f"PostgreSQL {table.column(0)[0].as_py()}"
