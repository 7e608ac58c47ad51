"""Several machines on one: PostgreSQL, ``analysis serve --workers`` and workers in network namespaces.

A bridge ``anb<N>`` holds ``10.213.<N>.1/24`` in the root namespace; PostgreSQL listens there.
Each process (the server, every worker) gets a namespace ``an<N>-<name>`` joined to the bridge by a
veth pair, an address ``10.213.<N>.<10+i>`` and its own working directory, so the processes share
nothing but the database. Addresses stay on this machine: no route leaves the bridge.
:meth:`Cluster.close` kills every process, deletes the namespaces and the bridge, stops PostgreSQL.
Imported by path from ``tests/`` and ``bench/`` (stdlib, httpx, and the ``analysis`` package).
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

_SERVERS = Path(__file__).parents[1] / "datasources" / "servers.py"
if "analysis_test_servers" not in sys.modules:
    _spec = importlib.util.spec_from_file_location("analysis_test_servers", _SERVERS)
    assert _spec is not None and _spec.loader is not None
    _module = importlib.util.module_from_spec(_spec)
    sys.modules["analysis_test_servers"] = _module
    _spec.loader.exec_module(_module)
servers: Any = sys.modules["analysis_test_servers"]

SERVER_PORT = 8000
METRICS_PORT = 9100


def netns_missing() -> str | None:
    """``None`` when network namespaces can be made here, else why not."""
    if shutil.which("ip") is None:
        return "the ip command is missing (install iproute2)"
    if os.geteuid() != 0:
        return "network namespaces need root"
    name = f"anprobe{os.getpid()}"
    probe = subprocess.run(["ip", "netns", "add", name], capture_output=True, text=True, check=False)
    if probe.returncode != 0:
        return f"ip netns add failed: {probe.stderr.strip()}"
    subprocess.run(["ip", "netns", "del", name], capture_output=True, check=False)
    return None


def _ip(*args: str) -> None:
    proc = subprocess.run(["ip", *args], capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)}: {proc.stderr.strip()}")


@dataclass
class Node:
    """One process in its namespace."""

    name: str
    netns: str
    address: str
    workdir: Path
    popen: subprocess.Popen[bytes]
    log: Path

    def output(self) -> str:
        """What the process printed."""
        return self.log.read_text(errors="replace")


@dataclass
class Cluster:
    """The bridge, PostgreSQL, and the nodes started so far."""

    net: int = field(default_factory=lambda: 100 + os.getpid() % 150)
    base: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="analysis-cluster-")))
    pg: Any = None
    nodes: dict[str, Node] = field(default_factory=dict)
    _netns: list[str] = field(default_factory=list)
    _links: list[str] = field(default_factory=list)

    @property
    def bridge(self) -> str:
        return f"anb{self.net}"

    @property
    def gateway(self) -> str:
        return f"10.213.{self.net}.1"

    @property
    def db_url(self) -> str:
        password = urllib.parse.quote(servers.PASSWORD, safe="")
        return f"postgresql://{servers.USER}:{password}@{self.gateway}:{self.pg.port}/{servers.DATABASE}"

    def start(self) -> Cluster:
        """Make the bridge and start PostgreSQL on it (``close()`` undoes a partial start too)."""
        _ip("link", "add", self.bridge, "type", "bridge")
        self._links.append(self.bridge)
        _ip("addr", "add", f"{self.gateway}/24", "dev", self.bridge)
        _ip("link", "set", self.bridge, "up")
        self.pg = servers.PostgresServer(listen_also=self.gateway).start()
        return self

    def _namespace(self, name: str) -> tuple[str, str]:
        index = len(self._netns) + 10
        netns = f"an{self.net}-{name}"
        outside, inside = f"vo{self.net}x{index}", f"vi{self.net}x{index}"
        _ip("netns", "add", netns)
        self._netns.append(netns)
        _ip("link", "add", outside, "type", "veth", "peer", "name", inside)
        self._links.append(outside)
        _ip("link", "set", inside, "netns", netns)
        _ip("link", "set", outside, "master", self.bridge)
        _ip("link", "set", outside, "up")
        address = f"10.213.{self.net}.{index}"
        _ip("-n", netns, "addr", "add", f"{address}/24", "dev", inside)
        _ip("-n", netns, "link", "set", inside, "up")
        _ip("-n", netns, "link", "set", "lo", "up")
        return netns, address

    def _launch(self, name: str, args: list[str], env: dict[str, str] | None = None) -> Node:
        netns, address = self._namespace(name)
        workdir = self.base / name
        workdir.mkdir(parents=True)
        log = workdir / "output.log"
        command = [sys.executable, "-m", "analysis.runner.cli", *args]
        with log.open("wb") as out:
            popen = subprocess.Popen(
                ["ip", "netns", "exec", netns, *command], cwd=workdir, stdout=out,
                stderr=subprocess.STDOUT, start_new_session=True,
                # unsandboxed: the tests' analyses report their host working directory and
                # coordinate through host files, which a sandboxed job cannot see
                env={**os.environ, "ANALYSIS_SANDBOX": "off", **(env or {})},
            )  # fmt: skip
        node = Node(name, netns, address, workdir, popen, log)
        self.nodes[name] = node
        return node

    def serve(self, *args: str, name: str = "server") -> Node:
        """Start ``analysis serve --workers`` in its namespace; wait until it is ready."""
        node = self._launch(name, [
            "serve", "--workers", "--db", self.db_url, "--root", "root", "--host", "0.0.0.0",
            "--port", str(SERVER_PORT), *args,
        ])  # fmt: skip
        _wait_http(f"http://{node.address}:{SERVER_PORT}/readyz", node)
        return node

    def worker(self, name: str, *args: str, env: dict[str, str] | None = None) -> Node:
        """Start ``analysis worker`` in its namespace; wait until ``/metrics`` answers."""
        node = self._launch(name, [
            "worker", "--db", self.db_url, "--root", "root", "--name", name, "--metrics-host", "0.0.0.0",
            "--metrics-port", str(METRICS_PORT), *args,
        ], env)  # fmt: skip
        _wait_http(f"http://{node.address}:{METRICS_PORT}/metrics", node)
        return node

    def server_url(self, name: str = "server") -> str:
        return f"http://{self.nodes[name].address}:{SERVER_PORT}"

    def metrics(self, name: str) -> str:
        """The ``/metrics`` text of a worker."""
        return httpx.get(f"http://{self.nodes[name].address}:{METRICS_PORT}/metrics", timeout=10).text

    def power_off(self, name: str) -> None:
        """Power loss: kill -9 every process of the node's namespace and cut its cable."""
        node = self.nodes[name]
        self._kill_namespace(node.netns)
        with contextlib.suppress(subprocess.TimeoutExpired):
            node.popen.wait(10)
        outside = f"vo{self.net}x{self._netns.index(node.netns) + 10}"
        with contextlib.suppress(RuntimeError):
            _ip("link", "del", outside)

    @staticmethod
    def _kill_namespace(netns: str) -> None:
        pids = subprocess.run(["ip", "netns", "pids", netns], capture_output=True, text=True, check=False)
        for pid in pids.stdout.split():
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(pid), signal.SIGKILL)

    def close(self) -> None:
        """Kill every process, delete namespaces and links, stop PostgreSQL, remove the folder."""
        for node in self.nodes.values():
            with contextlib.suppress(ProcessLookupError):
                os.killpg(node.popen.pid, signal.SIGKILL)
        for netns in self._netns:
            self._kill_namespace(netns)
        for node in self.nodes.values():
            with contextlib.suppress(subprocess.TimeoutExpired):
                node.popen.wait(10)
        for netns in self._netns:
            subprocess.run(["ip", "netns", "del", netns], capture_output=True, check=False)
        for link in reversed(self._links):
            subprocess.run(["ip", "link", "del", link], capture_output=True, check=False)
        if self.pg is not None:
            self.pg.stop()
        shutil.rmtree(self.base, ignore_errors=True)


def _wait_http(url: str, node: Node, timeout: float = 90) -> None:
    give_up = time.monotonic() + timeout
    while True:
        if node.popen.poll() is not None:
            raise RuntimeError(f"{node.name} exited ({node.popen.returncode}): {node.output()}")
        try:
            if httpx.get(url, timeout=5).status_code == 200:
                return
        except httpx.TransportError:
            pass
        if time.monotonic() > give_up:
            raise RuntimeError(f"{node.name} did not start: {node.output()}")
        time.sleep(0.1)
