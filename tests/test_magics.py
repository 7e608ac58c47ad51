"""``%load_ext analysis`` and ``%%analysis`` in an in-process IPython shell that re-raises."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from IPython.core.error import UsageError
from IPython.core.interactiveshell import InteractiveShell

from analysis.magics import AnalysisCellError, AnalysisMagics


class RaisingShell(InteractiveShell):  # type: ignore[misc]
    """An InteractiveShell whose run_cell raises the cell's exception."""

    def run_cell(self, raw_cell: str, *args: Any, **kwargs: Any) -> Any:
        result = super().run_cell(raw_cell, *args, **kwargs)
        result.raise_error()
        return result


@pytest.fixture
def shell(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[RaisingShell]:
    monkeypatch.setenv("ANALYSIS_ROOT", str(tmp_path / ".clients"))
    monkeypatch.setenv("ANALYSIS_PROJECT_ID", "acme")
    ip = RaisingShell()
    ip.history_manager.enabled = False
    ip.run_line_magic("load_ext", "analysis")
    yield ip
    ip.run_line_magic("unload_ext", "analysis")
    InteractiveShell.clear_instance()


CELL = "def run(ctx, parameters):\n    return {'double': parameters['x'] * 2, 'day': parameters['day']}\n"


def test_ctx_is_in_the_namespace_and_loading_twice_is_harmless(shell: RaisingShell) -> None:
    ctx = shell.user_ns["ctx"]
    shell.run_line_magic("load_ext", "analysis")
    shell.run_line_magic("reload_ext", "analysis")
    assert shell.user_ns["ctx"] is not None
    shell.run_cell("ctx.load_data('t', [{'a': 1}, {'a': 2}])")
    assert shell.run_cell("ctx.query('SELECT sum(a) AS s FROM t').rows").result == [{"s": 3}]
    assert ctx.project_id == "acme"


def test_unload_closes_and_removes_ctx(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    ip = RaisingShell()
    ip.run_line_magic("load_ext", "analysis")
    ctx = ip.user_ns["ctx"]
    ctx.query("SELECT 1")
    ip.run_line_magic("unload_ext", "analysis")
    assert "ctx" not in ip.user_ns
    assert not ctx._duck.is_open
    with pytest.raises(UsageError):
        ip.run_cell_magic("analysis", "", CELL)
    InteractiveShell.clear_instance()


def test_cell_runs_with_parameters_and_stores_json_result(shell: RaisingShell) -> None:
    shell.run_cell_magic("analysis", "-p x=21 -p day=2024-03-01 -o res", CELL)
    assert shell.user_ns["res"] == {"double": 42, "day": "2024-03-01"}


def test_cell_uses_the_same_encoding_as_headless(shell: RaisingShell) -> None:
    cell = "from decimal import Decimal\ndef run(ctx, p):\n    return [float('nan'), Decimal('1.50'), b'a']\n"
    shell.run_cell_magic("analysis", "-o res", cell)
    assert shell.user_ns["res"] == [None, 1.5, "YQ=="]


def test_failures_have_the_headless_error_types(shell: RaisingShell) -> None:
    with pytest.raises(AnalysisCellError) as info:
        shell.run_cell_magic("analysis", "--max-result-bytes 10", "def run(ctx, p):\n    return 'x' * 100\n")
    assert info.value.outcome["error_type"] == "result_too_large"
    with pytest.raises(AnalysisCellError) as info:
        shell.run_cell_magic("analysis", "", "def run(ctx, p):\n    return 1 / 0\n")
    assert info.value.outcome["error_type"] == "analysis_error"
    assert "ZeroDivisionError" in "\n".join(info.value._render_traceback_())
    with pytest.raises(AnalysisCellError) as info:
        shell.run_cell_magic("analysis", "", "def run(ctx):\n    return 1\n")
    assert info.value.outcome["error_type"] == "invalid_analysis"


def test_timeout_stops_a_runaway_cell_and_the_kernel_stays_usable(shell: RaisingShell) -> None:
    started = time.monotonic()
    with pytest.raises(AnalysisCellError) as info:
        shell.run_cell_magic("analysis", "--timeout 1", "def run(ctx, p):\n    while True:\n        pass\n")
    assert info.value.outcome["error_type"] == "timeout"
    with pytest.raises(AnalysisCellError) as info:
        shell.run_cell_magic(
            "analysis",
            "--timeout 1",
            "def run(ctx, p):\n    return ctx.query('SELECT count(*) FROM range(10000000000000)').rows\n",
        )
    assert info.value.outcome["error_type"] == "timeout"
    assert time.monotonic() - started < 60  # both cells run forever unstopped; load must not fail this
    assert shell.run_cell("40 + 2").result == 42


def test_config_traitlets(shell: RaisingShell) -> None:
    shell.run_line_magic("config", "AnalysisMagics.timeout_s = 1.0")
    magics = shell.magics_manager.registry["AnalysisMagics"]
    assert isinstance(magics, AnalysisMagics) and magics.timeout_s == 1.0
    with pytest.raises(AnalysisCellError):
        shell.run_cell_magic("analysis", "", "def run(ctx, p):\n    while True:\n        pass\n")
    shell.run_line_magic("config", "AnalysisMagics.display_rows = 2")
    html = shell.user_ns["ctx"].query("SELECT * FROM range(5)")._repr_html_()
    assert "first 2 shown; 3 more" in html


def test_save_stores_the_cell_as_a_saved_analysis(shell: RaisingShell, tmp_path: Path) -> None:
    shell.run_cell_magic("analysis", "--save revenue -p x=1 -p day=d", CELL)
    saved = tmp_path / ".clients" / "acme" / "analysis" / "scripts" / "revenue.py"
    assert saved.read_text() == CELL
    from analysis.runner import AnalysisService

    result = AnalysisService(root=tmp_path / ".clients").submit_analysis_job(
        "revenue", {"x": 2, "day": "d"}, project_id="acme"
    )
    assert result.result == {"double": 4, "day": "d"}


@pytest.mark.parametrize(
    ("line", "cell", "message"),
    [
        ("-p novalue", CELL, "no variable .novalue."),
        ("-p 1x", CELL, "KEY=VALUE"),
        ("--save ../evil", CELL, "invalid"),
        ("--save ok", "def run(ctx, p)\n", "syntax error"),
        ("--timeout 0", CELL, "positive"),
        ("--bogus", CELL, "unrecognized"),
    ],
)
def test_user_mistakes_are_usage_errors(shell: RaisingShell, line: str, cell: str, message: str) -> None:
    with pytest.raises(UsageError, match=message):
        shell.run_cell_magic("analysis", line, cell)


def test_sql_cells_bind_parameters_and_store_frames(shell: RaisingShell) -> None:
    shell.run_cell(
        "ctx.load_data('orders', [{'sku': 'a', 'qty': 2}, {'sku': 'b', 'qty': 5}, {'sku': 'a', 'qty': 1}])"
    )
    result = shell.run_cell_magic(
        "analysis",
        "--sql -p min=2 -o df",
        "SELECT sku, sum(qty) AS units FROM orders WHERE qty >= $min GROUP BY sku ORDER BY sku",
    )
    assert result.rows == [{"sku": "a", "units": 2}, {"sku": "b", "units": 5}]
    frame = shell.user_ns["df"]
    assert type(frame).__name__ == "DataFrame" and sorted(frame["units"].tolist()) == [2, 5]
    evil = "x'; DROP TABLE orders; --"
    shell.run_cell_magic("analysis", f'--sql -p "s={evil}" -o r --as result', "SELECT $s AS s")
    assert shell.user_ns["r"].rows == [{"s": evil}]
    assert shell.run_cell("ctx.query('SELECT count(*) AS n FROM orders').rows").result == [{"n": 3}]
    shell.run_cell_magic("analysis", "--sql --into big -o n --as result", "SELECT * FROM range(10)")
    assert shell.user_ns["n"].row_count == 10
    assert shell.run_cell("ctx.query('SELECT count(*) AS n FROM big').rows").result == [{"n": 10}]


def test_sql_cells_on_a_datasource(
    shell: RaisingShell, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import sqlite3

    sqlite3.connect(tmp_path / "shop.db").executescript(
        "CREATE TABLE t (a INTEGER); INSERT INTO t VALUES (1), (2);"
    )
    config = tmp_path / "ds.toml"
    config.write_text('[shop]\nkind = "sqlite"\npath = "shop.db"\n')
    ctx = shell.user_ns["ctx"]
    from analysis.sources import Datasources

    ctx._sources = Datasources(config)
    shell.run_cell_magic(
        "analysis", "--sql --datasource shop -p lo=1 -o rows --as result", "SELECT a FROM t WHERE a > :lo"
    )
    assert shell.user_ns["rows"].rows == [{"a": 2}]
    shell.run_cell_magic("analysis", "--sql --datasource shop --into t_copy", "SELECT * FROM t")
    assert shell.run_cell("ctx.query('SELECT sum(a) AS s FROM t_copy').rows").result == [{"s": 3}]
    with pytest.raises(AnalysisCellError) as info:
        shell.run_cell_magic("analysis", "--sql --datasource nope", "SELECT 1")
    assert info.value.outcome["error_type"] == "datasource_not_found"


def test_sql_errors_are_short_and_timeouts_stop_the_query(shell: RaisingShell) -> None:
    with pytest.raises(AnalysisCellError) as info:
        shell.run_cell_magic("analysis", "--sql", "SELEC 1")
    assert "syntax error" in info.value.outcome["error"].lower()
    assert info.value._render_traceback_()[0].startswith("\x1b[31manalysis_error")
    started = time.monotonic()
    with pytest.raises(AnalysisCellError) as info:
        shell.run_cell_magic("analysis", "--sql --timeout 1", "SELECT count(*) FROM range(10000000000000)")
    assert info.value.outcome["error_type"] == "timeout"
    assert time.monotonic() - started < 60  # the query runs for hours unstopped
    with pytest.raises(UsageError, match="add --sql"):
        shell.run_cell_magic("analysis", "--into t", CELL)


def test_saved_analyses_from_the_notebook(shell: RaisingShell, tmp_path: Path) -> None:
    shell.run_cell_magic("analysis", "--save doubler -p x=1 -p day=d", CELL)
    shell.run_line_magic("analysis", "validate doubler")
    shell.run_line_magic("analysis", "run doubler -p x=4 -p day=mon")
    shell.run_line_magic("analysis", "run doubler -p x=4")
    magics = shell.magics_manager.registry["AnalysisMagics"]
    (_, first), (_, second) = magics.jobs
    assert first.success and first.result == {"double": 8, "day": "mon"} and first.trigger == "notebook"
    assert second.error_type == "analysis_error" and "KeyError" in second.error
    scripts = tmp_path / ".clients" / "acme" / "analysis" / "scripts"
    (scripts / "broken.py").write_text("def run(ctx):\n    pass\n")
    with pytest.raises(UsageError, match="two positional arguments"):
        shell.run_line_magic("analysis", "validate broken")
    with pytest.raises(UsageError, match="no saved analysis 'ghost'"):
        shell.run_line_magic("analysis", "validate ghost")
    with pytest.raises(UsageError):
        shell.run_line_magic("analysis", "frobnicate")


def test_query_results_have_a_json_representation(shell: RaisingShell) -> None:
    summary = shell.user_ns["ctx"].query("SELECT range AS i, 'x' AS s FROM range(30)")._repr_json_()
    assert summary["row_count"] == 30 and summary["truncated"] is True
    assert summary["columns"] == [{"name": "i", "type": "int64"}, {"name": "s", "type": "string"}]
    assert summary["rows"][:2] == [{"i": 0, "s": "x"}, {"i": 1, "s": "x"}]
