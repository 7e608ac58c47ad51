"""The kernel's side of a cached ``into=`` result handed over as a file (README: "Result cache").

On a hit whose entry is Parquet, the broker does not stream the rows: it copies the checked
entry into the job directory and its final header names the copy (``cached_file``) and the
casts still to apply (:mod:`analysis.runner.broker.cache_handoff`). The job's DuckDB reads it
in place (the job directory is where it may read) and the copy is removed at once.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

from analysis.errors import DatasourceError

if TYPE_CHECKING:
    from analysis.files._load import SupportsLoadData

__all__ = ["load_handed"]

_NAME = re.compile(r"\.cache-[0-9a-f]{32}\.parquet")


def load_handed(sink: SupportsLoadData, table: str, final: dict[str, Any], directory: Path) -> int:
    """Load the file the broker's final header names into ``table``; remove it whatever happens."""
    import duckdb

    name, casts = final.get("cached_file"), final.get("casts")
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise DatasourceError("The data broker sent a malformed cached result (its file name).")
    path = directory / name
    try:
        if casts is not None and not (
            isinstance(casts, list)
            and all(c is None or (isinstance(c, str) and c.count("{}") == 1) for c in casts)
        ):
            raise DatasourceError("The data broker sent a malformed cached result (its column casts).")
        connection = getattr(sink, "connection", None)
        if connection is None:
            raise DatasourceError("A cached result can only be loaded into the job's DuckDB.")
        try:
            return sink.load_data(table, connection.read_parquet(str(path)), casts=casts)
        except (duckdb.Error, ValueError) as exc:  # ValueError: casts for another number of columns
            raise DatasourceError(
                f"The cached result could not be loaded into DuckDB table {table!r}: {exc}"
            ) from None
    finally:
        path.unlink(missing_ok=True)
