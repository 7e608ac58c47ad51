"""The client against a real misbehaving server on loopback: each fault ends as documented, in time.

Every test states the time it must finish in (``within``), and checks that the token never
shows in the error. Each bound sits far above what the test needs (the machine may be loaded)
and far below what the fault would cost if it were not handled (a hanging server waits 30 s,
a trickling one sends a byte a second): what it checks is the handling, never the speed.
"""

from __future__ import annotations

import gzip
import socket
import time
import tracemalloc
import zlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from typing import Any

import pytest

from analysis.config import Settings
from analysis.deadline import Deadline
from analysis.files import (
    FileApiConnectionError,
    FileApiRedirectError,
    FileApiResponseError,
    FileApiStatusError,
    FileApiTimeoutError,
    FileNotFoundInApiError,
    Files,
    FileTooLargeError,
)

MakeFiles = Callable[..., Files]
LISTING = {
    "files": [{"id": "a.csv", "name": "a.csv", "size": 1, "content_type": "text/csv", "created_at": "x"}]
}


@contextmanager
def within(seconds: float) -> Iterator[None]:
    """Assert the block takes less than ``seconds``."""
    started = time.monotonic()
    yield
    elapsed = time.monotonic() - started
    assert elapsed < seconds, f"took {elapsed:.2f} s, more than {seconds} s"


def sequence(*replies: Any) -> Callable[[str, dict[str, str]], Any]:
    """A script that plays ``replies`` in order, then repeats the last one."""
    queue = list(replies)

    def script(target: str, headers: dict[str, str]) -> Any:
        return queue.pop(0) if len(queue) > 1 else queue[0]

    return script


def assert_no_token(err: BaseException, token: str) -> None:
    assert token not in str(err) and token not in repr(err)
    if hasattr(err, "to_dict"):
        assert token not in repr(err.to_dict())
        assert err.to_dict()["error_type"] == "file_api_error"


def test_500_then_success_is_retried(make_files: MakeFiles, fault_server: Any, token: str) -> None:
    fault_server.script = sequence(fault_server.json({"error": "boom"}, 500), fault_server.json(LISTING))
    with within(15):
        assert [m["id"] for m in make_files(fault_server.url).list()] == ["a.csv"]
    assert fault_server.paths() == ["/api/files", "/api/files"]
    assert fault_server.requests[0][1]["authorization"] == f"Bearer {token}"
    assert fault_server.requests[0][1]["accept-encoding"] == "identity"


@pytest.mark.parametrize("status", [502, 503, 504])
def test_gateway_errors_give_up_after_max_attempts(
    make_files: MakeFiles, fault_server: Any, token: str, status: int, capsys: pytest.CaptureFixture[str]
) -> None:
    fault_server.script = sequence(fault_server.json({}, status))
    with within(15), pytest.raises(FileApiStatusError) as info:
        make_files(fault_server.url, max_attempts=3).get_metadata("a.csv")
    assert (info.value.status, info.value.path) == (status, "/api/files/a.csv")
    assert "after 3 attempt(s)" in str(info.value)
    assert len(fault_server.requests) == 3
    assert capsys.readouterr().err.count("retry") == 2
    assert_no_token(info.value, token)


def test_429_retry_after_is_honoured(make_files: MakeFiles, fault_server: Any) -> None:
    fault_server.script = sequence(
        fault_server.json({}, 429, {"retry-after": "1"}), fault_server.json({"id": "a.csv"})
    )
    started = time.monotonic()
    with within(15):
        assert make_files(fault_server.url).get_metadata("a.csv") == {"id": "a.csv"}
    assert time.monotonic() - started >= 0.95
    assert len(fault_server.requests) == 2


def test_429_retry_after_as_http_date(make_files: MakeFiles, fault_server: Any) -> None:
    when = format_datetime(datetime.now(UTC) + timedelta(seconds=1), usegmt=True)
    fault_server.script = sequence(
        fault_server.json({}, 429, {"retry-after": when}), fault_server.json(LISTING)
    )
    with within(15):
        assert make_files(fault_server.url).list()
    assert len(fault_server.requests) == 2


def test_429_retry_after_past_the_deadline_fails_at_once(make_files: MakeFiles, fault_server: Any) -> None:
    fault_server.script = sequence(fault_server.json({}, 429, {"retry-after": "3600"}))
    with within(30), pytest.raises(FileApiStatusError) as info:
        make_files(fault_server.url, deadline=Deadline.after(60)).list()
    assert info.value.status == 429
    assert "retry after 3600 s" in str(info.value) and "60 s deadline" in str(info.value)
    assert len(fault_server.requests) == 1


