"""Helpers of the tests that the benches reuse (private database servers, the namespace cluster)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from typing import Any

TESTS = Path(__file__).resolve().parent.parent / "tests"


def load(relative: str) -> Any:
    """The module ``tests/<relative>``, loaded once per process (``tests`` is not a package here)."""
    name = "analysis_bench_" + relative.removesuffix(".py").replace("/", "_")
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, TESTS / relative)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]
