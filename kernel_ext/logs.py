"""The job log: tagged lines on stderr (``[query:duckdb] ...``, ``[log] ...``).

Inside a kernel, stderr is captured by ipykernel and reaches the runner as stream
messages, which become the envelope's ``logs``; in a notebook the lines show under the cell.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar

__all__ = ["emit", "one_line", "redirect_emit"]

_SINK: ContextVar[Callable[[str], None] | None] = ContextVar("analysis_log_sink", default=None)


def emit(tag: str, message: str) -> None:
    """Write ``[tag] message`` as one line to stderr (or to the sink :func:`redirect_emit` set)."""
    sink = _SINK.get()
    if sink is not None:
        sink(f"[{tag}] {message}")
        return
    sys.stderr.write(f"[{tag}] {message}\n")
    sys.stderr.flush()


@contextmanager
def redirect_emit(sink: Callable[[str], None]) -> Iterator[None]:
    """Send this thread's :func:`emit` lines to ``sink`` (the runner's broker forwards them to a job)."""
    token = _SINK.set(sink)
    try:
        yield
    finally:
        _SINK.reset(token)


def one_line(sql: str, max_chars: int = 2000) -> str:
    """SQL for a log line: whitespace runs collapsed, cut at ``max_chars``."""
    text = " ".join(sql.split())
    return text if len(text) <= max_chars else text[: max_chars - 1] + "…"
