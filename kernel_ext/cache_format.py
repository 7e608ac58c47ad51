"""How one result cache entry's rows are kept on disk: Parquet where its types allow, else Arrow IPC.

README: "Result cache". A Parquet entry is what DuckDB reads in place: a hit with ``into=``
hands the file to DuckDB (in a job, a private copy of it in the job directory), with no
decoding in Python, no Arrow stream and no second copy of the rows. Parquet is written for
the types that come back from it exactly as DuckDB would have loaded them from Arrow
(:func:`parquet_safe`); any other result (intervals, UUIDs, structs, ...) is an Arrow IPC file,
streamed as before. Entries written before Parquet was used are Arrow IPC files too.

An ``into=`` result is kept after the casts that can be done exactly in Arrow
(``CAST({} AS DECIMAL(p, s))`` of text, :func:`precast_plan`), so a hit loads decimals instead of
parsing text again; the other casts are stored with the entry and applied by DuckDB as on a miss.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import pyarrow as pa

__all__ = [
    "ARROW",
    "FORMATS",
    "PARQUET",
    "EntryWriter",
    "apply_precast",
    "parquet_safe",
    "precast_plan",
    "read_entry",
]

PARQUET = "parquet"
ARROW = "arrow"
#: Data file suffix of each format.
FORMATS = {PARQUET: ".parquet", ARROW: ".arrow"}
#: Rows per Parquet row group: DuckDB reads a file of small groups measurably slower.
_ROW_GROUP_ROWS = 128 * 1024
#: Rows per batch handed to a reader of a hit (its consumer starts on the first batch).
_BATCH_ROWS = 64 * 1024
#: Uncompressed: DuckDB reads it about 10% faster than Snappy (a hit's main cost), and it is still
#: smaller than the Arrow IPC file of the same rows; no dictionary encoding (it costs more to write
#: than it saves in reading).
_COMPRESSION = "none"
_DECIMAL_CAST = re.compile(r"CAST\(\{\} AS DECIMAL\((\d{1,2}), ?(\d{1,2})\)\)")


def _type_safe(t: pa.DataType) -> bool:
    import pyarrow as pa

    types = pa.types
    if types.is_list(t) or types.is_large_list(t):
        return _type_safe(t.value_type)
    if types.is_timestamp(t) or types.is_time64(t):
        return bool(t.unit == "us")  # other units come back from Parquet as another DuckDB type
    return bool(
        types.is_integer(t)
        or t in (pa.float32(), pa.float64(), pa.bool_(), pa.date32())
        or types.is_string(t)
        or types.is_large_string(t)
        or types.is_binary(t)
        or types.is_large_binary(t)
        or types.is_decimal(t)
    )


def parquet_safe(schema: pa.Schema) -> bool:
    """Whether ``schema`` goes through Parquet into DuckDB with the types Arrow would give it."""
    names = schema.names
    return len(set(names)) == len(names) and all(_type_safe(field.type) for field in schema)


def precast_plan(
    schema: pa.Schema, casts: Sequence[str | None] | None
) -> tuple[pa.Schema, list[str | None] | None, dict[int, pa.DataType]]:
    """The schema an ``into=`` entry is stored with, the casts left for DuckDB, and the columns to cast.

    A text column cast to ``DECIMAL(p, s)`` is stored as Arrow ``decimal128(p, s)``; the cast is
    then done (exactly, or not at all: see :func:`apply_precast`) before the batch is written.
    """
    import pyarrow as pa

    if not casts:
        return schema, None if casts is None else list(casts), {}
    targets: dict[int, pa.DataType] = {}
    left: list[str | None] = list(casts)
    for i, (field, cast) in enumerate(zip(schema, casts, strict=True)):
        match = _DECIMAL_CAST.fullmatch(cast or "")
        if match is None or not (pa.types.is_string(field.type) or pa.types.is_large_string(field.type)):
            continue
        precision, scale = int(match.group(1)), int(match.group(2))
        if not 0 < precision <= 38 or scale > precision:
            continue
        targets[i] = pa.decimal128(precision, scale)
        schema = schema.set(i, field.with_type(targets[i]))
        left[i] = None
    return schema, (left if any(left) else None), targets


def apply_precast(
    batch: pa.RecordBatch, schema: pa.Schema, targets: dict[int, pa.DataType]
) -> pa.RecordBatch:
    """``batch`` with the columns of ``targets`` cast; ``pyarrow.ArrowInvalid`` if a value would change.

    Arrow refuses a text that is not exactly a decimal of that precision and scale (``NaN``,
    more digits than the scale), where DuckDB would round or fail: such a result is not kept.
    """
    if not targets:
        return batch
    import pyarrow as pa

    columns = [
        col.cast(targets[i], safe=True) if i in targets else col for i, col in enumerate(batch.columns)
    ]
    return pa.RecordBatch.from_arrays(columns, schema=schema)


class EntryWriter:
    """Writes one entry's rows to ``path``: Parquet when :func:`parquet_safe`, else an Arrow IPC file.

    A file system error (full, read-only, an I/O error) never reaches the caller, who is also
    feeding the rows to someone else: it is kept in :attr:`failed`, the file is closed as it is
    and the rows that follow are ignored. The caller removes the file.
    """

    def __init__(self, path: Path, schema: pa.Schema) -> None:
        import pyarrow as pa

        self.format = PARQUET if parquet_safe(schema) else ARROW
        self.schema = schema
        #: The error that stopped the writing, if one did.
        self.failed: OSError | None = None
        self._pending: list[pa.RecordBatch] = []
        self._rows = 0
        self._sink: Any = None
        self._writer: Any = None
        try:
            if self.format == PARQUET:
                import pyarrow.parquet as pq

                # decimals of up to 18 digits as integers, which DuckDB reads faster (pyarrow 17+)
                as_integers = (
                    {"store_decimal_as_integer": True} if int(pa.__version__.split(".")[0]) >= 17 else {}
                )
                self._writer = pq.ParquetWriter(
                    str(path), schema, compression=_COMPRESSION, use_dictionary=False, **as_integers
                )
            else:
                self._sink = pa.OSFile(str(path), "wb")
                self._writer = pa.ipc.new_file(self._sink, schema)
        except OSError as exc:
            self._fail(exc)

    def write_batch(self, batch: pa.RecordBatch) -> None:
        """Add ``batch`` (Parquet: buffered into row groups of about ``_ROW_GROUP_ROWS``)."""
        if self.failed is not None:
            return
        if batch.schema != self.schema:  # the same columns, other schema metadata: the writer's
            import pyarrow as pa

            batch = pa.RecordBatch.from_arrays(batch.columns, schema=self.schema)
        try:
            if self.format == ARROW:
                self._writer.write_batch(batch)
                return
            self._pending.append(batch)
            self._rows += batch.num_rows
            if self._rows >= _ROW_GROUP_ROWS:
                self._flush()
        except OSError as exc:
            self._fail(exc)

    def write_table(self, table: pa.Table) -> None:
        """Add every row of ``table``."""
        for batch in table.to_batches():
            self.write_batch(batch)

    def _flush(self) -> None:
        import pyarrow as pa

        if self._pending:
            table = pa.Table.from_batches(self._pending, self.schema)
            self._writer.write_table(table, row_group_size=max(self._rows, 1))
            self._pending, self._rows = [], 0

    def close(self) -> None:
        """Write what is buffered and the file's footer (a failure is kept in :attr:`failed`)."""
        if self.failed is not None:
            return
        try:
            self._flush()
            self._writer.close()
            if self._sink is not None:
                self._sink.close()
        except OSError as exc:
            self._fail(exc)

    def _fail(self, exc: OSError) -> None:
        self.failed = exc
        self.abort()

    def abort(self) -> None:
        """Close the file whatever state it is in (the caller removes it)."""
        self._pending = []
        for closing in (self._writer, self._sink):
            try:
                if closing is not None:
                    closing.close()
            except Exception:  # a half-written file: removed next
                pass


