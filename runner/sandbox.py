"""The job sandbox: every job kernel runs inside bubblewrap (README, "Security model").

Inside, the kernel is an unprivileged user (uid 1000) in its own user, PID, IPC, UTS, mount and
network namespaces; the network namespace has only loopback. The file system is built from
nothing: the system (``/usr``) and the Python environment read-only, a few files of ``/etc``,
the job directory read-write at ``/job``, and a private size-limited ``/tmp``. The environment
is :data:`ENV_ALLOWLIST` plus fixed values, never the runner's environment.

When the runner is root, the sandbox is started as user ``nobody`` (uid 65534) so that the job
is not root on the host either, whatever the user namespace maps (and so that the process limit
holds: the kernel does not enforce it for root). ``nobody`` may not be able to reach the folders
to bind (a Python under ``/root``, a projects root below a 0700 folder), so the launching child,
still root, first stages them: in a private mount namespace of its own it mounts a small tmpfs
on :data:`STAGE` and bind-mounts each folder there; then it becomes ``nobody`` and runs
bubblewrap, which binds from the stage. The host's mounts are untouched. The job directory is
owned by ``nobody``.

``--die-with-parent`` ties the sandbox to the runner: when the runner dies (SIGKILL included),
the kernel gets SIGKILL, the PID namespace's init goes with it, and the kernel ends every
process in the namespace, daemons included. bubblewrap's forked init waits for its parent to
map its user ids and only then sets its own parent-death signal, so the runner does not give
bubblewrap one (bubblewrap sets it, right before it lets the init go on): a bubblewrap killed
before that left its init waiting forever, adopted by PID 1. A runner that dies before
bubblewrap has set it leaves bubblewrap running, hence a second tie, the *lifeline*: every
sandbox inherits the read end of a pipe whose write end only the runner holds
(``ANALYSIS_LIFELINE_FD`` names it), and the kernel exits when it reads end-of-file, which
happens once the runner is gone however it ended; its sandbox ends with it.
"""

from __future__ import annotations

import ctypes
import functools
import os
import shutil
import subprocess
import sys
import sysconfig
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from analysis.errors import KernelStartError

__all__ = [
    "ENV_ALLOWLIST",
    "JOB_DIR",
    "LIFELINE_ENV",
    "SANDBOX_MODES",
    "SandboxPlan",
    "host_uid",
    "job_dir_seen",
    "plan",
    "sandbox_available",
    "stage_and_drop",
    "use_sandbox",
]

SANDBOX_MODES = ("auto", "on", "off")
#: Where the job directory appears inside the sandbox.
JOB_DIR = Path("/job")
#: The job's uid and gid inside the sandbox.
SANDBOX_UID = 1000
#: The host uid a sandbox runs as when the runner is root.
NOBODY = 65534
#: Variables copied from the runner's environment into the sandbox, when set. Nothing else is.
ENV_ALLOWLIST = ("LANG", "LC_ALL", "LC_CTYPE", "TZ")
#: Variables every sandboxed kernel gets, whatever the runner's environment says.
FIXED_ENV = {
    "PATH": "/usr/local/bin:/usr/bin:/bin",
    "HOME": str(JOB_DIR),
    "USER": "job",
    "LOGNAME": "job",
    "TMPDIR": "/tmp",
    "IPYTHONDIR": str(JOB_DIR / "ipython"),
    "MPLCONFIGDIR": "/tmp/matplotlib",
    "PYTHONDONTWRITEBYTECODE": "1",
    "PYDEVD_DISABLE_FILE_VALIDATION": "1",
    "JUPYTER_PLATFORM_DIRS": "1",
    "ANALYSIS_SANDBOXED": "1",
}
#: Files and folders of /etc a Python process needs (libraries, time zone, fonts), read-only.
_ETC = ("ld.so.cache", "ld.so.conf", "ld.so.conf.d", "localtime", "alternatives", "fonts", "mime.types")
_PASSWD = f"root:x:0:0::/:/usr/sbin/nologin\njob:x:{SANDBOX_UID}:{SANDBOX_UID}::/job:/usr/sbin/nologin\n"
_GROUP = f"root:x:0:\njob:x:{SANDBOX_UID}:\n"
_HOSTS = "127.0.0.1 localhost job\n::1 localhost\n"


def host_uid() -> int | None:
    """The host uid the sandbox runs as: ``nobody`` for a root runner, else the runner's own."""
    return NOBODY if os.geteuid() == 0 else None


#: Where a root runner's launching child stages bind sources (in its private mount namespace).
STAGE = Path("/mnt")
_LIBC = ctypes.CDLL(None, use_errno=True)  # loaded here: the child must not dlopen after fork
_CLONE_NEWNS, _MS_REC, _MS_PRIVATE, _MS_BIND = 0x00020000, 16384, 1 << 18, 4096


def _check(result: int, what: str) -> None:
    if result != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")


