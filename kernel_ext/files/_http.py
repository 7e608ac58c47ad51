"""One hardened HTTP session to the backend file API: timeouts, retries, size cap, redirects.

Every request is a ``GET`` (idempotent), so each may be retried: on connection errors, on
429, 500, 502, 503 and 504, with exponential backoff and jitter, honouring ``Retry-After``
when it fits in the job's remaining deadline. Bodies are streamed into a sink with a size cap;
redirects are followed only within the backend's origin. Every limit is clamped to the job's
deadline, and the error says which limit fired.
"""

from __future__ import annotations

import random
import time
import zlib
from collections.abc import Callable, Iterator, Mapping
from typing import TYPE_CHECKING, NoReturn
from urllib.parse import urlencode

import httpx

from analysis.files._budget import AttemptBudget, BudgetTransport
from analysis.files._errors import (
    FileApiConnectionError,
    FileApiError,
    FileApiNotConfiguredError,
    FileApiRedirectError,
    FileApiResponseError,
    FileApiStatusError,
    FileApiTimeoutError,
    FileNotFoundInApiError,
    FileTooLargeError,
)
from analysis.files._inflate import Inflater, UnsupportedEncodingError
from analysis.files._policy import RETRY_STATUSES, FileApiLimits, header_token, retry_after_s
from analysis.logs import emit

if TYPE_CHECKING:
    from analysis.deadline import Deadline
    from analysis.redact import Redactor

__all__ = ["HttpSession", "QueryParams"]

_DEFAULT_PORTS = {"http": 80, "https": 443}
QueryParams = Mapping[str, str | int | float | bool]


class _RetryableError(Exception):
    """An attempt failed in a way worth retrying; ``error`` is raised if no retry is left."""

    def __init__(self, error: FileApiError, reason: str, delay_s: float | None = None) -> None:
        super().__init__(reason)
        self.error = error
        self.reason = reason
        self.delay_s = delay_s


def _origin(url: httpx.URL) -> tuple[str, str, int]:
    return (url.scheme, url.host, url.port or _DEFAULT_PORTS.get(url.scheme, 0))


def _raw_chunks(response: httpx.Response) -> Iterator[bytes]:
    """The body as it came (still encoded); a response built in memory (a test transport) at once."""
    try:
        yield from response.iter_raw()
    except httpx.StreamConsumed:
        yield response.content


