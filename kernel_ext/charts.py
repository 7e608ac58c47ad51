"""Charts of query results: aggregated in DuckDB, drawn by Vega-Lite, with an SVG fallback.

``result.plot("bar", x="category", y="revenue")`` groups and aggregates in DuckDB (so a chart of
10M rows sends a few hundred points), and shows as a Vega-Lite spec that JupyterLab renders
natively, plus an SVG rendering of the same spec (vl-convert) for places without JavaScript:
the output notebook of a headless run, a PDF export, nbviewer.
"""

from __future__ import annotations

import base64
import json
from typing import TYPE_CHECKING, Any

from analysis.duck import LoadDataError, quote_identifier
from analysis.errors import AnalysisError
from analysis.extras import MissingExtraError, require
from analysis.results import to_json_fragment

if TYPE_CHECKING:
    import pyarrow as pa

__all__ = ["KINDS", "Chart", "ChartError", "plot"]

VEGA_LITE_MIME = "application/vnd.vegalite.v5+json"
KINDS = ("bar", "line", "scatter", "histogram")
_AGGREGATES = ("sum", "avg", "mean", "count", "min", "max", "median")
_MARKS = {"bar": "bar", "line": "line", "scatter": "point", "histogram": "bar"}


class ChartError(AnalysisError, ValueError):
    """A chart was asked for with a kind, column or option that does not fit the data."""


class Chart:
    """A Vega-Lite chart; shows itself in notebooks (Vega-Lite, SVG fallback, text).

    Parameters
    ----------
    spec
        The Vega-Lite v5 specification, data inline.
    """

    def __init__(self, spec: dict[str, Any]) -> None:
        self.spec = spec

    def __repr__(self) -> str:
        enc = self.spec.get("encoding", {})
        fields = ", ".join(
            f"{k}={v.get('title', v['field'])}" for k, v in enc.items() if "field" in v and k != "x2"
        )
        points = len(self.spec["data"]["values"])
        return f"<Chart {self.spec.get('mark', {}).get('type')} {fields} ({points} points)>"

    @property
    def description(self) -> str:
        """The chart in words (its alternative text): kind, axes and title."""
        return str(self.spec.get("description", ""))

    def svg(self) -> str:
        """The chart drawn as SVG (no JavaScript needed; needs the ``charts`` extra)."""
        vl_convert = require("vl_convert", "Drawing a chart as SVG or PNG")
        svg: str = vl_convert.vegalite_to_svg(self.spec)
        return svg

    def _repr_mimebundle_(self, include: Any = None, exclude: Any = None) -> dict[str, Any]:
        """Vega-Lite (JupyterLab, Notebook, VS Code draw it), an SVG copy, and text.

        The SVG goes twice: as ``image/svg+xml`` (PDF export, viewers) and inside a Markdown
        image with the chart's description as alternative text, which nbconvert's HTML prefers
        to a bare image (which has no alt text). JupyterLab ranks Vega-Lite above both.
        """
        bundle: dict[str, Any] = {VEGA_LITE_MIME: self.spec, "text/plain": repr(self)}
        try:
            svg = self.svg()
        except MissingExtraError:  # Vega-Lite front ends still draw it; no static copy
            return bundle
        encoded = base64.b64encode(svg.encode()).decode()
        alt = self.description.replace("[", "(").replace("]", ")")
        bundle["image/svg+xml"] = svg
        bundle["text/markdown"] = f"![{alt}](data:image/svg+xml;base64,{encoded})"
        return bundle

    def save(self, path: str) -> None:
        """Write the chart as ``.svg``, ``.png`` or ``.json`` (the Vega-Lite spec), by extension."""
        vl_convert = require("vl_convert", "Chart.save")
        if path.endswith(".svg"):
            data: bytes = self.svg().encode()
        elif path.endswith(".png"):
            data = vl_convert.vegalite_to_png(self.spec)
        elif path.endswith(".json"):
            data = json.dumps(self.spec, indent=1).encode()
        else:
            raise ChartError(f"Chart.save writes .svg, .png or .json files, not {path!r}.")
        with open(path, "wb") as fh:
            fh.write(data)


def _vega_type(arrow_type: pa.DataType) -> str:
    import pyarrow.types as t

    if t.is_integer(arrow_type) or t.is_floating(arrow_type) or t.is_decimal(arrow_type):
        return "quantitative"
    if t.is_timestamp(arrow_type) or t.is_date(arrow_type):
        return "temporal"
    return "nominal"


def _column(table: pa.Table, name: str | None, role: str) -> str | None:
    if name is None:
        return None
    if name not in table.column_names:
        raise ChartError(f"Chart {role}={name!r} is not a column (columns: {', '.join(table.column_names)}).")
    try:
        return quote_identifier(name)
    except LoadDataError as exc:
        raise ChartError(f"Chart {role}={name!r}: {exc}") from None


