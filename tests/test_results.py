"""The one JSON encoding: every type in README's table, RFC 8259 validity, and the size limit."""

from __future__ import annotations

import datetime as dt
import enum
import json
import uuid
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import numpy as np
import pandas as pd
import polars as pl
import pyarrow as pa
import pytest

from analysis.duck import Duck
from analysis.errors import ResultNotSerializableError, ResultTooLargeError
from analysis.results import encode_result


def strict_loads(data: bytes) -> Any:
    """Parse as RFC 8259 JSON: bare NaN/Infinity are errors."""

    def refuse(token: str) -> None:
        raise ValueError(f"not RFC 8259 JSON: {token}")

    return json.loads(data, parse_constant=refuse)


class Color(enum.Enum):
    RED = "red"


@dataclass
class Point:
    x: int
    y: int


UTC = dt.UTC
CASES: list[tuple[str, Any, str]] = [
    ("none", None, "null"),
    ("bool", True, "true"),
    ("int", 42, "42"),
    ("int beyond 2^53", 2**53 + 1, "9007199254740993"),
    ("int beyond 2^64", -(2**70), "-1180591620717411303424"),
    ("float", 1.5, "1.5"),
    ("nan", float("nan"), "null"),
    ("inf", float("inf"), "null"),
    ("-inf", float("-inf"), "null"),
    ("decimal", Decimal("12.50"), "12.50"),
    ("decimal nan", Decimal("NaN"), "null"),
    ("str", "zoë", '"zoë"'),
    ("bytes", b"\x00\xffab", '"AP9hYg=="'),
    ("date", dt.date(2024, 3, 1), '"2024-03-01"'),
    ("datetime naive", dt.datetime(2024, 3, 1, 12, 30), '"2024-03-01T12:30:00"'),
    ("datetime aware", dt.datetime(2024, 3, 1, 12, 30, tzinfo=UTC), '"2024-03-01T12:30:00+00:00"'),
    (
        "datetime offset",
        dt.datetime(2024, 3, 1, 12, tzinfo=dt.timezone(dt.timedelta(hours=2))),
        '"2024-03-01T12:00:00+02:00"',
    ),
    ("time", dt.time(8, 15, 0, 500), '"08:15:00.000500"'),
    ("timedelta", dt.timedelta(days=1, hours=2, seconds=3.5), '"P1DT2H3.5S"'),
    ("negative timedelta", -dt.timedelta(minutes=90), '"-PT1H30M"'),
    ("uuid", uuid.UUID(int=1), '"00000000-0000-0000-0000-000000000001"'),
    ("tuple", (1, "a"), '[1,"a"]'),
    ("set", {3}, "[3]"),
    ("dict with int keys", {1: "a"}, '{"1":"a"}'),
    ("enum", Color.RED, '"red"'),
    ("dataclass", Point(1, 2), '{"x":1,"y":2}'),
    ("numpy int", np.int64(7), "7"),
    ("numpy float nan", np.float64("nan"), "null"),
    ("numpy bool", np.bool_(False), "false"),
    ("numpy array", np.array([[1.0, np.nan], [np.inf, 2.0]]), "[[1.0,null],[null,2.0]]"),
    ("numpy datetime64", np.datetime64("2024-03-01T10:00"), '"2024-03-01T10:00:00"'),
    ("numpy object array", np.array(["a", None], dtype=object), '["a",null]'),
    ("pandas Timestamp", pd.Timestamp("2024-03-01 10:00:00.000000001"), '"2024-03-01T10:00:00.000000001"'),
    ("pandas Timestamp tz", pd.Timestamp("2024-03-01 10:00", tz="UTC"), '"2024-03-01T10:00:00+00:00"'),
    ("pandas NaT", pd.NaT, "null"),
    ("pandas NA", pd.NA, "null"),
    ("pandas Timedelta", pd.Timedelta(hours=1), '"PT1H"'),
    ("numpy timedelta64", np.timedelta64(90, "m"), '"PT1H30M"'),
    ("numpy NaT", np.timedelta64("NaT"), "null"),
    ("pandas DataFrame", pd.DataFrame({"a": [1, 2], "b": ["x", None]}), '[{"a":1,"b":"x"},{"a":2,"b":null}]'),
    ("pandas Series", pd.Series([1.0, None]), "[1.0,null]"),
    ("polars DataFrame", pl.DataFrame({"a": [1, None]}), '[{"a":1},{"a":null}]'),
    ("pyarrow Table", pa.table({"a": [1, None]}), '[{"a":1},{"a":null}]'),
]


@pytest.mark.parametrize(("value", "expected"), [(v, e) for _, v, e in CASES], ids=[n for n, _, _ in CASES])
def test_type_table(value: Any, expected: str) -> None:
    encoded = encode_result(value)
    assert encoded.decode() == expected
    strict_loads(encoded)


DUCKDB_CASES = [
    ("DATE '2024-03-01'", '"2024-03-01"'),
    ("TIMESTAMP '2024-03-01 10:00:00'", '"2024-03-01T10:00:00"'),
    ("TIMESTAMPTZ '2024-03-01 10:00:00+02'", '"2024-03-01T08:00:00+00:00"'),
    ("TIME '10:00:01'", '"10:00:01"'),
    ("1.50::DECIMAL(10,2)", "1.50"),
    ("170141183460469231731687303715884105727::HUGEINT", "170141183460469231731687303715884105727"),
    ("INTERVAL 1 MONTH + INTERVAL 36 HOUR", '"P1MT36H"'),
    ("[1, 2, NULL]", "[1,2,null]"),
    ("{'a': 1, 'b': [true]}", '{"a":1,"b":[true]}'),
    ("MAP(['k'], [2])", '{"k":2}'),
    ("'00000000-0000-0000-0000-000000000001'::UUID", '"00000000-0000-0000-0000-000000000001"'),
    ("'ab'::BLOB", '"YWI="'),
    ("'nan'::DOUBLE", "null"),
    ("'infinity'::DOUBLE", "null"),
    ("NULL::INTEGER", "null"),
]


@pytest.mark.parametrize(("expr", "expected"), DUCKDB_CASES, ids=[e for e, _ in DUCKDB_CASES])
def test_duckdb_types(expr: str, expected: str) -> None:
    duck = Duck()
    try:
        result = duck.query(f"SELECT {expr} AS v")
        assert encode_result(result).decode() == f'[{{"v":{expected}}}]'
    finally:
        duck.close()


def test_size_limit_names_the_limit() -> None:
    assert encode_result("x" * 98, max_bytes=100) == b'"' + b"x" * 98 + b'"'
    with pytest.raises(ResultTooLargeError, match=r"101 bytes encoded, over the limit of 100 bytes"):
        encode_result("x" * 99, max_bytes=100)
    with pytest.raises(ResultTooLargeError, match=r"10 MiB \(10,485,760 bytes\)"):
        encode_result("x" * (10 * 1024 * 1024))


def test_unserializable_value_is_named_with_its_path() -> None:
    class Model:
        pass

    with pytest.raises(ResultNotSerializableError, match=r"result\['a'\]\[1\]\['m'\] is a .*Model"):
        encode_result({"a": [1, {"m": Model()}]})


def test_circular_structures_are_refused() -> None:
    loop: list[Any] = []
    loop.append(loop)
    with pytest.raises(ResultNotSerializableError, match="refers to itself"):
        encode_result(loop)
