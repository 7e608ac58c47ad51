"""Figures of ``analysis worker``: jobs on 1, 2 and 4 machines, measured in one run (issue 12).

    .venv/bin/python bench/bench_workers.py [--per-slot N] [--trivial N] [--pool-size N] [--claims N]
        [--sandbox on|off] [--bursts N] [--claims-only | --bursts-only]

Needs root (network namespaces) and PostgreSQL 15. PostgreSQL listens on a bridge; the server and
each worker run in their own network namespace and working directory (tests/workers/cluster.py),
each worker with 2 slots.

1. Sleep-bound jobs (each sleeps 1 s): ``--per-slot`` (6) jobs per slot submitted at once to 1, 2
   and 4 workers; throughput in jobs/s from the first submit to the last final state, and the
   ratio to one worker. Workers keep warm kernels (``--pool-size``, default 2 per worker; ``0``:
   cold): before each burst, one trivial job per slot asks every worker's pool for the project
   and the bench waits until the pools are full. A warm kernel hides a kernel's start from its
   job, but each job still costs a kernel start (~0.4 s CPU) in the background: on a 2-core
   machine eight kernels starting at once are CPU-bound, so the job counts stay small.
2. Trivial jobs: ``--trivial`` (40) jobs submitted at once to 4 workers; throughput. Kernel
   starts are CPU work, so this is the machine's ceiling for any job; the sleep-bound rate of
   4 workers is also shown as a share of it.
3. Queue latency, submit to start (the job's ``queue_wait_ms``): 30 jobs submitted one at a time
   to idle workers; p50 and p99. Then ``--bursts`` (30) bursts of 4 jobs submitted at once from
   4 threads, each job held (it waits for a file) until all four run, so every job has a free
   slot when submitted: p50, p99, max and how many waited over 1 s (a turn a free worker
   slept through waits for the worker's 5 s poll). ``--bursts-only`` measures only this, on 2
   workers (4 slots); it needs ``--sandbox off`` (the held job reads a host file).
4. Cancel: wall time of the cancel request for a job running on a worker, until it is final.
5. A worker powered off (every process of its namespace killed, its link deleted) while running a
   job of an analysis with ``retries: 1``: time until the job succeeded on the other worker, with
   the server's ``--heartbeat-timeout`` of 6 s.
6. Claims (README, "How jobs are dispatched"): ``--claims`` (1,000) queued jobs in 10 projects
   of a fresh store, claimed one after another as worker slots claim them (one transaction
   under the advisory lock each, picking the fairest job; each claimed job then ended at once,
   as a worker would end it), then the same with 4 threads claiming at once: claims/s (claim
   and end) and the time of one claim, p50/p99. This bounds the rate at which the whole cluster
   can start jobs. ``--claims-only`` measures only this.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import from_tests
import httpx
import psutil

cluster_module = from_tests.load("workers/cluster.py")

HOLD = (
    "import time\nfrom pathlib import Path\n\ndef run(ctx, parameters):\n"
    "    while not Path(parameters['release']).exists():\n        time.sleep(0.05)\n    return 1\n"
)
SLEEP = "import time\n\ndef run(ctx, parameters):\n    time.sleep(parameters['sleep'])\n    return 1\n"
TRIVIAL = "def run(ctx, parameters):\n    return 1 + 1\n"
BLOCK = (
    "import time\nfrom pathlib import Path\n\n"
    "def run(ctx, parameters):\n"
    "    started = Path(parameters['started'])\n"
    "    if started.exists():\n        return 'second'\n"
    "    started.write_text('x')\n"
    "    while True:\n        time.sleep(0.05)\n"
)
FINAL = ("succeeded", "failed", "cancelled")


def _client(cluster: Any) -> httpx.Client:
    from analysis.runner.server.auth import create_token
    from analysis.runner.server.store import open_store

    store = open_store(cluster.db_url)
    try:
        token = create_token(store, project_id="alpha")
    finally:
        store.close()
    return httpx.Client(
        base_url=cluster.server_url(), headers={"Authorization": f"Bearer {token}"}, timeout=120
    )


def _submit(http: httpx.Client, analysis: str, parameters: dict[str, Any], wait: float = 0) -> Any:
    answer = http.post(
        "/v1/projects/alpha/jobs", json={"analysis_id": analysis, "parameters": parameters, "wait": wait}
    )
    answer.raise_for_status()
    return answer.json()


def _drain(http: httpx.Client, ids: list[str]) -> list[Any]:
    pending, done = set(ids), {}
    while pending:
        for job_id in list(pending):
            job = http.get(f"/v1/projects/alpha/jobs/{job_id}").json()
            if job["status"] in FINAL:
                done[job_id] = job
                pending.discard(job_id)
        time.sleep(0.1)
    failed = [job for job in done.values() if job["status"] != "succeeded"]
    assert not failed, failed[:1]
    return list(done.values())


def _burst(http: httpx.Client, analysis: str, count: int, parameters: dict[str, Any]) -> float:
    began = time.monotonic()
    ids = [_submit(http, analysis, parameters)["id"] for _ in range(count)]
    _drain(http, ids)
    return count / (time.monotonic() - began)


def _kernels(node: Any) -> int:
    count = 0
    try:
        children = psutil.Process(node.popen.pid).children(recursive=True)
    except psutil.Error:
        return 0
    for child in children:
        try:
            count += "analysis.kernel_app" in " ".join(child.cmdline())
        except psutil.Error:
            continue
    return count


def _warm(http: httpx.Client, workers: list[Any], pool: int) -> None:
    """One trivial job per slot, then wait (up to 120 s) until every worker's pool is full."""
    if not pool:
        return
    _drain(http, [_submit(http, "trivial", {})["id"] for _ in range(2 * len(workers))])
    give_up = time.monotonic() + 120
    while any(_kernels(node) < pool for node in workers) and time.monotonic() < give_up:
        time.sleep(0.1)


