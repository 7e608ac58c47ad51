"""The request and response schemas of the server's OpenAPI document (see ``openapi.py``)."""

from __future__ import annotations

from typing import Any

__all__ = ["ID", "VERSION", "component_schemas", "ref"]

ID = "^[A-Za-z0-9_-]{1,64}$"
VERSION = "^[0-9a-f]{64}$"


def ref(name: str) -> dict[str, str]:
    """A reference to one of the component schemas."""
    return {"$ref": f"#/components/schemas/{name}"}


def component_schemas() -> dict[str, Any]:
    """The ``components/schemas`` of the OpenAPI document."""
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
                "worker": {"type": "string", "nullable": True},
                "parameters": {"type": "object"},
                "created_at": time,
                "started_at": {**time, "nullable": True},
                "finished_at": {**time, "nullable": True},
                "queue_wait_ms": {"type": "integer", "nullable": True},
                "run_ms": {"type": "integer", "nullable": True},
                "error_type": {"type": "string", "nullable": True},
                "envelope": {"allOf": [ref("Envelope")], "nullable": True},
            },
        },
        "JobList": {
            "type": "object",
            "required": ["jobs", "next_cursor"],
            "properties": {
                "jobs": {"type": "array", "items": ref("Job")},
                "next_cursor": {**text, "nullable": True},
            },
        },
        "SubmitJob": {
            "type": "object",
            "required": ["analysis_id"],
            "properties": {
                "analysis_id": {"type": "string", "pattern": ID, "example": "hello"},
                "parameters": {"type": "object"},
                "version": {"type": "string", "pattern": VERSION},
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
                "version": {"type": "string", "pattern": VERSION},
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
                "analysis_id": {"type": "string", "pattern": ID, "example": "hello"},
                "cron": {"type": "string", "example": "0 3 * * *"},
                "timezone": {"type": "string", "example": "Europe/Paris"},
                "parameters": {"type": "object"},
                "overlap": {"type": "string", "enum": ["skip", "queue", "cancel_previous"]},
                "missed": {"type": "string", "enum": ["skip", "run_once"]},
            },
        },
    }
