"""The job log: tagged lines on stderr (``[query:duckdb] ...``, ``[log] ...``).

Inside a kernel, stderr is captured by ipykernel and reaches the runner as stream
messages, which become the envelope's ``logs``; in a notebook the lines show under the cell.
"""

from __future__ import annotations

import sys

__all__ = ["emit", "one_line"]


def emit(tag: str, message: str) -> None:
    """Write ``[tag] message`` as one line to stderr."""
    sys.stderr.write(f"[{tag}] {message}\n")
    sys.stderr.flush()


def one_line(sql: str, max_chars: int = 2000) -> str:
    """SQL for a log line: whitespace runs collapsed, cut at ``max_chars``."""
    text = " ".join(sql.split())
    return text if len(text) <= max_chars else text[: max_chars - 1] + "…"
