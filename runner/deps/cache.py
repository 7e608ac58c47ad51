"""The cache of analysis environments: settings, layout, file locks, listing and LRU pruning.

Layout of ``ANALYSIS_DEPS_CACHE`` (default ``$XDG_CACHE_HOME/analysis/deps``)::

    envs/{key}/            one environment, complete or absent (built in tmp/, then renamed)
        analysis-lock.txt  the resolution it was built from (``uv pip compile`` output)
        analysis-env.json  what was asked for; its mtime is the last use
    resolutions/{input}.txt  the lock kept for one set of requirements on one runtime
    locks/{key}.build      held (exclusive) while {key} is built: concurrent first runs build once
    locks/{key}.use        held (shared) by every job using {key}: pruning never removes it
    tmp/                   environments being built; leftovers of a killed build are removed
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import json
import os
import shutil
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["DepsSettings", "EnvironmentInfo", "FileLock", "list_environments", "prune"]

LOCK_FILE, META_FILE = "analysis-lock.txt", "analysis-env.json"
_POLL_S = 0.05


@dataclass(frozen=True)
class DepsSettings:
    """Settings of the environment cache (the environment variables, read here and only here).

    Parameters
    ----------
    cache_dir
        ``ANALYSIS_DEPS_CACHE``: where environments live.
    max_bytes
        ``ANALYSIS_DEPS_MAX_BYTES``: size budget of the cache (default 5 GiB); pruning removes
        the least recently used environments not in use until the cache fits.
    build_timeout_s
        ``ANALYSIS_DEPS_BUILD_TIMEOUT_S``: longest a resolution plus build may take (default 300).
    environ
        The environment uv runs with (its index settings).
    """

    cache_dir: Path
    max_bytes: int = 5 * 1024**3
    build_timeout_s: float = 300.0
    environ: Mapping[str, str] = field(default_factory=lambda: dict(os.environ), repr=False)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> DepsSettings:
        """Read the settings from ``environ`` (default ``os.environ``)."""
        env = os.environ if environ is None else environ
        base = env.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
        cache = env.get("ANALYSIS_DEPS_CACHE") or str(Path(base) / "analysis" / "deps")
        try:
            max_bytes = int(env.get("ANALYSIS_DEPS_MAX_BYTES") or 5 * 1024**3)
            timeout = float(env.get("ANALYSIS_DEPS_BUILD_TIMEOUT_S") or 300.0)
        except ValueError as exc:
            raise ValueError(f"Bad ANALYSIS_DEPS_* setting: {exc}.") from None
        if max_bytes < 0 or not timeout > 0:
            raise ValueError("ANALYSIS_DEPS_MAX_BYTES must be >= 0 and ANALYSIS_DEPS_BUILD_TIMEOUT_S > 0.")
        return cls(Path(cache), max_bytes, timeout, dict(env))

    def folder(self, name: str) -> Path:
        """``cache_dir/name``, created (mode 0700) if needed."""
        path = self.cache_dir / name
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
        return path

    def env_dir(self, key: str) -> Path:
        """Where environment ``key`` lives once complete."""
        return self.folder("envs") / key


class FileLock:
    """An ``flock`` on ``path``: shared or exclusive, acquired by polling so a wait can be cancelled."""

    def __init__(self, path: Path, *, shared: bool = False) -> None:
        self.path = path
        self.shared = shared
        self._fd: int | None = None

    def try_acquire(self) -> bool:
        """Take the lock if it is free now."""
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, (fcntl.LOCK_SH if self.shared else fcntl.LOCK_EX) | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return False
        self._fd = fd
        return True

    async def acquire(self, deadline: float | None) -> bool:
        """Wait for the lock until ``deadline`` (monotonic); whether it was taken."""
        while not self.try_acquire():
            if deadline is not None and time.monotonic() >= deadline:
                return False
            await asyncio.sleep(_POLL_S)
        return True

    def release(self) -> None:
        """Let go of the lock; safe to call twice."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


@dataclass(frozen=True)
class EnvironmentInfo:
    """One built environment as ``analysis deps list`` shows it."""

    key: str
    path: Path
    size_bytes: int
    last_used: float
    requirements: tuple[str, ...]
    in_use: bool


def tree_size(path: Path) -> int:
    """Bytes a tree takes on disk, each inode counted once."""
    seen: set[tuple[int, int]] = set()
    total = 0
    for folder, _, files in os.walk(path):
        for name in files:
            with contextlib.suppress(OSError):
                st = os.lstat(os.path.join(folder, name))
                if (st.st_dev, st.st_ino) not in seen:
                    seen.add((st.st_dev, st.st_ino))
                    total += st.st_blocks * 512
    return total


def _in_use(settings: DepsSettings, key: str) -> bool:
    probe = FileLock(settings.folder("locks") / f"{key}.use")
    if probe.try_acquire():
        probe.release()
        return False
    return True


def list_environments(settings: DepsSettings) -> list[EnvironmentInfo]:
    """Every complete environment, most recently used first."""
    found = []
    for path in settings.folder("envs").iterdir():
        meta = path / META_FILE
        try:
            data = json.loads(meta.read_text(encoding="utf-8"))
            last_used = meta.stat().st_mtime
        except (OSError, ValueError):
            continue
        found.append(
            EnvironmentInfo(
                path.name,
                path,
                tree_size(path),
                last_used,
                tuple(data.get("requirements", [])),
                _in_use(settings, path.name),
            )
        )
    return sorted(found, key=lambda e: e.last_used, reverse=True)


def remove_tree(path: Path, settings: DepsSettings) -> None:
    """Remove a folder atomically from its parent's view: rename it into tmp/, then delete it."""
    doomed = settings.folder("tmp") / f"removing-{uuid.uuid4().hex}"
    os.rename(path, doomed)
    shutil.rmtree(doomed, ignore_errors=True)


def prune(settings: DepsSettings, *, max_bytes: int | None = None) -> list[EnvironmentInfo]:
    """Remove least recently used environments until the cache fits its budget; return the removed.

    An environment in use (a job holds its ``.use`` lock) is never removed, even if that leaves
    the cache over budget.
    """
    budget = settings.max_bytes if max_bytes is None else max_bytes
    for leftover in settings.folder("tmp").glob("removing-*"):  # of a prune killed halfway
        shutil.rmtree(leftover, ignore_errors=True)
    envs = list_environments(settings)
    total = sum(e.size_bytes for e in envs)
    removed = []
    for env in reversed(envs):  # least recently used first
        if total <= budget:
            break
        lock = FileLock(settings.folder("locks") / f"{env.key}.use")
        if not lock.try_acquire():
            continue
        try:
            remove_tree(env.path, settings)
        finally:
            lock.release()
        total -= env.size_bytes
        removed.append(env)
    return removed
