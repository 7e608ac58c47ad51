"""Job directories: who owns one, how much disk it uses, and sweeping those no live runner owns.

A runner writes ``runner.pid`` (its pid and process start time) into every job directory it
creates. A runner that dies without cleaning up (SIGKILL, power loss) leaves its job
directories behind; the next job started under the same projects root removes those whose
runner is gone (its kernels died with it: ``PR_SET_PDEATHSIG``).
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import psutil

__all__ = ["claim_job_dir", "disk_usage", "sweep_orphans"]

_OWNER_FILE = "runner.pid"
#: A job directory without an owner file is left alone this long (its runner may be creating it).
_GRACE_S = 60.0
_swept: set[Path] = set()


def _me() -> str:
    return f"{os.getpid()} {psutil.Process().create_time():.3f}"


def claim_job_dir(job_dir: Path) -> None:
    """Mark ``job_dir`` as owned by this runner process."""
    (job_dir / _OWNER_FILE).write_text(_me(), encoding="ascii")


def _owner_alive(job_dir: Path) -> bool:
    try:
        pid_text, _, started = (job_dir / _OWNER_FILE).read_text(encoding="ascii").partition(" ")
        return f"{psutil.Process(int(pid_text)).create_time():.3f}" == started.strip()
    except FileNotFoundError:
        try:  # being created right now by some runner, or not ours: leave young ones alone
            return time.time() - job_dir.stat().st_mtime < _GRACE_S
        except OSError:
            return True
    except (OSError, ValueError, psutil.Error):
        return False


def sweep_orphans(root: Path) -> list[Path]:
    """Remove the job directories under ``root`` that no live runner owns (once per process and root)."""
    key = root.resolve()
    if key in _swept:
        return []
    _swept.add(key)
    removed = []
    for job_dir in root.glob("*/analysis/temp/*"):
        if job_dir.is_dir() and not _owner_alive(job_dir):
            shutil.rmtree(job_dir, ignore_errors=True)
            removed.append(job_dir)
    return removed


def disk_usage(path: Path) -> int:
    """Bytes of disk used by the files under ``path`` (allocated blocks, sparse files counted right)."""
    total = 0
    stack = [str(path)]
    while stack:
        try:
            entries = list(os.scandir(stack.pop()))
        except OSError:
            continue
        for entry in entries:
            try:
                if entry.is_dir(follow_symlinks=False):
                    stack.append(entry.path)
                else:
                    total += entry.stat(follow_symlinks=False).st_blocks * 512
            except OSError:
                continue
    return total
