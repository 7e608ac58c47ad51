"""``%load_ext analysis`` and ``%%analysis`` in an in-process IPython shell that re-raises."""

from __future__ import annotations

import _thread
import logging
import re
import signal
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from IPython.core.error import UsageError
from IPython.core.interactiveshell import InteractiveShell
from IPython.utils.capture import capture_output

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
    ip = RaisingShell.instance()  # the shell IPython.display and capture_output find
    ip.history_manager.enabled = False
    ip.run_line_magic("load_ext", "analysis")
    yield ip
    ip.run_line_magic("unload_ext", "analysis")
    RaisingShell.clear_instance()


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

    ctx._access.sources = Datasources(config)
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
    # The database's message with its caret, and nothing of our frames.
    assert info.value._render_traceback_() == [
        'ParserException: Parser Error: syntax error at or near "SELEC"',
        "",
        "LINE 1: SELEC 1",
        "        ^^^^^",
    ]
    started = time.monotonic()
    with pytest.raises(AnalysisCellError) as info:
        shell.run_cell_magic("analysis", "--sql --timeout 1", "SELECT count(*) FROM range(10000000000000)")
    assert info.value.outcome["error_type"] == "timeout"
    assert info.value.outcome["error"] == "The SQL cell ran past the 1 s deadline and was stopped."
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


def _displayed(shell: RaisingShell, line: str, cell: str | None = None) -> list[dict[str, Any]]:
    """The bundles a magic displayed (and its return value's, as the notebook would show it)."""
    with capture_output() as captured:
        value = (
            shell.run_line_magic("analysis", line)
            if cell is None
            else shell.run_cell_magic("analysis", line, cell)
        )
    bundles = [dict(output.data) for output in captured.outputs]
    if value is not None:
        bundles.append(shell.display_formatter.format(value)[0])
    return bundles


def test_no_display_of_ours_carries_application_json(shell: RaisingShell, tmp_path: Path) -> None:
    # JupyterLab and VS Code rank application/json first: a bundle with it shows as a JSON tree.
    ctx = shell.user_ns["ctx"]
    ctx.load_data("orders", [{"sku": "a", "qty": 2}, {"sku": "b", "qty": 5}])
    shell.run_cell_magic("analysis", "--save doubler -p x=1 -p day=d", CELL)
    bundles = [
        shell.display_formatter.format(ctx.query("SELECT * FROM orders"))[0],
        *_displayed(shell, "--sql", "SELECT sku, qty FROM orders"),
        *_displayed(
            shell, "", "def run(ctx, p):\n    return ctx.query(\"SELECT 'a' AS sku, 2 AS qty\").rows * 2\n"
        ),
        *_displayed(shell, "", "def run(ctx, p):\n    return {'nested': [1, 2]}\n"),
        *_displayed(shell, "run doubler -p x=4 -p day=mon"),
        *_displayed(shell, "jobs"),
    ]
    assert len(bundles) == 6
    for bundle in bundles:
        assert "application/json" not in bundle, bundle.keys()
        assert "text/plain" in bundle
    tables = [b["text/html"] for b in bundles if "text/html" in b]
    assert len(tables) == 5  # query, SQL cell, rows result, envelope, job list
    assert all("<table" in tables[i] for i in (0, 1, 2, 4))
    assert "<td>a</td>" in tables[2] and "2 rows × 2 columns" in tables[2]  # the rows, not a JSON tree
    assert "doubler: succeeded" in tables[3] and "&#x27;double&#x27;: 8" in tables[3]


