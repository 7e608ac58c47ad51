"""Loading a downloaded file into DuckDB, columnar: format detection and DuckDB's readers.

The file is parsed by DuckDB's CSV, JSON or Parquet reader in a scratch in-memory
connection and streamed as Arrow record batches into the job's DuckDB through
``Duck.load_data``: no Python row objects are built.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal, Protocol

from analysis.files._errors import FileLoadError

__all__ = ["FORMATS", "FileFormat", "SupportsLoadData", "detect_format", "load_into"]

FileFormat = Literal["csv", "json", "parquet"]
FORMATS: tuple[FileFormat, ...] = ("csv", "json", "parquet")

_BY_CONTENT_TYPE: dict[str, FileFormat] = {
    "text/csv": "csv",
    "application/csv": "csv",
    "text/tab-separated-values": "csv",
    "application/json": "json",
    "text/json": "json",
    "application/x-ndjson": "json",
    "application/ndjson": "json",
    "application/jsonl": "json",
    "application/x-jsonlines": "json",
    "application/vnd.apache.parquet": "parquet",
    "application/x-parquet": "parquet",
    "application/parquet": "parquet",
}
_BY_EXTENSION: dict[str, FileFormat] = {
    ".csv": "csv",
    ".tsv": "csv",
    ".json": "json",
    ".jsonl": "json",
    ".ndjson": "json",
    ".parquet": "parquet",
    ".pq": "parquet",
}


class SupportsLoadData(Protocol):
    """What ``load`` needs of the job's DuckDB (``analysis.duck.Duck``)."""

    def load_data(
        self, table: str, data: Any, *, mode: str = "replace", casts: Sequence[str | None] | None = None
    ) -> int:
        """Load ``data`` into ``table`` (``casts``: SQL applied per column as it loads); the row count."""
        ...


def detect_format(content_type: str | None, *names: str | None) -> FileFormat | None:
    """The format named by a content type, else by the extension of the first name that has one."""
    if content_type:
        media = content_type.split(";", 1)[0].strip().lower()
        if media in _BY_CONTENT_TYPE:
            return _BY_CONTENT_TYPE[media]
        if media.endswith("+json"):
            return "json"
    for name in names:
        if name:
            found = _BY_EXTENSION.get(Path(name).suffix.lower())
            if found is not None:
                return found
    return None


def sniff_format(path: Path) -> FileFormat | None:
    """The format told by the file's first bytes: Parquet's magic, or JSON's ``[``/``{``."""
    with path.open("rb") as fh:
        head = fh.read(64).lstrip()
    if head.startswith(b"PAR1"):
        return "parquet"
    if head[:1] in (b"[", b"{"):
        return "json"
    return None


def load_into(
    duck: SupportsLoadData, path: Path, fmt: FileFormat, table: str, *, mode: str, file_id: str
) -> int:
    """Parse ``path`` as ``fmt`` with DuckDB and stream it into ``table``; return the row count."""
    import duckdb

    scratch = duckdb.connect(":memory:")
    try:
        try:
            if fmt == "csv":
                relation = scratch.read_csv(str(path))
            elif fmt == "json":
                relation = scratch.read_json(str(path))
            else:
                relation = scratch.read_parquet(str(path))
            reader = relation.to_arrow_reader()
        except duckdb.Error as exc:
            raise FileLoadError(f"file {file_id!r} cannot be read as {fmt}: {exc}", file_id=file_id) from exc
        try:
            return duck.load_data(table, reader, mode=mode)
        except duckdb.Error as exc:
            raise FileLoadError(
                f"file {file_id!r} could not be loaded as {fmt} into table {table!r}: {exc}", file_id=file_id
            ) from exc
    finally:
        scratch.close()
