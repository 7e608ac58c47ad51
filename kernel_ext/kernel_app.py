"""The kernel the runner launches for a job: ipykernel, with these changes for headless jobs.

- Output streams in bounded pieces: a write larger than :data:`CHUNK_CHARS` (``print`` of a
  200 MB string) is sent as a series of messages of at most that size, each flushed before the
  next is queued, so neither the kernel nor the runner ever holds the whole text.
- No dropped output: the kernel's iopub socket waits for a slow reader (the runner) instead of
  dropping messages past ZeroMQ's high-water mark, which lost the job's outcome after a big print.
- No TCP at all: stock ipykernel binds a ZeroMQ socket on a random loopback TCP port to collect
  the output of forked subprocesses. A job kernel does not open it; output of a forked child
  (``multiprocessing`` with ``fork``) goes to the kernel's own stdout/stderr, the ``kernel.log``
  of the job directory. Every socket of a job kernel is then a Unix socket in the job directory.
- No debugger: nobody attaches one to a headless job, and ipykernel's debugger module imports
  debugpy, about half of a kernel's start-up CPU (0.25 s here). A stand-in module says that
  debugpy is unavailable, as ipykernel says when it is not installed; an analysis may still
  ``import debugpy`` itself.

Run as ``python -m analysis.kernel_app -f CONNECTION_FILE``.
"""

from __future__ import annotations

import os
import sys
import threading
import traceback
import types
from pathlib import Path
from typing import Any


class _NoDebugger:
    """What ``ipykernel.debugger.Debugger`` names in a job kernel (never instantiated)."""


def _without_debugger() -> None:
    """Install the stand-in ``ipykernel.debugger`` (before ipykernel imports the real one)."""
    stand_in = types.ModuleType("ipykernel.debugger", "No debugger in a job kernel (analysis.kernel_app).")
    stand_in._is_debugpy_available = False  # type: ignore[attr-defined]
    stand_in.Debugger = _NoDebugger  # type: ignore[attr-defined]
    sys.modules.setdefault("ipykernel.debugger", stand_in)


_without_debugger()

from ipykernel.iostream import IOPubThread, OutStream  # noqa: E402
from ipykernel.kernelapp import IPKernelApp  # noqa: E402

__all__ = [
    "CHUNK_CHARS",
    "JOB_MODULES",
    "WARM_UP_OPTION",
    "ChunkedOutStream",
    "JobKernelApp",
    "import_job_modules",
    "warm_up",
]

#: The option that makes a kernel warm up as it starts (a pooled kernel): ``OPTION + JOB_DIR``.
WARM_UP_OPTION = "--analysis-warm-up="

#: Largest piece of output text sent in one stream message.
CHUNK_CHARS = 64 * 1024


class ChunkedOutStream(OutStream):
    """``OutStream`` that never buffers more than about :data:`CHUNK_CHARS` characters."""

    _unflushed = 0

    def write(self, string: str) -> int | None:  # type: ignore[override]
        """Queue ``string``, in pieces of at most :data:`CHUNK_CHARS`, flushing as the buffer fills."""
        if not isinstance(string, str) or len(string) + self._unflushed <= CHUNK_CHARS:
            self._unflushed += len(string) if isinstance(string, str) else 0
            return super().write(string)
        for start in range(0, len(string), CHUNK_CHARS):
            super().write(string[start : start + CHUNK_CHARS])
            self.flush()
        return len(string)

    def flush(self) -> None:
        """Send what is buffered (blocks until the I/O thread has taken it)."""
        self._unflushed = 0
        super().flush()  # type: ignore[no-untyped-call]


#: The options the runner gives every job kernel, as ``(section, trait, value)``.
_JOB_OPTIONS = {
    "--HistoryManager.enabled=False": ("HistoryManager", "enabled", False),
    "--IPKernelApp.quiet=True": ("IPKernelApp", "quiet", True),
}


def _job_command_line(argv: list[str]) -> Any:
    """The configuration of the runner's own command line (``-f FILE`` and :data:`_JOB_OPTIONS`),
    or ``None`` for anything else."""
    from traitlets.config import Config

    config = Config()
    args = list(argv)
    while args:
        arg = args.pop(0)
        if arg == "-f" and args:
            config.IPKernelApp.connection_file = args.pop(0)
        elif arg in _JOB_OPTIONS:
            section, trait, value = _JOB_OPTIONS[arg]
            config[section][trait] = value
        else:
            return None
    return config


