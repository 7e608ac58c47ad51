"""The result cache: datasource query results kept between runs, per project (README: "Result cache").

It lives on the trusted side: in a notebook it runs in-process inside
:class:`analysis.access.LocalAccess`; in a job it runs in the runner's data broker, which uses the
same class. Entries are files under ``{root}/{project}/analysis/cache/``:

- ``<key>.parquet`` or ``<key>.arrow``: the result, as Parquet where its types allow, else as an
  Arrow IPC file (:mod:`analysis.cache_format`; written to a temporary file, then renamed);
- ``<key>.json``: its metadata (when, size, SHA-256, the ``into=`` casts, a summary); written last,
  so an entry exists once its metadata does;
- ``<key>.lock``: taken (``flock``) by whoever fills the entry, so when several threads or
  processes miss the same key at once one runs the query and the others wait and then hit.

A hit checks the data file's SHA-256 against the metadata once per process: after that, while
the file's identity and times (device, inode, size, modification and change time) stay what
they were, the check is remembered (:class:`_Verified`). Any write to the file changes its
change time, which no one can set back, so a file damaged through the file system is still
caught; a change time is remembered only once the clock has moved past it.

The key is the SHA-256 of the datasource's identity (kind, host, port, database, user or path),
the exact SQL and the bound parameters. Logs say ``[cache] hit|miss|stored|dropped <summary>``,
never a parameter value. A size budget per project evicts the least recently used entries.

A cache is an optimisation: when the folder cannot take an entry (a full or read-only file
system, an I/O error midway), the query still returns its result, the entry's files are removed,
and one ``[cache] not stored <summary> (the cache could not write it: <cause>)`` line and the
``write_failures`` counter say so.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import re
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import orjson

from analysis.cache_format import ARROW, FORMATS, EntryWriter, read_entry
from analysis.errors import DatasourceError
from analysis.logs import emit

if TYPE_CHECKING:
    import pyarrow as pa

__all__ = ["CacheStats", "Found", "ResultCache", "cache_stats", "project_cache_stats"]

_T = TypeVar("_T")
_LOCK_POLL_S = 0.05
_KEY = re.compile(r"[0-9a-f]{64}")
#: How long after its last change a file's times are trusted to tell later writes apart (the
#: kernel stamps files from a clock that advances in ticks of at most 10 ms).
_SETTLED_NS = 50_000_000
#: Age past which a temporary file is a killed fill's leftover (see :meth:`ResultCache.evict`).
_STALE_TEMP_S = 86400.0
_FD_DIR = "/proc/self/fd" if os.path.isdir("/proc/self/fd") else "/dev/fd"


@dataclass
class CacheStats:
    """Counters of one project's result cache in this process, for the server to export."""

    hits: int = 0
    misses: int = 0
    stored: int = 0
    dropped: int = 0
    evicted: int = 0
    bytes_read: int = 0
    bytes_written: int = 0
    write_failures: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def add(self, **counts: int) -> None:
        """Add ``counts`` (field name -> increment)."""
        with self._lock:
            for name, count in counts.items():
                setattr(self, name, getattr(self, name) + count)

    def snapshot(self) -> dict[str, int]:
        """The counters as a plain dict."""
        with self._lock:
            return {k: v for k, v in vars(self).items() if not k.startswith("_")}


_PROJECTS: dict[str, CacheStats] = {}
_PROJECTS_LOCK = threading.Lock()


