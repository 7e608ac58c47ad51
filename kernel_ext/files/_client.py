"""``ctx.files``: the backend file API client (README, "The file API")."""

from __future__ import annotations

import codecs
import re
import tempfile
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, TypedDict, cast

import orjson

from analysis.files._errors import (
    FileApiError,
    FileApiNotConfiguredError,
    FileApiResponseError,
    FileLoadError,
    InvalidFileIdError,
)
from analysis.files._http import HttpSession, QueryParams
from analysis.files._load import FORMATS, FileFormat, SupportsLoadData, detect_format, load_into, sniff_format
from analysis.files._policy import FileApiLimits

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping

    import httpx

    from analysis.config import Settings
    from analysis.deadline import Deadline
    from analysis.redact import Redactor

__all__ = ["FILE_ID_PATTERN", "FileMetadata", "Files", "validate_file_id"]

#: What a file id may look like before it goes into a URL path.
FILE_ID_PATTERN = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9._-]{0,127}")
_MODES = ("replace", "append")


class FileMetadata(TypedDict, total=False):
    """A file's metadata as the backend sends it; ``id`` is always there, more keys may be."""

    id: str
    name: str
    size: int
    content_type: str
    created_at: str


_MetadataList = list[FileMetadata]


def validate_file_id(file_id: object) -> str:
    """Return ``file_id`` if it is safe in a URL path, else raise :class:`InvalidFileIdError`.

    Parameters
    ----------
    file_id
        The candidate id: 1-128 characters from ``A-Z a-z 0-9 . _ -``, not starting with a dot.
        This rules out ``/``, ``\\``, ``..``, percent-encoding and control characters.
    """
    if isinstance(file_id, str) and FILE_ID_PATTERN.fullmatch(file_id):
        return file_id
    shown = repr(file_id) if len(repr(file_id)) <= 60 else repr(file_id)[:57] + "..."
    raise InvalidFileIdError(
        f"file id {shown} is not valid: use 1 to 128 of the characters A-Z a-z 0-9 . _ - "
        "and do not start with a dot.",
        file_id=file_id,
    )


