"""Charts: aggregated in DuckDB, Vega-Lite specs, and the SVG fallback."""

from __future__ import annotations

import re
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from analysis.charts import VEGA_LITE_MIME, ChartError
from analysis.duck import Duck, QueryResult
from analysis.extras import MissingExtraError


@pytest.fixture
def sales() -> Iterator[QueryResult]:
    duck = Duck()
    yield duck.query(
        """
        SELECT ['coffee', 'tea', 'gear'][range % 3 + 1] AS category,
               DATE '2024-01-01' + (range % 90)::INTEGER AS day,
               (range % 100) / 10.0 AS amount,
               CASE WHEN (range // 90) % 2 = 0 THEN 'web' ELSE 'shop' END AS channel
        FROM range(1000000)
        """
    )
    duck.close()


def test_bar_chart_aggregates_in_duckdb(sales: QueryResult) -> None:
    chart = sales.plot("bar", x="category", y="amount")
    values = chart.spec["data"]["values"]
    assert len(values) == 3  # a million rows become three bars
    totals = {v["category"]: v["__y"] for v in values}
    import polars as pl

    expected = sales.pl().group_by("category").agg(pl.col("amount").sum())
    assert totals == pytest.approx(dict(zip(expected["category"], expected["amount"], strict=True)))
    assert chart.spec["mark"]["type"] == "bar"
    assert chart.spec["encoding"]["y"]["title"] == "sum(amount)"


def test_line_chart_with_color_and_temporal_axis(sales: QueryResult) -> None:
    chart = sales.plot("line", x="day", y="amount", color="channel", agg="avg")
    assert len(chart.spec["data"]["values"]) == 90 * 2
    assert chart.spec["encoding"]["x"]["type"] == "temporal"
    assert chart.spec["encoding"]["color"]["field"] == "channel"
    assert chart.spec["data"]["values"][0]["day"] == "2024-01-01"


def test_scatter_is_sampled_and_histogram_is_binned(sales: QueryResult) -> None:
    scatter = sales.plot("scatter", x="day", y="amount", max_points=500)
    assert len(scatter.spec["data"]["values"]) == 500
    histogram = sales.plot("histogram", x="amount", bins=10)
    counts = [v["count"] for v in histogram.spec["data"]["values"]]
    assert sum(counts) == 1_000_000 and len(counts) == 10


def test_bundle_has_vega_lite_and_an_svg_fallback(sales: QueryResult, tmp_path: Path) -> None:
    bundle = sales.plot("bar", x="category", y="amount", title="Revenue")._repr_mimebundle_()
    assert bundle[VEGA_LITE_MIME]["title"] == "Revenue"
    assert bundle["image/svg+xml"].startswith("<svg") and "coffee" in bundle["image/svg+xml"]
    assert bundle["text/plain"].startswith("<Chart bar")
    sales.plot("histogram", x="amount").save(str(tmp_path / "h.png"))
    assert (tmp_path / "h.png").read_bytes()[:4] == b"\x89PNG"


@pytest.mark.parametrize(
    ("kind", "options", "message"),
    [
        ("pie", {"x": "category"}, "not one of bar"),
        ("bar", {"x": "nope"}, "x='nope' is not a column"),
        ("bar", {"x": "category", "agg": "stddev; DROP"}, "agg="),
        ("scatter", {"x": "day"}, "needs y="),
    ],
)
def test_bad_chart_requests(sales: QueryResult, kind: str, options: dict[str, str], message: str) -> None:
    with pytest.raises(ChartError, match=message):
        sales.plot(kind, **options)  # type: ignore[arg-type]


def test_few_category_labels_are_horizontal_many_long_ones_slanted(sales: QueryResult) -> None:
    chart = sales.plot("bar", x="category", y="amount")
    assert chart.spec["encoding"]["x"]["axis"]["labelAngle"] == 0
    duck = Duck()
    many = duck.query("SELECT 'a rather long product name ' || range AS product, range AS n FROM range(40)")
    duck.close()
    axis = many.plot("bar", x="product", y="n").spec["encoding"]["x"]["axis"]
    assert axis["labelAngle"] == -40 and axis["labelAlign"] == "right"


def test_legend_has_room_for_wider_browser_fonts(sales: QueryResult) -> None:
    # vl-convert measures text with its own fonts; a browser's sans-serif (DejaVu Sans here) is
    # some 15% wider, and the legend title used to be clipped at the SVG's right edge.
    svg = sales.plot("line", x="day", y="amount", color="channel").svg()
    width = float(re.search(r'<svg[^>]* width="([\d.]+)"', svg).group(1))  # type: ignore[union-attr]
    origin = float(re.search(r'stroke-miterlimit="10" transform="translate\(([\d.]+),', svg).group(1))  # type: ignore[union-attr]
    legend = re.search(  # where the legend starts and how wide vl-convert measured it
        r'role-legend"[^>]*><g transform="translate\(([\d.]+),[\d.]+\)"><path class="background" '
        r'aria-hidden="true" d="M0,0h([\d.]+)',
        svg,
    )
    assert legend is not None
    legend_x, legend_width = float(legend.group(1)), float(legend.group(2))
    slack = width - (origin + legend_x + legend_width)
    assert slack >= 0.25 * legend_width


def test_charts_have_alt_text_and_nbconvert_does_not_warn(
    sales: QueryResult, caplog: pytest.LogCaptureFixture
) -> None:
    import nbformat
    from nbconvert import HTMLExporter

    chart = sales.plot("bar", x="category", y="amount", title="Revenue")
    bundle = chart._repr_mimebundle_()
    assert chart.description == "Revenue: Bar chart of sum(amount) by category"
    assert bundle["text/markdown"].startswith(
        "![Revenue: Bar chart of sum(amount) by category](data:image/svg+xml;"
    )
    notebook = nbformat.v4.new_notebook()
    cell = nbformat.v4.new_code_cell("chart")
    cell.outputs = [nbformat.v4.new_output("display_data", data=bundle)]
    notebook.cells = [cell]
    with caplog.at_level("WARNING"):
        body, _ = HTMLExporter().from_notebook_node(notebook)
    assert "Alternative text is missing" not in caplog.text
    assert 'alt="Revenue: Bar chart of sum(amount) by category"' in body


def test_without_vl_convert_charts_still_show_and_save_names_the_extra(
    sales: QueryResult, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "vl_convert", None)
    chart = sales.plot("bar", x="category", y="amount")
    bundle = chart._repr_mimebundle_()
    assert set(bundle) == {VEGA_LITE_MIME, "text/plain"}
    with pytest.raises(MissingExtraError, match=r"pip install 'analysis-kernel\[charts\]'"):
        chart.save(str(tmp_path / "c.svg"))
