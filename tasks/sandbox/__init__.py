"""Runs model-written Python, which is hostile input, in a fresh process locked down in layers that
each hold on their own (`child.py` applies them; docs/code-execution.md's table says what each blocks
and which machines lack it). A layer the kernel offers that fails to turn on refuses the
execution; `SandboxPolicy.required` names the layers without which no code runs.

This side, in the worker: a scratch folder per execution (the output files; the code's folder too
where there is no mount namespace), the report pipe the child writes before the code runs and
after it ends, the kill at the wall-time limit, and what the code printed, read back without
control characters and cut at its limit."""

from __future__ import annotations

import contextlib
import functools
import json
import os
import re
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

from tasks.sandbox.child import LAYERS, NOBODY

CHILD = Path(__file__).resolve().with_name("child.py")
SHOWN_OUTPUT = 2000  # characters of stdout kept for the transcript (the end, where results are)
SHOWN_ERROR = 300  # characters of the error's last line


@dataclass(frozen=True)
class SandboxPolicy:
    wall_seconds: float = 10.0
    cpu_seconds: int = 10
    memory_bytes: int = 1 << 30
    output_bytes: int = 1 << 20  # stdout, stderr and any file it writes, each
    folder_bytes: int = 64 << 20  # its /tmp (a tmpfs, in memory)
    folder_files: int = 4096
    open_files: int = 64
    processes: int = 128  # threads count as processes
    required: tuple[str, ...] = ("unprivileged-user",)  # layers without which no code runs


@dataclass
class Execution:
    """What one execution gave: its stdout (the end of it, at most `SHOWN_OUTPUT` characters,
    control characters removed), the error's last line when it failed (None when it ran to the
    end), how long it took and which layers held."""

    output: str
    error: str | None
    seconds: float
    layers: dict[str, bool] = field(default_factory=dict)


def execute(code: str, policy: SandboxPolicy = SandboxPolicy()) -> Execution:
    """Run `code` once in a fresh sandbox; never raises for anything the code does."""
    started = time.monotonic()
    scratch = Path(tempfile.mkdtemp(prefix="fleetgen-sandbox-"))
    try:
        output, error, layers = _run(code, policy, scratch)
    except Exception as failure:  # the sandbox itself failed (no room for its folder, say): the model reads why
        output, error, layers = "", f"the sandbox could not run it ({type(failure).__name__}: {failure})", {}
    finally:
        remove_tree(scratch)
    return Execution(output=output, error=error, seconds=round(time.monotonic() - started, 3), layers=layers)


def execute_many(codes: list[str], policy: SandboxPolicy = SandboxPolicy()) -> list[Execution]:
    """Several executions at once, as many in parallel as this machine has cores."""
    from tasks.engines.devices import cpu_cores

    with ThreadPoolExecutor(max_workers=cpu_cores()) as pool:
        return list(pool.map(lambda code: execute(code, policy), codes))


def active_layers() -> dict[str, bool]:
    """Which layers hold on this machine (one probe execution that requires none)."""
    return execute("pass", SandboxPolicy(required=(), wall_seconds=30)).layers


def check_sandbox(required: tuple[str, ...]) -> str:
    """The worker's start check, before any model loads: one probe execution under the worker's
    requirements. Returns the line to log (which layers hold); UserError where it refuses."""
    probe = execute("pass", SandboxPolicy(required=required, wall_seconds=30))
    if probe.error is not None:
        from tasks.errors import UserError

        raise UserError(f"Code execution cannot start: {probe.error} ({describe_layers(probe.layers)}). A root worker "
                        "needs user namespaces or a Python that the user nobody can read (e.g. a venv made from "
                        "/usr/bin/python3) to run code as nobody; the sandbox table in docs/code-execution.md says "
                        "what each layer needs. To run with fewer layers, name the ones you require with "
                        "--sandbox-layers (none requires none).")
    return describe_layers(probe.layers)


def describe_layers(layers: dict[str, bool]) -> str:
    on = [name for name in LAYERS if layers.get(name)]
    off = [name for name in LAYERS if not layers.get(name)]
    return f"sandbox layers on: {', '.join(on) or 'none'}; off here: {', '.join(off) or 'none'}"


def printable(text: str) -> str:
    """`text` without terminal escape sequences and control characters (newline and tab kept)."""
    text = re.sub(r"\x1b\[[0-?]*[ -/]*[@-~]|\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)?", "", text)
    return re.sub(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]", "", text.replace("\r\n", "\n"))


def remove_tree(path: Path) -> None:
    """Remove a folder the code may have filled as deeply and as oddly as it liked: no recursion,
    every step relative to an open folder (no path grows too long), no symlink followed, each
    folder made searchable before it is read; never raises."""
    def opened(name: str | Path, parent: int | None) -> tuple[int, list[str], str | Path] | None:
        try:
            if parent is not None:
                os.chmod(name, 0o700, dir_fd=parent)
            folder = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=parent)
        except OSError:
            return None
        subfolders = []
        with contextlib.suppress(OSError), os.scandir(folder) as entries:
            for entry in entries:
                if entry.is_dir(follow_symlinks=False):
                    subfolders.append(entry.name)
                else:
                    with contextlib.suppress(OSError):
                        os.unlink(entry.name, dir_fd=folder)
        return folder, subfolders, name

    stack = [top] if (top := opened(path, None)) else []
    while stack:
        folder, subfolders, name = stack[-1]
        if subfolders:
            if child := opened(subfolders.pop(), folder):
                stack.append(child)
            continue
        os.close(folder)
        stack.pop()
        with contextlib.suppress(OSError):
            os.rmdir(name, dir_fd=stack[-1][0] if stack else None)


