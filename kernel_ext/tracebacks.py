"""Short tracebacks in the notebook: the user's own frames and the message, the rest one ``%tb`` away.

A SQL typo in ``ctx.query`` used to show some 35 lines of ``analysis`` and DuckDB frames before
the one line that matters. For errors of ``analysis`` and DuckDB, the notebook shows the frames of
the user's code (cells, their own modules) and the exception's whole message (DuckDB's includes
the caret under the faulty SQL). ``sys.last_value`` keeps the whole exception, so ``%tb`` shows
the full traceback. A failed ``%%analysis`` cell (:class:`AnalysisCellError`) shows the frames of
the analysis and one ``error_type: error`` line. Headless envelopes are not affected: their
``stack`` is built elsewhere.
"""

from __future__ import annotations

import inspect
import sys
import sysconfig
import traceback
from collections.abc import Callable, Iterator
from pathlib import Path
from types import TracebackType
from typing import Any

from analysis.errors import AnalysisError

__all__ = ["AnalysisCellError", "install", "is_user_file", "keeping_exception", "short_stack", "uninstall"]

_OWN_DIR = str(Path(__file__).parent)
_LIBRARY_DIRS = tuple({sysconfig.get_paths()[key] for key in ("stdlib", "platstdlib", "purelib", "platlib")})
HINT = "\x1b[2m(the full traceback, with the frames of analysis and its libraries: %tb)\x1b[0m"


def is_user_file(filename: str) -> bool:
    """Whether code in ``filename`` is the user's (a cell, an analysis, their module), not a library's."""
    if filename.startswith(_OWN_DIR) or filename.startswith("<frozen "):
        return False
    return not filename.startswith(_LIBRARY_DIRS)


def _user_tbs(tb: TracebackType | None) -> Iterator[TracebackType]:
    while tb is not None:
        if is_user_file(tb.tb_frame.f_code.co_filename):
            yield tb
        tb = tb.tb_next


def _only_user_frames(tb: TracebackType | None) -> TracebackType | None:
    """A new traceback chain holding only the user's frames, innermost last."""
    trimmed: TracebackType | None = None
    for entry in reversed(list(_user_tbs(tb))):
        trimmed = TracebackType(trimmed, entry.tb_frame, entry.tb_lasti, entry.tb_lineno)
    return trimmed


def short_stack(exc: BaseException, *, with_exception: bool = True) -> list[str]:
    """Plain-text lines: the user's frames of ``exc``, then (optionally) its whole message."""
    frames = [(entry.tb_frame, entry.tb_lineno) for entry in _user_tbs(exc.__traceback__)]
    lines: list[str] = []
    if frames:
        lines.append("Traceback (most recent call last):")
        lines.extend(line.rstrip("\n") for line in traceback.StackSummary.extract(frames).format())
    if with_exception:
        message = str(exc).rstrip("\n")
        lines.extend(f"{type(exc).__name__}: {message}".splitlines() if message else [type(exc).__name__])
    return lines


class AnalysisCellError(Exception):
    """An ``%%analysis`` cell failed; shown as the user's frames and one summary line.

    Parameters
    ----------
    outcome
        The failure, as a headless run reports it (``error_type``, ``error``, ``stack``).
    exc
        The exception behind it, when the cell raised one: the notebook shows its user frames
        and message, and ``%tb`` its full traceback.
    sql
        Whether the cell was SQL: then there are no frames to show, only the database's message.
    """

    def __init__(
        self, outcome: dict[str, Any], exc: BaseException | None = None, *, sql: bool = False
    ) -> None:
        super().__init__(f"{outcome['error_type']}: {outcome['error']}")
        self.outcome = outcome
        self.exc = exc
        self.sql = sql

    def _render_traceback_(self) -> list[str]:
        error_type = self.outcome["error_type"]
        summary = f"\x1b[31m{error_type}\x1b[0m: {self.outcome['error']}"
        exc = self.exc
        if exc is None:
            stack = self.outcome.get("stack")
            return [*(stack.splitlines() if stack else []), summary]
        stopped = error_type in ("timeout", "cancelled")
        if self.sql:  # the database's own message (with its caret) says it all
            return [summary] if stopped or isinstance(exc, AnalysisError) else short_stack(exc)
        return [*short_stack(exc, with_exception=not stopped), summary]


def keeping_exception(run: Callable[..., Any], raised: list[BaseException]) -> Callable[..., Any]:
    """``run``, noting in ``raised`` what it raises (also from a coroutine) for the notebook's display."""

    async def awaiting(value: Any) -> Any:
        try:
            return await value
        except BaseException as exc:
            raised.append(exc)
            raise

    def call(ctx: Any, parameters: dict[str, Any]) -> Any:
        try:
            value = run(ctx, parameters)
        except BaseException as exc:
            raised.append(exc)
            raise
        return awaiting(value) if inspect.isawaitable(value) else value

    return call


def _ipython_short(shell: Any, exc: BaseException) -> list[str]:
    """IPython's own rendering (``Cell In[3], line 2`` with context) of the user's frames only."""
    cause, context, suppress = exc.__cause__, exc.__context__, exc.__suppress_context__
    exc.__cause__, exc.__suppress_context__ = None, True  # the chain is in our frames: see %tb
    try:
        stb: list[str] = shell.InteractiveTB.structured_traceback(
            type(exc), exc, _only_user_frames(exc.__traceback__), tb_offset=0
        )
    finally:
        exc.__cause__, exc.__context__, exc.__suppress_context__ = cause, context, suppress
    return [*stb, HINT]


def _remember(exc: BaseException) -> None:
    """Keep ``exc`` where ``%tb`` and ``%debug`` look for the last exception."""
    sys.last_type, sys.last_value, sys.last_traceback = type(exc), exc, exc.__traceback__
    if sys.version_info >= (3, 12):
        setattr(sys, "last_exc", exc)  # noqa: B010


def _handler(
    shell: Any, etype: type[BaseException], value: BaseException, tb: Any, tb_offset: Any = None
) -> None:
    """IPython's custom exception hook: show the short form; keep the whole exception for ``%tb``."""
    if isinstance(value, AnalysisCellError):
        _remember(value.exc if value.exc is not None else value)
        stb = [*value._render_traceback_(), *([HINT] if value.exc is not None else [])]
    else:
        _remember(value)
        stb = _ipython_short(shell, value)
    shell._showtraceback(etype, value, stb)


def _exception_types() -> tuple[type[BaseException], ...]:
    import duckdb

    return (AnalysisCellError, AnalysisError, duckdb.Error)


def install(shell: Any) -> None:
    """Show errors of ``analysis`` and DuckDB short in this shell."""
    shell.set_custom_exc(_exception_types(), _handler)


def uninstall(shell: Any) -> None:
    """Give the shell back its ordinary tracebacks (if ours are still installed)."""
    if shell.custom_exceptions == _exception_types():
        shell.custom_exceptions = ()
