"""Warm jobs: the kernel pool against cold starts, measured in one run on one machine (issue 10).

    .venv/bin/python bench/bench_pool.py [--repeat N] [--sandbox auto|on|off]

All jobs go through ``AnalysisService`` (submit to envelope), sandboxed when bubblewrap works.

1. One trivial job at a time (``return ctx.query("select 1").rows``): cold (``pool_size=0``) and
   warm (``pool_size=2``, each job submitted once the pool has refilled), p50 / p99.
2. The same with a SQLite datasource queried through the broker, warm: what a datasource adds.
3. 20 concurrent trivial jobs, all done: cold, and warm with a pool of 20.
4. Sustained: 4 submitters in a closed loop for 10 s with a pool of 4 (jobs/s, and how many
   got a warm kernel; the rest started cold).
5. Memory of an idle pooled kernel (PSS of its process tree: bubblewrap and the kernel).
6. 10 concurrent jobs by pool size (0, 2, 5, 10).
"""

from __future__ import annotations

import argparse
import asyncio
import sqlite3
import statistics
import tempfile
import time
from pathlib import Path

from analysis.runner.service import AnalysisService

TRIVIAL = 'def run(ctx, parameters):\n    return ctx.query("select 1").rows\n'
DATASOURCE = 'def run(ctx, parameters):\n    return ctx.query_datasource("shop", "select 1 as x").rows\n'


def setup() -> Path:
    root = Path(tempfile.mkdtemp(prefix="bench-pool-")) / ".clients"
    scripts = root / "default" / "analysis" / "scripts"
    scripts.mkdir(parents=True)
    (scripts / "trivial.py").write_text(TRIVIAL)
    (scripts / "datasource.py").write_text(DATASOURCE)
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


def sustained(service: AnalysisService, submitters: int, seconds: float) -> float:
    done = 0

    async def submitter(until: float) -> None:
        nonlocal done
        while time.monotonic() < until:
            result = await service.submit_analysis_job_async("trivial", {})
            assert result.success, result.error
            done += 1

    started = time.monotonic()
    asyncio.run(asyncio.wait_for(_all(submitter(started + seconds) for _ in range(submitters)), 120))
    return done / (time.monotonic() - started)


async def _all(coros: object) -> None:
    await asyncio.gather(*coros)  # type: ignore[call-overload]


def pct(times: list[float], q: float) -> float:
    ordered = sorted(times)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeat", type=int, default=30)
    parser.add_argument("--sandbox", default="auto")
    args = parser.parse_args()
    root, options = setup(), {"sandbox": args.sandbox}
    rows: list[tuple[str, str, str, str]] = []

    with AnalysisService(root, **options) as cold:
        cold.submit_analysis_job("trivial", {})  # imports, page cache
        cold_times = one_at_a_time(cold, "trivial", max(5, args.repeat // 3), 0)
        cold_burst = concurrent(cold, 20)
    with AnalysisService(root, pool_size=2, **options) as service:
        service.warm_up()
        service.submit_analysis_job("datasource", {})
        warm_times = one_at_a_time(service, "trivial", args.repeat, 2)
        ds_times = one_at_a_time(service, "datasource", args.repeat, 2)
        assert service.pool is not None
        stats = dict(service.pool.stats)
    rows.append(
        (
            "trivial job, p50",
            f"{pct(cold_times, 0.5):.0f} ms",
            f"{pct(warm_times, 0.5):.0f} ms",
            f"{pct(cold_times, 0.5) / pct(warm_times, 0.5):.1f}x",
        )
    )
    rows.append(
        (
            "trivial job, p99",
            f"{pct(cold_times, 0.99):.0f} ms",
            f"{pct(warm_times, 0.99):.0f} ms",
            f"{pct(cold_times, 0.99) / pct(warm_times, 0.99):.1f}x",
        )
    )
    rows.append(
        (
            "datasource job (SQLite via broker), p50",
            "",
            f"{pct(ds_times, 0.5):.0f} ms",
            f"+{pct(ds_times, 0.5) - pct(warm_times, 0.5):.0f} ms over trivial",
        )
    )

    with AnalysisService(root, pool_size=20, **options) as service:
        service.warm_up()
        wait_full(service, 20)
        assert service.pool is not None
        pss = [w.pss_bytes for w in service.pool.idle_kernels()]
        warm_burst = concurrent(service, 20)
    rows.append(
        (
            "20 concurrent trivial jobs, all done",
            f"{cold_burst:.2f} s",
            f"{warm_burst:.2f} s",
            f"{cold_burst / warm_burst:.1f}x",
        )
    )
    rows.append(
        ("idle pooled kernel, PSS (median of 20)", "", f"{statistics.median(pss) / 2**20:.0f} MiB", "")
    )

    with AnalysisService(root, pool_size=4, **options) as service:
        service.warm_up()
        wait_full(service, 4)
        rate = sustained(service, 4, 10.0)
        assert service.pool is not None
        sus = dict(service.pool.stats)
    rows.append(
        (
            "sustained jobs/s (4 submitters, pool 4)",
            "",
            f"{rate:.1f}/s",
            f"{sus['warm']} warm, {sus['cold']} cold",
        )
    )

    by_size = []
    for size in (0, 2, 5, 10):
        with AnalysisService(root, pool_size=size, **options) as service:
            if size:
                service.warm_up()
                wait_full(service, size)
            by_size.append(f"{size}: {concurrent(service, 10):.2f} s")
    rows.append(("10 concurrent jobs by pool size", "", "; ".join(by_size), ""))

    print(f"pool stats (pool 2 run): {stats}")
    print(f"{'measure':<44} {'cold':>10} {'warm':>12}  ratio")
    for name, a, b, c in rows:
        print(f"{name:<44} {a:>10} {b:>12}  {c}")


if __name__ == "__main__":
    main()
