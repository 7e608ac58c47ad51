"""The reference file server: the file API over a folder, ``analysis files serve DIR``.

Layout of ``DIR``: files at the top level belong to no conversation and have their name as id;
files in a subfolder ``DIR/<conversation>/`` belong to that conversation and have the id
``<conversation>--<name>``. Names must be valid file ids (``[A-Za-z0-9_-][A-Za-z0-9._-]*``, at
most 128 characters); hidden files, other names, deeper folders and anything that resolves
outside ``DIR`` (symlinks included) are never served. The id ``search`` is taken by the search
route. Metadata comes from the files themselves (name, size, times, type by extension).

Built on Starlette and served by uvicorn; both are imported only when a server is made, so
importing :mod:`analysis.runner` stays light. The OpenAPI document is at ``/openapi.json``.
"""

from __future__ import annotations

import argparse
import contextlib
import hmac
import mimetypes
import re
import sys
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from analysis.runner.fileserver_openapi import (
    CONVERSATION_ID_RE,
    FILE_ID_RE,
    SEARCH_DEFAULT_LIMIT,
    SEARCH_MAX_LIMIT,
    SEARCH_TEXT_RE,
    openapi_document,
)

if TYPE_CHECKING:
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import Response
    from starlette.types import ASGIApp, Receive, Scope, Send

__all__ = ["FileStore", "add_subparser", "create_app", "openapi_document", "run_files_command", "serve"]

DEFAULT_PORT = 8765
SEARCH_SCAN_BYTES = 8 * 1024 * 1024
_LIMIT = re.compile(r"0*([0-9]{1,3})")  # ASCII digits; leading zeros allowed, never 4300 digits
_FILE_ID = re.compile(FILE_ID_RE)
_CONVERSATION_ID = re.compile(CONVERSATION_ID_RE)
_SEARCH_TEXT = re.compile(SEARCH_TEXT_RE)
_SEPARATOR = "--"
_TYPES = {
    ".csv": "text/csv",
    ".tsv": "text/tab-separated-values",
    ".json": "application/json",
    ".jsonl": "application/x-ndjson",
    ".ndjson": "application/x-ndjson",
    ".parquet": "application/vnd.apache.parquet",
    ".md": "text/markdown",
    ".txt": "text/plain",
}
_TEXTUAL = ("text/", "application/json", "application/x-ndjson", "application/xml")


def _content_type(name: str) -> str:
    suffix = Path(name).suffix.lower()
    return _TYPES.get(suffix) or mimetypes.guess_type(name)[0] or "application/octet-stream"


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class FileStore:
    """The files under one folder, as the API sees them.

    Parameters
    ----------
    root
        The folder served; nothing outside it is ever read.
    """

    def __init__(self, root: Path) -> None:
        self.root = root.resolve(strict=True)

    def _inside(self, path: Path) -> Path | None:
        """``path`` resolved, if it is a regular file inside the root."""
        try:
            real = path.resolve(strict=True)
        except (OSError, RuntimeError):
            return None
        if not real.is_relative_to(self.root) or not real.is_file():
            return None
        return real

    def resolve(self, file_id: str) -> tuple[Path, str | None] | None:
        """The file and conversation behind ``file_id``, or ``None``."""
        if not _FILE_ID.fullmatch(file_id) or file_id == "search":
            return None
        found = self._inside(self.root / file_id)
        if found is not None:
            return found, None
        conversation, sep, name = file_id.partition(_SEPARATOR)
        if sep and _is_conversation(conversation) and _FILE_ID.fullmatch(name):
            found = self._inside(self.root / conversation / name)
            if found is not None:
                return found, conversation
        return None

    def iter_files(self, conversation_id: str | None = None) -> Iterator[tuple[str, Path, str | None]]:
        """``(id, path, conversation)`` of every served file, sorted by id."""
        found: dict[str, tuple[Path, str | None]] = {}
        if conversation_id is not None and not _is_conversation(conversation_id):
            return
        folders = [self.root / conversation_id] if conversation_id is not None else [self.root]
        if conversation_id is None:
            folders += sorted(p for p in self.root.iterdir() if p.is_dir() and _is_conversation(p.name))
        for folder in folders:
            if not folder.is_dir() or not _inside_dir(folder, self.root):
                continue
            conversation = None if folder == self.root else folder.name
            for entry in sorted(folder.iterdir()):
                if not _FILE_ID.fullmatch(entry.name) or self._inside(entry) is None:
                    continue
                file_id = entry.name if conversation is None else f"{conversation}{_SEPARATOR}{entry.name}"
                if file_id != "search" and file_id not in found and self.resolve(file_id) is not None:
                    found[file_id] = (entry, conversation)
        for file_id in sorted(found):
            yield file_id, found[file_id][0], found[file_id][1]

    def all_metadata(self, conversation_id: str | None = None) -> list[dict[str, Any]]:
        """Metadata of every served file (one removed meanwhile is left out)."""
        listed = []
        for file_id, path, conversation in self.iter_files(conversation_id):
            with contextlib.suppress(OSError):
                listed.append(self.metadata(file_id, path, conversation))
        return listed

    @staticmethod
    def metadata(file_id: str, path: Path, conversation: str | None) -> dict[str, Any]:
        """Metadata read from the file itself."""
        st = path.stat()
        created = getattr(st, "st_birthtime", None) or min(st.st_mtime, st.st_ctime)
        return {
            "id": file_id,
            "name": path.name,
            "size": st.st_size,
            "content_type": _content_type(path.name),
            "created_at": _iso(created),
            "modified_at": _iso(st.st_mtime),
            "conversation_id": conversation,
        }

    def search(self, query: str, *, limit: int, conversation_id: str | None = None) -> list[dict[str, Any]]:
        """Files whose name, or text content, holds every word of ``query`` (case-insensitive)."""
        terms = query.lower().split()
        by_name: list[dict[str, Any]] = []
        by_content: list[dict[str, Any]] = []
        for file_id, path, conversation in self.iter_files(conversation_id):
            name = path.name.lower()
            with contextlib.suppress(OSError):  # a file removed meanwhile is left out
                if all(t in name for t in terms):
                    by_name.append({**self.metadata(file_id, path, conversation), "match": "name"})
                elif _content_type(path.name).startswith(_TEXTUAL) and _text_holds(path, terms):
                    by_content.append({**self.metadata(file_id, path, conversation), "match": "content"})
            if len(by_name) >= limit:
                break
        return (by_name + by_content)[:limit]


