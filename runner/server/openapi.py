"""The OpenAPI 3.0 document of the server (served at ``/openapi.json``; the README lists the same routes).

Links tie the operations together (a submitted job to its get, cancel, result and events; an
uploaded version to its fetch; a schedule to its pause, resume and delete) so that stateful
testing can walk them.
"""

from __future__ import annotations

from typing import Any

from analysis.runner.server.openapi_schemas import ID, VERSION, component_schemas, ref

__all__ = ["openapi_document"]

#: One Server-Sent Event: ``event`` names it, ``data`` is its JSON.
_EVENT = {
    "type": "object",
    "required": ["event", "data"],
    "properties": {"event": {"type": "string", "enum": ["status", "log", "end"]}, "data": {"type": "string"}},
}


_BINARY = {"type": "string", "format": "binary"}
#: A result download: the JSON result, or an artifact in one of three formats.
_RESULT = {
    "description": "OK",
    "content": {
        "application/json": {"schema": {}},
        "application/vnd.apache.parquet": {"schema": _BINARY},
        "application/x-ndjson": {"schema": _BINARY},
        "text/csv": {"schema": _BINARY},
    },
}


def _json(schema: dict[str, Any], description: str = "OK", **extra: Any) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}, **extra}


def _path(name: str, pattern: str = ID) -> dict[str, Any]:
    return {"name": name, "in": "path", "required": True, "schema": {"type": "string", "pattern": pattern}}


def _query(name: str, schema: dict[str, Any]) -> dict[str, Any]:
    return {"name": name, "in": "query", "required": False, "schema": schema}


def _errors(*codes: str) -> dict[str, Any]:
    return {code: {"$ref": "#/components/responses/Error"} for code in ("401", "403", *codes)}


def _op(
    op_id: str, summary: str, params: list[Any], responses: dict[str, Any], **extra: Any
) -> dict[str, Any]:
    return {"operationId": op_id, "summary": summary, "parameters": params, "responses": responses, **extra}


def _links(targets: dict[str, dict[str, str]]) -> dict[str, Any]:
    return {name: {"operationId": name, "parameters": params} for name, params in targets.items()}


