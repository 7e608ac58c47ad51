"""Query placeholders: find them outside literals and comments, and turn ``?`` into the driver's style.

``ctx.query_datasource`` accepts ``?`` on every kind, and each kind's native style too
(``$1``/``%s``/``%(name)s`` on PostgreSQL, ``%s``/``%(name)s`` on MySQL). :func:`to_native`
rewrites a statement and its parameters into the one form the kind's code hands the driver:

* PostgreSQL: ``$n`` placeholders with a positional list (psycopg's ``RawCursor`` and ADBC
  both bind them server-side); ``%s`` and ``%(name)s`` become ``$n`` and ``%%`` outside
  literals becomes ``%`` (inside literals ``%`` needs no doubling);
* MySQL: ``?`` placeholders with a positional tuple (a server-side prepared statement).

Placeholders are only recognised outside string literals (``'...'``, ``E'...'``, MySQL
``"..."``), quoted identifiers (``"..."`` on PostgreSQL, backticks on MySQL), comments
(``--``, ``/* */`` nested on PostgreSQL, ``#`` on MySQL) and PostgreSQL dollar quoting
(``$tag$ ... $tag$``). On PostgreSQL ``??`` stands for a literal ``?`` (the jsonb operators)
when parameters are given; without parameters the text is sent unchanged.
Values are never put into the SQL text: only placeholder markers are rewritten.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

__all__ = ["Dialect", "NativeQuery", "PlaceholderError", "Token", "scan", "to_native"]

Dialect = Literal["postgres", "mysql"]

_DOLLAR_TAG = re.compile(r"\$([A-Za-z_\x80-\uffff][A-Za-z0-9_\x80-\uffff]*)?\$")
_DOLLAR_PARAM = re.compile(r"\$([0-9]+)")
_PYFORMAT = re.compile(r"%\(([^)]+)\)s")


class PlaceholderError(ValueError):
    """The statement's placeholders do not match its parameters (or mix styles)."""


@dataclass(frozen=True)
class Token:
    """One placeholder found in a statement.

    ``kind`` is ``"qmark"`` (``?``), ``"qq"`` (``??``, a literal ``?``), ``"numeric"``
    (``$n``; ``key`` is n), ``"format"`` (``%s``), ``"pyformat"`` (``%(name)s``; ``key`` is the
    name) or ``"percent"`` (``%%``). ``start``/``end`` index the statement text.
    """

    kind: str
    start: int
    end: int
    key: str | int | None = None


def _skip_quoted(sql: str, i: int, quote: str, *, backslash: bool) -> int:
    """Index just past the literal or identifier opened by ``quote`` at ``i``."""
    n = len(sql)
    j = i + 1
    while j < n:
        ch = sql[j]
        if backslash and ch == "\\":
            j += 2
            continue
        if ch == quote:
            if j + 1 < n and sql[j + 1] == quote:  # doubled quote: an escaped quote
                j += 2
                continue
            return j + 1
        j += 1
    return n


def _skip_block_comment(sql: str, i: int, *, nested: bool) -> int:
    n = len(sql)
    depth = 1
    j = i + 2
    while j < n and depth:
        if nested and sql.startswith("/*", j):
            depth += 1
            j += 2
        elif sql.startswith("*/", j):
            depth -= 1
            j += 2
        else:
            j += 1
    return j


def _skip_line(sql: str, i: int) -> int:
    end = sql.find("\n", i)
    return len(sql) if end < 0 else end + 1


def scan(sql: str, dialect: Dialect) -> list[Token]:
    """Every placeholder of ``sql`` outside literals, quoted identifiers and comments."""
    pg = dialect == "postgres"
    tokens: list[Token] = []
    n = len(sql)
    i = 0
    while i < n:
        ch = sql[i]
        if ch == "'":
            escaped = (
                pg
                and i > 0
                and sql[i - 1] in "eE"
                and (i < 2 or not (sql[i - 2].isalnum() or sql[i - 2] == "_"))
            )
            i = _skip_quoted(sql, i, "'", backslash=escaped or not pg)
        elif ch == '"':
            i = _skip_quoted(sql, i, '"', backslash=not pg)
        elif ch == "`" and not pg:
            i = _skip_quoted(sql, i, "`", backslash=False)
        elif (
            ch == "-" and sql.startswith("--", i) and (pg or i + 2 >= n or sql[i + 2] in " \t\r\n\f\v")
        ) or (ch == "#" and not pg):
            i = _skip_line(sql, i)
        elif ch == "/" and sql.startswith("/*", i):
            i = _skip_block_comment(sql, i, nested=pg)
        elif ch == "$" and pg:
            prev_ident = i > 0 and (sql[i - 1].isalnum() or sql[i - 1] in "_$")
            param = _DOLLAR_PARAM.match(sql, i)
            tag = None if prev_ident else _DOLLAR_TAG.match(sql, i)
            if param and not prev_ident:
                tokens.append(Token("numeric", i, param.end(), int(param.group(1))))
                i = param.end()
            elif tag:
                close = sql.find(tag.group(0), tag.end())
                i = n if close < 0 else close + len(tag.group(0))
            else:
                i += 1
        elif ch == "?":
            if pg and sql.startswith("??", i):
                tokens.append(Token("qq", i, i + 2))
                i += 2
            else:
                tokens.append(Token("qmark", i, i + 1))
                i += 1
        elif ch == "%":
            if sql.startswith("%s", i):
                tokens.append(Token("format", i, i + 2))
                i += 2
            elif sql.startswith("%%", i):
                tokens.append(Token("percent", i, i + 2))
                i += 2
            elif m := _PYFORMAT.match(sql, i):
                tokens.append(Token("pyformat", i, m.end(), m.group(1)))
                i = m.end()
            else:
                i += 1
        else:
            i += 1
    return tokens


