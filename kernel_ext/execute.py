"""Running one analysis inside the kernel: load it, call ``run``, turn the outcome into data.

Used by the headless runner (``run_job``, called with a job document's path by a fixed line of
code) and by the ``%%analysis`` magic (``run_analysis``), so both give the same results, limits
and error types. The outcome is a JSON document::

    {"success": true, "result": <json>}
    {"success": false, "error": str, "error_type": str, "stack": str | null}
"""

from __future__ import annotations

import _thread
import asyncio
import dataclasses
import errno
import inspect
import json
import linecache
import signal
import threading
import traceback
from collections.abc import Callable, Mapping
from pathlib import Path
from types import TracebackType
from typing import Any

from analysis.artifacts import encode_outcome
from analysis.config import Settings
from analysis.context import Context
from analysis.deadline import Deadline
from analysis.errors import (
    AnalysisError,
    InvalidAnalysisError,
    JobCancelledError,
    JobTimeoutError,
    OutOfMemoryError,
    ResourceLimitError,
    ResultError,
)
from analysis.results import OUTCOME_MIME, format_bytes
from analysis.validate import check_run_signature, validate_source

__all__ = [
    "Watchdog",
    "context_from_job",
    "failure",
    "describe_failure",
    "load_run",
    "publish",
    "read_job",
    "run_analysis",
    "run_job",
    "user_traceback",
]


#: Outcomes larger than this go to a file in the job directory instead of the message.
INLINE_OUTCOME_BYTES = 1024 * 1024


def load_run(source: str, filename: str) -> Callable[..., Any]:
    """Execute the analysis module's source and return its ``run`` function."""
    validate_source(source, filename)
    linecache.cache[filename] = (len(source), None, source.splitlines(True), filename)
    namespace: dict[str, Any] = {"__name__": "__analysis__", "__file__": filename}
    exec(compile(source, filename, "exec"), namespace)
    run = namespace.get("run")
    if run is None:
        raise InvalidAnalysisError(
            f"The analysis {filename} defines no top-level function run(ctx, parameters)."
        )
    check_run_signature(run, filename)
    return run  # type: ignore[no-any-return]


def _run_coroutine(coro: Any) -> Any:
    """Drive an ``async def run`` to completion on this thread, even inside a kernel's running loop."""
    running = asyncio.events._get_running_loop()
    asyncio.events._set_running_loop(None)
    loop = asyncio.new_event_loop()
    try:
        return loop.run_until_complete(coro)
    finally:
        try:
            loop.run_until_complete(loop.shutdown_asyncgens())
        finally:
            loop.close()
            asyncio.events._set_running_loop(running)


class Watchdog:
    """Stops the analysis at its deadline: cancels DuckDB and datasource queries, interrupts Python.

    ``interrupt_main`` raises ``KeyboardInterrupt`` in the main thread at its next bytecode,
    which is how ``%%analysis --timeout`` stops a cell and leaves the kernel usable. The headless
    runner also signals the kernel and, if that is ignored, kills it.
    """

    def __init__(self, ctx: Context, deadline: Deadline, *, interrupt_main: bool) -> None:
        self._ctx = ctx
        self._deadline = deadline
        self._interrupt_main = interrupt_main
        self._done = threading.Event()
        self.fired = False
        self._thread = threading.Thread(target=self._watch, name="analysis-watchdog", daemon=True)

    def __enter__(self) -> Watchdog:
        if self._deadline.at is not None:
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._done.set()
        if self._thread.is_alive():
            self._thread.join()

    def _watch(self) -> None:
        remaining = self._deadline.remaining_s()
        if remaining is None or self._done.wait(remaining):
            return
        self.fired = True
        self._ctx.interrupt()
        if self._interrupt_main:
            _thread.interrupt_main()


def user_traceback(exc: BaseException, filename: str | None) -> str:
    """The traceback from the analysis's own first frame on (our and IPython's frames dropped).

    ``filename`` is the analysis's file; ``None`` (a notebook cell) starts at the first frame
    outside IPython and this package.
    """
    tb: TracebackType | None = exc.__traceback__
    while tb is not None and not _is_user_frame(tb.tb_frame.f_code.co_filename, filename):
        tb = tb.tb_next
    lines = traceback.format_exception(type(exc), exc, tb if tb is not None else exc.__traceback__)
    return "".join(lines).rstrip("\n")


_OWN_DIR = str(Path(__file__).parent)


def _is_user_frame(co_filename: str, filename: str | None) -> bool:
    if filename is not None:
        return co_filename == filename
    return not co_filename.startswith(_OWN_DIR) and "/IPython/" not in co_filename


