"""The bubblewrap command line a code job runs under, and its limits.

What the sandbox sees (everything else of the host is absent):

* ``/usr`` (and the ``/lib``, ``/bin`` symlinks), a few files of ``/etc``, the
  Python installation the node runs on and its virtualenv: read-only;
* the ONE dataset file, read-only, at ``/data/dataset.<csv|parquet>``;
* ``/job``: a fresh tmpfs of ``work_mb`` (its only writable place; gone
  when the job ends), and a tmpfs ``/tmp`` of the same size (writable only by a
  non-root node's job, which runs as the node's own uid);
* the job runner (:mod:`.runtime`) at ``/opt/workbench/workbench_job.py``;
* with a DP budget: one unix socket, ``/run/workbench/dp.sock``.

``--unshare-all`` gives it its own network namespace (only ``lo``), PID, IPC,
UTS and cgroup namespaces (a node running as root keeps the host's user
namespace and drops to an unprivileged uid instead); ``--die-with-parent`` ends it with the node's runner
thread; ``--new-session`` keeps it off the node's terminal. Inside, the job
runs as an unprivileged uid (``setpriv``) under ``prlimit`` limits: CPU
seconds, address space, processes, file size. The node adds the wall-time
limit and a limit on the resident memory of all the job's processes together
(it kills the sandbox; see :func:`.worker.execute`) and caps the bytes it reads back.

There is no fallback: without ``bwrap`` (or ``prlimit``/``setpriv``) the node
refuses to run jobs (``sandbox_unavailable``).
"""

from __future__ import annotations

import os
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

from ...errors import NotSupported
from ...node.settings import CodeJobSettings

#: The unprivileged identity jobs run as when the node runs as root ("nobody" on Debian).
SANDBOX_UID = 65534
SANDBOX_GID = 65534
RUNTIME_IN_SANDBOX = "/opt/workbench/workbench_job.py"
DP_SOCKET_IN_SANDBOX = "/run/workbench/dp.sock"
ETC_FILES = ("ld.so.cache", "localtime", "nsswitch.conf", "passwd", "group", "fonts", "mime.types")
RUNTIME = Path(__file__).with_name("runtime.py")


@dataclass(frozen=True)
class Limits:
    cpu_seconds: int
    memory_bytes: int
    wall_seconds: float
    processes: int
    work_bytes: int
    output_bytes: int

    @classmethod
    def of(cls, settings: CodeJobSettings) -> "Limits":
        return cls(cpu_seconds=settings.cpu_seconds, memory_bytes=settings.memory_mb << 20,
                   wall_seconds=settings.wall_seconds, processes=settings.processes,
                   work_bytes=settings.work_mb << 20, output_bytes=int(settings.max_output_mb * (1 << 20)))


def tools() -> dict[str, str]:
    """The host programs the sandbox needs; refuses (clearly) when one is missing."""
    found = {name: shutil.which(name) for name in ("bwrap", "prlimit", "setpriv")}
    missing = [name for name, path in found.items() if path is None]
    if missing:
        package = {"bwrap": "bubblewrap", "prlimit": "util-linux", "setpriv": "util-linux"}
        raise NotSupported(
            f"This node cannot run code jobs: {', '.join(missing)} is not installed (Debian package "
            f"{', '.join(sorted({package[m] for m in missing}))}; scripts/setup installs it). Jobs never run "
            "outside the sandbox.", code="sandbox_unavailable")
    return found  # type: ignore[return-value]


def python_roots() -> list[Path]:
    """The folders that make up this Python: the virtualenv and the installation it links to.

    A venv's ``bin/python`` is a symlink into the base installation (here possibly under ``/root``, which the
    sandbox uid could not traverse on the host): each root is bound at its own path, so the bind's parents are
    folders bwrap creates, readable by anyone. Roots under ``/usr`` are already bound.
    """
    candidates = {Path(sys.prefix), Path(sys.base_prefix), Path(os.path.realpath(sys.executable)).parent.parent}
    roots = sorted({p.resolve() for p in candidates if not str(p.resolve()).startswith("/usr")})
    return [r for r in roots if not any(other != r and other in r.parents for other in roots)]


def prepare(scratch: Path) -> Path:
    """Copy the runner into the job's scratch folder (the node's; never mounted writable), readable by the
    sandbox uid whatever the installed file's mode."""
    scratch.chmod(0o711)
    target = scratch / "workbench_job.py"
    shutil.copyfile(RUNTIME, target)
    target.chmod(0o444)
    return target


