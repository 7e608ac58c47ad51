"""The example notebooks also run headless through ``analysis run``, with parameters."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"


def analysis_run(*args: str, env: dict[str, str] | None = None, cwd: Path = NOTEBOOKS) -> dict[str, Any]:
    done = subprocess.run(
        [sys.executable, "-m", "analysis.runner.cli", "run", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
        env={**os.environ, **(env or {})},
    )
    envelope: dict[str, Any] = json.loads(done.stdout)
    assert done.returncode == 0, envelope
    return envelope


@pytest.fixture
def file_backend() -> Iterator[str]:
    """The reference file server over notebooks/sample_files on a free loopback port."""
    import uvicorn

    from analysis.runner.fileserver import create_app

    # Port 0: the server binds a free port itself (one picked here and bound later could be
    # taken meanwhile, and the wait below would then never end).
    config = uvicorn.Config(
        create_app(NOTEBOOKS / "sample_files"),
        host="127.0.0.1",
        port=0,
        log_level="warning",
        lifespan="off",
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        assert thread.is_alive(), "the file server did not start"
        time.sleep(0.02)
    port = server.servers[0].sockets[0].getsockname()[1]
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(10)


def test_quickstart_finds_its_datasources_as_in_jupyter(tmp_path: Path) -> None:
    # No --datasources, and run from another folder: the notebook's own `%env` line names them.
    envelope = analysis_run(
        str(NOTEBOOKS / "quickstart.ipynb"),
        "--root",
        str(tmp_path),
        "--output-notebook",
        str(tmp_path / "out.ipynb"),
        cwd=tmp_path,
    )
    assert envelope["result"] is None  # it never calls ctx.set_result
    assert any("Loaded 229 rows into paid" in line for line in envelope["logs"])


def test_datasources_with_another_month(tmp_path: Path) -> None:
    envelope = analysis_run(
        "datasources.ipynb",
        "--datasources",
        "../examples/datasources.toml",
        "-p",
        "month=2024-04",
        "--root",
        str(tmp_path),
    )
    result = envelope["result"]
    assert result["month"] == "2024-04"
    assert len(result["top_customers"]) == 5
    spent = [c["spent"] for c in result["top_customers"]]
    assert spent == sorted(spent, reverse=True)


def test_files_against_a_backend(tmp_path: Path, file_backend: str) -> None:
    envelope = analysis_run(
        "files.ipynb",
        "-p",
        "region=north",
        "--root",
        str(tmp_path),
        # the notebook reads sample_files/ beside it, which a sandboxed job does not see (README,
        # "Security model": a sandboxed notebook has only its own copy)
        "--sandbox",
        "off",
        env={"ANALYSIS_BACKEND_URL": file_backend},
    )
    result = envelope["result"]
    assert result["region"] == "north"
    assert [row["manager"] for row in result["first_days"]] == ["Ada"] * len(result["first_days"])
    assert "[files] GET /api/files/orders.csv/content" in envelope["logs"]


def test_charts_with_fewer_rows_and_svg_in_the_output_notebook(tmp_path: Path) -> None:
    out = tmp_path / "charts-out.ipynb"
    envelope = analysis_run(
        "charts.ipynb", "-p", "rows=30000", "--root", str(tmp_path), "--output-notebook", str(out)
    )
    assert sum(row["orders"] for row in envelope["result"]) == 30000
    outputs = [o for cell in json.loads(out.read_text())["cells"] for o in cell.get("outputs", [])]
    charts = [o for o in outputs if "application/vnd.vegalite.v5+json" in o.get("data", {})]
    assert len(charts) == 4
    assert all(o["data"]["image/svg+xml"].startswith("<svg") for o in charts)