def test_query_result_summary_is_under_a_vendor_type_with_sql_types(shell: RaisingShell) -> None:
    result = shell.user_ns["ctx"].query(
        "SELECT range AS i, 'x' AS s, 1.25::DECIMAL(10, 2) AS amount, DATE '2024-03-01' AS day, "
        "[1, 2] AS xs, {'a': 1} AS st, TIMESTAMPTZ '2024-03-01 10:00:00+00' AS at FROM range(30)"
    )
    bundle = shell.display_formatter.format(result)[0]
    summary = bundle["application/vnd.analysis.query-result+json"]
    assert summary["row_count"] == 30 and summary["truncated"] is True
    types = ["BIGINT", "VARCHAR", "DECIMAL(10,2)", "DATE", "INTEGER[]", "STRUCT(a INTEGER)"]
    assert [c["type"] for c in summary["columns"]] == [*types, "TIMESTAMP WITH TIME ZONE"]
    assert summary["rows"][:1] == [
        {
            "i": 0,
            "s": "x",
            "amount": 1.25,
            "day": "2024-03-01",
            "xs": [1, 2],
            "st": {"a": 1},
            "at": "2024-03-01T10:00:00+00:00",
        }
    ]
    html = bundle["text/html"]
    assert "DECIMAL(10,2)" in html and ">DATE<" in html
    assert "decimal128" not in html and "date32" not in html
    # Arrow-backed results from elsewhere (a datasource) get SQL names from their Arrow types.
    from analysis.duck import QueryResult

    assert QueryResult(result.arrow()).sql_types == [*types, "TIMESTAMP WITH TIME ZONE"]


def test_sql_into_shows_the_rows_loaded_not_empty_rows(shell: RaisingShell) -> None:
    (bundle,) = _displayed(shell, "--sql --into big", "SELECT * FROM range(10)")
    assert bundle["text/plain"] == "10 rows loaded into table big"
    assert bundle["text/html"] == "<p>10 rows loaded into table big</p>"
    assert bundle["application/vnd.analysis.query-result+json"]["rows"] == []


def test_query_lines_are_logged_not_echoed_in_a_notebook(
    shell: RaisingShell, capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="analysis")
    shell.run_cell("ctx.load_data('t', [{'a': 1}]); ctx.query('SELECT a FROM t'); ctx.log('hello')")
    err = capsys.readouterr().err
    assert "[query:duckdb]" not in err and "[load_data]" not in err
    assert "[log] hello" in err  # what the user logs always shows
    assert ("analysis.query.duckdb", "SELECT a FROM t") in [(r.name, r.getMessage()) for r in caplog.records]
    shell.run_line_magic("config", "AnalysisMagics.log_queries = True")
    shell.run_cell("ctx.query('SELECT 2 AS b')")
    assert "[query:duckdb] SELECT 2 AS b\n" in capsys.readouterr().err


def test_query_lines_are_in_the_envelope_of_a_headless_notebook(tmp_path: Path) -> None:
    import nbformat

    from analysis.runner import JobSpec, run_job

    notebook = nbformat.v4.new_notebook()
    notebook.cells = [
        nbformat.v4.new_code_cell("%load_ext analysis"),
        nbformat.v4.new_code_cell("ctx.set_result(ctx.query('SELECT 42 AS answer').rows)"),
    ]
    path = tmp_path / "headless.ipynb"
    nbformat.write(notebook, path)
    result = run_job(JobSpec(source_path=path, parameters={}, root=tmp_path / ".clients"))
    assert result.success, result.to_dict()
    assert result.result == [{"answer": 42}]
    assert "[query:duckdb] SELECT 42 AS answer" in result.logs


def _shown(shell: RaisingShell, capsys: pytest.CaptureFixture[str], code: str) -> str:
    """What a failing cell shows (ANSI colours removed)."""
    capsys.readouterr()
    with pytest.raises(BaseException):  # noqa: B017 - any failure; its display is the point
        shell.run_cell(code)
    return re.sub(r"\x1b\[[0-9;]*m", "", capsys.readouterr().out)


def test_sql_errors_show_the_users_line_and_the_caret_the_rest_on_tb(
    shell: RaisingShell, capsys: pytest.CaptureFixture[str]
) -> None:
    shown = _shown(shell, capsys, "x = 1\nctx.query('SELEC 1')")
    assert "----> 2 ctx.query('SELEC 1')" in shown
    assert 'ParserException: Parser Error: syntax error at or near "SELEC"' in shown
    assert "LINE 1: SELEC 1\n        ^^^^^" in shown
    assert "duck.py" not in shown and "context.py" not in shown and "duckdb/" not in shown
    assert len(shown.splitlines()) <= 14
    shell.run_line_magic("tb", "")
    full = re.sub(r"\x1b\[[0-9;]*m", "", capsys.readouterr().out)
    assert "duck.py" in full and "LINE 1: SELEC 1" in full


