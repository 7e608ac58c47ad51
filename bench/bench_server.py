"""Figures of ``analysis serve``, measured in one run on one machine (issue 11).

    .venv/bin/python bench/bench_server.py [--repeat N] [--burst N] [--pool-size N] [--postgres]

``--postgres``: the store is a private PostgreSQL (tests/datasources/servers.py; PostgreSQL 15
needed) instead of SQLite, so jobs go through the fair queue and the server's local worker
(README, "Running on several machines"); ``/metrics`` then reads the job figures from the store.

1. Server overhead: a trivial job submitted over HTTP with ``wait``; the wall time of the request
   minus the runner's own time for the job (the job's ``run_ms``: the server's clock around the
   runner's ``run_job_async``, kernel teardown included), p50 and p90. With the server's kernel
   pool (``--pool-size``, default the server's: one per core up to 4; ``0``: cold kernels), each
   job is submitted once the pool is full again (and 1.5 s more, the replacement kernel's
   warm-up), so it takes a warm kernel and no kernel start competes with it for the CPU.
2. A burst of ``--burst`` jobs submitted at once: all reach a final state, none lost and none run
   twice (each job appends its index to a host file, so the server runs jobs unsandboxed);
   submit rate, queue-wait p50/p99, drain time.
3. Server RSS (the server process alone, kernels excluded) idle and at its peak under the burst.
4. ``/metrics`` scrape time (median of 50).
5. A ``--artifact-rows`` (1,000,000) row table result: the job's run time (the Parquet write
   included), the artifact's size, and download throughput as Parquet, JSON Lines and CSV with
   the server's peak RSS during the downloads (each format downloaded twice; the second is
   reported, the first having loaded pyarrow into the server).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import psutil

TRIVIAL = "def run(ctx, parameters):\n    return 1 + 1\n"
APPEND = (
    "def run(ctx, parameters):\n"
    "    with open(parameters['log'], 'a') as fh:\n"
    "        fh.write(str(parameters['i']) + '\\n')\n"
    "    return parameters['i']\n"
)


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def _start(root: Path, pool: list[str]) -> tuple[subprocess.Popen[bytes], str, dict[str, str]]:
    cli = [sys.executable, "-m", "analysis.runner.cli"]
    store = pool[pool.index("--db") : pool.index("--db") + 2] if "--db" in pool else []
    token = subprocess.run(
        [*cli, "token", "create", "--admin", "--root", str(root), *store],
        capture_output=True, text=True, check=True,
    ).stdout.strip()  # fmt: skip
    log = root.parent / "server.log"
    with log.open("wb") as out:  # --port 0: the server binds a free port and prints its URL
        server = subprocess.Popen(
            [*cli, "serve", "--root", str(root), "--port", "0", "--max-queued-jobs", "100000", *pool],
            stdout=subprocess.DEVNULL, stderr=out,
            # unsandboxed: the burst's jobs append to a host file (a sandboxed job's /tmp is private)
            env={**os.environ, "ANALYSIS_SANDBOX": "off"},
        )  # fmt: skip
    url = ""
    for _ in range(600):
        bound = re.search(r"listening on (http://\S+)", log.read_text(errors="replace"))
        url = bound.group(1) if bound else ""
        try:
            if url and httpx.get(f"{url}/readyz").status_code == 200:
                break
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    return server, url, {"Authorization": f"Bearer {token}"}


TABLE = """
def run(ctx, parameters):
    return ctx.query(
        "SELECT range AS id, 'customer ' || (range % 1000) AS name, range * 0.5 AS amount FROM range(?)",
        [parameters["rows"]],
    )
"""


class _PeakRss:
    """Samples a process's RSS in a thread; ``peak`` in bytes."""

    def __init__(self, process: psutil.Process) -> None:
        self.process = process
        self.peak = process.memory_info().rss
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample)

    def _sample(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self.process.memory_info().rss)
            time.sleep(0.02)

    def __enter__(self) -> _PeakRss:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()


