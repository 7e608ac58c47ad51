"""Static checks of a script analysis: it parses and defines a top-level ``run(ctx, parameters)``."""

from __future__ import annotations

import ast
import inspect
from collections.abc import Callable
from typing import Any

from analysis.errors import InvalidAnalysisError

__all__ = ["check_run_signature", "validate_source"]


def _takes_two_positional(args: ast.arguments) -> bool:
    positional = len(args.posonlyargs) + len(args.args)
    required = positional - len(args.defaults)
    required_kwonly = any(default is None for default in args.kw_defaults)
    return required <= 2 and (positional >= 2 or args.vararg is not None) and not required_kwonly


def validate_source(source: str, filename: str = "<analysis>") -> None:
    """Raise ``InvalidAnalysisError`` unless ``source`` parses and defines ``run(ctx, parameters)``."""
    try:
        tree = ast.parse(source, filename=filename)
    except SyntaxError as exc:
        where = f"line {exc.lineno}" if exc.lineno else "unknown line"
        raise InvalidAnalysisError(
            f"The analysis {filename} has a syntax error at {where}: {exc.msg}."
        ) from None
    runs = [
        node
        for node in tree.body
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and node.name == "run"
    ]
    if not runs:
        raise InvalidAnalysisError(
            f"The analysis {filename} defines no top-level function run(ctx, parameters)."
        )
    if not _takes_two_positional(runs[-1].args):
        raise InvalidAnalysisError(
            f"The analysis {filename}: run must take two positional arguments (ctx, parameters)."
        )


def check_run_signature(run: Callable[..., Any], filename: str = "<analysis>") -> None:
    """The same check at run time, for a ``run`` that exists only after the module executed."""
    if not callable(run):
        raise InvalidAnalysisError(f"The analysis {filename}: run is a {type(run).__name__}, not a function.")
    try:
        inspect.signature(run).bind(None, None)
    except TypeError:
        raise InvalidAnalysisError(
            f"The analysis {filename}: run must take two positional arguments (ctx, parameters)."
        ) from None
    except ValueError:  # builtins without a signature: let the call decide
        pass