def test_404_is_not_found_and_not_retried(make_files: MakeFiles, fault_server: Any, token: str) -> None:
    fault_server.script = sequence(fault_server.json({"error": "nope"}, 404))
    files = make_files(fault_server.url)
    with within(15), pytest.raises(FileNotFoundInApiError) as info:
        files.read("gone.csv")
    assert info.value.file_id == "gone.csv" and "'gone.csv'" in str(info.value)
    with pytest.raises(FileApiStatusError) as listing:
        files.list()  # a 404 on the listing is the endpoint missing, not a file
    assert not isinstance(listing.value, FileNotFoundInApiError)
    assert len(fault_server.requests) == 2
    assert_no_token(info.value, token)


def test_server_that_never_answers_hits_the_read_timeout(
    make_files: MakeFiles, fault_server: Any, token: str
) -> None:
    fault_server.script = sequence(fault_server.Reply(mode="hang"))
    with within(15), pytest.raises(FileApiTimeoutError) as info:
        make_files(fault_server.url, read_timeout_s=0.5).list()
    assert (info.value.limit, info.value.limit_s) == ("read_timeout_s", 0.5)
    assert "read timeout of 0.5 s" in str(info.value)
    assert isinstance(info.value, TimeoutError)
    assert len(fault_server.requests) == 1
    assert_no_token(info.value, token)


def test_server_that_never_answers_is_cut_by_the_job_deadline(
    make_files: MakeFiles, fault_server: Any
) -> None:
    fault_server.script = sequence(fault_server.Reply(mode="hang"))
    with within(15), pytest.raises(FileApiTimeoutError) as info:
        make_files(fault_server.url, deadline=Deadline.after(0.7)).read("a.csv")
    assert info.value.limit == "deadline"
    assert "0.7 s deadline" in str(info.value)


def test_trickling_server_hits_the_request_time_limit(make_files: MakeFiles, fault_server: Any) -> None:
    fault_server.script = sequence(fault_server.Reply(body=b"x" * 100, mode="trickle"))
    with within(20), pytest.raises(FileApiTimeoutError) as info:
        make_files(fault_server.url, request_timeout_s=1.5).read("a.csv")
    assert info.value.limit == "request_timeout_s"
    assert "request time limit of 1.5 s" in str(info.value)


def test_server_trickling_its_headers_hits_the_request_time_limit(
    make_files: MakeFiles, fault_server: Any
) -> None:
    """A status line and headers sent a byte a second (about 60 s of them) end at the 1.5 s limit.

    Each byte arrives well within the read timeout, so only a limit on the whole attempt,
    headers included, stops it; before, it ran until the headers were in.
    """
    fault_server.script = sequence(fault_server.Reply(body=b"x", mode="trickle_head"))
    with within(20), pytest.raises(FileApiTimeoutError) as info:
        make_files(fault_server.url, request_timeout_s=1.5, max_attempts=1).read("a.csv")
    assert (info.value.limit, info.value.limit_s) == ("request_timeout_s", 1.5)
    assert "request time limit of 1.5 s" in str(info.value)


def test_server_trickling_its_headers_is_cut_by_the_job_deadline(
    make_files: MakeFiles, fault_server: Any
) -> None:
    fault_server.script = sequence(fault_server.Reply(body=b"x", mode="trickle_head"))
    with within(20), pytest.raises(FileApiTimeoutError) as info:
        make_files(fault_server.url, request_timeout_s=None, deadline=Deadline.after(1.5)).read("a.csv")
    assert info.value.limit == "deadline"
    assert "1.5 s deadline" in str(info.value)


def test_garbage_json_and_wrong_shapes(make_files: MakeFiles, fault_server: Any) -> None:
    replies = {
        "/api/files": fault_server.Reply(200, {"content-type": "application/json"}, b'{"files": [nope'),
        "/api/files/search?q=x": fault_server.Reply(200, {"content-type": "text/html"}, b"<html></html>"),
        "/api/files/a.csv": fault_server.json({"name": "no id"}),
        "/api/files?conversation_id=c": fault_server.json({"items": []}),
        "/api/files/nan.csv": fault_server.Reply(200, {"content-type": "application/json"}, b'{"id": NaN}'),
    }
    fault_server.script = lambda target, headers: replies[target]
    files = make_files(fault_server.url)
    with within(15):
        with pytest.raises(FileApiResponseError, match="GET /api/files with invalid JSON"):
            files.list()
        with pytest.raises(FileApiResponseError, match="content type 'text/html', not JSON"):
            files.search("x")
        with pytest.raises(FileApiResponseError, match='no "id" string'):
            files.get_metadata("a.csv")
        with pytest.raises(FileApiResponseError, match='without a "files" list'):
            files.list(conversation_id="c")
        with pytest.raises(FileApiResponseError, match="invalid JSON"):
            files.get_metadata("nan.csv")
    assert len(fault_server.requests) == 5  # none of these is retried


