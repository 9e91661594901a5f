"""Runs model-written Python, which is hostile input, in a separate process locked down in
layers that need no privilege wherever they work, each detected and reported:

- a fresh process in its own session (the whole group killed at the wall-time limit), with a
  cleared environment (no store URL, no API key), in a private temporary directory removed after;
- resource limits: CPU time, address space, file size (which also caps stdout and stderr, both
  written to files), open files, processes and threads, no core dumps;
- a user without privileges (`nobody`) when this runs as root and the Python install is readable
  by others;
- a new user + network namespace (no network interface but a dead loopback) where the kernel
  allows unprivileged user namespaces;
- Landlock (Linux >= 5.13): writes only beneath its directory; no TCP connect/bind (ABI >= 4); no
  signals to processes outside it (ABI >= 6);
- a seccomp filter (libseccomp through pyseccomp): no sockets, no new processes (threads only), no
  exec, no ptrace, mount, namespaces, chmod/chown or kernel keyrings.

This file is also the sandbox's child: `python -I tasks/sandbox.py` reads its job on stdin,
applies the layers to itself, says which held on the first line of stderr, and runs the code.
Only the standard library (and pyseccomp) are imported at its top for that reason."""

from __future__ import annotations

import functools
import json
import os
import signal
import stat
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

NOBODY = 65534
LAYERS = ("own session", "cleared environment", "resource limits", "unprivileged user", "network namespace",
          "landlock", "seccomp")
SHOWN_OUTPUT = 2000  # characters of stdout kept for the transcript (the end, where results are)


@dataclass(frozen=True)
class SandboxLimits:
    wall_seconds: float = 10.0
    cpu_seconds: int = 10
    memory_bytes: int = 1 << 30
    output_bytes: int = 1 << 20  # stdout, stderr and any file it writes, each
    open_files: int = 64
    processes: int = 128  # threads count as processes (and every sandbox of this machine shares it as `nobody`)


@dataclass
class Execution:
    """What one execution gave: its stdout (the end of it, at most `SHOWN_OUTPUT` characters),
    the error's last line when it failed (None when it ran to the end), and how long it took."""

    output: str
    error: str | None
    seconds: float
    layers: dict[str, bool] = field(default_factory=dict)


def execute(code: str, limits: SandboxLimits = SandboxLimits()) -> Execution:
    """Run `code` once in a fresh sandbox; never raises for anything the code does."""
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="fleetgen-sandbox-") as scratch:
        home, results = Path(scratch) / "home", Path(scratch) / "results"
        home.mkdir(mode=0o700)
        results.mkdir(mode=0o700)
        drop_root = os.getuid() == 0 and _python_readable_by_others()
        if drop_root:
            os.chown(home, NOBODY, NOBODY)
        job = {"code": code, "dir": str(home), "limits": asdict(limits), "drop_root": drop_root,
               "libraries": _libraries()}
        with open(results / "stdout", "wb") as stdout, open(results / "stderr", "wb") as stderr:
            process = subprocess.Popen(
                [sys.executable, "-I", str(Path(__file__).resolve())], stdin=subprocess.PIPE, stdout=stdout,
                stderr=stderr, cwd=home, env=_child_environment(home), start_new_session=True)
            try:
                process.stdin.write(json.dumps(job).encode())
                process.stdin.close()
            except OSError:
                pass  # it died before reading: said below
            timed_out = False
            try:
                process.wait(timeout=limits.wall_seconds)
            except subprocess.TimeoutExpired:
                timed_out = True
            _kill_group(process)
        output = (results / "stdout").read_bytes().decode(errors="replace")
        layers, errors = _read_stderr((results / "stderr").read_bytes().decode(errors="replace"))
    error = _error(process.returncode, errors, timed_out=timed_out, limits=limits)
    return Execution(output=output[-SHOWN_OUTPUT:], error=error, seconds=round(time.monotonic() - started, 3),
                     layers=layers)


def execute_many(codes: list[str], limits: SandboxLimits = SandboxLimits()) -> list[Execution]:
    """Several executions at once, as many in parallel as this machine has cores."""
    from tasks.engines.devices import cpu_cores

    with ThreadPoolExecutor(max_workers=cpu_cores()) as pool:
        return list(pool.map(lambda code: execute(code, limits), codes))


def active_layers() -> dict[str, bool]:
    """Which layers hold on this machine (one probe execution)."""
    return execute("pass").layers


def describe_layers(layers: dict[str, bool]) -> str:
    on = [name for name in LAYERS if layers.get(name)]
    off = [name for name in LAYERS if not layers.get(name)]
    return f"sandbox layers on: {', '.join(on) or 'none'}; off here: {', '.join(off) or 'none'}"


