"""Analyses: every upload an immutable version named by its content hash; a job records its version."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.slow

V1 = "def run(ctx, parameters):\n    return 'one'\n"
V2 = "def run(ctx, parameters):\n    return 'two'\n"


def _run(http: Any, body: dict[str, Any]) -> dict[str, Any]:
    answer = http.post("/v1/projects/alpha/jobs", json={**body, "wait": 120})
    assert answer.status_code == 200, answer.text
    job: dict[str, Any] = answer.json()
    return job


def test_upload_list_fetch_and_run_a_given_version(serve: Any, root: Path) -> None:
    server = serve()
    v1, v2 = (hashlib.sha256(v.encode()).hexdigest() for v in (V1, V2))
    with server.client("alpha") as http:
        first = http.put("/v1/projects/alpha/analyses/report", json={"source": V1})
        assert first.status_code == 201 and first.json()["version"] == v1
        same = http.put("/v1/projects/alpha/analyses/report", json={"source": V1})
        assert same.status_code == 200 and same.json()["version"] == v1
        assert http.put("/v1/projects/alpha/analyses/report", json={"source": V2}).status_code == 201
        bad = http.put("/v1/projects/alpha/analyses/report", json={"source": "def run(ctx):\n    pass\n"})
        assert bad.status_code == 422 and bad.json()["error"]["type"] == "invalid_analysis"
        assert "two positional arguments" in bad.json()["error"]["message"]
        versions = http.get("/v1/projects/alpha/analyses/report/versions").json()["versions"]
        assert [v["version"] for v in versions] == [v2, v1]
        fetched = http.get(f"/v1/projects/alpha/analyses/report/versions/{v1}").json()
        assert fetched["source"] == V1 and fetched["kind"] == "py"
        listed = http.get("/v1/projects/alpha/analyses").json()["analyses"]
        assert listed == [{"analysis_id": "report", "versions": 2, "latest": versions[0]}]
        latest = _run(http, {"analysis_id": "report"})
        assert latest["envelope"]["result"] == "two" and latest["analysis_version"] == v2
        pinned = _run(http, {"analysis_id": "report", "version": v1})
        assert pinned["envelope"]["result"] == "one" and pinned["envelope"]["analysis_version"] == v1
        missing = http.post("/v1/projects/alpha/jobs", json={"analysis_id": "report", "version": "f" * 64})
        assert missing.status_code == 404
    # the invalid upload left nothing: the saved file is still v2
    assert (root / "alpha" / "analysis" / "scripts" / "report.py").read_text() == V2


def test_a_saved_file_edited_on_disk_runs_as_a_new_version(serve: Any, save: Any) -> None:
    save("alpha", "report", V1)
    server = serve()
    with server.client("alpha") as http:
        first = _run(http, {"analysis_id": "report"})
        save("alpha", "report", V2)
        second = _run(http, {"analysis_id": "report"})
        versions = http.get("/v1/projects/alpha/analyses/report/versions").json()["versions"]
    assert (first["envelope"]["result"], second["envelope"]["result"]) == ("one", "two")
    assert first["analysis_version"] != second["analysis_version"]
    assert {v["version"] for v in versions} == {first["analysis_version"], second["analysis_version"]}


def test_a_notebook_upload_runs(serve: Any) -> None:
    notebook = {
        "nbformat": 4, "nbformat_minor": 5, "metadata": {},
        "cells": [
            {"cell_type": "code", "id": "p", "metadata": {"tags": ["parameters"]}, "source": "n = 1",
             "outputs": [], "execution_count": None},
            {"cell_type": "code", "id": "r", "metadata": {}, "source": "ctx.set_result(n * 2)",
             "outputs": [], "execution_count": None},
        ],
    }  # fmt: skip
    server = serve()
    with server.client("alpha") as http:
        upload = http.put(
            "/v1/projects/alpha/analyses/nb", json={"source": json.dumps(notebook), "kind": "ipynb"}
        )
        assert upload.status_code == 201, upload.text
        job = _run(http, {"analysis_id": "nb", "parameters": {"n": 21}})
    assert job["status"] == "succeeded", job
    assert job["envelope"]["result"] == 42


def test_an_upload_whose_dependencies_do_not_resolve_is_refused(
    serve: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Declared packages are resolved at upload (offline here: an empty wheelhouse), before any run."""
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    monkeypatch.setenv("UV_OFFLINE", "1")
    monkeypatch.setenv("UV_FIND_LINKS", str(wheels))
    monkeypatch.setenv("ANALYSIS_DEPS_CACHE", str(tmp_path / "deps-cache"))
    server = serve()
    source = "# /// script\n# dependencies = ['nothing-here-pkg']\n# ///\n" + V1
    with server.client("alpha") as http:
        refused = http.put("/v1/projects/alpha/analyses/needs", json={"source": source})
        assert refused.status_code == 422, refused.text
        assert refused.json()["error"]["type"] == "dependency_error"
        assert "nothing-here-pkg" in refused.json()["error"]["message"]
        assert http.get("/v1/projects/alpha/analyses/needs/versions").status_code == 404
