"""Analysis versions: every upload is an immutable version named by the SHA-256 of its content."""

from __future__ import annotations

import hashlib
import os
import re
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from analysis.errors import DependencyError, InvalidAnalysisError
from analysis.runner.server.errors import ApiError
from analysis.runner.server.store import Store
from analysis.runner.service import validate_file

__all__ = ["KINDS", "VERSION_PATTERN", "current_version", "save_version"]

KINDS = ("py", "ipynb")
#: A version: the SHA-256 of the source, in hex.
VERSION_PATTERN = re.compile(r"[0-9a-f]{64}")


def _digest(source: str) -> str:
    return hashlib.sha256(source.encode("utf-8")).hexdigest()


def save_version(
    store: Store,
    root: Path,
    project_id: str,
    analysis_id: str,
    *,
    source: str,
    kind: str,
    retries: int,
    resolve_dependencies: bool = False,
) -> tuple[dict[str, Any], bool]:
    """Validate and store ``source`` as a version, then make it the saved analysis on disk.

    With ``resolve_dependencies`` its declared packages are resolved first (README,
    "Dependencies per analysis"); this blocks, so call it from a worker thread.

    Returns the version (without its source) and whether it is new. Raises a 422 ``ApiError``
    (type ``invalid_analysis`` or ``dependency_error``) when the analysis does not validate or its
    dependencies do not resolve; nothing is stored then.
    """
    from analysis.runner.deps_cli import check_dependencies

    with tempfile.TemporaryDirectory(prefix="analysis-upload-") as folder:
        candidate = Path(folder) / f"{analysis_id}.{kind}"
        candidate.write_text(source, encoding="utf-8")
        try:
            validate_file(candidate)
            if resolve_dependencies:
                check_dependencies(candidate)
        except (InvalidAnalysisError, DependencyError) as exc:
            message = exc.message.replace(str(candidate), f"{analysis_id}.{kind}")
            raise ApiError(422, exc.error_type, message) from None
    version = _digest(source)
    row = {
        "project_id": project_id, "analysis_id": analysis_id, "version": version, "kind": kind,
        "source": source, "size_bytes": len(source.encode("utf-8")), "retries": retries,
        "created_at": time.time(),
    }  # fmt: skip
    created = store.put_version(row)
    _write_saved(root, project_id, analysis_id, source, kind)
    stored = store.get_version(project_id, analysis_id, version)
    assert stored is not None
    stored.pop("source")
    return stored, created


def _write_saved(root: Path, project_id: str, analysis_id: str, source: str, kind: str) -> None:
    """Replace the saved analysis file atomically (and remove one of the other kind)."""
    scripts = root / project_id / "analysis" / "scripts"
    scripts.mkdir(parents=True, exist_ok=True)
    partial = scripts / f".{analysis_id}.{uuid.uuid4().hex}.tmp"
    partial.write_text(source, encoding="utf-8")
    os.replace(partial, scripts / f"{analysis_id}.{kind}")
    for other in KINDS:
        if other != kind:
            (scripts / f"{analysis_id}.{other}").unlink(missing_ok=True)


def current_version(store: Store, root: Path, project_id: str, analysis_id: str) -> dict[str, Any]:
    """The version a job without a pinned version runs: the saved analysis file, as a version.

    A saved file edited on disk becomes a new version the first time a job runs it. Without a
    saved file, the newest stored version. 404 when the project has neither.
    """
    scripts = root / project_id / "analysis" / "scripts"
    for kind in KINDS:
        path = scripts / f"{analysis_id}.{kind}"
        if path.is_file():
            try:
                source = path.read_text(encoding="utf-8")
            except (OSError, UnicodeDecodeError) as exc:
                raise ApiError(
                    422, "invalid_analysis", f"The saved analysis {analysis_id!r} cannot be read: {exc}."
                ) from None
            version = store.get_version(project_id, analysis_id, _digest(source))
            if version is None:
                version, _ = save_version(
                    store, root, project_id, analysis_id, source=source, kind=kind, retries=0
                )
            return version
    versions = store.list_versions(project_id, analysis_id)
    if not versions:
        raise ApiError(404, "not_found", f"Project {project_id!r} has no analysis {analysis_id!r}.")
    return versions[0]
