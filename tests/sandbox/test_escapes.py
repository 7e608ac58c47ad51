"""Each escape a job could try, tried for real inside the sandbox, and refused (README, Security model)."""

from __future__ import annotations

import json
import os
import socket
import threading
import uuid
from pathlib import Path

import psutil
import pytest

from .conftest import RunSandboxed


def test_the_job_is_an_unprivileged_user_in_its_own_namespaces(run_sandboxed: RunSandboxed) -> None:
    result = run_sandboxed(
        """
        import os, socket
        def run(ctx, parameters):
            return {
                "uid": os.getuid(), "cwd": os.getcwd(), "hostname": socket.gethostname(),
                "pids": sorted(int(p) for p in os.listdir("/proc") if p.isdigit()),
                "top": sorted(os.listdir("/")),
            }
        """
    )
    assert result.success, result.to_dict()
    seen = result.result
    assert seen["uid"] != 0
    assert seen["cwd"] == "/job"
    assert seen["hostname"] == "job"
    assert max(seen["pids"]) < 50  # its own PID namespace: only the job's few processes
    assert "home" not in seen["top"]
    assert not any("unsandboxed" in line for line in result.logs)


def test_host_secrets_and_homes_are_not_there(run_sandboxed: RunSandboxed) -> None:
    probe = Path.home() / f".analysis-sandbox-probe-{uuid.uuid4().hex}"
    probe.write_text("host secret")
    try:
        result = run_sandboxed(
            """
            import os
            def run(ctx, parameters):
                out = {}
                for path in ["/etc/shadow", parameters["probe"], "/etc/passwd"]:
                    try:
                        out[path] = open(path).read()
                    except OSError as exc:
                        out[path] = type(exc).__name__
                out["home"] = os.path.exists("/home")
                return out
            """,
            {"probe": str(probe)},
        )
    finally:
        probe.unlink()
    assert result.success, result.to_dict()
    assert result.result["/etc/shadow"] == "FileNotFoundError"
    assert result.result[str(probe)] in ("FileNotFoundError", "PermissionError")
    assert "root:x:0:0::/:" in result.result["/etc/passwd"]  # the sandbox's own, not the host's
    assert result.result["home"] is False


def test_other_projects_cannot_be_read_or_written(run_sandboxed: RunSandboxed, root: Path) -> None:
    other = root / "other" / "analysis"
    (other / "scripts").mkdir(parents=True)
    saved = other / "scripts" / "report.py"
    saved.write_text("def run(ctx, parameters):\n    return 'genuine'\n")
    (other / "datasources.toml").write_text('[dw]\nkind = "postgres"\npassword = "hunter2"\n')
    result = run_sandboxed(
        """
        def run(ctx, parameters):
            out = {}
            try:
                out["read"] = open(parameters["toml"]).read()
            except OSError as exc:
                out["read"] = type(exc).__name__
            try:
                open(parameters["saved"], "w").write("def run(ctx, parameters):\\n    return 'pwned'\\n")
                out["write"] = "written"
            except OSError as exc:
                out["write"] = type(exc).__name__
            return out
        """,
        {"toml": str(other / "datasources.toml"), "saved": str(saved)},
    )
    assert result.success, result.to_dict()
    assert result.result == {"read": "FileNotFoundError", "write": "FileNotFoundError"}
    assert "genuine" in saved.read_text()


def test_no_network_not_even_the_hosts_loopback(run_sandboxed: RunSandboxed) -> None:
    server = socket.create_server(("127.0.0.1", 0))
    server.settimeout(0.2)
    accepted: list[object] = []
    stop = threading.Event()

    def accept() -> None:
        while not stop.is_set():
            try:
                accepted.append(server.accept())
            except OSError:
                continue

    thread = threading.Thread(target=accept)
    thread.start()
    try:
        result = run_sandboxed(
            """
            import socket
            def run(ctx, parameters):
                out = {}
                for host, port in [("127.0.0.1", parameters["port"]), ("1.1.1.1", 443), ("10.0.0.1", 80)]:
                    try:
                        socket.create_connection((host, port), timeout=3).close()
                        out[host] = "connected"
                    except OSError as exc:
                        out[host] = type(exc).__name__
                return out
            """,
            {"port": server.getsockname()[1]},
        )
    finally:
        stop.set()
        thread.join()
        server.close()
    assert result.success, result.to_dict()
    assert result.result["127.0.0.1"] == "ConnectionRefusedError"
    assert result.result["1.1.1.1"] == "OSError"  # ENETUNREACH: no route out at all
    assert result.result["10.0.0.1"] == "OSError"
    assert accepted == []


