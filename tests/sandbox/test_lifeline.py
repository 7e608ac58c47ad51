"""A sandboxed kernel ends with its runner, however and whenever it dies (README, "Security model")."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

pytestmark = pytest.mark.usefixtures("sandbox_ready")

LAUNCH = """
import os, signal, sys, time
from pathlib import Path
from analysis.runner import sandbox
from analysis.runner.kernels import launch_kernel

root, count, delay_s = Path(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3])
break_lifeline = sys.argv[4] == "1"
for i in range(count):
    job_dir = root / f"job-{i}"
    job_dir.mkdir(mode=0o700)
    kernel = launch_kernel(job_dir, sandboxed=True)
if break_lifeline:  # what the runner's death does to the lifeline, with the runner still alive
    while not (job_dir / "k-1").exists():
        time.sleep(0.02)
    print(kernel.pid, kernel.kernel_pid(), flush=True)  # found before the kernel can end
    os.close(sandbox._lifeline["write"])
    time.sleep(600)
time.sleep(delay_s)
os.kill(os.getpid(), signal.SIGKILL)  # the runner dies, right after starting its last sandbox
"""


def _running(proc: psutil.Process) -> bool:
    """Alive and not a zombie (the runner, asleep, does not reap its bubblewrap)."""
    try:
        return proc.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _holding(folder: Path) -> list[psutil.Process]:
    """Processes with a file under ``folder`` open (a sandbox's stdout is its job's kernel.log)."""
    found = []
    for proc in psutil.process_iter():
        if proc.pid == os.getpid():
            continue
        try:
            targets = [os.readlink(f"/proc/{proc.pid}/fd/{fd}") for fd in os.listdir(f"/proc/{proc.pid}/fd")]
        except OSError:
            continue
        if any(target.startswith(str(folder) + "/") for target in targets):
            found.append(proc)
    return found


def _gone(folder: Path, timeout_s: float) -> list[psutil.Process]:
    give_up = time.monotonic() + timeout_s
    while (left := _holding(folder)) and time.monotonic() < give_up:
        time.sleep(0.1)
    return left


def _launch(folder: Path, *args: str) -> subprocess.Popen[str]:
    script = folder / "launch.py"
    script.write_text(LAUNCH, encoding="utf-8")
    return subprocess.Popen(
        [sys.executable, str(script), str(folder), *args], stdout=subprocess.PIPE, text=True
    )


def test_a_sandboxed_kernel_exits_when_its_runners_lifeline_breaks(tmp_path: Path) -> None:
    # the runner lives on, so nothing but the lifeline tells the kernel: a kernel whose
    # sandbox lost its parent-death signal ends this way when its runner dies
    runner = _launch(tmp_path, "1", "0", "1")
    try:
        assert runner.stdout is not None
        sandbox, kernel = (psutil.Process(int(pid)) for pid in runner.stdout.readline().split())
        give_up = time.monotonic() + 30
        while (alive := [p for p in (sandbox, kernel) if _running(p)]) and time.monotonic() < give_up:
            time.sleep(0.1)
        assert not alive, "the sandbox outlived its lifeline"
    finally:
        runner.kill()
        runner.wait()
        if runner.stdout is not None:
            runner.stdout.close()
    assert not _gone(tmp_path, 10)


@pytest.mark.parametrize("delay_ms", [0, 1, 2, 3, 5, 8, 13, 21, 34, 55])
def test_a_runner_killed_while_its_sandboxes_start_leaves_nothing(tmp_path: Path, delay_ms: int) -> None:
    # killed at points of bubblewrap's set-up: before this was fixed, a bubblewrap killed
    # between forking its sandbox's init and letting it go on left that init waiting for ever
    runner = _launch(tmp_path, "3", str(delay_ms / 1000), "0")
    runner.wait(60)
    if runner.stdout is not None:
        runner.stdout.close()
    left = _gone(tmp_path, 60)
    assert not left, f"left running: {[(p.pid, p.ppid(), p.cmdline()[:3]) for p in left]}"
