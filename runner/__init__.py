"""``analysis.runner``: run saved analyses headless in fresh kernels and return the JSON envelope.

Importing it is light: no DuckDB, no IPython.
"""

from __future__ import annotations

from analysis.runner.envelope import JobResult
from analysis.runner.jobs import JobSpec, run_job, run_job_async
from analysis.runner.service import AnalysisService

__all__ = ["AnalysisService", "JobResult", "JobSpec", "run_job", "run_job_async"]
