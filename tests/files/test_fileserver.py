"""The reference file server: auth, confinement to its folder, its OpenAPI vs CONTRACT.md, the CLI."""

from __future__ import annotations

import argparse
import os
import re
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from analysis.runner.fileserver import (
    FileStore,
    add_subparser,
    create_app,
    openapi_document,
    run_files_command,
)

REPO = Path(__file__).resolve().parents[2]


def _get(url: str, path: str, token: str | None = None) -> httpx.Response:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    with httpx.Client(base_url=url, trust_env=False, timeout=5) as client:
        return client.get(path, headers=headers)


def test_bearer_token_is_required(server_url: str, token: str) -> None:
    for given in (None, "wrong", token + "x"):
        response = _get(server_url, "/api/files", given)
        assert response.status_code == 401
        assert response.headers["www-authenticate"] == "Bearer"
        assert token not in response.text
    assert _get(server_url, "/api/files", token).status_code == 200
    assert _get(server_url, "/openapi.json").json() == openapi_document()  # the document is public


@pytest.mark.parametrize(
    ("path", "statuses"),
    [
        ("/api/files/escape.txt", {404}),  # symlink to a file outside the folder
        ("/api/files/escape.txt/content", {404}),
        ("/api/files/.hidden.csv", {400}),
        ("/api/files/..%2Fetc%2Fpasswd/content", {404}),
        ("/api/files/%2e%2e/content", {400}),
        ("/api/files/conv-1--..%2Fsales.csv", {404}),
        ("/api/files/conv-1/budget.csv", {404}),
        ("/api/files/search", {400}),  # the route, without q
        ("/api/files?conversation_id=..", {400}),
    ],
)
def test_ids_are_confined_to_the_folder(server_url: str, token: str, path: str, statuses: set[int]) -> None:
    response = _get(server_url, path, token)
    assert response.status_code in statuses
    assert "do not serve" not in response.text
    assert "error" in response.json()


def test_content_is_served_with_its_type(server_url: str, token: str, file_root: Path) -> None:
    response = _get(server_url, "/api/files/people.parquet/content", token)
    assert response.headers["content-type"] == "application/vnd.apache.parquet"
    assert response.content == (file_root / "people.parquet").read_bytes()
    assert _get(server_url, "/api/files/conv-1--budget.csv/content", token).text.startswith("item,cost")


def test_store_skips_what_it_cannot_serve(tmp_path: Path) -> None:
    (tmp_path / "search").write_text("reserved id")
    (tmp_path / "ok.csv").write_text("a\n")
    (tmp_path / "bad--conv").mkdir()
    (tmp_path / "bad--conv" / "x.csv").write_text("a\n")
    (tmp_path / "deep").mkdir()
    (tmp_path / "deep" / "more").mkdir()
    (tmp_path / "deep" / "more" / "y.csv").write_text("a\n")
    store = FileStore(tmp_path)
    assert [file_id for file_id, _, _ in store.iter_files()] == ["ok.csv"]
    assert store.resolve("search") is None


def _contract_section_6() -> str:
    candidates = [REPO.parent / "shared" / "CONTRACT.md", Path("/work/shared/CONTRACT.md")]
    for candidate in candidates:
        if candidate.is_file():
            text = candidate.read_text()
            return text.split("## 6.", 1)[1].split("\n## ", 1)[0]
    if os.environ.get("CI") == "true":
        pytest.fail("CONTRACT.md not found beside the repository")
    pytest.skip("CONTRACT.md not found beside the repository")


def test_openapi_agrees_with_contract_section_6() -> None:
    section = _contract_section_6()
    pinned = re.findall(r"`GET (/api/files[^`?]*)(?:\?([^`]*))?` -> (\S+)", section)
    assert len(pinned) == 4, section
    document = openapi_document()
    paths = document["paths"]
    assert set(paths) == {path for path, _, _ in pinned}
    for path, query, returns in pinned:
        operation = paths[path]["get"]
        params = {p["name"]: p for p in operation["parameters"]}
        for name in re.findall(r"\{(\w+)\}", path):
            assert params[name]["in"] == "path" and params[name]["required"] is True
        for pair in query.split("&") if query else []:
            assert params[pair.split("=")[0]]["in"] == "query"
        ok = operation["responses"]["200"]["content"]
        if returns.startswith('`{"files"'):
            assert ok["application/json"]["schema"] == {"$ref": "#/components/schemas/FileList"}
        elif returns == "metadata":
            assert ok["application/json"]["schema"] == {"$ref": "#/components/schemas/FileMetadata"}
        else:  # the raw bytes
            assert ok["*/*"]["schema"]["format"] == "binary"
    listed = re.search(r"metadata `\{([^}]*)\}`", section)
    assert listed is not None
    fields = set(re.findall(r'"(\w+)"', listed.group(1)))
    assert fields == {"id", "name", "size", "content_type", "created_at"}
    assert set(document["components"]["schemas"]["FileMetadata"]["required"]) == fields


def test_cli_parser_registers_files_serve(tmp_path: Path) -> None:
    parser = argparse.ArgumentParser(prog="analysis")
    add_subparser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["files", "serve", str(tmp_path), "--port", "9", "--token", "t"])
    assert (args.dir, args.host, args.port, args.token) == (tmp_path, "127.0.0.1", 9, "t")
    assert args.handler is run_files_command
    missing = parser.parse_args(["files", "serve", str(tmp_path / "nope")])
    assert run_files_command(missing) == 2


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def test_analysis_files_serve_end_to_end(file_root: Path, token: str) -> None:
    """The console command serves the folder with the token from the environment."""
    port = _free_port()
    env = {**os.environ, "ANALYSIS_BACKEND_TOKEN": token}
    code = "import sys; from analysis.runner.cli import main; sys.exit(main())"
    cmd = [sys.executable, "-c", code, "files", "serve", str(file_root), "--port", str(port)]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        url, response = f"http://127.0.0.1:{port}", None
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                response = _get(url, "/api/files/sales.csv", token)
                break
            except httpx.TransportError:
                time.sleep(0.1)
        assert response is not None and response.status_code == 200, proc.poll()
        assert response.json()["id"] == "sales.csv"
        assert _get(url, "/api/files/sales.csv").status_code == 401
    finally:
        proc.terminate()
        _, stderr = proc.communicate(timeout=10)
    assert b"serving" in stderr and token.encode() not in stderr


@pytest.fixture
def asgi_app(file_root: Path, token: str) -> Any:
    """The server app for schemathesis (in process, over the sample folder)."""
    return create_app(file_root, token=token)
