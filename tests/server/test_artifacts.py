"""Large table results as Parquet artifacts: preview and reference in the envelope, streamed downloads."""

from __future__ import annotations

import io
import json
import time
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest

pytestmark = pytest.mark.slow

TABLE = """
def run(ctx, parameters):
    return ctx.query(
        "SELECT range AS i, 'row ' || range AS s, range / 4 AS q FROM range(?)", [parameters["rows"]]
    )
"""
ROWS = """
def run(ctx, parameters):
    return [{"i": i, "name": f"n{i}"} for i in range(parameters["rows"])]
"""
TEXT = """
def run(ctx, parameters):
    return "x" * parameters["size"]
"""


def _run(http: Any, analysis_id: str, parameters: dict[str, Any]) -> dict[str, Any]:
    answer = http.post(
        "/v1/projects/alpha/jobs", json={"analysis_id": analysis_id, "parameters": parameters, "wait": 120}
    )
    assert answer.status_code == 200, answer.text
    job: dict[str, Any] = answer.json()
    return job


def test_a_large_table_becomes_a_parquet_artifact(serve: Any, save: Any, root: Path, store: Any) -> None:
    save("alpha", "table", TABLE)
    save("alpha", "rows", ROWS)
    save("alpha", "text", TEXT)
    # cold kernels: the test checks that no job directory is left, and warm kernels have theirs
    server = serve("--max-result-bytes", "100000", "--pool-size", "0")
    with server.client("alpha") as http:
        job = _run(http, "table", {"rows": 50_000})
        envelope = job["envelope"]
        assert job["status"] == "succeeded", envelope
        assert envelope["result"] is None
        assert envelope["result_ref"]["rows"] == 50_000 and envelope["result_ref"]["formats"] == [
            "parquet",
            "jsonl",
            "csv",
        ]
        assert envelope["result_preview"][:2] == [
            {"i": 0, "s": "row 0", "q": 0.0},
            {"i": 1, "s": "row 1", "q": 0.25},
        ]
        assert len(json.dumps(envelope["result_preview"])) <= 100_000
        base = f"/v1/projects/alpha/jobs/{job['id']}/result"
        parquet = http.get(base)
        assert parquet.headers["content-type"] == "application/vnd.apache.parquet"
        assert int(parquet.headers["content-length"]) == envelope["result_ref"]["bytes"]
        table = pq.read_table(io.BytesIO(parquet.content))
        assert table.num_rows == 50_000 and table.column("s")[49_999].as_py() == "row 49999"
        lines = http.get(base, params={"format": "jsonl"}).text.splitlines()
        assert len(lines) == 50_000 and json.loads(lines[-1]) == {
            "i": 49_999,
            "s": "row 49999",
            "q": 12499.75,
        }
        csv = http.get(base, params={"format": "csv"}).text.splitlines()
        assert csv[0] == '"i","s","q"' and len(csv) == 50_001
        assert http.get(base, params={"format": "xlsx"}).status_code == 422
        # a list of row dicts too
        rows = _run(http, "rows", {"rows": 20_000})
        assert rows["envelope"]["result_ref"]["rows"] == 20_000
        # anything else over the limit stays result_too_large, and no artifact is left
        text = _run(http, "text", {"size": 200_000})
        assert text["status"] == "failed" and text["error_type"] == "result_too_large"
    if store.engine.dialect.name == "sqlite":  # the server ran the jobs: artifacts are its files
        assert sorted(p.name for p in (root / "alpha" / "analysis" / "artifacts").iterdir()) == sorted(
            [f"{job['id']}.parquet", f"{rows['id']}.parquet"]
        )
    else:  # a worker ran them: artifacts travel through PostgreSQL
        assert store.get_artifact(job["id"]) is not None and store.get_artifact(rows["id"]) is not None
        assert store.get_artifact(text["id"]) is None
    assert not list(root.glob("*/analysis/temp/*"))


def test_an_artifact_over_its_limit_is_result_too_large(serve: Any, save: Any, root: Path) -> None:
    save("alpha", "table", TABLE)
    server = serve("--max-result-bytes", "10000", "--max-artifact-bytes", "20000")
    with server.client("alpha") as http:
        job = _run(http, "table", {"rows": 200_000})
    assert job["error_type"] == "result_too_large"
    assert "max_artifact_bytes" in job["envelope"]["error"]
    assert not list(root.glob("alpha/analysis/artifacts/*"))


def test_an_expired_artifact_is_deleted_and_its_download_answers_410(
    serve: Any, save: Any, root: Path, store: Any
) -> None:
    """README, "Large results": retention. The job's record stays; a download already streaming ends."""
    save("alpha", "table", TABLE)
    rows = 300_000  # JSON Lines of several MB: more than the sockets buffer, so the download is mid-way
    server = serve("--max-result-bytes", "10000", "--artifact-ttl", "120")  # sweeps every 12 s
    with server.client("alpha") as http:
        job = _run(http, "table", {"rows": rows})
        assert job["status"] == "succeeded", job
        # the server's file (over PostgreSQL: the worker's copy in the store, and the server's
        # copy of it made when a download starts)
        artifact = root / "alpha" / "analysis" / "artifacts" / f"{job['id']}.parquet"
        base = f"/v1/projects/alpha/jobs/{job['id']}/result"
        with http.stream("GET", base, params={"format": "jsonl"}) as download:
            assert download.status_code == 200
            chunks = download.iter_bytes()
            received = [next(chunks)]
            assert artifact.is_file()
            in_store = store.engine.dialect.name != "sqlite"
            assert not in_store or store.get_artifact(job["id"]) is not None
            # the job ended long ago, as far as retention can tell: its artifact is past 120 s
            assert store.update_job(job["id"], finished_at=time.time() - 3600)
            give_up = time.monotonic() + 120
            while artifact.exists() or (in_store and store.get_artifact(job["id"]) is not None):
                assert time.monotonic() < give_up, "the expired artifact was not deleted"
                time.sleep(0.2)
            expired = http.get(base)
            assert expired.status_code == 410, expired.text
            error = expired.json()["error"]
            assert error["type"] == "result_expired" and "--artifact-ttl" in error["message"]
            assert job["id"] in error["message"]
            record = http.get(f"/v1/projects/alpha/jobs/{job['id']}").json()
            assert record["status"] == "succeeded" and record["envelope"]["result_ref"]["rows"] == rows
            received += list(chunks)  # the download that was under way reads on to the end
        lines = b"".join(received).decode().splitlines()
        assert len(lines) == rows and json.loads(lines[-1])["s"] == f"row {rows - 1}"
