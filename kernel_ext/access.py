"""Data access behind ``ctx``: datasources and the file API, with the credentials that reach them.

:class:`DataAccess` is what ``ctx.query_datasource`` and ``ctx.files`` call. It has two
implementations, one per transport of the same broker code (README, "How secrets flow"):

- :class:`LocalAccess`, in-process: the datasource kinds (:mod:`analysis.sources`) and the file
  API client (:mod:`analysis.files`) with the credentials of this process. ``ctx`` in your own
  notebook uses it, and so does the runner's broker on behalf of a job.
- :class:`analysis.broker_client.BrokerAccess`, in a job: every call goes over the job's Unix
  socket to the runner's broker, which runs it with a :class:`LocalAccess`; the kernel holds no
  secret.
"""

from __future__ import annotations

import contextlib
import threading
from abc import ABC, abstractmethod
from pathlib import Path
from typing import TYPE_CHECKING

from analysis.errors import AnalysisError, DatasourceError
from analysis.logs import emit, one_line
from analysis.redact import Redactor

if TYPE_CHECKING:
    import pyarrow as pa

    from analysis.cache_fill import CacheSlot
    from analysis.config import Settings
    from analysis.deadline import Deadline
    from analysis.files import Files
    from analysis.files._load import SupportsLoadData
    from analysis.sources import Datasource, Datasources, Params

__all__ = ["DataAccess", "LocalAccess"]


class DataAccess(ABC):
    """Datasource queries and the file API client of one ``Context``."""

    @abstractmethod
    def query(
        self, name: str, sql: str, params: Params, *, timeout_s: float | None, cache_s: float | None = None
    ) -> pa.Table:
        """Run ``sql`` on datasource ``name``; the whole result as an Arrow table.

        Logs ``[query:datasource] <name> <sql>``; driver errors are ``DatasourceError``.
        ``cache_s``: keep and reuse the result this many seconds (``0``: not cached; ``None``:
        the datasource's ``cache_ttl_s``, if any); README "Result cache".
        """

    @abstractmethod
    def query_into(
        self,
        sink: SupportsLoadData,
        table: str,
        name: str,
        sql: str,
        params: Params,
        *,
        timeout_s: float | None,
        cache_s: float | None = None,
    ) -> int:
        """Stream the result of ``sql`` into ``sink.load_data(table, ...)``; return the row count."""

    @abstractmethod
    def names(self) -> list[str]:
        """The configured datasource names, sorted."""

    @abstractmethod
    def files(self, *, deadline: Deadline, duck: SupportsLoadData) -> Files:
        """A file API client bound to the job's deadline and DuckDB."""

    @abstractmethod
    def interrupt(self) -> None:
        """Cancel the running datasource statement or broker request; safe from another thread."""

    @abstractmethod
    def close(self) -> None:
        """Release connections. Safe to call twice."""


