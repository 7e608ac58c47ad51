"""The file API client's policy: its limits, and what it accepts from headers (token, Retry-After)."""

from __future__ import annotations

import email.utils
from dataclasses import dataclass
from datetime import UTC, datetime

from analysis.files._errors import FileApiNotConfiguredError

__all__ = ["RETRY_STATUSES", "FileApiLimits", "header_token", "retry_after_s"]

#: Statuses on which a GET is retried.
RETRY_STATUSES: frozenset[int] = frozenset({429, 500, 502, 503, 504})


@dataclass(frozen=True)
class FileApiLimits:
    """Time, size and retry limits of the file API client. ``None`` disables a limit.

    Parameters
    ----------
    connect_timeout_s, read_timeout_s, write_timeout_s, pool_timeout_s
        httpx's four timeouts: to open a connection, between two reads, between two writes,
        to get a connection from the pool.
    request_timeout_s
        Total time of one attempt, body included (catches a server that trickles bytes).
    max_body_bytes
        Largest response body accepted (default 100 MiB).
    max_attempts
        Attempts per call, the first included.
    backoff_initial_s, backoff_max_s
        Backoff before retry ``n`` is drawn from ``[d/2, d]`` with ``d = min(max, initial * 2**(n-1))``.
    max_retry_after_s
        The longest ``Retry-After`` honoured when the job has no deadline.
    max_redirects
        Same-origin redirects followed per attempt.
    """

    connect_timeout_s: float | None = 10.0
    read_timeout_s: float | None = 30.0
    write_timeout_s: float | None = 30.0
    pool_timeout_s: float | None = 10.0
    request_timeout_s: float | None = 120.0
    max_body_bytes: int | None = 100 * 1024 * 1024
    max_attempts: int = 4
    backoff_initial_s: float = 0.25
    backoff_max_s: float = 8.0
    max_retry_after_s: float = 60.0
    max_redirects: int = 5


def header_token(token: str | None) -> str | None:
    """The token as it can go in a header: surrounding white space (a token file's newline) dropped.

    Raises
    ------
    FileApiNotConfiguredError
        The token holds a character no HTTP header may carry; the message does not show it.
    """
    token = (token or "").strip()
    for position, char in enumerate(token, 1):
        if not (" " <= char <= "~"):
            raise FileApiNotConfiguredError(
                f"ANALYSIS_BACKEND_TOKEN holds a character that cannot go in an HTTP header "
                f"(character {position}, {'a control character' if char.isascii() else 'not ASCII'}); "
                "the token is not shown."
            )
    return token or None


def retry_after_s(value: str | None) -> float | None:
    """Seconds to wait from a ``Retry-After`` header (delta-seconds or HTTP-date)."""
    if not value:
        return None
    value = value.strip()
    if value.isascii() and value.isdigit():  # '²'.isdigit() is true, float('²') fails
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - datetime.now(UTC)).total_seconds())