def artifact(http: httpx.Client, server: psutil.Process, rows: int) -> list[tuple[str, float, float, float]]:
    """(what, seconds, MB, peak server RSS MiB) for the job and each download format."""
    http.put("/v1/projects/bench/analyses/table", json={"source": TABLE}).raise_for_status()
    job = http.post(
        "/v1/projects/bench/jobs", json={"analysis_id": "table", "parameters": {"rows": rows}, "wait": 300}
    ).json()
    ref = job["envelope"]["result_ref"]
    assert ref["rows"] == rows, job["envelope"]
    figures = [
        (
            "job (query + Parquet write)",
            job["run_ms"] / 1000,
            ref["bytes"] / 1e6,
            server.memory_info().rss / 2**20,
        )
    ]
    for fmt in ["parquet", "jsonl", "csv"] * 2:  # the first round loads pyarrow's modules: report the second
        size = 0
        with _PeakRss(server) as rss:
            started = time.perf_counter()
            with http.stream(
                "GET", f"/v1/projects/bench/jobs/{job['id']}/result", params={"format": fmt}
            ) as answer:
                for chunk in answer.iter_raw():
                    size += len(chunk)
            seconds = time.perf_counter() - started
        figures.append((f"download {fmt}", seconds, size / 1e6, rss.peak / 2**20))
    return figures[:1] + figures[4:]


def _kernels(server: psutil.Process) -> int:
    count = 0
    for child in server.children(recursive=True):
        try:
            count += "analysis.kernel_app" in " ".join(child.cmdline())
        except psutil.Error:
            continue
    return count


def overhead(
    http: httpx.Client, server: psutil.Process, repeat: int, warm: int
) -> tuple[list[float], list[float]]:
    """Wall time minus the runner's own duration, and the runner's duration, in ms, per trivial job."""
    http.put("/v1/projects/bench/analyses/trivial", json={"source": TRIVIAL}).raise_for_status()
    extra, run = [], []
    for _ in range(repeat + (1 if warm else 0)):  # with a pool, the first job asks for it (unmeasured)
        give_up = time.monotonic() + 120
        while warm and run and _kernels(server) < warm and time.monotonic() < give_up:
            time.sleep(0.05)
        if warm and run:  # the replacement kernel exists; let it finish warming up (no CPU race)
            time.sleep(1.5)
        started = time.perf_counter()
        job = http.post("/v1/projects/bench/jobs", json={"analysis_id": "trivial", "wait": 120}).json()
        wall_ms = (time.perf_counter() - started) * 1000
        assert job["status"] == "succeeded", job
        extra.append(wall_ms - job["run_ms"])
        run.append(job["run_ms"])
    return (extra[1:], run[1:]) if warm else (extra, run)


def burst(http: httpx.Client, server: psutil.Process, n: int, work: Path) -> dict[str, float]:
    """Submit ``n`` jobs at once and wait for all; figures and checks."""
    http.put("/v1/projects/bench/analyses/append", json={"source": APPEND}).raise_for_status()
    log = work / "ran.txt"
    peak = [server.memory_info().rss]
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            peak[0] = max(peak[0], server.memory_info().rss)
            time.sleep(0.05)

    sampler = threading.Thread(target=sample)
    sampler.start()
    started = time.perf_counter()
    ids = []
    for i in range(n):
        body = {"analysis_id": "append", "parameters": {"i": i, "log": str(log)}}
        answer = http.post("/v1/projects/bench/jobs", json=body)
        assert answer.status_code == 202, answer.text
        ids.append(answer.json()["id"])
    submitted = time.perf_counter() - started
    waits, statuses = [], {}
    for job_id in ids:
        while True:
            job = http.get(f"/v1/projects/bench/jobs/{job_id}").json()
            if job["status"] in ("succeeded", "failed", "cancelled"):
                break
            time.sleep(0.2)
        statuses[job["status"]] = statuses.get(job["status"], 0) + 1
        waits.append(job["queue_wait_ms"] / 1000)
    drained = time.perf_counter() - started
    stop.set()
    sampler.join()
    lines = log.read_text().split()
    assert statuses == {"succeeded": n}, statuses
    assert sorted(map(int, lines)) == list(range(n)), "a job was lost or ran twice"
    return {
        "jobs": n, "submit_per_s": n / submitted, "drain_s": drained,
        "queue_wait_p50_s": _percentile(waits, 0.5), "queue_wait_p99_s": _percentile(waits, 0.99),
        "peak_rss_mib": peak[0] / 2**20,
    }  # fmt: skip


