"""The job log: tagged lines (``[query:duckdb] ...``, ``[log] ...``) through the ``logging`` module.

Each line is a record of a logger under ``analysis`` (``analysis.query.duckdb``,
``analysis.query.datasource``, ``analysis.load_data``, ``analysis.files``, ``analysis.log``), so
users can route them with the standard ``logging`` machinery. One handler of ours echoes them to
``sys.stderr`` as ``[tag] message``: inside a kernel, ipykernel captures stderr and the runner
turns it into the envelope's ``logs``. In a notebook the echo of the automatic lines (everything
but ``ctx.log``) is off unless ``%config AnalysisMagics.log_queries = True``.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar

__all__ = ["LOGGER", "echo_automatic_lines", "emit", "one_line", "redirect_emit"]

_SINK: ContextVar[Callable[[str], None] | None] = ContextVar("analysis_log_sink", default=None)

#: The parent logger of every ``analysis`` log line.
LOGGER = logging.getLogger("analysis")

#: Tags whose lines ``ctx`` writes by itself; ``log`` (``ctx.log``) is always echoed.
_ALWAYS_ECHOED = "analysis.log"


class _StderrEcho(logging.Handler):
    """Writes ``[tag] message`` to the current ``sys.stderr`` (ipykernel swaps it per cell)."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.automatic = True

    def emit(self, record: logging.LogRecord) -> None:
        if not self.automatic and record.name != _ALWAYS_ECHOED:
            return
        try:
            tag = getattr(record, "tag", record.name.removeprefix("analysis."))
            sys.stderr.write(f"[{tag}] {record.getMessage()}\n")
            sys.stderr.flush()
        except Exception:  # a closed or broken stream must not fail the query
            self.handleError(record)


def _echo_handler() -> _StderrEcho:
    for handler in LOGGER.handlers:
        if isinstance(handler, _StderrEcho):
            return handler
    handler = _StderrEcho()
    LOGGER.addHandler(handler)
    if LOGGER.level == logging.NOTSET:
        LOGGER.setLevel(logging.INFO)
    return handler


_ECHO = _echo_handler()


def echo_automatic_lines(enabled: bool) -> None:
    """Whether the lines ``ctx`` writes by itself (queries, loads, file requests) reach stderr.

    They are always logged; this only switches our stderr echo (``ctx.log`` lines always echo).
    """
    _ECHO.automatic = enabled


def emit(tag: str, message: str) -> None:
    """Log ``message`` under ``tag`` (``query:duckdb`` goes to logger ``analysis.query.duckdb``).

    Inside :func:`redirect_emit` the line goes to that sink instead (the broker forwards it to a job).
    """
    sink = _SINK.get()
    if sink is not None:
        sink(f"[{tag}] {message}")
        return
    logging.getLogger("analysis." + tag.replace(":", ".")).info(message, extra={"tag": tag})


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
