"""The headless runner end to end, in real kernels: results, every failure class, and cleanup."""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import psutil
import pytest

from analysis.runner import AnalysisService, JobSpec, run_job

from .conftest import RunScript


def test_result_logs_and_parameters_arrive_as_data(run_script: RunScript) -> None:
    code_like = "__import__('os').system('touch pwned')"
    result = run_script(
        """
        def run(ctx, parameters):
            print("hello from", ctx.job_id)
            ctx.log("rows:", 2)
            ctx.load_data("t", [{"a": 1}, {"a": 2, "b": "x"}])
            return {"sum": ctx.query("SELECT sum(a) AS s FROM t").rows[0]["s"], "p": parameters}
        """,
        {"start": "2024-03-01", "evil": code_like},
    )
    assert result.success, result.to_dict()
    assert result.result == {"sum": 2 + 1, "p": {"start": "2024-03-01", "evil": code_like}}
    assert f"hello from {result.job_id}" in result.logs
    assert "[log] rows: 2" in result.logs
    assert "[load_data] Loaded 2 rows into t" in result.logs
    assert "[query:duckdb] SELECT sum(a) AS s FROM t" in result.logs
    assert not Path("pwned").exists()
    envelope = json.loads(result.to_json())
    assert set(envelope) == {"success", "job_id", "result", "logs", "duration_ms"}
    assert envelope["duration_ms"] > 0


def test_async_run(run_script: RunScript) -> None:
    result = run_script(
        """
        import asyncio
        async def run(ctx, parameters):
            await asyncio.sleep(0.01)
            return "async ok"
        """
    )
    assert result.success and result.result == "async ok"


def test_envelope_keeps_exact_decimals_and_big_integers(run_script: RunScript) -> None:
    result = run_script(
        """
        from decimal import Decimal
        def run(ctx, parameters):
            return {"price": Decimal("12.50"), "big": 2**70, "nan": float("nan")}
        """
    )
    assert '"price":12.50' in result.to_json()
    assert '"big":1180591620717411303424' in result.to_json()
    assert result.result["nan"] is None


@pytest.mark.parametrize(
    ("source", "fragment"),
    [
        ("def run(ctx, parameters)\n    return 1\n", "syntax error at line 1"),
        ("def main(ctx, parameters):\n    return 1\n", "defines no top-level function run"),
        ("def run(ctx):\n    return 1\n", "two positional arguments"),
    ],
)
def test_invalid_analysis(run_script: RunScript, source: str, fragment: str) -> None:
    result = run_script(source)
    assert result.error_type == "invalid_analysis"
    assert fragment in (result.error or "")


def test_analysis_error_carries_the_users_traceback(run_script: RunScript) -> None:
    result = run_script(
        """
        def helper(x):
            return 1 / x

        def run(ctx, parameters):
            return helper(0)
        """
    )
    assert result.error_type == "analysis_error"
    assert result.error == "The analysis raised ZeroDivisionError: division by zero"
    assert result.stack is not None
    assert "in helper" in result.stack and "return 1 / x" in result.stack
    assert "execute.py" not in result.stack  # our frames are not the user's business


def test_sys_exit_is_a_failure_not_an_empty_success(run_script: RunScript) -> None:
    result = run_script("import sys\ndef run(ctx, parameters):\n    sys.exit(0)\n")
    assert result.error_type == "analysis_error"
    assert "sys.exit(0)" in (result.error or "")


def test_input_fails_at_once(run_script: RunScript) -> None:
    started = time.monotonic()
    result = run_script("def run(ctx, parameters):\n    return input('name? ')\n", timeout_s=30)
    assert result.error_type == "analysis_error"
    assert "StdinNotImplementedError" in (result.error or "")
    assert time.monotonic() - started < 25  # a blocked input() would wait out the 30 s deadline


def test_timeout_of_python_code(run_script: RunScript) -> None:
    started = time.monotonic()
    result = run_script("def run(ctx, parameters):\n    while True:\n        pass\n", timeout_s=2)
    assert result.error_type == "timeout"
    assert "2 s deadline" in (result.error or "")
    assert time.monotonic() - started < 60  # the loop never ends by itself; load must not fail this


