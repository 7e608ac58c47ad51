"""Routes of jobs: submit, get, list, cancel, live events, result download."""

from __future__ import annotations

import hashlib
import json
from collections.abc import AsyncIterator
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from analysis.params import ID_PATTERN
from analysis.runner.server.downloads import FORMATS, stream_artifact
from analysis.runner.server.errors import ApiError
from analysis.runner.server.inputs import (
    body_id,
    caller,
    field,
    iso,
    known_query,
    parse_time,
    path_id,
    read_json,
    state,
)
from analysis.runner.server.manager import FINAL
from analysis.runner.server.retention import check_not_expired
from analysis.runner.server.versions import VERSION_PATTERN, current_version

__all__ = ["job_document", "routes"]

STATUSES = ("queued", "running", "succeeded", "failed", "cancelled")
TRIGGERS = ("api", "manual", "schedule")
_MAX_LIMIT = 500


def job_document(job: dict[str, Any]) -> dict[str, Any]:
    """A job as the API shows it."""
    started, finished = job["started_at"], job["finished_at"]
    return {
        "id": job["id"],
        "project_id": job["project_id"],
        "analysis_id": job["analysis_id"],
        "analysis_version": job["analysis_version"],
        "status": job["status"],
        "trigger": job["trigger"],
        "schedule_id": job["schedule_id"],
        "attempt": job["attempt"],
        "worker": job.get("worker"),
        "parameters": json.loads(job["parameters"]),
        "created_at": iso(job["created_at"]),
        "started_at": iso(started),
        "finished_at": iso(finished),
        "queue_wait_ms": None if started is None else int((started - job["created_at"]) * 1000),
        "run_ms": None if started is None or finished is None else int((finished - started) * 1000),
        "error_type": job["error_type"],
        "envelope": json.loads(job["envelope"]) if job["envelope"] else None,
    }


def _job(request: Request) -> dict[str, Any]:
    project = path_id(request, "project_id", "Project")
    caller(request, project)
    job_id = path_id(request, "job_id", "Job")
    job = state(request).store.get_job(project, job_id)
    if job is None:
        raise ApiError(404, "not_found", f"Project {project!r} has no job {job_id!r}.")
    return job


async def submit_job(request: Request) -> Response:
    """POST /v1/projects/{project_id}/jobs."""
    server = state(request)
    project = path_id(request, "project_id", "Project")
    caller(request, project)
    body = await read_json(request)
    analysis_id = body_id(body, "analysis_id", "Analysis id")
    parameters = field(body, "parameters", dict, default={})
    pinned = field(body, "version", str)
    wait_s = field(body, "wait", float, default=0.0)
    timeout_s = field(body, "timeout_s", float)
    if not 0 <= wait_s <= server.config.max_wait_s:
        raise ApiError(422, "invalid_request", f"wait must be 0 to {server.config.max_wait_s:g} seconds.")
    if timeout_s is not None and not 0 < timeout_s <= 86400:
        raise ApiError(422, "invalid_request", "timeout_s must be a positive number of seconds (max 86400).")
    trigger = field(body, "trigger", str, default="api")
    if trigger not in ("api", "manual"):
        raise ApiError(422, "invalid_request", "trigger must be 'api' or 'manual' (schedules set their own).")
    key = request.headers.get("idempotency-key")
    if key is not None and not 1 <= len(key) <= 255:
        raise ApiError(422, "invalid_request", "Idempotency-Key must be 1 to 255 characters.")
    if pinned is not None:
        version = (
            server.store.get_version(project, analysis_id, pinned)
            if VERSION_PATTERN.fullmatch(pinned)
            else None
        )
        if version is None:
            raise ApiError(404, "not_found", f"Analysis {analysis_id!r} has no version {pinned!r}.")
    else:
        version = current_version(server.store, server.root, project, analysis_id)
    request_hash = hashlib.sha256(
        json.dumps([analysis_id, parameters, pinned, timeout_s], sort_keys=True).encode()
    ).hexdigest()
    job, created = server.manager.submit(
        {
            "project_id": project, "analysis_id": analysis_id, "analysis_version": version["version"],
            "parameters": json.dumps(parameters), "trigger": trigger,
            "idempotency_key": key, "request_hash": request_hash, "max_retries": version["retries"],
            "timeout_s": timeout_s,
        }
    )  # fmt: skip
    if wait_s > 0:
        await server.manager.wait(job["id"], wait_s)
        job = server.store.get_job(project, job["id"]) or job
    status = 200 if job["status"] in FINAL or not created else 202
    return JSONResponse(job_document(job), status_code=status, headers={"Location": _location(job)})


