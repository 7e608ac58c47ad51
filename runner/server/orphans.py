"""The guard of a worker's kernels: when the worker dies (even by kill -9), its kernels die too.

``analysis worker`` starts ``python -m analysis.runner.server.orphans PID ROOT`` beside itself.
The guard waits for process ``PID`` to end, then kills every process started for a job under
``ROOT`` (each kernel names its job directory on its command line) and exits. So a job whose
worker was declared lost and that runs again elsewhere is no longer running here.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import psutil

__all__ = ["start_guard"]


def start_guard(root: Path) -> subprocess.Popen[bytes]:
    """Start the guard of this process's kernels under ``root``."""
    return subprocess.Popen(
        [sys.executable, "-m", "analysis.runner.server.orphans", str(os.getpid()), str(root.resolve())],
        stdin=subprocess.DEVNULL, start_new_session=True,
    )  # fmt: skip


def _kill_kernels_under(root: Path) -> None:
    marker = str(root) + os.sep
    for proc in psutil.process_iter(["pid", "cmdline"]):
        try:
            if proc.pid != os.getpid() and any(marker in arg for arg in proc.info["cmdline"] or ()):
                proc.kill()
        except psutil.Error:
            continue


def _alive(pid: int) -> bool:
    try:
        return bool(psutil.Process(pid).status() != psutil.STATUS_ZOMBIE)
    except psutil.NoSuchProcess:
        return False


def main(argv: list[str]) -> int:
    """Wait for the worker ``argv[0]`` to end, then kill the kernels under ``argv[1]``."""
    worker = int(argv[0])
    while _alive(worker):
        time.sleep(0.2)
    _kill_kernels_under(Path(argv[1]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
