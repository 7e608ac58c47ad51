"""Request helpers shared by the routes: the caller, the JSON body, checked fields and ids."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from starlette.requests import Request

from analysis.params import check_id
from analysis.runner.server.auth import Principal, authenticate
from analysis.runner.server.errors import ApiError

if TYPE_CHECKING:
    from analysis.runner.server.app import Server

__all__ = [
    "body_id",
    "caller",
    "field",
    "iso",
    "known_query",
    "parse_time",
    "path_id",
    "read_json",
    "state",
]


def state(request: Request) -> Server:
    """The running server (store, manager, config) behind a request."""
    server: Server = request.app.state.server
    return server


def caller(request: Request, project_id: str | None = None) -> Principal:
    """Authenticate the request and, with ``project_id``, check the token may act on that project."""
    principal = authenticate(state(request).store, request.headers.get("authorization"))
    if project_id is not None:
        principal.require_project(project_id)
    return principal


def path_id(request: Request, name: str, what: str) -> str:
    """A path parameter that must be an id (404 when it cannot name anything)."""
    value = str(request.path_params[name])
    try:
        return check_id(value, what)
    except ValueError:
        raise ApiError(
            404, "not_found", f"{what} {value!r} does not exist (ids are 1-64 of [A-Za-z0-9_-])."
        ) from None


async def read_json(request: Request) -> dict[str, Any]:
    """The body as a JSON object: 413 when too large, 400 when not JSON, 422 when not an object."""
    limit = state(request).config.max_body_bytes
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise ApiError(413, "payload_too_large", f"The request body is over {limit} bytes (max_body_bytes).")
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise ApiError(
                413, "payload_too_large", f"The request body is over {limit} bytes (max_body_bytes)."
            )
    try:
        value = json.loads(body or b"{}", parse_constant=_no_constant)
    except (ValueError, RecursionError) as exc:
        raise ApiError(400, "invalid_json", f"The request body is not valid JSON: {exc}.") from None
    if not isinstance(value, dict):
        raise ApiError(422, "invalid_request", "The request body must be a JSON object.")
    return value


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


_TYPES: dict[type, str] = {
    str: "a string",
    dict: "an object",
    int: "an integer",
    float: "a number",
    bool: "a boolean",
}


def field(body: dict[str, Any], name: str, kind: type, *, default: Any = None, required: bool = False) -> Any:
    """``body[name]`` checked to be of ``kind`` (422 naming the field otherwise; ``null`` is no value)."""
    if name not in body:
        if required:
            raise ApiError(422, "invalid_request", f"The field {name!r} is required.")
        return default
    value = body[name]
    ok = isinstance(value, kind) and not (kind in (int, float) and isinstance(value, bool))
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        ok, value = True, float(value)
    if not ok:
        raise ApiError(422, "invalid_request", f"The field {name!r} must be {_TYPES[kind]}.")
    return value


def body_id(body: dict[str, Any], name: str, what: str) -> str:
    """A required id field of the body."""
    value = field(body, name, str, required=True)
    try:
        return check_id(value, what)
    except ValueError as exc:
        raise ApiError(422, "invalid_request", str(exc)) from None


def iso(timestamp: float | None) -> str | None:
    """An epoch time as ISO 8601 UTC."""
    if timestamp is None:
        return None
    return datetime.fromtimestamp(timestamp, UTC).isoformat().replace("+00:00", "Z")


def parse_time(text: str | None, name: str) -> float | None:
    """An ISO 8601 query parameter as epoch seconds (naive times are UTC)."""
    if text is None:
        return None
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise ApiError(422, "invalid_request", f"{name} must be an ISO 8601 time, not {text!r}.") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.timestamp()


def known_query(request: Request, *names: str) -> None:
    """422 naming the first query parameter of ``request`` that is not one of ``names``."""
    for name in request.query_params:
        if name not in names:
            allowed = ", ".join(names)
            raise ApiError(
                422, "invalid_request", f"Unknown query parameter {name!r}; this route takes {allowed}."
            )
