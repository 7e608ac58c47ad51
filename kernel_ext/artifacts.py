"""Large table results as Parquet artifacts, instead of only ``result_too_large``.

When a job allows it (its job document has an ``artifact`` entry), a table-shaped result (a
``QueryResult``, a pandas or polars DataFrame, a pyarrow Table or RecordBatchReader, a list of row
dicts) whose JSON is over ``max_result_bytes`` is written as Parquet (up to ``max_bytes`` of the
artifact, 1 GiB by default). The outcome then carries ``result_preview`` (the first rows, within
``max_result_bytes``) and ``result_ref`` (``rows``, ``bytes``, ``formats``) and the result is
``null``. Anything else over the limit stays ``result_too_large``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from analysis.errors import ResultTooLargeError
from analysis.results import encode_result, format_bytes, to_json_fragment

__all__ = ["DEFAULT_MAX_ARTIFACT_BYTES", "FORMATS", "encode_outcome"]

DEFAULT_MAX_ARTIFACT_BYTES = 1024**3
FORMATS = ["parquet", "jsonl", "csv"]
_PREVIEW_ROWS = 100
_ROW_GROUP_ROWS = 65_536  # downloads read one row group at a time


def encode_outcome(
    value: Any, *, max_bytes: int | None, artifact: dict[str, Any] | None
) -> tuple[dict[str, Any], bytes]:
    """The success outcome and encoded result of ``value``, spilling a large table to Parquet.

    Raises ``ResultTooLargeError`` (or ``ResultNotSerializableError``) as ``encode_result`` does
    when the value cannot become an artifact.
    """
    if artifact is None:
        return {"success": True}, encode_result(value, max_bytes=max_bytes)
    table = None
    if max_bytes is not None and _is_columnar(value):
        # A row's JSON takes at least 3/4 of its Arrow bytes (int64 under one-letter keys being the
        # tightest case): past twice the limit in Arrow, encoding the JSON only to refuse it is skipped.
        table = _as_table(value)
        if table is not None and table.nbytes <= 2 * max_bytes:
            table = None
    if table is None:
        try:
            return {"success": True}, encode_result(value, max_bytes=max_bytes)
        except ResultTooLargeError:
            table = _as_table(value)
            if table is None:
                raise
    ref = _write(table, Path(artifact["path"]), int(artifact.get("max_bytes") or DEFAULT_MAX_ARTIFACT_BYTES))
    preview = _preview(table, max_bytes)
    return {"success": True, "result_ref": ref, "result_preview": preview}, b"null"


def _is_columnar(value: Any) -> bool:
    """Whether ``value`` already holds its data as columns (converting it to Arrow is cheap)."""
    module, name = type(value).__module__.split(".")[0], type(value).__name__
    return name == "QueryResult" or (
        module in ("pyarrow", "pandas", "polars") and name in ("Table", "DataFrame")
    )


def _as_table(value: Any) -> Any:
    """``value`` as a pyarrow Table when it is table-shaped, else ``None``."""
    import pyarrow as pa

    module, name = type(value).__module__.split(".")[0], type(value).__name__
    try:
        if isinstance(value, pa.Table):
            return value
        if isinstance(value, pa.RecordBatchReader):
            return value.read_all()
        if name == "QueryResult" and hasattr(value, "arrow"):
            return value.arrow()
        if module == "pandas" and name == "DataFrame":
            return pa.Table.from_pandas(value, preserve_index=False)
        if module == "polars" and name == "DataFrame":
            return value.to_arrow()
        if isinstance(value, list) and value and all(isinstance(row, dict) for row in value):
            return pa.Table.from_pylist(value)
    except (pa.ArrowException, TypeError, ValueError):
        return None
    return None


def _write(table: Any, path: Path, max_bytes: int) -> dict[str, Any]:
    """Write ``table`` to ``path`` atomically; its reference, or ``ResultTooLargeError``."""
    import pyarrow.parquet as pq

    partial = path.with_name(path.name + ".partial")
    pq.write_table(table, partial, compression="zstd", row_group_size=_ROW_GROUP_ROWS)
    size = partial.stat().st_size
    if size > max_bytes:
        partial.unlink()
        raise ResultTooLargeError(
            f"The result is a table of {table.num_rows:,} rows, {format_bytes(size)} as Parquet, over the "
            f"artifact limit of {format_bytes(max_bytes)} (max_artifact_bytes); return less data."
        )
    os.replace(partial, path)
    return {"rows": table.num_rows, "bytes": size, "formats": FORMATS}


def _preview(table: Any, max_bytes: int | None) -> Any:
    """The first rows of ``table`` as JSON-ready rows, halved until they fit in ``max_bytes``."""
    import orjson

    rows = min(_PREVIEW_ROWS, table.num_rows)
    while True:
        data = to_json_fragment(table.slice(0, rows))
        if max_bytes is None or len(data) <= max_bytes // 2 or rows == 0:
            return orjson.loads(data)
        rows //= 2
