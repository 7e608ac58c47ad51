"""Answering a datasource query from the result cache, or running it once and keeping its result.

Also what a query's caching is described by: a duration (:func:`parse_ttl`), the datasource's
identity (:func:`source_identity`) and the log summary (:func:`summary`).

:class:`analysis.access.LocalAccess` calls :func:`cached_query` and :func:`cached_query_into`
when a query asks for caching (README: "Result cache"). On a miss the result goes to the
caller and to the cache file at the same time (``into=`` streams batch by batch: the
datasource's Arrow reader is teed, never turned into Python rows); only a complete result is
kept. On a hit ``into=`` gives DuckDB the entry's Parquet file to read in place (in a job, the
broker's sink hands the kernel a copy: ``load_cached_parquet``), or streams the memory-mapped
Arrow file into the sink (:mod:`analysis.cache_format`).
"""

from __future__ import annotations

import re
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any, NamedTuple

from analysis.errors import DatasourceError
from analysis.logs import emit, one_line

if TYPE_CHECKING:
    import pyarrow as pa

    from analysis.cache_format import EntryWriter
    from analysis.files._load import SupportsLoadData
    from analysis.result_cache import Found, ResultCache

__all__ = [
    "MAX_TTL_S",
    "CacheSlot",
    "cached_query",
    "cached_query_into",
    "parse_ttl",
    "source_identity",
    "summary",
]

#: Longest time an entry may be asked to live (a year).
MAX_TTL_S = 366 * 86400.0
_UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_TTL_TEXT = re.compile(r"(\d{1,9}(?:\.\d{1,6})?)\s*([smhd]?)")
_IDENTITY_KEYS = ("kind", "host", "port", "database", "user", "path")

_Opener = Callable[["pa.Schema"], "EntryWriter"]


def _quiet(hit: bool) -> None:
    """The default ``announce`` of a :class:`CacheSlot`: nothing to do."""


class CacheSlot(NamedTuple):
    """Where one query's result is cached: the project's cache, the key, its log summary, the TTL.

    ``announce(hit)`` runs once, when it is known whether the query is a hit, before the
    ``[cache] hit`` or ``[cache] miss`` line: the caller logs the query there (and, on a miss,
    opens the datasource first, so the line is scrubbed of its password).
    """

    cache: ResultCache
    key: str
    summary: str
    ttl_s: float
    datasource: str
    announce: Callable[[bool], None] = _quiet


def parse_ttl(value: object) -> float | None:
    """A cache duration in seconds: ``"15m"``, ``"2h"``, ``"30s"``, ``"1d"`` or a number of seconds.

    ``None`` stays ``None`` (no choice made); ``0`` means "do not cache". Anything else is a
    ``DatasourceError`` naming the problem.
    """
    if value is None:
        return None
    seconds: float | None = None
    if isinstance(value, int | float) and not isinstance(value, bool):
        seconds = float(value)
    elif isinstance(value, str):
        match = _TTL_TEXT.fullmatch(value.strip())
        if match is not None:
            seconds = float(match.group(1)) * _UNITS[match.group(2) or "s"]
    if seconds is None or not (0 <= seconds <= MAX_TTL_S):
        raise DatasourceError(
            f"cache={value!r} is not a duration: use seconds (0 to {int(MAX_TTL_S)}) or text such as "
            "'30s', '15m', '2h', '1d'."
        )
    return seconds


def source_identity(kind: str, config: Mapping[str, Any]) -> dict[str, Any]:
    """What makes two datasources the same for the cache: kind, host, port, database, user, path."""
    options = dict(config)
    extra = options.pop("options", None)
    if isinstance(extra, Mapping):
        options.update(extra)
    options["kind"] = kind
    return {k: str(options[k]) for k in _IDENTITY_KEYS if options.get(k) is not None}


def summary(name: str, key: str, sql: str) -> str:
    """How an entry is named in the log: datasource, short key, the start of the SQL (no parameters)."""
    return f"{name} {key[:12]} {one_line(sql, 80)}"


class _NotKeptError(Exception):
    """The result went to the caller but is not kept (``why``); ``value`` is what the caller gets."""

    def __init__(self, value: int, why: str) -> None:
        super().__init__(why)
        self.value = value
        self.why = why