class LocalAccess(DataAccess):
    """The datasource kinds and the file API client, run in this process with its credentials.

    Parameters
    ----------
    sources
        The project's datasources (anything with ``get``, ``names``, ``interrupt``, ``close``).
    settings
        Where the file API is and its token.
    redactor
        Learns every secret this access reveals (the token, the secret key, each datasource
        password when first used) and scrubs them from the errors it raises (README: "Secrets.").
    cache_dir
        The project's result cache folder (README: "Result cache"); ``None``: no caching.
    """

    def __init__(
        self,
        sources: Datasources,
        settings: Settings,
        *,
        redactor: Redactor | None = None,
        cache_dir: Path | None = None,
    ) -> None:
        self.sources = sources
        self.settings = settings
        self.cache_dir = cache_dir
        self._interrupted = threading.Event()
        self.redactor = redactor if redactor is not None else Redactor()
        self.redactor.add(settings.backend_token)
        for key in (settings.secret_key or "").split(","):
            self.redactor.add(key.strip())

    def _source(self, name: str) -> Datasource:
        source = self.sources.get(name)
        # Revealed now: from here on the password is scrubbed from everything the job shows.
        self.redactor.add(getattr(source, "password", None) or source.config.get("password"))
        return source

    def _cache(
        self, name: str, sql: str, params: Params, cache_s: float | None, *, into: bool
    ) -> CacheSlot | None:
        """Where the result of this query is cached, or ``None`` when it is not to be."""
        from analysis.cache_fill import CacheSlot, parse_ttl, source_identity, summary
        from analysis.result_cache import ResultCache

        entry = self.sources.config.get(name, {})
        ttl_s = cache_s
        if ttl_s is None:
            try:
                ttl_s = parse_ttl(entry.get("cache_ttl_s"))
            except DatasourceError as exc:
                raise DatasourceError(
                    f"Datasource {name!r}: cache_ttl_s in the datasources file: {exc}"
                ) from None
        if not ttl_s or self.cache_dir is None:
            return None
        cache = ResultCache(self.cache_dir, max_bytes=self.settings.cache_max_bytes)
        key = cache.query_key(source_identity(str(entry.get("kind")), entry), sql, params, into=into)
        return CacheSlot(
            cache, key, summary(name, key, sql), ttl_s, name, lambda hit: self._announce(name, sql, hit=hit)
        )

    def _start(
        self, name: str, sql: str, params: Params, cache_s: float | None, *, into: bool
    ) -> CacheSlot | None:
        """The query's cache slot, if it is cached; else open its datasource and log the query.

        A cached query logs itself once the cache knows whether it is a hit (the slot's
        ``announce``), and opens its datasource only on a miss: a hit needs neither the
        connection nor the password. Either way a datasource in use is open before the query
        is logged, so the line is scrubbed of its password.
        """
        cached = None
        if name in self.sources.config:
            cached = self._cache(name, sql, params, cache_s, into=into)
        self._interrupted.clear()
        if cached is None:
            self._announce(name, sql, hit=False)  # an unknown name fails here
        return cached

    def _announce(self, name: str, sql: str, *, hit: bool) -> None:
        try:
            if not hit:
                self._source(name)
            else:  # the password, if it resolves, is scrubbed as on a miss; a hit works without it
                with contextlib.suppress(AnalysisError):
                    self.redactor.add(self.sources.password(name))
        finally:
            emit("query:datasource", f"{name} {one_line(sql)}")

    def query(
        self, name: str, sql: str, params: Params, *, timeout_s: float | None, cache_s: float | None = None
    ) -> pa.Table:
        cached = self._start(name, sql, params, cache_s, into=False)
        try:
            if cached is None:
                return self._source(name).query(sql, params, timeout_s=timeout_s)
            from analysis.cache_fill import cached_query

            return cached_query(
                cached,
                lambda: self._source(name).query(sql, params, timeout_s=timeout_s),
                timeout_s=timeout_s,
                cancelled=self._interrupted,
            )
        except BaseException as exc:
            self.redactor.scrub_exception(exc)
            raise

    def query_into(
        self,
        sink: SupportsLoadData,
        table: str,
        name: str,
        sql: str,
        params: Params,
        *,
        timeout_s: float | None,
        cache_s: float | None = None,
    ) -> int:
        cached = self._start(name, sql, params, cache_s, into=True)
        try:
            if cached is None:
                source = self._source(name)
                return source.query_into(sink, table, sql, params, timeout_s=timeout_s)  # type: ignore[arg-type]
            from analysis.cache_fill import cached_query_into

            return cached_query_into(
                cached,
                sink,
                table,
                lambda tee: self._source(name).query_into(tee, table, sql, params, timeout_s=timeout_s),  # type: ignore[arg-type]
                timeout_s=timeout_s,
                cancelled=self._interrupted,
            )
        except BaseException as exc:
            self.redactor.scrub_exception(exc)
            raise

    def names(self) -> list[str]:
        return self.sources.names()

    def files(self, *, deadline: Deadline, duck: SupportsLoadData) -> Files:
        from analysis.files import Files

        return Files(
            settings=self.settings,
            deadline=deadline,
            duck=duck,
            redactor=self.redactor,
            cache_dir=self.cache_dir,
        )

    def interrupt(self) -> None:
        self._interrupted.set()
        self.sources.interrupt()

    def close(self) -> None:
        self.sources.close()