def failure(error: AnalysisError, stack: str | None) -> dict[str, Any]:
    return {"success": False, **error.to_dict(), "stack": stack}


def _describe(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def describe_failure(
    exc: BaseException,
    ctx: Context,
    filename: str | None,
    *,
    timed_out: bool = False,
    interrupted: bool = True,
) -> dict[str, Any]:
    """The outcome of an analysis that raised ``exc``: its error type, sentence and traceback.

    ``interrupted`` says whether an interrupt (SIGINT) arrived: a ``KeyboardInterrupt`` without
    one is the analysis raising it (``analysis_error``), not a cancellation. The sentence and the
    traceback are scrubbed of every secret the job holds (``ctx.redactor``).
    """
    return ctx.redactor.scrub_outcome(
        _describe_failure(exc, ctx, filename, timed_out=timed_out, interrupted=interrupted)
    )


def _describe_failure(
    exc: BaseException, ctx: Context, filename: str | None, *, timed_out: bool, interrupted: bool
) -> dict[str, Any]:
    deadline = ctx.deadline
    if timed_out or (isinstance(exc, KeyboardInterrupt | JobTimeoutError) and deadline.expired()):
        err: AnalysisError = JobTimeoutError(f"The analysis ran past {deadline.describe()} and was stopped.")
        return failure(err, user_traceback(exc, filename))
    if isinstance(exc, KeyboardInterrupt) and interrupted:
        return failure(JobCancelledError("The analysis was interrupted before it finished."), None)
    hit = _limit_hit(exc, ctx)
    if hit:
        return failure(ResourceLimitError(hit), user_traceback(exc, filename))
    if isinstance(exc, MemoryError):
        limit = ctx.max_memory_bytes
        where = f" of {format_bytes(limit)} (max_memory_bytes)" if limit else ""
        err = OutOfMemoryError(f"The analysis ran out of memory: an allocation failed at the limit{where}.")
        return failure(err, user_traceback(exc, filename))
    if isinstance(exc, SystemExit):
        message = f"The analysis called sys.exit({exc.code!r}); return a value from run instead."
        return failure(AnalysisError(message), user_traceback(exc, filename))
    if isinstance(exc, ResultError):  # about the returned value, not a line of the analysis
        return failure(exc, None)
    if isinstance(exc, AnalysisError):
        return failure(exc, user_traceback(exc, filename))
    message = f"The analysis raised {_describe(exc)}"
    return failure(AnalysisError(message), user_traceback(exc, filename))


def _limit_hit(exc: BaseException, ctx: Context) -> str | None:
    """The sentence naming the job limit (disk, /tmp, processes) that ``exc`` ran into, if any."""
    processes = ctx.job_limits.get("max_processes")
    no_thread = isinstance(exc, RuntimeError) and "can't start new thread" in str(exc)
    no_fork = isinstance(exc, BlockingIOError) and exc.errno == errno.EAGAIN and exc.filename is None
    if processes and (no_thread or no_fork):
        return (
            f"The analysis could not start another process or thread: the job may run at most "
            f"{processes} (max_processes)."
        )
    if not isinstance(exc, OSError):
        return None
    disk, tmp = ctx.job_limits.get("max_disk_bytes"), ctx.job_limits.get("max_tmp_bytes")
    if exc.errno == errno.EFBIG and disk:
        return (
            f"The analysis wrote a file past its disk limit of {format_bytes(disk)} "
            f"(max_disk_bytes): {exc.strerror}."
        )
    in_tmp = exc.filename is None or str(exc.filename).startswith("/tmp")
    if exc.errno in (errno.ENOSPC, errno.EDQUOT) and tmp and in_tmp:
        return (
            f"The analysis filled its /tmp, limited to {format_bytes(tmp)} (max_tmp_bytes): {exc.strerror}."
        )
    return None


class _InterruptSeen:
    """Notes whether SIGINT arrived (an interrupt) while installed; chains to the previous handler."""

    def __init__(self) -> None:
        self.seen = False
        self._previous: Any = None
        self._installed = False

    def _handler(self, signum: int, frame: Any) -> None:
        self.seen = True
        previous = self._previous
        if callable(previous):
            previous(signum, frame)
        else:
            raise KeyboardInterrupt

    def __enter__(self) -> _InterruptSeen:
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGINT, self._handler)
            self._installed = True
        else:  # cannot tell: treat every KeyboardInterrupt as an interrupt
            self.seen = True
        return self

    def __exit__(self, *exc: object) -> None:
        if self._installed:
            signal.signal(signal.SIGINT, self._previous)


