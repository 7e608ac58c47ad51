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


def test_token_with_a_trailing_newline_works_and_never_shows(
    run_script: Callable[..., Any], server_url: str, token: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A token read from a file keeps its newline; it used to fail with the token quoted in the
    error and the stack (the HTTP library quotes the bad header value)."""
    monkeypatch.setenv("ANALYSIS_BACKEND_URL", server_url)
    monkeypatch.setenv("ANALYSIS_BACKEND_TOKEN", token + "\n")
    result = run_script(
        """
        def run(ctx, parameters):
            return [f["id"] for f in ctx.files.list(conversation_id="conv-1")]
        """
    )
    assert result.to_dict().get("error") is None
    assert result.result == ["conv-1--budget.csv"]
    assert token not in result.to_json()


def test_token_that_cannot_be_a_header_is_named_not_shown(
    run_script: Callable[..., Any], server_url: str, token: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ANALYSIS_BACKEND_URL", server_url)
    monkeypatch.setenv("ANALYSIS_BACKEND_TOKEN", token[:5] + "\n" + token[5:])
    result = run_script(
        """
        def run(ctx, parameters):
            return ctx.files.list()
        """
    )
    assert result.error_type == "file_api_error"
    assert "ANALYSIS_BACKEND_TOKEN holds a character that cannot go in an HTTP header" in (result.error or "")
    assert "character 6, a control character" in (result.error or "")
    envelope = result.to_json()
    assert token[5:] not in envelope and token[:5] + "\\n" not in envelope


def test_a_file_api_that_refuses_connections_is_a_file_api_error_in_the_job(
    run_script: Callable[..., Any], token: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # the broker makes the request: its ConnectionError (an OSError) is the file API's, not the
    # kernel hanging up on the broker, and reaches the job as the error it is
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))  # bound, never listening: connections are refused
        monkeypatch.setenv("ANALYSIS_BACKEND_URL", f"http://127.0.0.1:{sock.getsockname()[1]}")
        monkeypatch.setenv("ANALYSIS_BACKEND_TOKEN", token)
        result = run_script(
            """
            def run(ctx, parameters):
                try:
                    ctx.files.list()
                except ConnectionError as exc:
                    ctx.log("caught", type(exc).__name__)
                return ctx.files.list()
            """
        )
    envelope = result.to_dict()
    assert envelope["error_type"] == "file_api_error", envelope
    assert "attempt(s)" in envelope["error"]
    assert "[log] caught FileApiConnectionError" in "\n".join(envelope["logs"])
    assert token not in repr(envelope)
