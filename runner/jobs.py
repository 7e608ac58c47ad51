"""Running one job: job directory, kernel, deadline, captured logs, and the envelope.

The runner owns the deadline. At the deadline it interrupts the kernel (the kernel's own
watchdog cancels DuckDB and datasource queries at the same moment); if no outcome arrives
within the grace period it kills the kernel's process tree. Whatever happens, the kernel is
killed and the job directory removed before ``run_job`` returns (or, when the caller cancels
the job, before ``CancelledError`` propagates).

Every job setting the kernel needs (root, project, limits, datasources, paths) travels in the
job document ``job.json``, never in the environment.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import os
import queue
import shutil
import signal
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

from analysis.artifacts import DEFAULT_MAX_ARTIFACT_BYTES
from analysis.config import Settings
from analysis.deadline import Deadline
from analysis.errors import (
    AnalysisError,
    InvalidParametersError,
    JobCancelledError,
    JobTimeoutError,
    KernelDiedError,
    KernelStartError,
    OutOfMemoryError,
    ResourceLimitError,
)
from analysis.params import check_id
from analysis.results import DEFAULT_MAX_RESULT_BYTES, OUTCOME_MIME, format_bytes, to_json_fragment
from analysis.runner import sandbox as sandboxing
from analysis.runner.broker import SOCKET_NAME, BrokerServer, kernel_environ, serve_broker, shared_pool
from analysis.runner.deps import EnvironmentLease, lease_environment
from analysis.runner.envelope import JobResult
from analysis.runner.jobdirs import claim_job_dir, disk_usage, sweep_orphans
from analysis.runner.kernel_messages import connected
from analysis.runner.kernels import KernelProcess, launch_kernel
from analysis.runner.logbuffer import DEFAULT_MAX_LOG_BYTES, LogBuffer
from analysis.runner.notebooks import NotebookRun, error_stack, load_notebook

if TYPE_CHECKING:
    from analysis.runner.pool import KernelPool, WarmKernel

__all__ = [
    "DEFAULT_MAX_DISK_BYTES",
    "DEFAULT_MAX_PROCESSES",
    "DEFAULT_MAX_TMP_BYTES",
    "DEFAULT_TIMEOUT_S",
    "JobSpec",
    "run_job",
    "run_job_async",
]

#: The whole-run deadline (README, "The envelope").
DEFAULT_TIMEOUT_S = 300.0
#: Default disk limit of a job: its job directory, and any one file it writes.
DEFAULT_MAX_DISK_BYTES = 1024**3
#: Default size of a sandboxed job's private ``/tmp``.
DEFAULT_MAX_TMP_BYTES = 512 * 1024**2
#: Default limit of processes (and threads) of a sandboxed job.
DEFAULT_MAX_PROCESSES = 256
_POLL_S = 0.1
_ARTIFACT = "result.parquet"
_DISK_CHECK_S = 1.0


@dataclass(frozen=True)
class JobSpec:
    """Everything one job needs. ``None`` limits are disabled.

    Parameters
    ----------
    source_path
        The analysis script.
    parameters
        The job's parameters (a JSON object).
    project_id
        The project the job runs in (datasources, job directory).
    root
        Root folder of projects (``.clients``).
    timeout_s
        Whole-run deadline, kernel start included.
    max_result_bytes
        Limit of the encoded result.
    max_log_bytes
        Cap of captured output kept in the envelope.
    max_memory_bytes
        Address-space limit of the kernel; past it allocations fail (``out_of_memory``).
    max_cpu_s
        CPU-time limit of the kernel in seconds, kernel start included (``resource_limit``).
    max_disk_bytes
        Size limit of the job directory, and of any one file the job writes (``resource_limit``).
    max_tmp_bytes
        Sandboxed: size of the job's private ``/tmp`` (``resource_limit``).
    max_processes
        Sandboxed: how many processes and threads the job may run at once (``resource_limit``).
    sandbox
        ``"auto"`` (sandboxed when bubblewrap works here), ``"on"`` (required) or ``"off"``;
        default ``$ANALYSIS_SANDBOX``, else ``"off"`` (README, "Security model").
    interrupt_grace_s
        How long an interrupted kernel may take to stop before it is killed.
    kernel_start_timeout_s
        How long the kernel may take to answer its first request.
    datasources_file
        A datasources file to use instead of the project's.
    cwd
        Working directory of the kernel (default: the runner's).
    job_id
        Id of the job (default: a new UUID).
    trigger
        What started the job (``manual``, ``schedule``, ...), kept on the result.
    output_notebook
        For a notebook analysis: where to write the executed notebook (after every cell).
    progress
        Show progress on stderr: per cell for a notebook, per step for a script.
    log_output
        Copy the job's output (stdout, stderr, log lines) to the runner's stderr as it arrives.
    artifact_dir
        Where a table result over ``max_result_bytes`` may go as ``{job_id}.parquet`` (the
        envelope then has ``result_ref`` and ``result_preview``); ``None``: such a result is
        ``result_too_large``.
    max_artifact_bytes
        Limit of that Parquet file.
    on_log
        Called with ``(stream, text)`` for every chunk the analysis prints, as it prints it
        (the envelope's ``logs`` are still captured and capped as usual).
    on_kernel_ready
        Called with the seconds the kernel took to start and answer, once it has.
    """

    source_path: Path
    parameters: dict[str, Any] = field(default_factory=dict)
    project_id: str = "default"
    root: Path = Path(".clients")
    timeout_s: float | None = DEFAULT_TIMEOUT_S
    max_result_bytes: int | None = DEFAULT_MAX_RESULT_BYTES
    max_log_bytes: int | None = DEFAULT_MAX_LOG_BYTES
    max_memory_bytes: int | None = None
    max_cpu_s: int | None = None
    max_disk_bytes: int | None = DEFAULT_MAX_DISK_BYTES
    max_tmp_bytes: int | None = DEFAULT_MAX_TMP_BYTES
    max_processes: int | None = DEFAULT_MAX_PROCESSES
    sandbox: str | None = None
    interrupt_grace_s: float = 2.0
    kernel_start_timeout_s: float = 60.0
    datasources_file: Path | None = None
    cwd: Path | None = None
    job_id: str = field(default_factory=lambda: uuid.uuid4().hex)
    trigger: str = "manual"
    output_notebook: Path | None = None
    progress: bool = False
    log_output: bool = False
    artifact_dir: Path | None = None
    max_artifact_bytes: int = DEFAULT_MAX_ARTIFACT_BYTES
    on_log: Callable[[str, str], None] | None = field(default=None, compare=False, repr=False)
    on_kernel_ready: Callable[[float], None] | None = field(default=None, compare=False, repr=False)


class _Job:
    """The state of one running job (one kernel, one log buffer)."""

    def __init__(self, spec: JobSpec) -> None:
        self.spec = spec
        self.started = time.monotonic()
        self.deadline = None if spec.timeout_s is None else self.started + spec.timeout_s
        self.logs = LogBuffer(spec.max_log_bytes)
        self.kernel: KernelProcess | None = None
        self.job_dir: Path | None = None
        self.sandboxed = False
        self._disk_checked = self.started

    def output(self, stream: str, text: str) -> None:
        """Keep stream text in the logs (and echo it live when asked)."""
        self.logs.write(stream, text)
        if self.spec.log_output:
            sys.stderr.write(text)
            sys.stderr.flush()

    def check_disk(self) -> None:
        """Stop the job if its directory grew past ``max_disk_bytes`` (checked about once a second)."""
        limit, now = self.spec.max_disk_bytes, time.monotonic()
        if limit is None or self.job_dir is None or now - self._disk_checked < _DISK_CHECK_S:
            return
        self._disk_checked = now
        used = disk_usage(self.job_dir)
        if used > limit and self.kernel is not None:
            self.kernel.kill()
            raise ResourceLimitError(
                f"The job wrote {format_bytes(used)} to its job directory, over its disk limit of "
                f"{format_bytes(limit)} (max_disk_bytes); the kernel was stopped."
            )

    def remaining(self) -> float:
        return float("inf") if self.deadline is None else self.deadline - time.monotonic()

    def envelope(self, outcome: dict[str, Any], result_json: str = "null") -> JobResult:
        return JobResult(
            success=bool(outcome.get("success")),
            job_id=self.spec.job_id,
            logs=self.logs.lines(),
            duration_ms=int((time.monotonic() - self.started) * 1000),
            error=outcome.get("error"),
            error_type=outcome.get("error_type"),
            stack=outcome.get("stack"),
            result_json=result_json,
            trigger=self.spec.trigger,
            result_ref=outcome.get("result_ref"),
            result_preview=outcome.get("result_preview"),
        )

    def timeout_error(self, killed: bool) -> JobTimeoutError:
        how = (
            f"was killed after ignoring the interrupt for {self.spec.interrupt_grace_s:g} s"
            if killed
            else "was stopped"
        )
        return JobTimeoutError(
            f"The analysis ran past the {self.spec.timeout_s:g} s deadline (timeout_s) and {how}."
        )

    def died_error(self) -> AnalysisError:
        assert self.kernel is not None
        how = self.kernel.exit_description()
        code = self.kernel.popen.returncode
        # a sandbox reports its kernel's death by a signal as exit code 128 + signal
        if self.spec.max_cpu_s is not None and code in (-signal.SIGXCPU, 128 + signal.SIGXCPU):
            return ResourceLimitError(
                f"The analysis used up its CPU time limit of {self.spec.max_cpu_s} s (max_cpu_s); "
                f"the kernel {how}."
            )
        return KernelDiedError(f"The kernel {how} while running the analysis.")


def _write_job_document(job: _Job, job_dir: Path, source: Path, wall_deadline: float | None) -> Path:
    """The job document: every setting the kernel needs, as data (paths as the kernel sees them)."""
    spec = job.spec
    inside = sandboxing.JOB_DIR if job.sandboxed else job_dir.resolve()
    if job.sandboxed:  # the kernel sees its own copy of the analysis, not the host's folders
        copy = job_dir / "source" / source.name
        copy.parent.mkdir()
        shutil.copyfile(source, copy)
        source_seen = inside / "source" / source.name
    else:
        source_seen = source
    document = {
        "job_id": spec.job_id,
        "project_id": spec.project_id,
        "root": str(spec.root.resolve()),
        "parameters": spec.parameters,
        "source_path": str(source_seen),
        "job_dir": str(inside),
        # the runner's broker, for this job's datasource and file requests (relative to job_dir)
        "broker": SOCKET_NAME,
        "sandboxed": job.sandboxed,
        "deadline_at": wall_deadline,
        "timeout_s": spec.timeout_s,
        "max_result_bytes": spec.max_result_bytes,
        "max_memory_bytes": spec.max_memory_bytes,
        "max_disk_bytes": spec.max_disk_bytes,
        "max_tmp_bytes": spec.max_tmp_bytes if job.sandboxed else None,
        "max_processes": spec.max_processes if job.sandboxed else None,
        "datasources_file": str(spec.datasources_file.resolve()) if spec.datasources_file else None,
        "artifact": None
        if spec.artifact_dir is None
        else {"path": str(inside / _ARTIFACT), "max_bytes": spec.max_artifact_bytes},
    }
    path = job_dir / "job.json"
    path.write_bytes(to_json_fragment(document))
    return path


def _launch_settings(
    spec: JobSpec, settings: Settings, lease: EnvironmentLease, *, sandboxed: bool
) -> dict[str, Any]:
    """The :func:`launch_kernel` arguments of a job's kernel, but its job directory (a pool's key too)."""
    return {
        "cwd": spec.cwd,
        "base_env": None if sandboxed else kernel_environ(os.environ, settings),
        "max_memory_bytes": spec.max_memory_bytes,
        "max_cpu_s": spec.max_cpu_s,
        "max_file_bytes": spec.max_disk_bytes,
        "max_processes": spec.max_processes,
        "max_tmp_bytes": spec.max_tmp_bytes,
        "sandboxed": sandboxed,
        "python": lease.python,
        "python_env": lease.path,
    }


def want_pool(pool: KernelPool, spec: JobSpec) -> None:
    """Have ``pool`` keep warm kernels for jobs like ``spec`` in the runner's own environment."""
    settings = dataclasses.replace(Settings.from_env(), root=spec.root)
    if spec.datasources_file is not None:
        settings = dataclasses.replace(settings, datasources_file=spec.datasources_file.resolve())
    sandboxed = sandboxing.use_sandbox(spec.sandbox or settings.sandbox)
    launch = _launch_settings(spec, settings, EnvironmentLease(sys.executable), sandboxed=sandboxed)
    pool.want(spec.project_id, spec.root, launch)


def _check_parameters(parameters: Any) -> None:
    if not isinstance(parameters, dict):
        raise InvalidParametersError(
            f"Parameters must be a JSON object (names to values), not {type(parameters).__name__}."
        )
    for key in parameters:
        if not isinstance(key, str):
            raise InvalidParametersError(f"Parameter names must be strings; got {key!r}.")
    try:
        to_json_fragment(parameters, what="parameters")
    except AnalysisError as exc:
        raise InvalidParametersError(exc.message) from None


async def _wait_ready(job: _Job, client: Any) -> None:
    """Wait until the kernel answers on shell and its status reaches iopub."""
    assert job.kernel is not None
    try:
        await connected(client, job.kernel, min(job.spec.kernel_start_timeout_s, job.remaining()))
    except queue.Empty:
        if not job.kernel.is_alive():
            tail = job.kernel.log_tail()
            out_of_memory = "MemoryError" in tail or "can't start new thread" in tail
            if out_of_memory and job.spec.max_memory_bytes is not None:
                raise OutOfMemoryError(
                    "The kernel could not start within the memory limit of "
                    f"{format_bytes(job.spec.max_memory_bytes)} (max_memory_bytes): it ran out of "
                    "address space while importing; a kernel needs about 1 GiB."
                ) from None
            raise KernelStartError(
                f"The kernel {job.kernel.exit_description()} during start-up"
                + (f": {tail.splitlines()[-1]}" if tail else ".")
            ) from None
        if job.remaining() <= 0:
            raise job.timeout_error(killed=False) from None
        raise KernelStartError(
            f"The kernel did not answer within {job.spec.kernel_start_timeout_s:g} s "
            "(kernel_start_timeout_s)."
        ) from None


@dataclass
class CodeRun:
    """What one execute request produced."""

    outcome_text: str | None = None
    error: dict[str, Any] | None = None
    interrupted: bool = False


async def run_code(
    job: _Job,
    client: Any,
    code: str,
    *,
    store_history: bool = False,
    on_output: Callable[[str, dict[str, Any]], None] | None = None,
    until_outcome: bool = False,
) -> CodeRun:
    """Execute ``code`` in the job's kernel until it is idle, enforcing the deadline.

    ``until_outcome``: return as soon as the job's outcome arrives (the kernel's last word
    about the job: what it does after, tidying up a kernel about to be discarded, is not
    waited for). Stream text goes to the job's logs; every output message is also passed to ``on_output``.
    At the deadline the kernel is interrupted (``interrupted`` is then set); a kernel that does
    not answer within the grace period is killed (``JobTimeoutError``); a kernel that dies
    raises ``KernelDiedError`` (or ``ResourceLimitError``).
    """
    assert job.kernel is not None
    msg_id = client.execute(
        code, silent=False, store_history=store_history, allow_stdin=False, stop_on_error=True
    )
    run = CodeRun()
    interrupted_at: float | None = None
    while True:
        if not job.kernel.is_alive():
            if interrupted_at is not None:
                raise job.timeout_error(killed=True)
            raise job.died_error()
        job.check_disk()
        if interrupted_at is None and job.remaining() <= 0:
            job.kernel.interrupt()
            interrupted_at = time.monotonic()
            run.interrupted = True
        if interrupted_at is not None and time.monotonic() - interrupted_at > job.spec.interrupt_grace_s:
            job.kernel.kill()
            raise job.timeout_error(killed=True)
        try:
            msg = await client.get_iopub_msg(timeout=_POLL_S)
        except queue.Empty:
            continue
        if msg["parent_header"].get("msg_id") != msg_id:
            continue
        kind, content = msg["msg_type"], msg["content"]
        if kind == "status":
            if content.get("execution_state") == "idle":
                return run
            continue
        if kind in ("display_data", "execute_result") and OUTCOME_MIME in content.get("data", {}):
            run.outcome_text = content["data"][OUTCOME_MIME]
            if until_outcome:
                return run
            continue
        if kind == "stream":
            job.output(content.get("name", "stdout"), content.get("text", ""))
            if job.spec.on_log is not None:
                job.spec.on_log(content.get("name", "stdout"), content.get("text", ""))
        elif kind == "error":
            run.error = content
        if on_output is not None:
            on_output(kind, content)


async def _execute(job: _Job, client: Any, job_file: str, bar: Any) -> tuple[dict[str, Any], str]:
    """Run a script job in the ready kernel; return the outcome and the result's JSON text."""
    code = f"__import__('analysis.execute').execute.run_job({job_file!r})"
    if bar is not None:
        bar.set_description_str("analysis: running")
    outcome = outcome_of(job, await run_code(job, client, code, until_outcome=True), job.job_dir or Path())
    if bar is not None:
        bar.update(1)
    return outcome


def outcome_of(job: _Job, run: CodeRun, job_dir: Path) -> tuple[dict[str, Any], str]:
    """The outcome a finished code run published (timeouts and internal failures raise)."""
    if run.interrupted:
        raise job.timeout_error(killed=False)
    if run.outcome_text is None:
        error = run.error
        detail = f"{error.get('ename')}: {error.get('evalue')}" if error else "no outcome"
        raise AnalysisError(f"The kernel could not run the job ({detail}); is analysis installed in it?")
    return _parse_outcome(run.outcome_text, job_dir)


async def _execute_notebook(
    job: _Job, client: Any, job_file: str, run: NotebookRun
) -> tuple[dict[str, Any], str]:
    """Run a notebook job cell by cell, writing the output notebook after every cell."""
    assert job.job_dir is not None
    job_dir = job.job_dir
    started = await run_code(
        job, client, f"__import__('analysis.notebook_job').notebook_job.start({job_file!r})"
    )
    if started.error or started.interrupted:
        return outcome_of(job, started, job_dir)
    cells = run.code_cells()
    bar = _progress_bar(len(cells)) if job.spec.progress else None
    try:
        for index, source in cells:
            try:
                done = await run_code(
                    job,
                    client,
                    source,
                    store_history=not run.is_injected(index),  # numbered as in the user's notebook
                    on_output=partial(run.add_output, index),
                )
            except AnalysisError as exc:  # killed at the deadline, or the kernel died
                run.mark(index, exc.error_type, error=exc.message)
                raise type(exc)(f"{exc.message.rstrip('.')} (in {run.describe_cell(index)}).") from None
            if done.interrupted:
                timeout = job.timeout_error(killed=False)
                run.mark(index, "timeout", error=timeout.message)
                raise type(timeout)(f"{timeout.message.rstrip('.')} (in {run.describe_cell(index)}).")
            if done.error is not None and run.may_raise(index):
                run.mark(index, "raised")
            elif done.error is not None:
                run.mark(index, "failed")
                described = await run_code(
                    job, client, "__import__('analysis.notebook_job').notebook_job.describe_error()"
                )
                outcome, _ = outcome_of(job, described, job_dir)
                outcome["error"] = f"{outcome['error'].rstrip('.')} (in {run.describe_cell(index)})."
                outcome["stack"] = outcome.get("stack") or error_stack(done.error)
                run.finish(outcome)
                return outcome, "null"
            else:
                run.mark(index, "ok")
            run.save()
            if bar is not None:
                bar.update(1)
    finally:
        if bar is not None:
            bar.close()
    finished = await run_code(job, client, "__import__('analysis.notebook_job').notebook_job.finish()")
    outcome, result_json = outcome_of(job, finished, job_dir)
    run.finish(outcome)
    return outcome, result_json


def _finish_notebook(notebook: NotebookRun | None, outcome: dict[str, Any]) -> None:
    """Record a failed job's outcome in its output notebook, if it can still be written."""
    if notebook is not None:
        try:
            notebook.finish(outcome)
        except AnalysisError:  # the output notebook cannot be written: the envelope says why
            pass


def _progress_bar(total: int) -> Any:
    from tqdm import tqdm

    return tqdm(total=total, unit="cell", file=sys.stderr, desc="analysis", leave=True)


def _parse_outcome(text: str, job_dir: Path) -> tuple[dict[str, Any], str]:
    """Split the outcome message into its fields and the raw JSON text of the result."""
    outcome = json.loads(text)
    if "outcome_file" in outcome:
        text = (job_dir / Path(outcome["outcome_file"]).name).read_text(encoding="utf-8")
        outcome = json.loads(text)
    if not outcome.get("success") or "result_ref" in outcome:
        return outcome, "null"
    # The result is the last member, spliced in by the kernel: keep its exact text.
    start = text.index('"result": ') + len('"result": ')
    return outcome, text[start:-1]


def _steps_bar() -> Any:
    from tqdm import tqdm

    return tqdm(total=2, unit="step", file=sys.stderr, desc="analysis: starting kernel", leave=True)


async def run_job_async(
    spec: JobSpec,
    *,
    on_cancelled: Callable[[JobResult], None] | None = None,
    pool: KernelPool | None = None,
) -> JobResult:
    """Run one analysis job in a fresh kernel and return its result (never raises for job faults).

    With a ``pool``, the job takes a warm kernel of its project, launch settings and environment
    when one is idle (its job directory becomes the job's), else it starts cold; the kernel is
    discarded after.

    When the task running it is cancelled, the kernel is stopped and the job directory removed,
    ``on_cancelled`` (if given) receives the ``cancelled`` envelope, and ``CancelledError``
    propagates, so ``asyncio.timeout()`` and cancelled request handlers behave as usual.
    """
    job = _Job(spec)
    try:  # ids become path components: refuse bad ones before anything is touched
        check_id(spec.project_id, "Project id")
        check_id(spec.job_id, "Job id")
    except ValueError as exc:
        return job.envelope({"success": False, **InvalidParametersError(str(exc)).to_dict(), "stack": None})
    source = spec.source_path.resolve()
    job_dir = spec.root / spec.project_id / "analysis" / "temp" / spec.job_id
    client: Any = None
    notebook: NotebookRun | None = None
    lease: EnvironmentLease | None = None
    broker = contextlib.AsyncExitStack()
    claimed = False
    bar = None
    warm: WarmKernel | None = None
    try:
        _check_parameters(spec.parameters)
        settings = dataclasses.replace(Settings.from_env(), root=spec.root)
        mode = spec.sandbox or settings.sandbox
        job.sandboxed = sandboxing.use_sandbox(mode)
        if not job.sandboxed:
            why = sandboxing.sandbox_available() if mode == "auto" else 'sandbox = "off"'
            job.logs.write("stderr", f"[sandbox] this job ran unsandboxed ({why}): README, Security model\n")
        if source.suffix == ".ipynb":
            notebook = NotebookRun(
                load_notebook(source), spec.parameters, spec.output_notebook, spec.max_log_bytes
            )
            cwd, datasources = notebook.job_settings(
                source,
                datasources_file=spec.datasources_file,
                cwd=spec.cwd,
                root=spec.root,
                project_id=spec.project_id,
            )
            spec = dataclasses.replace(spec, cwd=cwd, datasources_file=datasources)
            notebook.save()  # the output notebook exists whatever happens next
        elif spec.progress:
            bar = _steps_bar()
        sweep_orphans(spec.root)
        if spec.datasources_file is not None:
            settings = dataclasses.replace(settings, datasources_file=spec.datasources_file.resolve())
        deadline = Deadline.after(spec.timeout_s)
        from jupyter_client.asynchronous.client import AsyncKernelClient

        project_dir, log = spec.root / spec.project_id / "analysis", partial(job.logs.write, "stderr")
        lease = await lease_environment(source, project_dir=project_dir, timeout_s=job.remaining(), log=log)
        launch = _launch_settings(spec, settings, lease, sandboxed=job.sandboxed)
        warm = (
            None
            if pool is None
            else await pool.acquire_async(spec.project_id, spec.root, launch, lease=lease)
        )
        if warm is not None:  # the pooled kernel's job directory (and ready client) become this job's
            client = warm.take_client()
            if client is not None and warm.kernel.is_alive():
                job_dir, claimed, job.job_dir, job.kernel = warm.job_dir, True, warm.job_dir, warm.kernel
            else:  # it died while being handed over: start cold instead
                if client is not None:
                    client.stop_channels()
                client = None
                warm.discard()
                warm = None
        if job.kernel is None:
            try:
                job_dir.mkdir(mode=0o700, parents=True)
                os.chmod(job_dir, 0o700)
            except OSError as exc:
                raise KernelStartError(
                    f"The job directory {job_dir} could not be created: {exc.strerror or exc} "
                    "(check the projects root, --root)."
                ) from None
            claimed = True
            job.job_dir = job_dir
            claim_job_dir(job_dir)
            job.kernel = launch_kernel(job_dir, **launch)
            client = AsyncKernelClient()
            client.load_connection_info(job.kernel.connection_info)
            # No heartbeat: the runner watches the kernel's process, and jupyter_client's heartbeat
            # thread, stopped before it first ran (a job cancelled or timed out at once), spins
            # opening sockets until "Too many open files".
            client.start_channels(hb=False)
            await _wait_ready(job, client)
        if warm is not None:  # its broker stops in the pool's thread, after the envelope is out
            warm.on_discard(
                BrokerServer(job_dir, spec.project_id, settings, deadline=deadline, pool=shared_pool())
                .start()
                .stop
            )
        else:
            await broker.enter_async_context(
                serve_broker(job_dir, spec.project_id, settings, deadline=deadline)
            )
        job_file = _write_job_document(job, job_dir, source, deadline.at)  # the broker's deadline too
        job_file_seen = str((sandboxing.JOB_DIR if job.sandboxed else job_dir.resolve()) / job_file.name)
        if job.sandboxed:  # the job document and the broker's socket, to the sandbox's user
            sandboxing.prepare_job_dir(job_dir, recursive=False)
        if spec.on_kernel_ready is not None:
            spec.on_kernel_ready(time.monotonic() - job.started)
        if bar is not None:
            bar.update(1)
        if notebook is not None:
            outcome, result_json = await _execute_notebook(job, client, job_file_seen, notebook)
        else:
            outcome, result_json = await _execute(job, client, job_file_seen, bar)
        if "result_ref" in outcome and spec.artifact_dir is not None:
            spec.artifact_dir.mkdir(parents=True, exist_ok=True)
            os.replace(job_dir / _ARTIFACT, spec.artifact_dir / f"{spec.job_id}.parquet")
        return job.envelope(outcome, result_json)
    except AnalysisError as exc:
        failed = {"success": False, **exc.to_dict(), "stack": None}
        _finish_notebook(notebook, failed)
        return job.envelope(failed)
    except asyncio.CancelledError:  # the caller cancelled the job (Ctrl-C, SIGTERM, task.cancel())
        cancelled = JobCancelledError("The job was cancelled before it finished; its kernel was stopped.")
        _finish_notebook(notebook, {"success": False, **cancelled.to_dict()})
        if on_cancelled is not None:
            on_cancelled(job.envelope({"success": False, **cancelled.to_dict(), "stack": None}))
        raise
    except Exception as exc:  # a fault of the runner itself: still an envelope, never a traceback
        failed_cls = KernelStartError if job.kernel is None else KernelDiedError
        error = failed_cls(f"The runner failed while running the job: {type(exc).__name__}: {exc}")
        failed = {"success": False, **error.to_dict(), "stack": None}
        _finish_notebook(notebook, failed)
        return job.envelope(failed)
    finally:
        try:
            if bar is not None:
                bar.close()
            if client is not None:
                client.stop_channels()
        finally:
            try:
                if warm is not None and pool is not None:  # killed now, reaped by the pool's thread
                    warm.signal_kill()
                elif job.kernel is not None:
                    job.kernel.kill()
                    job.kernel.cleanup()
            finally:
                if lease is not None:
                    lease.release()
                await broker.aclose()
                if warm is not None and pool is not None:
                    pool.retire(warm)
                elif claimed:
                    shutil.rmtree(job_dir, ignore_errors=True)


async def run_job_to_envelope(spec: JobSpec) -> JobResult:
    """:func:`run_job_async`, returning the ``cancelled`` envelope instead of raising when cancelled."""
    cancelled: list[JobResult] = []
    try:
        return await run_job_async(spec, on_cancelled=cancelled.append)
    except asyncio.CancelledError:
        if cancelled:
            return cancelled[0]
        raise


def run_job(spec: JobSpec) -> JobResult:
    """Synchronous :func:`run_job_async` (for callers without an event loop).

    Ctrl-C cancels the job and returns its ``cancelled`` envelope.
    """
    return asyncio.run(run_job_to_envelope(spec))
