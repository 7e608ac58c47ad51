"""Streaming a job's Parquet artifact as Parquet, JSON Lines or CSV, in constant memory.

The file is opened before the response starts, so a download reads to its end even when the
artifact expires and is deleted meanwhile (README, "Large results").
"""

from __future__ import annotations

import io
import os
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from starlette.responses import Response, StreamingResponse

__all__ = ["FORMATS", "stream_artifact"]

FORMATS = {"parquet": "application/vnd.apache.parquet", "jsonl": "application/x-ndjson", "csv": "text/csv"}
_CHUNK_BYTES = 1024 * 1024
_BATCH_ROWS = 10_000


def stream_artifact(path: Path, fmt: str, name: str) -> Response:
    """The artifact at ``path`` as a streamed download in ``fmt`` (batches of rows, never the whole table).

    ``FileNotFoundError`` when it is gone; once this returned, the download no longer needs the path.
    """
    fh = path.open("rb")
    chunks = {"parquet": _parquet, "jsonl": _jsonl, "csv": _csv}[fmt](fh)
    headers = {"Content-Disposition": f'attachment; filename="{name}.{fmt}"'}
    if fmt == "parquet":
        headers["Content-Length"] = str(os.fstat(fh.fileno()).st_size)
    return StreamingResponse(chunks, media_type=FORMATS[fmt], headers=headers)


def _parquet(fh: BinaryIO) -> Iterator[bytes]:
    with fh:
        while chunk := fh.read(_CHUNK_BYTES):
            yield chunk


def _batches(fh: BinaryIO) -> Iterator[object]:
    import pyarrow.parquet as pq

    with fh, pq.ParquetFile(fh) as parquet:
        yield from parquet.iter_batches(batch_size=_BATCH_ROWS)


def _jsonl(fh: BinaryIO) -> Iterator[bytes]:
    from analysis.results import to_json_fragment

    for batch in _batches(fh):
        rows = batch.to_pylist()  # type: ignore[attr-defined]
        yield b"".join(to_json_fragment(row) + b"\n" for row in rows)


def _csv(fh: BinaryIO) -> Iterator[bytes]:
    import pyarrow.csv as pa_csv

    first = True
    for batch in _batches(fh):
        out = io.BytesIO()
        pa_csv.write_csv(batch, out, pa_csv.WriteOptions(include_header=first))
        first = False
        yield out.getvalue()
