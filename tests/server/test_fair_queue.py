"""Claims of queued jobs with a PostgreSQL store: fair, capped across claimers, never twice.

Every worker slot claims the job it runs through ``FairQueue.claim`` (README, "How jobs are
dispatched"); here many threads stand for many workers on one store.
"""

from __future__ import annotations

import signal
import threading
import time
import uuid
from collections import Counter
from typing import Any

import pytest

from analysis.runner.server.fairqueue import FairQueue
from analysis.runner.server.store import Store

pytestmark = pytest.mark.slow


@pytest.fixture
def pg_store(store_url: str, store: Store) -> Store:
    if not store_url.startswith("postgresql"):
        pytest.skip("workers claim jobs from a PostgreSQL store")
    return store


def _queue(store: Store, project: str) -> str:
    job_id = uuid.uuid4().hex
    row = {
        "id": job_id, "project_id": project, "analysis_id": "a", "analysis_version": "v",
        "parameters": "{}", "trigger": "api", "status": "queued", "attempt": 0, "created_at": time.time(),
    }  # fmt: skip
    assert store.insert_job(row) is not None
    return job_id


def test_a_claim_takes_the_project_with_fewest_running_then_served_least(pg_store: Store) -> None:
    alpha = [_queue(pg_store, "alpha") for _ in range(3)]
    beta = [_queue(pg_store, "beta") for _ in range(2)]
    queue = FairQueue(pg_store)
    order = []
    while (job := queue.claim(0, "w", None)) is not None:
        order.append(job["id"])
    # alpha's burst came first, yet beta's jobs do not wait for all of alpha's
    assert order == [alpha[0], beta[0], alpha[1], beta[1], alpha[2]]
    claimed = pg_store.job_by_id(alpha[0])
    assert claimed is not None and claimed["status"] == "running" and claimed["attempt"] == 1
    assert claimed["worker"] == "w"


def test_concurrent_claims_hold_the_cap_and_never_claim_a_job_twice(pg_store: Store) -> None:
    for n in range(30):
        _queue(pg_store, f"p{n % 3}")
    queue = FairQueue(pg_store)
    claimed: list[dict[str, Any]] = []
    start = threading.Barrier(8)

    def claimer() -> None:
        start.wait()
        while (job := queue.claim(2, threading.current_thread().name, None)) is not None:
            claimed.append(job)

    threads = [threading.Thread(target=claimer, name=f"w{n}") for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert len({job["id"] for job in claimed}) == len(claimed) == 6
    assert Counter(job["project_id"] for job in claimed) == {"p0": 2, "p1": 2, "p2": 2}
    assert pg_store.count_jobs(("running",)) == 6 and pg_store.count_jobs(("queued",)) == 24


def test_a_job_left_queued_in_the_store_runs_when_a_server_starts(
    serve: Any, store: Store, final: Any
) -> None:
    server = serve()
    with server.client("alpha") as http:
        hello = {"source": "def run(ctx, parameters):\n    return 7\n"}
        version = http.put("/v1/projects/alpha/analyses/hello", json=hello).json()["version"]
    server.stop(signal.SIGTERM, timeout=120)
    # as a server killed between storing a job and queueing it would leave it
    job_id = uuid.uuid4().hex
    row = {
        "id": job_id, "project_id": "alpha", "analysis_id": "hello", "analysis_version": version,
        "parameters": "{}", "trigger": "api", "status": "queued", "attempt": 0, "created_at": time.time(),
    }  # fmt: skip
    assert store.insert_job(row) is not None
    restarted = serve()
    with restarted.client("alpha") as http:
        done = final(http, "alpha", job_id, timeout=90)
    assert done["status"] == "succeeded" and done["envelope"]["result"] == 7