@functools.cache
def _libraries() -> dict[str, str | None]:
    """Where libc and libseccomp are, found once here rather than by `ldconfig` in every child."""
    import ctypes.util

    return {name: ctypes.util.find_library(name) for name in ("c", "seccomp")}


@functools.cache
def _python_readable_by_others() -> bool:
    """Whether a user without privileges can run this Python: its interpreter, standard library and
    packages reachable and readable (every parent searchable). Found once."""
    import sysconfig

    paths = [Path(sys.executable).resolve(),
             *(Path(sysconfig.get_paths()[name]) for name in ("stdlib", "platstdlib", "purelib", "platlib"))]
    for path in paths:
        for part in [path, *path.parents]:
            try:
                mode = part.stat().st_mode
            except OSError:
                return False
            if not mode & (stat.S_IXOTH if stat.S_ISDIR(mode) else stat.S_IROTH):
                return False
    return True


def _child_environment(home: Path) -> dict[str, str]:
    """Nothing of the worker's environment: no store URL, no API key, no Prefect settings."""
    return {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8", "HOME": str(home), "TMPDIR": str(home),
            "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def _kill_group(process: subprocess.Popen) -> None:
    try:
        os.killpg(process.pid, signal.SIGKILL)  # whatever it left behind in its session
    except (ProcessLookupError, PermissionError):
        pass
    process.wait()


def _read_stderr(text: str) -> tuple[dict[str, bool], list[str]]:
    """The child's first stderr line is the layers that held; the rest is the code's own."""
    first, _, rest = text.partition("\n")
    try:
        layers = json.loads(first)
    except ValueError:
        return {}, [line for line in text.splitlines() if line.strip()]
    return layers, [line for line in rest.splitlines() if line.strip()]


def _error(returncode: int | None, errors: list[str], *, timed_out: bool, limits: SandboxLimits) -> str | None:
    if timed_out:
        return f"TimeoutError: the code ran longer than {limits.wall_seconds:g} s and was stopped"
    if returncode == 0:
        return None
    if returncode is not None and returncode < 0:
        name = signal.Signals(-returncode).name
        why = {"SIGXCPU": f"it used more than {limits.cpu_seconds} s of CPU time",
               "SIGXFSZ": f"it wrote more than {limits.output_bytes:,} bytes",
               "SIGSEGV": "it crashed (segmentation fault)", "SIGSYS": "it made a forbidden system call",
               "SIGKILL": "it was killed"}.get(name, f"it was stopped by {name}")
        return f"{name}: {why}"
    return errors[-1][:300] if errors else f"SystemExit: exited with code {returncode}"


# The child's side: everything below runs inside the sandbox process, on itself.

def _child() -> None:
    job = json.loads(sys.stdin.read())
    sys.stdin.close()
    import ctypes.util

    find_library = ctypes.util.find_library  # the parent found them: no ldconfig run here
    ctypes.util.find_library = lambda name: job["libraries"].get(name) or find_library(name)
    try:
        import pyseccomp
    except (ImportError, RuntimeError):  # no pyseccomp, or no libseccomp on this machine
        pyseccomp = None
    limits = job["limits"]
    layers = {"own session": os.getsid(0) == os.getpid(), "cleared environment": "MONGODB_URI" not in os.environ}
    layers["unprivileged user"] = _attempt(_drop_root) if job["drop_root"] else os.getuid() != 0
    layers["network namespace"] = _attempt(_network_namespace)
    layers["landlock"] = _attempt(_landlock, job["dir"])
    layers["resource limits"] = _attempt(_resource_limits, limits)
    layers["seccomp"] = pyseccomp is not None and _attempt(_seccomp, pyseccomp)
    print(json.dumps(layers), file=sys.stderr, flush=True)
    try:
        exec(compile(job["code"], "<code>", "exec"), {"__name__": "__main__"})
    except SystemExit:
        raise
    except BaseException as error:  # the last line is what the transcript shows
        sys.stdout.flush()
        print(f"{type(error).__name__}: {error}", file=sys.stderr, flush=True)
        os._exit(1)


def _attempt(layer: Any, *args: Any) -> bool:
    """A layer that this system lacks (another kernel, another OS) is off, not an error."""
    try:
        return layer(*args)
    except (OSError, AttributeError, ValueError):
        return False


def _drop_root() -> bool:
    try:
        os.setgroups([])
        os.setgid(NOBODY)
        os.setuid(NOBODY)
        return True
    except OSError:
        return False


def _libc() -> Any:
    import ctypes

    return ctypes.CDLL(None, use_errno=True)


def _network_namespace() -> bool:
    """A new network namespace (only a loopback that is down), inside a new user namespace when
    not privileged; the user keeps its own id there."""
    uid, gid = os.getuid(), os.getgid()
    libc = _libc()
    if libc.unshare(0x10000000 | 0x40000000) == 0:  # CLONE_NEWUSER | CLONE_NEWNET
        try:
            Path("/proc/self/setgroups").write_text("deny")
            Path("/proc/self/uid_map").write_text(f"{uid} {uid} 1")
            Path("/proc/self/gid_map").write_text(f"{gid} {gid} 1")
        except OSError:
            pass
        return True
    return libc.unshare(0x40000000) == 0  # CLONE_NEWNET alone, where privileged


def _landlock(home: str) -> bool:
    """Writes only beneath `home`; with ABI 4 no TCP; with ABI 6 no signals out and no abstract
    unix sockets. False where the kernel has no Landlock."""
    import ctypes

    libc = _libc()
    abi = libc.syscall(444, None, 0, 1)  # landlock_create_ruleset(NULL, 0, LANDLOCK_CREATE_RULESET_VERSION)
    if abi < 1:
        return False
    write = (1 << 1) | (1 << 4) | (1 << 5) | sum(1 << bit for bit in range(6, 13))  # write, remove, make_*
    write |= (1 << 13) if abi >= 2 else 0  # refer
    write |= (1 << 14) if abi >= 3 else 0  # truncate

    class RulesetAttr(ctypes.Structure):
        _fields_ = [("fs", ctypes.c_uint64), ("net", ctypes.c_uint64), ("scoped", ctypes.c_uint64)]

    class PathBeneath(ctypes.Structure):
        _pack_ = 1
        _fields_ = [("allowed", ctypes.c_uint64), ("parent_fd", ctypes.c_int32)]

    attr = RulesetAttr(write, 0b11 if abi >= 4 else 0, 0b11 if abi >= 6 else 0)
    size = 24 if abi >= 6 else 16 if abi >= 4 else 8
    ruleset = libc.syscall(444, ctypes.byref(attr), size, 0)
    if ruleset < 0:
        return False
    directory = os.open(home, os.O_PATH | os.O_CLOEXEC)
    rule = PathBeneath(write, directory)
    added = libc.syscall(445, ruleset, 1, ctypes.byref(rule), 0)  # LANDLOCK_RULE_PATH_BENEATH
    os.close(directory)
    if added < 0 or libc.prctl(38, 1, 0, 0, 0) != 0:  # PR_SET_NO_NEW_PRIVS
        return False
    restricted = libc.syscall(446, ruleset, 0) == 0  # landlock_restrict_self
    os.close(ruleset)
    return restricted


def _resource_limits(limits: dict[str, Any]) -> bool:
    import resource

    wanted = {resource.RLIMIT_CPU: limits["cpu_seconds"], resource.RLIMIT_AS: limits["memory_bytes"],
              resource.RLIMIT_FSIZE: limits["output_bytes"], resource.RLIMIT_NOFILE: limits["open_files"],
              resource.RLIMIT_NPROC: limits["processes"], resource.RLIMIT_CORE: 0}
    try:
        for kind, value in wanted.items():
            resource.setrlimit(kind, (value, value))
    except (OSError, ValueError):
        return False
    return True


def _seccomp(seccomp: Any) -> bool:
    """No sockets, no new processes (threads only), no exec, and none of the calls that reach
    beyond the process; each refused with EPERM (ENOSYS for clone3, so threads fall back to clone)."""
    import errno

    refused = ["socket", "socketpair", "fork", "vfork", "execve", "execveat", "ptrace", "process_vm_readv",
               "process_vm_writev", "mount", "umount2", "unshare", "setns", "pivot_root", "chroot", "chmod", "fchmod",
               "fchmodat", "chown", "fchown", "lchown", "fchownat", "keyctl", "add_key", "request_key", "bpf",
               "perf_event_open", "kexec_load", "init_module", "finit_module", "delete_module", "reboot", "swapon",
               "swapoff", "setuid", "setgid", "setreuid", "setregid", "setresuid", "setresgid", "setgroups"]
    try:
        rules = seccomp.SyscallFilter(defaction=seccomp.ALLOW)
        for name in refused:
            rules.add_rule(seccomp.ERRNO(errno.EPERM), name)
        rules.add_rule(seccomp.ERRNO(errno.EPERM), "clone", seccomp.Arg(0, seccomp.MASKED_EQ, 0x00010000, 0))
        rules.add_rule(seccomp.ERRNO(errno.ENOSYS), "clone3")
        rules.load()
    except (OSError, RuntimeError, ValueError):
        return False
    return True


if __name__ == "__main__":
    _child()
