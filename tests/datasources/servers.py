"""Throw-away PostgreSQL 15 and MariaDB 10.11 servers for tests and benchmarks.

Each server runs from a fresh data directory under a temporary folder, listens on a free
loopback port and on a Unix socket in that folder, and has one login user with a password
(``USER`` / ``PASSWORD`` below) owning one database. As root, the server runs as the
``postgres`` / ``mysql`` service user. ``stop()`` ends the server and removes the folder.

This module is imported by path (tests and ``bench/``), so it depends on nothing but the
standard library.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

__all__ = [
    "DATABASE",
    "PASSWORD",
    "USER",
    "MariaDBServer",
    "PostgresServer",
    "ServerMissingError",
    "free_port",
]

USER = "analysis_test"
PASSWORD = "S3cr3t-pw!for-leak-test"  # a distinctive string the leak tests grep for
DATABASE = "testdb"

PG_BIN = Path(os.environ.get("ANALYSIS_PG_BIN", "/usr/lib/postgresql/15/bin"))


class ServerMissingError(RuntimeError):
    """The server binaries are not installed."""


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago (another process may take it since:
    servers started on it go through :func:`_on_a_free_port`)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


#: How a server's log says that its port was taken between ``free_port()`` and its bind.
_PORT_TAKEN = ("Address already in use", "error: 98")


def _on_a_free_port(start: Callable[[int], None], log: Callable[[], str], attempts: int = 5) -> int:
    """Start a server with ``start(port)`` on a port picked just before; the port it got.

    A port picked with ``free_port()`` is free when picked, not when the server binds it: an
    outgoing connection of another process can take it meanwhile. When the server's ``log()``
    says exactly that, the start is repeated on another port; any other failure is raised.
    """
    for attempt in range(attempts):
        port = free_port()
        try:
            start(port)
            return port
        except RuntimeError:
            if attempt == attempts - 1 or not any(marker in log() for marker in _PORT_TAKEN):
                raise
    raise AssertionError("unreachable")


def _as_user(user: str) -> list[str]:
    """The command prefix that runs a program as ``user`` when we are root."""
    return ["runuser", "-u", user, "--"] if os.geteuid() == 0 else []


def _run(cmd: list[str], **kwargs: object) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False, **kwargs)  # type: ignore[call-overload]
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}): {proc.stderr or proc.stdout}")
    return proc  # type: ignore[no-any-return]


def _tempdir(owner: str) -> Path:
    base = Path(tempfile.mkdtemp(prefix=f"analysis-{owner}-"))
    if os.geteuid() == 0:
        entry = pwd.getpwnam(owner)
        os.chown(base, entry.pw_uid, entry.pw_gid)
    return base


@dataclass
class PostgresServer:
    """A PostgreSQL cluster in a temporary folder; ``start()`` then ``stop()``."""

    base: Path = field(default_factory=Path)
    port: int = 0
    host: str = "127.0.0.1"
    #: Extra address to listen on, and the /24 network allowed to log in from it (network namespaces).
    listen_also: str | None = None

    @staticmethod
    def available() -> str | None:
        """``None`` when the binaries are there, else why not."""
        for name in ("initdb", "pg_ctl", "postgres", "psql"):
            if not (PG_BIN / name).exists():
                return f"PostgreSQL 15 is not installed ({PG_BIN / name} is missing; install postgresql)"
        return None

    @property
    def socket_dir(self) -> Path:
        return self.base

    def start(self) -> PostgresServer:
        """Create the cluster, start it, create the test user and database."""
        missing = self.available()
        if missing:
            raise ServerMissingError(missing)
        owner = "postgres" if os.geteuid() == 0 else pwd.getpwuid(os.geteuid()).pw_name
        self.base = _tempdir(owner)
        data = self.base / "data"
        pwfile = self.base / "pw"
        pwfile.write_text("unused-superuser-pw\n")
        if os.geteuid() == 0:
            shutil.chown(pwfile, owner)
        prefix = _as_user(owner)
        _run([
            *prefix, str(PG_BIN / "initdb"), "-D", str(data), "-U", "postgres", "--no-sync",
            "--auth-local=trust", "--auth-host=scram-sha-256", f"--pwfile={pwfile}", "-E", "UTF8",
            "--locale=C",
        ])  # fmt: skip
        listen = "127.0.0.1"
        if self.listen_also:
            listen += f",{self.listen_also}"
            with (data / "pg_hba.conf").open("a") as hba:
                hba.write(f"host all all {self.listen_also}/24 scram-sha-256\n")

        def start(port: int) -> None:
            opts = (
                f"-p {port} -k {self.base} -c listen_addresses={listen} -c fsync=off "
                "-c synchronous_commit=off -c full_page_writes=off -c shared_buffers=128MB"
            )
            _run([*prefix, str(PG_BIN / "pg_ctl"), "-D", str(data), "-o", opts, "-l",
                  str(self.base / "log"), "-w", "-t", "30", "start"])  # fmt: skip

        self.port = _on_a_free_port(start, lambda: (self.base / "log").read_text(errors="replace"))
        try:
            self.psql(f"CREATE ROLE {USER} LOGIN PASSWORD '{PASSWORD}'")
            self.psql(f"CREATE DATABASE {DATABASE} OWNER {USER}")
        except RuntimeError:
            self.stop()
            raise
        return self

    def psql(self, sql: str, *, database: str = "postgres", user: str = "postgres") -> str:
        """Run ``sql`` as ``user`` (default: the superuser) over the socket; return the unaligned output."""
        proc = _run([str(PG_BIN / "psql"), "-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1",
                     "-h", str(self.base), "-p", str(self.port), "-U", user, "-d", database,
                     "-c", sql])  # fmt: skip
        return proc.stdout

    def stop(self) -> None:
        """Stop the server (fast) and remove its folder."""
        if not self.base or not (self.base / "data").exists():
            return
        prefix = _as_user("postgres" if os.geteuid() == 0 else pwd.getpwuid(os.geteuid()).pw_name)
        with contextlib.suppress(RuntimeError):
            _run([*prefix, str(PG_BIN / "pg_ctl"), "-D", str(self.base / "data"), "-m", "immediate",
                  "-w", "-t", "30", "stop"])  # fmt: skip
        shutil.rmtree(self.base, ignore_errors=True)


@dataclass
class MariaDBServer:
    """A MariaDB server in a temporary folder; ``start()`` then ``stop()``."""

    base: Path = field(default_factory=Path)
    port: int = 0
    host: str = "127.0.0.1"
    pid: int | None = None

    @staticmethod
    def available() -> str | None:
        """``None`` when the binaries are there, else why not."""
        for name in ("mariadbd", "mariadb-install-db", "mariadb"):
            if shutil.which(name, path="/usr/sbin:/usr/bin:" + os.environ.get("PATH", "")) is None:
                return f"MariaDB is not installed ({name} not found; install mariadb-server mariadb-client)"
        return None

    @property
    def socket(self) -> Path:
        return self.base / "mysqld.sock"

    def start(self) -> MariaDBServer:
        """Create the data directory, start ``mariadbd``, create the test user and database."""
        missing = self.available()
        if missing:
            raise ServerMissingError(missing)
        owner = "mysql" if os.geteuid() == 0 else pwd.getpwuid(os.geteuid()).pw_name
        self.base = _tempdir(owner)
        data = self.base / "data"
        log = self.base / "error.log"
        user_opt = [f"--user={owner}"] if os.geteuid() == 0 else []
        _run(["mariadb-install-db", "--no-defaults", *user_opt, f"--datadir={data}",
              "--auth-root-authentication-method=socket", "--skip-test-db",
              "--skip-name-resolve"])  # fmt: skip
        mariadbd = shutil.which("mariadbd", path="/usr/sbin:/usr/bin") or "mariadbd"

        def start(port: int) -> None:
            log.unlink(missing_ok=True)
            # setsid --fork: the server is nobody's child, like pg_ctl's postmaster (tests check
            # that jobs leave no child process behind); it is stopped by the pid in its pid file.
            subprocess.run(
                ["setsid", "--fork", mariadbd, "--no-defaults", *user_opt, f"--datadir={data}",
                 f"--port={port}", "--bind-address=127.0.0.1", f"--socket={self.socket}",
                 f"--pid-file={self.base / 'pid'}", f"--log-error={log}", "--skip-log-bin",
                 "--skip-name-resolve", "--innodb-buffer-pool-size=256M",
                 "--innodb-flush-log-at-trx-commit=0", "--innodb-doublewrite=0",
                 "--character-set-server=utf8mb4", "--max-allowed-packet=64M"],
                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True,
            )  # fmt: skip
            deadline = time.monotonic() + 30
            while True:
                try:
                    self.sql("SELECT 1")
                    return
                except RuntimeError:
                    text = log.read_text(errors="replace") if log.exists() else ""
                    if any(marker in text for marker in _PORT_TAKEN):
                        _wait_until_gone(f"--datadir={data}")  # it aborts and frees its data directory
                        raise RuntimeError(f"mariadbd could not bind port {port}") from None
                    if time.monotonic() > deadline:
                        self.stop()
                        raise RuntimeError(f"mariadbd did not start: {text[-2000:]}") from None
                    time.sleep(0.1)

        self.port = _on_a_free_port(start, lambda: log.read_text(errors="replace") if log.exists() else "")
        self.pid = int((self.base / "pid").read_text().strip())
        self.sql(
            f"CREATE USER '{USER}'@'127.0.0.1' IDENTIFIED BY '{PASSWORD}';"
            f"CREATE USER '{USER}'@'localhost' IDENTIFIED BY '{PASSWORD}';"
            f"CREATE DATABASE {DATABASE};"
            f"GRANT ALL ON {DATABASE}.* TO '{USER}'@'127.0.0.1';"
            f"GRANT ALL ON {DATABASE}.* TO '{USER}'@'localhost';"
        )
        return self

    def sql(self, sql: str, *, database: str | None = None) -> str:
        """Run ``sql`` as root over the socket; return the tab-separated output."""
        db = [database] if database else []
        proc = _run(["mariadb", "--no-defaults", f"--socket={self.socket}", "-u", "root", "-N", "-B",
                     *db, "-e", sql])  # fmt: skip
        return proc.stdout

    def stop(self) -> None:
        """Stop the server (SIGTERM to the pid in its pid file, then wait) and remove its folder."""
        pid = self.pid
        if pid is None and self.base != Path() and (self.base / "pid").is_file():
            with contextlib.suppress(ValueError, OSError):
                pid = int((self.base / "pid").read_text().strip())
        if pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
            deadline = time.monotonic() + 30
            while _alive(pid) and time.monotonic() < deadline:
                time.sleep(0.05)
            if _alive(pid):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            self.pid = None
        if self.base != Path():
            shutil.rmtree(self.base, ignore_errors=True)


def _wait_until_gone(argument: str, timeout_s: float = 30) -> None:
    """Wait until no process has ``argument`` on its command line."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        running = []
        for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
            with contextlib.suppress(OSError):
                if argument.encode() in cmdline.read_bytes().split(b"\0"):
                    running.append(cmdline)
        if not running:
            return
        time.sleep(0.05)


def _alive(pid: int) -> bool:
    """Whether process ``pid`` still exists (and is not a zombie)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"