def test_timeout_of_a_c_loop_kills_the_kernel(run_script: RunScript) -> None:
    started = time.monotonic()
    result = run_script(
        "def run(ctx, parameters):\n    return sum(range(10**13))\n", timeout_s=2, interrupt_grace_s=1
    )
    assert result.error_type == "timeout"
    assert "killed after ignoring the interrupt for 1 s" in (result.error or "")
    assert time.monotonic() - started < 60  # the sum takes hours; load must not fail this


def test_timeout_interrupts_a_running_duckdb_query(run_script: RunScript) -> None:
    started = time.monotonic()
    result = run_script(
        "def run(ctx, parameters):\n"
        "    return ctx.query('SELECT count(*) FROM range(10000000000000)').rows\n",
        timeout_s=2,
        interrupt_grace_s=30,  # DuckDB notices the interrupt at once; a loaded machine is slower
    )
    assert result.error_type == "timeout"
    assert "was stopped" in (result.error or "")  # stopped by the interrupt, not killed
    assert time.monotonic() - started < 90  # the query takes hours; load must not fail this


@pytest.mark.parametrize(
    ("death", "how"),
    [
        ("os._exit(3)", "exited with code 3"),
        ("os.kill(os.getpid(), signal.SIGKILL)", "was killed by SIGKILL"),
    ],
)
def test_kernel_death_is_reported_within_two_seconds(
    run_script: RunScript, tmp_path: Path, death: str, how: str
) -> None:
    stamp = tmp_path / "died_at"
    result = run_script(
        f"""
        import os, signal, time
        def run(ctx, parameters):
            open({str(stamp)!r}, "w").write(repr(time.time()))
            {death}
        """,
        timeout_s=60,
        sandbox="off",  # the stamp is a host file, which a sandboxed job cannot write
    )
    reported_at = time.time()
    assert result.error_type == "kernel_died"
    assert how in (result.error or "")
    assert reported_at - float(stamp.read_text()) < 2