def test_body_over_the_cap_declared(make_files: MakeFiles, fault_server: Any) -> None:
    fault_server.script = sequence(fault_server.Reply(body=b"x" * 5000))
    with within(15), pytest.raises(FileTooLargeError) as info:
        make_files(fault_server.url, max_body_bytes=1000).read("a.csv")
    assert info.value.limit_bytes == 1000
    assert "1000-byte limit" in str(info.value) and "declares 5000 bytes" in str(info.value)


def test_body_over_the_cap_streamed_stops_early(make_files: MakeFiles, fault_server: Any) -> None:
    fault_server.script = sequence(fault_server.Reply(body=b"x" * (32 * 1024 * 1024), mode="chunked"))
    with within(15), pytest.raises(FileTooLargeError, match="more than 65536 bytes arrived"):
        make_files(fault_server.url, max_body_bytes=65536).read("a.csv")


@pytest.mark.parametrize("coding", ["gzip", "deflate", "raw-deflate", "identity"])
def test_encoded_bodies_are_decoded(make_files: MakeFiles, fault_server: Any, coding: str) -> None:
    data = b"region,amount\n" + b"north,10\n" * 50_000
    if coding == "gzip":
        body = gzip.compress(data)
    elif coding == "deflate":
        body = zlib.compress(data)
    elif coding == "raw-deflate":  # what some servers send as "deflate"
        packer = zlib.compressobj(wbits=-zlib.MAX_WBITS)
        body, coding = packer.compress(data) + packer.flush(), "deflate"
    else:
        body = data
    fault_server.script = sequence(fault_server.Reply(headers={"content-encoding": coding}, body=body))
    assert make_files(fault_server.url).read("a.csv") == data


def test_gzip_bomb_is_stopped_before_it_inflates(make_files: MakeFiles, fault_server: Any) -> None:
    """128 MiB of zeros gzipped to ~128 KiB, against a 1 MiB cap: memory stays near the cap.

    httpx inflated each 64 KiB read at once, about 64 MiB, before the size check saw it.
    """
    bomb = gzip.compress(bytes(128 * 1024 * 1024), compresslevel=6)
    fault_server.script = sequence(fault_server.Reply(headers={"content-encoding": "gzip"}, body=bomb))
    files = make_files(fault_server.url, max_body_bytes=1024 * 1024)
    tracemalloc.start()
    try:
        with pytest.raises(FileTooLargeError, match="1048576-byte limit"):
            files.read("a.csv")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 8 * 1024 * 1024, f"peak {peak / 2**20:.1f} MiB for a 1 MiB cap"


def test_unknown_content_encoding_is_refused(make_files: MakeFiles, fault_server: Any) -> None:
    fault_server.script = sequence(fault_server.Reply(headers={"content-encoding": "br"}, body=b"xx"))
    with pytest.raises(FileApiResponseError, match="content encoding 'br' is not supported"):
        make_files(fault_server.url).read("a.csv")


def test_corrupt_gzip_is_a_clear_error(make_files: MakeFiles, fault_server: Any) -> None:
    fault_server.script = sequence(fault_server.Reply(headers={"content-encoding": "gzip"}, body=b"not gzip"))
    with pytest.raises(FileApiResponseError, match="cannot be decoded"):
        make_files(fault_server.url).read("a.csv")


@pytest.mark.parametrize("value", ["²", "¹⁰"])
def test_non_ascii_digits_in_retry_after_are_ignored(
    make_files: MakeFiles, fault_server: Any, value: str
) -> None:
    """``'²'.isdigit()`` is true and ``float('²')`` raises: the header is ignored, not a crash."""
    fault_server.script = sequence(
        fault_server.Reply(503, {"retry-after": value}), fault_server.json(LISTING)
    )
    assert make_files(fault_server.url).list()[0]["id"] == "a.csv"