def run_analysis(
    run: Callable[..., Any],
    ctx: Context,
    *,
    filename: str,
    max_result_bytes: int | None,
    interrupt_main: bool,
    artifact: dict[str, Any] | None = None,
) -> tuple[dict[str, Any], bytes | None]:
    """Call ``run(ctx, ctx.parameters)`` under the context's deadline and encode the result.

    Returns the outcome without its result, and the encoded result (``None`` on failure).
    Never raises for anything the analysis did.
    """
    watchdog = Watchdog(ctx, ctx.deadline, interrupt_main=interrupt_main)
    sigint = _InterruptSeen()
    try:
        with sigint, watchdog, ctx.redactor.streams():
            value = run(ctx, ctx.parameters)
            if inspect.isawaitable(value):
                value = _run_coroutine(value)
        return encode_outcome(value, max_bytes=max_result_bytes, artifact=artifact)
    except BaseException as exc:
        return describe_failure(exc, ctx, filename, timed_out=watchdog.fired, interrupted=sigint.seen), None


def publish(outcome: dict[str, Any], result: bytes | None, result_path: Path) -> None:
    """Send the outcome as one display message of ``OUTCOME_MIME`` (large ones via a file)."""
    from IPython.display import publish_display_data

    head = json.dumps(outcome)
    text = head if result is None else head[:-1] + ', "result": ' + result.decode() + "}"
    if len(text) > INLINE_OUTCOME_BYTES:
        result_path.write_text(text, encoding="utf-8")
        text = json.dumps({"outcome_file": result_path.name})
    publish_display_data({OUTCOME_MIME: text})


def context_from_job(job: Mapping[str, Any]) -> Context:
    """The ``Context`` a job document describes."""
    settings = Settings.from_env()
    if job.get("root"):  # the runner's projects root, not this process's working directory
        settings = dataclasses.replace(settings, root=Path(job["root"]))
    if job.get("datasources_file"):
        settings = dataclasses.replace(settings, datasources_file=Path(job["datasources_file"]))
    access = None
    if job.get("broker"):  # datasources and files go through the runner's broker
        from analysis.broker_client import BrokerAccess

        access = BrokerAccess(Path(job["job_dir"]) / Path(job["broker"]).name)
    ctx = Context(
        project_id=job["project_id"],
        job_id=job["job_id"],
        parameters=job["parameters"],
        settings=settings,
        deadline=Deadline(job.get("deadline_at"), job.get("timeout_s")),
        access=access,
    )
    ctx.max_memory_bytes = job.get("max_memory_bytes")
    ctx.job_limits = {key: job.get(key) for key in ("max_disk_bytes", "max_tmp_bytes", "max_processes")}
    if job.get("job_dir"):
        ctx.lock_down(Path(job["job_dir"]))
    return ctx


def read_job(job_file: str) -> dict[str, Any]:
    """The job document the runner wrote."""
    document: dict[str, Any] = json.loads(Path(job_file).read_text(encoding="utf-8"))
    document["job_dir"] = str(Path(job_file).parent)  # where relative paths in it point
    return document


def run_job(job_file: str) -> None:
    """Run the script job described by the JSON document ``job_file`` and publish its outcome."""
    job = read_job(job_file)
    ctx = context_from_job(job)
    filename = job["source_path"]
    try:
        outcome, result = _run_loaded_job(job, ctx, filename)
    finally:
        ctx.close(duckdb=False)
    publish(ctx.redactor.scrub_outcome(outcome), result, Path(job_file).with_name("outcome.json"))
    # The runner has what it waits for and discards this kernel: freeing DuckDB's in-memory
    # database (its threads joined) is off the job's time, and may not even happen.
    ctx.close()


def _run_loaded_job(
    job: Mapping[str, Any], ctx: Context, filename: str
) -> tuple[dict[str, Any], bytes | None]:
    """Load the analysis and run it; what it prints is scrubbed of the job's secrets."""
    with ctx.redactor.streams():
        try:
            run = load_run(Path(filename).read_text(encoding="utf-8"), filename)
        except InvalidAnalysisError as exc:
            return failure(exc, None), None
        except BaseException as exc:
            err = AnalysisError(f"The analysis failed while loading: {_describe(exc)}")
            return failure(err, user_traceback(exc, filename)), None
        return run_analysis(
            run,
            ctx,
            filename=filename,
            max_result_bytes=job.get("max_result_bytes"),
            interrupt_main=False,
            artifact=job.get("artifact"),
        )