def _search_limit(raw: str) -> int:
    """``limit`` of a search: ASCII digits only (``'²'.isdigit()`` is true, ``int('')`` fails)."""
    digits = _LIMIT.fullmatch(raw)
    if digits is None or not 1 <= int(digits.group(1)) <= SEARCH_MAX_LIMIT:
        from starlette.exceptions import HTTPException

        raise HTTPException(400, f"limit must be an integer from 1 to {SEARCH_MAX_LIMIT}")
    return int(digits.group(1))


def _is_conversation(name: str) -> bool:
    return len(name) <= 64 and _CONVERSATION_ID.fullmatch(name) is not None


def _inside_dir(folder: Path, root: Path) -> bool:
    try:
        return folder.resolve(strict=True).is_relative_to(root)
    except OSError:
        return False


def _text_holds(path: Path, terms: list[str]) -> bool:
    with path.open("rb") as fh:
        text = fh.read(SEARCH_SCAN_BYTES).decode("utf-8", "replace").lower()
    return all(t in text for t in terms)


class _BearerAuth:
    """ASGI middleware: ``/api/`` requests need ``Authorization: Bearer <token>``.

    The scheme is case-insensitive (RFC 9110 section 11.1: ``bearer`` and ``BEARER`` work too);
    the token is compared in constant time.
    """

    def __init__(self, app: ASGIApp, token: str) -> None:
        self.app = app
        self._expected = token.encode()

    def _authorized(self, header: bytes) -> bool:
        scheme, _, credentials = header.partition(b" ")
        return scheme.lower() == b"bearer" and hmac.compare_digest(credentials.strip(b" "), self._expected)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"].startswith("/api/"):
            given = dict(scope["headers"]).get(b"authorization", b"")
            if not self._authorized(given):
                from starlette.responses import JSONResponse

                response = JSONResponse(
                    {"error": "missing or wrong bearer token"}, 401, headers={"WWW-Authenticate": "Bearer"}
                )
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)


