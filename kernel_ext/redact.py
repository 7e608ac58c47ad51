"""Keeping a job's secrets out of everything it shows: errors, stacks, logs, exceptions.

A :class:`Redactor` knows every secret one job holds (the file API token, the key that
decrypts datasource passwords, each datasource password once it is revealed) and scrubs them
at the boundary where text leaves the job: the envelope's ``error`` and ``stack``, the log
lines written to stdout and stderr while the job runs, and exceptions on their way to a
notebook's traceback display. Libraries quote what they were given (an HTTP library quotes a
bad header value, a driver its connection string), so a message is never trusted to be clean.

Each secret is removed in the spellings a message may use: as is, stripped of surrounding
white space, escaped as ``repr`` and JSON escape it (``\\n``), and URL-encoded; ``user:pw@``
in a URL and ``password=...`` are removed whatever the password
(:func:`analysis.sources.secrets.redact`). This module imports nothing heavy.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, Protocol, TextIO, cast

__all__ = ["MASK", "Redactor"]

#: What a secret is replaced by.
MASK = "***"


class _Revealable(Protocol):
    def reveal(self) -> str: ...


class Redactor:
    """The secrets of one job, and the one place that removes them from text.

    Secrets are only ever added (a job does not forget what it has seen).
    """

    def __init__(self) -> None:
        self._forms: list[str] = []
        self._seen: set[str] = set()

    def __repr__(self) -> str:
        return f"<Redactor of {len(self._seen)} secret(s)>"

    def add(self, secret: str | _Revealable | None) -> None:
        """Remember ``secret`` (a string or a ``Secret``); ``None`` and empty values are ignored."""
        value = secret if isinstance(secret, str) or secret is None else secret.reveal()
        if not value or value in self._seen:
            return
        self._seen.add(value)
        forms = {value, value.strip(), repr(value)[1:-1], json.dumps(value)[1:-1]}
        forms.add(repr(value.encode("utf-8", "surrogateescape"))[2:-1])
        self._forms = sorted({*self._forms, *(f for f in forms if f)}, key=len, reverse=True)

    def scrub(self, text: str) -> str:
        """``text`` with every known secret, and any DSN or ``password=`` password, masked."""
        # The fast path (substring tests, no regex) keeps a job that prints
        # millions of lines quick; only text that may hold a secret goes through ``redact``.
        if not self._may_hold_secret(text):
            return text
        from analysis.sources.secrets import redact

        return redact(text, self._forms)

    def _may_hold_secret(self, text: str) -> bool:
        """Whether ``text`` holds a known secret, a URL (``user:pw@``) or a ``password`` (any usual case)."""
        for form in self._forms:
            if form in text:
                return True
        return "://" in text or "assword" in text or "ASSWORD" in text

    def scrub_outcome(self, outcome: dict[str, Any]) -> dict[str, Any]:
        """An outcome (or envelope) dict with its ``error``, ``stack`` and ``logs`` scrubbed."""
        clean = dict(outcome)
        for key in ("error", "stack"):
            if isinstance(clean.get(key), str):
                clean[key] = self.scrub(clean[key])
        if isinstance(clean.get("logs"), list):
            clean["logs"] = [self.scrub(line) if isinstance(line, str) else line for line in clean["logs"]]
        return clean

    def scrub_exception(self, exc: BaseException) -> BaseException:
        """Scrub ``exc`` and the exceptions chained to it, in place; return ``exc``.

        Their ``args`` and string attributes (``message``, ``msg``, ``strerror``, ...) are
        rewritten, which is what their ``str`` and a traceback display are made from.
        """
        seen: set[int] = set()
        pending: list[BaseException | None] = [exc]
        while pending:
            current = pending.pop()
            if current is None or id(current) in seen:
                continue
            seen.add(id(current))
            self._scrub_one(current)
            pending += [current.__cause__, current.__context__]
            pending += list(getattr(current, "exceptions", ()))
        return exc

    def _scrub_one(self, exc: BaseException) -> None:
        try:
            exc.args = tuple(self._scrub_value(a) for a in exc.args)
        except (TypeError, AttributeError):
            pass
        names = list(getattr(exc, "__dict__", {}))
        if isinstance(exc, OSError):
            names += ["strerror", "filename", "filename2"]
        for name in names:
            value = getattr(exc, name, None)
            if isinstance(value, str | bytes):
                clean = self._scrub_value(value)
                if clean is not value:
                    try:
                        setattr(exc, name, clean)
                    except (AttributeError, TypeError):
                        pass
        notes = getattr(exc, "__notes__", None)
        if isinstance(notes, list):
            notes[:] = [self._scrub_value(n) for n in notes]

    def _scrub_value(self, value: Any) -> Any:
        if isinstance(value, str):
            clean = self.scrub(value)
            return value if clean == value else clean
        if isinstance(value, bytes):
            text = value.decode("utf-8", "surrogateescape")
            clean = self.scrub(text)
            return value if clean == text else clean.encode("utf-8", "surrogateescape")
        return value

    @contextmanager
    def streams(self) -> Iterator[None]:
        """Within the block, what is written to ``sys.stdout`` and ``sys.stderr`` is scrubbed."""
        saved = sys.stdout, sys.stderr
        sys.stdout, sys.stderr = self._wrap(sys.stdout), self._wrap(sys.stderr)
        try:
            yield
        finally:
            sys.stdout, sys.stderr = saved

    def _wrap(self, stream: TextIO) -> TextIO:
        if isinstance(stream, _ScrubbedStream) and stream.redactor is self:
            return stream
        return cast(TextIO, _ScrubbedStream(stream, self))


class _ScrubbedStream:
    """A text stream that scrubs each write before passing it on; everything else is delegated."""

    def __init__(self, stream: TextIO, redactor: Redactor) -> None:
        self._stream = stream
        self.redactor = redactor

    def write(self, text: str) -> int:
        self._stream.write(self.redactor.scrub(text) if isinstance(text, str) else text)
        return len(text)

    def writelines(self, lines: Any) -> None:
        for line in lines:
            self.write(line)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)
