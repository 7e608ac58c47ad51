"""The server's store: jobs, versions, schedules, tokens, and what workers need (SQLAlchemy Core, Alembic).

SQLite in write-ahead-log mode under the root is the embedded default
(``{root}/.server/store.sqlite3``); a PostgreSQL URL (``postgresql+psycopg://...``) is the other
supported store. :func:`open_store` brings the schema to the newest migration before use. One
server process owns a store (recovery after a crash assumes no other server is running its jobs),
unless jobs run on workers (``serve --workers``): then every change of a job is a compare-and-set
and any number of servers and workers share it.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

__all__ = ["Store", "default_url", "open_store"]

_MIGRATIONS = Path(__file__).with_name("migrations")


def default_url(root: Path) -> str:
    """The embedded store of ``root``: a SQLite file in ``{root}/.server/``."""
    folder = root / ".server"
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    return f"sqlite:///{(folder / 'store.sqlite3').resolve()}"


def _engine(url: str) -> Engine:
    if url.startswith("postgresql://"):
        url = "postgresql+psycopg://" + url.removeprefix("postgresql://")
    if not url.startswith("sqlite"):
        return sa.create_engine(url, pool_pre_ping=True)
    engine = sa.create_engine(url, connect_args={"timeout": 30, "check_same_thread": False})

    @sa.event.listens_for(engine, "connect")
    def _pragmas(dbapi_connection: Any, _record: Any) -> None:
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute("PRAGMA busy_timeout=30000")
        cursor.close()

    return engine


def open_store(url: str) -> Store:
    """Connect to the store at ``url``, run the pending migrations, and return it."""
    from alembic import command
    from alembic.config import Config

    engine = _engine(url)
    config = Config()
    config.set_main_option("script_location", str(_MIGRATIONS))
    with engine.begin() as connection:
        config.attributes["connection"] = connection
        command.upgrade(config, "head")
    return Store(engine)


class Store:
    """Row access to the four tables; every method is one short transaction.

    Parameters
    ----------
    engine
        A migrated database (see :func:`open_store`).
    """

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        metadata = sa.MetaData()
        tables = [
            "jobs", "analysis_versions", "schedules", "tokens", "artifacts", "datasources", "job_logs",
            "project_turns",
        ]  # fmt: skip
        metadata.reflect(engine, only=tables)
        self.jobs = metadata.tables["jobs"]
        self.versions = metadata.tables["analysis_versions"]
        self.schedules = metadata.tables["schedules"]
        self.tokens = metadata.tables["tokens"]
        self.artifacts = metadata.tables["artifacts"]
        self.datasources = metadata.tables["datasources"]
        self.job_logs = metadata.tables["job_logs"]
        self.project_turns = metadata.tables["project_turns"]

    @contextmanager
    def _begin(self) -> Iterator[Connection]:
        with self.engine.begin() as connection:
            yield connection

    def close(self) -> None:
        """Release the connection pool."""
        self.engine.dispose()

    # jobs ---------------------------------------------------------------------------------------
    def insert_job(self, row: Mapping[str, Any]) -> dict[str, Any] | None:
        """Insert a job; ``None`` when its (project, idempotency key) is already taken."""
        try:
            with self._begin() as db:
                inserted = db.execute(self.jobs.insert().values(**row))
        except sa.exc.IntegrityError:
            return None
        (seq,) = inserted.inserted_primary_key or (None,)
        return {**dict.fromkeys(self.jobs.c.keys()), **row, "seq": seq}

    def get_job(self, project_id: str, job_id: str) -> dict[str, Any] | None:
        """One job of ``project_id`` (``None`` when that project has no such job)."""
        query = self.jobs.select().where(self.jobs.c.project_id == project_id, self.jobs.c.id == job_id)
        return self._one(query)

    def job_by_key(self, project_id: str, key: str) -> dict[str, Any] | None:
        """The job submitted with idempotency key ``key`` in ``project_id``."""
        query = self.jobs.select().where(
            self.jobs.c.project_id == project_id, self.jobs.c.idempotency_key == key
        )
        return self._one(query)

    def list_jobs(
        self,
        project_id: str,
        *,
        limit: int,
        before_seq: int | None = None,
        status: str | None = None,
        analysis_id: str | None = None,
        trigger: str | None = None,
        since: float | None = None,
        until: float | None = None,
    ) -> list[dict[str, Any]]:
        """Jobs of a project, newest first, filtered; ``before_seq`` is the pagination cursor."""
        c = self.jobs.c
        query = self.jobs.select().where(c.project_id == project_id)
        for column, value in ((c.status, status), (c.analysis_id, analysis_id), (c.trigger, trigger)):
            if value is not None:
                query = query.where(column == value)
        if since is not None:
            query = query.where(c.created_at >= since)
        if until is not None:
            query = query.where(c.created_at < until)
        if before_seq is not None:
            query = query.where(c.seq < before_seq)
        return self._all(query.order_by(c.seq.desc()).limit(limit))

    def jobs_in(self, statuses: tuple[str, ...]) -> list[dict[str, Any]]:
        """Every job in one of ``statuses``, oldest first (recovery, the queue at start-up)."""
        query = self.jobs.select().where(self.jobs.c.status.in_(statuses)).order_by(self.jobs.c.seq)
        return self._all(query)

    def job_by_id(self, job_id: str) -> dict[str, Any] | None:
        """A job of any project (a worker knows only the job's id)."""
        return self._one(self.jobs.select().where(self.jobs.c.id == job_id))

    def running_job_of_turn(self, queue_job_id: int) -> dict[str, Any] | None:
        """The running job that the procrastinate job ``queue_job_id`` (a turn) claimed."""
        j = self.jobs.c
        return self._one(self.jobs.select().where(j.queue_job_id == queue_job_id, j.status == "running"))

    def job_statuses(self, job_ids: list[str]) -> dict[str, str]:
        """The status of each of ``job_ids`` that exists."""
        query = sa.select(self.jobs.c.id, self.jobs.c.status).where(self.jobs.c.id.in_(job_ids))
        with self.engine.connect() as db:
            return {row.id: row.status for row in db.execute(query)}

    def count_jobs(self, statuses: tuple[str, ...]) -> int:
        """How many jobs (of every project) are in one of ``statuses``."""
        query = sa.select(sa.func.count()).select_from(self.jobs).where(self.jobs.c.status.in_(statuses))
        with self.engine.connect() as db:
            return int(db.execute(query).scalar_one())

    def update_job(
        self,
        job_id: str,
        *,
        only_if_status: tuple[str, ...] = (),
        only_if_attempt: int | None = None,
        **values: Any,
    ) -> bool:
        """Set ``values`` on a job (if it is in one of ``only_if_status``, at ``only_if_attempt``).

        Whether a row changed: the conditions make a change a compare-and-set, so two processes
        (a worker and the server that declared it lost) never both move the same job.
        """
        statement = self.jobs.update().where(self.jobs.c.id == job_id)
        if only_if_status:
            statement = statement.where(self.jobs.c.status.in_(only_if_status))
        if only_if_attempt is not None:
            statement = statement.where(self.jobs.c.attempt == only_if_attempt)
        with self._begin() as db:
            return db.execute(statement.values(**values)).rowcount == 1

    # analysis versions --------------------------------------------------------------------------
    def put_version(self, row: Mapping[str, Any]) -> bool:
        """Store a version; ``False`` when this content was already stored (versions are immutable)."""
        try:
            with self._begin() as db:
                db.execute(self.versions.insert().values(**row))
        except sa.exc.IntegrityError:
            return False
        return True

    def get_version(self, project_id: str, analysis_id: str, version: str) -> dict[str, Any] | None:
        """One stored version, source included."""
        v = self.versions.c
        query = self.versions.select().where(
            v.project_id == project_id, v.analysis_id == analysis_id, v.version == version
        )
        return self._one(query)

    def list_versions(self, project_id: str, analysis_id: str | None = None) -> list[dict[str, Any]]:
        """Versions of one analysis (or of every analysis of the project), newest first, no sources."""
        v = self.versions.c
        columns = [v.project_id, v.analysis_id, v.version, v.kind, v.size_bytes, v.retries, v.created_at]
        query = sa.select(*columns).where(v.project_id == project_id)
        if analysis_id is not None:
            query = query.where(v.analysis_id == analysis_id)
        return self._all(query.order_by(v.created_at.desc(), v.version))

    # schedules ----------------------------------------------------------------------------------
    def insert_schedule(self, row: Mapping[str, Any]) -> None:
        """Store a new schedule."""
        with self._begin() as db:
            db.execute(self.schedules.insert().values(**row))

    def get_schedule(self, project_id: str, schedule_id: str) -> dict[str, Any] | None:
        """One schedule of ``project_id``."""
        s = self.schedules.c
        return self._one(self.schedules.select().where(s.project_id == project_id, s.id == schedule_id))

    def list_schedules(self, project_id: str | None = None) -> list[dict[str, Any]]:
        """Schedules of a project (every project's with ``None``), oldest first."""
        query = self.schedules.select()
        if project_id is not None:
            query = query.where(self.schedules.c.project_id == project_id)
        return self._all(query.order_by(self.schedules.c.created_at, self.schedules.c.id))

    def update_schedule(
        self, schedule_id: str, *, only_if_next_run_at: float | None = None, **values: Any
    ) -> bool:
        """Set ``values`` on a schedule (if its next run is still ``only_if_next_run_at``).

        Whether a row changed: with ``only_if_next_run_at`` one server of many claims a fire time.
        """
        statement = self.schedules.update().where(self.schedules.c.id == schedule_id)
        if only_if_next_run_at is not None:
            statement = statement.where(self.schedules.c.next_run_at == only_if_next_run_at)
        with self._begin() as db:
            return db.execute(statement.values(**values)).rowcount == 1

    def delete_schedule(self, project_id: str, schedule_id: str) -> bool:
        """Delete a schedule of ``project_id``; whether it existed."""
        s = self.schedules.c
        with self._begin() as db:
            deleted = db.execute(
                self.schedules.delete().where(s.project_id == project_id, s.id == schedule_id)
            )
            return deleted.rowcount == 1

    # artifacts (jobs run by workers) -----------------------------------------------------------
    def put_artifact(self, job_id: str, data: bytes) -> None:
        """Keep the Parquet artifact of a job a worker ran."""
        with self._begin() as db:
            db.execute(self.artifacts.delete().where(self.artifacts.c.job_id == job_id))
            db.execute(self.artifacts.insert().values(job_id=job_id, data=data))

    def get_artifact(self, job_id: str) -> bytes | None:
        """The artifact a worker stored for ``job_id``."""
        query = sa.select(self.artifacts.c.data).where(self.artifacts.c.job_id == job_id)
        with self.engine.connect() as db:
            row = db.execute(query).first()
        return None if row is None else bytes(row[0])

    def delete_artifacts_before(self, cutoff: float) -> list[str]:
        """Delete the stored artifacts of jobs that finished before ``cutoff``; their job ids."""
        j, a = self.jobs.c, self.artifacts.c
        expired = sa.select(j.id).where(j.finished_at < cutoff)
        with self._begin() as db:
            ids = [row[0] for row in db.execute(sa.select(a.job_id).where(a.job_id.in_(expired)))]
            if ids:
                db.execute(self.artifacts.delete().where(a.job_id.in_(ids)))
        return ids

    def finished_at(self, job_ids: list[str]) -> dict[str, float]:
        """When each of ``job_ids`` finished (jobs unknown or not finished are left out)."""
        ended: dict[str, float] = {}
        with self.engine.connect() as db:
            for start in range(0, len(job_ids), 500):
                query = sa.select(self.jobs.c.id, self.jobs.c.finished_at).where(
                    self.jobs.c.id.in_(job_ids[start : start + 500]), self.jobs.c.finished_at.is_not(None)
                )
                ended.update((row[0], float(row[1])) for row in db.execute(query))
        return ended

    def put_datasources(self, project_id: str, text: str | None) -> None:
        """Share a project's datasources file with the workers (``None``: the project has none)."""
        with self._begin() as db:
            db.execute(self.datasources.delete().where(self.datasources.c.project_id == project_id))
            if text is not None:
                db.execute(
                    self.datasources.insert().values(project_id=project_id, text=text, updated_at=time.time())
                )

    def get_datasources(self, project_id: str) -> str | None:
        """The datasources file a server shared for ``project_id``."""
        query = sa.select(self.datasources.c.text).where(self.datasources.c.project_id == project_id)
        with self.engine.connect() as db:
            row = db.execute(query).first()
        return None if row is None else str(row[0])

    # tokens -------------------------------------------------------------------------------------
    def insert_token(self, token_id: str, token_hash: str, project_id: str | None, admin: bool) -> None:
        """Store a token's hash and scope."""
        with self._begin() as db:
            db.execute(
                self.tokens.insert().values(
                    id=token_id, token_hash=token_hash, project_id=project_id, admin=admin,
                    created_at=time.time(),
                )
            )  # fmt: skip

    def token_by_hash(self, token_hash: str) -> dict[str, Any] | None:
        """The token whose hash is ``token_hash``."""
        return self._one(self.tokens.select().where(self.tokens.c.token_hash == token_hash))

    # helpers ------------------------------------------------------------------------------------
    def _one(self, query: sa.Select[Any]) -> dict[str, Any] | None:
        with self.engine.connect() as db:
            row = db.execute(query).mappings().first()
        return dict(row) if row is not None else None

    def _all(self, query: sa.Select[Any]) -> list[dict[str, Any]]:
        with self.engine.connect() as db:
            return [dict(row) for row in db.execute(query).mappings()]