def _run(code: str, policy: SandboxPolicy, scratch: Path) -> tuple[str, str | None, dict[str, bool]]:
    os.chmod(scratch, 0o711)  # the code's own id must reach its folder; nothing in here is readable by others
    home, root = scratch / "home", scratch / "root"
    home.mkdir(mode=0o700)
    root.mkdir(mode=0o755)
    if os.getuid() == 0:
        os.chown(home, NOBODY, NOBODY)
    stdout_fd = os.open(scratch / "stdout", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    stderr_fd = os.open(scratch / "stderr", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    report_read, report_write = os.pipe()
    job = {"code": code, "home": str(home), "root": str(root), "policy": asdict(policy), "report": report_write,
           "libraries": _libraries(), "visible": _visible_paths(), "python_readable": _python_readable_by_others()}
    timed_out = False
    try:
        process = subprocess.Popen(
            [sys.executable, "-I", str(CHILD)], stdin=subprocess.PIPE, stdout=stdout_fd,
            stderr=stderr_fd, cwd=home, env=_child_environment(home), start_new_session=True, pass_fds=[report_write])
    finally:
        for fd in (stdout_fd, stderr_fd, report_write):
            os.close(fd)
    try:
        try:
            process.communicate(json.dumps(job).encode(), timeout=policy.wall_seconds)
        except subprocess.TimeoutExpired:
            timed_out = True
        _kill_group(process)
        report = _read_report(report_read)
    finally:
        os.close(report_read)
    output = printable(_tail(scratch / "stdout", 4 * SHOWN_OUTPUT))[-SHOWN_OUTPUT:]
    errors = [line for line in printable(_tail(scratch / "stderr", 1 << 16)).splitlines() if line.strip()]
    return output, _error(report, errors, timed_out=timed_out, policy=policy), report.get("layers", {})


def _tail(path: Path, size: int) -> str:
    with open(path, "rb") as file:
        file.seek(max(0, os.fstat(file.fileno()).st_size - size))
        return file.read(size).decode(errors="replace")


def _read_report(fd: int) -> dict[str, Any]:
    """The pipe's lines (written by the sandbox before the code ran, and after it ended), merged."""
    os.set_blocking(fd, False)
    data = b""
    while len(data) < 1 << 16:
        try:
            chunk = os.read(fd, 1 << 16)
        except BlockingIOError:
            break
        if not chunk:
            break
        data += chunk
    report: dict[str, Any] = {}
    for line in data.decode(errors="replace").splitlines():
        try:
            report.update(json.loads(line))
        except (ValueError, RecursionError):
            pass
    return report


@functools.cache
def _libraries() -> dict[str, str | None]:
    """Where libc and libseccomp are, found once here rather than by `ldconfig` in every child."""
    import ctypes.util

    return {name: ctypes.util.find_library(name) for name in ("c", "seccomp")}


@functools.cache
def _visible_paths() -> list[list[str]]:
    """What the code may see, as [path, kind] with kind dir, file, device or a symlink's target:
    the Python install (interpreter, standard library, packages), the system's libraries, the
    loader's cache and five devices. The same list is the private root's content and Landlock's
    read rules."""
    paths: list[list[str]] = []
    prefixes = sorted({os.path.realpath(prefix) for prefix in
                       (sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix)})
    for prefix in prefixes:
        if not any(prefix.startswith(other + os.sep) for other in prefixes):
            paths.append([prefix, "dir"])
    for system in ("/usr", "/lib", "/lib64", "/lib32", "/libx32", "/bin", "/sbin"):
        if os.path.islink(system):
            paths.append([system, "->" + os.readlink(system)])
        elif os.path.isdir(system) and not any(system == prefix or system.startswith(prefix + os.sep)
                                               for prefix in prefixes):
            paths.append([system, "dir"])
    paths += [[name, "file"] for name in ("/etc/ld.so.cache", "/etc/localtime") if os.path.isfile(name)]
    paths += [[f"/dev/{name}", "device"] for name in ("null", "zero", "full", "random", "urandom")]
    return paths


@functools.cache
def _python_readable_by_others() -> bool:
    """Whether a user without privileges can run this Python where it lies: its interpreter,
    standard library and packages reachable and readable (every parent searchable). Found once."""
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
        os.killpg(process.pid, signal.SIGKILL)  # whatever is left in its session (the code runs there too)
    except (ProcessLookupError, PermissionError):
        pass
    process.wait()


def _error(report: dict[str, Any], errors: list[str], *, timed_out: bool, policy: SandboxPolicy) -> str | None:
    if report.get("refused"):
        return f"the sandbox refused to run the code: {report['refused']}"[:SHOWN_ERROR]
    if timed_out:
        return f"TimeoutError: the code ran longer than {policy.wall_seconds:g} s and was stopped"
    if "status" not in report:
        return "the sandbox stopped before the code ended (the machine may be short of memory)"
    code = os.waitstatus_to_exitcode(report["status"])
    if code == 0:
        return None
    if code < 0:
        name = signal.Signals(-code).name if -code in signal.valid_signals() else f"signal {-code}"
        if name == "SIGKILL" and report.get("cpu_seconds", 0) >= policy.cpu_seconds:
            return f"SIGKILL: it used more than {policy.cpu_seconds} s of CPU time"
        why = {"SIGXFSZ": f"it wrote more than {policy.output_bytes:,} bytes",
               "SIGSEGV": "it crashed (segmentation fault)", "SIGSYS": "it made a forbidden system call",
               "SIGKILL": "it was killed"}.get(name, f"it was stopped by {name}")
        return f"{name}: {why}"
    return errors[-1][:SHOWN_ERROR] if errors else f"SystemExit: exited with code {code}"