def test_kernel_start_failure(run_script: RunScript, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    shadow = tmp_path / "shadow" / "ipykernel"
    shadow.mkdir(parents=True)
    (shadow / "__init__.py").write_text("import sys\nsys.stderr.write('no kernel here\\n')\nsys.exit(7)\n")
    monkeypatch.setenv("PYTHONPATH", str(shadow.parent))
    # sandbox off: the runner's PYTHONPATH reaches only an unsandboxed kernel (README, Security model)
    result = run_script("def run(ctx, parameters):\n    return 1\n", sandbox="off")
    assert result.error_type == "kernel_start_failed"
    assert "exited with code 7 during start-up" in (result.error or "")


def test_result_too_large_is_checked_in_the_kernel(run_script: RunScript) -> None:
    result = run_script("def run(ctx, parameters):\n    return 'x' * 2000\n", max_result_bytes=1000)
    assert result.error_type == "result_too_large"
    assert "limit of 1,000 bytes" in (result.error or "")


def test_large_results_within_the_limit_arrive_whole(run_script: RunScript) -> None:
    result = run_script("def run(ctx, parameters):\n    return ['x' * 100] * 30000\n")
    assert result.success
    assert len(result.result) == 30000


def test_result_not_serializable_names_the_path(run_script: RunScript) -> None:
    result = run_script("class Model: pass\ndef run(ctx, parameters):\n    return {'m': [1, Model()]}\n")
    assert result.error_type == "result_not_serializable"
    assert "result['m'][1] is a __analysis__.Model" in (result.error or "")


def test_datasource_not_found_and_datasource_error(run_script: RunScript, tmp_path: Path) -> None:
    import sqlite3

    db = tmp_path / "shop.db"
    sqlite3.connect(db).close()
    config = tmp_path / "datasources.toml"
    config.write_text('[shop]\nkind = "sqlite"\npath = "shop.db"\n')
    missing = run_script(
        "def run(ctx, parameters):\n    return ctx.query_datasource('warehouse', 'SELECT 1').rows\n",
        datasources_file=config,
    )
    assert missing.error_type == "datasource_not_found"
    assert "'warehouse' is not configured (configured: shop" in (missing.error or "")
    broken = run_script(
        "def run(ctx, parameters):\n    return ctx.query_datasource('shop', 'SELECT * FROM nope').rows\n",
        datasources_file=config,
    )
    assert broken.error_type == "datasource_error"
    assert "'shop'" in (broken.error or "") and "no such table: nope" in (broken.error or "")


def test_printed_output_is_capped_and_the_runner_stays_small(run_script: RunScript) -> None:
    before = psutil.Process().memory_info().rss
    result = run_script(
        """
        import sys
        def run(ctx, parameters):
            line = "y" * 99 + "\\n"
            for i in range(500_000):  # 50 MB
                sys.stdout.write(line)
            print("the end")
            return "done"
        """,
        max_log_bytes=64 * 1024,
    )
    grown = psutil.Process().memory_info().rss - before
    assert result.success
    assert sum(len(line) + 1 for line in result.logs) < 70 * 1024
    assert result.logs[-1] == "the end"
    assert any("lines (" in line and "dropped here" in line for line in result.logs)
    assert grown < 30 * 1024 * 1024


def test_processes_started_by_the_analysis_die_with_it(run_script: RunScript) -> None:
    # no_leftovers (through run_script) fails the test if the sleep survives
    result = run_script(
        """
        import subprocess
        def run(ctx, parameters):
            subprocess.Popen(["sleep", "300"])
            subprocess.Popen(["setsid", "sleep", "300"])
            return "started"
        """
    )
    assert result.success


def test_service_runs_saved_analyses(root: Path, no_leftovers: None) -> None:
    scripts = root / "acme" / "analysis" / "scripts"
    scripts.mkdir(parents=True)
    (scripts / "revenue.py").write_text("def run(ctx, parameters):\n    return parameters['startDate']\n")
    service = AnalysisService(root=root)
    result = service.submit_analysis_job("revenue", {"startDate": "2024-03-01"}, "manual", project_id="acme")
    assert result.success and result.result == "2024-03-01"
    assert result.to_dict()["job_id"] == result.job_id
    missing = service.submit_analysis_job("nope", {}, project_id="acme")
    assert missing.error_type == "invalid_analysis" and "no saved analysis 'nope'" in (missing.error or "")


@pytest.mark.parametrize(
    ("analysis_id", "project_id"),
    [("../../etc/passwd", "acme"), ("revenue", "a/b"), ("x" * 65, "acme"), ("", "p")],
)
def test_bad_ids_are_refused_before_anything_is_touched(
    root: Path, analysis_id: str, project_id: str
) -> None:
    result = AnalysisService(root=root).submit_analysis_job(analysis_id, {}, project_id=project_id)
    assert result.error_type == "invalid_parameters"
    assert "invalid" in (result.error or "")
    assert not root.exists()


def test_parameters_must_be_a_json_object(root: Path, tmp_path: Path) -> None:
    scripts = root / "p" / "analysis" / "scripts"
    scripts.mkdir(parents=True)
    (scripts / "a.py").write_text("def run(ctx, parameters):\n    return 1\n")
    service = AnalysisService(root=root)
    assert service.submit_analysis_job("a", [1, 2], project_id="p").error_type == "invalid_parameters"  # type: ignore[arg-type]
    bad = service.submit_analysis_job("a", {"when": object()}, project_id="p")
    assert bad.error_type == "invalid_parameters"
    assert not list(root.glob("*/analysis/temp/*"))


@pytest.mark.parametrize("sandbox", ["auto", "off"])
def test_long_job_directories_fall_back_to_short_socket_paths(
    tmp_path: Path, no_leftovers: None, sandbox: str
) -> None:
    import tempfile

    deep = tmp_path / ("d" * 60) / ("e" * 60)
    script = tmp_path / "a.py"
    script.write_text("def run(ctx, parameters):\n    return 'deep ok'\n")
    temp = Path(tempfile.gettempdir())
    before = set(temp.iterdir())
    result = run_job(JobSpec(source_path=script, root=deep / ".clients", sandbox=sandbox))
    assert result.success and result.result == "deep ok", result.to_dict()
    # the sockets are reached through a descriptor of the job directory: no folder beside it
    assert {p.name for p in set(temp.iterdir()) - before if p.name.startswith("analysis-k-")} == set()


def test_the_kernel_runs_the_runners_python(run_script: RunScript) -> None:
    result = run_script("import sys\ndef run(ctx, parameters):\n    return sys.executable\n")
    assert os.path.realpath(result.result) == os.path.realpath(sys.executable)


def test_a_job_kernel_is_configured_by_the_runners_command_line(run_script: RunScript) -> None:
    # the kernel reads the runner's own options without traitlets' parser: same configuration
    result = run_script(
        "import threading\n"
        "from ipykernel.kernelapp import IPKernelApp\n"
        "def run(ctx, parameters):\n"
        "    app = IPKernelApp.instance()\n"
        "    return [get_ipython().history_manager.enabled, app.quiet, app.connection_file,\n"
        "            [t.name for t in threading.enumerate() if 'History' in t.name]]\n"
    )
    assert result.success, result.to_dict()
    assert result.result[:2] == [False, True]
    assert result.result[2].endswith("kernel.json") and result.result[3] == []


def test_a_kernel_is_connected_once_its_iopub_welcome_arrives(tmp_path: Path, no_leftovers: None) -> None:
    # ZeroMQ's slow joiner: a client subscribing after the kernel published loses those
    # messages, such as the idle status of its first kernel_info request (dropped here). The
    # kernel's iopub_welcome shows the subscription is in place: no need to repeat the request,
    # half a second each time, until its status gets through.
    from jupyter_client.asynchronous.client import AsyncKernelClient

    from analysis.runner.kernel_messages import connected
    from analysis.runner.kernels import launch_kernel

    job_dir = tmp_path / "job"
    job_dir.mkdir(mode=0o700)
    kernel = launch_kernel(job_dir)

    async def connect_losing_statuses() -> None:
        client: Any = AsyncKernelClient()
        client.load_connection_info(kernel.connection_info)
        client.start_channels(hb=False)
        get = client.get_iopub_msg

        async def without_statuses(timeout: float | None = None) -> dict[str, Any]:
            while True:
                msg: dict[str, Any] = await get(timeout=timeout)
                if msg["msg_type"] != "status":
                    return msg

        client.get_iopub_msg = without_statuses
        try:
            await connected(client, kernel, 30)
        finally:
            client.stop_channels()

    try:
        asyncio.run(connect_losing_statuses())
    finally:
        kernel.kill()
        kernel.cleanup()


def test_out_of_memory_at_the_jobs_memory_limit(run_script: RunScript) -> None:
    result = run_script(
        "def run(ctx, parameters):\n    return len(bytearray(3 * 1024**3))\n", max_memory_bytes=2 * 1024**3
    )
    assert result.error_type == "out_of_memory"
    assert "limit of 2 GiB" in (result.error or "")
    assert result.stack is not None and "bytearray" in result.stack


def test_resource_limit_on_cpu_time(run_script: RunScript) -> None:
    started = time.monotonic()
    result = run_script(
        "def run(ctx, parameters):\n    while True:\n        pass\n", max_cpu_s=2, timeout_s=60
    )
    assert result.error_type == "resource_limit"
    assert "CPU time limit of 2 s (max_cpu_s)" in (result.error or "")
    assert time.monotonic() - started < 15


def test_cancelling_the_job_task_stops_the_kernel_and_propagates(
    tmp_path: Path, root: Path, no_leftovers: None
) -> None:
    import asyncio

    from analysis.runner import JobResult, JobSpec, run_job_async

    script = tmp_path / "slow.py"
    script.write_text("import time\ndef run(ctx, parameters):\n    time.sleep(60)\n")
    envelopes: list[JobResult] = []

    async def scenario() -> tuple[bool, float]:
        task = asyncio.create_task(
            run_job_async(JobSpec(source_path=script, root=root), on_cancelled=envelopes.append)
        )
        await asyncio.sleep(1.5)
        started = time.monotonic()
        task.cancel()
        try:
            await task
        except asyncio.CancelledError:
            return True, time.monotonic() - started
        return False, time.monotonic() - started

    raised, took = asyncio.run(scenario())
    assert raised, "the caller's cancellation was swallowed"
    assert [e.error_type for e in envelopes] == ["cancelled"]
    assert took < 20  # far below the analysis' 60 s sleep, far above a cancel on a loaded machine


def test_asyncio_timeout_around_a_job_fires(tmp_path: Path, root: Path, no_leftovers: None) -> None:
    import asyncio

    from analysis.runner import JobSpec, run_job_async

    script = tmp_path / "slow.py"
    script.write_text("import time\ndef run(ctx, parameters):\n    time.sleep(60)\n")

    async def scenario() -> str:
        try:
            async with asyncio.timeout(3):
                await run_job_async(JobSpec(source_path=script, root=root))
        except TimeoutError:
            return "timed out"
        return "returned"

    assert asyncio.run(scenario()) == "timed out"


@pytest.mark.parametrize(("field", "value"), [("job_id", "../../escape"), ("project_id", "a b")])
def test_job_and_project_ids_are_checked_before_any_file(
    tmp_path: Path, root: Path, field: str, value: str
) -> None:
    from analysis.runner import JobSpec, run_job

    script = tmp_path / "a.py"
    script.write_text("def run(ctx, parameters):\n    return 1\n")
    result = run_job(JobSpec(source_path=script, root=root, **{field: value}))
    assert result.error_type == "invalid_parameters" and "invalid" in (result.error or "")
    assert not root.exists() and not (tmp_path / "escape").exists()


def test_service_root_reaches_the_kernel(
    tmp_path: Path, no_leftovers: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    import sqlite3

    root = tmp_path / "elsewhere" / "projects"
    project = root / "acme" / "analysis"
    (project / "scripts").mkdir(parents=True)
    sqlite3.connect(project / "shop.db").executescript("CREATE TABLE t(x); INSERT INTO t VALUES (42);")
    (project / "datasources.toml").write_text(f'[shop]\nkind = "sqlite"\npath = "{project / "shop.db"}"\n')
    (project / "scripts" / "q.py").write_text(
        "def run(ctx, parameters):\n    return ctx.query_datasource('shop', 'SELECT x FROM t').rows\n"
    )
    monkeypatch.chdir(tmp_path)  # the working directory has no .clients
    monkeypatch.delenv("ANALYSIS_ROOT", raising=False)
    result = AnalysisService(root=root).submit_analysis_job("q", {}, project_id="acme")
    assert result.success, result.to_dict()
    assert result.result == [{"x": 42}]
    assert not list(root.glob("*/analysis/temp/*"))


def test_keyboard_interrupt_raised_by_the_analysis_is_an_analysis_error(run_script: RunScript) -> None:
    result = run_script("def run(ctx, parameters):\n    raise KeyboardInterrupt('mine')\n")
    assert result.error_type == "analysis_error"
    assert "KeyboardInterrupt: mine" in (result.error or "")


def test_namedtuple_result_is_an_array(run_script: RunScript) -> None:
    result = run_script(
        "from collections import namedtuple\nP = namedtuple('P', 'x y')\n"
        "def run(ctx, parameters):\n    return {'p': P(1, 2)}\n"
    )
    assert result.success, result.to_dict()
    assert result.result == {"p": [1, 2]}


def test_deeply_nested_parameters_are_refused_about_the_parameters(root: Path, tmp_path: Path) -> None:
    scripts = root / "p" / "analysis" / "scripts"
    scripts.mkdir(parents=True)
    (scripts / "a.py").write_text("def run(ctx, parameters):\n    return 1\n")
    deep: dict[str, object] = {}
    node = deep
    for _ in range(10_000):
        node["x"] = {}
        node = node["x"]  # type: ignore[assignment]
    result = AnalysisService(root=root).submit_analysis_job("a", deep, project_id="p")
    assert result.error_type == "invalid_parameters"
    assert "parameters" in (result.error or "") and "result" not in (result.error or "")
    listed = AnalysisService(root=root).submit_analysis_job("a", [1], project_id="p")  # type: ignore[arg-type]
    assert "JSON object" in (listed.error or "") and "result" not in (listed.error or "")


@pytest.mark.parametrize("obstacle", ["root_is_a_file", "temp_is_a_file"])
def test_unusable_root_or_temp_gives_an_envelope(tmp_path: Path, obstacle: str) -> None:
    from analysis.runner import JobSpec, run_job

    script = tmp_path / "a.py"
    script.write_text("def run(ctx, parameters):\n    return 1\n")
    root = tmp_path / "root"
    if obstacle == "root_is_a_file":
        root.write_text("not a folder")
    else:
        (root / "default" / "analysis").mkdir(parents=True)
        (root / "default" / "analysis" / "temp").write_text("not a folder")
    result = run_job(JobSpec(source_path=script, root=root))
    assert result.error_type == "kernel_start_failed"
    assert "job directory" in (result.error or "") and str(root) in (result.error or "")


def test_memory_limit_too_small_to_start_names_the_limit(run_script: RunScript) -> None:
    result = run_script("def run(ctx, parameters):\n    return 1\n", max_memory_bytes=64 * 1024**2)
    assert result.error_type == "out_of_memory"
    assert "64 MiB" in (result.error or "") and "max_memory_bytes" in (result.error or "")


@pytest.mark.timeout(600)  # 200 MB through iopub in 64 KiB pieces: over 120 s on a loaded 2-core machine
def test_a_huge_print_is_streamed_in_pieces(run_script: RunScript) -> None:
    import threading

    me = psutil.Process()
    before = me.memory_info().rss
    peak = [before]
    done = threading.Event()

    def sample() -> None:
        while not done.wait(0.005):
            peak[0] = max(peak[0], me.memory_info().rss)

    sampler = threading.Thread(target=sample)
    sampler.start()
    try:
        result = run_script('def run(ctx, parameters):\n    print("y" * 200_000_000)\n    return "done"\n')
    finally:
        done.set()
        sampler.join()
    assert result.success
    grown = peak[0] - before
    assert grown < 100 * 1024 * 1024, f"the runner's memory peaked {grown / 2**20:.0f} MiB above its start"


def test_a_runner_slower_than_a_huge_print_still_gets_the_outcome(
    run_script: RunScript, monkeypatch: pytest.MonkeyPatch
) -> None:
    # a loaded runner reads iopub slower than the kernel writes: past ZeroMQ's high-water mark
    # the kernel dropped messages, the outcome among them, and the job waited for its deadline
    from analysis.runner.job_spec import Job

    output = Job.output

    def slow_output(self: Job, name: str, text: str) -> None:
        time.sleep(0.003)
        output(self, name, text)

    monkeypatch.setattr(Job, "output", slow_output)
    result = run_script(
        'def run(ctx, parameters):\n    print("y" * 200_000_000)\n    return "done"\n', timeout_s=120
    )
    assert result.success, result.to_dict()
    assert result.result == "done"


def test_the_kernel_listens_on_no_tcp_port(run_script: RunScript) -> None:
    result = run_script(
        """
        import os, psutil
        def run(ctx, parameters):
            me = psutil.Process(os.getpid())
            return [c.laddr.port for c in me.net_connections(kind="tcp") if c.status == "LISTEN"]
        """
    )
    assert result.success, result.to_dict()
    assert result.result == []


def test_unknown_job_option_is_an_envelope_not_an_exception(root: Path) -> None:
    scripts = root / "p" / "analysis" / "scripts"
    scripts.mkdir(parents=True)
    (scripts / "a.py").write_text("def run(ctx, parameters):\n    return 1\n")
    result = AnalysisService(root=root).submit_analysis_job("a", {}, project_id="p", timeout=3)
    assert result.error_type == "invalid_parameters"
    assert "timeout" in (result.error or "")


def test_a_job_starts_no_heartbeat_thread(tmp_path: Path, root: Path, no_leftovers: None) -> None:
    # jupyter_client's heartbeat thread, stopped before it first runs (a job cancelled at once, on a
    # loaded machine), spins opening sockets until "Too many open files"; the runner watches the
    # kernel's process instead, so it starts none.
    import threading

    script = tmp_path / "a.py"
    script.write_text("def run(ctx, parameters):\n    return 1\n")
    beating: list[str] = []

    def ready(_: float) -> None:
        beating.extend(t.name for t in threading.enumerate() if type(t).__name__ == "HBChannel")

    result = run_job(JobSpec(source_path=script, root=root, on_kernel_ready=ready))
    assert result.success, result.to_dict()
    assert beating == []
