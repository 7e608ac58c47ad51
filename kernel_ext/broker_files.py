"""``ctx.files`` in a job: the file API client whose requests go to the runner's data broker.

The client is :class:`analysis.files.Files` itself (same checks, parsing, ``load`` and errors);
only its HTTP session is replaced by one that sends each ``GET`` through
:class:`~analysis.broker_client.BrokerAccess`, so the token never enters the kernel.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, cast

from analysis.errors import FileApiError
from analysis.files import Files

if TYPE_CHECKING:
    from analysis.broker_client import BrokerAccess
    from analysis.deadline import Deadline
    from analysis.files._http import HttpSession, QueryParams
    from analysis.files._load import SupportsLoadData

__all__ = ["BrokerFiles"]


class _RemoteHttp:
    """The part of ``HttpSession`` that ``Files`` uses, answered by the broker."""

    origin_text = "the runner's data broker"

    def __init__(self, access: BrokerAccess) -> None:
        self._access = access

    def get(
        self,
        path: str,
        sink: Callable[[bytes], object],
        *,
        params: QueryParams | None = None,
        file_id: str | None = None,
    ) -> dict[str, str]:
        return self._access.get_file(path, sink, params, file_id)

    def close(self) -> None:
        """Nothing to close: the connection belongs to the ``BrokerAccess``."""


class BrokerFiles(Files):
    """``ctx.files`` in a job: the same client, its requests sent to the broker."""

    def __init__(self, access: BrokerAccess, *, deadline: Deadline, duck: SupportsLoadData) -> None:
        from analysis.config import Settings

        super().__init__(settings=Settings(), deadline=deadline, duck=duck)
        self._remote = _RemoteHttp(access)

    def _http(self) -> HttpSession:
        if self._closed:
            raise FileApiError("the file API client is closed (its job has ended).")
        return cast("HttpSession", self._remote)

    def _content(
        self, file_id: str, sink: Callable[[bytes], object], cache_s: float | None
    ) -> Mapping[str, str]:
        """The content, through the broker, which keeps the result cache (``cache_s``) outside the kernel."""
        self._http()  # a closed client fails here
        return self._remote._access.get_file(f"/api/files/{file_id}/content", sink, None, file_id, cache_s)
