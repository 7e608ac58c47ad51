"""The result cache through real jobs: the cache is in the runner's broker, shared by the project's jobs."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import threading
from collections.abc import Callable
from pathlib import Path

from analysis.runner import JobResult, JobSpec, run_job

from .conftest import CountingPostgres

RunScript = Callable[..., JobResult]

_SCRIPT = """
def run(ctx, parameters):
    sql = "SELECT n, (SELECT counted(?)) AS c{sleep} FROM generate_series(1, {rows}) AS n"
    n = ctx.query_datasource("pg", sql, [parameters["tag"]], into="t", cache="1h").row_count
    rows = ctx.query_datasource("pg", sql, [parameters["tag"]], cache="1h").rows
    total = ctx.query("SELECT sum(n) AS s FROM t").rows[0]["s"]
    return {{"n": n, "total": total, "first": rows[0]}}
"""


def _script(rows: int = 1000, sleep_s: float = 0) -> str:
    return _SCRIPT.format(rows=rows, sleep=f", (SELECT pg_sleep({sleep_s})) AS z" if sleep_s else "")


def _cache_lines(result: JobResult) -> list[str]:
    return [line.split()[1] for line in result.logs if line.startswith("[cache]")]


def test_a_second_job_hits_what_the_first_stored(
    run_script: RunScript, sources_file: Path, counting_pg: CountingPostgres
) -> None:
    tag = counting_pg.tag()
    first = run_script(_script(), {"tag": tag}, datasources_file=sources_file)
    second = run_script(_script(), {"tag": tag}, datasources_file=sources_file)
    assert first.success and second.success, (first.to_dict(), second.to_dict())
    expected = {"n": 1000, "total": 500500, "first": {"n": 1, "c": 1}}
    assert first.result == second.result == expected
    # rows and into= are kept apart (each may take another driver path)
    assert _cache_lines(first) == ["miss", "stored", "miss", "stored"]
    assert _cache_lines(second) == ["hit", "hit"]
    assert counting_pg.calls(tag) == 2
    assert not any(tag in line for line in first.logs + second.logs)


def test_concurrent_jobs_fill_once(
    root: Path, tmp_path: Path, sources_file: Path, counting_pg: CountingPostgres
) -> None:
    tag = counting_pg.tag()
    path = tmp_path / "slow.py"
    path.write_text(textwrap.dedent(_script(100, 2)), encoding="utf-8")
    results: list[JobResult] = []

    def one() -> None:
        spec = JobSpec(source_path=path, parameters={"tag": tag}, root=root, datasources_file=sources_file)
        results.append(run_job(spec))

    threads = [threading.Thread(target=one) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert [r.success for r in results] == [True, True], [r.to_dict() for r in results]
    assert results[0].result == results[1].result
    assert counting_pg.calls(tag) == 2  # once for into=, once for rows


def test_concurrent_processes_fill_once(
    tmp_path: Path, sources_file: Path, counting_pg: CountingPostgres
) -> None:
    """Two runner processes sharing a project folder: the file lock lets one fill, the other hit."""
    tag = counting_pg.tag()
    code = textwrap.dedent(
        f"""
        from pathlib import Path
        from analysis.config import Settings
        from analysis.context import Context
        settings = Settings.from_env()
        settings = Settings(root=Path({str(tmp_path)!r}), datasources_file=Path({str(sources_file)!r}),
                            secret_key=settings.secret_key)
        ctx = Context(project_id="p1", settings=settings)
        sql = "SELECT n, (SELECT counted(?)) AS c, (SELECT pg_sleep(2)) AS z FROM generate_series(1, 5) AS n"
        print(ctx.query_datasource("pg", sql, [{tag!r}], cache="1h").row_count)
        ctx.close()
        """
    )
    procs = [
        subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, env=dict(os.environ))
        for _ in range(2)
    ]
    outs = [proc.communicate(timeout=120)[0] for proc in procs]
    assert [p.returncode for p in procs] == [0, 0] and outs == [b"5\n", b"5\n"]
    assert counting_pg.calls(tag) == 1


def test_a_job_cancelled_mid_fill_stores_nothing(
    run_script: RunScript, root: Path, sources_file: Path, counting_pg: CountingPostgres
) -> None:
    tag = counting_pg.tag()
    slow = run_script(_script(3, 60), {"tag": tag}, datasources_file=sources_file, timeout_s=8)
    assert not slow.success and slow.error_type == "timeout", slow.to_dict()
    folder = root / "default" / "analysis" / "cache"
    assert not [p for p in folder.glob("*") if not p.name.endswith(".lock")]
    after = run_script(_script(3), {"tag": tag}, datasources_file=sources_file)
    assert after.success, after.to_dict()
    assert _cache_lines(after) == ["miss", "stored", "miss", "stored"]
