"""``ctx.files`` against the real reference server on loopback: every call the README lists."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from analysis.config import Settings
from analysis.context import Context
from analysis.duck import Duck
from analysis.files import (
    FileApiError,
    FileApiNotConfiguredError,
    FileApiStatusError,
    FileLoadError,
    FileNotFoundInApiError,
    Files,
    InvalidFileIdError,
)

MakeFiles = Callable[..., Files]


@pytest.fixture
def duck() -> Iterator[Duck]:
    """A fresh in-memory DuckDB."""
    d = Duck()
    yield d
    d.close()


@pytest.fixture
def files(make_files: MakeFiles, server_url: str, duck: Duck) -> Files:
    """A client of the reference server with the right token."""
    return make_files(server_url, duck=duck)


def test_list_returns_served_files_only(files: Files, file_root: Path) -> None:
    listed = {meta["id"]: meta for meta in files.list()}
    assert set(listed) == {
        "blob.bin",
        "conv-1--budget.csv",
        "events.json",
        "events.jsonl",
        "latin.txt",
        "notes.txt",
        "people.parquet",
        "sales.csv",
    }  # no hidden file, no name with a space, no symlink out of the folder
    sales = listed["sales.csv"]
    assert sales["name"] == "sales.csv"
    assert sales["size"] == (file_root / "sales.csv").stat().st_size
    assert sales["content_type"] == "text/csv"
    assert sales["created_at"].endswith("Z")
    assert listed["conv-1--budget.csv"]["conversation_id"] == "conv-1"


def test_list_by_conversation(files: Files) -> None:
    assert [m["id"] for m in files.list(conversation_id="conv-1")] == ["conv-1--budget.csv"]
    assert files.list(conversation_id="no-such-conversation") == []


def test_get_metadata_and_read(files: Files, file_root: Path) -> None:
    meta = files.get_metadata("people.parquet")
    assert meta["content_type"] == "application/vnd.apache.parquet"
    assert files.read("blob.bin") == (file_root / "blob.bin").read_bytes()
    assert files.read("conv-1--budget.csv").startswith(b"item,cost")


def test_read_text_and_json(files: Files) -> None:
    assert "zebra migration" in files.read_text("notes.txt")
    assert files.read_text("latin.txt", encoding="latin-1") == "café"
    with pytest.raises(FileLoadError, match=r"'latin.txt' cannot be decoded as utf-8"):
        files.read_text("latin.txt")
    assert files.read_json("events.json") == [{"kind": "open", "n": 1}, {"kind": "close", "n": 2}]
    with pytest.raises(FileLoadError, match=r"'notes\.txt' is not valid JSON"):
        files.read_json("notes.txt")


def test_search_by_name_and_content(files: Files) -> None:
    by_content = files.search("zebra MIGRATION")
    assert [(m["id"], m["match"]) for m in by_content] == [("notes.txt", "content")]
    names = [m["id"] for m in files.search("events")]
    assert names == ["events.json", "events.jsonl"]
    assert len(files.search("events", limit=1)) == 1
    assert [m["id"] for m in files.search("rent", conversation_id="conv-1")] == ["conv-1--budget.csv"]
    assert files.search("no-such-words-anywhere") == []


def test_not_found_names_the_file(files: Files) -> None:
    with pytest.raises(FileNotFoundInApiError) as info:
        files.get_metadata("missing.csv")
    err = info.value
    assert isinstance(err, LookupError)
    assert (err.status, err.file_id, err.path) == (404, "missing.csv", "/api/files/missing.csv")
    assert "'missing.csv' was not found" in str(err)
    assert err.to_dict()["error_type"] == "file_api_error"
    with pytest.raises(FileNotFoundInApiError):
        files.read("escape.txt")  # a symlink leading out of the served folder


def test_wrong_token_is_a_status_error_without_the_token(
    make_files: MakeFiles, server_url: str, token: str, capsys: pytest.CaptureFixture[str]
) -> None:
    files = make_files(server_url, token="wrong-" + token)
    with pytest.raises(FileApiStatusError) as info:
        files.list()
    assert info.value.status == 401
    assert "ANALYSIS_BACKEND_TOKEN" in str(info.value)
    stderr = capsys.readouterr().err
    assert stderr.count("[files] GET /api/files") == 1  # 401 is not retried
    for text in (str(info.value), repr(files), stderr, repr(info.value.to_dict())):
        assert token not in text


def test_each_call_logs_verb_and_path(files: Files, token: str, capsys: pytest.CaptureFixture[str]) -> None:
    files.get_metadata("sales.csv")
    files.read("sales.csv")
    files.search("sales", limit=2)
    files.list(conversation_id="conv-1")
    lines = capsys.readouterr().err.splitlines()
    assert lines == [
        "[files] GET /api/files/sales.csv",
        "[files] GET /api/files/sales.csv/content",
        "[files] GET /api/files/search?q=sales&limit=2",
        "[files] GET /api/files?conversation_id=conv-1",
    ]


LOADS = [
    ("sales.csv", "sales", 3, "SELECT sum(amount) FROM sales", 17.5),
    ("people.parquet", "people", 3, "SELECT count(name) FROM people", 2),
    ("events.json", "ev", 2, "SELECT max(n) FROM ev", 2),
    ("events.jsonl", "ev", 3, "SELECT count(*) FROM ev WHERE n IS NULL", 1),
    ("conv-1--budget.csv", "My Budget", 2, 'SELECT sum(cost) FROM "My Budget"', 150),
]


@pytest.mark.parametrize("case", LOADS, ids=[c[0] for c in LOADS])
def test_load_into_duckdb(files: Files, duck: Duck, case: tuple[str, str, int, str, Any]) -> None:
    file_id, table, expected_rows, check_sql, expected = case
    assert files.load(file_id, table) == expected_rows
    assert duck.connection.sql(check_sql).fetchall() == [(expected,)]


def test_load_append_and_explicit_format(files: Files, duck: Duck) -> None:
    assert files.load("sales.csv", "s") == 3
    assert files.load("sales.csv", "s", mode="append") == 3
    assert duck.connection.sql("SELECT count(*) FROM s").fetchall() == [(6,)]
    assert files.load("notes.txt", "notes", file_format="csv") == 0  # one header line, no rows
    with pytest.raises(FileLoadError, match=r"cannot tell the format of file 'blob\.bin'"):
        files.load("blob.bin", "blob")
    with pytest.raises(FileLoadError, match=r"'events\.json' cannot be read as parquet"):
        files.load("events.json", "bad", file_format="parquet")
    with pytest.raises(FileLoadError, match="mode 'upsert'"):
        files.load("sales.csv", "s", mode="upsert")


BAD_IDS: list[Any] = [
    "../etc/passwd",
    "..",
    ".hidden",
    "a/b",
    "a\\b",
    "%2e%2e",
    "a%2Fb",
    "a\nb",
    "a\x00b",
    "sales.csv?x=1",
    "a b",
    "",
    "x" * 129,
    "é.csv",
    5,
    None,
]


@pytest.mark.parametrize("bad_id", BAD_IDS)
def test_bad_ids_are_rejected_before_any_request(
    make_files: MakeFiles, fault_server: Any, bad_id: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    files = make_files(fault_server.url)
    for call in (files.read, files.get_metadata, files.read_text, files.read_json):
        with pytest.raises(InvalidFileIdError) as info:
            call(bad_id)
        assert isinstance(info.value, ValueError)
    with pytest.raises(InvalidFileIdError):
        files.load(bad_id, "t")
    assert fault_server.requests == []
    assert capsys.readouterr().err == ""


def test_not_configured_and_closed(make_files: MakeFiles, server_url: str) -> None:
    unconfigured = Files(settings=Settings(backend_url=None))
    with pytest.raises(FileApiNotConfiguredError, match="ANALYSIS_BACKEND_URL"):
        unconfigured.list()
    with pytest.raises(FileApiNotConfiguredError, match="http"):
        Files(settings=Settings(backend_url="ftp://example.invalid")).list()
    files = make_files(server_url)
    assert files.list()
    files.close()
    files.close()
    with pytest.raises(FileApiError, match="closed"):
        files.list()
    without_duck = make_files(server_url)
    with pytest.raises(FileApiError, match="DuckDB"):
        without_duck.load("sales.csv", "t")


def test_ctx_files_loads_into_the_jobs_duckdb(server_url: str, token: str) -> None:
    ctx = Context(settings=Settings(backend_url=server_url, backend_token=token))
    try:
        assert ctx.files.load("sales.csv", "sales") == 3
        assert ctx.query("SELECT count(*) AS n FROM sales").rows == [{"n": 3}]
    finally:
        ctx.close()


def test_public_names() -> None:
    import analysis.files

    assert set(analysis.files.__all__) == {
        "FILE_ID_PATTERN",
        "RETRY_STATUSES",
        "FileApiConnectionError",
        "FileApiError",
        "FileApiLimits",
        "FileApiNotConfiguredError",
        "FileApiRedirectError",
        "FileApiResponseError",
        "FileApiStatusError",
        "FileApiTimeoutError",
        "FileLoadError",
        "FileMetadata",
        "FileNotFoundInApiError",
        "FileTooLargeError",
        "Files",
        "InvalidFileIdError",
        "validate_file_id",
    }
    for name in analysis.files.__all__:
        assert getattr(analysis.files, name) is not None
    assert analysis.files.FileApiError is __import__("analysis.errors").errors.FileApiError


def test_transport_is_used_at_the_protocol_edge(token: str) -> None:
    import httpx

    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, json={"id": "a.csv", "name": "a.csv"})

    settings = Settings(backend_url="http://backend.invalid/prefix", backend_token=token)
    with Files(settings=settings, transport=httpx.MockTransport(handler)) as files:
        assert files.get_metadata("a.csv") == {"id": "a.csv", "name": "a.csv"}
    assert str(seen[0].url) == "http://backend.invalid/prefix/api/files/a.csv"
    assert seen[0].headers["authorization"] == f"Bearer {token}"
    assert files.limits.max_body_bytes == 100 * 1024 * 1024
