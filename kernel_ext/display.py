"""How our objects look in a notebook: tables as HTML (and text), never a generic JSON tree.

JupyterLab ranks ``application/json`` above ``text/html``, and VS Code does too, so a bundle
carrying it shows as a collapsed tree. Our bundles hold ``text/html`` and ``text/plain``; the
JSON summary of a ``QueryResult`` travels under its own vendor type, which front ends without a
renderer for it ignore. Column types are shown as SQL types (``DECIMAL(10,2)``, ``DATE``).
"""

from __future__ import annotations

import html
import json
from collections.abc import Sequence
from pprint import pformat
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import pyarrow as pa

    from analysis.duck import QueryResult

__all__ = [
    "QUERY_RESULT_MIME",
    "envelope_bundle",
    "html_table",
    "jobs_bundle",
    "json_summary",
    "query_result_bundle",
    "sql_type",
    "text_table",
    "value_bundle",
]

#: The JSON summary of a ``QueryResult`` (columns with SQL types, row count, first rows).
QUERY_RESULT_MIME = "application/vnd.analysis.query-result+json"

_MAX_TEXT_CHARS = 20_000
_NULL = '<td style="color:#999">NULL</td>'
_TYPE_STYLE = "font-weight:normal;color:#777"

_SIMPLE_TYPES = {
    "null": '"NULL"',
    "bool": "BOOLEAN",
    "int8": "TINYINT",
    "int16": "SMALLINT",
    "int32": "INTEGER",
    "int64": "BIGINT",
    "uint8": "UTINYINT",
    "uint16": "USMALLINT",
    "uint32": "UINTEGER",
    "uint64": "UBIGINT",
    "halffloat": "FLOAT",
    "float": "FLOAT",
    "double": "DOUBLE",
    "string": "VARCHAR",
    "large_string": "VARCHAR",
    "string_view": "VARCHAR",
    "binary": "BLOB",
    "large_binary": "BLOB",
    "binary_view": "BLOB",
    "date32[day]": "DATE",
    "date64[ms]": "DATE",
    "month_day_nano_interval": "INTERVAL",
}
_TIMESTAMP_UNITS = {"s": "TIMESTAMP_S", "ms": "TIMESTAMP_MS", "us": "TIMESTAMP", "ns": "TIMESTAMP_NS"}


def sql_type(arrow_type: pa.DataType) -> str:
    """The SQL (DuckDB) name of an Arrow type: ``decimal128(10, 2)`` is ``DECIMAL(10,2)``."""
    import pyarrow as pa
    import pyarrow.types as t

    name = str(arrow_type)
    if name in _SIMPLE_TYPES:
        return _SIMPLE_TYPES[name]
    if t.is_decimal(arrow_type):
        return f"DECIMAL({arrow_type.precision},{arrow_type.scale})"
    if t.is_timestamp(arrow_type):
        return "TIMESTAMP WITH TIME ZONE" if arrow_type.tz else _TIMESTAMP_UNITS[arrow_type.unit]
    if t.is_time(arrow_type):
        return "TIME"
    if t.is_duration(arrow_type):
        return "INTERVAL"
    if t.is_fixed_size_binary(arrow_type):
        return "BLOB"
    if t.is_fixed_size_list(arrow_type):
        return f"{sql_type(arrow_type.value_type)}[{arrow_type.list_size}]"
    if t.is_list(arrow_type) or t.is_large_list(arrow_type):
        return f"{sql_type(arrow_type.value_type)}[]"
    if t.is_map(arrow_type):
        return f"MAP({sql_type(arrow_type.key_type)}, {sql_type(arrow_type.item_type)})"
    if t.is_struct(arrow_type):
        fields = ", ".join(f"{f.name} {sql_type(f.type)}" for f in arrow_type)
        return f"STRUCT({fields})"
    if t.is_dictionary(arrow_type):
        return sql_type(arrow_type.value_type)
    if isinstance(arrow_type, pa.ExtensionType) and arrow_type.extension_name == "arrow.uuid":
        return "UUID"
    return name.upper()


def _cell(value: Any) -> str:
    if value is None:
        return _NULL
    text = str(value)
    if len(text) > 200:
        text = text[:199] + "…"
    return f"<td>{html.escape(text)}</td>"


def _plural(count: int, word: str) -> str:
    return f"{count:,} {word}{'' if count == 1 else 's'}"


def _footer(total: int, ncols: int, shown: int) -> str:
    text = f"{_plural(total, 'row')} × {_plural(ncols, 'column')}"
    if shown < total:
        text += f" (first {shown:,} shown; {total - shown:,} more)"
    return text


def _count_only(result: QueryResult) -> str:
    """What a result without columns (``into=``, DDL) says: the rows it counted."""
    text = _plural(result.row_count, "row")
    return f"{text} loaded into table {result.loaded_into}" if result.loaded_into else text


def _html_grid(names: Sequence[str], types: Sequence[str] | None, columns: list[list[Any]]) -> str:
    if types is None:
        head = "".join(f"<th>{html.escape(n)}</th>" for n in names)
    else:
        head = "".join(
            f"<th>{html.escape(n)}<br><small style='{_TYPE_STYLE}'>{html.escape(ty)}</small></th>"
            for n, ty in zip(names, types, strict=True)
        )
    shown = len(columns[0]) if columns else 0
    body = "".join("<tr>" + "".join(_cell(col[r]) for col in columns) + "</tr>" for r in range(shown))
    return f"<table class='analysis-result'><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _text_grid(names: Sequence[str], columns: list[list[Any]]) -> list[str]:
    cols = [
        [name, *("NULL" if v is None else str(v)[:40] for v in col)]
        for name, col in zip(names, columns, strict=True)
    ]
    widths = [max(map(len, c)) for c in cols]
    lines = [
        " | ".join(c[r].ljust(w) for c, w in zip(cols, widths, strict=True)) for r in range(len(cols[0]))
    ]
    lines.insert(1, "-+-".join("-" * w for w in widths))
    return lines


