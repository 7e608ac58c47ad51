"""The kernel fork server (zygote): imports a job kernel's modules once, then forks each kernel.

Run as ``python -m analysis.zygote`` inside the bubblewrap sandbox of one pool key (README,
"Warm kernels"), with the key's pool folder at :data:`JOBS` instead of a job directory. It
imports what every job kernel imports (ipykernel, IPython, DuckDB, PyArrow, ``analysis``), and
then answers requests, one JSON object per line on stdin, with one JSON line on stdout:

- ``{"fork": NAME, "argv": [...], "limits": {...}, "max_tmp_bytes": N}``: start a kernel in
  ``JOBS/NAME``; answers ``{"pid": P}`` (the pid, in the zygote's PID namespace, of the
  kernel's keeper process, see below) as soon as it is forked, or ``{"error": TEXT}``.
- ``{"wait": P}``: reap keeper ``P`` if it has ended; answers ``{"status": CODE}`` (negative:
  the signal that killed it, as :class:`subprocess.Popen` says), or ``{"status": null}`` if it
  runs. The zygote never blocks on a kernel: it serves one request after another.

Each kernel gets the isolation of a kernel bubblewrap starts for one job. The keeper, forked
from the zygote, unshares a user, mount, PID, IPC and network namespace, mounts the kernel's
private ``/tmp`` (``max_tmp_bytes``), binds ``JOBS/NAME`` at ``/job`` and hides ``JOBS``
(the other kernels' folders), and brings up its loopback. Its child, PID 1 of the new PID
namespace, mounts that namespace's ``/proc``, allows no further user namespace and enters a
last one of its own (so that no process of the job holds a capability over its mounts), then
forks the kernel (PID 2), which drops every capability, sets the job's limits and runs
:class:`analysis.kernel_app.JobKernelApp`. Each of the three dies with its parent
(``PR_SET_PDEATHSIG``), and the keeper and PID 1 end as the kernel ended, so the runner sees
the kernel's exit status. A fork is refused while the zygote has a second thread: nothing
with threads (a ZeroMQ context, a DuckDB database with its workers) may exist in it before a
fork; the database it opens for its kernels (``analysis.duck.open_before_forks``) has none.
"""

from __future__ import annotations

import ctypes
import fcntl
import gc
import json
import os
import re
import resource
import signal
import socket
import struct
import sys
from pathlib import Path
from typing import Any

__all__ = ["JOBS", "main"]

#: Where the pool key's folder (one sub-folder per kernel) appears in the zygote's sandbox.
JOBS = Path("/jobs")
_JOB = Path("/job")
#: Set for the zygote only (no thread at import: jemalloc's purger, OpenBLAS's workers).
_ZYGOTE_ONLY_ENV = ("JE_ARROW_MALLOC_CONF", "OPENBLAS_NUM_THREADS")
_LIBC = ctypes.CDLL(None, use_errno=True)
_NEWNS, _NEWUSER, _NEWPID, _NEWIPC, _NEWNET = 0x20000, 0x10000000, 0x20000000, 0x08000000, 0x40000000
_MS_RDONLY, _MS_NOSUID, _MS_NODEV, _MS_BIND, _MS_MOVE, _MS_REC, _MS_PRIVATE = (
    1,
    2,
    4,
    4096,
    8192,
    16384,
    1 << 18,
)
_PR_SET_PDEATHSIG = 1
_SIOCGIFFLAGS, _SIOCSIFFLAGS, _IFF_UP = 0x8913, 0x8914, 0x1
#: The runner's lifeline descriptor, for the kernels (the zygote itself ends when stdin closes,
#: and may not start the thread that watches it).
_lifeline = os.environ.pop("ANALYSIS_LIFELINE_FD", None)


def _check(result: int, what: str) -> None:
    if result != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")


def _mount(source: str, target: str, fstype: str | None, flags: int, data: str | None = None) -> None:
    _check(
        _LIBC.mount(
            source.encode(), target.encode(), fstype and fstype.encode(), flags, data and data.encode()
        ),
        f"mounting {target}",
    )


def _die_with_parent() -> None:
    parent = os.getppid()
    _LIBC.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if os.getppid() != parent:
        os._exit(1)


def _enter_user_namespace(flags: int) -> None:
    """Unshare ``flags`` (a user namespace among them), keeping the same uid and gid inside."""
    uid, gid = os.getuid(), os.getgid()
    _check(_LIBC.unshare(flags), "unshare")
    Path("/proc/self/setgroups").write_text("deny")
    Path("/proc/self/uid_map").write_text(f"{uid} {uid} 1\n")
    Path("/proc/self/gid_map").write_text(f"{gid} {gid} 1\n")


