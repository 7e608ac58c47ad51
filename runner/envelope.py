"""``JobResult``: the outcome of one job, and its JSON envelope (README, "The envelope")."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

__all__ = ["JobResult"]


@dataclass
class JobResult:
    """What a job produced; ``to_dict`` / ``to_json`` give the envelope.

    The result is kept as the JSON text the kernel encoded, so the envelope carries it
    byte for byte (exact decimals and big integers included); :attr:`result` decodes it.
    """

    success: bool
    job_id: str
    logs: list[str]
    duration_ms: int
    error: str | None = None
    error_type: str | None = None
    stack: str | None = None
    result_json: str = field(default="null", repr=False)
    trigger: str = "manual"
    #: For a table result stored as a Parquet artifact: ``{"rows", "bytes", "formats"}``, and its first rows.
    result_ref: dict[str, Any] | None = None
    result_preview: Any = None

    @property
    def result(self) -> Any:
        """The result value, decoded from its JSON (``None`` for a failure)."""
        return json.loads(self.result_json) if self.success else None

    def to_dict(self) -> dict[str, Any]:
        """The envelope as a dict."""
        if self.success:
            return {
                "success": True,
                "job_id": self.job_id,
                "result": self.result,
                **self._artifact(),
                "logs": self.logs,
                "duration_ms": self.duration_ms,
            }
        return {
            "success": False,
            "job_id": self.job_id,
            "error": self.error,
            "error_type": self.error_type,
            "stack": self.stack,
            "logs": self.logs,
            "duration_ms": self.duration_ms,
        }

    def to_json(self) -> str:
        """The envelope as RFC 8259 JSON text, the result spliced in as the kernel encoded it."""
        if not self.success:
            return json.dumps(self.to_dict(), ensure_ascii=False)
        head = json.dumps({"success": True, "job_id": self.job_id}, ensure_ascii=False)
        tail = json.dumps(
            {**self._artifact(), "logs": self.logs, "duration_ms": self.duration_ms}, ensure_ascii=False
        )
        return f'{head[:-1]}, "result": {self.result_json}, {tail[1:]}'

    def _artifact(self) -> dict[str, Any]:
        """``result_ref`` and ``result_preview`` when the result went to an artifact."""
        if self.result_ref is None:
            return {}
        return {"result_ref": self.result_ref, "result_preview": self.result_preview}
