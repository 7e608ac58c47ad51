"""Running the ``uv`` binary: where it is, which package indexes it uses, and a timed async call.

uv comes from the ``uv`` Python package (``uv.find_uv_bin()``); ``ANALYSIS_UV`` names another
binary. Indexes come from uv's own configuration (``UV_INDEX_URL``, ``UV_DEFAULT_INDEX``,
``UV_FIND_LINKS``, ``uv.toml``); pip's variables (``PIP_INDEX_URL``, ``PIP_EXTRA_INDEX_URL``,
``PIP_FIND_LINKS``) are passed on as options when uv's own are unset.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import os
import re
import signal
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from analysis.errors import DependencyError

__all__ = ["UvError", "index_options", "run_uv", "uv_binary"]

_PR_SET_PDEATHSIG = 1
_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_LABEL = re.compile(r"^(error|caused by|cause):\s*", re.IGNORECASE)
# pip variable -> (uv variables that win over it, uv option)
_PIP_VARIABLES = (
    ("PIP_INDEX_URL", ("UV_INDEX_URL", "UV_DEFAULT_INDEX"), "--index-url"),
    ("PIP_EXTRA_INDEX_URL", ("UV_EXTRA_INDEX_URL", "UV_INDEX"), "--extra-index-url"),
    ("PIP_FIND_LINKS", ("UV_FIND_LINKS",), "--find-links"),
)


@dataclass
class UvError(Exception):
    """uv ended with an error; ``reason`` is its message, cleaned up to a few lines."""

    reason: str


def _die_with_parent_hook() -> Callable[[], None]:
    """What the child runs before exec: ask for SIGKILL when the runner dies, however it ends.

    ``prctl`` is looked up here, in the parent: the child of a threaded process only calls it.
    """
    prctl = ctypes.CDLL(None, use_errno=True).prctl

    def hook() -> None:
        prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)

    return hook


def uv_binary(environ: Mapping[str, str]) -> str:
    """The uv binary to run: ``ANALYSIS_UV``, else the one the ``uv`` package ships."""
    chosen = environ.get("ANALYSIS_UV")
    if chosen:
        return chosen
    try:
        from uv import find_uv_bin
    except ImportError:
        raise DependencyError(
            "The analysis declares dependencies but uv is not installed: "
            "pip install 'analysis-kernel[deps]'.",
            package="uv",
        ) from None
    return str(find_uv_bin())


def index_options(environ: Mapping[str, str]) -> list[str]:
    """uv options for pip's index variables that uv itself does not read."""
    options: list[str] = []
    for pip_name, uv_names, option in _PIP_VARIABLES:
        value = environ.get(pip_name)
        if value and not any(environ.get(name) for name in uv_names):
            for item in value.split():
                options += [option, item]
    return options


def clean_reason(stderr: str) -> str:
    """uv's error output without colours, box drawing and hints, on as few lines as it takes."""
    lines = []
    for raw in _ANSI.sub("", stderr).splitlines():
        line = raw.strip().lstrip("×╰─▶│├ ").strip()
        if not line or line.startswith(("hint:", "help:", "warning:")):
            continue
        lines.append(_LABEL.sub("", line))
    if not lines:
        return "uv failed without saying why"
    return f"{lines[0].rstrip(':.')}: {' '.join(lines[1:])}" if len(lines) > 1 else lines[0]


async def run_uv(args: Sequence[str], *, environ: Mapping[str, str], timeout_s: float | None) -> str:
    """Run ``uv ARGS`` and return its stdout; ``UvError`` on failure, ``TimeoutError`` past ``timeout_s``.

    uv runs in a process group of its own, killed whole on timeout or cancellation.
    """
    env = {**environ, "NO_COLOR": "1", "UV_NO_PROGRESS": "1"}
    proc = await asyncio.create_subprocess_exec(
        uv_binary(environ),
        *args,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=env,
        start_new_session=True,
        preexec_fn=_die_with_parent_hook(),
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(), timeout_s)
    except BaseException:  # timeout, cancellation: nothing of uv outlives the call
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        await proc.wait()
        raise
    if proc.returncode != 0:
        raise UvError(clean_reason(err.decode("utf-8", "replace")))
    return out.decode("utf-8", "replace")
