"""One JSON encoding for results, the same in a notebook and headless, with the size limit.

``encode_result`` turns an analysis's return value into RFC 8259 JSON bytes (never a bare
``NaN`` or ``Infinity``) and enforces ``max_result_bytes``. The mapping of every type is the
table in README.md ("How values become JSON"); keep the two in step.
"""

from __future__ import annotations

import base64
import dataclasses
import datetime as dt
import decimal
from collections.abc import Mapping
from typing import Any

import orjson

from analysis.errors import ResultNotSerializableError, ResultTooLargeError

__all__ = ["DEFAULT_MAX_RESULT_BYTES", "OUTCOME_MIME", "encode_result", "format_bytes", "to_json_fragment"]

#: The MIME type of the one message that carries a job's outcome from the kernel to the runner.
OUTCOME_MIME = "application/vnd.analysis.outcome+json"

#: Encoded results are limited (README, "The envelope") to 10 MiB unless a job says otherwise.
DEFAULT_MAX_RESULT_BYTES = 10 * 1024 * 1024

_OPTIONS = orjson.OPT_SERIALIZE_NUMPY | orjson.OPT_NON_STR_KEYS
_INT64 = 2**63


def format_bytes(n: int) -> str:
    """``10485760`` -> ``'10 MiB (10,485,760 bytes)'``: a size for error messages."""
    size, unit = float(n), "bytes"
    for unit_name in ("KiB", "MiB", "GiB"):
        if size < 1024:
            break
        size, unit = size / 1024, unit_name
    if unit == "bytes":
        return f"{n:,} bytes"
    return f"{size:.3g} {unit} ({n:,} bytes)"


def _duration(days: int, seconds: float, months: int = 0) -> str:
    """ISO 8601 duration: ``P1M2DT3H4M5.5S``; ``PT0S`` when zero; ``-PT1H`` when wholly negative.

    A duration whose parts have mixed signs (possible for intervals) keeps a sign on each part.
    """
    if (months, days, seconds) != (0, 0, 0) and months <= 0 and days <= 0 and seconds <= 0:
        return "-" + _duration(-days, -seconds, -months)
    out = "P"
    if months:
        out += f"{months}M"
    if days:
        out += f"{days}D"
    if seconds:
        sign = "-" if seconds < 0 else ""
        rest = abs(seconds)
        hours, rest = divmod(rest, 3600)
        minutes, rest = divmod(rest, 60)
        out += "T"
        if hours:
            out += f"{sign}{int(hours)}H"
        if minutes:
            out += f"{sign}{int(minutes)}M"
        if rest:
            text = f"{rest:.9f}".rstrip("0").rstrip(".")
            out += f"{sign}{text}S"
    return out if out != "P" else "PT0S"


def _timedelta(value: dt.timedelta) -> str:
    if value < dt.timedelta(0):  # Python normalises -90 min to days=-1, seconds=81000
        return "-" + _timedelta(-value)
    return _duration(value.days, value.seconds + value.microseconds / 1e6)


def _default(value: Any) -> Any:
    """orjson's fallback: every type orjson does not encode natively."""
    if isinstance(value, decimal.Decimal):
        return orjson.Fragment(str(value)) if value.is_finite() else None
    if isinstance(value, bytes | bytearray | memoryview):
        return base64.b64encode(bytes(value)).decode("ascii")
    module = type(value).__module__.split(".")[0]
    name = type(value).__name__
    if module == "pandas" and name in ("NaTType", "NAType"):  # NaT is a datetime subclass
        return None
    if isinstance(value, dt.datetime):  # subclasses, e.g. pandas.Timestamp
        return value.isoformat()
    if isinstance(value, dt.timedelta):  # and pandas.Timedelta
        return _timedelta(value)
    if isinstance(value, set | frozenset):
        return list(value)
    if hasattr(value, "__json__"):  # e.g. QueryResult -> its rows
        return value.__json__()
    if name == "MonthDayNano":  # pyarrow's interval scalar, a tuple subclass
        return _duration(value.days, value.nanoseconds / 1e9, value.months)
    if isinstance(value, tuple):  # namedtuples and other tuple subclasses: arrays, like tuples
        return list(value)
    if module == "pyarrow":
        if hasattr(value, "to_pylist"):
            return (
                value.to_pylist(maps_as_pydicts="lossy")
                if name in ("Table", "RecordBatch")
                else value.to_pylist()
            )
        if hasattr(value, "as_py"):
            return value.as_py()
    if module == "numpy":
        if name == "ndarray":
            return value.tolist()
        if name == "timedelta64":
            import numpy as np

            return None if np.isnat(value) else _timedelta(value.astype("timedelta64[us]").item())
        if hasattr(value, "item"):
            return value.item()
    if module == "pandas":
        if name == "DataFrame":
            return value.to_dict(orient="records")
        if hasattr(value, "tolist"):  # Series, Index, ExtensionArray
            return value.tolist()
    if module == "polars":
        if name == "DataFrame":
            return value.to_dicts()
        if name == "Series":
            return value.to_list()
    if isinstance(value, Mapping):
        return dict(value)
    raise TypeError(name)


