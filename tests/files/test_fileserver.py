"""The reference file server: auth, confinement to its folder, its OpenAPI vs the README, the CLI."""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
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


@pytest.mark.parametrize("scheme", ["Bearer", "bearer", "BEARER", "beaRer"])
def test_bearer_scheme_is_case_insensitive(server_url: str, token: str, scheme: str) -> None:
    with httpx.Client(base_url=server_url, trust_env=False, timeout=5) as client:
        response = client.get("/api/files", headers={"Authorization": f"{scheme} {token}"})
    assert response.status_code == 200, response.text


@pytest.mark.parametrize("header", ["Basic {token}", "Bearer", "{token}", "Bearer{token}", "Bearer x{token}"])
def test_other_authorization_is_refused(server_url: str, token: str, header: str) -> None:
    with httpx.Client(base_url=server_url, trust_env=False, timeout=5) as client:
        response = client.get("/api/files", headers={"Authorization": header.format(token=token)})
    assert response.status_code == 401
    assert response.json() == {"error": "missing or wrong bearer token"}


#: Malformed queries, each answered 400 with the documented error body. The first is the
#: case schemathesis found (issue: "Schema-violating request accepted", ST201); ``²`` and the
#: other non-ASCII digits pass ``str.isdigit`` or ``int`` and once gave 200 or 500.
BAD_QUERIES = [
    "/api/files/search?limit=&q=0",
    "/api/files/search?q=0&limit=%C2%B2",  # superscript two: '²'.isdigit() is True
    "/api/files/search?q=0&limit=%EF%BC%95",  # fullwidth five: int() accepts it
    "/api/files/search?q=0&limit=%D9%A3",  # Arabic-Indic three
    "/api/files/search?q=0&limit=abc",
    "/api/files/search?q=0&limit=0",
    "/api/files/search?q=0&limit=101",
    "/api/files/search?q=0&limit=-1",
    "/api/files/search?q=0&limit=1.5",
    "/api/files/search?q=0&limit=1e2",
    "/api/files/search?q=0&limit=%205",
    "/api/files/search?q=0&limit=" + "9" * 5000,  # int() refuses more than 4300 digits
    "/api/files/search?q=0&limit=1&limit=2",
    "/api/files/search?q=",
    "/api/files/search?q=%20%09",
    "/api/files/search?q=%C2%85",  # NEL: space to Python, not to ECMA's \S (found by the stateful phase)
    "/api/files/search?q=%1C%E3%80%80",
    "/api/files/search?q=" + "a" * 1001,
    "/api/files/search?q=a&q=b",
    "/api/files/search?q=a&conversation_id=",
    "/api/files/search?q=a&conversation_id=..",
    "/api/files/search?q=a&page=2",
    "/api/files/search?limit=5",
    "/api/files?conversation_id=",
    "/api/files?conversation_id=conv-1&conversation_id=conv-1",
    "/api/files?conversation_id=" + "a" * 65,
    "/api/files?other=1",
]


@pytest.mark.parametrize("target", BAD_QUERIES)
def test_every_malformed_query_is_a_400(server_url: str, token: str, target: str) -> None:
    response = _get(server_url, target, token)
    assert response.status_code == 400, response.text
    assert response.headers["content-type"] == "application/json"
    body = response.json()
    assert set(body) == {"error"} and isinstance(body["error"], str) and body["error"]


@pytest.mark.parametrize("text", ["%EF%BB%BF", "x%C2%85", "%E2%80%8B"])  # BOM, zero-width space: not space
def test_search_text_that_is_not_only_space_is_accepted(server_url: str, token: str, text: str) -> None:
    response = _get(server_url, f"/api/files/search?q={text}", token)
    assert response.status_code == 200, response.text


@pytest.mark.parametrize(("limit", "most"), [("1", 1), ("007", 7), ("100", 100), ("0000000000002", 2)])
def test_search_limit_in_range_is_honoured(server_url: str, token: str, limit: str, most: int) -> None:
    response = _get(server_url, f"/api/files/search?q=s&limit={limit}", token)
    assert response.status_code == 200, response.text
    assert 1 <= len(response.json()["files"]) <= most


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


