"""Routes of schedules: create, list, get, pause, resume, delete."""

from __future__ import annotations

import json
import time
import uuid
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from croniter import croniter
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from analysis.runner.server.errors import ApiError
from analysis.runner.server.inputs import body_id, caller, field, iso, path_id, read_json, state
from analysis.runner.server.schedules import MISSED, OVERLAP, next_run
from analysis.runner.server.versions import current_version

__all__ = ["routes"]


def _document(row: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": row["id"],
        "project_id": row["project_id"],
        "analysis_id": row["analysis_id"],
        "cron": row["cron"],
        "timezone": row["timezone"],
        "parameters": json.loads(row["parameters"]),
        "overlap": row["overlap"],
        "missed": row["missed"],
        "paused": bool(row["paused"]),
        "next_run_at": iso(row["next_run_at"]),
        "last_job_id": row["last_job_id"],
        "created_at": iso(row["created_at"]),
    }


def _schedule(request: Request) -> dict[str, Any]:
    project = path_id(request, "project_id", "Project")
    caller(request, project)
    schedule_id = path_id(request, "schedule_id", "Schedule")
    row = state(request).store.get_schedule(project, schedule_id)
    if row is None:
        raise ApiError(404, "not_found", f"Project {project!r} has no schedule {schedule_id!r}.")
    return row


def _choice(body: dict[str, Any], name: str, choices: tuple[str, ...]) -> str:
    value: str = field(body, name, str, default=choices[0])
    if value not in choices:
        raise ApiError(422, "invalid_request", f"{name} must be one of {', '.join(choices)}.")
    return value


async def create_schedule(request: Request) -> Response:
    """POST /v1/projects/{project_id}/schedules."""
    server = state(request)
    project = path_id(request, "project_id", "Project")
    caller(request, project)
    body = await read_json(request)
    analysis_id = body_id(body, "analysis_id", "Analysis id")
    cron = field(body, "cron", str, required=True)
    timezone = field(body, "timezone", str, default="UTC")
    parameters = field(body, "parameters", dict, default={})
    overlap, missed = _choice(body, "overlap", OVERLAP), _choice(body, "missed", MISSED)
    if not croniter.is_valid(cron) or len(cron) > 255:
        raise ApiError(422, "invalid_request", f"cron {cron!r} is not a valid cron expression.")
    try:
        ZoneInfo(timezone)
    except (ZoneInfoNotFoundError, ValueError):
        raise ApiError(422, "invalid_request", f"timezone {timezone!r} is not an IANA time zone.") from None
    current_version(server.store, server.root, project, analysis_id)  # 404 when there is none
    now = time.time()
    row = {
        "id": uuid.uuid4().hex, "project_id": project, "analysis_id": analysis_id, "cron": cron,
        "timezone": timezone, "parameters": json.dumps(parameters), "overlap": overlap, "missed": missed,
        "paused": False, "next_run_at": next_run(cron, timezone, now), "last_job_id": None,
        "created_at": now,
    }  # fmt: skip
    server.store.insert_schedule(row)
    return JSONResponse(_document(row), status_code=201)


async def list_schedules(request: Request) -> Response:
    """GET /v1/projects/{project_id}/schedules."""
    project = path_id(request, "project_id", "Project")
    caller(request, project)
    return JSONResponse({"schedules": [_document(r) for r in state(request).store.list_schedules(project)]})


async def get_schedule(request: Request) -> Response:
    """GET .../schedules/{schedule_id}."""
    return JSONResponse(_document(_schedule(request)))


async def pause_schedule(request: Request) -> Response:
    """POST .../schedules/{schedule_id}/pause."""
    row = _schedule(request)
    state(request).store.update_schedule(row["id"], paused=True)
    return JSONResponse(_document({**row, "paused": True}))


async def resume_schedule(request: Request) -> Response:
    """POST .../schedules/{schedule_id}/resume: runs due while paused are not made up."""
    row = _schedule(request)
    following = next_run(row["cron"], row["timezone"], time.time())
    state(request).store.update_schedule(row["id"], paused=False, next_run_at=following)
    return JSONResponse(_document({**row, "paused": False, "next_run_at": following}))


async def delete_schedule(request: Request) -> Response:
    """DELETE .../schedules/{schedule_id} (its jobs are kept)."""
    row = _schedule(request)
    state(request).store.delete_schedule(row["project_id"], row["id"])
    return Response(status_code=204)


routes = [
    Route("/v1/projects/{project_id}/schedules", create_schedule, methods=["POST"]),
    Route("/v1/projects/{project_id}/schedules", list_schedules, methods=["GET"]),
    Route("/v1/projects/{project_id}/schedules/{schedule_id}", get_schedule, methods=["GET"]),
    Route("/v1/projects/{project_id}/schedules/{schedule_id}", delete_schedule, methods=["DELETE"]),
    Route("/v1/projects/{project_id}/schedules/{schedule_id}/pause", pause_schedule, methods=["POST"]),
    Route("/v1/projects/{project_id}/schedules/{schedule_id}/resume", resume_schedule, methods=["POST"]),
]
