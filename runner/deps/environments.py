"""The environment a job's kernel runs from: resolve, build once, and hold it while the job runs.

:func:`lease_environment` is what the runner calls before launching a kernel. An analysis that
declares no dependencies gets the runtime's own interpreter at no cost. Otherwise its requirements
are resolved (or the stored lock is read), the environment is built unless it is already cached
(one build for concurrent first runs: the others wait on its build lock), and a shared lock on it
is held until :meth:`EnvironmentLease.release`, so pruning never removes it from under a job.
"""

from __future__ import annotations

import contextlib
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from analysis.errors import DependencyError, JobTimeoutError
from analysis.runner.deps.build import build_environment, environment_python, remove_stale_builds
from analysis.runner.deps.cache import META_FILE, DepsSettings, FileLock, prune
from analysis.runner.deps.metadata import Requirements, read_requirements
from analysis.runner.deps.resolve import env_key, resolve

__all__ = ["EnvironmentLease", "lease_environment", "prepare"]


@dataclass
class EnvironmentLease:
    """The interpreter a kernel runs from, and the hold on its cached environment.

    Attributes
    ----------
    python
        The Python executable to launch the kernel with.
    path
        The cached environment (``None``: the runtime's own); a sandbox binds it read-only.
    built
        Whether this call built the environment (rather than finding it cached).
    """

    python: str
    path: Path | None = None
    built: bool = False
    _lock: FileLock | None = field(default=None, repr=False)
    _use_path: Path | None = field(default=None, repr=False)

    def share(self) -> EnvironmentLease | None:
        """Another hold on the same environment, for a pooled kernel; ``None`` if it is gone.

        It does not wait: an environment being removed right now (``analysis deps prune``), or
        removed since, gives ``None``. This lease may have been released already.
        """
        if self.path is None:
            return EnvironmentLease(self.python)
        if self._use_path is None:  # not a lease of the cache: nothing to hold it by
            return None
        hold = FileLock(self._use_path, shared=True)
        try:
            if not hold.try_acquire():
                return None
        except OSError:  # the cache itself is gone
            return None
        if not (self.path / META_FILE).is_file():  # pruned before we took the lock
            hold.release()
            return None
        return EnvironmentLease(self.python, self.path, False, hold, self._use_path)

    def release(self) -> None:
        """Let the environment be pruned again; safe to call twice."""
        if self._lock is not None:
            self._lock.release()
            self._lock = None


async def _build_once(
    key: str,
    *,
    lock: str,
    requirements: Requirements,
    settings: DepsSettings,
    deadline: float,
    log: Callable[[str], object] | None,
) -> bool:
    """Build environment ``key`` unless another process does (then wait for it); whether we built it."""
    builder = FileLock(settings.folder("locks") / f"{key}.build")
    if not await builder.acquire(deadline):
        raise TimeoutError
    try:
        if settings.env_dir(key).is_dir():  # built by another job while we waited
            return False
        remove_stale_builds(settings, key)
        if log is not None:
            log(f"[deps] building environment {key} for {', '.join(requirements.dependencies)}\n")
        started = time.monotonic()
        await build_environment(key, lock, requirements, settings, timeout_s=deadline - time.monotonic())
        if log is not None:
            log(f"[deps] built environment {key} in {time.monotonic() - started:.1f} s\n")
        return True
    finally:
        builder.release()


async def prepare(
    requirements: Requirements,
    settings: DepsSettings,
    *,
    timeout_s: float | None = None,
    log: Callable[[str], object] | None = None,
    upgrade: bool = False,
) -> EnvironmentLease:
    """Resolve and build (or find) the environment of ``requirements``; a lease the caller releases.

    ``upgrade`` resolves again instead of reusing the stored lock (``analysis deps build --upgrade``).

    ``timeout_s`` bounds this call (waits included); the build's own timeout,
    ``settings.build_timeout_s``, applies too. Raises ``DependencyError``; past ``timeout_s``
    (when it is the tighter limit) ``TimeoutError``.
    """
    requirements.check_python()
    if not requirements:
        return EnvironmentLease(sys.executable)
    limit = settings.build_timeout_s if timeout_s is None else min(timeout_s, settings.build_timeout_s)
    deadline = time.monotonic() + limit
    use: FileLock | None = None
    try:
        lock = await resolve(requirements, settings, timeout_s=limit, upgrade=upgrade)
        key = env_key(lock)
        use = FileLock(settings.folder("locks") / f"{key}.use", shared=True)
        if not await use.acquire(deadline):  # held from here on: pruning cannot remove it under us
            raise TimeoutError
        built = not settings.env_dir(key).is_dir() and await _build_once(
            key, lock=lock, requirements=requirements, settings=settings, deadline=deadline, log=log
        )
        os.utime(settings.env_dir(key) / META_FILE)  # the last use, for LRU pruning
    except BaseException as exc:
        if use is not None:
            use.release()
        if isinstance(exc, TimeoutError) and limit == settings.build_timeout_s:
            raise DependencyError(
                f"Installing the analysis's dependencies took longer than {settings.build_timeout_s:g} s "
                "(ANALYSIS_DEPS_BUILD_TIMEOUT_S) and was stopped."
            ) from None
        if isinstance(exc, OSError) and not isinstance(exc, TimeoutError):
            raise DependencyError(
                f"The environment cache {settings.cache_dir} (ANALYSIS_DEPS_CACHE) or uv cannot be used: "
                f"{exc}."
            ) from None
        raise
    if built:
        with contextlib.suppress(OSError):  # best effort: the job has its environment either way
            prune(settings)
    env = settings.env_dir(key)
    return EnvironmentLease(str(environment_python(env)), env, built, use, use.path)


async def lease_environment(
    source: Path,
    *,
    project_dir: Path | None,
    timeout_s: float | None,
    log: Callable[[str], object] | None = None,
    settings: DepsSettings | None = None,
) -> EnvironmentLease:
    """The environment to run the analysis at ``source`` in (the runner's hook before a kernel starts).

    Parameters
    ----------
    source
        The analysis (``.py`` or ``.ipynb``).
    project_dir
        The project's ``{root}/{project}/analysis`` folder (its ``dependencies.toml`` adds defaults).
    timeout_s
        What is left of the job's deadline: waiting for a build counts towards it.
    log
        Receives a line when the environment is built (the job's logs).
    settings
        Cache settings (default: from the environment variables).
    """
    requirements = read_requirements(source, project_dir=project_dir)
    if not requirements:
        requirements.check_python()
        return EnvironmentLease(sys.executable)
    try:
        settings = settings or DepsSettings.from_env()
    except ValueError as exc:
        raise DependencyError(str(exc)) from None
    try:
        return await prepare(requirements, settings, timeout_s=timeout_s, log=log)
    except TimeoutError:
        raise JobTimeoutError(
            f"The job's deadline ({timeout_s:g} s left at the start) passed while its dependencies "
            "were being installed; build them ahead with `analysis deps build`."
        ) from None
