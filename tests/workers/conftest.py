"""Fixtures: a cluster of network namespaces (server, workers) around a private PostgreSQL.

Namespaces need root and iproute2: with ``CI=true`` their absence is a failure, elsewhere a skip.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

_spec = importlib.util.spec_from_file_location(
    "analysis_test_cluster", Path(__file__).with_name("cluster.py")
)
assert _spec is not None and _spec.loader is not None
cluster_module: Any = sys.modules.get("analysis_test_cluster") or importlib.util.module_from_spec(_spec)
if "analysis_test_cluster" not in sys.modules:
    sys.modules["analysis_test_cluster"] = cluster_module
    _spec.loader.exec_module(cluster_module)


_FAILED = pytest.StashKey[bool]()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    report = yield
    if report.when == "call":
        item.stash[_FAILED] = report.failed
    return report


@pytest.fixture
def cluster(request: pytest.FixtureRequest) -> Iterator[Any]:
    """A bridge with PostgreSQL on it; start the server and workers with ``serve()``/``worker()``.

    When the test fails, the end of each node's output is printed (pytest shows it with the
    failure): the nodes' folders are removed with the cluster.
    """
    reason = cluster_module.netns_missing() or cluster_module.servers.PostgresServer.available()
    if reason:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"{reason} (CI=true: a missing capability is a failure)")
        pytest.skip(reason)
    started = cluster_module.Cluster()
    try:
        started.start()
        yield started
    finally:
        if request.node.stash.get(_FAILED, False):
            for node in started.nodes.values():
                tail = node.output().splitlines()[-80:]
                print(f"--- {node.name} ({node.log}), last {len(tail)} lines ---", *tail, sep="\n")
        started.close()
