"""Checking what a kernel asks the broker for: every request is untrusted input.

A request is one JSON object with a known ``op`` and exactly that op's fields, each of the
right type and within its size limit; anything else is a :class:`RequestError`, which the
broker answers with an error and then closes the connection.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from typing import Any

from analysis.broker_wire import WireError, decode_params
from analysis.cache_fill import MAX_TTL_S
from analysis.sources import Params

__all__ = ["FilesGet", "Names", "Query", "RequestError", "parse_request"]

_MAX_NAME = 128
_MAX_SQL = 2 * 1024 * 1024
_MAX_FILE_PARAMS = 32
_MAX_FILE_PARAM_CHARS = 4096


@functools.cache
def _file_patterns() -> tuple[re.Pattern[str], re.Pattern[str]]:
    """File API paths and file ids (imported on first use: the file client pulls in httpx)."""
    from analysis.files import FILE_ID_PATTERN

    path = re.compile(rf"/api/files(?:/search|/({FILE_ID_PATTERN.pattern})(?:/content)?)?")
    return path, FILE_ID_PATTERN


class RequestError(WireError):
    """A request the broker refuses to read (malformed, unknown, oversized)."""


@dataclass(frozen=True)
class Names:
    """The project's datasource names."""


@dataclass(frozen=True)
class Query:
    """A query on one of the project's datasources; ``into``: the result goes to a DuckDB table."""

    name: str
    sql: str
    params: Params
    into: bool
    cache_s: float | None = None


@dataclass(frozen=True)
class FilesGet:
    """One GET on the file API, under ``/api/files``."""

    path: str
    params: dict[str, str | int | float | bool]
    file_id: str | None
    cache_s: float | None = None


def _fields(request: dict[str, Any], op: str, required: set[str]) -> None:
    keys = set(request) - {"op"}
    if keys != required:
        extra, missing = sorted(keys - required), sorted(required - keys)
        detail = "; ".join(
            part
            for part in (f"unknown fields {extra}" if extra else "", f"missing {missing}" if missing else "")
            if part
        )
        raise RequestError(f"a {op!r} request has the wrong fields ({detail})")


def _text(request: dict[str, Any], key: str, limit: int) -> str:
    value = request[key]
    if not isinstance(value, str) or not value or len(value) > limit:
        raise RequestError(f"{key!r} must be a non-empty string of at most {limit} characters")
    return value


def _file_params(value: Any) -> dict[str, str | int | float | bool]:
    if not isinstance(value, dict) or len(value) > _MAX_FILE_PARAMS:
        raise RequestError(f"'params' must be an object of at most {_MAX_FILE_PARAMS} entries")
    for key, item in value.items():
        if len(key) > 100 or not isinstance(item, str | int | float | bool):
            raise RequestError("file API parameters must be short names with string or number values")
        if isinstance(item, str) and len(item) > _MAX_FILE_PARAM_CHARS:
            raise RequestError(f"a file API parameter is longer than {_MAX_FILE_PARAM_CHARS} characters")
    return value


def _cache(request: dict[str, Any]) -> float | None:
    value = request["cache"]
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value <= MAX_TTL_S:
        raise RequestError(f"'cache' must be null or a number of seconds from 0 to {int(MAX_TTL_S)}")
    return float(value)


def parse_request(request: dict[str, Any]) -> Names | Query | FilesGet:
    """The request ``request`` describes; :class:`RequestError` if it is not exactly one."""
    op = request.get("op")
    if op == "names":
        _fields(request, op, set())
        return Names()
    if op == "query":
        _fields(request, op, {"name", "sql", "params", "into", "cache"})
        if not isinstance(request["into"], bool):
            raise RequestError("'into' must be true or false")
        cache_s = request["cache"]
        if cache_s is not None and (
            isinstance(cache_s, bool) or not isinstance(cache_s, int | float) or not 0 <= cache_s <= MAX_TTL_S
        ):
            raise RequestError(f"'cache' must be null or a number of seconds from 0 to {int(MAX_TTL_S)}")
        try:
            params = decode_params(request["params"])
        except WireError as exc:
            raise RequestError(str(exc)) from None
        return Query(
            _text(request, "name", _MAX_NAME),
            _text(request, "sql", _MAX_SQL),
            params,
            request["into"],
            cache_s,
        )
    if op == "files.get":
        _fields(request, op, {"path", "params", "file_id", "cache"})
        path_pattern, file_id_pattern = _file_patterns()
        path = _text(request, "path", 200)
        match = path_pattern.fullmatch(path)
        if match is None:
            raise RequestError(
                f"{path[:80]!r} is not a file API path (/api/files, /api/files/<id>[/content])"
            )
        file_id = request["file_id"]
        if file_id is not None and (not isinstance(file_id, str) or not file_id_pattern.fullmatch(file_id)):
            raise RequestError("'file_id' must be null or a valid file id")
        cache_s = _cache(request)
        if cache_s and (file_id is None or path != f"/api/files/{file_id}/content"):
            raise RequestError("'cache' applies only to a file's content (/api/files/<id>/content)")
        return FilesGet(path, _file_params(request["params"]), file_id, cache_s)
    shown = str(op)[:40] if isinstance(op, str) else type(op).__name__
    raise RequestError(f"unknown request op {shown!r} (known: names, query, files.get)")