def _location(job: dict[str, Any]) -> str:
    return f"/v1/projects/{job['project_id']}/jobs/{job['id']}"


async def get_job(request: Request) -> Response:
    """GET /v1/projects/{project_id}/jobs/{job_id}."""
    return JSONResponse(job_document(_job(request)))


async def list_jobs(request: Request) -> Response:
    """GET /v1/projects/{project_id}/jobs: newest first, filtered, with a cursor."""
    project = path_id(request, "project_id", "Project")
    caller(request, project)
    known_query(request, "status", "analysis_id", "trigger", "since", "until", "limit", "cursor")
    query = request.query_params
    status = query.get("status")
    if status is not None and status not in STATUSES:
        raise ApiError(422, "invalid_request", f"status must be one of {', '.join(STATUSES)}.")
    limit_text, cursor = query.get("limit", "50"), query.get("cursor")
    if not limit_text.isdigit() or not 1 <= int(limit_text) <= _MAX_LIMIT:
        raise ApiError(422, "invalid_request", f"limit must be an integer from 1 to {_MAX_LIMIT}.")
    if cursor is not None and not (cursor.isdigit() and len(cursor) < 19):
        raise ApiError(422, "invalid_request", "cursor must be the next_cursor of a previous page.")
    limit = int(limit_text)
    analysis_id = query.get("analysis_id")
    if analysis_id is not None and not ID_PATTERN.fullmatch(analysis_id):
        raise ApiError(422, "invalid_request", "analysis_id must be an analysis id ([A-Za-z0-9_-]{1,64}).")
    trigger = query.get("trigger")
    if trigger is not None and trigger not in TRIGGERS:
        raise ApiError(422, "invalid_request", f"trigger must be one of {', '.join(TRIGGERS)}.")
    jobs = state(request).store.list_jobs(
        project, limit=limit + 1, before_seq=int(cursor) if cursor else None, status=status,
        analysis_id=analysis_id, trigger=trigger,
        since=parse_time(query.get("since"), "since"), until=parse_time(query.get("until"), "until"),
    )  # fmt: skip
    next_cursor = str(jobs[limit - 1]["seq"]) if len(jobs) > limit else None
    return JSONResponse({"jobs": [job_document(j) for j in jobs[:limit]], "next_cursor": next_cursor})


async def cancel_job(request: Request) -> Response:
    """POST /v1/projects/{project_id}/jobs/{job_id}/cancel."""
    job = _job(request)
    await state(request).manager.cancel(job)
    done = state(request).store.get_job(job["project_id"], job["id"]) or job
    return JSONResponse(job_document(done))


async def job_result(request: Request) -> Response:
    """GET .../jobs/{job_id}/result: the result of a succeeded job (an artifact as ``format``)."""
    job = _job(request)
    known_query(request, "format")
    fmt = request.query_params.get("format")
    if fmt is not None and fmt not in FORMATS:
        raise ApiError(422, "invalid_request", f"format must be one of {', '.join(FORMATS)}.")
    if job["status"] != "succeeded":
        raise ApiError(409, "no_result", f"Job {job['id']} has no result (it is {job['status']}).")
    envelope = json.loads(job["envelope"])
    if "result_ref" in envelope:
        check_not_expired(job, state(request).config.artifact_ttl_s)
        path = state(request).manager.artifact_path(job["project_id"], job["id"])
        try:
            return stream_artifact(path, fmt or "parquet", job["id"])
        except FileNotFoundError:
            raise ApiError(404, "not_found", f"The result artifact of job {job['id']} is gone.") from None
    headers = {"Content-Disposition": f'attachment; filename="{job["id"]}.json"'}
    return JSONResponse(envelope["result"], headers=headers)


async def job_events(request: Request) -> Response:
    """GET .../jobs/{job_id}/events: Server-Sent Events until the job is final."""
    job = _job(request)

    async def stream() -> AsyncIterator[bytes]:
        async for event in state(request).manager.events(job):
            yield f"event: {event['type']}\ndata: {json.dumps(event)}\n\n".encode()

    return StreamingResponse(stream(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"})


routes = [
    Route("/v1/projects/{project_id}/jobs", submit_job, methods=["POST"]),
    Route("/v1/projects/{project_id}/jobs", list_jobs, methods=["GET"]),
    Route("/v1/projects/{project_id}/jobs/{job_id}", get_job, methods=["GET"]),
    Route("/v1/projects/{project_id}/jobs/{job_id}/cancel", cancel_job, methods=["POST"]),
    Route("/v1/projects/{project_id}/jobs/{job_id}/result", job_result, methods=["GET"]),
    Route("/v1/projects/{project_id}/jobs/{job_id}/events", job_events, methods=["GET"]),
]