def stage_and_drop(stage: list[tuple[str, str]]) -> None:
    """In the launching child of a root runner: stage ``(source, name)`` bind mounts, become nobody.

    Runs between ``fork`` and ``exec``: only system calls, no allocation-heavy Python.
    """
    if os.geteuid() != 0:
        return
    _check(_LIBC.unshare(_CLONE_NEWNS), "unshare(CLONE_NEWNS)")
    _check(_LIBC.mount(b"none", b"/", None, _MS_REC | _MS_PRIVATE, None), "making / private")
    _check(_LIBC.mount(b"tmpfs", bytes(STAGE), b"tmpfs", 0, b"mode=0755,size=64k"), "mounting the stage")
    for source, name in stage:
        target = STAGE / name
        os.mkdir(target)
        _check(
            _LIBC.mount(source.encode(), bytes(target), None, _MS_BIND | _MS_REC, None), f"staging {source}"
        )
    os.setgroups([])
    os.setgid(NOBODY)
    os.setuid(NOBODY)


@functools.cache
def sandbox_available() -> str | None:
    """``None`` when bubblewrap works here, else why not (checked once per process)."""
    bwrap = shutil.which("bwrap")
    if bwrap is None:
        return "bubblewrap (bwrap) is not installed"
    probe = [bwrap, "--unshare-all", "--die-with-parent"]
    probe += ["--ro-bind", "/", "/", "--proc", "/proc", "--dev", "/dev", "true"]
    if os.geteuid() == 0:
        STAGE.mkdir(exist_ok=True)
    try:  # the launch path of a job: staging (as root), then bubblewrap as nobody
        done = subprocess.run(
            probe,
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
            preexec_fn=functools.partial(stage_and_drop, []),
        )
    except (OSError, subprocess.SubprocessError) as exc:
        return f"bubblewrap could not be run: {exc}"
    if done.returncode != 0:
        return f"bubblewrap cannot create namespaces here: {done.stderr.strip() or done.returncode}"
    return None


def use_sandbox(mode: str) -> bool:
    """Whether a job with sandbox ``mode`` runs sandboxed; ``"on"`` without a sandbox is an error."""
    if mode not in SANDBOX_MODES:
        raise KernelStartError(f"sandbox must be one of {', '.join(SANDBOX_MODES)}, not {mode!r}.")
    if mode == "off":
        return False
    reason = sandbox_available()
    if reason is None:
        return True
    if mode == "on":
        raise KernelStartError(f'The sandbox is required (sandbox = "on") but {reason}.')
    return False


def _python_paths() -> list[Path]:
    """Folders the kernel's Python needs: the environment, the standard library, this package."""
    import analysis

    paths = {Path(sys.prefix), Path(sys.base_prefix), Path(sys.exec_prefix)}
    for name in ("stdlib", "platstdlib", "purelib", "platlib"):
        paths.add(Path(sysconfig.get_paths()[name]))
    paths.add(Path(analysis.__file__).resolve().parent)
    paths.add(Path(__file__).resolve().parent)  # analysis.runner: its own folder in a source checkout
    paths.add(Path(os.path.realpath(sys.executable)).parent)
    resolved = sorted({Path(os.path.realpath(p)) for p in paths if p.exists()})
    outside_usr = [p for p in resolved if not p.is_relative_to("/usr")]
    # a folder inside another one already bound is covered by it
    return [p for p in outside_usr if not any(p != q and p.is_relative_to(q) for q in outside_usr)]


def _data_fd(text: str) -> int:
    """A pipe's read end already holding ``text`` (for bwrap's ``--ro-bind-data``)."""
    read, write = os.pipe()
    os.write(write, text.encode())
    os.close(write)
    return read


#: The kernel's variable naming its end of the runner's lifeline pipe.
LIFELINE_ENV = "ANALYSIS_LIFELINE_FD"
_lifeline_lock = threading.Lock()
_lifeline: dict[str, int] = {}  # this process's pipe: pid, read, write


def _lifeline_read_end() -> int:
    """This process's lifeline pipe (made on first use), its read end; the write end is never inherited."""
    with _lifeline_lock:
        if _lifeline.get("pid") != os.getpid():
            read, write = os.pipe()  # not inheritable: only a sandbox gets a copy, of the read end
            _lifeline.update(pid=os.getpid(), read=read, write=write)
        return _lifeline["read"]


def _forget_lifeline_after_fork() -> None:
    """A forked copy of the runner must not keep its parent's kernels alive: close its copy."""
    if _lifeline and _lifeline["pid"] != os.getpid():
        for fd in (_lifeline["read"], _lifeline["write"]):
            try:
                os.close(fd)
            except OSError:
                pass
        _lifeline.clear()


os.register_at_fork(after_in_child=_forget_lifeline_after_fork)


@dataclass
class SandboxPlan:
    """The bubblewrap command line for one kernel, and the file descriptors it inherits."""

    argv: list[str]
    env: dict[str, str]
    pass_fds: tuple[int, ...]
    #: For a root runner: ``(host folder, name)`` to bind under :data:`STAGE` before dropping root.
    stage: list[tuple[str, str]]

    def close_fds(self) -> None:
        """Close the descriptors once bubblewrap has started (it has its own copies)."""
        for fd in self.pass_fds:
            os.close(fd)


