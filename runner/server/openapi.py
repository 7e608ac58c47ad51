"""The OpenAPI 3.0 document of the server (served at ``/openapi.json``; the README lists the same routes).

Links tie the operations together (a submitted job to its get, cancel, result and events; an
uploaded version to its fetch; a schedule to its pause, resume and delete) so that stateful
testing can walk them.
"""

from __future__ import annotations

from typing import Any

__all__ = ["openapi_document"]

_ID = "^[A-Za-z0-9_-]{1,64}$"
_VERSION = "^[0-9a-f]{64}$"
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


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(schema: dict[str, Any], description: str = "OK", **extra: Any) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}, **extra}


def _path(name: str, pattern: str = _ID) -> dict[str, Any]:
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


def _schemas() -> dict[str, Any]:
    text = {"type": "string"}
    time = {"type": "string", "format": "date-time"}
    return {
        "Error": {
            "type": "object",
            "required": ["error"],
            "properties": {
                "error": {
                    "type": "object",
                    "required": ["type", "message"],
                    "properties": {"type": text, "message": text},
                }
            },
        },
        "Envelope": {
            "type": "object",
            "required": ["success", "job_id", "logs", "duration_ms"],
            "properties": {
                "success": {"type": "boolean"},
                "job_id": text,
                "result": {},
                "error": text,
                "error_type": text,
                "stack": {"type": "string", "nullable": True},
                "logs": {"type": "array", "items": text},
                "duration_ms": {"type": "integer"},
                "analysis_version": text,
                "trigger": text,
                "result_ref": {
                    "type": "object",
                    "properties": {
                        "rows": {"type": "integer"},
                        "bytes": {"type": "integer"},
                        "formats": {"type": "array"},
                    },
                },
                "result_preview": {},
            },
        },
        "Job": {
            "type": "object",
            "required": [
                "id",
                "project_id",
                "analysis_id",
                "analysis_version",
                "status",
                "trigger",
                "attempt",
            ],
            "properties": {
                "id": text,
                "project_id": text,
                "analysis_id": text,
                "analysis_version": text,
                "status": {
                    "type": "string",
                    "enum": ["queued", "running", "succeeded", "failed", "cancelled"],
                },
                "trigger": {"type": "string", "enum": ["api", "manual", "schedule"]},
                "schedule_id": {"type": "string", "nullable": True},
                "attempt": {"type": "integer", "minimum": 0},
                "parameters": {"type": "object"},
                "created_at": time,
                "started_at": {**time, "nullable": True},
                "finished_at": {**time, "nullable": True},
                "queue_wait_ms": {"type": "integer", "nullable": True},
                "run_ms": {"type": "integer", "nullable": True},
                "error_type": {"type": "string", "nullable": True},
                "envelope": {"allOf": [_ref("Envelope")], "nullable": True},
            },
        },
        "JobList": {
            "type": "object",
            "required": ["jobs", "next_cursor"],
            "properties": {
                "jobs": {"type": "array", "items": _ref("Job")},
                "next_cursor": {**text, "nullable": True},
            },
        },
        "SubmitJob": {
            "type": "object",
            "required": ["analysis_id"],
            "properties": {
                "analysis_id": {"type": "string", "pattern": _ID, "example": "hello"},
                "parameters": {"type": "object"},
                "version": {"type": "string", "pattern": _VERSION},
                "wait": {"type": "number", "minimum": 0, "maximum": 300},
                "timeout_s": {"type": "number", "exclusiveMinimum": True, "minimum": 0, "maximum": 86400},
                "trigger": {"type": "string", "enum": ["api", "manual"]},
            },
        },
        "Version": {
            "type": "object",
            "required": ["analysis_id", "version", "kind", "size_bytes", "retries", "created_at"],
            "properties": {
                "analysis_id": text,
                "version": {"type": "string", "pattern": _VERSION},
                "kind": {"type": "string", "enum": ["py", "ipynb"]},
                "size_bytes": {"type": "integer"},
                "retries": {"type": "integer"},
                "created_at": time,
                "source": text,
            },
        },
        "UploadAnalysis": {
            "type": "object",
            "required": ["source"],
            "properties": {
                "source": {"type": "string", "example": "def run(ctx, parameters):\n    return 1\n"},
                "kind": {"type": "string", "enum": ["py", "ipynb"]},
                "retries": {"type": "integer", "minimum": 0, "maximum": 10},
            },
        },
        "Schedule": {
            "type": "object",
            "required": [
                "id",
                "project_id",
                "analysis_id",
                "cron",
                "timezone",
                "overlap",
                "missed",
                "paused",
            ],
            "properties": {
                "id": text,
                "project_id": text,
                "analysis_id": text,
                "cron": text,
                "timezone": text,
                "parameters": {"type": "object"},
                "overlap": {"type": "string", "enum": ["skip", "queue", "cancel_previous"]},
                "missed": {"type": "string", "enum": ["skip", "run_once"]},
                "paused": {"type": "boolean"},
                "next_run_at": time,
                "last_job_id": {"type": "string", "nullable": True},
                "created_at": time,
            },
        },
        "CreateSchedule": {
            "type": "object",
            "required": ["analysis_id", "cron"],
            "properties": {
                "analysis_id": {"type": "string", "pattern": _ID, "example": "hello"},
                "cron": {"type": "string", "example": "0 3 * * *"},
                "timezone": {"type": "string", "example": "Europe/Paris"},
                "parameters": {"type": "object"},
                "overlap": {"type": "string", "enum": ["skip", "queue", "cancel_previous"]},
                "missed": {"type": "string", "enum": ["skip", "run_once"]},
            },
        },
    }


