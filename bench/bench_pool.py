"""Warm jobs: the kernel pool against cold starts, measured in one run on one machine (issue 10).

    .venv/bin/python bench/bench_pool.py [--repeat N] [--sandbox auto|on|off]

All jobs go through ``AnalysisService`` (submit to envelope), sandboxed when bubblewrap works.

Every row shows the 1-minute load average when it was measured (the machine may be shared).

1. One trivial job at a time (``return ctx.query("select 1").rows``): cold (``pool_size=0``) and
   warm (``pool_size=2``, each job submitted once the pool has refilled), p50 / p99, with kernels
   started one by one (column a) and forked from a zygote (column b).
2. The same with a SQLite datasource queried through the broker, and as a notebook of one cell
   (``ctx.set_result(ctx.query("select 1").rows)``), warm: what a datasource or a notebook adds.
3. 20 concurrent trivial jobs, all done: cold, and with a pool of 20 (no zygote / zygote), and
   the memory of an idle pooled kernel (PSS of its process tree: shared pages split).
4. Sustained: ``--submitters`` (8) in a closed loop (``--seconds``) by pool size, with and without a
   zygote (jobs/s, and how many got a warm kernel; the rest started cold). Run as root with
   cgroup v1's ``cpuacct`` mounted, it also gives the CPU time all of the bench's processes
   (runner, zygote, kernels and their sandboxes' set-up and exit) spent per job, and the jobs/s
   two idle cores would sustain at that cost: the rate alone counts only the CPU the machine's
   other users left.
5. 10 concurrent jobs by pool size (0, 2, 5, 10).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sqlite3
import statistics
import tempfile
import time
from pathlib import Path

import nbformat

from analysis.runner.service import AnalysisService

TRIVIAL = 'def run(ctx, parameters):\n    return ctx.query("select 1").rows\n'
DATASOURCE = 'def run(ctx, parameters):\n    return ctx.query_datasource("shop", "select 1 as x").rows\n'
NOTEBOOK_CELL = 'ctx.set_result(ctx.query("select 1").rows)'


def setup() -> Path:
    root = Path(tempfile.mkdtemp(prefix="bench-pool-")) / ".clients"
    scripts = root / "default" / "analysis" / "scripts"
    scripts.mkdir(parents=True)
    (scripts / "trivial.py").write_text(TRIVIAL)
    (scripts / "datasource.py").write_text(DATASOURCE)
    nbformat.write(
        nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(NOTEBOOK_CELL)]), scripts / "notebook.ipynb"
    )
    sqlite3.connect(root / "default" / "analysis" / "shop.db").close()
    (root / "default" / "analysis" / "datasources.toml").write_text(
        '[shop]\nkind = "sqlite"\npath = "shop.db"\n'
    )
    for path in root.parents[0].rglob("*"):
        path.chmod(0o755 if path.is_dir() else 0o644)
    root.parent.chmod(0o755)
    return root


def wait_full(service: AnalysisService, count: int) -> None:
    assert service.pool is not None
    give_up = time.monotonic() + 120
    while service.pool.idle_count() < count and time.monotonic() < give_up:
        time.sleep(0.02)


def one_at_a_time(service: AnalysisService, name: str, repeat: int, pooled: int) -> list[float]:
    times = []
    for _ in range(repeat):
        if pooled:
            wait_full(service, pooled)
        started = time.perf_counter()
        result = service.submit_analysis_job(name, {})
        times.append(time.perf_counter() - started)
        assert result.success, result.error
    return times


def concurrent(service: AnalysisService, count: int) -> float:
    async def burst() -> None:
        results = await asyncio.gather(
            *(service.submit_analysis_job_async("trivial", {}) for _ in range(count))
        )
        assert all(r.success for r in results), [r.error for r in results if not r.success]

    started = time.perf_counter()
    asyncio.run(burst())
    return time.perf_counter() - started


class CpuMeter:
    """CPU time of this process and everything it starts (a cgroup v1 ``cpuacct`` group), or
    nothing where such a group cannot be made (not root, no cgroup v1)."""

    def __init__(self) -> None:
        self.group: Path | None = Path(f"/sys/fs/cgroup/cpuacct/analysis-bench-{os.getpid()}")
        try:
            self.group.mkdir()
            (self.group / "cgroup.procs").write_text(str(os.getpid()))
        except OSError:
            self.group = None

    def seconds(self) -> float | None:
        """CPU seconds used so far by the group (``None``: no group)."""
        if self.group is None:
            return None
        return int((self.group / "cpuacct.usage").read_text()) / 1e9

    def close(self) -> None:
        """Leave the group and remove it (once its other processes have ended)."""
        if self.group is None:
            return
        Path("/sys/fs/cgroup/cpuacct/cgroup.procs").write_text(str(os.getpid()))
        for _ in range(100):
            try:
                self.group.rmdir()
                return
            except OSError:
                time.sleep(0.05)


def sustained(service: AnalysisService, submitters: int, seconds: float) -> tuple[float, int]:
    """Jobs/s of ``submitters`` closed loops for ``seconds``, and how many jobs were done."""
    done = 0

    async def submitter(until: float) -> None:
        nonlocal done
        while time.monotonic() < until:
            result = await service.submit_analysis_job_async("trivial", {})
            assert result.success, result.error
            done += 1

    started = time.monotonic()
    asyncio.run(asyncio.wait_for(_all(submitter(started + seconds) for _ in range(submitters)), 120))
    return done / (time.monotonic() - started), done


async def _all(coros: object) -> None:
    await asyncio.gather(*coros)  # type: ignore[call-overload]


def pct(times: list[float], q: float) -> float:
    ordered = sorted(times)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000


def load() -> str:
    """The machine's 1-minute load average (the machine is shared: every figure is shown with it)."""
    return f"{os.getloadavg()[0]:.1f}"