def _loopback_up() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        flags = struct.unpack("16sH", fcntl.ioctl(sock, _SIOCGIFFLAGS, struct.pack("16sH", b"lo", 0)))[1]
        fcntl.ioctl(sock, _SIOCSIFFLAGS, struct.pack("16sH", b"lo", flags | _IFF_UP))


def _drop_capabilities() -> None:
    header = (ctypes.c_uint32 * 2)(0x20080522, 0)  # _LINUX_CAPABILITY_VERSION_3, this process
    data = (ctypes.c_uint32 * 6)()
    _check(_LIBC.capset(header, data), "dropping capabilities")


def _exit_as(status: int) -> None:
    """End this process as a child that ended with wait ``status`` did.

    PID 1 cannot kill itself with a signal, so it exits with 128 + the signal; its parent, the
    keeper, turns that back into the signal.
    """
    code = os.waitstatus_to_exitcode(status)
    if os.WIFSIGNALED(status) or (os.getpid() != 1 and 128 < code < 128 + signal.NSIG):
        sig = os.WTERMSIG(status) if os.WIFSIGNALED(status) else code - 128
        if os.getpid() != 1:  # PID 1 cannot kill itself with a signal
            if sig not in (signal.SIGKILL, signal.SIGSTOP):  # whose action cannot be changed
                signal.signal(sig, signal.SIG_DFL)
            signal.pthread_sigmask(signal.SIG_UNBLOCK, [sig])
            os.kill(os.getpid(), sig)
        os._exit(128 + sig)
    os._exit(code & 0xFF)


def _wait_for(pid: int) -> int:
    """Reap children (orphans too, as PID 1 must) until ``pid`` ends; its wait status."""
    while True:
        try:
            done, status = os.waitpid(-1, 0)
        except ChildProcessError:
            return 0
        if done == pid:
            return status


def _mounts_below(folder: Path) -> list[Path]:
    """The outermost mount points strictly below ``folder`` (from this process's mount table)."""
    points = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        point = Path(re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), line.split()[4]))
        if folder in point.parents:
            points.append(point)
    return [p for p in points if not any(other in p.parents for other in points)]


def _private_tmp(size: int | None) -> None:
    """Give the kernel a ``/tmp`` of its own that keeps what the sandbox bound below ``/tmp``.

    A checkout or an environment under ``/tmp`` is bound there read-only by the zygote's
    sandbox, as for a cold kernel; a bare new tmpfs on ``/tmp`` would hide it. So the new tmpfs
    is made on the (still empty) ``/job``, those mounts are bound again inside it (read-only
    still: a bind keeps its source's flags), and it is then moved onto ``/tmp``.
    """
    below = _mounts_below(Path("/tmp"))
    _mount(
        "tmpfs", str(_JOB), "tmpfs", _MS_NOSUID | _MS_NODEV, "mode=1777" + (f",size={size}" if size else "")
    )
    for point in below:
        target = _JOB / point.relative_to("/tmp")
        if point.is_dir():
            target.mkdir(parents=True, exist_ok=True)
        else:
            target.parent.mkdir(parents=True, exist_ok=True)
            target.touch()
        _mount(str(point), str(target), None, _MS_BIND | _MS_REC)
    _mount(str(_JOB), "/tmp", None, _MS_MOVE)


def _keeper(request: dict[str, Any]) -> None:
    """In the keeper: make the kernel's namespaces and mounts, start PID 1, end as it ends."""
    os.setsid()
    _die_with_parent()
    _enter_user_namespace(_NEWUSER | _NEWNS | _NEWPID | _NEWIPC | _NEWNET)
    _mount("none", "/", None, _MS_REC | _MS_PRIVATE)
    _private_tmp(request.get("max_tmp_bytes"))
    _mount(str(JOBS / request["fork"]), str(_JOB), None, _MS_BIND | _MS_REC)
    _mount("tmpfs", str(JOBS), "tmpfs", _MS_RDONLY | _MS_NOSUID | _MS_NODEV, "size=4k")
    _loopback_up()
    init = os.fork()
    if init == 0:
        _init(request)
    _exit_as(_wait_for(init))


def _init(request: dict[str, Any]) -> None:
    """PID 1 of the kernel's PID namespace: its /proc, its last user namespace, then the kernel."""
    try:
        _die_with_parent()
        _mount("proc", "/proc", "proc", _MS_NOSUID | _MS_NODEV)
        Path("/proc/sys/user/max_user_namespaces").write_text("1")  # the next one is the last
        _enter_user_namespace(_NEWUSER)
        kernel = os.fork()
        if kernel == 0:
            _kernel(request)
    except BaseException:
        import traceback

        traceback.print_exc()
        os._exit(1)
    _exit_as(_wait_for(kernel))


