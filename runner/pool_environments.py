"""The dependency environments a kernel pool keeps warm, and the leases its kernels hold on them.

A pooled kernel of an analysis with its own dependencies (README, "Dependencies per analysis")
runs from a cached environment, named by its launch settings (``python_env``). Such a kernel
holds its own lease on the environment, taken before it is launched and let go once it has been
killed, so ``analysis deps prune`` and the cache's size budget never remove an environment from
under it. The pool takes those leases from the lease of the last job on the environment (a
*template*, which may have been released since) and keeps kernels for a bounded number of
environments, the most recently used.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from analysis.runner.deps import EnvironmentLease
    from analysis.runner.pool_kernels import PoolKey

__all__ = ["PoolEnvironments"]


class PoolEnvironments:
    """Per pool key of a dependency environment: the template lease, and leases of kernels starting.

    Parameters
    ----------
    limit
        How many environments may keep warm kernels at once (the runtime's own is not counted).
    """

    def __init__(self, limit: int) -> None:
        if limit < 0:
            raise ValueError(f"max_environments must be 0 or more, not {limit}.")
        self.limit = limit
        self._templates: dict[PoolKey, EnvironmentLease] = {}

    def remember(self, key: PoolKey, launch: dict[str, Any], lease: EnvironmentLease | None) -> bool:
        """Record the job's ``lease`` for ``key``; whether the key may be kept warm at all.

        A key of the runtime's own environment always may; one of a dependency environment only
        with a lease of the cache to take its kernels' leases from.
        """
        if launch.get("python_env") is None:
            return True
        if lease is None or lease.path is None:
            return False
        self._templates[key] = lease
        return True

    def forget(self, key: PoolKey) -> None:
        """``key`` is no longer kept warm."""
        self._templates.pop(key, None)

    def over_limit(self, wanted: Mapping[PoolKey, tuple[str, Path, dict[str, Any], float]]) -> list[PoolKey]:
        """The keys of ``wanted`` (key -> project, root, launch, last use) whose environment is
        not among the ``limit`` most recently used."""
        last_use: dict[Path, float] = {}
        for _, _, launch, used in wanted.values():
            env = launch.get("python_env")
            if env is not None:
                last_use[env] = max(used, last_use.get(env, used))
        keep = sorted(last_use, key=last_use.__getitem__, reverse=True)[: self.limit]
        return [
            key for key, (_, _, launch, _) in wanted.items() if launch.get("python_env") not in (None, *keep)
        ]

    def hold(self, key: PoolKey, launch: dict[str, Any]) -> tuple[bool, EnvironmentLease | None]:
        """The lease of a kernel of ``key`` about to start: ``(True, lease)`` (``None``: the runtime's
        own environment needs none), or ``(False, None)``: its environment is gone (or being
        pruned) and it must not start. The kernel keeps the lease; one that does not launch
        releases it."""
        if launch.get("python_env") is None:
            return True, None
        template = self._templates.get(key)
        lease = None if template is None else template.share()
        return lease is not None, lease
