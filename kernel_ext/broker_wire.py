"""The broker's wire format: framed messages on the Unix socket between a job's kernel and its runner.

Every message is one frame: a 1-byte kind, a 4-byte big-endian length, then that many bytes.

- ``H`` (header): one JSON object. The kernel sends only headers (one request per exchange);
  the runner answers with any number of ``{"log": line}`` headers, body frames, and one final
  header ``{"ok": true, ...}`` or ``{"ok": false, "error": {...}}`` that ends the exchange.
- ``D`` (data): a piece of a response body: an Arrow IPC stream (query results) or file bytes.

The runner reads kernel frames as untrusted input: a header longer than ``MAX_REQUEST_BYTES``,
any kind but ``H``, or JSON that is not an object is a :class:`WireError`. Query parameters
that JSON cannot carry (dates, decimals, bytes, ...) travel as tagged objects, see
:func:`encode_params` and :func:`decode_params`.
"""

from __future__ import annotations

import base64
import datetime as dt
import decimal
import math
import socket
import struct
import uuid
from collections.abc import Mapping, Sequence
from typing import Any

import orjson

__all__ = [
    "CASTS_KEY",
    "DATA",
    "HEADER",
    "MAX_REQUEST_BYTES",
    "WireError",
    "decode_params",
    "encode_params",
    "recv_frame",
    "recv_frame_head",
    "recv_header_payload",
    "send_data",
    "send_header",
]

HEADER = ord("H")
DATA = ord("D")
_HEAD = struct.Struct(">BI")
_LENGTH = struct.Struct(">I")
#: Largest request header the runner accepts from a kernel (SQL text and parameters included).
MAX_REQUEST_BYTES = 4 * 1024 * 1024
#: Schema metadata key of an ``into=`` stream: the SQL casts the kernel's DuckDB applies as it loads.
CASTS_KEY = b"analysis.casts"
#: Largest frame a kernel accepts from its runner (the runner sends body pieces of at most 1 MiB).
MAX_RESPONSE_FRAME_BYTES = 64 * 1024 * 1024
_MAX_PARAM_DEPTH = 8


class WireError(Exception):
    """The peer broke the framing: closed mid-frame, sent an oversized or malformed frame."""


def send_header(sock: socket.socket, header: Mapping[str, Any]) -> None:
    """Send one JSON header frame."""
    payload = orjson.dumps(header)
    sock.sendall(_HEAD.pack(HEADER, len(payload)) + payload)


def send_data(sock: socket.socket, data: bytes | bytearray | memoryview) -> None:
    """Send one body frame."""
    sock.sendall(_HEAD.pack(DATA, len(data)))
    sock.sendall(data)


def _recv_exact(sock: socket.socket, size: int) -> bytearray:
    buf = bytearray(size)
    view, got = memoryview(buf), 0
    while got < size:
        n = sock.recv_into(view[got:], size - got)
        if n == 0:
            raise WireError(f"the connection closed after {got} of {size} bytes of a frame")
        got += n
    return buf


def recv_frame_head(sock: socket.socket, *, max_bytes: int, headers_only: bool = False) -> tuple[int, int]:
    """Read the kind and length of the next frame, not its bytes: ``(HEADER or DATA, length)``.

    Raises
    ------
    EOFError
        The peer closed the connection between frames.
    WireError
        The frame is oversized, or of an unknown (or, with ``headers_only``, a non-header) kind.
    """
    first = sock.recv(1)
    if not first:
        raise EOFError("the peer closed the connection")
    kind = first[0]
    if kind not in (HEADER, DATA) or (headers_only and kind != HEADER):
        raise WireError(f"unexpected frame kind {kind!r} (expected a header frame, b'H')")
    (length,) = _LENGTH.unpack(_recv_exact(sock, 4))
    if length > max_bytes:
        raise WireError(f"a frame of {length} bytes is over the {max_bytes}-byte limit")
    return kind, length


def recv_header_payload(sock: socket.socket, length: int) -> dict[str, Any]:
    """Read a header frame's ``length`` bytes (after :func:`recv_frame_head`) as its JSON object."""
    payload = _recv_exact(sock, length)
    try:
        header = orjson.loads(payload)
    except orjson.JSONDecodeError as exc:
        raise WireError(f"a header frame is not valid JSON: {exc}") from None
    if not isinstance(header, dict):
        raise WireError(f"a header frame must be a JSON object, not {type(header).__name__}")
    return header


def recv_frame(sock: socket.socket, *, max_bytes: int, headers_only: bool = False) -> tuple[int, Any]:
    """Read one frame: ``(HEADER, dict)`` or ``(DATA, bytearray)``.

    Raises what :func:`recv_frame_head` raises, and :class:`WireError` for a header that is
    not a JSON object.
    """
    kind, length = recv_frame_head(sock, max_bytes=max_bytes, headers_only=headers_only)
    if kind == DATA:
        return kind, _recv_exact(sock, length)
    return kind, recv_header_payload(sock, length)


