"""A job's specification and its running state: :class:`JobSpec`, :class:`Job`, the default limits.

:class:`JobSpec` is everything one job needs, as the caller gives it (a frozen dataclass; ``None``
limits are disabled). :class:`Job` is the state of one running job: its kernel, job directory and
captured logs, the time left to its deadline, the disk check, and how its outcome or fault becomes
the envelope (:class:`~analysis.runner.envelope.JobResult`) and the error that says which limit
fired. Running the job is :mod:`analysis.runner.jobs`; talking to its kernel,
:mod:`analysis.runner.job_kernel`.
"""

from __future__ import annotations

import signal
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from analysis.artifacts import DEFAULT_MAX_ARTIFACT_BYTES
from analysis.errors import (
    AnalysisError,
    InvalidParametersError,
    JobTimeoutError,
    KernelDiedError,
    ResourceLimitError,
)
from analysis.results import DEFAULT_MAX_RESULT_BYTES, format_bytes, to_json_fragment
from analysis.runner.envelope import JobResult
from analysis.runner.jobdirs import disk_usage
from analysis.runner.kernels import KernelProcess
from analysis.runner.logbuffer import DEFAULT_MAX_LOG_BYTES, LogBuffer

__all__ = [
    "DEFAULT_MAX_DISK_BYTES",
    "DEFAULT_MAX_PROCESSES",
    "DEFAULT_MAX_TMP_BYTES",
    "DEFAULT_TIMEOUT_S",
    "Job",
    "JobSpec",
    "check_parameters",
]

#: The whole-run deadline (README, "The envelope").
DEFAULT_TIMEOUT_S = 300.0
#: Default disk limit of a job: its job directory, and any one file it writes.
DEFAULT_MAX_DISK_BYTES = 1024**3
#: Default size of a sandboxed job's private ``/tmp``.
DEFAULT_MAX_TMP_BYTES = 512 * 1024**2
#: Default limit of processes (and threads) of a sandboxed job.
DEFAULT_MAX_PROCESSES = 256
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


class Job:
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


def check_parameters(parameters: Any) -> None:
    """Refuse parameters that are not a JSON object with string names (``InvalidParametersError``)."""
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