class HttpSession:
    """One ``httpx.Client`` to the file API, with the policies described in the module docstring.

    Parameters
    ----------
    base_url
        The backend's base URL; ``/api/files...`` paths are resolved under it.
    token
        Bearer token, sent in the ``Authorization`` header only.
    limits
        Timeouts, caps and retry policy.
    deadline
        The job's deadline; every wait and timeout is clamped to it.
    transport
        An httpx transport, for tests at the protocol edge.
    redactor
        Scrubs the token (and the job's other secrets) from every error raised here.
    """

    def __init__(
        self,
        *,
        base_url: str,
        token: str | None,
        limits: FileApiLimits,
        deadline: Deadline | None,
        transport: httpx.BaseTransport | None = None,
        redactor: Redactor | None = None,
    ) -> None:
        from analysis.redact import Redactor

        self._redactor = redactor if redactor is not None else Redactor()
        self._redactor.add(token)
        token = header_token(token)
        url = httpx.URL(base_url)
        if url.scheme not in _DEFAULT_PORTS or not url.host:
            raise FileApiNotConfiguredError(
                "ANALYSIS_BACKEND_URL must be an http:// or https:// URL with a host."
            )
        self._origin = _origin(url)
        self.origin_text = f"{self._origin[0]}://{self._origin[1]}:{self._origin[2]}"
        self._limits = limits
        self._deadline = deadline
        self._budget = AttemptBudget()
        headers = {"Accept-Encoding": "identity", "User-Agent": "analysis-kernel"}
        if token:
            headers["Authorization"] = f"Bearer {token}"
        self._client = httpx.Client(
            base_url=url.copy_with(username=None, password=None),
            headers=headers,
            timeout=httpx.Timeout(
                connect=limits.connect_timeout_s,
                read=limits.read_timeout_s,
                write=limits.write_timeout_s,
                pool=limits.pool_timeout_s,
            ),
            follow_redirects=False,
            trust_env=False,
            transport=transport if transport is not None else BudgetTransport(self._budget),
        )

    def close(self) -> None:
        """Close the connection pool."""
        self._client.close()

    def get(
        self,
        path: str,
        sink: Callable[[bytes], object],
        *,
        params: QueryParams | None = None,
        file_id: str | None = None,
    ) -> httpx.Headers:
        """GET ``path``, feed the body to ``sink``, return the response headers.

        ``file_id`` turns a 404 into :class:`FileNotFoundInApiError` naming it.
        """
        shown = f"{path}?{urlencode(params)}" if params else path
        emit("files", f"GET {shown}")
        try:
            return self._get(path, shown, sink, params, file_id)
        except BaseException as exc:
            self._redactor.scrub_exception(exc)  # libraries quote what they were given
            raise

    def _get(
        self,
        path: str,
        shown: str,
        sink: Callable[[bytes], object],
        params: QueryParams | None,
        file_id: str | None,
    ) -> httpx.Headers:
        attempts = max(1, self._limits.max_attempts)
        for attempt in range(1, attempts + 1):
            try:
                return self._attempt(path, sink, params, file_id, attempt)
            except _RetryableError as retry:
                if attempt == attempts:
                    raise retry.error from retry.__cause__
                delay = retry.delay_s if retry.delay_s is not None else self._backoff_s(attempt)
                remaining = self._remaining_s()
                if remaining is not None and delay >= remaining:
                    raise retry.error from retry.__cause__
                emit(
                    "files",
                    f"GET {shown}: {retry.reason}; retry {attempt} of {attempts - 1} in {delay:.2f} s",
                )
                time.sleep(delay)
        raise AssertionError("unreachable")  # pragma: no cover

    # -- one attempt ----------------------------------------------------------------------------
    def _attempt(
        self,
        path: str,
        sink: Callable[[bytes], object],
        params: QueryParams | None,
        file_id: str | None,
        attempt: int,
    ) -> httpx.Headers:
        started = time.monotonic()
        self._check_time(path, started)
        with self._budget.until(*self._attempt_end(started)):
            return self._attempt_within_budget(path, sink, params, file_id, attempt=attempt, started=started)

    def _attempt_end(self, started: float) -> tuple[float | None, str]:
        """When this attempt must be over (monotonic clock), and the limit that says so."""
        ends: list[tuple[float, str]] = []
        if self._limits.request_timeout_s is not None:
            ends.append((started + self._limits.request_timeout_s, "request_timeout_s"))
        remaining = self._remaining_s()
        if remaining is not None:
            ends.append((time.monotonic() + remaining, "deadline"))
        return min(ends) if ends else (None, "")

    def _attempt_within_budget(
        self,
        path: str,
        sink: Callable[[bytes], object],
        params: QueryParams | None,
        file_id: str | None,
        *,
        attempt: int,
        started: float,
    ) -> httpx.Headers:
        timeout = self._timeout()
        request = self._client.build_request("GET", path, params=params, timeout=timeout)
        try:
            response = self._send(request, path, timeout)
        except httpx.TimeoutException as exc:
            error = self._timeout_error(path, exc)
            if isinstance(exc, httpx.ConnectTimeout):
                raise _RetryableError(error, "connect timeout") from exc
            raise error from exc
        except (httpx.ConnectError, httpx.RemoteProtocolError, httpx.ReadError, httpx.WriteError) as exc:
            message = (
                f"cannot reach the file API at {self.origin_text} for GET {path} "
                f"after {attempt} attempt(s): {exc or type(exc).__name__}."
            )
            raise _RetryableError(FileApiConnectionError(message, path=path), type(exc).__name__) from exc
        except httpx.HTTPError as exc:
            raise FileApiError(f"GET {path} failed: {type(exc).__name__}: {exc}.") from exc
        try:
            self._check_status(response, path, file_id, attempt)
            self._read_body(response, path, sink, started)
        finally:
            response.close()
        return response.headers

    def _send(self, request: httpx.Request, path: str, timeout: httpx.Timeout) -> httpx.Response:
        """Send, following redirects only within the backend's origin."""
        for _ in range(self._limits.max_redirects + 1):
            response = self._client.send(request, stream=True)
            if not response.has_redirect_location:
                return response
            target = request.url.join(response.headers["location"])
            response.close()
            if _origin(target) != self._origin:
                raise FileApiRedirectError(
                    f"the file API redirected GET {path} to another origin "
                    f"({target.scheme}://{target.host}); cross-origin redirects are not followed.",
                    path=path,
                )
            request = self._client.build_request("GET", target, timeout=timeout)
        raise FileApiRedirectError(
            f"the file API redirected GET {path} more than {self._limits.max_redirects} times.", path=path
        )

    def _check_status(self, response: httpx.Response, path: str, file_id: str | None, attempt: int) -> None:
        status = response.status_code
        if 200 <= status < 300:
            return
        text = f"{status} {response.reason_phrase}".strip()
        if status == 404 and file_id is not None:
            raise FileNotFoundInApiError(
                f"file {file_id!r} was not found by the file API ({text} for GET {path}).",
                file_id=file_id,
                path=path,
            )
        hint = " (check ANALYSIS_BACKEND_TOKEN)" if status in (401, 403) else ""
        if status not in RETRY_STATUSES:
            raise FileApiStatusError(
                f"the file API answered {text} to GET {path}{hint}.", status=status, path=path
            )
        error = FileApiStatusError(
            f"the file API answered {text} to GET {path} after {attempt} attempt(s).",
            status=status,
            path=path,
        )
        wait_s = retry_after_s(response.headers.get("retry-after"))
        if wait_s is not None:
            remaining = self._remaining_s()
            budget = remaining if remaining is not None else self._limits.max_retry_after_s
            if wait_s > budget:
                left = (
                    f"the {budget:.1f} s left before {self._deadline_text()}"
                    if remaining is not None
                    else f"max_retry_after_s={budget:g}"
                )
                raise FileApiStatusError(
                    f"the file API answered {text} to GET {path} and asked to retry after {wait_s:g} s, "
                    f"more than {left}.",
                    status=status,
                    path=path,
                )
        raise _RetryableError(error, text, wait_s)

    def _read_body(
        self, response: httpx.Response, path: str, sink: Callable[[bytes], object], started: float
    ) -> None:
        """Stream the body into ``sink``, decoded step by bounded step, within the size cap."""
        cap = self._limits.max_body_bytes
        declared = response.headers.get("content-length", "")
        if cap is not None and declared.isascii() and declared.isdigit() and int(declared) > cap:
            self._too_large(path, cap, f"it declares {int(declared)} bytes")
        received = 0
        try:
            inflater = Inflater(response.headers.get("content-encoding"))
            for raw in _raw_chunks(response):
                for chunk in inflater.feed(raw):
                    received = self._deliver(chunk, received, path, sink, started)
            for chunk in inflater.finish():
                received = self._deliver(chunk, received, path, sink, started)
        except httpx.TimeoutException as exc:
            raise self._timeout_error(path, exc) from exc
        except (httpx.RemoteProtocolError, httpx.ReadError) as exc:
            raise FileApiResponseError(
                f"the file API's response to GET {path} was truncated after {received} bytes: {exc}.",
                path=path,
            ) from exc
        except (UnsupportedEncodingError, zlib.error) as exc:
            raise FileApiResponseError(
                f"the file API's response to GET {path} cannot be decoded: {exc}.", path=path
            ) from exc

    def _deliver(
        self, chunk: bytes, received: int, path: str, sink: Callable[[bytes], object], started: float
    ) -> int:
        """Hand one decoded chunk to the sink unless it takes the body past the cap; return the total."""
        received += len(chunk)
        cap = self._limits.max_body_bytes
        if cap is not None and received > cap:
            self._too_large(path, cap, f"more than {cap} bytes arrived")
        self._check_time(path, started)
        sink(chunk)
        return received

    # -- limits ---------------------------------------------------------------------------------
    def _remaining_s(self) -> float | None:
        return None if self._deadline is None else self._deadline.remaining_s()

    def _deadline_text(self) -> str:
        return "the job deadline" if self._deadline is None else self._deadline.describe()

    def _timeout(self) -> httpx.Timeout:
        lim, remaining = self._limits, self._remaining_s()

        def clamp(value: float | None) -> float | None:
            if remaining is None:
                return value
            return remaining if value is None else min(value, remaining)

        return httpx.Timeout(
            connect=clamp(lim.connect_timeout_s),
            read=clamp(lim.read_timeout_s),
            write=clamp(lim.write_timeout_s),
            pool=clamp(lim.pool_timeout_s),
        )

    def _deadline_error(self, path: str) -> FileApiTimeoutError:
        return FileApiTimeoutError(
            f"GET {path} was stopped by {self._deadline_text()}.",
            path=path,
            limit="deadline",
            limit_s=None if self._deadline is None else self._deadline.timeout_s,
        )

    def _check_time(self, path: str, started: float) -> None:
        remaining = self._remaining_s()
        if remaining is not None and remaining <= 0:
            raise self._deadline_error(path)
        limit = self._limits.request_timeout_s
        if limit is not None and time.monotonic() - started > limit:
            raise self._request_timeout_error(path)

    def _request_timeout_error(self, path: str) -> FileApiTimeoutError:
        limit = self._limits.request_timeout_s
        return FileApiTimeoutError(
            f"GET {path} took longer than the request time limit of {limit:g} s (request_timeout_s).",
            path=path,
            limit="request_timeout_s",
            limit_s=limit,
        )

    def _timeout_error(self, path: str, exc: httpx.TimeoutException) -> FileApiTimeoutError:
        fired = self._budget.fired()
        remaining = self._remaining_s()
        if fired == "deadline" or (remaining is not None and remaining <= 0.05):
            return self._deadline_error(path)
        if fired == "request_timeout_s":
            return self._request_timeout_error(path)
        kinds = {
            httpx.ConnectTimeout: ("connect", self._limits.connect_timeout_s),
            httpx.ReadTimeout: ("read", self._limits.read_timeout_s),
            httpx.WriteTimeout: ("write", self._limits.write_timeout_s),
            httpx.PoolTimeout: ("pool", self._limits.pool_timeout_s),
        }
        kind, value = kinds.get(type(exc), ("read", self._limits.read_timeout_s))
        shown = "no limit" if value is None else f"{value:g} s"
        return FileApiTimeoutError(
            f"GET {path} timed out: the {kind} timeout of {shown} fired ({kind}_timeout_s).",
            path=path,
            limit=f"{kind}_timeout_s",
            limit_s=value,
        )

    def _backoff_s(self, attempt: int) -> float:
        ceiling = min(self._limits.backoff_max_s, self._limits.backoff_initial_s * 2 ** (attempt - 1))
        return random.uniform(ceiling / 2, ceiling)

    @staticmethod
    def _too_large(path: str, cap: int, why: str) -> NoReturn:
        raise FileTooLargeError(
            f"the file API's response to GET {path} is larger than the {cap}-byte limit "
            f"(max_body_bytes, ANALYSIS_FILES_MAX_BYTES): {why}.",
            path=path,
            limit_bytes=cap,
        )