def read_entry(path: str, fmt: str, rows: object) -> pa.RecordBatchReader:
    """A reader of an entry's rows (``path``, memory-mapped), in batches of at most ``_BATCH_ROWS``.

    Raises ``OSError`` or ``pyarrow.ArrowException`` when the file cannot be read as ``fmt``,
    or holds another number of rows than ``rows`` (its metadata's count, when it has one).
    """
    import pyarrow as pa

    if fmt == PARQUET:
        import pyarrow.parquet as pq

        parquet = pq.ParquetFile(pa.memory_map(path))
        schema = parquet.schema_arrow
        if isinstance(rows, int) and parquet.metadata.num_rows != rows:
            raise pa.ArrowInvalid(f"{parquet.metadata.num_rows} rows where {rows} were stored")
        batches: Iterator[pa.RecordBatch] = parquet.iter_batches(batch_size=_BATCH_ROWS, use_threads=False)
        return pa.RecordBatchReader.from_batches(schema, batches)
    reader = pa.ipc.open_file(pa.memory_map(path))
    stored = [reader.get_batch(i) for i in range(reader.num_record_batches)]
    if isinstance(rows, int) and sum(b.num_rows for b in stored) != rows:
        raise pa.ArrowInvalid("the file holds another number of rows than were stored")
    # zero-copy slices: the reader's consumer (DuckDB, the broker's stream) starts on the first
    pieces = [b.slice(i, _BATCH_ROWS) for b in stored for i in range(0, max(b.num_rows, 1), _BATCH_ROWS)]
    return pa.RecordBatchReader.from_batches(reader.schema, pieces)
