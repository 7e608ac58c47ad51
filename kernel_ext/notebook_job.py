"""The kernel side of a headless notebook run: ``ctx`` for the cells, the outcome at the end.

The runner executes, in order: ``start(job_file)``; the notebook's code cells (with an
injected-parameters cell, ``globals().update(ctx.parameters)``, after the cell tagged
``parameters``); then ``finish()``, which publishes the outcome: the value the notebook gave to
``ctx.set_result`` (``null`` if it never did), encoded and size-checked like a script's result.
When a cell fails, the runner calls ``describe_error()`` instead, which publishes the failure
with the error type of the exception the cell raised.

In Jupyter, ``%load_ext analysis`` takes its project and datasources from the kernel's
environment; ``start`` sets them there from the job document, so the notebook's own
``%%analysis`` cells run in the job's project with the job's datasources, as ``ctx`` does.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

from analysis.artifacts import encode_outcome
from analysis.context import Context
from analysis.execute import Watchdog, context_from_job, describe_failure, failure, publish, read_job

__all__ = ["describe_error", "finish", "start"]

_STATE = "__analysis_notebook_job__"


def _shell() -> Any:
    from IPython import get_ipython

    shell = get_ipython()
    if shell is None:  # pragma: no cover - only ever called inside a kernel
        raise RuntimeError("analysis.notebook_job runs inside an IPython kernel")
    return shell


def start(job_file: str) -> None:
    """Create the job's ``ctx`` in the notebook namespace and arm the deadline watchdog."""
    job = read_job(job_file)
    ctx = context_from_job(job)
    os.environ["ANALYSIS_PROJECT_ID"] = ctx.project_id
    os.environ["ANALYSIS_DATASOURCES_FILE"] = str(ctx.settings.datasources_path(ctx.project_id))
    if job.get("broker"):  # the notebook's own %%analysis cells reach datasources through it too
        os.environ["ANALYSIS_BROKER_SOCKET"] = str(Path(job["job_dir"]) / Path(job["broker"]).name)
    watchdog = Watchdog(ctx, ctx.deadline, interrupt_main=False)
    watchdog.__enter__()
    shell = _shell()
    shell.user_ns["ctx"] = ctx
    shell.user_ns_hidden[_STATE] = (ctx, watchdog, job, job_file)


def _end() -> tuple[Context, Watchdog, dict[str, Any], str]:
    ctx, watchdog, job, job_file = _shell().user_ns_hidden.pop(_STATE)
    watchdog.__exit__(None, None, None)
    return ctx, watchdog, job, job_file


def finish() -> None:
    """Publish the notebook's result (``ctx.set_result``), encoded and size-checked; close ``ctx``."""
    ctx, _, job, job_file = _end()
    try:
        outcome, result = encode_outcome(
            ctx.result, max_bytes=job.get("max_result_bytes"), artifact=job.get("artifact")
        )
    except BaseException as exc:
        outcome, result = describe_failure(exc, ctx, None), None
    finally:
        ctx.close()
    publish(outcome, result, Path(job_file).with_name("outcome.json"))


def describe_error() -> None:
    """Publish the failure of the cell that just raised; close ``ctx``."""
    ctx, watchdog, _, job_file = _end()
    try:
        exc = getattr(sys, "last_exc", None) or getattr(sys, "last_value", None)
        if exc is None:
            from analysis.errors import AnalysisError

            outcome = failure(AnalysisError("A cell failed without an exception the kernel kept."), None)
        else:
            outcome = describe_failure(exc, ctx, None, timed_out=watchdog.fired)
    finally:
        ctx.close()
    publish(outcome, None, Path(job_file).with_name("outcome.json"))