def service(root: Path, size: int, options: dict[str, str], *, zygotes: bool = True) -> AnalysisService:
    svc = AnalysisService(root, pool_size=size, **options)
    if svc.pool is not None:
        svc.pool.zygotes = zygotes
        svc.warm_up()
        wait_full(svc, size)
    return svc


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeat", type=int, default=30)
    parser.add_argument("--sandbox", default="auto")
    parser.add_argument("--seconds", type=float, default=10.0, help="length of each sustained run")
    parser.add_argument("--submitters", type=int, default=8, help="closed loops of the sustained runs")
    args = parser.parse_args()
    root, options = setup(), {"sandbox": args.sandbox}
    rows: list[tuple[str, str, str, str, str]] = []

    def row(name: str, a: str, b: str, c: str = "") -> None:
        rows.append((name, a, b, c, load()))

    with AnalysisService(root, **options) as cold:
        cold.submit_analysis_job("trivial", {})  # imports, page cache
        cold_times = one_at_a_time(cold, "trivial", max(5, args.repeat // 3), 0)
        cold_notebook = one_at_a_time(cold, "notebook", max(5, args.repeat // 3), 0)
        row(
            "cold trivial job (pool_size=0), p50 / p99",
            f"{pct(cold_times, 0.5):.0f} ms",
            f"{pct(cold_times, 0.99):.0f} ms",
        )
        cold_burst = concurrent(cold, 20)
        row("cold: 20 concurrent trivial jobs, all done", f"{cold_burst:.2f} s", "")

    warm: dict[bool, list[float]] = {}
    for zygotes in (False, True):
        with service(root, 2, options, zygotes=zygotes) as svc:
            svc.submit_analysis_job("datasource", {})
            warm[zygotes] = one_at_a_time(svc, "trivial", args.repeat, 2)
            if zygotes:
                ds_times = one_at_a_time(svc, "datasource", args.repeat, 2)
                svc.submit_analysis_job("notebook", {})  # the pool now keeps notebook kernels too
                nb_times = one_at_a_time(svc, "notebook", args.repeat, 4)
    for q, name in ((0.5, "p50"), (0.99, "p99")):
        off, on = pct(warm[False], q), pct(warm[True], q)
        row(
            f"warm trivial job (pool 2), {name}",
            f"{off:.0f} ms",
            f"{on:.0f} ms",
            f"{pct(cold_times, q) / on:.1f}x cold",
        )
    row(
        "warm datasource job (SQLite via broker), p50",
        "",
        f"{pct(ds_times, 0.5):.0f} ms",
        f"{pct(ds_times, 0.5) - pct(warm[True], 0.5):+.0f} ms over trivial",
    )
    row(
        "warm notebook analysis (one cell), p50; cold",
        f"{pct(cold_notebook, 0.5):.0f} ms",
        f"{pct(nb_times, 0.5):.0f} ms",
        f"{pct(nb_times, 0.5) - pct(warm[True], 0.5):+.0f} ms over trivial",
    )

    for zygotes in (False, True):
        with service(root, 20, options, zygotes=zygotes) as svc:
            assert svc.pool is not None
            pss = [w.pss_bytes for w in svc.pool.idle_kernels()]
            burst = concurrent(svc, 20)
        row(
            f"pool 20 {'zygote' if zygotes else 'no zygote'}: 20 concurrent all done; idle PSS (median)",
            f"{burst:.2f} s",
            f"{statistics.median(pss) / 2**20:.0f} MiB",
            f"{cold_burst / burst:.1f}x cold",
        )

    meter = CpuMeter()
    try:
        for size, zygotes in ((4, False), (2, True), (4, True), (8, True)):
            with service(root, size, options, zygotes=zygotes) as svc:
                before = meter.seconds()
                rate, done = sustained(svc, args.submitters, args.seconds)
                after = meter.seconds()
                assert svc.pool is not None
                sus = dict(svc.pool.stats)
            cost = ""
            if before is not None and after is not None:
                per_job = (after - before) / done
                cost = f"; {per_job * 1000:.0f} ms CPU/job = {2 / per_job:.1f}/s on 2 idle cores"
            row(
                f"sustained jobs/s, {args.submitters} submitters, pool {size}, "
                f"{'zygote' if zygotes else 'no zygote'}",
                "",
                f"{rate:.1f}/s",
                f"{sus['warm']} warm, {sus['cold']} cold{cost}",
            )
    finally:
        meter.close()

    by_size = []
    for size in (0, 2, 5, 10):
        with service(root, size, options) as svc:
            by_size.append(f"{size}: {concurrent(svc, 10):.2f} s")
    row("10 concurrent jobs by pool size (zygote)", "; ".join(by_size), "")

    print(f"{'measure':<66} {'a':>10} {'b':>10}  {'ratio / note':<28} load")
    for name, a, b, c, at in rows:
        print(f"{name:<66} {a:>10} {b:>10}  {c:<28} {at}")


if __name__ == "__main__":
    main()
