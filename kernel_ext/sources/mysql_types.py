"""How MySQL and MariaDB columns become Arrow, the same on every path of the ``mysql`` kind.

A column's DuckDB type depends only on its server type, never on its values nor on which path
read it (README, "Database types"): the driver's rows (``query``, and ``into=`` with values
that only the driver can bind), arrow-odbc and connectorx. Each path's Arrow goes through one
function here: :func:`column` builds the rows path's arrays, :func:`typed` and
:func:`typed_stream` retype what the columnar readers give.

Column descriptions are mysql-connector's tuples as :func:`describing_protocol` makes them:
``(name, type_code, None, length, None, decimals, null_ok, flags, charset)``.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator, Sequence
from typing import Any

import pyarrow as pa

__all__ = [
    "ODBC_MAX_TEXT_BYTES",
    "column",
    "converter",
    "decimal_precision",
    "describing_protocol",
    "odbc_safe",
    "typed",
    "typed_stream",
]

# MySQL field type codes (mysql.connector.constants.FieldType) -> Arrow types.
_ARROW_TYPES: dict[int, pa.DataType] = {
    1: pa.int8(),  # TINY
    2: pa.int16(),  # SHORT
    3: pa.int32(),  # LONG
    4: pa.float32(),  # FLOAT
    5: pa.float64(),  # DOUBLE
    8: pa.int64(),  # LONGLONG
    9: pa.int32(),  # INT24
    10: pa.date32(),  # DATE
    11: pa.time64("us"),  # TIME
    12: pa.timestamp("us"),  # DATETIME
    7: pa.timestamp("us", tz="UTC"),  # TIMESTAMP (the session runs in UTC)
    13: pa.int16(),  # YEAR
    16: pa.uint64(),  # BIT(n): an unsigned integer of up to 64 bits
    245: pa.json_(),  # JSON (MySQL; MariaDB sends LONGTEXT)
}
#: The unsigned integer types, as connectorx reads them.
_UNSIGNED_TYPES: dict[int, pa.DataType] = {
    1: pa.uint8(),
    2: pa.uint16(),
    9: pa.uint32(),
    3: pa.uint32(),
    8: pa.uint64(),
}
_BINARY_CHARSET = 63
_UNSIGNED_FLAG = 32
_BIT = 16
_BLOB_TYPES = {15, 249, 250, 251, 252, 253, 254}  # VARCHAR, TINY/MEDIUM/LONG BLOB, BLOB, VAR_STRING, STRING


def decimal_precision(col: Sequence[Any]) -> int | None:
    """DECIMAL precision from a column description made by :func:`describing_protocol`."""
    length, scale, flags = col[3], col[5], col[7] if len(col) > 7 else 0
    if col[1] not in (0, 246) or length is None:
        return None
    return int(length) - (1 if scale else 0) - (0 if flags & _UNSIGNED_FLAG else 1)


def describing_protocol() -> type[Any]:
    """mysql-connector's protocol, keeping each column's length and decimals in its description.

    It also decodes YEAR in binary (prepared-statement) results, which the driver reads as a
    length-prefixed string and so loses its place in the row, and negative TIME values.
    """
    import struct

    from mysql.connector import utils
    from mysql.connector.protocol import MySQLProtocol

    class _Protocol(MySQLProtocol):
        def _parse_binary_values(self, fields: Any, packet: bytes, charset: str = "utf-8") -> Any:
            # YEAR travels as a 2-byte integer, which the pure-Python decoder does not know
            fields = [(f[0], 2, *f[2:]) if f[1] == 13 else f for f in fields]
            return super()._parse_binary_values(fields, packet, charset)

        @staticmethod
        def _parse_binary_time(packet: bytes) -> Any:
            # the driver applies a negative sign to the days only, so -01:00 comes back as 01:00
            length = packet[0]
            if not length:
                return packet[1:], dt.timedelta()
            data = packet[1 : length + 1]
            value = dt.timedelta(
                days=int.from_bytes(data[1:5], "little"), hours=data[5], minutes=data[6], seconds=data[7],
                microseconds=int.from_bytes(data[8:12], "little") if length > 8 else 0,
            )  # fmt: skip
            return packet[length + 1 :], -value if data[0] == 1 else value

        @staticmethod
        def parse_column(packet: bytes, encoding: str = "utf-8") -> Any:
            desc = MySQLProtocol.parse_column(packet, encoding)
            rest = bytes(packet[4:])
            for _ in range(6):  # catalog, db, table, org_table, name, org_name
                rest, _value = utils.read_lc_string(rest)
            _, length, _, _, decimals = struct.unpack("<xHIBHBxx", rest)
            return (desc[0], desc[1], None, length, None, decimals, *desc[6:])

    return _Protocol


def converter() -> type[Any]:
    """mysql-connector's converter, giving a SET as the server's text (``'a,b'``) as the readers do."""
    from mysql.connector.conversion import MySQLConverter

    class _Converter(MySQLConverter):
        def _set_to_python(self, value: bytes, dsc: Any = None) -> Any:
            return value.decode(self.charset or "utf-8")

    return _Converter


def _bits(array: pa.Array) -> pa.Array:
    """BIT(n) values (up to 8 big-endian bytes each) as UBIGINT, column-wise."""
    import numpy as np

    array = array.cast(pa.large_binary())
    valid = np.asarray(array.is_valid().to_numpy(zero_copy_only=False), dtype=bool)
    offsets = np.frombuffer(array.buffers()[1], dtype=np.int64)[array.offset : array.offset + len(array) + 1]
    data = np.frombuffer(array.buffers()[2] or b"", dtype=np.uint8)
    lengths = np.diff(offsets)
    out = np.zeros(len(array), dtype=np.uint64)
    for j in range(int(lengths.max(initial=0))):
        rows = lengths > j
        out[rows] = (out[rows] << np.uint64(8)) | data[offsets[:-1][rows] + j].astype(np.uint64)
    return pa.array(out, mask=~valid)


def column(values: list[Any], col: Sequence[Any]) -> pa.Array:
    """The Arrow array of one column of driver rows, typed after its description ``col``."""
    type_code = col[1]
    flags, charset = (col[7], col[8]) if len(col) > 8 else (0, 0)
    typ = _ARROW_TYPES.get(type_code)
    if type_code in (0, 246):
        precision = decimal_precision(col)
        if precision is not None and 0 < precision <= 38:
            typ = pa.decimal128(precision, int(col[5] or 0))
    if type_code in _UNSIGNED_TYPES and flags & _UNSIGNED_FLAG:
        typ = _UNSIGNED_TYPES[type_code]
    if type_code in _BLOB_TYPES:
        typ = pa.binary() if charset == _BINARY_CHARSET else pa.string()
        if typ == pa.string():
            try:
                values = [v.decode("utf-8") if isinstance(v, bytes | bytearray) else v for v in values]
            except UnicodeDecodeError:  # bytes bound to a text column: keep them as bytes
                typ = pa.binary()
    if type_code == _BIT:  # an int from the text protocol, bytes from the binary one
        values = [int.from_bytes(v, "big") if isinstance(v, bytes | bytearray) else v for v in values]
    if type_code == 11:  # TIME comes back as a timedelta; TIME outside a day stays a duration
        if all(v is None or 0 <= v.total_seconds() < 86400 for v in values):
            values = [None if v is None else (v.seconds * 1_000_000 + v.microseconds) for v in values]
            return pa.array(values, type=pa.int64()).cast(pa.time64("us"))
        typ = pa.duration("us")
    if type_code == 7:
        values = [v.replace(tzinfo=dt.UTC) if v is not None and v.tzinfo is None else v for v in values]
    try:
        return pa.array(values, type=typ)
    except (pa.ArrowInvalid, pa.ArrowTypeError, OverflowError):
        try:
            return pa.array(values)
        except (pa.ArrowInvalid, pa.ArrowTypeError, OverflowError):
            return pa.array([None if v is None else str(v) for v in values], type=pa.string())


def _target(col: Sequence[Any], array_type: pa.DataType) -> pa.DataType | None:
    """The Arrow type a columnar reader's column is cast to, or ``None`` to keep it."""
    precision = decimal_precision(col)
    if precision is not None and 0 < precision <= 38:
        target: pa.DataType = pa.decimal128(precision, int(col[5] or 0))
    elif pa.types.is_timestamp(array_type):  # arrow-odbc gives DATETIME(0) in s, DATETIME(3) in ms
        target = pa.timestamp("us", tz="UTC" if col[1] == 7 else array_type.tz)  # TIMESTAMP: UTC session
    elif col[1] == 245 and pa.types.is_string(array_type):  # MySQL's JSON
        target = pa.json_()
    elif col[1] == _BIT and not pa.types.is_integer(array_type):
        target = pa.uint64()
    else:
        return None
    return None if target == array_type else target