def _big_ints_as_fragments(value: Any) -> Any:
    """Copy of ``value`` with ints beyond 64 bits as exact JSON number fragments (orjson refuses them)."""
    if isinstance(value, int) and not isinstance(value, bool) and not -_INT64 <= value < _INT64:
        return orjson.Fragment(str(value).encode())
    if isinstance(value, dict):
        return {k: _big_ints_as_fragments(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_big_ints_as_fragments(v) for v in value]
    return value


def _find_unserializable(value: Any, path: str, depth: int = 0) -> tuple[str, str] | None:
    """The path and type name of the first value with no JSON encoding, for the error message."""
    if depth > 200:
        return path, "a structure nested more than 200 levels deep (circular?)"
    try:
        orjson.dumps(value, default=_default, option=_OPTIONS)
        return None
    except orjson.JSONEncodeError:
        pass
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        value = dataclasses.asdict(value)
    if isinstance(value, dict):
        for key, item in value.items():
            found = _find_unserializable(item, f"{path}[{key!r}]", depth + 1)
            if found:
                return found
    elif isinstance(value, list | tuple | set | frozenset):
        for i, item in enumerate(value):
            found = _find_unserializable(item, f"{path}[{i}]", depth + 1)
            if found:
                return found
    else:
        try:
            inner = _default(value)
        except TypeError:
            return path, f"{type(value).__module__}.{type(value).__qualname__}"
        return _find_unserializable(inner, path, depth + 1)
    return path, type(value).__qualname__


def to_json_fragment(value: Any, *, what: str = "result") -> bytes:
    """``value`` as JSON bytes, without a size limit; raises ``ResultNotSerializableError``.

    ``what`` names the value in error messages (``"result"``, ``"parameters"``).
    """
    try:
        return orjson.dumps(value, default=_default, option=_OPTIONS)
    except orjson.JSONEncodeError as exc:
        if "64-bit" in str(exc):
            return to_json_fragment(_big_ints_as_fragments(value), what=what)
        subject = f"The {what} {'are' if what.endswith('s') else 'is'} not JSON-serializable"
        if "recursion" in str(exc).lower():
            raise ResultNotSerializableError(
                f"{subject}: nested more than 254 levels deep, or a value refers to itself."
            ) from None
        found = _find_unserializable(value, what)
        where, kind = found if found else (what, type(value).__qualname__)
        hint = " (return plain values, a QueryResult or a DataFrame)" if what == "result" else ""
        raise ResultNotSerializableError(
            f"{subject}: {where} is a {kind}, which has no JSON encoding{hint}."
        ) from None


def encode_result(value: Any, *, max_bytes: int | None = DEFAULT_MAX_RESULT_BYTES) -> bytes:
    """Encode ``value`` as JSON and check it against ``max_bytes`` (``None``: no limit).

    Raises
    ------
    ResultNotSerializableError
        Some value in the result has no JSON encoding; the message gives its path and type.
    ResultTooLargeError
        The encoding is larger than ``max_bytes``.
    """
    data = to_json_fragment(value)
    if max_bytes is not None and len(data) > max_bytes:
        raise ResultTooLargeError(
            f"The result is {format_bytes(len(data))} encoded, over the limit of {format_bytes(max_bytes)} "
            "(max_result_bytes); return less data, or write it to a table or file."
        )
    return data
