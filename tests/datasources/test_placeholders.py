"""``?`` and native placeholders are found only outside literals, identifiers and comments."""

from __future__ import annotations

import pytest

from analysis.sources.placeholders import PlaceholderError, to_native


def test_qmark_becomes_dollar_n_on_postgres_outside_literals_comments_and_dollar_quotes() -> None:
    sql = (
        "SELECT '?', \"a?\", ? -- ?\n, $$ ? $$, $tag$ ? $tag$, E'\\' ?', ? /* ? /* ? */ ? */, "
        "'{\"a\":1}'::jsonb ?? 'a'"
    )
    native = to_native(sql, [1, 2], "postgres")
    assert native.sql == (
        "SELECT '?', \"a?\", $1 -- ?\n, $$ ? $$, $tag$ ? $tag$, E'\\' ?', $2 /* ? /* ? */ ? */, "
        "'{\"a\":1}'::jsonb ? 'a'"
    )
    assert native.params == [1, 2]


def test_qmark_on_mysql_skips_backticks_hash_comments_and_backslash_escapes() -> None:
    native = to_native("SELECT '\\' ?', `a?`, ? # ?\n, \"?\", ? -- ?\n", ("x", "y"), "mysql")
    assert native.sql == "SELECT '\\' ?', `a?`, ? # ?\n, \"?\", ? -- ?\n"
    assert native.params == ("x", "y")


@pytest.mark.parametrize(
    ("sql", "params", "expected_sql", "expected_params"),
    [
        ("SELECT %s, %s, 100 %% 7", [1, 2], "SELECT $1, $2, 100 % 7", [1, 2]),
        ("SELECT $2, $1, $2", [1, 2], "SELECT $2, $1, $2", [1, 2]),
        ("SELECT %(a)s, %(b)s, %(a)s", {"a": 1, "b": 2}, "SELECT $1, $2, $1", [1, 2]),
    ],
)
def test_native_postgres_styles(
    sql: str, params: object, expected_sql: str, expected_params: list[int]
) -> None:
    native = to_native(sql, params, "postgres")  # type: ignore[arg-type]
    assert (native.sql, native.params) == (expected_sql, expected_params)


def test_native_mysql_styles() -> None:
    assert to_native("SELECT %s, '%s'", [1], "mysql").sql == "SELECT ?, '%s'"
    named = to_native("SELECT %(a)s, %(b)s, %(a)s", {"a": 1, "b": 2}, "mysql")
    assert (named.sql, named.params) == ("SELECT ?, ?, ?", (1, 2, 1))


def test_without_params_the_text_is_untouched() -> None:
    assert to_native("SELECT '{}'::jsonb ? 'a'", None, "postgres").sql == "SELECT '{}'::jsonb ? 'a'"


@pytest.mark.parametrize(
    ("sql", "params", "message"),
    [
        ("SELECT ?", [1, 2], "1 ? placeholder(s) but 2"),
        ("SELECT ?, %s", [1, 2], "mixes placeholder styles"),
        ("SELECT 1", [1], "0  placeholder(s) but 1"),
        ("SELECT $1, $3", [1, 2], "$1, $3 but 2"),
        ("SELECT %(a)s", {"b": 1}, "no value given for placeholder(s) a"),
        ("SELECT ?", "ab", "sequence"),
    ],
)
def test_mismatches_are_refused(sql: str, params: object, message: str) -> None:
    with pytest.raises(PlaceholderError, match=__import__("re").escape(message)):
        to_native(sql, params, "postgres")  # type: ignore[arg-type]
