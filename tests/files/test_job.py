"""``ctx.files`` in a real job: a headless run in a fresh kernel against the reference server."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest


def test_unhandled_file_error_becomes_file_api_error_envelope(
    run_script: Callable[..., Any], server_url: str, token: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ANALYSIS_BACKEND_URL", server_url)
    monkeypatch.setenv("ANALYSIS_BACKEND_TOKEN", token)
    result = run_script(
        """
        def run(ctx, parameters):
            rows = ctx.files.load("sales.csv", "sales")
            ctx.log("loaded", rows, ctx.query("SELECT count(*) AS n FROM sales").rows[0]["n"])
            ctx.files.get_metadata("missing.csv")
        """
    )
    envelope = result.to_dict()
    assert envelope["success"] is False
    assert envelope["error_type"] == "file_api_error"
    assert "'missing.csv' was not found" in envelope["error"]
    logs = "\n".join(envelope["logs"])
    assert "[files] GET /api/files/sales.csv/content" in logs
    assert "[log] loaded 3 3" in logs
    assert "[files] GET /api/files/missing.csv" in logs
    assert token not in repr(envelope)
