"""``analysis datasource add|list|test|rotate-key``: encrypted tokens only, all-or-nothing rotation."""

from __future__ import annotations

import io
import stat
import sys
from pathlib import Path
from typing import Any

import pytest
from cryptography.fernet import Fernet

from analysis.runner.cli import main

from .conftest import servers


def _run(args: list[str], capsys: pytest.CaptureFixture[str], stdin: str = "") -> tuple[int, str, str]:
    old = sys.stdin
    sys.stdin = io.StringIO(stdin)
    try:
        code = main(["datasource", *args])
    finally:
        sys.stdin = old
    out = capsys.readouterr()
    return code, out.out, out.err


def test_add_list_test_and_rotate_key(
    tmp_path: Path,
    pg_server: Any,
    my_server: Any,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    config = tmp_path / "proj" / "datasources.toml"
    code, key, _ = _run(["genkey"], capsys)
    key = key.strip()
    assert code == 0 and Fernet(key.encode())
    monkeypatch.setenv("ANALYSIS_SECRET_KEY", key)
    base = ["--file", str(config)]
    for name, kind, server in (("wh", "postgres", pg_server), ("shop", "mysql", my_server)):
        code, out, err = _run(
            [*base, "add", name, "--kind", kind, "--port", str(server.port), "--database", servers.DATABASE,
             "--user", servers.USER],
            capsys, stdin=servers.PASSWORD + "\n",
        )  # fmt: skip
        assert code == 0, err
    text = config.read_text()
    assert servers.PASSWORD not in text and text.count("password_encrypted") == 2
    assert stat.S_IMODE(config.stat().st_mode) == 0o600

    code, out, _ = _run([*base, "list"], capsys)
    assert code == 0 and "wh\tpostgres" in out and "shop\tmysql" in out and "read-only" in out
    assert "gAAAA" not in out and servers.PASSWORD not in out

    code, out, _ = _run([*base, "test", "wh"], capsys)
    assert code == 0 and "PostgreSQL 15" in out and " ms" in out
    code, out, _ = _run([*base, "test", "shop"], capsys)
    assert code == 0 and "MariaDB" in out

    new_key = Fernet.generate_key().decode()
    before = config.read_text()
    code, out, err = _run([*base, "rotate-key"], capsys, stdin=new_key + "\n")
    assert code == 0, err
    assert "Re-encrypted 2 password(s)" in out and config.read_text() != before
    code, _, err = _run([*base, "test", "wh"], capsys)  # the old key no longer opens the new tokens
    assert code == 1 and "does not decrypt" in err and servers.PASSWORD not in err
    monkeypatch.setenv("ANALYSIS_SECRET_KEY", new_key)
    code, out, _ = _run([*base, "test", "wh"], capsys)
    assert code == 0 and "OK" in out


def test_rotate_key_changes_nothing_when_a_token_does_not_decrypt(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from analysis.sources.secrets import encrypt

    key, stranger = Fernet.generate_key().decode(), Fernet.generate_key().decode()
    config = tmp_path / "datasources.toml"
    config.write_text(
        f'[good]\nkind = "postgres"\npassword_encrypted = "{encrypt("a", key)}"\n\n'
        f'[bad]\nkind = "mysql"\npassword_encrypted = "{encrypt("b", stranger)}"\n',
        encoding="utf-8",
    )
    before = config.read_bytes()
    monkeypatch.setenv("ANALYSIS_SECRET_KEY", key)
    code, _, err = _run(
        # --new-key=KEY: a Fernet key may start with "-", which argparse would take for an option
        ["--file", str(config), "rotate-key", f"--new-key={Fernet.generate_key().decode()}"],
        capsys,
    )
    assert code == 1
    assert "nothing changed" in err and "bad" in err and "good" not in err.split("decrypt:")[1]
    assert config.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["datasources.toml"]  # no temporary file left


def test_add_without_a_key_fails_and_writes_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("ANALYSIS_SECRET_KEY", raising=False)
    config = tmp_path / "datasources.toml"
    code, _, err = _run(
        ["--file", str(config), "add", "x", "--kind", "mysql", "--database", "d", "--user", "u"],
        capsys,
        stdin="pw\n",
    )
    assert code == 1 and "ANALYSIS_SECRET_KEY is not set" in err
    assert not config.exists()
