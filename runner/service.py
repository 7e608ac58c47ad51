"""``AnalysisService``: run a project's saved analyses by id (README, "Headless: the runner")."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from analysis.errors import InvalidAnalysisError, InvalidParametersError
from analysis.params import check_id
from analysis.runner.envelope import JobResult
from analysis.runner.jobs import JobSpec, run_job_async, want_pool
from analysis.validate import validate_source

if TYPE_CHECKING:
    from analysis.runner.pool import KernelPool

__all__ = ["AnalysisService", "validate_file"]


def validate_file(path: Path) -> str:
    """Check the analysis at ``path`` without running it; what it is, or ``InvalidAnalysisError``.

    A script must parse and define a top-level ``run(ctx, parameters)``; a notebook must be an
    nbformat 4 notebook whose ``parameters`` cell (if any) parses.
    """
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise InvalidAnalysisError(f"The analysis {path} cannot be read: {exc.strerror}.") from None
    except UnicodeDecodeError:
        raise InvalidAnalysisError(f"The analysis {path} is not UTF-8 text.") from None
    if path.suffix == ".ipynb":
        from analysis.runner.notebooks import NotebookRun, load_notebook

        notebook = load_notebook(path)
        NotebookRun(notebook, {})  # checks the parameters cell
        cells = sum(cell.get("cell_type") == "code" for cell in notebook["cells"])
        return f"a notebook of {cells} code cells"
    validate_source(text, str(path))
    return "a script defining run(ctx, parameters)"


class AnalysisService:
    """Runs saved analyses ``{root}/{project_id}/analysis/scripts/{analysis_id}.py`` (or ``.ipynb``).

    Parameters
    ----------
    root
        Root folder of the projects.
    pool_size
        Warm kernels kept ready per project (and launch settings, and dependency environment)
        that ran a job; ``0`` (the default): every job starts a fresh kernel (README, "Warm
        kernels"). Call :meth:`close` (or use the service as a context manager) to stop the
        pool's kernels.
    pool_environments
        With a pool: how many dependency environments keep warm kernels at once, the most
        recently used (default 4; the runtime's own environment is not counted).
    **job_options
        Defaults for every job (``timeout_s``, ``max_result_bytes``, ``max_log_bytes``,
        ``interrupt_grace_s``, ...; see :class:`~analysis.runner.jobs.JobSpec`).
    """

    def __init__(
        self,
        root: str | Path = ".clients",
        *,
        pool_size: int = 0,
        pool_environments: int = 4,
        **job_options: Any,
    ) -> None:
        self.root = Path(root)
        self.job_options = job_options
        self.pool: KernelPool | None = None
        if pool_size:
            from analysis.runner.pool import KernelPool

            self.pool = KernelPool(pool_size, max_environments=pool_environments)

    def warm_up(self, project_id: str = "default", **job_options: Any) -> None:
        """Start warm kernels for ``project_id`` now, for jobs with these options (needs ``pool_size``)."""
        if self.pool is None:
            raise ValueError("warm_up needs a kernel pool: AnalysisService(pool_size=N).")
        check_id(project_id, "Project id")
        spec = JobSpec(
            source_path=Path("warm_up.py"),
            project_id=project_id,
            root=self.root,
            **{**self.job_options, **job_options},
        )
        want_pool(self.pool, spec)

    def close(self) -> None:
        """Stop the kernel pool: its idle kernels, and the pooled kernels of jobs still running."""
        if self.pool is not None:
            self.pool.close()

    def __enter__(self) -> AnalysisService:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def script_path(self, analysis_id: str, *, project_id: str = "default") -> Path:
        """Where the saved analysis lives: ``{id}.py``, else ``{id}.ipynb`` (ids are checked first)."""
        check_id(project_id, "Project id")
        check_id(analysis_id, "Analysis id")
        scripts = self.root / project_id / "analysis" / "scripts"
        script = scripts / f"{analysis_id}.py"
        notebook = scripts / f"{analysis_id}.ipynb"
        return notebook if notebook.is_file() and not script.is_file() else script

    async def submit_analysis_job_async(
        self,
        analysis_id: str,
        parameters: dict[str, Any] | None,
        trigger: str = "manual",
        *,
        project_id: str = "default",
        on_cancelled: Callable[[JobResult], None] | None = None,
        **job_options: Any,
    ) -> JobResult:
        """Run saved analysis ``analysis_id`` of ``project_id`` in a fresh kernel; see the sync form.

        When the task is cancelled, the kernel is stopped, ``on_cancelled`` (if given) receives the
        ``cancelled`` envelope, and ``CancelledError`` propagates.
        """
        started = time.monotonic()
        try:
            path = self.script_path(analysis_id, project_id=project_id)
        except ValueError as exc:
            return _refused(InvalidParametersError(str(exc)), started)
        if not path.is_file():
            return _refused(
                InvalidAnalysisError(
                    f"Project {project_id!r} has no saved analysis {analysis_id!r} ({path})."
                ),
                started,
            )
        try:
            spec = JobSpec(
                source_path=path,
                parameters=parameters if parameters is not None else {},
                project_id=project_id,
                root=self.root,
                trigger=trigger,
                **{**self.job_options, **job_options},
            )
        except TypeError as exc:  # an unknown job option
            return _refused(InvalidParametersError(f"Invalid job option: {exc}."), started)
        return await run_job_async(spec, on_cancelled=on_cancelled, pool=self.pool)

    def submit_analysis_job(
        self,
        analysis_id: str,
        parameters: dict[str, Any] | None,
        trigger: str = "manual",
        *,
        project_id: str = "default",
        **job_options: Any,
    ) -> JobResult:
        """Run saved analysis ``analysis_id`` of ``project_id`` in a fresh kernel.

        Parameters
        ----------
        analysis_id, project_id
            Ids matching ``[A-Za-z0-9_-]{1,64}``; anything else is refused before any file
            or kernel is touched (``invalid_parameters``).
        parameters
            The job's parameters, a JSON object.
        trigger
            What started the job (``manual``, ``schedule``, ``api``...).
        **job_options
            Per-job overrides of ``timeout_s``, ``max_result_bytes`` and the other
            :class:`~analysis.runner.jobs.JobSpec` options.

        Returns
        -------
        JobResult
            The envelope; failures are results too, never exceptions.
        """

        async def submit() -> JobResult:
            cancelled: list[JobResult] = []
            try:
                return await self.submit_analysis_job_async(
                    analysis_id,
                    parameters,
                    trigger,
                    project_id=project_id,
                    on_cancelled=cancelled.append,
                    **job_options,
                )
            except asyncio.CancelledError:  # Ctrl-C: the cancelled envelope is the result
                if cancelled:
                    return cancelled[0]
                raise

        return asyncio.run(submit())


def _refused(error: InvalidParametersError | InvalidAnalysisError, started: float) -> JobResult:
    """The envelope of a job refused before any kernel started."""
    return JobResult(
        success=False,
        job_id=uuid.uuid4().hex,
        logs=[],
        duration_ms=int((time.monotonic() - started) * 1000),
        **error.to_dict(),
    )
