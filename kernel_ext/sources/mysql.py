"""The ``mysql`` datasource kind (MySQL and MariaDB): mysql-connector-python, columnar readers for ``into=``.

Ordinary queries go through mysql-connector-python (pure Python here), one statement per
call (multi-statements are switched off). A statement with parameters is a server-side
prepared statement (values bound, never put into the text). A read-only datasource runs each
statement with the session and the transaction read-only, and rolls it back; a read-write one
sets autocommit on every call and commits a transaction the statement left open, so each call
is its own transaction whatever a kept session ran before.

Every statement gets a server-side limit (``max_statement_time`` on MariaDB,
``max_execution_time`` on MySQL, which covers only SELECT), and a timer sends ``KILL QUERY``
shortly after the limit as a backstop. ``interrupt()`` (another thread) sends ``KILL QUERY``
over a second connection.

``query_into`` reads columnar, choosing by the result's columns (from a server-side PREPARE,
which runs nothing): arrow-odbc over MariaDB Connector/ODBC when every column is a plain type
(parameters bound as text; the ODBC connection is kept for the next call, and dropped after any
failure or a result not read to its end), else connectorx (no parameters), else the ordinary
path. Either reader builds Arrow in Rust and DuckDB scans it in place; the statement carries a
unique comment so that ``interrupt()`` can find it in the process list. (connectorx's streaming mode
holds the GIL while it waits for the server, so its whole-table mode is used.) Whichever path
reads a column, :mod:`analysis.sources.mysql_types` gives it the same type.
"""

from __future__ import annotations

import sys
import threading
import urllib.parse
import uuid
from collections.abc import Sequence
from struct import error as struct_error
from typing import TYPE_CHECKING, Any

import pyarrow as pa

from analysis.errors import DatasourceError
from analysis.sources.base import Params, ServerDatasource
from analysis.sources.mysql_types import (
    ODBC_MAX_TEXT_BYTES,
    column,
    converter,
    decimal_precision,
    describing_protocol,
    odbc_safe,
    typed,
    typed_stream,
)
from analysis.sources.placeholders import PlaceholderError, to_native

if TYPE_CHECKING:
    from analysis.duck import Duck

__all__ = ["MySQLDatasource"]

#: Rows per arrow-odbc batch. The driver's row buffers of a smaller batch stay in the CPU's
#: caches: reading 1,000,000 rows (int, varchar, decimal, datetime) in batches of 8192 costs
#: about 15% less CPU than in arrow-odbc's 65535 (0.27 s instead of 0.31 s here), and the
#: kernel gets its first rows sooner.
_ODBC_BATCH_ROWS = 8192


def _odbc_text(value: Any) -> str | None:
    """A parameter as the text arrow-odbc binds; ``TypeError`` for values text cannot carry."""
    import datetime as dt
    import math
    import uuid as uuid_
    from decimal import Decimal

    if value is None or isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, float) and not math.isfinite(value):
        raise TypeError("a non-finite float")
    if isinstance(value, int | float | Decimal | uuid_.UUID):
        return str(value)
    if isinstance(value, dt.datetime):
        if value.tzinfo is not None:  # the session runs in UTC
            value = value.astimezone(dt.UTC).replace(tzinfo=None)
        return str(value.isoformat(sep=" "))
    if isinstance(value, dt.date | dt.time):
        return value.isoformat()
    raise TypeError(type(value).__name__)


