"""HTTP errors of the server: ``{"error": {"type", "message"}}`` with the right status."""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

__all__ = ["ApiError", "error_response", "handle_api_error", "handle_http_exception"]


class ApiError(Exception):
    """An error answered to the client.

    Parameters
    ----------
    status
        The HTTP status (400, 401, 403, 404, 409, 413, 422, 429...).
    type
        A short machine-readable name (``not_found``, ``invalid_request``...).
    message
        One sentence naming the problem.
    headers
        Extra response headers (``Retry-After``).
    """

    def __init__(self, status: int, type: str, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.type = type
        self.message = message
        self.headers = headers or {}


def error_response(status: int, type: str, message: str, headers: dict[str, str] | None = None) -> Response:
    """The JSON response of an error."""
    body = {"error": {"type": type, "message": message}}
    return JSONResponse(body, status_code=status, headers=headers)


async def handle_api_error(_request: Request, exc: Exception) -> Response:
    """Starlette handler of :class:`ApiError`."""
    assert isinstance(exc, ApiError)
    return error_response(exc.status, exc.type, exc.message, exc.headers)


_HTTP_TYPES = {404: "not_found", 405: "method_not_allowed"}


async def handle_http_exception(_request: Request, exc: Any) -> Response:
    """Starlette's own 404 and 405 in the same shape."""
    status = int(getattr(exc, "status_code", 500))
    detail = str(getattr(exc, "detail", ""))
    return error_response(
        status, _HTTP_TYPES.get(status, "http_error"), detail, getattr(exc, "headers", None)
    )