def test_truncated_body(make_files: MakeFiles, fault_server: Any) -> None:
    fault_server.script = sequence(fault_server.Reply(body=b"y" * 1000, mode="truncate"))
    with within(15), pytest.raises(FileApiResponseError, match="truncated after 500 bytes"):
        make_files(fault_server.url).read("a.csv")


def test_redirect_to_another_origin_is_refused(
    make_files: MakeFiles, fault_server: Any, other_fault_server: Any, token: str
) -> None:
    other_fault_server.script = sequence(other_fault_server.json(LISTING))
    location = f"{other_fault_server.url}/api/files"
    fault_server.script = sequence(fault_server.Reply(302, {"location": location}))
    with within(15), pytest.raises(FileApiRedirectError) as info:
        make_files(fault_server.url).list()
    assert "another origin (http://127.0.0.1)" in str(info.value)
    assert other_fault_server.requests == []  # the token never went there
    assert len(fault_server.requests) == 1
    assert_no_token(info.value, token)


def test_same_origin_redirect_is_followed_with_the_token(
    make_files: MakeFiles, fault_server: Any, token: str
) -> None:
    replies = {
        "/api/files/a.csv/content": fault_server.Reply(307, {"location": "/storage/a.csv"}),
        "/storage/a.csv": fault_server.Reply(200, {"content-type": "text/csv"}, b"a\n1\n"),
    }
    fault_server.script = lambda target, headers: replies[target]
    with within(15):
        assert make_files(fault_server.url).read("a.csv") == b"a\n1\n"
    assert fault_server.paths() == ["/api/files/a.csv/content", "/storage/a.csv"]
    assert fault_server.requests[1][1]["authorization"] == f"Bearer {token}"


def test_redirect_loop_is_bounded(make_files: MakeFiles, fault_server: Any) -> None:
    fault_server.script = sequence(fault_server.Reply(302, {"location": "/api/files"}))
    with within(15), pytest.raises(FileApiRedirectError, match="more than 5 times"):
        make_files(fault_server.url).list()
    assert len(fault_server.requests) == 6


def test_connection_refused_is_retried_then_reported(make_files: MakeFiles, token: str) -> None:
    with socket.socket() as sock:
        # Bound and never listening: connections are refused, and no other process can take
        # the port meanwhile (as it could once the socket was closed).
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
        with within(15), pytest.raises(FileApiConnectionError) as info:
            make_files(f"http://127.0.0.1:{port}", max_attempts=3).list()
    assert "after 3 attempt(s)" in str(info.value)
    assert isinstance(info.value, ConnectionError)
    assert_no_token(info.value, token)


def test_dropped_connection_then_success_is_retried(make_files: MakeFiles, fault_server: Any) -> None:
    fault_server.script = sequence(fault_server.Reply(mode="close"), fault_server.json(LISTING))
    with within(15):
        assert make_files(fault_server.url).list()
    assert len(fault_server.requests) == 2


def test_429_without_deadline_beyond_max_retry_after(make_files: MakeFiles, fault_server: Any) -> None:
    fault_server.script = sequence(fault_server.json({}, 429, {"retry-after": "120"}))
    with (
        within(30),
        pytest.raises(FileApiStatusError, match=r"retry after 120 s, more than max_retry_after_s=60"),
    ):
        make_files(fault_server.url).list()
    assert len(fault_server.requests) == 1


def test_no_retry_once_the_backoff_would_pass_the_deadline(make_files: MakeFiles, fault_server: Any) -> None:
    fault_server.script = sequence(fault_server.json({}, 503))
    files = make_files(
        fault_server.url, deadline=Deadline.after(0.5), backoff_initial_s=2.0, backoff_max_s=2.0
    )
    with within(15), pytest.raises(FileApiStatusError, match=r"503 X to GET /api/files after 1 attempt"):
        files.list()
    assert len(fault_server.requests) == 1


def test_body_cap_comes_from_the_environment() -> None:
    settings = Settings.from_env(
        {"ANALYSIS_BACKEND_URL": "http://127.0.0.1:1", "ANALYSIS_FILES_MAX_BYTES": "1234"}
    )
    assert Files(settings=settings).limits.max_body_bytes == 1234
    assert Files(settings=Settings.from_env({})).limits.max_body_bytes == 100 * 1024 * 1024
    with pytest.raises(ValueError, match="ANALYSIS_FILES_MAX_BYTES must be a positive integer"):
        Settings.from_env({"ANALYSIS_FILES_MAX_BYTES": "lots"})
