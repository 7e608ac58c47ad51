"""The result cache's hit/miss/bytes counters on the server's /metrics, per project, over real HTTP."""

from __future__ import annotations

import re
import sqlite3
from pathlib import Path
from typing import Any

import pytest

pytestmark = [pytest.mark.slow, pytest.mark.parametrize("store_url", ["sqlite"], indirect=True)]

CACHED = """
def run(ctx, parameters):
    return ctx.query_datasource("shop", "SELECT sum(n) AS s FROM items", cache="1h").rows
"""


def _shop(root: Path, project: str) -> None:
    folder = root / project / "analysis"
    folder.mkdir(parents=True, exist_ok=True)
    with sqlite3.connect(folder / "shop.db") as db:
        db.execute("CREATE TABLE items (n INTEGER)")
        db.executemany("INSERT INTO items VALUES (?)", [(n,) for n in range(1, 101)])
    db.close()
    (folder / "datasources.toml").write_text('[shop]\nkind = "sqlite"\npath = "shop.db"\n', encoding="utf-8")


def _value(text: str, name: str, project: str) -> float:
    found = re.search(rf'^{name}\{{project="{project}"\}} (\S+)$', text, re.MULTILINE)
    assert found is not None, f"no {name} for {project} in:\n{text}"
    return float(found.group(1))


def test_cache_counters_per_project_for_admins_only(serve: Any, save: Any, root: Path) -> None:
    for project in ("alpha", "beta"):
        _shop(root, project)
        save(project, "cached", CACHED)
    server = serve()
    with server.client("alpha") as alpha, server.client("beta") as beta:
        for http, project, times in ((alpha, "alpha", 3), (beta, "beta", 1)):
            for _ in range(times):
                job = http.post(f"/v1/projects/{project}/jobs", json={"analysis_id": "cached", "wait": 120})
                assert job.status_code == 200 and job.json()["envelope"]["result"] == [{"s": 5050}], job.text
        refused = alpha.get("/metrics")
    with server.client() as admin:
        text = admin.get("/metrics").text
    assert _value(text, "analysis_cache_misses_total", "alpha") == 1
    assert _value(text, "analysis_cache_stored_total", "alpha") == 1
    assert _value(text, "analysis_cache_hits_total", "alpha") == 2
    written = _value(text, "analysis_cache_written_bytes_total", "alpha")
    assert written > 0 and _value(text, "analysis_cache_read_bytes_total", "alpha") == 2 * written
    assert _value(text, "analysis_cache_misses_total", "beta") == 1
    assert _value(text, "analysis_cache_hits_total", "beta") == 0
    # a project's token sees no project's labels: /metrics is for admins
    assert refused.status_code == 403 and "beta" not in refused.text and "analysis_cache" not in refused.text
