"""Saved analyses from inside a notebook: ``%analysis run``, ``validate`` and ``jobs``.

A saved analysis runs through the real runner (a fresh kernel, the real deadline and limits),
on a worker thread with its own event loop, because the notebook's kernel already runs one. An
interrupt of the notebook cell cancels the job, which stops its kernel.
"""

from __future__ import annotations

import asyncio
import threading
import time
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any

from analysis.errors import InvalidAnalysisError, JobCancelledError

if TYPE_CHECKING:
    from analysis.runner.envelope import JobResult

__all__ = ["run_saved", "validate_saved"]


def run_saved(
    root: Path, project_id: str, analysis_id: str, parameters: dict[str, Any], **options: Any
) -> JobResult:
    """Run saved analysis ``analysis_id`` in a fresh kernel and wait for its result.

    An interrupt (the notebook's stop button) cancels the job, which stops its kernel, and the
    result is then the ``cancelled`` envelope.
    """
    from analysis.runner import AnalysisService

    service = AnalysisService(root=root)
    job_id = options.pop("job_id", None) or uuid.uuid4().hex
    loop = asyncio.new_event_loop()
    started = time.monotonic()
    outcome: dict[str, Any] = {}
    finished = threading.Event()
    task_ready = threading.Event()

    def work() -> None:
        try:
            asyncio.set_event_loop(loop)
            task = loop.create_task(
                service.submit_analysis_job_async(
                    analysis_id, parameters, "notebook", project_id=project_id, job_id=job_id, **options
                )
            )
            outcome["task"] = task
            task_ready.set()
            outcome["result"] = loop.run_until_complete(task)
        except asyncio.CancelledError:  # a runner that lets the cancellation through
            outcome["cancelled"] = True
        finally:
            task_ready.set()
            finished.set()

    worker = threading.Thread(target=work, name=f"analysis-run-{analysis_id}", daemon=True)
    worker.start()
    cancelling = False
    while True:
        # Event.wait, not Thread.join: an interrupted join can mark the thread as finished
        # while it still runs (Python 3.11), and the loop would be closed under it.
        try:
            if finished.wait(0.1):
                break
        except KeyboardInterrupt:  # the cell was interrupted: cancel the job, which stops its kernel
            if not cancelling:
                cancelling = True
                task_ready.wait()
                if "task" in outcome:
                    loop.call_soon_threadsafe(outcome["task"].cancel)
    worker.join()
    loop.close()
    if "result" in outcome:
        result: JobResult = outcome["result"]
        return result
    return _cancelled(job_id, started)


def _cancelled(job_id: str, started: float) -> JobResult:
    from analysis.runner import JobResult

    error = JobCancelledError("The job was cancelled before it finished; its kernel was stopped.")
    return JobResult(
        success=False,
        job_id=job_id,
        logs=[],
        duration_ms=int((time.monotonic() - started) * 1000),
        stack=None,
        trigger="notebook",
        **error.to_dict(),
    )


def validate_saved(root: Path, project_id: str, analysis_id: str) -> str:
    """Check saved analysis ``analysis_id`` without running it; its path, or ``InvalidAnalysisError``."""
    from analysis.runner.service import AnalysisService, validate_file

    try:
        path = AnalysisService(root=root).script_path(analysis_id, project_id=project_id)
    except ValueError as exc:
        raise InvalidAnalysisError(str(exc)) from None
    if not path.is_file():
        raise InvalidAnalysisError(f"Project {project_id!r} has no saved analysis {analysis_id!r} ({path}).")
    validate_file(path)
    return str(path)
