"""File contents in the result cache, against the reference file server (which counts content GETs)."""

from __future__ import annotations

import asyncio
import os
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from analysis.config import Settings
from analysis.context import Context
from analysis.logs import redirect_emit
from analysis.runner import JobResult
from tests.files.conftest import UvicornThread

TOKEN = "cache-files-token-5d1e"
RunScript = Callable[..., JobResult]


class CountingFiles:
    """The reference file server over a folder; ``content_gets`` counts ``.../content`` requests."""

    def __init__(self, root: Path) -> None:
        from analysis.runner.fileserver import create_app

        self.root = root
        self.content_gets = 0
        self.content_delay_s = 0.0  # a slow backend: each content GET waits this long first
        self._app = create_app(root, token=TOKEN)

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "http" and scope["path"].endswith("/content"):
            self.content_gets += 1
            await asyncio.sleep(self.content_delay_s)
        await self._app(scope, receive, send)


@pytest.fixture
def files_server(tmp_path: Path) -> Iterator[tuple[CountingFiles, str]]:
    root = tmp_path / "files"
    root.mkdir()
    (root / "sales.csv").write_text("region,amount\nnorth,10\nsouth,7\n")
    app = CountingFiles(root)
    with UvicornThread(app) as url:
        yield app, url


def _settings(root: Path, url: str, project: str = "p1") -> Settings:
    return Settings(root=root, project_id=project, backend_url=url, backend_token=TOKEN)


def _read(
    root: Path, url: str, *, cache: object, project: str = "p1", load: bool = False
) -> tuple[Any, list[str]]:
    lines: list[str] = []
    ctx = Context(project_id=project, settings=_settings(root, url, project))
    try:
        with redirect_emit(lines.append):
            if load:
                ctx.files.load("sales.csv", "sales", cache=cache)  # type: ignore[arg-type]
                value: Any = ctx.query("SELECT sum(amount) AS s FROM sales").rows[0]["s"]
            else:
                value = ctx.files.read_text("sales.csv", cache=cache)  # type: ignore[arg-type]
    finally:
        ctx.close()
    return value, [line.split()[1] for line in lines if line.startswith("[cache]")]


def test_a_file_is_fetched_once_until_it_changes(
    tmp_path: Path, files_server: tuple[CountingFiles, str]
) -> None:
    server, url = files_server
    first, lines1 = _read(tmp_path, url, cache="1h")
    second, lines2 = _read(tmp_path, url, cache="1h")
    loaded, lines3 = _read(tmp_path, url, cache="1h", load=True)
    assert first == second == "region,amount\nnorth,10\nsouth,7\n" and loaded == 17
    assert (lines1, lines2, lines3) == (["miss", "stored"], ["hit"], ["hit"])
    assert server.content_gets == 1

    path = server.root / "sales.csv"
    path.write_text("region,amount\nnorth,10\nsouth,7\nwest,100\n")  # another size
    os.utime(path, (1_700_000_000, 1_700_000_000))  # and another modification time
    changed, lines4 = _read(tmp_path, url, cache="1h", load=True)
    assert changed == 117 and lines4 == ["changed", "miss", "stored"]
    assert server.content_gets == 2


def test_no_cache_no_sharing_across_projects_and_expiry(
    tmp_path: Path, files_server: tuple[CountingFiles, str]
) -> None:
    server, url = files_server
    _read(tmp_path, url, cache=None)
    _read(tmp_path, url, cache="1h", project="p1")
    _read(tmp_path, url, cache="1h", project="p2")
    assert server.content_gets == 3
    _, lines = _read(tmp_path, url, cache=0.001, project="p1")  # older than a millisecond by now
    assert lines == ["miss", "stored"] and server.content_gets == 4


def test_a_job_reads_a_file_through_the_brokers_cache(
    run_script: RunScript,
    root: Path,
    files_server: tuple[CountingFiles, str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    server, url = files_server
    monkeypatch.setenv("ANALYSIS_BACKEND_URL", url)
    monkeypatch.setenv("ANALYSIS_BACKEND_TOKEN", TOKEN)
    script = """
    def run(ctx, parameters):
        return ctx.files.load("sales.csv", "s", cache="15m")
    """
    results = [run_script(script) for _ in range(2)]
    assert [r.result for r in results] == [2, 2], [r.to_dict() for r in results]
    assert [[x.split()[1] for x in r.logs if x.startswith("[cache]")] for r in results] == [
        ["miss", "stored"],
        ["hit"],
    ]
    assert server.content_gets == 1
    assert list((root / "default" / "analysis" / "cache").glob("*.body"))  # in the runner's project folder


def test_concurrent_misses_fetch_a_file_once(tmp_path: Path, files_server: tuple[CountingFiles, str]) -> None:
    server, url = files_server
    server.content_delay_s = 1.0  # the first fetch is still running when the others miss
    start = threading.Barrier(3)
    results: list[tuple[Any, list[str]]] = []

    def one() -> None:
        start.wait()
        results.append(_read(tmp_path, url, cache="1h"))

    threads = [threading.Thread(target=one) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert [text for text, _ in results] == ["region,amount\nnorth,10\nsouth,7\n"] * 3
    assert sorted(lines for _, lines in results) == [["hit"], ["hit"], ["miss", "stored"]]
    assert server.content_gets == 1


def test_a_file_the_cache_cannot_keep_is_still_read(
    tmp_path: Path, files_server: tuple[CountingFiles, str]
) -> None:
    from analysis.result_cache import cache_stats

    from .test_write_failures import mounted

    server, url = files_server
    before = cache_stats("p1").snapshot()["write_failures"]
    with mounted(tmp_path / "p1" / "analysis" / "cache", "size=1m,mode=0700,ro"):
        first, lines1 = _read(tmp_path, url, cache="1h")
        second, lines2 = _read(tmp_path, url, cache="1h")
    assert first == second == "region,amount\nnorth,10\nsouth,7\n"
    assert lines1 == lines2 == ["miss", "not"]  # "[cache] not stored file sales.csv (...)"
    assert cache_stats("p1").snapshot()["write_failures"] - before == 2
    assert server.content_gets == 2