class Files:
    """Client of the backend file API, one per job; available in analyses as ``ctx.files``.

    Every call is a GET with bounded retries, timeouts clamped to the job's deadline and a
    body size cap; each logs ``[files] GET <path>``. Errors are :class:`analysis.errors.FileApiError`
    subclasses (``error_type: "file_api_error"``).

    Parameters
    ----------
    settings
        Where the backend is (``backend_url``), its token (``backend_token``) and the body cap
        (``files_max_bytes``).
    deadline
        The job's deadline; no wait or timeout runs past it.
    duck
        The job's DuckDB, for :meth:`load`.
    transport
        An httpx transport, for tests at the protocol edge only.
    limits
        Timeouts, retries and size cap; by default :class:`FileApiLimits` with ``max_body_bytes``
        from ``settings``.
    redactor
        The job's secrets (``ctx.redactor``); errors are scrubbed of them, and of the token, in
        every spelling a library may quote it in.
    cache_dir
        The project's result cache, for ``cache=`` (default: that of ``settings.project_id``).
    """

    def __init__(
        self,
        *,
        settings: Settings,
        deadline: Deadline | None = None,
        duck: SupportsLoadData | None = None,
        transport: httpx.BaseTransport | None = None,
        limits: FileApiLimits | None = None,
        redactor: Redactor | None = None,
        cache_dir: Path | None = None,
    ) -> None:
        from analysis.redact import Redactor

        self._settings = settings
        self._cache_dir = cache_dir
        self._redactor = redactor if redactor is not None else Redactor()
        self._redactor.add(settings.backend_token)
        self._deadline = deadline
        self._duck = duck
        self._transport = transport
        self.limits = limits if limits is not None else FileApiLimits(max_body_bytes=settings.files_max_bytes)
        self._session: HttpSession | None = None
        self._closed = False

    def __repr__(self) -> str:
        where = self._session.origin_text if self._session is not None else "not connected"
        return f"<Files {where}{' closed' if self._closed else ''}>"

    def __enter__(self) -> Files:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def close(self) -> None:
        """Close the HTTP connections. Safe to call twice; later calls raise ``FileApiError``."""
        self._closed = True
        if self._session is not None:
            self._session.close()
            self._session = None

    # -- the four calls of the file API (README, "The file API") ----------------------------
    def list(self, conversation_id: str | None = None) -> _MetadataList:
        """Metadata of the files, all or those of one conversation.

        Parameters
        ----------
        conversation_id
            Only the files of this conversation (``GET /api/files?conversation_id=ID``).

        Returns
        -------
        list of FileMetadata
            Each with at least ``id``; usually ``name``, ``size``, ``content_type``, ``created_at``.
        """
        params: dict[str, str] = {}
        if conversation_id is not None:
            if not isinstance(conversation_id, str):
                raise TypeError(f"conversation_id must be a str, not {type(conversation_id).__name__}")
            params["conversation_id"] = conversation_id
        return self._file_list("/api/files", params)

    def get_metadata(self, file_id: str) -> FileMetadata:
        """Metadata of one file (``GET /api/files/{file_id}``).

        Raises
        ------
        FileNotFoundInApiError
            The backend has no such file.
        """
        path = f"/api/files/{validate_file_id(file_id)}"
        return self._metadata(self._get_json(path, None, file_id), path)

    def search(
        self, query: str, *, limit: int | None = None, **options: str | int | float | bool | None
    ) -> _MetadataList:
        """Files whose name or content matches ``query`` (``GET /api/files/search?q=...``).

        Parameters
        ----------
        query
            The search text.
        limit
            At most this many results (the backend's default when ``None``).
        **options
            Further query parameters the backend understands, e.g. ``conversation_id``;
            ``None`` values are left out.
        """
        if not isinstance(query, str) or not query.strip():
            raise TypeError("search query must be a non-empty str")
        params: dict[str, str | int | float | bool] = {"q": query}
        if limit is not None:
            if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
                raise TypeError(f"search limit must be a positive int, not {limit!r}")
            params["limit"] = limit
        for key, value in options.items():
            if key in params:
                raise TypeError(f"search option {key!r} is given twice")
            if value is None:
                continue
            if not isinstance(value, str | int | float):
                raise TypeError(f"search option {key!r} must be a str, int, float or bool")
            params[key] = ("true" if value else "false") if isinstance(value, bool) else value
        return self._file_list("/api/files/search", params)

    def read(self, file_id: str, *, cache: str | float | None = None) -> bytes:
        """The raw bytes of a file (``GET /api/files/{file_id}/content``), at most ``max_body_bytes``.

        ``cache``: reuse the content fetched by an earlier run up to this old (``"15m"``, seconds)
        while the file's metadata (size, modification time, ETag) is unchanged; README "Result
        cache". ``read_text``, ``read_json`` and ``load`` take it too.
        """
        body, _ = self._read(file_id, cache)
        return body

    # -- conveniences ---------------------------------------------------------------------------
    def read_text(
        self,
        file_id: str,
        *,
        encoding: str | None = None,
        errors: str = "strict",
        cache: str | float | None = None,
    ) -> str:
        """A file decoded as text: ``encoding``, else the charset the backend names, else UTF-8."""
        body, content_type = self._read(file_id, cache)
        name = encoding or _charset(content_type) or "utf-8"
        try:
            codecs.lookup(name)
            return body.decode(name, errors)
        except (LookupError, UnicodeDecodeError) as exc:
            raise FileLoadError(
                f"file {file_id!r} cannot be decoded as {name} text: {exc}.", file_id=file_id
            ) from exc

    def read_json(self, file_id: str, *, cache: str | float | None = None) -> Any:
        """A file parsed as JSON (whatever content type the backend gives it)."""
        body, _ = self._read(file_id, cache)
        try:
            return orjson.loads(body)
        except orjson.JSONDecodeError as exc:
            raise FileLoadError(f"file {file_id!r} is not valid JSON: {exc}.", file_id=file_id) from exc

    def load(
        self,
        file_id: str,
        table: str,
        *,
        mode: str = "replace",
        file_format: FileFormat | None = None,
        cache: str | float | None = None,
    ) -> int:
        """Load a CSV, JSON (array or lines) or Parquet file into DuckDB table ``table``.

        The body is streamed to a private temporary file, parsed by DuckDB's reader and moved
        as Arrow record batches (never Python rows) into the job's DuckDB.

        Parameters
        ----------
        file_id
            The file to load.
        table
            The DuckDB table to create (``"replace"``) or add to (``"append"``).
        mode
            ``"replace"`` or ``"append"``, as in ``ctx.load_data``.
        file_format
            ``"csv"``, ``"json"`` or ``"parquet"``; by default from the content type, else the
            file name's extension, else the file's first bytes.
        cache
            As in :meth:`read`.

        Returns
        -------
        int
            Rows loaded.
        """
        validate_file_id(file_id)
        cache_s = _ttl(cache)
        if self._duck is None:
            raise FileApiError("files.load needs the job's DuckDB: call it as ctx.files.load(...).")
        if mode not in _MODES:
            raise FileLoadError(f"load mode {mode!r} is not 'replace' or 'append'.", file_id=file_id)
        if file_format is not None and file_format not in FORMATS:
            raise FileLoadError(f"file_format {file_format!r} is not one of {FORMATS}.", file_id=file_id)
        with tempfile.TemporaryDirectory(prefix="analysis-files-") as tmp:
            target = Path(tmp) / "body"
            with target.open("wb") as fh:
                headers = self._content(file_id, fh.write, cache_s)
            content_type = headers.get("content-type")
            fmt = file_format or detect_format(content_type, file_id)
            if fmt is None:
                meta = self.get_metadata(file_id)
                fmt = detect_format(meta.get("content_type"), meta.get("name"))
            fmt = fmt or sniff_format(target)
            if fmt is None:
                raise FileLoadError(
                    f"cannot tell the format of file {file_id!r} (content type {content_type!r}): "
                    "pass file_format='csv', 'json' or 'parquet'.",
                    file_id=file_id,
                )
            return load_into(self._duck, target, fmt, table, mode=mode, file_id=file_id)

    # -- plumbing -------------------------------------------------------------------------------
    def _http(self) -> HttpSession:
        if self._closed:
            raise FileApiError("the file API client is closed (its job has ended).")
        if self._session is None:
            if not self._settings.backend_url:
                raise FileApiNotConfiguredError(
                    "no file API is configured: set ANALYSIS_BACKEND_URL (or BACKEND_URL)."
                )
            self._session = HttpSession(
                base_url=self._settings.backend_url,
                token=self._settings.backend_token,
                limits=self.limits,
                deadline=self._deadline,
                transport=self._transport,
                redactor=self._redactor,
            )
        return self._session

    def _read(self, file_id: str, cache: str | float | None = None) -> tuple[bytes, str | None]:
        validate_file_id(file_id)
        body = bytearray()
        headers = self._content(file_id, body.extend, _ttl(cache))
        return bytes(body), headers.get("content-type")

    def _content(
        self, file_id: str, sink: Callable[[bytes], object], cache_s: float | None
    ) -> Mapping[str, str]:
        """``GET`` a file's content into ``sink``, through the result cache when ``cache_s`` asks."""
        if cache_s:
            from analysis.file_cache import cached_get
            from analysis.result_cache import ResultCache

            folder = self._cache_dir or self._settings.cache_dir(self._settings.project_id)
            cache = ResultCache(folder, max_bytes=self._settings.cache_max_bytes)
            return cached_get(self._http(), cache, file_id, sink, cache_s)
        return self._http().get(f"/api/files/{file_id}/content", sink, file_id=file_id)

    def _get_json(self, path: str, params: QueryParams | None, file_id: str | None = None) -> Any:
        body = bytearray()
        headers = self._http().get(path, body.extend, params=params, file_id=file_id)
        media = (headers.get("content-type") or "").split(";", 1)[0].strip().lower()
        if media != "application/json" and not media.endswith("+json"):
            raise FileApiResponseError(
                f"the file API answered GET {path} with content type {media or 'none'!r}, not JSON.",
                path=path,
            )
        try:
            return orjson.loads(body)
        except orjson.JSONDecodeError as exc:
            raise FileApiResponseError(
                f"the file API answered GET {path} with invalid JSON: {exc}.", path=path
            ) from exc

    def _file_list(self, path: str, params: QueryParams) -> _MetadataList:
        data = self._get_json(path, params)
        files = data.get("files") if isinstance(data, dict) else None
        if not isinstance(files, list):
            raise FileApiResponseError(f'the file API answered GET {path} without a "files" list.', path=path)
        return [self._metadata(item, path) for item in files]

    @staticmethod
    def _metadata(item: Any, path: str) -> FileMetadata:
        if not isinstance(item, dict) or not isinstance(item.get("id"), str):
            raise FileApiResponseError(
                f'the file API answered GET {path} with file metadata that has no "id" string.', path=path
            )
        return cast(FileMetadata, item)


def _ttl(cache: str | float | None) -> float | None:
    from analysis.cache_fill import parse_ttl
    from analysis.errors import DatasourceError

    try:
        return parse_ttl(cache)
    except DatasourceError as exc:
        raise FileApiError(str(exc)) from None


def _charset(content_type: str | None) -> str | None:
    for part in (content_type or "").split(";")[1:]:
        key, _, value = part.partition("=")
        if key.strip().lower() == "charset" and value.strip():
            return value.strip().strip('"')
    return None
