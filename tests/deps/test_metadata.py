"""Reading what an analysis declares: PEP 723 blocks, notebook metadata, project defaults."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from analysis.errors import DependencyError, InvalidAnalysisError
from analysis.runner.deps import Requirements, read_requirements

BLOCK = '# /// script\n# requires-python = ">=3.11"\n# dependencies = ["tinypkg==1.0", "other1"]\n# ///\n'


def test_a_script_block_gives_sorted_normalised_requirements(tmp_path: Path) -> None:
    path = tmp_path / "a.py"
    path.write_text(BLOCK + "def run(ctx, parameters):\n    return 1\n")
    assert read_requirements(path) == Requirements(("other1", "tinypkg==1.0"), (">=3.11",))


def test_a_script_without_block_needs_nothing(tmp_path: Path) -> None:
    path = tmp_path / "a.py"
    path.write_text("# /// other\n# x = 1\n# ///\ndef run(ctx, parameters):\n    return 1\n")
    assert not read_requirements(path)


@pytest.mark.parametrize(
    ("block", "problem"),
    [
        ('# /// script\n# dependencies = ["ok"\n# ///\n', "not valid TOML"),
        ('# /// script\n# dependencies = ["not a requirement!"]\n# ///\n', "is not valid"),
        ('# /// script\n# dependencies = "one"\n# ///\n', "must be a list of strings"),
        ('# /// script\n# requires-python = "three"\n# ///\n', "'requires-python'"),
        (BLOCK + "x = 1\n" + BLOCK, "more than one"),
    ],
)
def test_malformed_blocks_are_refused_with_the_reason(tmp_path: Path, block: str, problem: str) -> None:
    path = tmp_path / "a.py"
    path.write_text(block)
    with pytest.raises(InvalidAnalysisError, match=problem):
        read_requirements(path)


def _notebook(path: Path, *, metadata: dict[str, object], first_cell: str) -> Path:
    nb = {
        "nbformat": 4,
        "nbformat_minor": 5,
        "metadata": metadata,
        "cells": [{"cell_type": "code", "metadata": {}, "source": first_cell, "outputs": []}],
    }
    path.write_text(json.dumps(nb))
    return path


def test_a_notebook_declares_in_metadata_or_first_cell_but_not_both(tmp_path: Path) -> None:
    table = {"dependencies": ["tinypkg==1.0"], "requires-python": ">=3.11"}
    in_metadata = _notebook(tmp_path / "m.ipynb", metadata={"script": table}, first_cell="x = 1")
    in_cell = _notebook(tmp_path / "c.ipynb", metadata={}, first_cell=BLOCK)
    both = _notebook(tmp_path / "b.ipynb", metadata={"script": table}, first_cell=BLOCK)
    assert read_requirements(in_metadata) == Requirements(("tinypkg==1.0",), (">=3.11",))
    assert read_requirements(in_cell).dependencies == ("other1", "tinypkg==1.0")
    with pytest.raises(InvalidAnalysisError, match="twice"):
        read_requirements(both)


def test_project_defaults_are_added(tmp_path: Path) -> None:
    project = tmp_path / "analysis"
    project.mkdir()
    (project / "dependencies.toml").write_text('dependencies = ["other2"]\n')
    path = tmp_path / "a.py"
    path.write_text(BLOCK)
    assert read_requirements(path, project_dir=project).dependencies == ("other1", "other2", "tinypkg==1.0")


def test_an_incompatible_requires_python_names_both_versions() -> None:
    with pytest.raises(DependencyError, match=r"requires Python >=4.*runs Python 3\.11\.3") as info:
        Requirements(("x",), (">=4",)).check_python("3.11.3")
    assert info.value.package == "python"


def test_pip_index_settings_are_passed_on_unless_uv_has_its_own() -> None:
    from analysis.runner.deps.uv import index_options

    pip = {"PIP_INDEX_URL": "https://mirror/simple", "PIP_FIND_LINKS": "/w1 /w2"}
    assert index_options(pip) == [
        "--index-url",
        "https://mirror/simple",
        "--find-links",
        "/w1",
        "--find-links",
        "/w2",
    ]
    assert index_options({**pip, "UV_INDEX_URL": "https://uv/simple", "UV_FIND_LINKS": "/w"}) == []