def openapi_document() -> dict[str, Any]:
    """The OpenAPI document of ``analysis serve``."""
    project, job, analysis = _path("project_id"), _path("job_id"), _path("analysis_id")
    job_params = {"project_id": "$request.path.project_id", "job_id": "$response.body#/id"}
    schedule_params = {"project_id": "$request.path.project_id", "schedule_id": "$response.body#/id"}
    job_links = _links(dict.fromkeys(("getJob", "cancelJob", "getJobResult", "getJobEvents"), job_params))
    job_response = _json(ref("Job"), links=job_links)
    schedule_ok = _json(ref("Schedule"))
    base = "/v1/projects/{project_id}"
    status = {"type": "string", "enum": ["queued", "running", "succeeded", "failed", "cancelled"]}
    health = _json({"type": "object", "properties": {"status": {"type": "string"}}})
    return {
        "openapi": "3.0.3",
        "info": {"title": "analysis serve", "version": "1"},
        "security": [{"bearer": []}],
        "paths": {
            "/healthz": {"get": _op("healthz", "The process answers", [], {"200": health}, security=[])},
            "/readyz": {
                "get": _op(
                    "readyz",
                    "Accepting jobs and the store answers",
                    [],
                    {"200": health, "503": health},
                    security=[],
                )
            },
            "/metrics": {
                "get": _op(
                    "metrics",
                    "Prometheus metrics (admin token)",
                    [],
                    {
                        "200": {
                            "description": "OK",
                            "content": {"text/plain": {"schema": {"type": "string"}}},
                        },
                        **_errors(),
                    },
                )
            },
            f"{base}/jobs": {
                "post": _op(
                    "submitJob",
                    "Submit a job (wait up to `wait` seconds for its envelope)",
                    [
                        project,
                        {
                            "name": "Idempotency-Key",
                            "in": "header",
                            "required": False,
                            "schema": {"type": "string", "minLength": 1, "maxLength": 255},
                        },
                    ],
                    {
                        "200": job_response,
                        "202": job_response,
                        **_errors("400", "404", "409", "413", "422", "429"),
                    },
                    requestBody={
                        "required": True,
                        "content": {"application/json": {"schema": ref("SubmitJob")}},
                    },
                ),
                "get": _op(
                    "listJobs",
                    "Jobs of the project, newest first",
                    [
                        project,
                        _query("status", status),
                        _query("analysis_id", {"type": "string", "pattern": ID}),
                        _query("trigger", {"type": "string", "enum": ["api", "manual", "schedule"]}),
                        _query("since", {"type": "string", "format": "date-time"}),
                        _query("until", {"type": "string", "format": "date-time"}),
                        _query("limit", {"type": "integer", "minimum": 1, "maximum": 500}),
                        _query("cursor", {"type": "string", "pattern": "^[0-9]{1,18}$"}),
                    ],
                    {"200": _json(ref("JobList")), **_errors("404", "422")},
                ),
            },
            f"{base}/jobs/{{job_id}}": {
                "get": _op("getJob", "One job", [project, job], {"200": _json(ref("Job")), **_errors("404")})
            },
            f"{base}/jobs/{{job_id}}/cancel": {
                "post": _op(
                    "cancelJob",
                    "Cancel a queued or running job",
                    [project, job],
                    {"200": _json(ref("Job")), **_errors("404", "409")},
                )
            },
            f"{base}/jobs/{{job_id}}/result": {
                "get": _op(
                    "getJobResult",
                    "The result of a succeeded job: JSON, or its Parquet artifact streamed as `format`",
                    [project, job, _query("format", {"type": "string", "enum": ["parquet", "jsonl", "csv"]})],
                    {"200": _RESULT, **_errors("404", "409", "410", "422")},
                )
            },
            f"{base}/jobs/{{job_id}}/events": {
                "get": _op(
                    "getJobEvents",
                    "Server-Sent Events: status changes and log lines, until the job is final",
                    [project, job],
                    {
                        "200": {
                            "description": "OK",
                            "content": {"text/event-stream": {"schema": _EVENT}},
                        },
                        **_errors("404"),
                    },
                )
            },
            f"{base}/analyses": {
                "get": _op(
                    "listAnalyses",
                    "The project's analyses and their newest versions",
                    [project],
                    {
                        "200": _json(
                            {
                                "type": "object",
                                "required": ["analyses"],
                                "properties": {"analyses": {"type": "array"}},
                            }
                        ),
                        **_errors("404"),
                    },
                )
            },
            f"{base}/analyses/{{analysis_id}}": {
                "put": _op(
                    "putAnalysis",
                    "Upload a new version (validated first)",
                    [project, analysis],
                    {
                        "200": _json(ref("Version")),
                        "201": _json(
                            ref("Version"),
                            links=_links(
                                {
                                    "getVersion": {
                                        "project_id": "$request.path.project_id",
                                        "analysis_id": "$request.path.analysis_id",
                                        "version": "$response.body#/version",
                                    }
                                }
                            ),
                        ),
                        **_errors("400", "404", "413", "422"),
                    },
                    requestBody={
                        "required": True,
                        "content": {"application/json": {"schema": ref("UploadAnalysis")}},
                    },
                )
            },
            f"{base}/analyses/{{analysis_id}}/versions": {
                "get": _op(
                    "listVersions",
                    "Versions of an analysis, newest first",
                    [project, analysis],
                    {
                        "200": _json(
                            {
                                "type": "object",
                                "required": ["versions"],
                                "properties": {"versions": {"type": "array", "items": ref("Version")}},
                            }
                        ),
                        **_errors("404"),
                    },
                )
            },
            f"{base}/analyses/{{analysis_id}}/versions/{{version}}": {
                "get": _op(
                    "getVersion",
                    "One version, with its source",
                    [project, analysis, _path("version", VERSION)],
                    {"200": _json(ref("Version")), **_errors("404")},
                )
            },
            f"{base}/schedules": {
                "post": _op(
                    "createSchedule",
                    "Create a cron schedule",
                    [project],
                    {
                        "201": _json(
                            ref("Schedule"),
                            links=_links(
                                dict.fromkeys(
                                    ("getSchedule", "pauseSchedule", "resumeSchedule", "deleteSchedule"),
                                    schedule_params,
                                )
                            ),
                        ),
                        **_errors("400", "404", "413", "422"),
                    },
                    requestBody={
                        "required": True,
                        "content": {"application/json": {"schema": ref("CreateSchedule")}},
                    },
                ),
                "get": _op(
                    "listSchedules",
                    "The project's schedules",
                    [project],
                    {
                        "200": _json(
                            {
                                "type": "object",
                                "required": ["schedules"],
                                "properties": {"schedules": {"type": "array", "items": ref("Schedule")}},
                            }
                        ),
                        **_errors("404"),
                    },
                ),
            },
            f"{base}/schedules/{{schedule_id}}": {
                "get": _op(
                    "getSchedule",
                    "One schedule",
                    [project, _path("schedule_id")],
                    {"200": schedule_ok, **_errors("404")},
                ),
                "delete": _op(
                    "deleteSchedule",
                    "Delete a schedule (its jobs stay)",
                    [project, _path("schedule_id")],
                    {"204": {"description": "Deleted"}, **_errors("404")},
                ),
            },
            f"{base}/schedules/{{schedule_id}}/pause": {
                "post": _op(
                    "pauseSchedule",
                    "Pause a schedule",
                    [project, _path("schedule_id")],
                    {"200": schedule_ok, **_errors("404")},
                )
            },
            f"{base}/schedules/{{schedule_id}}/resume": {
                "post": _op(
                    "resumeSchedule",
                    "Resume a schedule (missed runs are not made up)",
                    [project, _path("schedule_id")],
                    {"200": schedule_ok, **_errors("404")},
                )
            },
        },
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
            "schemas": component_schemas(),
            "responses": {"Error": _json(ref("Error"), "An error")},
        },
    }
