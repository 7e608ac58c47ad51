"""Parameters as data: ``KEY=VALUE`` assignments and ids checked before anything is touched."""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from typing import Any

from analysis.errors import InvalidParametersError

__all__ = ["ID_PATTERN", "check_id", "parse_assignments"]

#: Project and analysis ids (README, "Headless: the runner").
ID_PATTERN = re.compile(r"[A-Za-z0-9_-]{1,64}")


def check_id(value: str, what: str) -> str:
    """Return ``value`` if it is a valid id, else raise ``ValueError`` naming ``what``."""
    if not isinstance(value, str) or not ID_PATTERN.fullmatch(value):
        raise ValueError(f"{what} {value!r} is invalid: use 1-64 characters from A-Z, a-z, 0-9, '_' and '-'.")
    return value


def _not_json(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def parse_value(text: str) -> Any:
    """A parameter value: JSON where ``text`` is valid JSON (``NaN`` is not), else the string itself."""
    try:
        return json.loads(text, parse_constant=_not_json)
    except ValueError:
        return text


def parse_assignments(items: Iterable[str]) -> dict[str, Any]:
    """``["a=1", "b=x"]`` -> ``{"a": 1, "b": "x"}``; raises ``InvalidParametersError``."""
    out: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise InvalidParametersError(f"Parameter {item!r} is not of the form KEY=VALUE.")
        out[key] = parse_value(value)
    return out
