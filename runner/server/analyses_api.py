"""Routes of analyses: upload or replace, list, list versions, fetch one version."""

from __future__ import annotations

from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from analysis.runner.server.errors import ApiError
from analysis.runner.server.inputs import caller, field, iso, path_id, read_json, state
from analysis.runner.server.versions import KINDS, VERSION_PATTERN, save_version

__all__ = ["routes"]

_MAX_RETRIES = 10


def _version_document(row: dict[str, Any]) -> dict[str, Any]:
    document = {
        "analysis_id": row["analysis_id"],
        "version": row["version"],
        "kind": row["kind"],
        "size_bytes": row["size_bytes"],
        "retries": row["retries"],
        "created_at": iso(row["created_at"]),
    }
    if "source" in row:
        document["source"] = row["source"]
    return document


async def put_analysis(request: Request) -> Response:
    """PUT /v1/projects/{project_id}/analyses/{analysis_id}: upload a new version (validated first)."""
    server = state(request)
    project = path_id(request, "project_id", "Project")
    caller(request, project)
    analysis_id = path_id(request, "analysis_id", "Analysis")
    body = await read_json(request)
    source = field(body, "source", str, required=True)
    kind = field(body, "kind", str, default="py")
    retries = field(body, "retries", int, default=0)
    if kind not in KINDS:
        raise ApiError(422, "invalid_request", "kind must be 'py' or 'ipynb'.")
    if not 0 <= retries <= _MAX_RETRIES:
        raise ApiError(422, "invalid_request", f"retries must be 0 to {_MAX_RETRIES}.")
    if "\x00" in source:
        raise ApiError(422, "invalid_analysis", "The source contains a NUL character.")
    version, created = await run_in_threadpool(  # resolving dependencies may take seconds
        save_version,
        server.store,
        server.root,
        project,
        analysis_id,
        source=source,
        kind=kind,
        retries=retries,
        resolve_dependencies=True,
    )
    return JSONResponse(_version_document(version), status_code=201 if created else 200)


async def list_analyses(request: Request) -> Response:
    """GET /v1/projects/{project_id}/analyses: each analysis with its newest version."""
    project = path_id(request, "project_id", "Project")
    caller(request, project)
    newest: dict[str, dict[str, Any]] = {}
    counts: dict[str, int] = {}
    for row in state(request).store.list_versions(project):
        newest.setdefault(row["analysis_id"], row)
        counts[row["analysis_id"]] = counts.get(row["analysis_id"], 0) + 1
    analyses = [
        {"analysis_id": name, "versions": counts[name], "latest": _version_document(row)}
        for name, row in sorted(newest.items())
    ]
    return JSONResponse({"analyses": analyses})


async def list_versions(request: Request) -> Response:
    """GET .../analyses/{analysis_id}/versions, newest first."""
    project = path_id(request, "project_id", "Project")
    caller(request, project)
    analysis_id = path_id(request, "analysis_id", "Analysis")
    rows = state(request).store.list_versions(project, analysis_id)
    if not rows:
        raise ApiError(404, "not_found", f"Project {project!r} has no analysis {analysis_id!r}.")
    return JSONResponse({"versions": [_version_document(row) for row in rows]})


async def get_version(request: Request) -> Response:
    """GET .../analyses/{analysis_id}/versions/{version}: one version with its source."""
    project = path_id(request, "project_id", "Project")
    caller(request, project)
    analysis_id = path_id(request, "analysis_id", "Analysis")
    version = str(request.path_params["version"])
    row = None
    if VERSION_PATTERN.fullmatch(version):
        row = state(request).store.get_version(project, analysis_id, version)
    if row is None:
        raise ApiError(404, "not_found", f"Analysis {analysis_id!r} has no version {version!r}.")
    return JSONResponse(_version_document(row))


routes = [
    Route("/v1/projects/{project_id}/analyses", list_analyses, methods=["GET"]),
    Route("/v1/projects/{project_id}/analyses/{analysis_id}", put_analysis, methods=["PUT"]),
    Route("/v1/projects/{project_id}/analyses/{analysis_id}/versions", list_versions, methods=["GET"]),
    Route(
        "/v1/projects/{project_id}/analyses/{analysis_id}/versions/{version}", get_version, methods=["GET"]
    ),
]