def create_app(root: Path, *, token: str | None = None) -> Starlette:
    """The ASGI app serving ``root`` (see the module docstring); ``token`` enables bearer auth.

    Parameters
    ----------
    root
        The folder to serve.
    token
        When set, every ``/api/`` request needs ``Authorization: Bearer <token>``.
    """
    from starlette.applications import Starlette
    from starlette.exceptions import HTTPException
    from starlette.middleware import Middleware
    from starlette.responses import FileResponse, JSONResponse
    from starlette.routing import Route

    store = FileStore(root)
    document = openapi_document()

    def error(status: int, message: str) -> JSONResponse:
        return JSONResponse({"error": message}, status)

    def only(request: Request, *names: str) -> None:
        unknown = sorted(set(request.query_params.keys()) - set(names))
        if unknown:
            raise HTTPException(400, f"unknown query parameter {unknown[0]!r}; known: {', '.join(names)}")

    def query(request: Request, name: str) -> str | None:
        values = request.query_params.getlist(name)
        if len(values) > 1:
            raise HTTPException(400, f"{name} is given more than once")
        return values[0] if values else None

    def conversation_param(request: Request) -> str | None:
        value = query(request, "conversation_id")
        if value is not None and not _is_conversation(value):
            raise HTTPException(
                400, "conversation_id must be at most 64 characters matching " + CONVERSATION_ID_RE
            )
        return value

    def list_files(request: Request) -> Response:
        only(request, "conversation_id")
        return JSONResponse({"files": store.all_metadata(conversation_param(request))})

    def search_files(request: Request) -> Response:
        only(request, "q", "limit", "conversation_id")
        text = query(request, "q") or ""
        raw_limit = query(request, "limit")
        conversation = conversation_param(request)
        if _SEARCH_TEXT.search(text) is None or len(text) > 1000:
            raise HTTPException(400, "q must be 1 to 1000 characters, not only spaces")
        limit = SEARCH_DEFAULT_LIMIT if raw_limit is None else _search_limit(raw_limit)
        return JSONResponse({"files": store.search(text, limit=limit, conversation_id=conversation)})

    def lookup(request: Request) -> tuple[str, Path, str | None] | JSONResponse:
        file_id = request.path_params["file_id"]
        if not _FILE_ID.fullmatch(file_id):
            return error(400, "file id must match " + FILE_ID_RE)
        found = store.resolve(file_id)
        if found is None:
            return error(404, f"no file with id {file_id!r}")
        return file_id, found[0], found[1]

    def get_metadata(request: Request) -> Response:
        found = lookup(request)
        return found if isinstance(found, JSONResponse) else JSONResponse(store.metadata(*found))

    def get_content(request: Request) -> Response:
        found = lookup(request)
        if isinstance(found, JSONResponse):
            return found
        return FileResponse(found[1], media_type=_content_type(found[1].name))

    def get_openapi(request: Request) -> Response:
        return JSONResponse(document)

    async def http_error(request: Request, exc: Exception) -> Response:
        status = exc.status_code if isinstance(exc, HTTPException) else 500
        detail = exc.detail if isinstance(exc, HTTPException) else "internal error"
        return JSONResponse({"error": detail}, status, headers=getattr(exc, "headers", None))

    routes = [
        Route("/openapi.json", get_openapi, methods=["GET"]),
        Route("/api/files", list_files, methods=["GET"]),
        Route("/api/files/search", search_files, methods=["GET"]),
        Route("/api/files/{file_id}", get_metadata, methods=["GET"]),
        Route("/api/files/{file_id}/content", get_content, methods=["GET"]),
    ]
    middleware = [Middleware(_BearerAuth, token=token)] if token else []
    return Starlette(routes=routes, middleware=middleware, exception_handlers={HTTPException: http_error})


def serve(root: Path, *, host: str = "127.0.0.1", port: int = DEFAULT_PORT, token: str | None = None) -> None:
    """Serve ``root`` with uvicorn until interrupted.

    The socket is bound before the ``[files] serving ... at http://HOST:PORT`` line is printed,
    so ``port=0`` picks a free port and the line names it.
    """
    import socket

    import uvicorn

    app = create_app(root, token=token)
    family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
    sock = socket.create_server((host, port), family=family)
    bound = sock.getsockname()[1]
    auth = "bearer token required" if token else "no token"
    shown = f"[{host}]" if family == socket.AF_INET6 else host
    print(
        f"[files] serving {root} at http://{shown}:{bound} ({auth}); OpenAPI at /openapi.json",
        file=sys.stderr,
        flush=True,
    )
    config = uvicorn.Config(app, log_level="info", lifespan="off", ws="none")
    try:
        uvicorn.Server(config).run(sockets=[sock])
    finally:
        sock.close()


def add_subparser(subparsers: Any) -> argparse.ArgumentParser:
    """Register ``files serve DIR [--host] [--port] [--token]`` on an argparse subparsers object."""
    files: argparse.ArgumentParser = subparsers.add_parser("files", help="the reference backend file API")
    commands = files.add_subparsers(dest="files_command", required=True)
    parser = commands.add_parser("serve", help="serve a folder over the file API")
    parser.add_argument("dir", type=Path, help="folder to serve")
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    parser.add_argument(
        "--port", type=int, default=DEFAULT_PORT, help=f"port (default {DEFAULT_PORT}; 0 picks a free one)"
    )
    parser.add_argument(
        "--token",
        default=None,
        help="require this bearer token (default: ANALYSIS_BACKEND_TOKEN when set, else no token)",
    )
    parser.set_defaults(handler=run_files_command)
    return files


def run_files_command(args: argparse.Namespace) -> int:
    """Run ``analysis files ...``; return the exit code (2: usage error)."""
    from analysis.config import Settings

    root: Path = args.dir
    if not root.is_dir():
        print(f"analysis files serve: {root} is not a folder", file=sys.stderr)
        return 2
    token = args.token if args.token is not None else Settings.from_env().backend_token
    serve(root, host=args.host, port=args.port, token=token)
    return 0