def openapi_document() -> dict[str, Any]:
    """The OpenAPI document of ``analysis serve``."""
    project, job, analysis = _path("project_id"), _path("job_id"), _path("analysis_id")
    job_params = {"project_id": "$request.path.project_id", "job_id": "$response.body#/id"}
    schedule_params = {"project_id": "$request.path.project_id", "schedule_id": "$response.body#/id"}
    job_links = _links(dict.fromkeys(("getJob", "cancelJob", "getJobResult", "getJobEvents"), job_params))
    job_response = _json(_ref("Job"), links=job_links)
    schedule_ok = _json(_ref("Schedule"))
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
                        "content": {"application/json": {"schema": _ref("SubmitJob")}},
                    },
                ),
                "get": _op(
                    "listJobs",
                    "Jobs of the project, newest first",
                    [
                        project,
                        _query("status", status),
                        _query("analysis_id", {"type": "string", "pattern": _ID}),
                        _query("trigger", {"type": "string", "enum": ["api", "manual", "schedule"]}),
                        _query("since", {"type": "string", "format": "date-time"}),
                        _query("until", {"type": "string", "format": "date-time"}),
                        _query("limit", {"type": "integer", "minimum": 1, "maximum": 500}),
                        _query("cursor", {"type": "string", "pattern": "^[0-9]{1,18}$"}),
                    ],
                    {"200": _json(_ref("JobList")), **_errors("404", "422")},
                ),
            },
            f"{base}/jobs/{{job_id}}": {
                "get": _op("getJob", "One job", [project, job], {"200": _json(_ref("Job")), **_errors("404")})
            },
            f"{base}/jobs/{{job_id}}/cancel": {
                "post": _op(
                    "cancelJob",
                    "Cancel a queued or running job",
                    [project, job],
                    {"200": _json(_ref("Job")), **_errors("404", "409")},
                )
            },
            f"{base}/jobs/{{job_id}}/result": {
                "get": _op(
                    "getJobResult",
                    "The result of a succeeded job: JSON, or its Parquet artifact streamed as `format`",
                    [project, job, _query("format", {"type": "string", "enum": ["parquet", "jsonl", "csv"]})],
                    {"200": _RESULT, **_errors("404", "409", "422")},
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
                        "200": _json(_ref("Version")),
                        "201": _json(
                            _ref("Version"),
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
                        "content": {"application/json": {"schema": _ref("UploadAnalysis")}},
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
                                "properties": {"versions": {"type": "array", "items": _ref("Version")}},
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
                    [project, analysis, _path("version", _VERSION)],
                    {"200": _json(_ref("Version")), **_errors("404")},
                )
            },
            f"{base}/schedules": {
                "post": _op(
                    "createSchedule",
                    "Create a cron schedule",
                    [project],
                    {
                        "201": _json(
                            _ref("Schedule"),
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
                        "content": {"application/json": {"schema": _ref("CreateSchedule")}},
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
                                "properties": {"schedules": {"type": "array", "items": _ref("Schedule")}},
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
            "schemas": _schemas(),
            "responses": {"Error": _json(_ref("Error"), "An error")},
        },
    }