def test_duckdb_reaches_only_the_job_directory(run_sandboxed: RunSandboxed, tmp_path: Path) -> None:
    host_csv = tmp_path / "host.csv"
    host_csv.write_text("secret\n42\n")
    result = run_sandboxed(
        """
        def run(ctx, parameters):
            out = {}
            attempts = {
                "read_csv": f"SELECT * FROM read_csv('{parameters['csv']}')",
                "attach": f"ATTACH '{parameters['db']}' AS other",
                "copy_to": f"COPY (SELECT 1) TO '{parameters['out']}'",
                "install": "INSTALL httpfs",
                "unlock": "SET enable_external_access = true",
            }
            for name, sql in attempts.items():
                try:
                    ctx.query(sql)
                    out[name] = "allowed"
                except Exception as exc:
                    out[name] = str(exc).split(":")[0]
            ctx.query("COPY (SELECT 42 AS x) TO 'mine.csv'")
            out["own"] = ctx.query("SELECT x FROM read_csv('mine.csv')").rows
            return out
        """,
        {"csv": str(host_csv), "db": str(tmp_path / "other.duckdb"), "out": str(tmp_path / "out.csv")},
    )
    assert result.success, result.to_dict()
    outcome = result.result
    for name in ("read_csv", "attach", "copy_to", "install"):
        assert outcome[name].startswith("Permission Error"), (name, outcome[name])
    assert outcome["unlock"].startswith("Invalid Input Error")
    assert outcome["own"] == [{"x": 42}]
    assert not (tmp_path / "out.csv").exists() and not (tmp_path / "other.duckdb").exists()


THREADS_PROBE = """
def run(ctx, parameters):
    try:
        ctx.query("SET threads = 64")
        changed = "allowed"
    except Exception as exc:
        changed = str(exc).split(":")[0]
    return {"threads": ctx.query("SELECT current_setting('threads') AS n").rows[0]["n"], "set": changed}
"""


@pytest.mark.parametrize("sandbox", ["on", "off"])
def test_a_jobs_duckdb_leaves_the_runner_a_core(run_sandboxed: RunSandboxed, sandbox: str) -> None:
    # all CPUs but one (at least one): the broker decodes the job's datasource results meanwhile
    result = run_sandboxed(THREADS_PROBE, sandbox=sandbox)
    assert result.success, result.to_dict()
    assert result.result == {
        "threads": max(1, len(os.sched_getaffinity(0)) - 1),
        "set": "Invalid Input Error",  # and the analysis cannot take the core back
    }


def test_duckdb_is_locked_down_in_unsandboxed_jobs_too(run_sandboxed: RunSandboxed, tmp_path: Path) -> None:
    host_csv = tmp_path / "host.csv"
    host_csv.write_text("secret\n42\n")
    result = run_sandboxed(
        "def run(ctx, parameters):\n"
        "    return ctx.query(f\"SELECT * FROM read_csv('{parameters['csv']}')\").rows\n",
        {"csv": str(host_csv)},
        sandbox="off",
    )
    assert result.error_type == "analysis_error"
    assert "Permission Error" in (result.error or "")
    assert any("unsandboxed" in line for line in result.logs)


def test_a_setsid_daemon_does_not_outlive_the_job(run_sandboxed: RunSandboxed) -> None:
    marker = f"{uuid.uuid4().int % 10**6 + 1000}.5"
    result = run_sandboxed(
        """
        import subprocess
        def run(ctx, parameters):
            # double fork + setsid: the classic daemon, reparented to the namespace's init
            subprocess.run(["sh", "-c", f"setsid sleep {parameters['marker']} >/dev/null 2>&1 &"], check=True)
            return "started"
        """,
        {"marker": marker},
    )
    assert result.success, result.to_dict()
    survivors = [p for p in psutil.process_iter(["cmdline"]) if marker in " ".join(p.info["cmdline"] or [])]
    _, alive = psutil.wait_procs(survivors, timeout=5)
    assert not alive


def test_a_fork_loop_stops_at_the_process_limit(run_sandboxed: RunSandboxed) -> None:
    result = run_sandboxed(
        """
        import os, time
        def run(ctx, parameters):
            while True:
                if os.fork() == 0:
                    time.sleep(60)
                    os._exit(0)
        """,
        max_processes=64,
    )
    assert result.error_type == "resource_limit", result.to_dict()
    assert "at most 64 (max_processes)" in (result.error or "")


def test_filling_tmp_stops_at_its_limit(run_sandboxed: RunSandboxed) -> None:
    result = run_sandboxed(
        """
        def run(ctx, parameters):
            with open("/tmp/fill", "wb") as fh:
                while True:
                    fh.write(b"x" * 1024 * 1024)
                    fh.flush()
        """,
        max_tmp_bytes=16 * 1024**2,
    )
    assert result.error_type == "resource_limit", result.to_dict()
    assert "16 MiB" in (result.error or "") and "max_tmp_bytes" in (result.error or "")


