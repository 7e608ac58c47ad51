"""No secret a job holds shows in its envelope, its logs or a notebook's traceback.

The secrets: the file API token, the datasource key, each datasource password once revealed.
They are scrubbed where text leaves the job (README: "Secrets."), whatever library quoted them.
"""

from __future__ import annotations

import io
import sqlite3
import sys
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from analysis.config import Settings
from analysis.context import Context
from analysis.errors import DatasourceError
from analysis.redact import Redactor

PASSWORD = "pwZebra7781"
TOKEN = "tok-Quokka-9931"


def test_every_spelling_of_a_secret_is_masked() -> None:
    redactor = Redactor()
    redactor.add(TOKEN + "\n")
    quoted = [
        f"Illegal header value b'Bearer {TOKEN}\\n'",  # how h11 quotes a bad header value
        f'{{"token": "{TOKEN}\\n"}}',
        f"https://host/?t={TOKEN}%0A",
        f"plain {TOKEN} text",
    ]
    for text in quoted:
        clean = redactor.scrub(text)
        assert TOKEN not in clean and "***" in clean, clean


def test_chained_library_exceptions_are_scrubbed_in_place() -> None:
    redactor = Redactor()
    redactor.add(PASSWORD)
    try:
        try:
            raise OSError(13, f"denied for {PASSWORD}", f"/tmp/{PASSWORD}")
        except OSError as inner:
            raise httpx.LocalProtocolError(f"Illegal header value b'{PASSWORD}'") from inner
    except httpx.LocalProtocolError as exc:
        shown = "".join(traceback.format_exception(redactor.scrub_exception(exc)))
    assert PASSWORD not in shown
    assert "Illegal header value" in shown and "denied for ***" in shown


def test_streams_are_scrubbed_while_the_job_runs(monkeypatch: pytest.MonkeyPatch) -> None:
    out, err = io.StringIO(), io.StringIO()
    monkeypatch.setattr(sys, "stdout", out)
    monkeypatch.setattr(sys, "stderr", err)
    redactor = Redactor()
    redactor.add(PASSWORD)
    with redactor.streams():
        print("password is", PASSWORD)
        sys.stderr.write(f"[log] {PASSWORD}\n")
    print("after", PASSWORD)
    assert out.getvalue() == f"password is ***\nafter {PASSWORD}\n"
    assert err.getvalue() == "[log] ***\n"


@pytest.fixture
def sqlite_with_password(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A datasources file with a SQLite datasource whose password comes from SHOP_PASSWORD."""
    sqlite3.connect(tmp_path / "shop.db").close()
    config = tmp_path / "datasources.toml"
    config.write_text('[shop]\nkind = "sqlite"\npath = "shop.db"\npassword_env = "SHOP_PASSWORD"\n')
    monkeypatch.setenv("SHOP_PASSWORD", PASSWORD)
    return config


def test_a_driver_error_echoing_a_password_shows_no_password(sqlite_with_password: Path) -> None:
    """SQLite's "no such table" quotes the name it was given; here that name is the password.

    The datasource's own message was redacted before; the driver's exception chained under it
    (what a notebook's traceback and the envelope's stack show) was not.
    """
    ctx = Context(settings=Settings.from_env().__class__(datasources_file=sqlite_with_password))
    try:
        with pytest.raises(DatasourceError) as info:
            ctx.query_datasource("shop", f"SELECT * FROM {PASSWORD}")
        shown = "".join(traceback.format_exception(info.value))
        assert "no such table: ***" in shown
        assert PASSWORD not in shown
    finally:
        ctx.close()


def test_envelope_holds_no_token_or_password(
    run_script: Callable[..., Any], sqlite_with_password: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """In a job the kernel holds neither secret (the broker does), and a driver error quoting the
    password reaches the kernel scrubbed by the broker's own redactor."""
    monkeypatch.setenv("ANALYSIS_BACKEND_TOKEN", TOKEN)
    monkeypatch.setenv("ANALYSIS_BACKEND_URL", "http://127.0.0.1:9")
    result = run_script(
        f"""
        import os

        def run(ctx, parameters):
            held = [k for k in ("ANALYSIS_BACKEND_TOKEN", "SHOP_PASSWORD") if k in os.environ]
            table = "{PASSWORD[::-1]}"[::-1]  # the analysis's source does not spell it
            try:
                ctx.query_datasource("shop", "SELECT * FROM " + table)
            except Exception as exc:
                ctx.log("caught", str(exc))
                raise RuntimeError("driver said " + str(exc)) from exc
            return held
        """,
        datasources_file=sqlite_with_password,
    )
    envelope = result.to_json()
    assert result.error_type == "analysis_error"
    assert "no such table: ***" in (result.error or "")
    assert "[query:datasource] shop SELECT * FROM ***" in result.logs
    assert "[log] caught " in envelope and "no such table: ***" in envelope
    assert PASSWORD not in envelope and TOKEN not in envelope