def _kernel(request: dict[str, Any]) -> None:
    """The kernel (PID 2): no capabilities, the job's limits, then ipykernel until it exits."""
    code = 1
    try:
        _die_with_parent()
        os.chdir(_JOB)
        _drop_capabilities()
        for name, value in request.get("limits", {}).items():
            which = int(name)
            resource.setrlimit(which, (value, value + 5) if which == resource.RLIMIT_CPU else (value, value))
        for name in _ZYGOTE_ONLY_ENV:  # the job's environment is a cold kernel's
            os.environ.pop(name, None)
        from analysis.kernel_app import JobKernelApp, _limit_processes, exit_with_runner

        if _lifeline is not None:  # the runner's lifeline, as a cold sandboxed kernel watches it
            os.environ["ANALYSIS_LIFELINE_FD"] = _lifeline
            exit_with_runner()
        sys.argv = ["analysis.kernel_app"]
        JobKernelApp.launch_instance(argv=_limit_processes(request["argv"]))
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    except BaseException:
        import traceback

        traceback.print_exc()
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


def _fork(request: dict[str, Any]) -> dict[str, Any]:
    """Fork the keeper of a new kernel; its pid once its namespaces and mounts are made."""
    if len(os.listdir("/proc/self/task")) != 1:
        return {"error": "the zygote has more than one thread: it cannot fork safely"}
    folder = JOBS / request["fork"]
    if not folder.is_dir() or "/" in request["fork"]:
        return {"error": f"no kernel folder {request['fork']!r}"}
    pid = os.fork()
    if pid == 0:
        try:
            log = os.open(folder / "kernel.log", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
            null = os.open(os.devnull, os.O_RDONLY)
            os.dup2(null, 0)
            os.dup2(log, 1)
            os.dup2(log, 2)
            keep = sorted({2, *([int(_lifeline)] if _lifeline is not None else [])})
            for low, high in zip(keep, [*keep[1:], 1 << 16], strict=True):
                os.closerange(low + 1, high)
            os.chdir("/")
            _keeper(request)
        except BaseException:
            import traceback

            traceback.print_exc()
            os._exit(1)
    # no wait for the keeper's namespaces and mounts: the zygote serves the next request at
    # once; a keeper that cannot make them exits with its traceback in kernel.log, and the
    # runner, waiting for the kernel to answer, sees it end
    return {"pid": pid}


def _wait(request: dict[str, Any]) -> dict[str, Any]:
    try:
        pid, status = os.waitpid(int(request["wait"]), os.WNOHANG)
    except ChildProcessError:
        return {"status": None, "error": "no such kernel"}
    return {"status": None if pid == 0 else os.waitstatus_to_exitcode(status)}


#: What a kernel imports only as it starts (ipykernel's shell, its magics and its event loop).
_LATE_IMPORTS = (
    "IPython.core.completerlib",
    "IPython.core.debugger",
    "IPython.core.logger",
    "IPython.core.oinspect",
    "IPython.extensions.storemagic",
    "IPython.utils.wildcard",
    "faulthandler",
    "tornado.gen",
    "tornado.platform.asyncio",
    "unicodedata",
)


def _rehearse() -> None:
    """Do once what every kernel would do as it starts and that leaves only caches behind.

    Imports, and the tokenizer's compiled patterns (IPython tokenizes each cell). Each forked
    kernel then finds them made; none of it starts a thread or holds a job's data.
    """
    import importlib
    import io
    import tokenize

    for name in _LATE_IMPORTS:
        importlib.import_module(name)
    list(tokenize.generate_tokens(io.StringIO("x = f(1, 'a')  # c\n").readline))


def main() -> None:
    """Import once, then serve fork and wait requests until stdin closes."""
    if sys.path and (sys.path[0] == "" or Path(sys.path[0]) == Path.cwd()):
        del sys.path[0]
    from analysis.kernel_app import import_job_modules

    import_job_modules()
    _rehearse()
    from analysis.duck import open_before_forks

    open_before_forks()
    # what the zygote made stays shared: a kernel's collections skip it instead of writing to
    # every object's header, which would copy most of the zygote's pages into each kernel
    gc.freeze()

    out = sys.stdout.fileno()
    os.write(out, b'{"ready": true}\n')
    for line in sys.stdin.buffer:
        request = json.loads(line)
        try:
            answer = _fork(request) if "fork" in request else _wait(request)
        except Exception as exc:
            answer = {"error": f"{type(exc).__name__}: {exc}"}
        os.write(out, json.dumps(answer).encode() + b"\n")


if __name__ == "__main__":
    main()
