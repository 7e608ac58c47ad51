"""Talking to a job's kernel: waiting until it is ready, running code, reading the outcome.

:func:`wait_ready` waits for a started kernel to answer on shell and iopub (or says why it could
not start). :func:`run_code` sends one execute request and reads iopub until the kernel is idle
(or, for a script, until the job's outcome arrives), keeping stream text in the job's logs and
enforcing the deadline: at the deadline the kernel is interrupted, past the grace period it is
killed. A script job is one such request (:func:`execute`); a notebook job is one per code cell
(:func:`execute_notebook`), the output notebook written after every cell. :func:`outcome_of`
turns what the kernel published into the outcome's fields and the result's exact JSON text.
"""

from __future__ import annotations

import json
import queue
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

from analysis.errors import AnalysisError, KernelStartError, OutOfMemoryError
from analysis.results import OUTCOME_MIME, format_bytes
from analysis.runner.job_spec import Job
from analysis.runner.kernel_messages import connected
from analysis.runner.notebooks import NotebookRun, error_stack

__all__ = [
    "CodeRun",
    "execute",
    "execute_notebook",
    "finish_notebook",
    "outcome_of",
    "run_code",
    "steps_bar",
    "wait_ready",
]

_POLL_S = 0.1


async def wait_ready(job: Job, client: Any) -> None:
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
    job: Job,
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


async def execute(job: Job, client: Any, job_file: str, bar: Any) -> tuple[dict[str, Any], str]:
    """Run a script job in the ready kernel; return the outcome and the result's JSON text."""
    code = f"__import__('analysis.execute').execute.run_job({job_file!r})"
    if bar is not None:
        bar.set_description_str("analysis: running")
    outcome = outcome_of(job, await run_code(job, client, code, until_outcome=True), job.job_dir or Path())
    if bar is not None:
        bar.update(1)
    return outcome


def outcome_of(job: Job, run: CodeRun, job_dir: Path) -> tuple[dict[str, Any], str]:
    """The outcome a finished code run published (timeouts and internal failures raise)."""
    if run.interrupted:
        raise job.timeout_error(killed=False)
    if run.outcome_text is None:
        error = run.error
        detail = f"{error.get('ename')}: {error.get('evalue')}" if error else "no outcome"
        raise AnalysisError(f"The kernel could not run the job ({detail}); is analysis installed in it?")
    return _parse_outcome(run.outcome_text, job_dir)


async def execute_notebook(
    job: Job, client: Any, job_file: str, run: NotebookRun
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


def finish_notebook(notebook: NotebookRun | None, outcome: dict[str, Any]) -> None:
    """Record a failed job's outcome in its output notebook, if it can still be written."""
    if notebook is not None:
        try:
            notebook.finish(outcome)
        except AnalysisError:  # the output notebook cannot be written: the envelope says why
            pass


def _progress_bar(total: int) -> Any:
    """A progress bar on stderr for a notebook job's ``total`` code cells."""
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


def steps_bar() -> Any:
    """A progress bar on stderr for a script job's two steps (starting the kernel, running)."""
    from tqdm import tqdm

    return tqdm(total=2, unit="step", file=sys.stderr, desc="analysis: starting kernel", leave=True)