def _postgres() -> tuple[Any, str]:
    """A private PostgreSQL and the URL of its database."""
    import urllib.parse

    import from_tests

    servers = from_tests.load("datasources/servers.py")
    missing = servers.PostgresServer.available()
    if missing:
        sys.exit(f"bench_server: {missing}")
    pg = servers.PostgresServer().start()
    password = urllib.parse.quote(servers.PASSWORD, safe="")
    return pg, f"postgresql://{servers.USER}:{password}@127.0.0.1:{pg.port}/{servers.DATABASE}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeat", type=int, default=20)
    parser.add_argument("--burst", type=int, default=1000, help="0: skip the burst")
    parser.add_argument("--artifact-rows", type=int, default=1_000_000, help="0: skip the artifact figures")
    parser.add_argument("--pool-size", type=int, default=None, help="the server's (default: its own)")
    parser.add_argument("--postgres", action="store_true", help="a private PostgreSQL store, not SQLite")
    args = parser.parse_args()
    warm = min(os.cpu_count() or 1, 4) if args.pool_size is None else args.pool_size
    work = Path(tempfile.mkdtemp(prefix="bench-server-"))
    pool = [] if args.pool_size is None else ["--pool-size", str(args.pool_size)]
    postgres = _postgres() if args.postgres else None
    if postgres is not None:
        pool += ["--db", postgres[1]]
    server, url, headers = _start(work / ".clients", pool)
    try:
        process = psutil.Process(server.pid)
        time.sleep(1)
        idle_rss = process.memory_info().rss / 2**20
        with httpx.Client(base_url=url, headers=headers, timeout=300) as http:
            extra, run = overhead(http, process, args.repeat, warm)
            scrape = []
            for _ in range(50):
                started = time.perf_counter()
                http.get("/metrics").raise_for_status()
                scrape.append((time.perf_counter() - started) * 1000)
            figures = burst(http, process, args.burst, work) if args.burst else {}
            large = artifact(http, process, args.artifact_rows) if args.artifact_rows else []
    finally:
        server.terminate()
        server.wait(120)
        if postgres is not None:
            postgres[0].stop()
    print(f"\nStore: {'PostgreSQL (fair queue, local worker)' if postgres else 'SQLite'}")
    kernels = f"a pool of {warm} warm kernels" if warm else "cold kernels"
    cores = os.cpu_count()
    print(f"\nServer overhead of a trivial job with wait ({args.repeat} jobs, {cores} cores, {kernels})")
    p50_ms, p90_ms = statistics.median(extra), _percentile(extra, 0.9)
    print(f"  p50 {p50_ms:7.1f} ms   p90 {p90_ms:7.1f} ms   (target: p50 <= 10 ms)")
    run_p50, run_p90 = statistics.median(run), _percentile(run, 0.9)
    print(f"  the runner's own time (run_ms): p50 {run_p50:7.1f} ms   p90 {run_p90:7.1f} ms")
    if figures:
        print(f"\nBurst of {figures['jobs']:,} jobs")
        rate, drain = figures["submit_per_s"], figures["drain_s"]
        print(f"  submitted at {rate:,.0f} jobs/s; all final after {drain:.1f} s")
        print("  all succeeded, each ran exactly once (checked)")
        p50, p99 = figures["queue_wait_p50_s"], figures["queue_wait_p99_s"]
        print(f"  queue wait p50 {p50:.1f} s   p99 {p99:.1f} s")
    print("\nServer memory (the server process; kernels excluded)")
    burst_peak = f"   peak under the burst {figures['peak_rss_mib']:6.1f} MiB" if figures else ""
    print(f"  idle {idle_rss:6.1f} MiB{burst_peak}")
    if large:
        print(f"\nA {args.artifact_rows:,}-row table result (3 columns)")
        print(f"  {'step':28} {'seconds':>8} {'MB':>8} {'rows/s':>11} {'server RSS MiB':>15}")
        for what, seconds, mb, rss_mib in large:
            print(
                f"  {what:28} {seconds:8.2f} {mb:8.1f} {args.artifact_rows / seconds:11,.0f} {rss_mib:15.1f}"
            )
    print(f"\n/metrics scrape: median {statistics.median(scrape):.2f} ms")
    print(json.dumps({"overhead_ms_p50": statistics.median(extra), "run_ms_p50": statistics.median(run),
                      "pool_size": warm, "idle_rss_mib": idle_rss,
                      "metrics_ms": statistics.median(scrape), **figures, "artifact": large}))  # fmt: skip


if __name__ == "__main__":
    main()
