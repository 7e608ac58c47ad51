"""``analysis datasource add|list|test|rotate-key``: manage a project's datasources file.

* ``add NAME --kind postgres --host H --port P --database D --user U [--read-write]``: reads the
  password (prompt without echo, or one line of stdin when it is not a terminal), encrypts it
  with ``ANALYSIS_SECRET_KEY`` and writes only the Fernet token (``password_encrypted``).
  ``--password-env VAR`` stores the variable's name instead.
* ``list``: names, kinds and addresses; never a password or token.
* ``test NAME``: connects, prints the server version and the round-trip latency.
* ``rotate-key``: re-encrypts every token under a new key (``--new-key`` or one line of stdin;
  generated when neither). Every token is decrypted first: if any fails nothing is written.
* ``genkey``: prints a new Fernet key.

The file is rewritten atomically (temporary file, mode 0600, then rename).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

__all__ = ["add_subparser", "run_datasource_command"]

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


def add_subparser(subparsers: Any) -> argparse.ArgumentParser:
    """Register ``datasource ...`` on an argparse subparsers object."""
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "datasource", help="manage a project's datasources"
    )
    parser.add_argument("--project", default="default", metavar="ID", help="project id (default: default)")
    parser.add_argument("--file", type=Path, default=None, help="datasources file (default: the project's)")
    commands = parser.add_subparsers(dest="datasource_command", required=True)

    add = commands.add_parser("add", help="add or replace a datasource; the password is stored encrypted")
    add.add_argument("name")
    add.add_argument("--kind", required=True, choices=["postgres", "mysql"])
    add.add_argument("--host", default="127.0.0.1")
    add.add_argument("--port", type=int, default=None)
    add.add_argument("--database", required=True)
    add.add_argument("--user", required=True)
    add.add_argument("--password-env", default=None, metavar="VAR", help="store this variable's name instead")
    add.add_argument("--read-write", action="store_true", help="allow writes (default: read-only)")
    add.add_argument("--connect-timeout-s", type=float, default=None)
    add.add_argument("--statement-timeout-s", type=float, default=None)

    commands.add_parser("list", help="list the configured datasources")
    test = commands.add_parser("test", help="connect and report the server version and latency")
    test.add_argument("name")
    rotate = commands.add_parser("rotate-key", help="re-encrypt every password under a new key")
    rotate.add_argument(
        "--new-key",
        default=None,
        help="the new Fernet key, as --new-key=KEY since a key may start with '-' "
        "(default: stdin, else generated)",
    )
    commands.add_parser("genkey", help="print a new Fernet key")
    parser.set_defaults(handler=run_datasource_command)
    return parser


def _path(args: argparse.Namespace) -> Path:
    from analysis.config import Settings

    if args.file is not None:
        return Path(args.file)
    return Settings.from_env().datasources_path(args.project)


def _read(path: Path) -> dict[str, Any]:
    import tomllib

    if not path.is_file():
        return {}
    return tomllib.loads(path.read_text(encoding="utf-8"))


def _write(path: Path, data: dict[str, Any]) -> None:
    import os
    import tempfile

    import tomli_w

    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".datasources-", suffix=".toml", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            tomli_w.dump(data, fh)
        os.chmod(tmp, 0o600)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _read_secret(prompt: str) -> str:
    import getpass

    if sys.stdin.isatty():
        return getpass.getpass(prompt)
    return sys.stdin.readline().rstrip("\r\n")


def run_datasource_command(args: argparse.Namespace) -> int:
    """Run ``analysis datasource ...``; return the exit code."""
    from analysis.errors import AnalysisError

    try:
        handler = {
            "add": _add,
            "list": _list,
            "test": _test,
            "rotate-key": _rotate,
            "genkey": _genkey,
        }[args.datasource_command]
        return handler(args)
    except AnalysisError as exc:
        print(f"analysis datasource: {exc.message}", file=sys.stderr)
        return EXIT_FAILED
    except OSError as exc:
        print(f"analysis datasource: {exc}", file=sys.stderr)
        return EXIT_FAILED


def _add(args: argparse.Namespace) -> int:
    from analysis.config import Settings
    from analysis.sources.secrets import encrypt

    path = _path(args)
    data = _read(path)
    entry: dict[str, Any] = {"kind": args.kind, "host": args.host}
    entry["port"] = args.port or (5432 if args.kind == "postgres" else 3306)
    entry.update({"database": args.database, "user": args.user, "read_only": not args.read_write})
    if args.connect_timeout_s is not None:
        entry["connect_timeout_s"] = args.connect_timeout_s
    if args.statement_timeout_s is not None:
        entry["statement_timeout_s"] = args.statement_timeout_s
    if args.password_env:
        entry["password_env"] = args.password_env
    else:
        password = _read_secret(f"Password for {args.user}@{args.host} ({args.name}): ")
        if not password:
            print("analysis datasource add: no password given", file=sys.stderr)
            return EXIT_USAGE
        entry["password_encrypted"] = encrypt(password, Settings.from_env().secret_key)
    data[args.name] = entry
    _write(path, data)
    print(f"Saved datasource {args.name!r} ({args.kind}) in {path}")
    return EXIT_OK


def _list(args: argparse.Namespace) -> int:
    path = _path(args)
    data = _read(path)
    if not data:
        print(f"No datasources in {path}")
        return EXIT_OK
    for name, entry in sorted(data.items()):
        if not isinstance(entry, dict):
            continue
        user, host, port, database = (entry.get(k, "") for k in ("user", "host", "port", "database"))
        where = entry.get("path") or f"{user}@{host}:{port}/{database}"
        secret = "none"
        if "password_encrypted" in entry:
            secret = "encrypted"
        elif "password_env" in entry:
            secret = f"env {entry['password_env']}"
        mode = "read-only" if entry.get("read_only", True) else "read-write"
        print(f"{name}\t{entry.get('kind')}\t{where}\t{mode}\tpassword: {secret}")
    return EXIT_OK


def _test(args: argparse.Namespace) -> int:
    import time

    from analysis.sources import Datasources

    sources = Datasources(_path(args))
    try:
        started = time.perf_counter()
        source = sources.get(args.name)
        version_of = getattr(source, "server_version", None)
        version = version_of() if version_of is not None else "(no server)"
        connected_ms = (time.perf_counter() - started) * 1000
        started = time.perf_counter()
        source.query("SELECT 1", None, timeout_s=10)
        latency_ms = (time.perf_counter() - started) * 1000
    finally:
        sources.close()
    print(f"{args.name}: OK, {version}; connect {connected_ms:.1f} ms, round trip {latency_ms:.1f} ms")
    return EXIT_OK


def _rotate(args: argparse.Namespace) -> int:
    from cryptography.fernet import Fernet

    from analysis.config import Settings
    from analysis.sources.secrets import SecretKeyError, decrypt, encrypt, multi_fernet

    old_keys = Settings.from_env().secret_key
    new_key = args.new_key
    generated = False
    if new_key is None and not sys.stdin.isatty():
        new_key = sys.stdin.readline().strip() or None
    if new_key is None:
        new_key, generated = Fernet.generate_key().decode("ascii"), True
    multi_fernet(new_key)  # validates the new key before anything else
    path = _path(args)
    data = _read(path)
    plain: dict[str, str] = {}
    failed: list[str] = []
    for name, entry in data.items():
        if isinstance(entry, dict) and isinstance(entry.get("password_encrypted"), str):
            try:
                plain[name] = decrypt(entry["password_encrypted"], old_keys).reveal()
            except SecretKeyError as exc:
                failed.append(f"{name} ({exc.message})")
    if failed:
        print(
            f"analysis datasource rotate-key: nothing changed; cannot decrypt: {', '.join(failed)}",
            file=sys.stderr,
        )
        return EXIT_FAILED
    for name, password in plain.items():
        data[name]["password_encrypted"] = encrypt(password, new_key)
    _write(path, data)
    print(f"Re-encrypted {len(plain)} password(s) in {path}.")
    if generated:
        print(f"New key (set ANALYSIS_SECRET_KEY to it): {new_key}")
    else:
        print("Set ANALYSIS_SECRET_KEY to the new key.")
    return EXIT_OK


def _genkey(args: argparse.Namespace) -> int:
    from cryptography.fernet import Fernet

    print(Fernet.generate_key().decode("ascii"))
    return EXIT_OK