def command(data_path: Path, limits: Limits, scratch: Path, dp_socket: Path | None = None) -> list[str]:
    """The argv that runs the job runner in the sandbox (the task is written to its stdin)."""
    paths = tools()
    check_readable(data_path)
    suffix = "csv" if data_path.suffix.lower() == ".csv" else "parquet"
    argv = [paths["bwrap"], *_namespaces(), "--die-with-parent", "--new-session", "--clearenv",
            "--ro-bind", "/usr", "/usr", "--symlink", "usr/lib", "/lib", "--symlink", "usr/lib64", "/lib64",
            "--symlink", "usr/bin", "/bin", "--symlink", "usr/sbin", "/sbin",
            "--proc", "/proc", "--dev", "/dev", "--size", str(limits.work_bytes), "--tmpfs", "/tmp"]
    for name in ETC_FILES:
        if Path("/etc", name).exists():
            argv += ["--ro-bind", f"/etc/{name}", f"/etc/{name}"]
    roots = python_roots()
    folders = {str(p) for root in roots for p in root.parents if p != Path("/")}
    folders |= {"/opt", "/opt/workbench", "/data", "/run", "/run/workbench"}
    for folder in sorted(folders, key=lambda f: f.count("/")):  # bwrap would make a mount's parents 0700
        argv += ["--perms", "0755", "--dir", folder]
    for root in roots:
        argv += ["--ro-bind", str(root), str(root)]
    argv += ["--ro-bind", str(prepare(scratch)), RUNTIME_IN_SANDBOX,
             "--ro-bind", str(data_path), f"/data/dataset.{suffix}",
             "--size", str(limits.work_bytes), "--perms", "0777", "--tmpfs", "/job", "--chdir", "/job"]
    env = {"HOME": "/job", "TMPDIR": "/job/tmp", "PATH": f"{Path(sys.executable).parent}:/usr/bin:/bin",
           "PYTHONPATH": "/opt/workbench", "MPLCONFIGDIR": "/job/.mpl", "MPLBACKEND": "Agg",
           "JUPYTER_PLATFORM_DIRS": "1", "JUPYTER_DATA_DIR": "/job/.jupyter-data",
           "JUPYTER_RUNTIME_DIR": "/job/tmp", "JUPYTER_CONFIG_DIR": "/job/.jupyter", "IPYTHONDIR": "/job/.ipython",
           "POLARS_MAX_THREADS": "2", "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "LANG": "C.UTF-8"}
    if dp_socket is not None:
        argv += ["--bind", str(dp_socket), DP_SOCKET_IN_SANDBOX]
        env["WORKBENCH_DP_SOCKET"] = DP_SOCKET_IN_SANDBOX
    for key, value in env.items():
        argv += ["--setenv", key, value]
    argv += ["--", paths["prlimit"], f"--cpu={limits.cpu_seconds}", f"--as={limits.memory_bytes}",
             f"--fsize={limits.work_bytes}", "--core=0", f"--nproc={_nproc(limits)}", "--"]
    argv += _drop_privileges(paths["setpriv"])
    argv += [sys.executable, RUNTIME_IN_SANDBOX]
    return argv


def _namespaces() -> list[str]:
    """``--unshare-all``, except that a root node keeps the host's user namespace: bwrap's own would map only
    uid 0, and the drop to the sandbox uid (which makes the process limit bind) would fail."""
    if os.geteuid() != 0:
        return ["--unshare-all"]
    return ["--unshare-ipc", "--unshare-pid", "--unshare-net", "--unshare-uts", "--unshare-cgroup-try"]


def check_readable(data_path: Path) -> None:
    """The sandbox uid reads the dataset file through its own permissions: refuse clearly if it cannot."""
    mode = data_path.stat().st_mode
    if os.geteuid() == 0 and not mode & 0o004:
        raise NotSupported(f"The sandbox runs as uid {SANDBOX_UID}, which cannot read {data_path.name} "
                                 "(make the file world-readable, e.g. chmod o+r, or keep it in a folder only the "
                                 "node's user can enter).", code="sandbox_unavailable")


def _drop_privileges(setpriv: str) -> list[str]:
    """As root: become the unprivileged sandbox uid with no capabilities (so the process limit binds)."""
    if os.geteuid() != 0:
        return [setpriv, "--no-new-privs", "--"]
    return [setpriv, f"--reuid={SANDBOX_UID}", f"--regid={SANDBOX_GID}", "--clear-groups", "--inh-caps=-all",
            "--bounding-set=-all", "--no-new-privs", "--"]


def _nproc(limits: Limits) -> int:
    """RLIMIT_NPROC counts every task of the real uid. As root, jobs run as the sandbox uid (only their own tasks
    count); otherwise they run as the node's own uid, whose current tasks are added to the allowance."""
    if os.geteuid() == 0:
        return limits.processes
    return limits.processes + sum(_tasks(d) for d in Path("/proc").iterdir() if d.name.isdigit())


def _tasks(proc: Path) -> int:
    """The threads of one process if it belongs to this uid (0 if it is gone or someone else's)."""
    try:
        return len(os.listdir(proc / "task")) if proc.stat().st_uid == os.getuid() else 0
    except OSError:
        return 0