# -- query parameters -------------------------------------------------------------------------
def _encode_value(value: Any, depth: int) -> Any:
    if value is None or isinstance(value, bool | str):
        return value
    if isinstance(value, int):
        return value if -(2**63) <= value < 2**63 else {"$t": "int", "v": str(value)}
    if isinstance(value, float):
        return value if math.isfinite(value) else {"$t": "float", "v": repr(value)}
    if isinstance(value, dt.datetime):  # before date: a datetime is a date
        return {"$t": "datetime", "v": value.isoformat()}
    if isinstance(value, dt.date):
        return {"$t": "date", "v": value.isoformat()}
    if isinstance(value, dt.time):
        return {"$t": "time", "v": value.isoformat()}
    if isinstance(value, dt.timedelta):
        return {"$t": "timedelta", "v": [value.days, value.seconds, value.microseconds]}
    if isinstance(value, decimal.Decimal):
        return {"$t": "decimal", "v": str(value)}
    if isinstance(value, bytes | bytearray | memoryview):
        return {"$t": "bytes", "v": base64.b64encode(bytes(value)).decode("ascii")}
    if isinstance(value, uuid.UUID):
        return {"$t": "uuid", "v": str(value)}
    if isinstance(value, list | tuple) and depth < _MAX_PARAM_DEPTH:
        return {"$t": "list", "v": [_encode_value(v, depth + 1) for v in value]}
    raise TypeError(f"a query parameter of type {type(value).__name__} cannot be sent to the datasource")


def encode_params(params: Sequence[Any] | Mapping[str, Any] | None) -> Any:
    """``params`` as JSON data: scalars as themselves, other types as ``{"$t": type, "v": text}``."""
    if params is None:
        return None
    if isinstance(params, Mapping):
        return {"named": {str(k): _encode_value(v, 0) for k, v in params.items()}}
    if isinstance(params, str | bytes) or not isinstance(params, Sequence):
        raise TypeError(f"params must be a sequence or a mapping, not {type(params).__name__}")
    return {"positional": [_encode_value(v, 0) for v in params]}


_DECODERS: dict[str, Any] = {
    "int": int,
    "float": float,
    "datetime": dt.datetime.fromisoformat,
    "date": dt.date.fromisoformat,
    "time": dt.time.fromisoformat,
    "decimal": decimal.Decimal,
    "bytes": lambda v: base64.b64decode(v, validate=True),
    "uuid": uuid.UUID,
}


def _decode_value(value: Any, depth: int) -> Any:
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if not isinstance(value, dict) or set(value) != {"$t", "v"} or depth > _MAX_PARAM_DEPTH:
        raise WireError("a query parameter must be a JSON scalar or a {'$t', 'v'} object")
    tag, raw = value["$t"], value["v"]
    if tag == "list" and isinstance(raw, list):
        return [_decode_value(v, depth + 1) for v in raw]
    if tag == "timedelta" and isinstance(raw, list) and len(raw) == 3 and all(type(x) is int for x in raw):
        try:
            return dt.timedelta(days=raw[0], seconds=raw[1], microseconds=raw[2])
        except OverflowError:
            raise WireError("a timedelta parameter is out of range") from None
    decoder = _DECODERS.get(tag) if isinstance(tag, str) else None
    if decoder is None or not isinstance(raw, str) or len(raw) > MAX_REQUEST_BYTES:
        raise WireError(f"a query parameter has an unknown type tag {str(tag)[:40]!r}")
    try:
        return decoder(raw)
    except (ValueError, ArithmeticError, TypeError):
        raise WireError(f"a {tag} query parameter has an invalid value") from None


def decode_params(data: Any) -> Sequence[Any] | Mapping[str, Any] | None:
    """The parameters :func:`encode_params` encoded; :class:`WireError` on anything else."""
    if data is None:
        return None
    if isinstance(data, dict) and len(data) == 1:
        if isinstance(data.get("positional"), list):
            return [_decode_value(v, 0) for v in data["positional"]]
        if isinstance(data.get("named"), dict):
            return {k: _decode_value(v, 0) for k, v in data["named"].items()}
    raise WireError("params must be null, {'positional': [...]} or {'named': {...}}")


# -- errors -----------------------------------------------------------------------------------
def _error_classes() -> dict[str, type[Exception]]:
    from analysis import errors
    from analysis.files import _errors as file_errors
    from analysis.sources.secrets import SecretKeyError

    classes: dict[str, type[Exception]] = {"SecretKeyError": SecretKeyError}
    for module in (errors, file_errors):
        for name in module.__all__:
            cls = getattr(module, name)
            if isinstance(cls, type) and issubclass(cls, errors.AnalysisError):
                classes[name] = cls
    return classes


def error_to_wire(exc: Exception) -> dict[str, Any]:
    """An ``analysis`` error as JSON data: its class name, message and scalar fields."""
    message = getattr(exc, "message", None) or str(exc)
    fields = {
        k: v
        for k, v in vars(exc).items()
        if k != "message" and (v is None or isinstance(v, bool | int | float | str))
    }
    return {"class": type(exc).__name__, "message": str(message), "fields": fields}


def error_from_wire(data: Any) -> Exception:
    """The exception :func:`error_to_wire` described (an ``AnalysisError`` when the class is unknown)."""
    from analysis.errors import AnalysisError

    if not isinstance(data, dict) or not isinstance(data.get("message"), str):
        return AnalysisError("The data broker answered with a malformed error.")
    cls = _error_classes().get(str(data.get("class")), AnalysisError)
    error = cls.__new__(cls)
    AnalysisError.__init__(error, data["message"])  # type: ignore[arg-type]
    fields = data.get("fields")
    if isinstance(fields, dict):
        error.__dict__.update({k: v for k, v in fields.items() if k != "message"})
    return error