def plan(
    kernel_argv: list[str],
    *,
    job_dir: Path,
    max_tmp_bytes: int | None,
    read_only: Sequence[Path] = (),
    mount_at: Path = JOB_DIR,
    user_namespaces: bool = False,
    env: dict[str, str] | None = None,
) -> SandboxPlan:
    """The command that runs ``kernel_argv`` sandboxed, with ``job_dir`` at ``mount_at``.

    ``read_only``: more folders bound read-only at their own path (an analysis's environment).
    ``user_namespaces``: let the sandbox create user namespaces (a zygote, which gives each
    kernel it forks namespaces of its own and then forbids more: :mod:`analysis.zygote`).
    ``env``: variables set on top of the fixed ones.
    """
    bwrap = shutil.which("bwrap")
    if bwrap is None:  # pragma: no cover - use_sandbox checked it
        raise KernelStartError("bubblewrap (bwrap) is not installed.")
    job_dir = job_dir.resolve()
    stage: list[tuple[str, str]] = []

    def source(path: Path) -> str:
        if host_uid() is None:
            return str(path)
        stage.append((str(path), f"s{len(stage)}"))
        return str(STAGE / stage[-1][1])

    argv = [bwrap, "--unshare-user", "--uid", str(SANDBOX_UID), "--gid", str(SANDBOX_UID)]
    argv += ["--unshare-pid", "--unshare-ipc", "--unshare-uts", "--unshare-net", "--unshare-cgroup-try"]
    argv += ["--die-with-parent", "--new-session", "--hostname", "job"]
    if not user_namespaces:
        argv.append("--disable-userns")
    argv += ["--ro-bind", "/usr", "/usr"]
    for top in ("bin", "sbin", "lib", "lib32", "lib64", "libx32"):
        host = Path("/") / top
        if host.is_symlink():
            argv += ["--symlink", os.readlink(host), str(host)]
        elif host.is_dir():
            argv += ["--ro-bind", str(host), str(host)]
    for name in _ETC:
        if (Path("/etc") / name).exists():
            argv += ["--ro-bind", f"/etc/{name}", f"/etc/{name}"]
    fds: list[int] = []
    for dest, text in (("/etc/passwd", _PASSWD), ("/etc/group", _GROUP), ("/etc/hosts", _HOSTS)):
        fd = _data_fd(text)
        fds.append(fd)
        argv += ["--perms", "0444", "--ro-bind-data", str(fd), dest]
    argv += ["--proc", "/proc", "--dev", "/dev"]
    if max_tmp_bytes is not None:
        argv += ["--size", str(max_tmp_bytes)]
    argv += ["--perms", "1777", "--tmpfs", "/tmp"]
    # after the private /tmp, which would hide an environment (or a checkout) that lives under /tmp
    for path in [*_python_paths(), *(Path(os.path.realpath(p)) for p in read_only)]:
        argv += ["--ro-bind", source(path), str(path)]
    argv += ["--bind", source(job_dir), str(mount_at), "--chdir", str(mount_at)]
    if mount_at != JOB_DIR:  # where a zygote's kernels get their job directory
        argv += ["--dir", str(JOB_DIR)]
    argv += ["--clearenv"]
    lifeline = os.dup(_lifeline_read_end())
    fds.append(lifeline)
    env = {
        **{k: os.environ[k] for k in ENV_ALLOWLIST if k in os.environ},
        **FIXED_ENV,
        LIFELINE_ENV: str(lifeline),
        **(env or {}),
    }
    for key, value in env.items():
        argv += ["--setenv", key, value]
    argv += ["--", *kernel_argv]
    return SandboxPlan(argv, env, tuple(fds), stage)


def job_dir_seen(job_dir: Path, *, sandboxed: bool) -> Path:
    """``job_dir`` as its kernel sees it: :data:`JOB_DIR` in a sandbox, else its resolved path
    (the job document's paths and a pooled kernel's prepared DuckDB connection use this one)."""
    return JOB_DIR if sandboxed else job_dir.resolve()


def prepare_job_dir(job_dir: Path, *, recursive: bool = True) -> None:
    """Hand the job directory (and what the runner wrote in it) to the sandbox's host user.

    ``recursive=False``: only the directory and its entries (what the runner adds beside a
    running kernel, whose own files below are the sandbox user's already).
    """
    uid = host_uid()
    if uid is None:
        return
    if not recursive:
        os.chown(job_dir, uid, uid)
        for entry in os.scandir(job_dir):
            os.chown(entry.path, uid, uid, follow_symlinks=False)
        return
    for dirpath, dirnames, filenames in os.walk(job_dir):
        os.chown(dirpath, uid, uid)
        for name in [*dirnames, *filenames]:
            os.chown(os.path.join(dirpath, name), uid, uid, follow_symlinks=False)