class _Verified:
    """Data files whose checksum this process has checked, by path, with the stat that was checked."""

    _MAX = 4096

    def __init__(self) -> None:
        self._seen: dict[str, tuple[tuple[int, ...], str]] = {}
        self._lock = threading.Lock()

    @staticmethod
    def signature(stat: os.stat_result) -> tuple[int, ...]:
        return (stat.st_dev, stat.st_ino, stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns)

    def known(self, path: Path, stat: os.stat_result, digest: object) -> bool:
        """Whether ``path`` as ``stat`` describes it was found to have ``digest`` before."""
        with self._lock:
            return self._seen.get(str(path)) == (self.signature(stat), digest)

    def remember(self, path: Path, stat: os.stat_result, digest: str) -> None:
        """Remember that ``path`` had ``digest``, once its change time is in the past."""
        if time.time_ns() - stat.st_ctime_ns < _SETTLED_NS:
            return  # a write in the same clock tick would leave the times as they are
        with self._lock:
            self._seen.pop(str(path), None)
            self._seen[str(path)] = (self.signature(stat), digest)
            while len(self._seen) > self._MAX:
                del self._seen[next(iter(self._seen))]

    def forget(self, path: Path) -> None:
        with self._lock:
            self._seen.pop(str(path), None)


_VERIFIED = _Verified()


def cache_stats(project: str | None = None) -> CacheStats:
    """The cache counters of ``project`` in this process; without one, a sum over all projects.

    A project's counters are live (and created on first use); the sum is a copy.
    """
    if project is not None:
        with _PROJECTS_LOCK:
            return _PROJECTS.setdefault(project, CacheStats())
    total = CacheStats()
    for counts in project_cache_stats().values():
        total.add(**counts)
    return total


def project_cache_stats() -> dict[str, dict[str, int]]:
    """Every project's counters in this process (project id -> counter name -> value)."""
    with _PROJECTS_LOCK:
        projects = dict(_PROJECTS)
    return {project: stats.snapshot() for project, stats in sorted(projects.items())}


@dataclass(frozen=True)
class Entry:
    """One stored result, as its metadata describes it."""

    key: str
    meta: dict[str, Any]
    used: int


