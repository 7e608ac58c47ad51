"""Running one job: job directory, kernel, deadline, captured logs, and the envelope.

The runner owns the deadline. At the deadline it interrupts the kernel (the kernel's own
watchdog cancels DuckDB and datasource queries at the same moment); if no outcome arrives
within the grace period it kills the kernel's process tree. Whatever happens, the kernel is
killed and the job directory removed before ``run_job`` returns (or, when the caller cancels
the job, before ``CancelledError`` propagates).

Every job setting the kernel needs (root, project, limits, datasources, paths) travels in the
job document ``job.json``, never in the environment. A job's specification and running state are
:mod:`analysis.runner.job_spec`; waiting for its kernel and running code in it,
:mod:`analysis.runner.job_kernel`.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import shutil
import sys
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

from analysis.config import Settings
from analysis.deadline import Deadline
from analysis.errors import (
    AnalysisError,
    InvalidParametersError,
    JobCancelledError,
    KernelDiedError,
    KernelStartError,
)
from analysis.params import check_id
from analysis.results import to_json_fragment
from analysis.runner import sandbox as sandboxing
from analysis.runner.broker import SOCKET_NAME, BrokerServer, kernel_environ, serve_broker, shared_pool
from analysis.runner.deps import EnvironmentLease, lease_environment
from analysis.runner.envelope import JobResult
from analysis.runner.job_kernel import execute, execute_notebook, finish_notebook, steps_bar, wait_ready
from analysis.runner.job_spec import (
    DEFAULT_MAX_DISK_BYTES,
    DEFAULT_MAX_PROCESSES,
    DEFAULT_MAX_TMP_BYTES,
    DEFAULT_TIMEOUT_S,
    Job,
    JobSpec,
    check_parameters,
)
from analysis.runner.jobdirs import claim_job_dir, sweep_orphans
from analysis.runner.kernels import launch_kernel
from analysis.runner.notebooks import NotebookRun, load_notebook

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

_ARTIFACT = "result.parquet"


def _write_job_document(job: Job, job_dir: Path, source: Path, wall_deadline: float | None) -> Path:
    """The job document: every setting the kernel needs, as data (paths as the kernel sees them)."""
    spec = job.spec
    inside = sandboxing.job_dir_seen(job_dir, sandboxed=job.sandboxed)
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
    job = Job(spec)
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
        check_parameters(spec.parameters)
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
            bar = steps_bar()
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
            await wait_ready(job, client)
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
        job_file_seen = str(sandboxing.job_dir_seen(job_dir, sandboxed=job.sandboxed) / job_file.name)
        if job.sandboxed:  # the job document and the broker's socket, to the sandbox's user
            sandboxing.prepare_job_dir(job_dir, recursive=False)
        if spec.on_kernel_ready is not None:
            spec.on_kernel_ready(time.monotonic() - job.started)
        if bar is not None:
            bar.update(1)
        if notebook is not None:
            outcome, result_json = await execute_notebook(job, client, job_file_seen, notebook)
        else:
            outcome, result_json = await execute(job, client, job_file_seen, bar)
        if "result_ref" in outcome and spec.artifact_dir is not None:
            spec.artifact_dir.mkdir(parents=True, exist_ok=True)
            os.replace(job_dir / _ARTIFACT, spec.artifact_dir / f"{spec.job_id}.parquet")
        return job.envelope(outcome, result_json)
    except AnalysisError as exc:
        failed = {"success": False, **exc.to_dict(), "stack": None}
        finish_notebook(notebook, failed)
        return job.envelope(failed)
    except asyncio.CancelledError:  # the caller cancelled the job (Ctrl-C, SIGTERM, task.cancel())
        cancelled = JobCancelledError("The job was cancelled before it finished; its kernel was stopped.")
        finish_notebook(notebook, {"success": False, **cancelled.to_dict()})
        if on_cancelled is not None:
            on_cancelled(job.envelope({"success": False, **cancelled.to_dict(), "stack": None}))
        raise
    except Exception as exc:  # a fault of the runner itself: still an envelope, never a traceback
        failed_cls = KernelStartError if job.kernel is None else KernelDiedError
        error = failed_cls(f"The runner failed while running the job: {type(exc).__name__}: {exc}")
        failed = {"success": False, **error.to_dict(), "stack": None}
        finish_notebook(notebook, failed)
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
