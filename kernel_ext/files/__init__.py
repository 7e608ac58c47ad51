"""``analysis.files``: the backend file API client behind ``ctx.files``.

``Files`` calls the backend's file API (README, "The file API": ``list``, ``get_metadata``,
``read``, ``search``) and adds ``read_text``, ``read_json`` and ``load`` (a CSV, JSON or
Parquet file straight into DuckDB). The reference server it talks to in tests and the
quickstart is ``analysis files serve`` (:mod:`analysis.runner.fileserver`).
"""

from __future__ import annotations

from analysis.files._client import FILE_ID_PATTERN, FileMetadata, Files, validate_file_id
from analysis.files._errors import (
    FileApiConnectionError,
    FileApiError,
    FileApiNotConfiguredError,
    FileApiRedirectError,
    FileApiResponseError,
    FileApiStatusError,
    FileApiTimeoutError,
    FileLoadError,
    FileNotFoundInApiError,
    FileTooLargeError,
    InvalidFileIdError,
)
from analysis.files._policy import RETRY_STATUSES, FileApiLimits

__all__ = [
    "FILE_ID_PATTERN",
    "RETRY_STATUSES",
    "FileApiConnectionError",
    "FileApiError",
    "FileApiLimits",
    "FileApiNotConfiguredError",
    "FileApiRedirectError",
    "FileApiResponseError",
    "FileApiStatusError",
    "FileApiTimeoutError",
    "FileLoadError",
    "FileMetadata",
    "FileNotFoundInApiError",
    "FileTooLargeError",
    "Files",
    "InvalidFileIdError",
    "validate_file_id",
]
