"""Decoding a ``Content-Encoding`` in bounded steps, so a small compressed body cannot balloon.

httpx inflates each 64 KiB read in one go: a gzip bomb's read expands to about 64 MiB before
any size check can see it. Here the raw body is inflated at most :data:`CHUNK_BYTES` at a
time (zlib's ``max_length``), so the client's memory stays within its body cap plus one chunk.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterator

__all__ = ["CHUNK_BYTES", "Inflater", "UnsupportedEncodingError"]

#: The most one step inflates.
CHUNK_BYTES = 64 * 1024


class UnsupportedEncodingError(ValueError):
    """The response uses a content coding other than gzip, deflate or identity."""


class Inflater:
    """Decodes one response body of the given ``Content-Encoding`` header value.

    Parameters
    ----------
    content_encoding
        The header's value: ``gzip`` (or ``x-gzip``), ``deflate``, ``identity`` or none.

    Raises
    ------
    UnsupportedEncodingError
        For any other coding, or more than one.
    """

    def __init__(self, content_encoding: str | None) -> None:
        codings = [c.strip().lower() for c in (content_encoding or "").split(",")]
        codings = [c for c in codings if c not in ("", "identity")]
        if len(codings) > 1 or (codings and codings[0] not in ("gzip", "x-gzip", "deflate")):
            raise UnsupportedEncodingError(
                f"content encoding {content_encoding!r} is not supported (gzip, deflate or identity)"
            )
        self._coding = codings[0] if codings else None
        self._zlib: zlib._Decompress | None = None
        if self._coding in ("gzip", "x-gzip"):
            self._zlib = zlib.decompressobj(16 + zlib.MAX_WBITS)
        elif self._coding == "deflate":
            self._zlib = zlib.decompressobj()
        self._started = False

    def feed(self, data: bytes) -> Iterator[bytes]:
        """The decoded bytes of ``data``, in pieces of at most :data:`CHUNK_BYTES`.

        Raises
        ------
        zlib.error
            When the body is not validly encoded.
        """
        if self._zlib is None:
            if data:
                yield data
            return
        if self._coding == "deflate" and not self._started:
            data = self._sniff_raw_deflate(data)
        while data:
            out = self._zlib.decompress(data, CHUNK_BYTES)
            data = self._zlib.unconsumed_tail
            if out:
                yield out
            elif self._zlib.eof:
                return

    def _sniff_raw_deflate(self, data: bytes) -> bytes:
        """``deflate`` is meant to be zlib-wrapped, but some servers send raw deflate (as httpx allows)."""
        if not data:
            return data
        self._started = True
        try:
            zlib.decompressobj().decompress(data[:2])
        except zlib.error:
            self._zlib = zlib.decompressobj(-zlib.MAX_WBITS)
        return data

    def finish(self) -> Iterator[bytes]:
        """What is left once the body has ended, in bounded pieces."""
        if self._zlib is None:
            return
        while not self._zlib.eof:
            out = self._zlib.decompress(b"", CHUNK_BYTES)
            if not out:
                break
            yield out
