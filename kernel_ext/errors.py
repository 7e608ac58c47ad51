"""Exceptions raised by ``analysis``, inside the kernel and in the runner.

Every failure a user or a backend can see maps to one ``error_type`` of the result
envelope (README, "The envelope"). Each exception class names its ``error_type`` and knows
how to become the failure part of an envelope (``to_dict``).

Hierarchy::

    AnalysisError                       (root; error_type "analysis_error")
    ├── InvalidAnalysisError            invalid_analysis
    ├── InvalidParametersError          invalid_parameters   (also ValueError)
    ├── ResultError
    │   ├── ResultTooLargeError         result_too_large
    │   └── ResultNotSerializableError  result_not_serializable  (also TypeError)
    ├── DatasourceNotFoundError         datasource_not_found (also LookupError)
    ├── DatasourceError                 datasource_error
    ├── DependencyError                 dependency_error
    ├── FileApiError                    file_api_error
    ├── JobTimeoutError                 timeout              (also TimeoutError)
    ├── JobCancelledError               cancelled
    ├── KernelDiedError                 kernel_died
    ├── KernelStartError                kernel_start_failed
    ├── OutOfMemoryError                out_of_memory        (also MemoryError)
    ├── ResourceLimitError              resource_limit
    └── WorkerLostError                 worker_lost

This module imports nothing heavy: both sides of the kernel boundary use it.
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "ERROR_TYPES",
    "AnalysisError",
    "DatasourceError",
    "DatasourceNotFoundError",
    "DependencyError",
    "FileApiError",
    "InvalidAnalysisError",
    "InvalidParametersError",
    "JobCancelledError",
    "JobTimeoutError",
    "KernelDiedError",
    "KernelStartError",
    "OutOfMemoryError",
    "ResourceLimitError",
    "ResultError",
    "ResultNotSerializableError",
    "ResultTooLargeError",
    "WorkerLostError",
]

#: Every ``error_type`` the envelope may carry (README, "The envelope").
ERROR_TYPES: frozenset[str] = frozenset(
    {
        "invalid_analysis",
        "invalid_parameters",
        "analysis_error",
        "timeout",
        "result_too_large",
        "result_not_serializable",
        "kernel_died",
        "kernel_start_failed",
        "out_of_memory",
        "resource_limit",
        "datasource_not_found",
        "datasource_error",
        "file_api_error",
        "cancelled",
        "dependency_error",
        "worker_lost",
    }
)


class AnalysisError(Exception):
    """Root of every ``analysis`` exception.

    Parameters
    ----------
    message
        One human sentence that names the cause and the limit or name involved.
    """

    error_type: str = "analysis_error"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def to_dict(self) -> dict[str, Any]:
        """The failure fields of an envelope: ``error`` and ``error_type``."""
        return {"error": self.message, "error_type": self.error_type}


class InvalidAnalysisError(AnalysisError):
    """The analysis cannot run: a syntax error, no ``run``, or a bad signature."""

    error_type = "invalid_analysis"


class InvalidParametersError(AnalysisError, ValueError):
    """The job's parameters are malformed or unknown."""

    error_type = "invalid_parameters"


class ResultError(AnalysisError):
    """The value an analysis returned cannot be delivered."""


class ResultTooLargeError(ResultError):
    """The encoded result is larger than the job's ``max_result_bytes``."""

    error_type = "result_too_large"


class ResultNotSerializableError(ResultError, TypeError):
    """The result holds a value with no JSON encoding."""

    error_type = "result_not_serializable"


class DatasourceNotFoundError(AnalysisError, LookupError):
    """No datasource of that name is configured for the project."""

    error_type = "datasource_not_found"


class DatasourceError(AnalysisError):
    """A datasource failed: connection, authentication, query or server error."""

    error_type = "datasource_error"


class DependencyError(AnalysisError):
    """The analysis's declared packages could not be resolved or installed.

    Parameters
    ----------
    message
        One sentence naming the package and the resolver's reason.
    package
        The package (or ``python``) the failure is about, when known.
    """

    error_type = "dependency_error"

    def __init__(self, message: str, *, package: str | None = None) -> None:
        super().__init__(message)
        self.package = package


class FileApiError(AnalysisError):
    """The backend file API failed or answered with something unusable."""

    error_type = "file_api_error"


class JobTimeoutError(AnalysisError, TimeoutError):
    """The job (or cell) ran past its deadline."""

    error_type = "timeout"


class JobCancelledError(AnalysisError):
    """The job was cancelled before it finished."""

    error_type = "cancelled"


class KernelDiedError(AnalysisError):
    """The kernel process ended while the job was running."""

    error_type = "kernel_died"


class KernelStartError(AnalysisError):
    """The kernel could not be started."""

    error_type = "kernel_start_failed"


class OutOfMemoryError(AnalysisError, MemoryError):
    """The job ran out of memory."""

    error_type = "out_of_memory"


class ResourceLimitError(AnalysisError):
    """The job hit a resource limit other than time or memory."""

    error_type = "resource_limit"


class WorkerLostError(AnalysisError):
    """The process running the job died (the server was killed); the job was not retried."""

    error_type = "worker_lost"
