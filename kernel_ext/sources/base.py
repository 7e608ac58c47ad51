"""What every datasource kind implements, and the parameter types they accept."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, ClassVar, TypeAlias

from analysis.errors import DatasourceError

if TYPE_CHECKING:
    import pyarrow as pa

    from analysis.duck import Duck

__all__ = ["Datasource", "Params", "ServerDatasource"]

#: Query parameters: a sequence for positional placeholders, a mapping for named ones.
Params: TypeAlias = Sequence[Any] | Mapping[str, Any] | None


class Datasource(ABC):
    """One configured datasource of a project, connected lazily, owned by one ``Context``.

    Parameters
    ----------
    name
        The datasource's name in the project's configuration.
    config
        Its table from the configuration file (``kind`` included), with relative paths
        already resolved against the configuration file's folder.
    """

    #: The ``kind`` value in the configuration that selects this class.
    kind: ClassVar[str]
    #: Optional libraries the kind imports (checked before it is created; see ``analysis.extras``).
    requires: ClassVar[tuple[str, ...]] = ()
    #: Libraries its first query imports besides ``requires``, when installed: the runner's
    #: broker imports them all before a job's first query (:func:`warm_up`).
    first_imports: ClassVar[tuple[str, ...]] = ()

    @classmethod
    def warm_up(cls) -> None:
        """Import what the first query of this kind would, so that no job pays for it.

        Libraries that are not installed are skipped: the query reports them (``requires``)
        or takes another path.
        """
        import importlib

        for module in (*cls.requires, *cls.first_imports):
            try:
                importlib.import_module(module)
            except ImportError:
                pass

    def __init__(self, name: str, config: Mapping[str, Any]) -> None:
        self.name = name
        self.config = dict(config)

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name!r}>"

    @abstractmethod
    def query(self, sql: str, params: Params, *, timeout_s: float | None) -> pa.Table:
        """Run ``sql`` with bound ``params`` and return the whole result as an Arrow table.

        ``timeout_s`` is the most the statement may run (what is left of the job's
        deadline), or ``None``. Driver errors are raised as ``DatasourceError``.
        """

    def query_into(self, duck: Duck, table: str, sql: str, params: Params, *, timeout_s: float | None) -> int:
        """Stream the result of ``sql`` into DuckDB table ``table``; return the row count.

        Kinds with a bulk path (COPY, a columnar reader) override this; the default loads
        the Arrow result of :meth:`query`.
        """
        return duck.load_data(table, self.query(sql, params, timeout_s=timeout_s))

    def interrupt(self) -> None:  # noqa: B027 - optional hook, a no-op by default
        """Cancel the running statement, if any; called from another thread."""

    @abstractmethod
    def close(self) -> None:
        """Close the connection, if one was opened. Safe to call twice."""

    def reset_session(self) -> None:
        """Forget what earlier statements did to the session: a kept datasource passes to another job.

        By default the connection is closed and the next statement opens another; kinds with a
        cheaper reset (``DISCARD ALL``, ``COM_RESET_CONNECTION``) override this.
        """
        self.close()


class ServerDatasource(Datasource):
    """Common configuration of the client/server kinds (``postgres``, ``mysql``).

    Configuration keys (flat, or the options also in a ``[name.options]`` table):
    ``host`` (default ``127.0.0.1``), ``port`` (the kind's default), ``database``, ``user``,
    the password (``password_env`` or ``password_encrypted``, resolved by
    :class:`~analysis.sources.Datasources` into a :class:`~analysis.sources.secrets.Secret`
    under ``password``), ``read_only`` (default true), ``connect_timeout_s`` (default 10) and
    ``statement_timeout_s`` (default: none beyond the job's deadline).
    """

    #: The port used when the configuration gives none.
    default_port: ClassVar[int]

    def __init__(self, name: str, config: Mapping[str, Any]) -> None:
        from analysis.sources.secrets import Secret

        super().__init__(name, config)
        options = dict(self.config)
        extra = options.pop("options", None)
        if isinstance(extra, Mapping):
            options.update(extra)
        self.host = str(options.get("host") or "127.0.0.1")
        self.port = self._number(options, "port", int, self.default_port)
        self.database = str(options["database"]) if options.get("database") is not None else None
        self.user = str(options["user"]) if options.get("user") is not None else None
        password = options.get("password")
        if password is not None and not isinstance(password, Secret):
            raise DatasourceError(
                f"Datasource {name!r}: a plaintext password is not accepted; "
                "use password_env or password_encrypted."
            )
        self.password: Secret | None = password
        self.read_only = options.get("read_only", True)
        if not isinstance(self.read_only, bool):
            raise DatasourceError(f"Datasource {name!r}: read_only must be true or false.")
        self.connect_timeout_s = self._number(options, "connect_timeout_s", float, 10.0)
        self.statement_timeout_s: float | None = (
            self._number(options, "statement_timeout_s", float, 0.0)
            if options.get("statement_timeout_s") is not None
            else None
        )

    def _number(self, options: Mapping[str, Any], key: str, kind: type[Any], default: Any) -> Any:
        value = options.get(key, default)
        if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
            raise DatasourceError(
                f"Datasource {self.name!r}: {key} must be a positive number, not {value!r}."
            )
        return kind(value)

    def limit_s(self, timeout_s: float | None) -> float | None:
        """The statement's server-side limit: the tighter of ``timeout_s`` and ``statement_timeout_s``."""
        limits = [t for t in (timeout_s, self.statement_timeout_s) if t is not None]
        return min(limits) if limits else None

    def redact(self, text: str) -> str:
        """``text`` without this datasource's password or any DSN password."""
        from analysis.sources.secrets import redact

        return redact(text, [self.password])

    def error(self, cause: object) -> DatasourceError:
        """A ``DatasourceError`` naming this datasource and ``cause`` (redacted)."""
        text = self.redact(" ".join(str(cause).split())).rstrip(".")
        return DatasourceError(f"Datasource {self.name!r} ({self.kind}): {text}.")
