"""The job's captured output, capped: the first and last lines are kept, the middle counted."""

from __future__ import annotations

from collections import deque

__all__ = ["LogBuffer"]

#: Default cap on captured log text (head and tail together).
DEFAULT_MAX_LOG_BYTES = 1024 * 1024


class LogBuffer:
    """Collects stream text into lines, keeping at most ``max_bytes`` of them.

    Half the budget keeps the first lines, half the most recent ones; what falls between is
    dropped and reported in one note line, so a job printing 200 MB costs a bounded amount.

    Parameters
    ----------
    max_bytes
        Total size of the lines kept (head and tail), in UTF-8 bytes; ``None`` keeps everything.
    """

    def __init__(self, max_bytes: int | None = DEFAULT_MAX_LOG_BYTES) -> None:
        self.max_bytes = max_bytes
        self._head: list[str] = []
        self._head_bytes = 0
        self._tail: deque[str] = deque()
        self._tail_bytes = 0
        self._partial: dict[str, str] = {}
        self.dropped_lines = 0
        self.dropped_bytes = 0

    def write(self, stream: str, text: str) -> None:
        """Add ``text`` from ``stream`` (``stdout``/``stderr``); lines end at ``\\n``."""
        text = self._partial.pop(stream, "") + text
        if self.max_bytes is not None and self._tail and len(text) > self.max_bytes:
            text = self._skip_to_tail(text)
        *lines, rest = text.split("\n")
        if rest:
            if len(rest) > 65536:  # a line that never ends: cut it
                lines.append(rest)
            else:
                self._partial[stream] = rest
        for line in lines:
            self._add(line)

    def _skip_to_tail(self, text: str) -> str:
        """Drop, counting only, everything of a large chunk that the tail cannot keep anyway."""
        budget = self.max_bytes - self.max_bytes // 2 if self.max_bytes is not None else len(text)
        cut = text.find("\n", len(text) - budget)
        if cut < 0:
            return text
        skipped = text[: cut + 1]
        self.dropped_lines += len(self._tail) + skipped.count("\n")
        self.dropped_bytes += self._tail_bytes + len(skipped.encode("utf-8", "replace"))
        self._tail.clear()
        self._tail_bytes = 0
        return text[cut + 1 :]

    def _add(self, line: str) -> None:
        size = len(line.encode("utf-8", "replace")) + 1
        if self.max_bytes is None or (self._head_bytes + size <= self.max_bytes // 2 and not self._tail):
            self._head.append(line)
            self._head_bytes += size
            return
        self._tail.append(line)
        self._tail_bytes += size
        while self._tail and self._tail_bytes > self.max_bytes - self.max_bytes // 2:
            old = self._tail.popleft()
            old_size = len(old.encode("utf-8", "replace")) + 1
            self._tail_bytes -= old_size
            self.dropped_lines += 1
            self.dropped_bytes += old_size

    def lines(self) -> list[str]:
        """The kept lines, with a note where lines were dropped."""
        for stream in list(self._partial):
            self._add(self._partial.pop(stream))
        if not self.dropped_lines:
            return [*self._head, *self._tail]
        note = (
            f"[logs] {self.dropped_lines:,} lines ({self.dropped_bytes:,} bytes) dropped here: "
            f"the log is capped at {self.max_bytes:,} bytes (first and last lines kept)"
        )
        return [*self._head, note, *self._tail]
