"""Arrow tables to pandas DataFrames with the dtypes DuckDB's own ``.df()`` gives.

A ``QueryResult`` holds Arrow; pyarrow's ``to_pandas`` types some columns differently from
DuckDB (DATE as datetime64[ms], DECIMAL as objects, nullable integers as float64, INTERVAL as
``DateOffset`` objects). The README promises ``QueryResult.df()`` matches DuckDB, so those
columns are converted here, column-wise, after one bulk ``to_pandas``.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from typing import Any

__all__ = ["to_pandas"]

_MICROS_PER_DAY = 86_400_000_000
_DAYS_PER_MONTH = 30  # DuckDB's own conversion of an INTERVAL's months


def _intervals(column: Any) -> Any:
    """A month_day_nano_interval column as timedelta64[us], read from its buffers (no Python rows)."""
    import numpy as np

    parts = []
    layout = np.dtype([("months", "<i4"), ("days", "<i4"), ("nanos", "<i8")])
    for chunk in column.chunks:
        raw = np.frombuffer(chunk.buffers()[1], dtype=layout, count=chunk.offset + len(chunk))
        raw = raw[chunk.offset :]
        days = raw["months"].astype("int64") * _DAYS_PER_MONTH + raw["days"]
        micros = days * _MICROS_PER_DAY + raw["nanos"] // 1000
        values = micros.view("timedelta64[us]").copy()
        if chunk.null_count:
            values[chunk.is_null().to_numpy(zero_copy_only=False)] = np.timedelta64("NaT")
        parts.append(values)
    return np.concatenate(parts) if parts else np.array([], dtype="timedelta64[us]")


def _nullable_mapper() -> Any:
    import pandas as pd
    import pyarrow as pa

    return {
        pa.int8(): pd.Int8Dtype(),
        pa.int16(): pd.Int16Dtype(),
        pa.int32(): pd.Int32Dtype(),
        pa.int64(): pd.Int64Dtype(),
        pa.uint8(): pd.UInt8Dtype(),
        pa.uint16(): pd.UInt16Dtype(),
        pa.uint32(): pd.UInt32Dtype(),
        pa.uint64(): pd.UInt64Dtype(),
        pa.bool_(): pd.BooleanDtype(),
    }.get


def to_pandas(table: Any, sql_types: Sequence[str] | None = None) -> Any:
    """``table`` as a DataFrame typed as DuckDB's ``.df()`` types it.

    Parameters
    ----------
    table
        A pyarrow Table.
    sql_types
        The DuckDB types of its columns, when known (they tell UUIDs from strings).
    """
    import numpy as np
    import pyarrow as pa
    from pyarrow import types as t

    columns = list(table.columns)
    cast = False
    later: dict[int, Any] = {}
    enums: list[int] = []
    for i, field in enumerate(table.schema):
        column, kind = columns[i], field.type
        if t.is_decimal(kind):
            columns[i], cast = column.cast(pa.float64()), True
        elif t.is_date(kind):
            columns[i], cast = column.cast(pa.timestamp("us")), True
        elif kind == pa.month_day_nano_interval():
            later[i] = _intervals(column)
        elif (t.is_integer(kind) or t.is_boolean(kind)) and column.null_count:
            later[i] = column.to_pandas(types_mapper=_nullable_mapper()).array
        elif sql_types is not None and sql_types[i] == "UUID" and t.is_string(kind):
            later[i] = np.array(
                [None if v is None else uuid.UUID(v) for v in column.to_pylist()], dtype=object
            )
        elif sql_types is not None and sql_types[i].startswith("ENUM(") and t.is_dictionary(kind):
            enums.append(i)  # DuckDB's ENUMs are ordered categoricals
    if cast:
        table = pa.Table.from_arrays(columns, names=table.column_names)
    frame = table.to_pandas(maps_as_pydicts="lossy")  # MAP as dicts, as DuckDB gives them
    for i, values in later.items():
        frame.isetitem(i, values)
    for i in enums:
        frame.isetitem(i, frame.iloc[:, i].cat.as_ordered())
    return frame
