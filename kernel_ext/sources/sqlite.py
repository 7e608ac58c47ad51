"""The embedded ``sqlite`` datasource kind: a SQLite database file, no server needed.

Configuration::

    [shop]
    kind = "sqlite"
    path = "shop.db"        # relative to the configuration file
    read_only = true        # default: opened read-only

With ``read_only = false`` each statement commits when it ends (SQLite's autocommit mode), as
a statement on the server kinds does: a write is in the file before ``query_datasource`` returns.
"""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path
from typing import Any

import pyarrow as pa

from analysis.errors import DatasourceError
from analysis.sources.base import Datasource, Params

__all__ = ["SQLiteDatasource"]


class SQLiteDatasource(Datasource):
    """A SQLite file opened with the standard library driver."""

    kind = "sqlite"

    def __init__(self, name: str, config: dict[str, Any]) -> None:
        super().__init__(name, config)
        if "path" not in self.config:
            raise DatasourceError(f"Datasource {name!r} (sqlite) has no 'path' in its configuration.")
        self.path = Path(self.config["path"])
        self.read_only = self.config.get("read_only", True)
        if not isinstance(self.read_only, bool):
            raise DatasourceError(f"Datasource {name!r} (sqlite): read_only must be true or false.")
        self._conn: sqlite3.Connection | None = None
        self._lock = threading.Lock()

    def _connect(self) -> sqlite3.Connection:
        if self._conn is None:
            if not self.path.is_file():
                raise DatasourceError(
                    f"Datasource {self.name!r} (sqlite): database file {str(self.path)!r} does not exist."
                )
            mode = "ro" if self.read_only else "rw"
            try:
                self._conn = sqlite3.connect(
                    f"{self.path.resolve().as_uri()}?mode={mode}",
                    uri=True,
                    check_same_thread=False,
                    isolation_level=None,  # autocommit: no implicit transaction left open
                )
            except sqlite3.Error as exc:
                raise DatasourceError(f"Datasource {self.name!r} (sqlite) failed to open: {exc}.") from exc
        return self._conn

    def query(self, sql: str, params: Params, *, timeout_s: float | None) -> pa.Table:
        conn = self._connect()
        timer = threading.Timer(timeout_s, conn.interrupt) if timeout_s is not None else None
        try:
            if timer is not None:
                timer.start()
            cursor = conn.execute(sql, params if params is not None else ())
            names = [d[0] for d in cursor.description or ()]
            rows = cursor.fetchall()
        except sqlite3.Error as exc:
            if isinstance(exc, sqlite3.OperationalError) and str(exc) == "interrupted":
                raise DatasourceError(
                    f"Datasource {self.name!r} (sqlite): the query was cancelled at its time limit."
                ) from exc
            raise DatasourceError(f"Datasource {self.name!r} (sqlite) query failed: {exc}.") from exc
        finally:
            if timer is not None:
                timer.cancel()
        columns = list(zip(*rows, strict=True)) if rows else [() for _ in names]
        return pa.table({n: pa.array(list(col)) for n, col in zip(names, columns, strict=True)})

    def interrupt(self) -> None:
        if self._conn is not None:
            self._conn.interrupt()

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None