def test_failing_analysis_cells_show_the_users_frames_only(
    shell: RaisingShell, capsys: pytest.CaptureFixture[str]
) -> None:
    shown = _shown(
        shell, capsys, "%%analysis --timeout 1\ndef run(ctx, p):\n    return ctx.query('SELECT nope').rows\n"
    )
    assert 'File "<%%analysis cell>", line 2, in run' in shown
    assert "BinderException: Binder Error" in shown and "analysis_error: The analysis raised" in shown
    assert "context.py" not in shown and "duckdb/" not in shown
    shown = _shown(
        shell,
        capsys,
        "%%analysis --timeout 1\ndef run(ctx, p):\n"
        "    return ctx.query('SELECT count(*) FROM range(10000000000000)').rows\n",
    )
    assert 'File "<%%analysis cell>", line 2, in run' in shown
    assert "timeout: The analysis ran past the 1 s deadline" in shown
    assert "KeyboardInterrupt" not in shown and "InterruptException" not in shown


@pytest.fixture
def without_pandas(monkeypatch: pytest.MonkeyPatch) -> None:
    """pandas hidden, as on a core install (``import pandas`` raises ModuleNotFoundError)."""
    for name in [m for m in sys.modules if m == "pandas" or m.startswith("pandas.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "pandas", None)


@pytest.mark.usefixtures("without_pandas")
def test_a_missing_pandas_is_one_sentence_naming_the_extra(
    shell: RaisingShell, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(UsageError) as usage:
        shell.run_cell_magic("analysis", "--sql -o x", "SELECT 1 AS a")
    assert str(usage.value) == (
        "-o with --as df (the default) needs pandas, which is not installed: "
        "pip install 'analysis-kernel[pandas]' (or store Arrow or the result: --as arrow, --as result)"
    )
    shell.run_cell_magic("analysis", "--sql -o x --as arrow", "SELECT 1 AS a")
    assert shell.user_ns["x"].num_rows == 1
    shown = _shown(shell, capsys, "ctx.query('SELECT 1 AS a').df()")
    assert (
        "MissingExtraError: QueryResult.df() needs pandas, which is not installed: "
        "pip install 'analysis-kernel[pandas]'" in shown
    )
    assert "ModuleNotFoundError" not in shown and len(shown.splitlines()) <= 10


def test_interrupting_analysis_run_cancels_the_job(
    shell: RaisingShell, tmp_path: Path, no_leftovers: None
) -> None:
    scripts = tmp_path / ".clients" / "acme" / "analysis" / "scripts"
    scripts.mkdir(parents=True)
    (scripts / "slow.py").write_text("import time\ndef run(ctx, p):\n    time.sleep(60)\n")
    pressed: list[float] = []

    def stop_button() -> None:  # the notebook's stop button, mid-job
        pressed.append(time.monotonic())
        _thread.interrupt_main()

    timer = threading.Timer(3, stop_button)
    # A kernel handles SIGINT; a test process may have inherited it ignored (started in the
    # background by a shell), and then interrupt_main() does nothing.
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    timer.start()
    started = time.monotonic()
    try:
        (bundle,) = _displayed(shell, "run slow")
    finally:
        timer.cancel()
        signal.signal(signal.SIGINT, previous)
    took = time.monotonic() - started
    magics = shell.magics_manager.registry["AnalysisMagics"]
    ((_, result),) = magics.jobs
    at = [round(p - started, 2) for p in pressed]
    seen = f"{bundle['text/plain'][:200]!r} after {took:.1f} s, stop pressed at {at}"
    assert result.error_type == "cancelled" and result.trigger == "notebook", seen
    assert bundle["text/plain"].startswith("slow: cancelled after"), seen
    assert took < 30, seen
