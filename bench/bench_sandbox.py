"""What the sandbox adds to a job, measured in one run on one machine (issue 9).

    .venv/bin/python bench/bench_sandbox.py [--repeat N]

1. A whole job (``run_job`` of a one-line ``run``: job directory, kernel start, execute,
   cleanup), unsandboxed and sandboxed, interleaved so that machine load hits both alike.
2. The sandbox alone: bubblewrap building the sandbox around ``/bin/true``, against running
   ``/bin/true`` directly (the same launch path: limits, parent-death signal, staging as root).

Figures are medians of ``--repeat`` runs; the added cost and ratio compare figures of this run.
The target is an added cost of at most 30 ms per job.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

from analysis.runner import JobSpec, run_job
from analysis.runner import sandbox as sandboxing
from analysis.runner.kernels import child_setup


def whole_jobs(repeat: int) -> tuple[float, float]:
    work = Path(tempfile.mkdtemp(prefix="bench-sandbox-"))
    work.chmod(0o755)
    script = work / "trivial.py"
    script.write_text("def run(ctx, parameters):\n    return 1 + 1\n")
    times: dict[str, list[float]] = {"off": [], "on": []}
    for mode in ("off", "on"):  # warm both paths (imports, page cache) before measuring
        run_job(JobSpec(source_path=script, root=work / ".clients", sandbox=mode))
    for _ in range(repeat):
        for mode in ("off", "on"):
            started = time.perf_counter()
            result = run_job(JobSpec(source_path=script, root=work / ".clients", sandbox=mode))
            times[mode].append(time.perf_counter() - started)
            assert result.success, result.to_dict()
    return statistics.median(times["off"]), statistics.median(times["on"])


def sandbox_alone(repeat: int) -> tuple[float, float]:
    job_dir = Path(tempfile.mkdtemp(prefix="bench-sandbox-job-"))
    sandboxing.prepare_job_dir(job_dir)
    times: dict[str, list[float]] = {"direct": [], "bwrap": []}
    for _ in range(repeat):
        started = time.perf_counter()
        subprocess.run(["/bin/true"], check=True, preexec_fn=child_setup({}, None))
        times["direct"].append(time.perf_counter() - started)
        plan = sandboxing.plan(["/bin/true"], job_dir=job_dir, max_tmp_bytes=64 * 1024**2)
        started = time.perf_counter()
        subprocess.run(
            plan.argv,
            check=True,
            env=plan.env,
            pass_fds=plan.pass_fds,
            preexec_fn=child_setup({}, plan),
        )
        times["bwrap"].append(time.perf_counter() - started)
        plan.close_fds()
    return statistics.median(times["direct"]), statistics.median(times["bwrap"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=10)
    args = parser.parse_args()
    reason = sandboxing.sandbox_available()
    if reason is not None:
        raise SystemExit(f"no sandbox here: {reason}")
    off, on = whole_jobs(args.repeat)
    direct, wrapped = sandbox_alone(args.repeat * 5)
    print(f"{'measure':44} {'median':>10}")
    print(f"{'job, unsandboxed':44} {off * 1000:>8.1f} ms")
    print(f"{'job, sandboxed':44} {on * 1000:>8.1f} ms")
    print(f"{'added per job (sandboxed - unsandboxed)':44} {(on - off) * 1000:>8.1f} ms  ({on / off:.3f}x)")
    print(f"{'/bin/true, direct':44} {direct * 1000:>8.1f} ms")
    print(f"{'/bin/true, in the sandbox':44} {wrapped * 1000:>8.1f} ms")
    print(f"{'sandbox set-up alone':44} {(wrapped - direct) * 1000:>8.1f} ms  (target <= 30 ms per job)")


if __name__ == "__main__":
    main()