def _bursts(http: httpx.Client, count: int, size: int = 4) -> tuple[str, str]:
    """``count`` bursts of ``size`` held jobs submitted at once: their submit-to-start times."""
    folder = Path(tempfile.mkdtemp())
    waits: list[float] = []
    with ThreadPoolExecutor(size) as threads:
        for burst in range(count):
            release = folder / f"release-{burst}"

            def submit(_: int, release: Path = release) -> str:
                return str(_submit(http, "hold", {"release": str(release)})["id"])

            ids = list(threads.map(submit, range(size)))
            give_up = time.monotonic() + 60
            while True:
                jobs = [http.get(f"/v1/projects/alpha/jobs/{job_id}").json() for job_id in ids]
                if all(job["status"] != "queued" for job in jobs) or time.monotonic() > give_up:
                    break
                time.sleep(0.05)
            waits += [
                60_000.0 if job["queue_wait_ms"] is None else float(job["queue_wait_ms"]) for job in jobs
            ]
            release.write_text("go")
            _drain(http, ids)
    late = sum(wait > 1000 for wait in waits)
    return (f"queue latency submit->start ({count} bursts of {size} jobs, each with a free slot)",
            f"p50 {_pct(waits, 0.5):.0f} ms, p99 {_pct(waits, 0.99):.0f} ms, max {max(waits):.0f} ms, "
            f"{late} of {len(waits)} over 1 s")  # fmt: skip


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def _claims(cluster: Any, count: int) -> list[tuple[str, str]]:
    """Claim ``count`` queued jobs of 10 projects, one at a time, then from 4 threads at once."""
    import uuid
    from concurrent.futures import ThreadPoolExecutor

    from analysis.runner.server.fairqueue import FairQueue
    from analysis.runner.server.store import open_store

    rows = []
    for threads in (1, 4):
        database = f"claims_{uuid.uuid4().hex[:8]}"
        cluster.pg.psql(f"CREATE DATABASE {database} OWNER {cluster_module.servers.USER}")
        store = open_store(cluster.db_url.rsplit("/", 1)[0] + f"/{database}")
        try:
            with store.engine.begin() as db:
                db.execute(store.jobs.insert(), [{
                    "id": uuid.uuid4().hex, "project_id": f"p{n % 10}", "analysis_id": "a",
                    "analysis_version": "v", "parameters": "{}", "trigger": "api", "status": "queued",
                    "attempt": 0, "created_at": time.time(),
                } for n in range(count)])  # fmt: skip
            # the statistics autovacuum keeps on a live store (the claim's plan relies on them)
            cluster.pg.psql("ANALYZE jobs", database=database)
            queue = FairQueue(store)
            times: list[float] = []

            def claim_all(queue: FairQueue = queue, times: list[float] = times) -> None:
                while True:
                    began = time.perf_counter()
                    claimed = queue.claim(0, "bench", None)
                    times.append(time.perf_counter() - began)
                    if claimed is None:
                        return
                    # ended at once, as a worker would end it: running jobs stay as few as slots
                    queue.store.update_job(claimed["id"], status="succeeded", finished_at=time.time())

            began = time.monotonic()
            with ThreadPoolExecutor(threads) as pool:
                for future in [pool.submit(claim_all) for _ in range(threads)]:
                    future.result()
            took = time.monotonic() - began
            assert store.count_jobs(("succeeded",)) == count and store.count_jobs(("queued",)) == 0
        finally:
            store.close()
        ms = [t * 1000 for t in times]
        rows.append((f"claims of {count} queued jobs in 10 projects, {threads} claimer(s)",
                     f"{count / took:.0f} claims/s; one claim p50 {_pct(ms, 0.5):.1f} ms, "
                     f"p99 {_pct(ms, 0.99):.1f} ms"))  # fmt: skip
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--per-slot", type=int, default=6)
    parser.add_argument("--trivial", type=int, default=40)
    parser.add_argument("--pool-size", type=int, default=2, help="warm kernels per worker (0: cold)")
    parser.add_argument("--claims", type=int, default=1000, help="queued jobs to claim (0: skip)")
    parser.add_argument("--claims-only", action="store_true", help="measure only the claims")
    parser.add_argument("--bursts", type=int, default=30, help="bursts of 4 held jobs (0: skip)")
    parser.add_argument(
        "--bursts-only", action="store_true", help="measure only the bursts' latency, on 2 workers"
    )  # fmt: skip
    parser.add_argument(
        "--sandbox", choices=("on", "off"), default="off",
        help="workers' jobs sandboxed (kernels forked from a zygote); 'on' skips the cancel and "
        "power-off rows, whose analysis waits for a host file a sandboxed job cannot see",
    )  # fmt: skip
    args = parser.parse_args()
    missing = cluster_module.netns_missing() or cluster_module.servers.PostgresServer.available()
    if missing:
        sys.exit(f"bench_workers: {missing}")
    rows: list[tuple[str, str]] = []
    cluster = cluster_module.Cluster().start()
    try:
        if args.claims and not args.bursts_only:
            rows += _claims(cluster, args.claims)
        if args.claims_only:
            _print(rows)
            return
        cluster.serve("--heartbeat-timeout", "6")
        with _client(cluster) as http:
            analyses = (("sleep", SLEEP, 0), ("trivial", TRIVIAL, 0), ("block", BLOCK, 1), ("hold", HOLD, 0))
            for name, source, retries in analyses:
                http.put(f"/v1/projects/alpha/analyses/{name}", json={"source": source, "retries": retries})
            if args.bursts_only:
                for name in ("w1", "w2"):
                    cluster.worker(name, "--pool-size", str(args.pool_size), env={"ANALYSIS_SANDBOX": "off"})
                _warm(http, [cluster.nodes["w1"], cluster.nodes["w2"]], args.pool_size)
                rows.append(_bursts(http, args.bursts))
                _print(rows)
                return
            rates: dict[int, float] = {}
            for count in (1, 2, 4):
                while len([n for n in cluster.nodes if n.startswith("w")]) < count:
                    cluster.worker(
                        f"w{len(cluster.nodes)}", "--pool-size", str(args.pool_size),
                        env={"ANALYSIS_SANDBOX": args.sandbox},
                    )  # fmt: skip
                _warm(http, [node for n, node in cluster.nodes.items() if n.startswith("w")], args.pool_size)
                jobs = args.per_slot * 2 * count
                rates[count] = _burst(http, "sleep", jobs, {"sleep": 1})
                ratio = rates[count] / rates[1]
                rows.append((f"sleep-1s jobs, {count} worker(s) x 2 slots, {jobs} jobs",
                             f"{rates[count]:.2f} jobs/s ({ratio:.2f}x one worker)"))  # fmt: skip
            _warm(http, [node for n, node in cluster.nodes.items() if n.startswith("w")], args.pool_size)
            trivial = _burst(http, "trivial", args.trivial, {})
            rows.append((f"trivial jobs, 4 workers, {args.trivial} jobs", f"{trivial:.2f} jobs/s"))
            # every job costs a kernel start (warm or not): the trivial-job rate is what the CPUs
            # allow, whatever the slots; the best sleep-bound ratio is min(8 slots' worth, that
            # ceiling) / one worker
            best = min(trivial, rates[1] * 4) / rates[1]
            share = f"{rates[4] / trivial:.0%}; best ratio this machine allows ~{best:.2f}x"
            rows.append(("sleep-1s, 4 workers, as a share of the CPU ceiling (trivial-job rate)", share))
            waits = [float(_submit(http, "trivial", {}, wait=60)["queue_wait_ms"]) for _ in range(30)]
            rows.append(("queue latency submit->start (30 jobs, idle workers)",
                         f"p50 {_pct(waits, 0.5):.0f} ms, p99 {_pct(waits, 0.99):.0f} ms"))  # fmt: skip
            if args.sandbox == "on":
                _print(rows)
                return
            if args.bursts:
                rows.append(_bursts(http, args.bursts))
            marker = Path(tempfile.mkdtemp()) / "started"
            job = _submit(http, "block", {"started": str(marker)})
            while not marker.exists():
                time.sleep(0.02)
            began = time.monotonic()
            http.post(f"/v1/projects/alpha/jobs/{job['id']}/cancel").raise_for_status()
            rows.append(
                ("cancel a running job (request until final)", f"{(time.monotonic() - began) * 1000:.0f} ms")
            )
            marker.unlink()
            job = _submit(http, "block", {"started": str(marker)})
            while not marker.exists():
                time.sleep(0.02)
            victim = http.get(f"/v1/projects/alpha/jobs/{job['id']}").json()["worker"]
            began = time.monotonic()
            cluster.power_off(victim)
            (final,) = _drain(http, [job["id"]])
            rows.append((f"worker powered off mid-job (heartbeat timeout 6 s; attempt {final['attempt']})",
                         f"re-run and succeeded after {time.monotonic() - began:.1f} s"))  # fmt: skip
    finally:
        cluster.close()
    _print(rows)


def _print(rows: list[tuple[str, str]]) -> None:
    width = max(len(name) for name, _ in rows)
    for name, value in rows:
        print(f"{name.ljust(width)}  {value}")


if __name__ == "__main__":
    main()