def _cast(array: pa.Array, target: pa.DataType) -> pa.Array:
    if target == pa.uint64() and not pa.types.is_integer(array.type):
        return _bits(array)
    return array.cast(target, safe=not pa.types.is_timestamp(target))  # ns -> us drops nothing real


def typed(table: pa.Table, columns: list[Any]) -> pa.Table:
    """connectorx's ``table`` with the server's types (:func:`column`'s, for the same columns)."""
    if len(columns) != table.num_columns:
        return table
    arrays = []
    for col, chunked in zip(columns, table.columns, strict=True):
        target = _target(col, chunked.type)
        arrays.append(
            chunked
            if target is None
            else pa.chunked_array([_cast(c, target) for c in chunked.chunks], target)
        )
    return pa.Table.from_arrays(arrays, names=table.column_names)


def typed_stream(reader: pa.RecordBatchReader, columns: list[Any]) -> pa.RecordBatchReader:
    """``reader``'s batches with the server's types (:func:`column`'s), as they arrive."""
    if len(columns) != len(reader.schema):
        return reader
    targets = [_target(col, field.type) for col, field in zip(columns, reader.schema, strict=True)]
    if not any(targets):
        return reader
    schema = pa.schema(
        f if t is None else pa.field(f.name, t, f.nullable)
        for f, t in zip(reader.schema, targets, strict=True)
    )

    def batches() -> Iterator[pa.RecordBatch]:
        for batch in reader:
            arrays = [a if t is None else _cast(a, t) for a, t in zip(batch.columns, targets, strict=True)]
            yield pa.RecordBatch.from_arrays(arrays, schema=schema)

    return pa.RecordBatchReader.from_batches(schema, batches())


#: Column types arrow-odbc reads exactly (signed integers, floats, DECIMAL, dates and times
#: of day, bounded text); anything else goes through connectorx. Unsigned BIGINT would wrap,
#: TIME may lie outside a day, unbounded text and binary need buffers sized by guesswork.
_ODBC_TYPES = {1, 2, 3, 4, 5, 6, 8, 9, 10, 12, 7, 13, 246, 253, 254, 15}  # 6: a bare ? column
ODBC_MAX_TEXT_BYTES = 16384
_INTEGER_TYPES = {1, 2, 3, 8, 9}


def odbc_safe(columns: list[Any]) -> bool:
    """Whether every result column can go through arrow-odbc unchanged."""
    for col in columns:
        type_code, length, flags, charset = col[1], col[3] or 0, col[7], col[8]
        if type_code not in _ODBC_TYPES or (type_code in _INTEGER_TYPES and flags & _UNSIGNED_FLAG):
            return False
        if type_code in (253, 254, 15) and (charset == _BINARY_CHARSET or length > ODBC_MAX_TEXT_BYTES):
            return False
        if type_code == 246 and (decimal_precision(col) or 99) > 38:
            return False
    return True