def _aggregate_sql(
    kind: str, x: str, y: str | None, color: str | None, *, agg: str, bins: int, max_points: int
) -> tuple[str, str]:
    """The DuckDB query that makes the chart's points, and the name of the y field."""
    group = f"{x}, {color}" if color else x
    if kind == "histogram":
        return (
            f"""
            WITH bounds AS (SELECT min({x}) AS lo, max({x}) AS hi FROM data WHERE {x} IS NOT NULL),
                 binned AS (
                    SELECT least(floor(({x} - lo) / nullif((hi - lo) / {bins}, 0)), {bins} - 1)::INTEGER AS b
                    FROM data, bounds WHERE {x} IS NOT NULL)
            SELECT lo + (hi - lo) / {bins} * coalesce(b, 0) AS bin_start,
                   lo + (hi - lo) / {bins} * (coalesce(b, 0) + 1) AS bin_end, count(*) AS count
            FROM binned, bounds GROUP BY ALL ORDER BY bin_start
            """,
            "count",
        )
    if kind == "scatter":
        cols = ", ".join(c for c in (x, y, color) if c)
        return f"SELECT {cols} FROM data USING SAMPLE {max_points} ROWS (reservoir, 42)", "y"
    value = "count(*)" if y is None or agg == "count" else f"{'avg' if agg == 'mean' else agg}({y})"
    return f"SELECT {group}, {value} AS __y FROM data GROUP BY ALL ORDER BY {group} LIMIT {max_points}", "__y"


def plot(
    table: pa.Table,
    kind: str,
    *,
    x: str,
    y: str | None = None,
    color: str | None = None,
    agg: str = "sum",
    bins: int = 30,
    title: str | None = None,
    max_points: int = 2000,
) -> Chart:
    """A chart of ``table``; see ``QueryResult.plot``."""
    import duckdb

    if kind not in KINDS:
        raise ChartError(f"Chart kind {kind!r} is not one of {', '.join(KINDS)}.")
    if agg not in _AGGREGATES:
        raise ChartError(f"Chart agg={agg!r} is not one of {', '.join(_AGGREGATES)}.")
    if kind == "scatter" and y is None:
        raise ChartError("A scatter chart needs y=.")
    qx, qy, qc = _column(table, x, "x"), _column(table, y, "y"), _column(table, color, "color")
    assert qx is not None
    sql, y_field = _aggregate_sql(
        kind, qx, qy, qc, agg=agg, bins=max(1, int(bins)), max_points=max(1, int(max_points))
    )
    con = duckdb.connect(":memory:")
    try:
        con.register("data", table)
        points = con.sql(sql).to_arrow_table()
    finally:
        con.close()
    values = json.loads(to_json_fragment(points))
    encoding: dict[str, Any]
    if kind == "histogram":
        encoding = {
            "x": {"field": "bin_start", "type": "quantitative", "bin": {"binned": True}, "title": x},
            "x2": {"field": "bin_end"},
            "y": {"field": "count", "type": "quantitative", "title": "count"},
        }
    else:
        y_name = y if kind == "scatter" else (f"{agg}({y})" if y is not None and agg != "count" else "count")
        encoding = {
            "x": {"field": x, "type": _vega_type(points.schema.field(x).type)},
            "y": {"field": y if kind == "scatter" else y_field, "type": "quantitative", "title": y_name},
        }
        if encoding["x"]["type"] == "nominal":
            if kind == "bar":
                encoding["x"]["sort"] = None
            encoding["x"]["axis"] = _category_axis([v.get(x) for v in values])
    if color is not None:
        encoding["color"] = {"field": color, "type": _vega_type(points.schema.field(color).type)}
    spec: dict[str, Any] = {
        "$schema": "https://vega.github.io/schema/vega-lite/v5.json",
        "description": _describe(kind, encoding, title),
        "data": {"values": values},
        "mark": {"type": _MARKS[kind], "tooltip": True},
        "encoding": encoding,
        "width": _WIDTH,
        "height": 280,
        # Room between the y labels and the y title for fonts wider than the renderer's.
        "config": {"axisY": {"titlePadding": 10}},
    }
    if color is not None:
        # Text is measured with the renderer's fonts; a browser's sans-serif is often wider, and
        # the legend, drawn last on the right, would be clipped at the SVG's edge.
        spec["padding"] = {"left": 5, "top": 5, "bottom": 5, "right": _LEGEND_SLACK_PX}
    if title:
        spec["title"] = title
    return Chart(spec)


_WIDTH = 480
_LEGEND_SLACK_PX = 40
_CHAR_PX = 7  # an 11px label's average character width, generously


def _category_axis(categories: list[Any]) -> dict[str, Any]:
    """Horizontal labels when they fit their band; slanted (not vertical) when they do not."""
    distinct = list(dict.fromkeys("" if c is None else str(c) for c in categories))
    band = _WIDTH / max(1, len(distinct))
    widest = max((len(c) for c in distinct), default=0) * _CHAR_PX
    if widest <= band - 6:
        return {"labelAngle": 0}
    return {"labelAngle": -40, "labelAlign": "right", "labelLimit": 120}


def _describe(kind: str, encoding: dict[str, Any], title: str | None) -> str:
    """The chart in words, for alternative text: ``Bar chart of sum(amount) by category``."""
    x = encoding["x"].get("title", encoding["x"]["field"])
    y = encoding["y"].get("title", encoding["y"]["field"])
    text = f"Histogram of {x}" if kind == "histogram" else f"{kind.capitalize()} chart of {y} by {x}"
    if "color" in encoding:
        text += f" and {encoding['color']['field']}"
    return f"{title}: {text}" if title else text
