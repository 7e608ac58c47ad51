"""``ctx``: what an analysis sees of its job (DuckDB, datasources, files, parameters, logging)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from analysis.access import DataAccess, LocalAccess
from analysis.config import Settings
from analysis.deadline import Deadline
from analysis.duck import Duck, QueryResult
from analysis.errors import DatasourceError, JobTimeoutError
from analysis.logs import emit
from analysis.redact import Redactor
from analysis.sources import Datasources

if TYPE_CHECKING:
    from analysis.files import Files

__all__ = ["Context"]

_UNSET: Any = object()


class Context:
    """One job's resources, opened on first use and closed by :meth:`close`.

    Parameters
    ----------
    project_id
        The project whose datasources and files the job may use.
    job_id
        The job's id (``None`` in an interactive session).
    parameters
        The job's parameters, as decoded from its JSON parameters document.
    settings
        Environment settings; default :meth:`Settings.from_env`.
    deadline
        When the job times out; default none.
    access
        How datasources and files are reached: by default in-process with this process's
        credentials (:class:`~analysis.access.LocalAccess`); in a job, through the runner's broker.
    """

    def __init__(
        self,
        *,
        project_id: str = "default",
        job_id: str | None = None,
        parameters: Mapping[str, Any] | None = None,
        settings: Settings | None = None,
        deadline: Deadline | None = None,
        access: DataAccess | None = None,
    ) -> None:
        self.project_id = project_id
        self.job_id = job_id
        self.parameters: dict[str, Any] = dict(parameters or {})
        self.settings = settings if settings is not None else Settings.from_env()
        self.deadline = deadline if deadline is not None else Deadline(None)
        #: Every secret the job holds, scrubbed from errors, stacks and logs (README: "Secrets.").
        #: In-process it is the access layer's; in a job the kernel holds no secret, and the
        #: broker's own access layer scrubs its answers before they reach the kernel.
        self.redactor = Redactor()
        self._duck = Duck()
        if access is None and self.settings.broker_socket is not None:
            # a %%analysis cell of a notebook job: datasources and files through the job's broker
            from analysis.broker_client import BrokerAccess

            access = BrokerAccess(self.settings.broker_socket)
        self._access = access or LocalAccess(
            Datasources(
                self.settings.datasources_path(project_id),
                secret_key=self.settings.secret_key,
                environ=self.settings.environ or None,
            ),
            self.settings,
            redactor=self.redactor,
            cache_dir=self.settings.cache_dir(project_id),
        )
        self._files: Files | None = None
        self._result: Any = _UNSET
        #: The job's memory limit, if the runner set one (for error messages).
        self.max_memory_bytes: int | None = None
        #: The job's limits (``max_disk_bytes``, ``max_tmp_bytes``, ``max_processes``), for error messages.
        self.job_limits: dict[str, int | None] = {}

    def __repr__(self) -> str:
        return f"<Context project_id={self.project_id!r} job_id={self.job_id!r}>"

    # -- DuckDB ---------------------------------------------------------------------------------
    def query(self, sql: str, params: Sequence[Any] | Mapping[str, Any] | None = None) -> QueryResult:
        """Run ``sql`` on the job's in-memory DuckDB.

        Parameters
        ----------
        sql
            One SQL statement; use ``?``/``$1`` placeholders with a sequence, ``$name`` with a mapping.
        params
            Values bound to the placeholders (never spliced into the SQL).
        """
        return self._duck.query(sql, params)

    def load_data(self, table: str, data: Any, *, mode: str = "replace") -> int:
        """Load rows into DuckDB table ``table`` and return how many were loaded.

        Parameters
        ----------
        table
            Table name; always quoted as one identifier.
        data
            A list of dicts (columns: union of keys in first-seen order; ``None`` is NULL), a
            pandas or polars DataFrame, a pyarrow Table or RecordBatchReader, or a QueryResult.
        mode
            ``"replace"`` (default) or ``"append"`` (matching columns by name).
        """
        return self._duck.load_data(table, data, mode=mode)

    @property
    def duckdb(self) -> Any:
        """The job's DuckDB connection, for what ``query`` does not cover."""
        return self._duck.connection

    def lock_down(self, job_dir: Path) -> None:
        """Inside a job: DuckDB may reach only files under ``job_dir`` and install nothing."""
        self._duck.lock_down(job_dir)

    # -- datasources ----------------------------------------------------------------------------
    def query_datasource(
        self,
        name: str,
        sql: str,
        params: Sequence[Any] | Mapping[str, Any] | None = None,
        *,
        into: str | None = None,
        cache: str | float | None = None,
    ) -> QueryResult:
        """Run ``sql`` on the project's datasource ``name``.

        Parameters
        ----------
        name
            A datasource configured for the project.
        sql
            SQL in the datasource's dialect; ``?`` placeholders work on every kind.
        params
            Values bound to the placeholders.
        into
            A DuckDB table to stream the rows into; the result then holds only the row count.
        cache
            Reuse a result of the same query (same datasource, SQL and parameters) up to this
            old: ``"30s"``, ``"15m"``, ``"2h"``, ``"1d"`` or seconds; ``0`` never; ``None`` the
            datasource's ``cache_ttl_s`` (README: "Result cache").
        """
        from analysis.cache_fill import parse_ttl

        cache_s = parse_ttl(cache)
        timeout_s = self.deadline.remaining_s()
        if timeout_s is not None and timeout_s <= 0:
            raise JobTimeoutError(f"The job ran past {self.deadline.describe()} before querying {name!r}.")
        try:
            if into is not None:
                count = self._access.query_into(
                    self._duck, into, name, sql, params, timeout_s=timeout_s, cache_s=cache_s
                )
                return QueryResult(None, row_count=count, loaded_into=into)
            return QueryResult(self._access.query(name, sql, params, timeout_s=timeout_s, cache_s=cache_s))
        except BaseException as exc:  # DuckDB's errors on into= may quote what the driver sent
            self.redactor.scrub_exception(exc)
            if isinstance(exc, DatasourceError) and self.deadline.expired():
                # the statement was cancelled because the job ran out of time
                raise JobTimeoutError(
                    f"The job ran past {self.deadline.describe()} while querying {name!r}."
                ) from exc
            raise

    def datasource_names(self) -> list[str]:
        """Names of the project's configured datasources."""
        return self._access.names()

    # -- files ----------------------------------------------------------------------------------
    @property
    def files(self) -> Files:
        """The backend file API client (``list``, ``read``, ``search``, ``get_metadata``, ...)."""
        if self._files is None:
            self._files = self._access.files(deadline=self.deadline, duck=self._duck)
        return self._files

    # -- job ------------------------------------------------------------------------------------
    def log(self, *values: Any) -> None:
        """Write ``[log] <values>`` to the job log."""
        emit("log", " ".join(str(v) for v in values))

    def set_result(self, value: Any) -> None:
        """Set the result of a notebook analysis (scripts return it from ``run``)."""
        self._result = value

    @property
    def has_result(self) -> bool:
        """Whether :meth:`set_result` was called."""
        return self._result is not _UNSET

    @property
    def result(self) -> Any:
        """The value given to :meth:`set_result` (``None`` if it was never called)."""
        return None if self._result is _UNSET else self._result

    def interrupt(self) -> None:
        """Cancel running DuckDB and datasource queries; safe from another thread."""
        self._duck.interrupt()
        self._access.interrupt()

    def close(self, *, duckdb: bool = True) -> None:
        """Close the datasources, the file client and (``duckdb``) the DuckDB connection.

        Safe to call twice.
        """
        try:
            if self._files is not None:
                self._files.close()
                self._files = None
            self._access.close()
        finally:
            if duckdb:
                self._duck.close()
