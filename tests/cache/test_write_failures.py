"""A cache that cannot store a result never fails the query (README: "Result cache").

The cache folder is a real file system that cannot take the entry: a 1 MiB tmpfs that a bigger
result fills midway (``ENOSPC``), or a tmpfs mounted read-only (``EROFS``; the tests run as root,
whom a directory's mode does not stop). The query returns its rows, no file of the failed entry
is left, one ``[cache] not stored`` line says why, and the failure is counted.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from analysis.logs import redirect_emit
from analysis.result_cache import cache_stats
from analysis.runner import JobResult

from .conftest import CountingPostgres
from .test_in_process import _context, _sql

RunScript = Callable[..., JobResult]
#: Rows of a result bigger than the 1 MiB file system (about 40 bytes a row as Parquet).
BIG = 200_000


@contextlib.contextmanager
def mounted(folder: Path, options: str) -> Iterator[None]:
    """A tmpfs mounted with ``options`` on ``folder`` (created), unmounted after."""
    folder.mkdir(parents=True, exist_ok=True)
    command = ["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(folder)]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        reason = f"cannot mount a tmpfs for the cache folder: {done.stderr.strip()}"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"{reason} (CI=true: a missing capability is a failure)")
        pytest.skip(reason)
    try:
        yield
    finally:
        subprocess.run(["umount", "-l", str(folder)], check=False)


@pytest.fixture(params=["full", "read-only"])
def broken_cache(request: pytest.FixtureRequest) -> Iterator[Callable[[Path], str]]:
    """Mount a cache folder (``broken_cache(folder)``): a 1 MiB tmpfs, or one mounted read-only."""
    with contextlib.ExitStack() as stack:

        def mount(folder: Path) -> str:
            full = request.param == "full"
            stack.enter_context(mounted(folder, "size=1m,mode=0700" if full else "size=1m,mode=0700,ro"))
            return "No space left on device" if full else "Read-only file system"

        yield mount


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if not p.name.endswith(".lock"))


def test_in_process_a_result_the_cache_cannot_take_still_returns(
    tmp_path: Path, sources_file: Path, counting_pg: CountingPostgres, broken_cache: Callable[[Path], str]
) -> None:
    folder = tmp_path / "p1" / "analysis" / "cache"
    why = broken_cache(folder)
    tag = counting_pg.tag()
    before = cache_stats("p1").snapshot()
    lines: list[str] = []
    with _context(tmp_path, sources_file) as ctx, redirect_emit(lines.append):
        rows = ctx.query_datasource("pg", _sql(BIG), [tag], cache="1h").row_count
        into = ctx.query_datasource("pg", _sql(BIG), [tag], into="t", cache="1h").row_count
        loaded = ctx.query("SELECT count(*) AS n, sum(n) AS s FROM t").rows[0]
        small = ctx.query_datasource("pg", _sql(3), [tag], cache="1h").rows
    assert (rows, into, loaded) == (BIG, BIG, {"n": BIG, "s": BIG * (BIG + 1) // 2})
    assert small == [{"n": i, "c": 1} for i in (1, 2, 3)]
    cache = [line for line in lines if line.startswith("[cache]")]
    failed = [line for line in cache if line.startswith("[cache] not stored")]
    assert all(why in line for line in failed), cache
    assert not any(tag in line for line in lines), "a parameter value reached the log"
    after = cache_stats("p1").snapshot()
    if "Read-only" in why:  # nothing can be written: every query is a miss that is not stored
        assert [line.split()[1] for line in cache] == ["miss", "not", "miss", "not", "miss", "not"], cache
        assert len(failed) == 3 and after["write_failures"] - before["write_failures"] == 3
        assert _leftovers(folder) == []
    else:  # the big results fill the file system midway; the small one still fits
        assert [line.split()[1] for line in cache] == ["miss", "not", "miss", "not", "miss", "stored"], cache
        assert len(failed) == 2 and after["write_failures"] - before["write_failures"] == 2
        assert len(_leftovers(folder)) == 2, "only the small entry (data and metadata) is kept"
    assert after["stored"] - before["stored"] == (0 if "Read-only" in why else 1)


_JOB = """
def run(ctx, parameters):
    sql = "SELECT n, (SELECT counted(?)) AS c FROM generate_series(1, {rows}) AS n"
    n = ctx.query_datasource("pg", sql, [parameters["tag"]], into="t", cache="1h").row_count
    m = ctx.query_datasource("pg", sql, [parameters["tag"]], cache="1h").row_count
    total = ctx.query("SELECT sum(n) AS s FROM t").rows[0]["s"]
    return {{"n": n, "m": m, "total": total}}
