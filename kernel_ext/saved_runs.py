"""Saved analyses from inside a notebook: ``%analysis run``, ``validate`` and ``jobs``.

A saved analysis runs through the real runner (a fresh kernel, the real deadline and limits),
on a worker thread with its own event loop, because the notebook's kernel already runs one. An
interrupt of the notebook cell cancels the job, which stops its kernel.
"""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any

from analysis.errors import InvalidAnalysisError

if TYPE_CHECKING:
    from analysis.runner.envelope import JobResult

__all__ = ["run_saved", "validate_saved"]


def run_saved(
    root: Path, project_id: str, analysis_id: str, parameters: dict[str, Any], **options: Any
) -> JobResult:
    """Run saved analysis ``analysis_id`` in a fresh kernel and wait for its result."""
    from analysis.runner import AnalysisService

    service = AnalysisService(root=root)
    loop = asyncio.new_event_loop()
    outcome: dict[str, Any] = {}

    def work() -> None:
        asyncio.set_event_loop(loop)
        task = loop.create_task(
            service.submit_analysis_job_async(
                analysis_id, parameters, "notebook", project_id=project_id, **options
            )
        )
        outcome["task"] = task
        started.set()
        outcome["result"] = loop.run_until_complete(task)

    started = threading.Event()
    worker = threading.Thread(target=work, name=f"analysis-run-{analysis_id}", daemon=True)
    worker.start()
    try:
        while worker.is_alive():
            worker.join(0.1)
    except KeyboardInterrupt:  # the cell was interrupted: cancel the job, which stops its kernel
        started.wait()
        loop.call_soon_threadsafe(outcome["task"].cancel)
        worker.join()
    finally:
        loop.close()
    result: JobResult = outcome["result"]
    return result


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
