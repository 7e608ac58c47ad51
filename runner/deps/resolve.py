"""Resolving an analysis's requirements with ``uv pip compile`` against the runtime's own packages.

The runtime's installed distributions are passed as constraints (``name==version``), so a
resolution never asks for another version of a package the runtime already has: such a clash is
a conflict, reported before anything runs. The lock (compile output) is stored per set of
requirements and runtime, so the same analysis version always gets the same packages.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.metadata
import json
import os
import platform
import re
import sys
import tempfile
from pathlib import Path

from packaging.utils import canonicalize_name

from analysis.errors import DependencyError
from analysis.runner.deps.cache import DepsSettings
from analysis.runner.deps.metadata import Requirements
from analysis.runner.deps.uv import UvError, index_options, run_uv

__all__ = ["culprit", "env_key", "packages_to_install", "resolve", "runtime_packages"]

_PINNED = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)\s*==\s*([^\s;]+)")
_NAMED = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)")


@functools.cache
def runtime_packages() -> dict[str, str]:
    """The runtime's installed distributions: canonical name -> version (read once per process)."""
    found: dict[str, str] = {}
    for dist in importlib.metadata.distributions():
        name = dist.metadata["Name"]
        if name and dist.version:
            found.setdefault(canonicalize_name(name), dist.version)
    return dict(sorted(found.items()))


def _runtime_fingerprint() -> str:
    text = json.dumps([sys.executable, platform.python_version(), runtime_packages()])
    return hashlib.sha256(text.encode()).hexdigest()


def env_key(lock: str) -> str:
    """The cache key of the environment built from ``lock`` on this runtime."""
    return hashlib.sha256(f"{_runtime_fingerprint()}\n{lock}".encode()).hexdigest()[:24]


def _input_key(requirements: Requirements) -> str:
    text = json.dumps([_runtime_fingerprint(), list(requirements.dependencies)])
    return hashlib.sha256(text.encode()).hexdigest()[:24]


def packages_to_install(lock: str) -> list[str]:
    """Lines of ``lock`` the runtime does not already provide at the same version."""
    runtime = runtime_packages()
    wanted = []
    for raw in lock.splitlines():
        line = raw.split("#", 1)[0].strip()
        if not line or line.startswith("-"):
            continue
        pinned = _PINNED.match(line)
        if pinned and runtime.get(canonicalize_name(pinned.group(1))) == pinned.group(2):
            continue
        wanted.append(line)
    return wanted


def culprit(reason: str, requirements: Requirements) -> str | None:
    """The first of the analysis's packages uv's reason names."""
    words = {canonicalize_name(w) for w in re.findall(r"[A-Za-z0-9][A-Za-z0-9._-]*", reason)}
    for dep in requirements.dependencies:
        named = _NAMED.match(dep)
        if named and canonicalize_name(named.group(1)) in words:
            return named.group(1)
    return None


async def resolve(
    requirements: Requirements, settings: DepsSettings, *, timeout_s: float | None, upgrade: bool = False
) -> str:
    """The lock of ``requirements`` on this runtime: stored earlier, else resolved now with uv.

    With ``upgrade`` the stored lock is ignored and replaced by a fresh resolution.

    Raises ``DependencyError`` (naming the package and uv's reason) when they cannot be
    resolved, ``TimeoutError`` past ``timeout_s``.
    """
    requirements.check_python()
    stored = settings.folder("resolutions") / f"{_input_key(requirements)}.txt"
    if stored.is_file() and not upgrade:
        return stored.read_text(encoding="utf-8")
    with tempfile.TemporaryDirectory(dir=settings.folder("tmp"), prefix="resolve-") as work:
        wanted, constraints = Path(work) / "requirements.in", Path(work) / "runtime.txt"
        wanted.write_text("\n".join(requirements.dependencies) + "\n", encoding="utf-8")
        constraints.write_text(
            "".join(f"{name}=={version}\n" for name, version in runtime_packages().items()), encoding="utf-8"
        )
        args = ["pip", "compile", str(wanted), "-c", str(constraints), "--python", sys.executable]
        args += ["--no-header", "--no-annotate", "--quiet", *index_options(settings.environ)]
        try:
            lock = await run_uv(args, environ=settings.environ, timeout_s=timeout_s)
        except UvError as exc:
            package = culprit(exc.reason, requirements)
            subject = f"the package {package!r}" if package else "the analysis's dependencies"
            raise DependencyError(f"uv could not resolve {subject}: {exc.reason}", package=package) from None
    partial = stored.with_name(f"{stored.name}.{os.getpid()}.part")
    partial.write_text(lock, encoding="utf-8")
    os.replace(partial, stored)
    return lock