class MySQLDatasource(ServerDatasource):
    """A MySQL or MariaDB database reached with mysql-connector-python (and connectorx for bulk reads)."""

    kind = "mysql"
    default_port = 3306
    requires = ("mysql.connector", "connectorx")  # arrow_odbc too, when installed
    first_imports = ("arrow_odbc", "mysql.connector.protocol", "mysql.connector.conversion")

    def __init__(self, name: str, config: dict[str, Any]) -> None:
        super().__init__(name, config)
        self._conn: Any = None
        self._mariadb = True
        self._lock = threading.Lock()
        self._marker: str | None = None  # comment tag of the running bulk (ODBC/connectorx) statement
        self.odbc_driver = str(self.config.get("odbc_driver") or "MariaDB Unicode")
        self._odbc_missing = False
        self._odbc: Any = None  # arrow-odbc's connection of the bulk path, kept between calls
        self._running = False

    # -- connections ------------------------------------------------------------------------
    def _open(self, *, timeout_s: float | None = None) -> Any:
        import mysql.connector
        from mysql.connector.constants import ClientFlag

        try:
            return mysql.connector.connect(
                host=self.host,
                port=self.port,
                user=self.user,
                password=self.password.reveal() if self.password else "",
                database=self.database,
                connection_timeout=max(1, round(timeout_s or self.connect_timeout_s)),
                autocommit=True,
                use_pure=True,
                charset="utf8mb4",
                client_flags=[-ClientFlag.MULTI_STATEMENTS],
                raw=False,
                converter_class=converter(),
            )
        except mysql.connector.Error as exc:
            raise self.error(f"cannot connect to {self.host}:{self.port}: {self._describe(exc)}") from None
        except OSError as exc:
            raise self.error(f"cannot connect to {self.host}:{self.port}: {exc}") from None

    @staticmethod
    def _describe(exc: Exception) -> str:
        msg = getattr(exc, "msg", None) or str(exc)
        errno = getattr(exc, "errno", None)
        return f"{msg} (error {errno})" if errno and errno > 0 else str(msg)

    def _connect(self) -> Any:
        if self._conn is not None and self._conn.is_connected():
            return self._conn
        conn = self._open()
        try:
            self._mariadb = "mariadb" in str(conn.server_info).lower()
            conn._protocol.__class__ = describing_protocol()  # descriptions with DECIMAL(p, s)
            with conn.cursor() as cur:
                cur.execute("SET time_zone = '+00:00'")
        except Exception:
            conn.close()
            raise
        self._conn = conn
        return conn

    def _limit_statement(self, limit: float | None) -> str:
        if self._mariadb:
            return f"SET SESSION max_statement_time = {0 if limit is None else max(0.001, limit):.3f}"
        return f"SET SESSION max_execution_time = {0 if limit is None else max(1, int(limit * 1000))}"

    # -- queries ----------------------------------------------------------------------------
    def _native(self, sql: str, params: Params) -> tuple[str, tuple[Any, ...] | None]:
        try:
            native = to_native(sql, params, "mysql")
        except PlaceholderError as exc:
            raise self.error(exc) from None
        return native.sql, (tuple(native.params) if isinstance(native.params, Sequence) else None)

    def _translate(self, exc: Exception, limit: float | None) -> DatasourceError:
        import mysql.connector
        from mysql.connector import errorcode

        errno = getattr(exc, "errno", None)
        if errno in (1969, 3024):  # ER_STATEMENT_TIMEOUT (MariaDB), ER_QUERY_TIMEOUT (MySQL)
            return self.error(f"the statement was cancelled at its time limit of {limit or 0:g} s")
        if errno == errorcode.ER_QUERY_INTERRUPTED:
            return self.error("the statement was cancelled")
        if errno == errorcode.ER_CANT_EXECUTE_IN_READ_ONLY_TRANSACTION:
            return self.error(f"it is read-only, so the statement was refused ({self._describe(exc)})")
        if isinstance(exc, mysql.connector.errors.OperationalError | mysql.connector.errors.InterfaceError):
            return self.error(f"the connection failed: {self._describe(exc)}")
        return self.error(f"the query failed: {self._describe(exc)}")

    def query(self, sql: str, params: Params, *, timeout_s: float | None) -> pa.Table:
        import mysql.connector

        text, values = self._native(sql, params)
        limit = self.limit_s(timeout_s)
        with self._lock:
            conn = self._connect()
            timer = threading.Timer(limit + 1.0, self.interrupt) if limit is not None else None
            try:
                with conn.cursor() as setup:
                    # UTC and autocommit on every call: the pooled session may have run anything since
                    setup.execute(f"{self._limit_statement(limit)}, time_zone = '+00:00', autocommit = 1")
                    if self.read_only:  # the session too: DDL commits implicitly and goes on
                        setup.execute("SET SESSION TRANSACTION READ ONLY")
                        setup.execute("START TRANSACTION READ ONLY")
                self._running = True
                if timer is not None:
                    timer.start()
                # with values: a server-side prepared statement (bound, binary protocol)
                with conn.cursor(prepared=values is not None) as cur:
                    cur.execute(text, values)
                    description = cur.description
                    rows = cur.fetchall() if description is not None else []
                    while cur.nextset():  # a CALL's further results: left unread, they were
                        if cur.description is not None:  # the next statement's answer
                            cur.fetchall()
                if self.read_only:
                    conn.rollback()
                elif conn.in_transaction:  # the statement opened one (START TRANSACTION, autocommit off)
                    conn.commit()  # each call is its own transaction, committed as it ends
            except mysql.connector.Error as exc:
                self._reset()
                raise self._translate(exc, limit) from None
            except (ValueError, IndexError, TypeError, struct_error) as exc:  # the driver's decoding
                self._drop()
                raise self.error(f"the driver could not decode the result: {exc!r}") from None
            finally:
                self._running = False
                if timer is not None:
                    timer.cancel()
        if description is None:
            return pa.table({})
        columns = list(zip(*rows, strict=True)) if rows else [() for _ in description]
        arrays: dict[str, pa.Array] = {}
        for col, values_ in zip(description, columns, strict=True):
            name, n = col[0], 1
            while name in arrays:
                n += 1
                name = f"{col[0]}_{n}"
            arrays[name] = column(list(values_), col)
        return pa.table(arrays)

    def _reset(self) -> None:
        """Roll back after a failure; drop the connection if it is broken."""
        conn = self._conn
        if conn is None:
            return
        try:
            conn.rollback()
        except Exception:  # a broken connection is replaced on next use
            self._drop()

    def _drop(self) -> None:
        """Close the connection (its state is unknown); the next query opens a new one."""
        conn, self._conn = self._conn, None
        if conn is not None:
            try:
                conn.close()
            except Exception:  # closing a broken connection
                pass

    def query_into(self, duck: Duck, table: str, sql: str, params: Params, *, timeout_s: float | None) -> int:
        text, values = self._native(sql, params)
        result = None
        with self._lock:
            columns = self._describe_statement(text)
            texts = self._odbc_parameters(values)
            if texts is not None and odbc_safe(columns) and self._odbc_driver() is not None:
                loaded = self._load_odbc(duck, table, text, texts, columns=columns, timeout_s=timeout_s)
                if loaded is not None:
                    return loaded
            # no ODBC driver after all, or not a plain result: connectorx, which binds no
            # parameters and reads DECIMAL through a 28-digit type
            if (
                result is None
                and values is None
                and not any((decimal_precision(c) or 0) > 28 for c in columns)
            ):
                result = self._read_columnar(text, columns, timeout_s)
        if result is None:  # the exact, bound, slower path
            result = self.query(sql, params, timeout_s=timeout_s)
        return duck.load_data(table, result)

    @staticmethod
    def _odbc_parameters(values: tuple[Any, ...] | None) -> list[str | None] | None:
        """The parameters as text for arrow-odbc, or ``None`` when one cannot be sent as text."""
        try:
            return [_odbc_text(v) for v in values or ()]
        except TypeError:
            return None

    def _odbc_driver(self) -> str | None:
        """The ODBC driver name to use, or ``None`` when arrow-odbc or the driver is missing."""
        if self._odbc_missing:
            return None
        try:
            import arrow_odbc  # type: ignore[import-untyped]  # noqa: F401
        except ImportError:
            self._odbc_missing = True
            return None
        return self.odbc_driver

    def _load_odbc(
        self,
        duck: Duck,
        table: str,
        text: str,
        params: list[str | None],
        *,
        columns: list[Any],
        timeout_s: float | None,
    ) -> int | None:
        """Stream ``text`` through arrow-odbc (MariaDB Connector/ODBC) into ``table``.

        Returns the row count, or ``None`` when the ODBC driver is not installed.
        """
        from arrow_odbc import Error

        limit = self.limit_s(timeout_s)
        # the session's settings, on every call: a kept session may have run anything since
        settings = [
            self._limit_statement(limit).removeprefix("SET "),
            "time_zone = '+00:00'",
            "autocommit = 1",
            f"SESSION {'tx' if self._mariadb else 'transaction'}_read_only = {int(self.read_only)}",
        ]
        try:
            odbc = self._odbc_session("SET " + ", ".join(settings))
        except Error as exc:
            if "[Driver Manager]" in str(exc):  # no such driver (or no unixODBC): use connectorx
                self._odbc_missing = True
                return None
            raise self._translate_cx(exc, limit) from None
        marker = f"analysis:{uuid.uuid4().hex}"
        self._marker = marker
        timer = threading.Timer(limit + 1.0, self.interrupt) if limit is not None else None
        try:
            if timer is not None:
                timer.start()
            reader = odbc.read_arrow_batches(
                f"/* {marker} */ {text}", parameters=params or None, max_text_size=ODBC_MAX_TEXT_BYTES,
                max_binary_size=ODBC_MAX_TEXT_BYTES, batch_size=_ODBC_BATCH_ROWS,
            )  # fmt: skip
            # DuckDB (or the broker's stream to the kernel) reads the batches as they arrive
            return duck.load_data(table, typed_stream(reader.into_pyarrow_record_batch_reader(), columns))
        except BaseException as exc:
            # a statement that failed, was cancelled, or whose reader stopped part way (the
            # kernel gone): the session's state is unknown, so the next call opens another
            self._odbc = None
            duckdb = sys.modules.get("duckdb")  # DuckDB wraps the reader's errors in-process
            if isinstance(exc, Error) or (duckdb is not None and isinstance(exc, duckdb.Error)):
                raise self._translate_cx(exc, limit) from None
            raise
        finally:
            self._marker = None
            if timer is not None:
                timer.cancel()

    def _odbc_session(self, settings: str) -> Any:
        """This datasource's ODBC connection (opened on first use, then kept), with ``settings`` run.

        ``settings`` (a ``SET``) runs first on every call. A kept connection that fails it (it
        died while idle) is replaced once: nothing of the caller's has run yet.
        """
        from arrow_odbc import Error, connect

        kept, self._odbc = self._odbc, None
        if kept is not None:
            try:
                kept.execute(settings)
            except Error:  # it died while idle: open another
                pass
            else:
                self._odbc = kept
                return kept
        driver, host = self.odbc_driver.replace("}", "}}"), self.host.replace("}", "}}")
        database = (self.database or "").replace("}", "}}")
        # STREAMRS + FORWARDONLY: Connector/ODBC 3.1.17 and later hand rows over as the server
        # sends them instead of reading the whole result first; older drivers ignore both (3.1.15
        # reads every result with mysql_stmt_store_result, whatever the options say)
        odbc = connect(
            f"Driver={{{driver}}};Server={{{host}}};Port={self.port};Database={{{database}}};"
            "CHARSET=utf8mb4;STREAMRS=1;FORWARDONLY=1;",
            user=self.user, password=self.password.reveal() if self.password else None,
            login_timeout_sec=max(1, round(self.connect_timeout_s)),
        )  # fmt: skip
        odbc.execute(settings)
        self._odbc = odbc
        return odbc

    def _read_columnar(self, text: str, columns: list[Any], timeout_s: float | None) -> pa.Table:
        """Run ``text`` through connectorx into an Arrow table typed after ``columns``."""
        import connectorx

        limit = self.limit_s(timeout_s)
        marker = f"analysis:{uuid.uuid4().hex}"
        pre = ["SET time_zone = '+00:00'", self._limit_statement(limit)]
        if self.read_only:
            pre.append("SET SESSION TRANSACTION READ ONLY")
        self._marker = marker
        timer = threading.Timer(limit + 1.0, self.interrupt) if limit is not None else None
        try:
            if timer is not None:
                timer.start()
            table = connectorx.read_sql(
                self._url(), f"/* {marker} */ {text}", return_type="arrow", protocol="text",
                pre_execution_query=pre,
            )  # fmt: skip
        except (KeyboardInterrupt, SystemExit):
            raise
        except BaseException as exc:  # RuntimeError, or pyo3's PanicException (a BaseException)
            raise self._translate_cx(exc, limit) from None
        finally:
            self._marker = None
            if timer is not None:
                timer.cancel()
        return typed(table, columns)

    def _url(self) -> str:
        user = urllib.parse.quote(self.user or "", safe="")
        password = urllib.parse.quote(self.password.reveal(), safe="") if self.password else ""
        auth = f"{user}:{password}@" if password else (f"{user}@" if user else "")
        host = f"[{self.host}]" if ":" in self.host else self.host
        # prefer_socket=false: stay on TCP, as the same account that interrupt() connects with
        database = urllib.parse.quote(self.database or "", safe="")
        return f"mysql://{auth}{host}:{self.port}/{database}?prefer_socket=false"

    def _translate_cx(self, exc: BaseException, limit: float | None) -> DatasourceError:
        """A connectorx or arrow-odbc error as a ``DatasourceError`` (they carry the server's code)."""
        text = str(exc)
        if "Message: " in text:  # arrow-odbc: "... Native error: N, Message: [driver][server]text"
            head, _, message = text.partition("Message: ")
            code = head.split("Native error: ")[-1].split(",")[0]
            text = f"{message.rsplit(']', 1)[-1]} (error {code})"
        if "1969" in text or "max_statement_time" in text or "3024" in text:
            return self.error(f"the statement was cancelled at its time limit of {limit or 0:g} s")
        if "1317" in text or "interrupted" in text.lower():
            return self.error("the statement was cancelled")
        if "1792" in text or "READ ONLY" in text:
            return self.error(f"it is read-only, so the statement was refused ({text})")
        return self.error(f"the query failed: {text}")

    def _describe_statement(self, text: str) -> list[Any]:
        """The result columns of ``text`` from a server-side PREPARE (nothing is executed)."""
        import mysql.connector

        conn = self._connect()  # also checks reachability and credentials within the connect timeout
        try:
            prepared = conn.cmd_stmt_prepare(text.encode("utf-8"))
        except mysql.connector.Error as exc:
            if getattr(exc, "errno", None) in (1295,):  # ER_UNSUPPORTED_PS: describe nothing
                return []
            self._reset()
            raise self._translate(exc, None) from None
        conn.cmd_stmt_close(prepared["statement_id"])
        return list(prepared["columns"])

    # -- lifecycle --------------------------------------------------------------------------
    def interrupt(self) -> None:
        marker, conn = self._marker, self._conn
        if marker is None and not (self._running and conn is not None):
            return
        try:
            killer = self._open(timeout_s=min(5.0, self.connect_timeout_s))
        except DatasourceError:
            return
        try:
            with killer.cursor() as cur:
                ids: list[int] = []
                if marker is not None:
                    cur.execute(
                        "SELECT ID FROM information_schema.PROCESSLIST "
                        "WHERE INFO LIKE %s AND ID <> CONNECTION_ID()",
                        (f"%{marker}%",),
                    )
                    ids = [int(row[0]) for row in cur.fetchall()]
                elif conn is not None:
                    ids = [int(conn.connection_id)]
                for thread_id in ids:
                    try:
                        cur.execute(f"KILL QUERY {thread_id:d}")
                    except Exception:
                        pass
        except Exception:
            pass
        finally:
            killer.close()

    def close(self) -> None:
        self._odbc = None  # arrow-odbc closes a connection when it is freed
        self._drop()

    def reset_session(self) -> None:
        """``COM_RESET_CONNECTION`` on the kept connection (user variables, session variables,
        temporary tables, named locks, prepared statements; mysql-connector then sets its
        connect-time settings again, and every call its time zone), and the configured database
        again; a connection that fails it is closed. The bulk path's ODBC session has no such
        reset through arrow-odbc: it is closed, and the next ``into=`` opens another."""
        self._odbc = None
        conn = self._conn
        if conn is None:
            return
        try:
            if not conn.cmd_reset_connection():
                raise ConnectionError("the server does not reset sessions")
            if self.database:
                conn.database = self.database  # USE: a statement may have changed it
        except Exception:
            self._drop()

    def server_version(self) -> str:
        """The server's version string (``SELECT VERSION()``)."""
        table = self.query("SELECT VERSION()", None, timeout_s=self.connect_timeout_s)
        version = str(table.column(0)[0].as_py())
        return version if "mariadb" in version.lower() else f"MySQL {version}"
