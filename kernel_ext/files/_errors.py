"""Exceptions of the file API client; all are ``FileApiError`` (``error_type: "file_api_error"``).

Hierarchy::

    FileApiError                        (analysis.errors)
    ├── FileApiNotConfiguredError       no backend URL
    ├── InvalidFileIdError              bad file id, caught before any request (also ValueError)
    ├── FileApiConnectionError          cannot connect, connection dropped (also ConnectionError)
    ├── FileApiTimeoutError             a named limit fired (also TimeoutError)
    ├── FileApiStatusError              an HTTP error status; carries ``status`` and ``path``
    │   └── FileNotFoundInApiError      404 for a file id (also LookupError)
    ├── FileApiResponseError            invalid JSON, wrong content type, truncated body, bad shape
    │   ├── FileApiRedirectError        a redirect to another origin (never followed)
    │   └── FileTooLargeError           body larger than ``max_body_bytes``
    └── FileLoadError                   ``read_text``/``read_json``/``load`` cannot parse the file
                                        (also ValueError)

No message ever holds the bearer token: messages name the URL path, never headers.
"""

from __future__ import annotations

from analysis.errors import FileApiError

__all__ = [
    "FileApiConnectionError",
    "FileApiError",
    "FileApiNotConfiguredError",
    "FileApiRedirectError",
    "FileApiResponseError",
    "FileApiStatusError",
    "FileApiTimeoutError",
    "FileLoadError",
    "FileNotFoundInApiError",
    "FileTooLargeError",
    "InvalidFileIdError",
]


class FileApiNotConfiguredError(FileApiError):
    """No backend URL is configured (``ANALYSIS_BACKEND_URL``), or it is not http(s)."""


class InvalidFileIdError(FileApiError, ValueError):
    """A file id is not of the form ``[A-Za-z0-9_-][A-Za-z0-9._-]{0,127}``.

    Parameters
    ----------
    message
        The sentence to show.
    file_id
        The rejected id (kept as given, for callers; the message holds a shortened ``repr``).
    """

    def __init__(self, message: str, *, file_id: object) -> None:
        super().__init__(message)
        self.file_id = file_id


class FileApiConnectionError(FileApiError, ConnectionError):
    """The backend could not be reached, or dropped the connection, after every retry.

    Parameters
    ----------
    message
        The sentence to show.
    path
        The URL path of the request (no host, no query values of note, never a header).
    """

    def __init__(self, message: str, *, path: str) -> None:
        super().__init__(message)
        self.path = path


class FileApiTimeoutError(FileApiError, TimeoutError):
    """A time limit fired while talking to the backend.

    Parameters
    ----------
    message
        The sentence to show; it names the limit.
    path
        The URL path of the request.
    limit
        Which limit fired: ``"connect_timeout_s"``, ``"read_timeout_s"``, ``"write_timeout_s"``,
        ``"pool_timeout_s"``, ``"request_timeout_s"`` or ``"deadline"`` (the job's deadline).
    limit_s
        The value of that limit in seconds, when known.
    """

    def __init__(self, message: str, *, path: str, limit: str, limit_s: float | None) -> None:
        super().__init__(message)
        self.path = path
        self.limit = limit
        self.limit_s = limit_s


class FileApiStatusError(FileApiError):
    """The backend answered with an HTTP error status.

    Parameters
    ----------
    message
        The sentence to show.
    status
        The HTTP status code.
    path
        The URL path of the request.
    """

    def __init__(self, message: str, *, status: int, path: str) -> None:
        super().__init__(message)
        self.status = status
        self.path = path


class FileNotFoundInApiError(FileApiStatusError, LookupError):
    """The backend has no file with this id (HTTP 404).

    Parameters
    ----------
    message
        The sentence to show; it names the file id.
    file_id
        The id that was not found.
    path
        The URL path of the request.
    """

    def __init__(self, message: str, *, file_id: str, path: str) -> None:
        super().__init__(message, status=404, path=path)
        self.file_id = file_id


class FileApiResponseError(FileApiError):
    """The backend answered with something unusable: invalid JSON, wrong content type, truncated.

    Parameters
    ----------
    message
        The sentence to show.
    path
        The URL path of the request.
    """

    def __init__(self, message: str, *, path: str) -> None:
        super().__init__(message)
        self.path = path


class FileApiRedirectError(FileApiResponseError):
    """The backend redirected to another origin; such redirects are never followed."""


class FileTooLargeError(FileApiResponseError):
    """The response body is larger than the client's ``max_body_bytes``.

    Parameters
    ----------
    message
        The sentence to show; it names the limit.
    path
        The URL path of the request.
    limit_bytes
        The configured cap.
    """

    def __init__(self, message: str, *, path: str, limit_bytes: int) -> None:
        super().__init__(message, path=path)
        self.limit_bytes = limit_bytes


class FileLoadError(FileApiError, ValueError):
    """A file was downloaded but cannot be decoded or loaded (text, JSON, CSV, Parquet).

    Parameters
    ----------
    message
        The sentence to show; it names the file id and the format.
    file_id
        The file concerned.
    """

    def __init__(self, message: str, *, file_id: str) -> None:
        super().__init__(message)
        self.file_id = file_id
