"""``analysis serve``: the runtime as an HTTP service with durable jobs, versions and schedules.

Needs the ``server`` extra (``pip install 'analysis-kernel[server]'``).
"""

from __future__ import annotations

from analysis.runner.server.config import ServerConfig

__all__ = ["ServerConfig"]
