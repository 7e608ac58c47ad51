"""Settings read from the environment: the one place that reads ``os.environ``.

=============================  ==========================================================
variable                       meaning
=============================  ==========================================================
``ANALYSIS_ROOT``              root of saved analyses and project files (``.clients``)
``ANALYSIS_PROJECT_ID``        project of a notebook session (``default``)
``ANALYSIS_DATASOURCES_FILE``  datasources TOML file, instead of the project's own
``ANALYSIS_SECRET_KEY``        Fernet key(s) that decrypt datasource passwords
``ANALYSIS_BACKEND_URL``       base URL of the backend file API (also ``BACKEND_URL``)
``ANALYSIS_BACKEND_TOKEN``     bearer token for the file API
``ANALYSIS_FILES_MAX_BYTES``   largest file API response body accepted (104857600 = 100 MiB)
``ANALYSIS_SANDBOX``           sandbox of headless jobs: ``auto``, ``on`` or ``off`` (``auto``)
``ANALYSIS_BROKER_SOCKET``     set by the runner in a notebook job: every ``ctx`` of the kernel uses it
``ANALYSIS_CACHE_MAX_BYTES``   size budget of each project's result cache (1073741824 = 1 GiB)
=============================  ==========================================================
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["Settings"]


@dataclass(frozen=True)
class Settings:
    """Environment-derived settings; build with :meth:`from_env`."""

    root: Path = Path(".clients")
    project_id: str = "default"
    datasources_file: Path | None = None
    secret_key: str | None = field(default=None, repr=False)
    backend_url: str | None = None
    backend_token: str | None = field(default=None, repr=False)
    files_max_bytes: int = 100 * 1024 * 1024
    sandbox: str = "auto"
    #: The job's data broker, when this kernel runs a notebook job (README: "How secrets flow").
    broker_socket: Path | None = None
    #: Size budget of each project's result cache (README: "Result cache").
    cache_max_bytes: int = 1024**3
    #: The environment the settings were read from, where ``password_env`` variables are looked up.
    environ: Mapping[str, str] = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        """Read the settings from ``environ`` (default: ``os.environ``)."""
        env = os.environ if environ is None else environ
        ds_file = env.get("ANALYSIS_DATASOURCES_FILE")
        return cls(
            root=Path(env.get("ANALYSIS_ROOT") or ".clients"),
            project_id=env.get("ANALYSIS_PROJECT_ID") or "default",
            datasources_file=Path(ds_file) if ds_file else None,
            secret_key=env.get("ANALYSIS_SECRET_KEY") or None,
            backend_url=env.get("ANALYSIS_BACKEND_URL") or env.get("BACKEND_URL") or None,
            backend_token=env.get("ANALYSIS_BACKEND_TOKEN") or None,
            files_max_bytes=_positive_int(env, "ANALYSIS_FILES_MAX_BYTES", 100 * 1024 * 1024),
            sandbox=env.get("ANALYSIS_SANDBOX") or "auto",
            broker_socket=Path(env["ANALYSIS_BROKER_SOCKET"]) if env.get("ANALYSIS_BROKER_SOCKET") else None,
            cache_max_bytes=_positive_int(env, "ANALYSIS_CACHE_MAX_BYTES", 1024**3),
            environ=dict(env),
        )

    def project_dir(self, project_id: str) -> Path:
        """``{root}/{project_id}/analysis``: where a project's analyses and config live."""
        return self.root / project_id / "analysis"

    def cache_dir(self, project_id: str) -> Path:
        """``{root}/{project_id}/analysis/cache``: the project's result cache."""
        return self.project_dir(project_id) / "cache"

    def datasources_path(self, project_id: str) -> Path:
        """The datasources TOML file of a project (the override wins)."""
        if self.datasources_file is not None:
            return self.datasources_file
        return self.project_dir(project_id) / "datasources.toml"


def _positive_int(env: Mapping[str, str], name: str, default: int) -> int:
    """``env[name]`` as a positive int, ``default`` when unset; a clear error when malformed."""
    raw = env.get(name)
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        value = 0
    if value < 1:
        raise ValueError(f"{name} must be a positive integer (bytes), not {raw!r}.")
    return value