@dataclass
class Found:
    """A hit: the entry's metadata and its data file, held open (``fd``) as it was checked.

    Read it through ``fd`` (``/proc/self/fd/<fd>``, :attr:`fd_path`), never by its name, which
    another run may replace meanwhile. Close it when done (it is a context manager).
    """

    meta: dict[str, Any]
    path: Path
    fd: int

    @property
    def format(self) -> str:
        """``"parquet"`` or ``"arrow"`` (:mod:`analysis.cache_format`)."""
        return str(self.meta.get("format", ARROW))

    @property
    def fd_path(self) -> str:
        """A path that opens exactly the checked file (``/proc/self/fd``; ``/dev/fd`` without ``/proc``)."""
        return f"{_FD_DIR}/{self.fd}"

    @property
    def casts(self) -> list[str | None] | None:
        """The ``into=`` column casts stored with the entry."""
        casts = self.meta.get("casts")
        return casts if isinstance(casts, list) else None

    def reader(self) -> pa.RecordBatchReader:
        """The rows, memory-mapped (see :func:`analysis.cache_format.read_entry`)."""
        return read_entry(self.fd_path, self.format, self.meta.get("rows"))

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def __enter__(self) -> Found:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class ResultCache:
    """One project's cache folder (see the module docstring).

    Parameters
    ----------
    folder
        ``{root}/{project}/analysis/cache``; created on first store.
    max_bytes
        The project's size budget; least recently used entries go past it.

    Its hits, misses and bytes count in :func:`cache_stats` of the project the folder belongs to.
    """

    def __init__(self, folder: Path, *, max_bytes: int) -> None:
        self.folder = folder
        self.max_bytes = max_bytes
        self.stats = cache_stats(folder.parent.parent.name)

    # -- keys -----------------------------------------------------------------------------------
    @staticmethod
    def query_key(
        identity: Mapping[str, Any], sql: str, params: Sequence[Any] | Mapping[str, Any] | None, *, into: bool
    ) -> str:
        """The key of a query: a hash of the datasource identity, the SQL and the parameters.

        ``into``: results streamed into DuckDB are kept apart from rows, since a datasource
        kind may use another driver path for each (PostgreSQL: ADBC with casts, or psycopg).
        """
        from analysis.broker_wire import encode_params

        try:
            encoded = encode_params(params)
        except TypeError as exc:
            raise DatasourceError(f"this query cannot be cached: {exc}.") from None
        document = {"v": 1, "source": dict(identity), "sql": sql, "params": encoded, "into": into}
        return hashlib.sha256(orjson.dumps(document, option=orjson.OPT_SORT_KEYS)).hexdigest()

    # -- reading --------------------------------------------------------------------------------
    def _paths(self, key: str) -> tuple[Path, Path]:
        """The metadata and lock files of ``key``."""
        return self.folder / f"{key}.json", self.folder / f"{key}.lock"

    def _data_files(self, key: str) -> list[Path]:
        return [self.folder / f"{key}{suffix}" for suffix in (*FORMATS.values(), ".body")]

    def lookup(
        self, key: str, ttl_s: float, summary: str, *, before_hit: Callable[[], None] | None = None
    ) -> pa.RecordBatchReader | None:
        """The stored result of ``key`` if younger than ``ttl_s`` and intact; ``None`` otherwise.

        See :meth:`open_entry`; the rows are memory-mapped.
        """
        found = self.open_entry(key, ttl_s, summary, before_hit=before_hit)
        if found is None:
            return None
        with found:
            return found.reader()  # a memory map of its own: the descriptor may close

    def open_entry(
        self,
        key: str,
        ttl_s: float,
        summary: str,
        *,
        before_hit: Callable[[], None] | None = None,
    ) -> Found | None:
        """The entry of ``key``, checked and held open, if younger than ``ttl_s`` and intact.

        ``summary`` names the query in the ``[cache] hit`` line; ``before_hit`` runs just before
        that line. A corrupt entry (wrong size or checksum, a file that cannot be read as its
        format or with another row count) is dropped and logged. Only the file's footer (Parquet)
        or batch layout (Arrow IPC) is read here, not its rows.
        """
        import pyarrow as pa

        found = self._open_verified(key, ttl_s)
        if found is None:
            return None
        try:
            found.reader()
        except (OSError, pa.ArrowException) as exc:
            found.close()
            self.drop(key, f"corrupt: {exc}")
            return None
        self.stats.add(hits=1, bytes_read=int(found.meta["bytes"]))
        if before_hit is not None:
            before_hit()
        emit("cache", f"hit {summary}")
        return found

    def drop(self, key: str, why: str) -> None:
        """Remove an entry (``[cache] dropped <key> (<why>)``)."""
        for path in (self._paths(key)[0], *self._data_files(key)):
            _VERIFIED.forget(path)
            _unlink(path)  # a read-only folder keeps it; it is dropped again at each look
        self.stats.add(dropped=1)
        emit("cache", f"dropped {key[:12]} ({why})")

    # -- filling --------------------------------------------------------------------------------
    @contextlib.contextmanager
    def filling(self, key: str, *, timeout_s: float | None, cancelled: threading.Event) -> Iterator[None]:
        """Hold ``key``'s fill lock (waiting while another thread or process fills it).

        Where the lock cannot be made (the folder cannot be written), the fill goes on without
        it: its entry cannot be stored either, which :meth:`store` reports.
        """
        try:
            self.folder.mkdir(mode=0o700, parents=True, exist_ok=True)
            fd = os.open(self._paths(key)[1], os.O_RDWR | os.O_CREAT, 0o600)
        except OSError:
            yield
            return
        give_up = None if timeout_s is None else time.monotonic() + timeout_s
        try:
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if cancelled.is_set() or (give_up is not None and time.monotonic() > give_up):
                        raise DatasourceError(
                            "The query was cancelled while it waited for another run "
                            "filling the same cache entry."
                        ) from None
                    time.sleep(_LOCK_POLL_S)
            yield
        finally:
            os.close(fd)  # releases the lock

    def store(
        self,
        key: str,
        summary: str,
        write: Callable[[Callable[[pa.Schema], EntryWriter]], _T],
        *,
        extra: Mapping[str, Any] | None = None,
    ) -> _T:
        """Run ``write(opener)`` that writes the result to a temporary file; keep it only if it returns.

        ``write`` gets a function that opens the entry's writer for a schema
        (:class:`analysis.cache_format.EntryWriter`). Whatever ``write`` raises (a failed or
        cancelled query) leaves nothing behind. An entry the folder cannot take is not kept
        (:meth:`_not_stored`) and ``write``'s value is returned all the same.
        """
        temp = self._temp(key)
        opened: list[EntryWriter] = []
        unwritable = self._make_folder()

        def opener(schema: pa.Schema) -> EntryWriter:
            opened.append(EntryWriter(temp, schema))
            return opened[0]

        try:
            value = write(opener)
            if not opened:
                raise DatasourceError("the result was never written")  # a bug of ours
            opened[0].close()
            failed = unwritable or opened[0].failed
            if failed is None:
                fmt = opened[0].format
                data = self.folder / f"{key}{FORMATS[fmt]}"
                try:
                    self._commit(key, temp, data, summary, {**(extra or {}), "format": fmt})
                except OSError as exc:
                    failed = exc
            if failed is not None:
                _unlink(temp)
                self._not_stored(summary, failed)
        except BaseException:
            if opened:
                opened[0].abort()
            _unlink(temp)
            raise
        return value

    def store_bytes(self, key: str, summary: str, body: bytes, *, extra: Mapping[str, Any]) -> None:
        """Keep ``body`` (a file's content) under ``key`` (not kept where the folder cannot take it)."""
        temp = self._temp(key)
        try:
            failed = self._make_folder()
            if failed is None:
                temp.write_bytes(body)
                self._commit(key, temp, self.folder / f"{key}.body", summary, extra)
        except OSError as exc:
            failed = exc
        except BaseException:
            _unlink(temp)
            raise
        if failed is not None:
            _unlink(temp)
            self._not_stored(summary, failed)

    def _make_folder(self) -> OSError | None:
        """Create the folder; the error if it cannot be."""
        try:
            self.folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        except OSError as exc:
            return exc
        return None

    def _not_stored(self, summary: str, error: OSError) -> None:
        """Count and log (once, with no path) an entry the folder could not take."""
        cause = os.strerror(error.errno) if error.errno else type(error).__name__
        self.stats.add(write_failures=1)
        emit("cache", f"not stored {summary} (the cache could not write it: {cause})")

    def verified(self, key: str, ttl_s: float, *, body: bool = False) -> tuple[dict[str, Any], Path] | None:
        """The metadata and data file of ``key`` if younger than ``ttl_s`` and its checksum matches.

        A corrupt entry is dropped (and logged); ``None`` when there is no usable entry.
        """
        found = self._open_verified(key, ttl_s, body=body)
        if found is None:
            return None
        found.close()
        return found.meta, found.path

    def _open_verified(self, key: str, ttl_s: float, *, body: bool = False) -> Found | None:
        """:meth:`verified`, with the data file left open: what was checked is what is read."""
        meta_path = self._paths(key)[0]
        try:
            meta = orjson.loads(meta_path.read_bytes())
        except (OSError, orjson.JSONDecodeError):
            return None
        if not isinstance(meta, dict) or time.time() - float(meta.get("created", 0)) > ttl_s:
            return None
        suffix = ".body" if body else FORMATS.get(str(meta.get("format", ARROW)))
        if suffix is None:
            self.drop(key, "corrupt: an unknown format")
            return None
        data = self.folder / f"{key}{suffix}"
        try:
            fd = os.open(data, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
        except OSError as exc:
            self.drop(key, f"unreadable: {exc.strerror}")
            return None
        found = Found(meta, data, fd)
        try:
            stat = os.fstat(fd)
            if _VERIFIED.known(data, stat, meta.get("sha256")) and stat.st_size == meta.get("bytes"):
                digest = meta["sha256"]
            else:
                with open(os.dup(fd), "rb") as handle:
                    digest = hashlib.file_digest(handle, "sha256").hexdigest()
        except OSError as exc:
            found.close()
            self.drop(key, f"unreadable: {exc.strerror}")
            return None
        if stat.st_size != meta.get("bytes") or digest != meta.get("sha256"):
            found.close()
            self.drop(key, "corrupt: its size or checksum does not match")
            return None
        _VERIFIED.remember(data, stat, digest)
        _touch(meta_path)
        return found

    def _temp(self, key: str) -> Path:
        return self.folder / f".{key}.{os.getpid()}.{threading.get_ident()}.tmp"

    def _commit(
        self, key: str, temp: Path, data: Path, summary: str, extra: Mapping[str, Any] | None
    ) -> None:
        """Checksum ``temp``, rename it to ``data``, then write the metadata (the commit point).

        A failure after the rename (an ``OSError``: the metadata did not fit) removes the entry's
        files (no data file without its metadata, no metadata of another data file) before it
        propagates.
        """
        with temp.open("rb") as handle:
            size = os.fstat(handle.fileno()).st_size
            digest = hashlib.file_digest(handle, "sha256").hexdigest()
        os.chmod(temp, 0o600)  # query results: readable by the runner's user only
        _VERIFIED.forget(data)
        os.replace(temp, data)
        meta_temp = temp.with_suffix(".json.tmp")
        try:
            for other in self._data_files(key):  # the entry's file in the other format, if it had one
                if other != data:
                    _VERIFIED.forget(other)
                    other.unlink(missing_ok=True)
            meta = {"created": time.time(), "bytes": size, "sha256": digest, "summary": summary}
            meta.update(extra or {})
            fd = os.open(meta_temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "wb") as handle:
                handle.write(orjson.dumps(meta))
            os.replace(meta_temp, self._paths(key)[0])
        except BaseException:
            for path in (meta_temp, self._paths(key)[0], *self._data_files(key)):
                _VERIFIED.forget(path)
                _unlink(path)
            raise
        _touch(self._paths(key)[0])
        self.stats.add(stored=1, bytes_written=size)
        emit("cache", f"stored {summary} ({size} bytes)")
        self.evict()

    # -- the budget -----------------------------------------------------------------------------
    def entries(self) -> list[Entry]:
        """The complete entries, least recently used first."""
        found: list[Entry] = []
        if not self.folder.is_dir():
            return found
        for meta_path in self.folder.glob("*.json"):
            key = meta_path.stem
            if not _KEY.fullmatch(key):
                continue
            try:
                meta = orjson.loads(meta_path.read_bytes())
                used = meta_path.stat().st_mtime_ns
            except (OSError, orjson.JSONDecodeError):
                continue
            if isinstance(meta, dict):
                found.append(Entry(key, meta, used))
        return sorted(found, key=lambda e: e.used)

    def evict(self) -> None:
        """Remove least recently used entries until the folder fits the budget, and stale temporary files.

        A temporary file untouched for a day is what a fill left when its process was killed
        (a live fill writes as its batches come); the budget does not count it, so it goes here.
        """
        stale = time.time() - _STALE_TEMP_S
        for temp in self.folder.glob(".*.tmp"):
            with contextlib.suppress(OSError):
                if temp.stat().st_mtime < stale:
                    temp.unlink()
        entries = self.entries()
        total = sum(int(e.meta.get("bytes", 0)) for e in entries)
        for entry in entries:
            if total <= self.max_bytes:
                break
            self.remove(entry.key)
            total -= int(entry.meta.get("bytes", 0))
            self.stats.add(evicted=1)
            emit("cache", f"evicted {entry.meta.get('summary', entry.key[:12])}")

    def remove(self, key: str) -> None:
        """Remove an entry and its lock file."""
        for path in (*self._paths(key), *self._data_files(key)):
            _VERIFIED.forget(path)
            _unlink(path)


def _touch(path: Path) -> None:
    """Mark an entry used now, to the nanosecond (the file system's own clock is coarser).

    On a read-only file system the entry is still read; only its place in the eviction order stays.
    """
    now = time.time_ns()
    with contextlib.suppress(OSError):
        os.utime(path, ns=(now, now))


def _unlink(path: Path) -> None:
    """Remove ``path`` if it is there and can be removed."""
    with contextlib.suppress(OSError):
        path.unlink(missing_ok=True)
