"""Fixtures for dependency tests: a wheelhouse of tiny wheels, an offline uv, a private env cache."""

from __future__ import annotations

import os
import stat
import sys
from pathlib import Path

import pytest

from analysis.runner.deps import DepsSettings

sys.path.insert(0, str(Path(__file__).parent))
from wheels import write_wheel


@pytest.fixture(scope="session")
def uv_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One uv cache for the session (warm after the first build, as in production)."""
    return tmp_path_factory.mktemp("uv-cache")


@pytest.fixture
def wheelhouse(tmp_path: Path) -> Path:
    """A find-links folder: tinypkg 1.0 and 2.0, tinydep 1.0 (needs tinypkg>=2), other1..3."""
    folder = tmp_path / "wheelhouse"
    folder.mkdir()
    write_wheel(folder, "tinypkg", "1.0")
    write_wheel(folder, "tinypkg", "2.0")
    write_wheel(folder, "tinydep", "1.0", requires=("tinypkg>=2",))
    for n in (1, 2, 3):
        write_wheel(folder, f"other{n}", "1.0")
    return folder


@pytest.fixture
def deps_env(
    tmp_path: Path, wheelhouse: Path, uv_cache: Path, monkeypatch: pytest.MonkeyPatch
) -> DepsSettings:
    """uv offline with only the wheelhouse, and a private environment cache; the settings in use."""
    for name in list(os.environ):
        if name.startswith(("PIP_", "UV_")) or name.startswith("ANALYSIS_DEPS_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("UV_FIND_LINKS", str(wheelhouse))
    monkeypatch.setenv("UV_OFFLINE", "1")
    monkeypatch.setenv("UV_CACHE_DIR", str(uv_cache))
    monkeypatch.setenv("ANALYSIS_DEPS_CACHE", str(tmp_path / "deps-cache"))
    return DepsSettings.from_env()


@pytest.fixture
def slow_uv(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """``ANALYSIS_UV`` pointing at a wrapper of the real uv that records each call in ``calls.txt``
    and, before ``pip install``, touches ``installing`` and sleeps ``$SLOW_UV_SLEEP`` seconds."""
    from uv import find_uv_bin

    folder = tmp_path / "slow-uv"
    folder.mkdir()
    script = folder / "uv"
    script.write_text(
        "#!/bin/sh\n"
        f'echo "$1 $2" >> {folder}/calls.txt\n'
        'if [ "$1" = pip ] && [ "$2" = install ]; then\n'
        '  sleep "${SLOW_UV_SLEEP:-0}" &\n'
        f"  touch {folder}/installing\n"  # after the sleep started: a test sees both
        "  wait $!\n"
        "fi\n"
        f'exec {find_uv_bin()} "$@"\n'
    )
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    monkeypatch.setenv("ANALYSIS_UV", str(script))
    return folder