"""


def test_a_job_whose_broker_cannot_store_the_result_still_succeeds(
    run_script: RunScript, root: Path, sources_file: Path, counting_pg: CountingPostgres,
    broken_cache: Callable[[Path], str],
) -> None:  # fmt: skip
    folder = root / "default" / "analysis" / "cache"
    why = broken_cache(folder)
    tag = counting_pg.tag()
    result = run_script(_JOB.format(rows=BIG), {"tag": tag}, datasources_file=sources_file)
    assert result.success, result.to_dict()
    assert result.result == {"n": BIG, "m": BIG, "total": BIG * (BIG + 1) // 2}
    cache = [line for line in result.logs if line.startswith("[cache]")]
    assert [line.split()[1] for line in cache] == ["miss", "not", "miss", "not"], cache
    assert all(why in line for line in cache if line.startswith("[cache] not stored")), cache
    assert not any(tag in line for line in result.logs), "a parameter value reached the log"
    assert not any("Traceback" in line for line in result.logs), result.logs
    assert _leftovers(folder) == []


_HIT = """
def run(ctx, parameters):
    sql = "SELECT n, (SELECT counted(?)) AS c FROM generate_series(1, {rows}) AS n"
    n = ctx.query_datasource("pg", sql, [parameters["tag"]], into="t", cache="1h").row_count
    return {{"n": n, "total": ctx.query("SELECT sum(n) AS s FROM t").rows[0]["s"]}}
"""


def test_a_hit_the_job_directory_cannot_take_as_a_copy_is_streamed(
    run_script: RunScript, root: Path, sources_file: Path, counting_pg: CountingPostgres
) -> None:
    """A Parquet hit is handed to the job as a copy in its directory; a full disk there streams it."""
    tag = counting_pg.tag()
    source = _HIT.format(rows=BIG)
    first = run_script(source, {"tag": tag}, datasources_file=sources_file)
    assert first.success, first.to_dict()
    temp = root / "default" / "analysis" / "temp"  # where job directories are made
    with mounted(temp, "size=1m,mode=0700"):
        second = run_script(source, {"tag": tag}, datasources_file=sources_file)
        assert list(temp.iterdir()) == []  # the job's directory and its partial copy are gone
    assert second.success, second.to_dict()
    assert first.result == second.result == {"n": BIG, "total": BIG * (BIG + 1) // 2}
    cache = [line for line in second.logs if line.startswith("[cache]")]
    assert [line.split()[1] for line in cache] == ["hit", "streamed"], cache
    assert cache[1].endswith("(the job directory could not take a copy: No space left on device)")
    assert counting_pg.calls(tag) == 1  # the hit never reached the server


def test_an_entry_whose_metadata_does_not_fit_leaves_no_data_file(
    tmp_path: Path, sources_file: Path, counting_pg: CountingPostgres
) -> None:
    """The data file fits the disk exactly, its metadata (the commit point) does not: neither stays."""
    tag = counting_pg.tag()
    with _context(tmp_path, sources_file, project="sizing") as ctx:  # the entry's size, on a roomy disk
        ctx.query_datasource("pg", _sql(1000), [tag], cache="1h")
    (data,) = (tmp_path / "sizing" / "analysis" / "cache").glob("*.parquet")
    folder = tmp_path / "p1" / "analysis" / "cache"
    lines: list[str] = []
    with mounted(folder, "size=1m,mode=0700"):
        disk = os.statvfs(folder)
        pages = -(-data.stat().st_size // disk.f_frsize) * disk.f_frsize
        (folder / "filler").write_bytes(bytes(disk.f_bavail * disk.f_frsize - pages))
        with _context(tmp_path, sources_file) as ctx, redirect_emit(lines.append):
            rows = ctx.query_datasource("pg", _sql(1000), [tag], cache="1h").rows
        left = _leftovers(folder)
    assert len(rows) == 1000 and rows[-1] == {"n": 1000, "c": 1}
    assert left == ["filler"], "a data file without its metadata was left"
    cache = [line for line in lines if line.startswith("[cache]")]
    assert [line.split()[1] for line in cache] == ["miss", "not"], cache
    assert cache[1].endswith("(the cache could not write it: No space left on device)")