class _TeeSink:
    """Stands in for the sink of ``query_into``: every batch goes to the cache file and to the sink.

    The cache file gets each batch after the casts Arrow does exactly (``precast_plan``); if one
    would change a value, the rest still goes to the sink and the result is not kept (``lost``).
    """

    def __init__(self, sink: SupportsLoadData, opener: _Opener) -> None:
        self._sink = sink
        self._opener = opener
        self.casts: list[str | None] | None = None
        self.complete = False
        self.lost: str | None = None

    @property
    def connection(self) -> Any:
        """The sink's DuckDB connection (the PostgreSQL bulk path opens it while it connects)."""
        return getattr(self._sink, "connection", None)

    def load_data(
        self, table: str, data: Any, *, mode: str = "replace", casts: Sequence[str | None] | None = None
    ) -> int:
        import pyarrow as pa

        from analysis.cache_format import apply_precast, precast_plan

        if isinstance(data, pa.Table):
            data = pa.RecordBatchReader.from_batches(data.schema, data.to_batches())
        if not isinstance(data, pa.RecordBatchReader):
            raise TypeError(f"the result cache stores Arrow tables and readers, not {type(data).__name__}")
        stored, self.casts, targets = precast_plan(data.schema, casts)
        writer = self._opener(stored)

        def batches() -> Iterator[pa.RecordBatch]:
            for batch in data:
                if self.lost is None:
                    try:
                        writer.write_batch(apply_precast(batch, stored, targets))
                    except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
                        self.lost = f"a column cast would change a value: {one_line(str(exc), 120)}"
                yield batch
            self.complete = True

        tee = pa.RecordBatchReader.from_batches(data.schema, batches())
        return self._sink.load_data(table, tee, mode=mode, casts=casts)


def _miss(cache: ResultCache, key: str, summary: str) -> None:
    cache.stats.add(misses=1)
    emit("cache", f"miss {summary}")


def cached_query(
    slot: CacheSlot,
    run: Callable[[], pa.Table],
    *,
    timeout_s: float | None,
    cancelled: threading.Event,
) -> pa.Table:
    """The result of ``run()``, from the cache when an entry younger than ``ttl_s`` is there."""
    cache, key, summary, ttl_s, datasource, announce = slot
    found = cache.lookup(key, ttl_s, summary, before_hit=lambda: announce(True))
    if found is not None:
        return found.read_all()
    with cache.filling(key, timeout_s=timeout_s, cancelled=cancelled):
        # filled by another run while this one waited?
        found = cache.lookup(key, ttl_s, summary, before_hit=lambda: announce(True))
        if found is not None:
            return found.read_all()
        announce(False)
        _miss(cache, key, summary)

        extra: dict[str, Any] = {"datasource": datasource, "into": False}

        def write(opener: _Opener) -> pa.Table:
            table = run()
            opener(table.schema).write_table(table)
            extra["rows"] = table.num_rows
            return table

        return cache.store(key, summary, write, extra=extra)


def _load_hit(sink: SupportsLoadData, table: str, found: Found, summary: str) -> int:
    """Load a hit into ``table``: a Parquet entry read in place, else its rows streamed.

    A copy the job directory cannot take (its file system is full) is not an error either: the
    rows are streamed as for an Arrow entry, and one line says why.
    """
    import os

    from analysis.cache_format import PARQUET

    if found.format == PARQUET:
        hand_over = getattr(sink, "load_cached_parquet", None)
        if hand_over is not None:  # the broker's sink: the kernel's DuckDB reads a copy
            try:
                return int(hand_over(table, found.fd, found.casts, found.meta.get("rows")))
            except OSError as exc:
                cause = os.strerror(exc.errno) if exc.errno else type(exc).__name__
                emit("cache", f"streamed {summary} (the job directory could not take a copy: {cause})")
                return sink.load_data(table, found.reader(), casts=found.casts)
        connection = getattr(sink, "connection", None)
        if connection is not None and type(connection).__module__.split(".")[0] == "duckdb":
            return sink.load_data(table, connection.read_parquet(found.fd_path), casts=found.casts)
    return sink.load_data(table, found.reader(), casts=found.casts)


def cached_query_into(
    slot: CacheSlot,
    sink: SupportsLoadData,
    table: str,
    run: Callable[[SupportsLoadData], int],
    *,
    timeout_s: float | None,
    cancelled: threading.Event,
) -> int:
    """``run(sink)`` (a ``query_into``), or the cached result loaded by ``sink.load_data(table)``."""
    cache, key, summary, ttl_s, datasource, announce = slot

    def hit() -> int | None:
        found = cache.open_entry(key, ttl_s, summary, before_hit=lambda: announce(True))
        if found is None:
            return None
        with found:
            return _load_hit(sink, table, found, summary)

    count = hit()
    if count is not None:
        return count
    with cache.filling(key, timeout_s=timeout_s, cancelled=cancelled):
        count = hit()
        if count is not None:
            return count
        announce(False)
        _miss(cache, key, summary)
        extra: dict[str, Any] = {"datasource": datasource, "into": True}

        def write(opener: _Opener) -> int:
            tee = _TeeSink(sink, opener)
            rows = run(tee)
            if not tee.complete:  # the sink stopped reading early: not a whole result, not kept
                raise DatasourceError(f"{summary}: the result was not read to its end, so it was not cached.")
            if tee.lost is not None:
                raise _NotKeptError(rows, tee.lost)
            extra["casts"], extra["rows"] = tee.casts, rows
            return rows

        try:
            return cache.store(key, summary, write, extra=extra)
        except _NotKeptError as not_kept:
            emit("cache", f"not stored {summary} ({not_kept.why})")
            return not_kept.value