@dataclass(frozen=True)
class NativeQuery:
    """A statement in the form the kind hands its driver.

    ``style`` is ``"none"`` (no parameters: run the text as is), ``"numeric"`` (``$n`` with
    positional ``params``; PostgreSQL) or ``"qmark"`` (``?`` with positional ``params``; MySQL).
    """

    sql: str
    params: Sequence[Any] | Mapping[str, Any] | None
    style: str


def _rewrite(sql: str, tokens: list[Token], replace: dict[int, str]) -> str:
    out: list[str] = []
    pos = 0
    for index, tok in enumerate(tokens):
        if index in replace:
            out.append(sql[pos : tok.start])
            out.append(replace[index])
            pos = tok.end
    out.append(sql[pos:])
    return "".join(out)


def _count_error(found: int, given: int, what: str) -> PlaceholderError:
    return PlaceholderError(
        f"the statement has {found} {what} placeholder(s) but {given} parameter(s) were given"
    )


def to_native(sql: str, params: Sequence[Any] | Mapping[str, Any] | None, dialect: Dialect) -> NativeQuery:
    """Rewrite ``sql`` and ``params`` into the kind's driver form (see the module docstring).

    Raises
    ------
    PlaceholderError
        Mixed placeholder styles, a count that does not match the parameters, or a named
        placeholder missing from a mapping.
    """
    if params is None:
        return NativeQuery(sql, None, "none")
    if isinstance(params, str | bytes) or not isinstance(params, Sequence | Mapping):
        raise PlaceholderError(
            f"parameters must be a sequence (list or tuple) or a mapping, not {type(params).__name__}"
        )
    tokens = scan(sql, dialect)
    kinds = {t.kind for t in tokens} - {"percent", "qq"}
    if isinstance(params, Mapping):
        names = [t for t in tokens if t.kind == "pyformat"]
        if kinds - {"pyformat"}:
            raise PlaceholderError("named parameters (a mapping) need %(name)s placeholders only")
        missing = sorted({str(t.key) for t in names} - set(map(str, params)))
        if missing:
            raise PlaceholderError(f"no value given for placeholder(s) {', '.join(missing)}")
        replace = {i: "%" for i, t in enumerate(tokens) if t.kind == "percent"}
        if dialect == "postgres":
            order: dict[str, int] = {}
            for i, t in enumerate(tokens):
                if t.kind == "pyformat":
                    replace[i] = f"${order.setdefault(str(t.key), len(order) + 1)}"
            return NativeQuery(_rewrite(sql, tokens, replace), [params[k] for k in order], "numeric")
        replace.update({i: "?" for i, t in enumerate(tokens) if t.kind == "pyformat"})
        return NativeQuery(_rewrite(sql, tokens, replace), tuple(params[str(t.key)] for t in names), "qmark")
    values = list(params)
    if len(kinds) > 1:
        raise PlaceholderError(f"the statement mixes placeholder styles ({', '.join(sorted(kinds))})")
    kind = next(iter(kinds), None)
    if kind is None:
        if values:
            raise _count_error(0, len(values), "")
        return NativeQuery(sql, None, "none")
    if kind == "pyformat":
        raise PlaceholderError("%(name)s placeholders need a mapping of parameters")
    if kind == "numeric":
        if dialect != "postgres":
            raise PlaceholderError("$n placeholders are PostgreSQL's; use ? or %s on MySQL")
        used = {int(t.key or 0) for t in tokens if t.kind == "numeric"}
        if used != set(range(1, len(values) + 1)):
            raise PlaceholderError(
                f"the statement uses ${', $'.join(map(str, sorted(used)))} "
                f"but {len(values)} parameter(s) were given"
            )
        return NativeQuery(sql, values, "numeric")
    found = [i for i, t in enumerate(tokens) if t.kind == kind]
    if len(found) != len(values):
        raise _count_error(len(found), len(values), "?" if kind == "qmark" else "%s")
    if dialect == "postgres":
        replace = {index: f"${k}" for k, index in enumerate(found, 1)}
        if kind == "format":
            replace.update({i: "%" for i, t in enumerate(tokens) if t.kind == "percent"})
        else:
            replace.update({i: "?" for i, t in enumerate(tokens) if t.kind == "qq"})
        return NativeQuery(_rewrite(sql, tokens, replace), values, "numeric")
    replace = dict.fromkeys(found, "?")
    if kind == "format":
        replace.update({i: "%" for i, t in enumerate(tokens) if t.kind == "percent"})
    return NativeQuery(_rewrite(sql, tokens, replace), tuple(values), "qmark")