def test_one_huge_file_stops_at_the_disk_limit(run_sandboxed: RunSandboxed) -> None:
    result = run_sandboxed(
        """
        def run(ctx, parameters):
            with open("/job/fill", "wb") as fh:
                while True:
                    fh.write(b"x" * 1024 * 1024)
                    fh.flush()
        """,
        max_disk_bytes=32 * 1024**2,
    )
    assert result.error_type == "resource_limit", result.to_dict()
    assert "32 MiB" in (result.error or "") and "max_disk_bytes" in (result.error or "")


def test_many_files_stop_at_the_disk_limit(run_sandboxed: RunSandboxed) -> None:
    result = run_sandboxed(
        """
        import itertools, os, time
        def run(ctx, parameters):
            for i in itertools.count():
                with open(f"/job/part{i}", "wb") as fh:
                    fh.write(os.urandom(1024 * 1024))
                    fh.flush()
                    os.fsync(fh.fileno())
                time.sleep(0.01)
        """,
        max_disk_bytes=24 * 1024**2,
        timeout_s=60,
    )
    assert result.error_type == "resource_limit", result.to_dict()
    assert "over its disk limit of 24 MiB" in (result.error or "")


def test_cpu_limit_in_the_sandbox(run_sandboxed: RunSandboxed) -> None:
    result = run_sandboxed(
        "def run(ctx, parameters):\n    while True:\n        pass\n", max_cpu_s=2, timeout_s=60
    )
    assert result.error_type == "resource_limit", result.to_dict()
    assert "CPU time limit of 2 s (max_cpu_s)" in (result.error or "")


def test_memory_limit_in_the_sandbox(run_sandboxed: RunSandboxed) -> None:
    result = run_sandboxed(
        "def run(ctx, parameters):\n    return len(bytearray(3 * 1024**3))\n", max_memory_bytes=2 * 1024**3
    )
    assert result.error_type == "out_of_memory"
    assert "limit of 2 GiB" in (result.error or "")


def test_a_job_cannot_interrupt_another_jobs_kernel(run_sandboxed: RunSandboxed, root: Path) -> None:
    import asyncio

    from analysis.runner import JobSpec, run_job_async

    victim = root.parent / "victim.py"
    victim.write_text("import time\ndef run(ctx, parameters):\n    time.sleep(8)\n    return 'undisturbed'\n")

    async def both() -> tuple[object, object]:
        task = asyncio.create_task(run_job_async(JobSpec(source_path=victim, root=root, sandbox="on")))
        pids: list[int] = []
        while not pids:  # the victim's kernel, as the host sees it
            await asyncio.sleep(0.2)
            pids = [
                p.pid
                for p in psutil.Process().children(recursive=True)
                if "analysis.kernel_app" in " ".join(p.cmdline())
            ]
        jobs = [str(p) for p in root.glob("*/analysis/temp/*")]
        attack = await asyncio.to_thread(
            run_sandboxed,
            """
            import os, signal
            def run(ctx, parameters):
                out = {}
                for pid in parameters["pids"]:
                    try:
                        os.kill(pid, signal.SIGINT)
                        out[str(pid)] = "signalled"
                    except OSError as exc:
                        out[str(pid)] = type(exc).__name__
                out["job_dirs"] = [os.path.exists(p) for p in parameters["jobs"]]
                return out
            """,
            {"pids": pids, "jobs": jobs},
        )
        return attack, await task

    attack, victim_result = asyncio.run(both())
    assert attack.success, attack.to_dict()  # type: ignore[attr-defined]
    outcome = attack.result  # type: ignore[attr-defined]
    assert "signalled" not in json.dumps(outcome)
    assert outcome["job_dirs"] and not any(outcome["job_dirs"])
    assert victim_result.result == "undisturbed"  # type: ignore[attr-defined]


def test_no_secret_reaches_the_sandbox(run_sandboxed: RunSandboxed, monkeypatch: pytest.MonkeyPatch) -> None:
    secrets = {
        "ANALYSIS_SECRET_KEY": "fernet-key-" + uuid.uuid4().hex,
        "ANALYSIS_BACKEND_TOKEN": "token-" + uuid.uuid4().hex,
        "DW_PASSWORD": "password-" + uuid.uuid4().hex,
    }
    for key, value in secrets.items():
        monkeypatch.setenv(key, value)
    result = run_sandboxed(
        """
        import os
        def run(ctx, parameters):
            seen = [json_text for json_text in [repr(dict(os.environ))]]
            for pid in [p for p in os.listdir("/proc") if p.isdigit()]:
                for name in ("environ", "cmdline"):
                    try:
                        seen.append(open(f"/proc/{pid}/{name}", "rb").read().decode(errors="replace"))
                    except OSError:
                        pass
            for folder, _, files in os.walk("/job"):
                for name in files:
                    try:
                        seen.append(open(os.path.join(folder, name), "rb").read().decode(errors="replace"))
                    except OSError:
                        pass
            return "\\n".join(seen)
        """
    )
    assert result.success, result.to_dict()
    everything = result.to_json()
    for value in secrets.values():
        assert value not in everything
    assert "ANALYSIS_SECRET_KEY" not in everything