class JobKernelApp(IPKernelApp):
    """``IPKernelApp`` with :class:`ChunkedOutStream` and no subprocess-output TCP socket."""

    outstream_class = "analysis.kernel_app.ChunkedOutStream"

    def initialize(self, argv: list[str] | None = None) -> None:
        """As ipykernel's; with ``--analysis-warm-up=JOB_DIR`` (a pooled kernel), warm up as well.

        A pooled kernel then answers its first request with the imports of a job done and the
        job's locked-down DuckDB connection open (:func:`warm_up`), without the runner sending
        that code as a request of its own.
        """
        job_dir = None
        rest = []
        for arg in argv or []:
            if arg.startswith(WARM_UP_OPTION):
                job_dir = arg[len(WARM_UP_OPTION) :]
            else:
                rest.append(arg)
        super().initialize(rest if argv is not None else None)  # type: ignore[no-untyped-call]
        if job_dir is not None:
            warm_up(job_dir)

    def parse_command_line(self, argv: list[str] | None = None) -> None:
        """Read the runner's command line directly; any other through traitlets.

        traitlets builds an ``argparse`` parser of every configurable class's options to read
        it, about 6 ms of each kernel's start-up CPU for the four arguments the runner passes.
        """
        config = None if argv is None else _job_command_line(argv)
        if config is None:
            super().parse_command_line(argv)
            return
        self.argv = list(argv or [])
        self.cli_config = config
        self.update_config(config)
        self.extra_args = []

    def init_iopub(self, context: Any) -> None:
        """As ipykernel's, with ``pipe=False``: no TCP listener for forked subprocesses."""
        import zmq

        self.iopub_socket = context.socket(zmq.XPUB)
        self.iopub_socket.linger = 1000
        # past the high-water mark a PUB socket drops messages: a runner slower than a big
        # print lost stream pieces and then the outcome, and waited for the job's deadline.
        # NODROP makes the I/O thread wait instead, so output goes at the pace the runner reads.
        self.iopub_socket.setsockopt(zmq.XPUB_NODROP, 1)
        self.iopub_port = self._bind_socket(self.iopub_socket, self.iopub_port)  # type: ignore[no-untyped-call]
        self.configure_tornado_logger()  # type: ignore[no-untyped-call]
        self.iopub_thread = IOPubThread(  # type: ignore[no-untyped-call]
            self.iopub_socket, pipe=False, session=self.session
        )
        self.iopub_thread.start()  # type: ignore[no-untyped-call]
        self.iopub_socket = self.iopub_thread.background_socket


#: What every job imports: a pooled kernel imports it while idle, a zygote before its forks.
JOB_MODULES = (
    "duckdb",
    "pyarrow",
    "nanoarrow.ipc",
    "analysis.broker_client",
    "analysis.cache_fill",
    "analysis.duck",
    "analysis.execute",
)


def import_job_modules() -> None:
    """Import :data:`JOB_MODULES`."""
    import importlib

    for name in JOB_MODULES:
        importlib.import_module(name)


def warm_up(job_dir: str) -> None:
    """What a pooled kernel does before its job: import what every job imports and open the job's
    locked-down DuckDB connection for ``job_dir`` (as the kernel sees it), with a first statement
    run on it (a connection's first costs more)."""
    import_job_modules()
    from analysis.duck import prepare_connection

    prepare_connection(job_dir)


def _limit_processes(argv: list[str]) -> list[str]:
    """Apply and remove ``--max-processes=N``: ``RLIMIT_NPROC``, counted in the sandbox's user namespace."""
    rest = []
    for arg in argv:
        if arg.startswith("--max-processes="):
            import resource

            limit = int(arg.partition("=")[2])
            resource.setrlimit(resource.RLIMIT_NPROC, (limit, limit))
        else:
            rest.append(arg)
    return rest


def exit_with_runner() -> None:
    """Exit as soon as the runner is gone, in a sandbox (the runner's ``analysis.runner.sandbox``).

    The runner's end of the lifeline pipe closes when it ends, however it ends: a read here
    then returns end-of-file. This ties the kernel to the runner even if the sandbox's own
    parent-death signal was lost (bubblewrap's init sets it only after being forked).
    """
    fd = os.environ.pop("ANALYSIS_LIFELINE_FD", None)
    if fd is None:
        return

    def watch() -> None:
        try:
            while os.read(int(fd), 1):  # nobody writes: only end-of-file (or an error) ends this
                pass
        finally:
            os._exit(1)

    default = threading.stack_size(256 * 1024)  # not 8 MiB of the job's address space (max_memory_bytes)
    try:
        threading.Thread(target=watch, name="analysis-lifeline", daemon=True).start()
    finally:
        threading.stack_size(default)


def main() -> None:
    """Launch the job kernel (the working directory is not put on ``sys.path``)."""
    if sys.path and (sys.path[0] == "" or Path(sys.path[0]) == Path.cwd()):
        del sys.path[0]
    exit_with_runner()
    try:
        JobKernelApp.launch_instance(argv=_limit_processes(sys.argv[1:]))
    except Exception:  # a failed start must end the process, not leave its threads waiting
        traceback.print_exc()
        sys.stderr.flush()
        os._exit(1)


if __name__ == "__main__":
    main()
