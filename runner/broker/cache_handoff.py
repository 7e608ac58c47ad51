"""The broker's side of a cached ``into=`` result handed to the kernel as a file (README: "Result cache").

A hit whose entry is Parquet is not streamed: :class:`HandoffSink` copies the entry, from the
descriptor whose checksum the cache checked (never by its name, which another run may replace
meanwhile), into the job directory under a fresh random name, and the final header names that
file (``cached_file``) and the casts still to apply; the kernel's DuckDB reads it in place and
removes it (:mod:`analysis.cache_handoff`). The kernel sees a copy of that one entry, never the
cache folder or the entry itself: whatever it does to its copy changes nothing in the cache.

The copy is created exclusively and without following links (``O_CREAT | O_EXCL | O_NOFOLLOW``
relative to the job directory's descriptor), so nothing the kernel put in its directory is
followed or overwritten; it stays in the page cache (``copy_file_range``, no Python buffers).
"""

from __future__ import annotations

import errno
import os
import secrets
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from analysis.runner.broker.streams import ArrowSink

__all__ = ["HandoffSink"]

_NO_COPY_RANGE = {errno.EXDEV, errno.ENOSYS, errno.EOPNOTSUPP, errno.EINVAL}


def _copy(source: int, target: int) -> None:
    """Copy all of ``source`` (from its start) to ``target``, inside the kernel."""
    size = os.fstat(source).st_size
    offset = 0
    range_copy = True
    while offset < size:
        if range_copy:
            try:
                copied = os.copy_file_range(source, target, size - offset, offset_src=offset)
            except OSError as exc:
                if exc.errno not in _NO_COPY_RANGE:
                    raise
                range_copy = False
                continue
        else:
            copied = os.sendfile(target, source, offset, size - offset)
        if copied == 0:
            raise OSError(errno.EIO, "the cache entry ended early while it was copied")
        offset += copied


class HandoffSink(ArrowSink):
    """The broker's sink (:class:`ArrowSink`) that can also hand a cached Parquet entry over as a file.

    Parameters
    ----------
    send
        Sends a body frame to the kernel.
    job_dir
        The job directory, where the kernel can read (its DuckDB may read only there).
    """

    def __init__(self, send: Callable[[bytearray | memoryview], None], job_dir: Path) -> None:
        super().__init__(send)
        self._job_dir = job_dir
        #: What the final header adds once an entry was handed over.
        self.handed: dict[str, Any] = {}

    def load_cached_parquet(
        self, table: str, fd: int, casts: Sequence[str | None] | None, rows: object
    ) -> int:
        """Copy the checked entry open as ``fd`` into the job directory; the final header will name it."""
        name = f".cache-{secrets.token_hex(16)}.parquet"
        directory = os.open(self._job_dir, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            target = os.open(
                name,
                os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                0o444,
                dir_fd=directory,
            )
            try:
                _copy(fd, target)
            except BaseException:
                os.unlink(name, dir_fd=directory)
                raise
            finally:
                os.close(target)
        finally:
            os.close(directory)
        self.handed.update(cached_file=name, casts=None if casts is None else list(casts))
        return rows if isinstance(rows, int) else 0
