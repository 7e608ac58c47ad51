"""``analysis cache list|clear`` over real cached results in two projects."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from analysis.config import Settings
from analysis.context import Context
from analysis.runner.cli import main

from .conftest import CountingPostgres


def _fill(root: Path, sources: Path, project: str, name: str, tag: str, *, rows: int = 7) -> None:
    settings = Settings(root=root, datasources_file=sources, secret_key=os.environ["ANALYSIS_SECRET_KEY"])
    ctx = Context(project_id=project, settings=settings)
    try:
        ctx.query_datasource(
            name, f"SELECT n, (SELECT counted(?)) AS c FROM generate_series(1, {rows}) n", [tag], cache="1h"
        )
    finally:
        ctx.close()


def _cli(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, list[str]]:
    code = main(["cache", *args])
    return code, capsys.readouterr().out.splitlines()


def test_list_and_clear_by_project_and_datasource(
    tmp_path: Path,
    sources_file: Path,
    counting_pg: CountingPostgres,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    tag = counting_pg.tag()
    root = tmp_path / "root"
    monkeypatch.setenv("ANALYSIS_ROOT", str(root))
    _fill(root, sources_file, "p1", "pg", tag)
    _fill(root, sources_file, "p1", "pg_default", tag, rows=7)  # the same server and query: a hit
    _fill(root, sources_file, "p1", "pg_default", tag, rows=8)
    _fill(root, sources_file, "p2", "pg", tag)

    code, lines = _cli(["list"], capsys)
    assert code == 0 and lines[-1].startswith("listed 3 cached results")
    assert sorted(line.split("\t")[:2] for line in lines[:-1]) == [
        ["p1", "pg"],
        ["p1", "pg_default"],
        ["p2", "pg"],
    ]
    assert all(" rows\t" in line and "SELECT n, (SELECT counted(?))" in line for line in lines[:-1])
    assert not any(tag in line for line in lines)

    code, lines = _cli(["clear", "--project", "p1", "--datasource", "pg"], capsys)
    assert code == 0 and lines[-1].startswith("removed 1 cached result ")
    code, lines = _cli(["list", "--project", "p1"], capsys)
    assert [line.split("\t")[1] for line in lines[:-1]] == ["pg_default"]

    code, lines = _cli(["clear"], capsys)
    assert code == 0 and lines[-1].startswith("removed 2 cached results")
    assert [p for p in root.glob("*/analysis/cache/*")] == []
    _fill(root, sources_file, "p1", "pg", tag)  # a cleared entry is fetched again
    assert counting_pg.calls(tag) == 4  # p1 7 rows, p1 8 rows, p2 7 rows, p1 again


def test_a_bad_project_id_is_refused(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["cache", "list", "--project", "../etc"]) == 2
    assert "project id '../etc' is invalid" in capsys.readouterr().err