def _readme_file_api_table() -> list[tuple[str, str]]:
    """``(HTTP column, returns column)`` of each row of the README's file API table."""
    section = (REPO / "README.md").read_text().split("## The file API", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"^\| `[a-z_]+\(.*?\)` \| `(/api/files[^`]*)`[^|]*\| ([^|]+) \|$", section, re.M)


def test_openapi_agrees_with_the_readme() -> None:
    """The routes, parameters and answers the README documents are those of the OpenAPI document."""
    rows = _readme_file_api_table()
    assert len(rows) == 4, rows
    document = openapi_document()
    paths = document["paths"]
    routes = {re.split(r"[?\[]", http, maxsplit=1)[0]: (http, returns) for http, returns in rows}
    assert set(paths) == set(routes)
    for path, (http, returns) in routes.items():
        operation = paths[path]["get"]
        params = {p["name"]: p for p in operation["parameters"]}
        for name in re.findall(r"\{(\w+)\}", path):
            assert params[name]["in"] == "path" and params[name]["required"] is True
        for name in re.findall(r"[?&](\w+)=", http):
            assert params[name]["in"] == "query"
        ok = operation["responses"]["200"]["content"]
        if returns.startswith("list of metadata"):
            assert ok["application/json"]["schema"] == {"$ref": "#/components/schemas/FileList"}
        elif returns.startswith("metadata"):
            assert ok["application/json"]["schema"] == {"$ref": "#/components/schemas/FileMetadata"}
            fields = set(re.findall(r"`(\w+)`", returns))
            assert set(document["components"]["schemas"]["FileMetadata"]["required"]) == fields
        else:
            assert returns.strip() == "`bytes`"
            assert ok["*/*"]["schema"]["format"] == "binary"


def test_cli_parser_registers_files_serve(tmp_path: Path) -> None:
    parser = argparse.ArgumentParser(prog="analysis")
    add_subparser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["files", "serve", str(tmp_path), "--port", "9", "--token", "t"])
    assert (args.dir, args.host, args.port, args.token) == (tmp_path, "127.0.0.1", 9, "t")
    assert args.handler is run_files_command
    missing = parser.parse_args(["files", "serve", str(tmp_path / "nope")])
    assert run_files_command(missing) == 2


def test_analysis_files_serve_end_to_end(file_root: Path, token: str) -> None:
    """The console command serves the folder with the token from the environment.

    ``--port 0``: the server binds a free port itself and names it (a port picked by the test
    and bound later by the server could be taken meanwhile).
    """
    env = {**os.environ, "ANALYSIS_BACKEND_TOKEN": token}
    code = "import sys; from analysis.runner.cli import main; sys.exit(main())"
    cmd = [sys.executable, "-c", code, "files", "serve", str(file_root), "--port", "0"]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    assert proc.stderr is not None
    try:
        first = proc.stderr.readline().decode()
        found = re.search(r"serving .* at (http://127\.0\.0\.1:(\d+)) ", first)
        assert found is not None and found.group(2) != "0", first
        url = found.group(1)
        response = _get(url, "/api/files/sales.csv", token)  # bound before the line was printed
        assert response.status_code == 200
        assert response.json()["id"] == "sales.csv"
        assert _get(url, "/api/files/sales.csv").status_code == 401
    finally:
        proc.terminate()
        rest = proc.communicate(timeout=10)[1]
    stderr = first.encode() + rest
    assert b"serving" in stderr and token.encode() not in stderr


@pytest.fixture
def asgi_app(file_root: Path, token: str) -> Any:
    """The server app for schemathesis (in process, over the sample folder)."""
    return create_app(file_root, token=token)


def test_json_file_content_conforms_to_the_document(server_url: str, token: str) -> None:
    """Found by schemathesis' stateful phase: a JSON file is served as ``application/json``, and
    the document typed all content as a binary string, which a JSON array is not."""
    response = _get(server_url, "/api/files/events.json/content", token)
    assert response.headers["content-type"] == "application/json"
    assert isinstance(response.json(), list)
    media = openapi_document()["paths"]["/api/files/{file_id}/content"]["get"]["responses"]["200"]["content"]
    assert media["application/json"]["schema"] == {}  # any JSON value
    assert media["*/*"]["schema"] == {"type": "string", "format": "binary"}
