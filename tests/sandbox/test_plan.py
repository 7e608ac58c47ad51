"""The sandbox's mount plan: what is bound where, in an order that hides nothing the job needs."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from analysis.runner import sandbox


@pytest.mark.skipif(shutil.which("bwrap") is None, reason="bubblewrap is not installed")
def test_python_and_analysis_environments_are_bound_after_the_private_tmp(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A checkout or an analysis environment under /tmp (CI clones into any folder) stays visible.

    bubblewrap applies mounts in order: a tmpfs on /tmp after a bind under /tmp hid the venv, and
    every sandboxed job of a checkout under /tmp failed with "execvp .../python: No such file".
    """
    env, venv = tmp_path / "env", tmp_path / "checkout" / ".venv"
    env.mkdir()
    venv.mkdir(parents=True)
    monkeypatch.setattr(sandbox, "_python_paths", lambda: [venv.resolve()])  # a clone under /tmp
    plan = sandbox.plan(["python"], job_dir=tmp_path, max_tmp_bytes=None, read_only=[env])
    try:
        argv = plan.argv
        tmpfs = argv.index("/tmp", argv.index("--tmpfs"))
        binds = [argv[i + 2] for i, arg in enumerate(argv) if arg == "--ro-bind"]
        assert str(env.resolve()) in binds and str(venv.resolve()) in binds
        for i, arg in enumerate(argv):
            if arg == "--ro-bind" and argv[i + 2].startswith("/tmp/"):
                assert i > tmpfs, f"{argv[i + 2]} is bound before /tmp's tmpfs, which hides it"
    finally:
        plan.close_fds()