def _head(result: QueryResult, limit: int) -> list[list[Any]]:
    return [column.to_pylist() for column in result.arrow().slice(0, limit).columns]


def html_table(result: QueryResult, max_rows: int | None = None) -> str:
    """The first ``max_rows`` rows (default ``QueryResult.display_rows``) as an HTML table."""
    if not result.columns:
        return f"<p>{html.escape(_count_only(result))}</p>"
    columns = _head(result, result.display_rows if max_rows is None else max_rows)
    footer = _footer(result.row_count, len(result.columns), len(columns[0]))
    table = _html_grid(result.columns, result.sql_types, columns)
    return f"{table}<p><small>{html.escape(footer)}</small></p>"


def text_table(result: QueryResult, max_rows: int | None = None) -> str:
    """A plain-text rendering for terminals and front ends without HTML."""
    if not result.columns:
        return _count_only(result)
    columns = _head(result, result.display_rows if max_rows is None else max_rows)
    lines = _text_grid(result.columns, columns)
    lines.append(_footer(result.row_count, len(result.columns), len(columns[0])))
    return "\n".join(lines)


def json_summary(result: QueryResult, max_rows: int | None = None) -> dict[str, Any]:
    """Columns with their SQL types, the row count and the first rows, as JSON data."""
    from analysis.results import to_json_fragment

    limit = result.display_rows if max_rows is None else max_rows
    head = json.loads(to_json_fragment(result.arrow().slice(0, limit))) if result.columns else []
    return {
        "columns": [{"name": n, "type": ty} for n, ty in zip(result.columns, result.sql_types, strict=True)],
        "row_count": result.row_count,
        "rows": head,
        "truncated": result.row_count > len(head),
    }


def query_result_bundle(result: QueryResult) -> dict[str, Any]:
    """The display bundle of a ``QueryResult``: HTML table, text table, JSON under a vendor type."""
    return {
        "text/html": html_table(result),
        "text/plain": text_table(result),
        QUERY_RESULT_MIME: json_summary(result),
    }


def _cut(text: str, hint: str) -> str:
    if len(text) <= _MAX_TEXT_CHARS:
        return text
    return f"{text[:_MAX_TEXT_CHARS]}\n… ({len(text) - _MAX_TEXT_CHARS:,} more characters{hint})"


def _is_rows(value: Any) -> bool:
    return isinstance(value, list) and bool(value) and all(isinstance(row, dict) for row in value)


def value_bundle(value: Any, max_rows: int, *, hint: str = "") -> dict[str, Any]:
    """A decoded JSON result: a list of row objects as a table, anything else as pretty text."""
    if not _is_rows(value):
        return {"text/plain": _cut(pformat(value, width=100, sort_dicts=False), hint)}
    names = list(dict.fromkeys(key for row in value for key in row))
    head = value[:max_rows]
    columns = [[_json_cell(row.get(name)) for row in head] for name in names]
    footer = _footer(len(value), len(names), len(head))
    return {
        "text/html": f"{_html_grid(names, None, columns)}<p><small>{html.escape(footer)}</small></p>",
        "text/plain": "\n".join([*_text_grid(names, columns), footer]),
    }


def _json_cell(value: Any) -> Any:
    return json.dumps(value) if isinstance(value, dict | list) else value


def envelope_bundle(name: str, envelope: dict[str, Any], max_rows: int) -> dict[str, Any]:
    """The envelope of a ``%analysis run``: outcome line, result (a table when it is rows), logs."""
    seconds = f"{envelope.get('duration_ms', 0) / 1000:.2f} s"
    if envelope["success"]:
        headline = f"{name}: succeeded in {seconds} (job {envelope['job_id']})"
        result = value_bundle(envelope.get("result"), max_rows)
        body_html = result.get("text/html") or f"<pre>{html.escape(result['text/plain'])}</pre>"
        body_text = result["text/plain"]
    else:
        headline = f"{name}: {envelope['error_type']} after {seconds} (job {envelope['job_id']})"
        body_text = envelope["error"] + (f"\n\n{envelope['stack']}" if envelope.get("stack") else "")
        body_html = f"<pre>{html.escape(body_text)}</pre>"
    logs = envelope.get("logs") or []
    logs_text = "\n".join(logs)
    logs_html = (
        f"<details><summary>{_plural(len(logs), 'log line')}</summary><pre>{html.escape(logs_text)}</pre>"
        "</details>"
        if logs
        else ""
    )
    return {
        "text/html": f"<p><b>{html.escape(headline)}</b></p>{body_html}{logs_html}",
        "text/plain": _cut(f"{headline}\n{body_text}" + (f"\nlogs:\n{logs_text}" if logs else ""), ""),
    }


def jobs_bundle(jobs: Sequence[tuple[str, Any]]) -> dict[str, Any]:
    """The jobs run from this kernel (``%analysis jobs``), newest first."""
    if not jobs:
        return {"text/plain": "no jobs yet in this kernel"}
    names = ["analysis", "job_id", "outcome", "duration_ms", "trigger"]
    rows = [
        [name, r.job_id, "ok" if r.success else r.error_type, r.duration_ms, r.trigger]
        for name, r in reversed(jobs)
    ]
    columns = [list(col) for col in zip(*rows, strict=True)]
    return {
        "text/html": _html_grid(names, None, columns),
        "text/plain": "\n".join(_text_grid(names, columns)),
    }
