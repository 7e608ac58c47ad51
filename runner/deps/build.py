"""Building one cached environment from a lock: a uv venv layered over the runtime, built aside.

The environment is a relocatable ``uv venv`` of the runtime's interpreter whose site-packages holds
only the packages the runtime lacks, plus ``_analysis_runtime.pth``, which adds the runtime's own
site-packages after them (``site.addsitedir``, so the runtime's ``.pth`` files, editable installs
included, work too). It is built in ``tmp/`` and renamed into ``envs/`` when complete: an
environment is there whole or not at all.
"""

from __future__ import annotations

import json
import os
import shutil
import site
import sys
import sysconfig
import time
import uuid
from pathlib import Path

from analysis.errors import DependencyError
from analysis.runner.deps.cache import LOCK_FILE, META_FILE, DepsSettings
from analysis.runner.deps.metadata import Requirements
from analysis.runner.deps.resolve import culprit, packages_to_install
from analysis.runner.deps.uv import UvError, index_options, run_uv

__all__ = ["build_environment", "environment_python"]

RUNTIME_PTH = "_analysis_runtime.pth"


def environment_python(env: Path) -> Path:
    """The interpreter of environment ``env``."""
    return env / "bin" / "python"


def _runtime_site_dirs() -> list[str]:
    """The runtime's site-packages folders, in its own order."""
    dirs = [*site.getsitepackages(), sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]]
    return [d for i, d in enumerate(dirs) if d not in dirs[:i] and os.path.isdir(d)]


def _site_packages(env: Path) -> Path:
    (found,) = (env / "lib").glob("python*/site-packages")
    return found


def remove_stale_builds(settings: DepsSettings, key: str) -> None:
    """Remove what killed builds of ``key`` left in tmp/ (call with the build lock held)."""
    for stale in settings.folder("tmp").glob(f"{key}-*"):
        shutil.rmtree(stale, ignore_errors=True)


async def build_environment(
    key: str, lock: str, requirements: Requirements, settings: DepsSettings, *, timeout_s: float | None
) -> Path:
    """Build environment ``key`` from ``lock`` (the caller holds its build lock); return its path.

    Raises ``DependencyError`` naming uv's reason when a package cannot be installed, and
    ``TimeoutError`` past ``timeout_s``; either way nothing is left in the cache.
    """
    started = time.monotonic()

    def left() -> float | None:
        return None if timeout_s is None else max(0.01, timeout_s - (time.monotonic() - started))

    work = settings.folder("tmp") / f"{key}-{uuid.uuid4().hex[:8]}"
    try:
        venv_args = ["venv", "--relocatable", "--quiet", "--python", sys.executable, str(work)]
        await run_uv(venv_args, environ=settings.environ, timeout_s=left())
        runtime = "".join(f"import site; site.addsitedir({d!r})\n" for d in _runtime_site_dirs())
        (_site_packages(work) / RUNTIME_PTH).write_text(runtime, encoding="utf-8")
        wanted = packages_to_install(lock)
        if wanted:
            listed = work / "analysis-install.txt"
            listed.write_text("\n".join(wanted) + "\n", encoding="utf-8")
            args = ["pip", "install", "--python", str(environment_python(work)), "--no-deps", "--quiet"]
            args += ["-r", str(listed), *index_options(settings.environ)]
            await run_uv(args, environ=settings.environ, timeout_s=left())
            listed.unlink()
        (work / LOCK_FILE).write_text(lock, encoding="utf-8")
        meta = {
            "requirements": list(requirements.dependencies),
            "requires_python": list(requirements.requires_python),
            "installed": wanted,
            "python": sys.executable,
            "built_at": time.time(),
            "build_s": round(time.monotonic() - started, 3),
        }
        (work / META_FILE).write_text(json.dumps(meta, indent=1), encoding="utf-8")
        os.rename(work, settings.env_dir(key))
    except UvError as exc:
        package = culprit(exc.reason, requirements)
        subject = f"the package {package!r}" if package else "the analysis's packages"
        raise DependencyError(f"uv could not install {subject}: {exc.reason}", package=package) from None
    finally:
        if work.exists():
            shutil.rmtree(work, ignore_errors=True)
    return settings.env_dir(key)
