"""The environment cache: killed builds, concurrent first runs, LRU eviction, validate, the CLI."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from analysis.runner.cli import main
from analysis.runner.deps import DepsSettings, Requirements, list_environments, prepare, prune

pytestmark = pytest.mark.slow


def _script(folder: Path, name: str, dependency: str) -> Path:
    path = folder / f"{name}.py"
    path.write_text(
        f'# /// script\n# dependencies = ["{dependency}"]\n# ///\ndef run(ctx, parameters):\n    return 1\n'
    )
    return path


def _deps_build(path: Path) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "analysis.runner.cli", "deps", "build", str(path)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )


def test_a_build_killed_halfway_leaves_nothing_and_the_next_builds_cleanly(
    tmp_path: Path, deps_env: DepsSettings, slow_uv: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SLOW_UV_SLEEP", "600")
    path = _script(tmp_path, "a", "tinypkg==2.0")
    builder = _deps_build(path)
    give_up = time.monotonic() + 60
    while not (slow_uv / "installing").exists():  # the venv exists, its packages are being installed
        assert builder.poll() is None and time.monotonic() < give_up, builder.communicate()
        time.sleep(0.05)
    victims = psutil.Process(builder.pid).children(recursive=True)
    uv = psutil.Process(builder.pid).children()
    try:
        builder.send_signal(signal.SIGKILL)  # the runner dies...
        builder.communicate()
        _, alive = psutil.wait_procs(uv, timeout=10)
        assert alive == [], "the uv the runner started outlived it"  # ...and so does the uv it started
    finally:
        for proc in victims:  # the wrapper's own `sleep`
            with contextlib.suppress(psutil.NoSuchProcess):
                proc.kill()
        psutil.wait_procs(victims, timeout=5)
    assert list_environments(deps_env) == []
    assert [p.name for p in (deps_env.cache_dir / "envs").iterdir()] == []
    assert list((deps_env.cache_dir / "tmp").iterdir()) != []  # what the killed build left aside

    monkeypatch.setenv("SLOW_UV_SLEEP", "0")
    lease = asyncio.run(prepare(Requirements(("tinypkg==2.0",)), DepsSettings.from_env()))
    lease.release()
    assert lease.built
    assert list((deps_env.cache_dir / "tmp").iterdir()) == []  # the leftovers are gone
    done = subprocess.run(
        [lease.python, "-c", "import tinypkg, analysis; print(tinypkg.__version__)"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert done.stdout.strip() == "2.0"


def test_concurrent_first_runs_build_once(
    tmp_path: Path, deps_env: DepsSettings, slow_uv: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SLOW_UV_SLEEP", "2")
    path = _script(tmp_path, "a", "tinypkg==1.0")
    first = _deps_build(path)
    while not (slow_uv / "installing").exists():  # the first is building...
        assert first.poll() is None, first.communicate()
        time.sleep(0.05)
    second = _deps_build(path)  # ...when the second asks for the same environment
    outputs = [p.communicate(timeout=120)[0] for p in (first, second)]
    assert first.returncode == second.returncode == 0, outputs
    assert outputs[0].startswith("built: ") and outputs[1].startswith("cached: "), outputs
    assert outputs[0].split()[1] == outputs[1].split()[1]
    assert (slow_uv / "calls.txt").read_text().count("venv") == 1
    assert len(list_environments(deps_env)) == 1


def test_eviction_removes_least_recently_used_environments_but_never_one_in_use(
    deps_env: DepsSettings,
) -> None:
    leases = []
    for n, when in ((1, 1000.0), (2, 2000.0), (3, 3000.0)):  # other1 oldest ... other3 newest
        lease = asyncio.run(prepare(Requirements((f"other{n}",)), deps_env))
        assert lease.path is not None
        os.utime(lease.path / "analysis-env.json", (when, when))
        leases.append(lease)
    for lease in leases[1:]:
        lease.release()
    in_use, lru, newest = (lease.path for lease in leases)
    envs = list_environments(deps_env)
    assert [e.path for e in envs] == [newest, lru, in_use] and envs[2].in_use
    total = sum(e.size_bytes for e in envs)

    removed = prune(deps_env, max_bytes=total - 1)  # one must go: the oldest is in use, so the next
    assert [e.path for e in removed] == [lru]
    assert in_use is not None and in_use.is_dir() and newest is not None and newest.is_dir()
    assert [e.path for e in prune(deps_env, max_bytes=0)] == [newest]
    assert in_use.is_dir()  # still in use: kept although the cache is over budget

    leases[0].release()
    assert [e.path for e in prune(deps_env, max_bytes=0)] == [in_use]
    assert list_environments(deps_env) == []


def test_validate_reports_a_conflict_before_anything_runs(
    tmp_path: Path, deps_env: DepsSettings, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "a.py"
    path.write_text(
        '# /// script\n# dependencies = ["tinypkg==1.0", "tinydep"]\n# ///\n'
        "def run(ctx, parameters):\n    return 1\n"
    )
    assert main(["validate", str(path)]) == 1
    out = capsys.readouterr().out
    assert "tinydep" in out and "tinypkg>=2" in out and "tinypkg==1.0" in out, out
    assert list_environments(deps_env) == []
    good = _script(tmp_path, "b", "tinypkg==1.0")
    assert main(["validate", str(good)]) == 0
    assert "its dependencies resolve (1 package added" in capsys.readouterr().out


def test_deps_list_and_prune_show_the_cache(
    tmp_path: Path, deps_env: DepsSettings, capsys: pytest.CaptureFixture[str]
) -> None:
    path = _script(tmp_path, "a", "other1")
    assert main(["deps", "build", str(path)]) == 0
    built = capsys.readouterr().out
    assert built.startswith("built: ")
    assert main(["deps", "build", str(path)]) == 0
    assert capsys.readouterr().out.startswith("cached: ")
    assert main(["deps", "list"]) == 0
    listed = capsys.readouterr().out
    assert "other1" in listed and built.split()[1].rsplit("/", 1)[1] in listed
    assert main(["deps", "prune", "--max-bytes", "0"]) == 0
    assert capsys.readouterr().out.startswith("removed ")
    assert list_environments(deps_env) == []


def test_pip_find_links_is_enough_to_resolve_offline(
    tmp_path: Path, wheelhouse: Path, deps_env: DepsSettings, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("UV_FIND_LINKS")
    path = _script(tmp_path, "a", "tinypkg==2.0")
    assert main(["validate", str(path)]) == 1  # offline, with nowhere to find it
    monkeypatch.setenv("PIP_FIND_LINKS", str(wheelhouse))
    assert main(["validate", str(path)]) == 0