def _not_dead(proc: psutil.Process) -> bool:
    """Running, and not a zombie (dead, waiting for PID 1 to reap it)."""
    try:
        return proc.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def test_the_sandbox_dies_with_its_runner(tmp_path: Path, root: Path, sandbox_ready: None) -> None:
    import signal
    import subprocess
    import sys
    import time

    marker = f"{uuid.uuid4().int % 10**6 + 1000}.25"
    script = tmp_path / "daemon.py"
    script.write_text(
        "import subprocess, time\n"
        "def run(ctx, parameters):\n"
        f"    subprocess.run(['sh', '-c', 'setsid sleep {marker} >/dev/null 2>&1 &'])\n"
        "    print('started', flush=True)\n"
        "    time.sleep(120)\n"
    )
    command = ["run", str(script), "--root", str(root), "--sandbox", "on", "--log-output"]
    runner = subprocess.Popen(
        [sys.executable, "-m", "analysis.runner.cli", *command],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert runner.stderr is not None
    while "started" not in (runner.stderr.readline() or "started"):
        pass
    sandbox = psutil.Process(runner.pid).children(recursive=True)
    daemons = [p for p in psutil.process_iter(["cmdline"]) if marker in " ".join(p.info["cmdline"] or [])]
    assert sandbox and daemons
    runner.send_signal(signal.SIGKILL)
    runner.wait()
    killed_at = time.monotonic()
    _, alive = psutil.wait_procs(sandbox + daemons, timeout=1)
    alive = [p for p in alive if _not_dead(p)]
    assert not alive, f"still running {time.monotonic() - killed_at:.2f} s after the runner died"
    runner.stderr.close()


def test_sandbox_on_without_bubblewrap_refuses_and_auto_says_unsandboxed(
    run_sandboxed: RunSandboxed, monkeypatch: pytest.MonkeyPatch
) -> None:
    from analysis.runner import sandbox

    monkeypatch.setattr(sandbox, "sandbox_available", lambda: "bubblewrap (bwrap) is not installed")
    refused = run_sandboxed("def run(ctx, parameters):\n    return 1\n", sandbox="on")
    assert refused.error_type == "kernel_start_failed"
    assert 'sandbox = "on"' in (refused.error or "") and "not installed" in (refused.error or "")
    fallback = run_sandboxed("def run(ctx, parameters):\n    return 1\n", sandbox="auto")
    assert fallback.success
    assert any("unsandboxed" in line and "not installed" in line for line in fallback.logs)


def test_sandbox_from_the_environment(run_sandboxed: RunSandboxed, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ANALYSIS_SANDBOX", "on")
    result = run_sandboxed("import os\ndef run(ctx, parameters):\n    return os.getcwd()\n", sandbox=None)
    assert result.result == "/job"


def test_the_deadline_interrupts_a_sandboxed_kernel(run_sandboxed: RunSandboxed) -> None:
    result = run_sandboxed(
        "import time\ndef run(ctx, parameters):\n    while True:\n        time.sleep(0.01)\n",
        timeout_s=3,
        interrupt_grace_s=20,
    )
    assert result.error_type == "timeout"
    assert "was stopped" in (result.error or "")  # the interrupt reached the kernel in the sandbox


def test_a_notebook_runs_sandboxed(
    tmp_path: Path, root: Path, no_leftovers: None, sandbox_ready: None
) -> None:
    import nbformat

    from analysis.runner import JobSpec, run_job

    params = nbformat.v4.new_code_cell("n = 1")
    params.metadata["tags"] = ["parameters"]
    cells = [params, nbformat.v4.new_code_cell("import os\nctx.set_result({'n': n, 'cwd': os.getcwd()})")]
    path = tmp_path / "nb.ipynb"
    nbformat.write(nbformat.v4.new_notebook(cells=cells), path)
    result = run_job(JobSpec(source_path=path, parameters={"n": 5}, root=root, sandbox="on"))
    assert result.success, result.to_dict()
    assert result.result == {"n": 5, "cwd": "/job"}
