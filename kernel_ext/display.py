"""How a ``QueryResult`` looks in a notebook: an HTML table with types, a row count, the first rows."""

from __future__ import annotations

import html
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from analysis.duck import QueryResult

__all__ = ["html_table", "json_summary", "text_table"]


def _cell(value: Any) -> str:
    if value is None:
        return '<td style="color:#999">NULL</td>'
    text = str(value)
    if len(text) > 200:
        text = text[:199] + "…"
    return f"<td>{html.escape(text)}</td>"


def _footer(result: QueryResult, shown: int) -> str:
    total, ncols = result.row_count, len(result.columns)
    text = f"{total:,} row{'s' if total != 1 else ''} × {ncols} column{'s' if ncols != 1 else ''}"
    if shown < total:
        text += f" (first {shown:,} shown; {total - shown:,} more)"
    return text


def html_table(result: QueryResult, max_rows: int | None = None) -> str:
    """The first ``max_rows`` rows (default ``QueryResult.display_rows``) as an HTML table."""
    limit = result.display_rows if max_rows is None else max_rows
    table = result.arrow()
    if not result.columns:  # an into= or DDL result: only a count
        return f"<p>{html.escape(_footer(result, 0).split(' ×')[0])}</p>"
    columns = [column.to_pylist() for column in table.slice(0, limit).columns]
    shown = len(columns[0])
    names = "".join(
        f"<th>{html.escape(f.name)}<br><small style='font-weight:normal;color:#777'>"
        f"{html.escape(str(f.type))}</small></th>"
        for f in table.schema
    )
    body = "".join("<tr>" + "".join(_cell(col[r]) for col in columns) + "</tr>" for r in range(shown))
    return (
        f"<table class='analysis-result'><thead><tr>{names}</tr></thead><tbody>{body}</tbody></table>"
        f"<p><small>{html.escape(_footer(result, shown))}</small></p>"
    )


def text_table(result: QueryResult, max_rows: int | None = None) -> str:
    """A plain-text rendering for terminals and front ends without HTML."""
    limit = result.display_rows if max_rows is None else max_rows
    table = result.arrow()
    if not result.columns:
        return _footer(result, 0).split(" ×")[0]
    cols = [[str(c)] for c in table.column_names]
    for i, column in enumerate(table.slice(0, limit).columns):
        cols[i].extend("NULL" if v is None else str(v)[:40] for v in column.to_pylist())
    widths = [max(map(len, c)) for c in cols]
    lines = [
        " | ".join(c[r].ljust(w) for c, w in zip(cols, widths, strict=True)) for r in range(len(cols[0]))
    ]
    lines.insert(1, "-+-".join("-" * w for w in widths))
    lines.append(_footer(result, min(limit, table.num_rows)))
    return "\n".join(lines)


def json_summary(result: QueryResult, max_rows: int | None = None) -> dict[str, Any]:
    """For front ends that take JSON: columns with types, the row count, the first rows."""
    import json

    from analysis.results import to_json_fragment

    limit = result.display_rows if max_rows is None else max_rows
    table = result.arrow()
    head = json.loads(to_json_fragment(table.slice(0, limit)))
    return {
        "columns": [{"name": f.name, "type": str(f.type)} for f in table.schema],
        "row_count": result.row_count,
        "rows": head,
        "truncated": result.row_count > len(head),
    }
