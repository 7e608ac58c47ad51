"""Per-analysis dependencies: PEP 723 requirements resolved with uv into cached, layered environments.

``lease_environment`` is the runner's hook before it launches a kernel; ``analysis deps`` (the
``deps_cli`` module) manages the cache. See the README, "Dependencies per analysis".
"""

from __future__ import annotations

from analysis.runner.deps.cache import DepsSettings, EnvironmentInfo, list_environments, prune
from analysis.runner.deps.environments import EnvironmentLease, lease_environment, prepare
from analysis.runner.deps.metadata import Requirements, read_requirements

__all__ = [
    "DepsSettings",
    "EnvironmentInfo",
    "EnvironmentLease",
    "Requirements",
    "lease_environment",
    "list_environments",
    "prepare",
    "prune",
    "read_requirements",
]
