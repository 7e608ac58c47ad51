"""File API contents kept in the result cache, revalidated with the file's metadata (README: "Result cache").

``ctx.files.read(..., cache="1h")`` (and ``read_text``, ``read_json``, ``load``) asks the backend
for the file's metadata first (``GET /api/files/{id}``, small); the stored content is used only
while it is younger than the duration *and* the metadata the backend gives (``size``,
``modified_at``/``updated_at``, ``etag``) is what it was when the content was stored. Otherwise
the content is fetched again, once, under the entry's lock. Runs where the credentials are: in
this process for a notebook, in the runner's broker for a job.
"""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

import orjson

from analysis.logs import emit
from analysis.result_cache import ResultCache

if TYPE_CHECKING:
    from analysis.files._http import HttpSession

__all__ = ["cached_get"]

_VERSION_KEYS = ("size", "modified_at", "updated_at", "etag", "sha256")
_PIECE = 1024 * 1024


def _version(http: HttpSession, file_id: str) -> dict[str, Any]:
    """What identifies this version of the file, from its metadata (may be empty)."""
    body = bytearray()
    http.get(f"/api/files/{file_id}", body.extend, file_id=file_id)
    try:
        meta = orjson.loads(body)
    except orjson.JSONDecodeError:
        return {}
    return {k: meta[k] for k in _VERSION_KEYS if isinstance(meta, dict) and meta.get(k) is not None}


def cached_get(
    http: HttpSession,
    cache: ResultCache,
    file_id: str,
    sink: Callable[[bytes], object],
    ttl_s: float,
    *,
    cancelled: threading.Event | None = None,
) -> Mapping[str, str]:
    """``GET /api/files/{file_id}/content`` into ``sink``, from the cache when still valid; the headers."""
    version = _version(http, file_id)
    key = hashlib.sha256(orjson.dumps({"v": 1, "file": file_id})).hexdigest()
    summary = f"file {file_id}"

    def hit(*, last: bool) -> dict[str, str] | None:
        found = cache.verified(key, ttl_s, body=True)
        if found is None:
            return None
        meta, data = found
        if meta.get("version") != version:
            if last:
                emit("cache", f"changed {summary}")
            return None
        cache.stats.add(hits=1, bytes_read=int(meta["bytes"]))
        emit("cache", f"hit {summary}")
        with data.open("rb") as handle:
            while piece := handle.read(_PIECE):
                sink(piece)
        return {"content-type": str(meta.get("content_type") or "")}

    served = hit(last=False)
    if served is not None:
        return served
    with cache.filling(key, timeout_s=None, cancelled=cancelled or threading.Event()):
        served = hit(last=True)
        if served is not None:
            return served
        cache.stats.add(misses=1)
        emit("cache", f"miss {summary}")
        body = bytearray()
        headers = http.get(f"/api/files/{file_id}/content", body.extend, file_id=file_id)
        extra = {"file_id": file_id, "version": version, "content_type": headers.get("content-type") or ""}
        cache.store_bytes(key, summary, bytes(body), extra=extra)
    for start in range(0, len(body), _PIECE):
        sink(bytes(body[start : start + _PIECE]))
    return headers
