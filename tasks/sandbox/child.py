"""The sandbox's child, run as `python -I tasks/sandbox/child.py` with its job on stdin (standard
library and pyseccomp only, for a quick start). It is two processes:

1. the first enters new user, mount, PID, IPC and network namespaces (as root, a helper still root
   outside maps the code's id to `nobody`), forks the second, waits for it and reports how it
   ended (its wait status and CPU time) on the report pipe;
2. the second, PID 1 of the new PID namespace, locks itself down (a private root, an unprivileged
   id, Landlock, no capabilities, resource limits, seccomp), reports which layers hold on the same
   pipe, closes it, and only then runs the code."""

from __future__ import annotations

import errno
import json
import os
import signal
import sys
from typing import Any

NOBODY = 65534
LAYERS = ("own-session", "clean-environment", "resource-limits", "unprivileged-user", "user-namespace",
          "mount-namespace", "pid-namespace", "network-namespace", "landlock", "seccomp")
REFUSED = 125  # the exit code of a child that would not run the code
CLONE_NEWNS, CLONE_NEWIPC, CLONE_NEWUSER, CLONE_NEWPID, CLONE_NEWNET = 0x20000, 0x8000000, 0x10000000, 0x20000000, \
    0x40000000
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC, MS_REMOUNT = 1, 2, 4, 8, 32
MS_BIND, MS_REC, MS_PRIVATE = 4096, 16384, 1 << 18
MS_NOATIME, MS_NODIRATIME, MS_RELATIME, ST_RELATIME = 1024, 2048, 1 << 21, 4096  # statvfs says relatime as 4096
PIVOT_ROOT = {"x86_64": 155, "aarch64": 41}.get(os.uname().machine)


class LayerFailed(Exception):
    """A layer the kernel offers did not turn on: the code is not run."""


def _child() -> None:
    job = json.loads(sys.stdin.read())
    report = job["report"]
    import ctypes.util

    find_library = ctypes.util.find_library  # the parent found them: no ldconfig run here
    ctypes.util.find_library = lambda name: job["libraries"].get(name) or find_library(name)
    try:
        import pyseccomp
    except (ImportError, RuntimeError, OSError):  # no pyseccomp, or no libseccomp on this machine
        pyseccomp = None
    layers = {"own-session": os.getsid(0) == os.getpid(), "clean-environment": "MONGODB_URI" not in os.environ}
    failed: dict[str, str] = {}
    as_root = os.getuid() == 0
    namespaces = _enter_namespaces(as_root, layers, failed)
    inner = os.fork()  # PID 1 of the new PID namespace, where there is one
    if inner:
        _, status, usage = os.wait4(inner, 0)
        _say(report, {"status": status, "cpu_seconds": usage.ru_utime + usage.ru_stime})
        os._exit(0)
    try:
        _lock_down(job, pyseccomp, as_root=as_root, namespaces=namespaces, layers=layers, failed=failed)
    except Exception as error:  # noqa: BLE001 - whatever broke, the code must not run
        failed.setdefault("setup", f"{type(error).__name__}: {error}")
    missing = [name for name in job["policy"]["required"] if not layers.get(name)]
    refused = "; ".join([f"{name} did not turn on ({why})" for name, why in failed.items()] +
                        ([f"required layer(s) off on this machine: {', '.join(missing)}"] if missing else []))
    _say(report, {"layers": layers, **({"refused": refused} if refused else {})})
    os.close(report)  # the code cannot write on the report's channel
    if refused:
        os._exit(REFUSED)
    try:
        exec(compile(job["code"], "<code>", "exec"), {"__name__": "__main__"})
        code = 0
    except SystemExit as stop:  # sys.exit(n), sys.exit(None) or sys.exit("message"), as Python ends
        code = stop.code if isinstance(stop.code, int) else stop.code is not None
        if not isinstance(stop.code, (int, type(None))):
            print(stop.code, file=sys.stderr)
    except BaseException as error:  # the last line is what the transcript shows
        print(f"{type(error).__name__}: {error}", file=sys.stderr)
        code = 1
    _exit(int(code))


def _exit(code: int) -> None:
    """End without the interpreter's slow teardown, its output flushed; after code that ended
    well, threads it started run to their end first, as Python waits for them (after an error
    they would only delay its report)."""
    if code == 0 and (threading := sys.modules.get("threading")):
        threading._shutdown()  # type: ignore[attr-defined]  # what the interpreter runs at exit
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # past the file size limit, or closed by the code
            pass
    os._exit(code)


def _say(fd: int, message: dict[str, Any]) -> None:
    os.write(fd, (json.dumps(message) + "\n").encode())


def _write(path: str, text: str) -> None:
    with open(path, "w") as file:
        file.write(text)


def _libc() -> Any:
    import ctypes

    return ctypes.CDLL(None, use_errno=True)


def _check(result: int, what: str) -> None:
    if result != 0:
        import ctypes

        raise LayerFailed(f"{what}: {os.strerror(ctypes.get_errno())}")


def _enter_namespaces(as_root: bool, layers: dict[str, bool], failed: dict[str, str]) -> bool:
    """New user, mount, PID, IPC and network namespaces (the PID one for the next child). As root
    the code's id maps to `nobody` outside, written by a helper still root outside (a process
    inside may not map another id); otherwise the user keeps its own id. Without user namespaces,
    root makes the others itself. Returns whether the namespaces exist."""
    libc = _libc()
    others = CLONE_NEWNS | CLONE_NEWPID | CLONE_NEWIPC | CLONE_NEWNET
    helper, go = 0, -1
    if as_root:
        os.setgroups([])
        wait, go = os.pipe()
        helper = os.fork()
        if helper == 0:
            os.close(go)
            if os.read(wait, 1) != b"1":
                os._exit(2)
            try:
                parent = os.getppid()
                _write(f"/proc/{parent}/uid_map", f"{NOBODY} {NOBODY} 1")
                _write(f"/proc/{parent}/gid_map", f"{NOBODY} {NOBODY} 1")
            except OSError:
                os._exit(1)
            os._exit(0)
        os.close(wait)
    user = libc.unshare(CLONE_NEWUSER | others) == 0
    if as_root:
        os.write(go, b"1" if user else b"0")
        os.close(go)
        _, status = os.waitpid(helper, 0)
        if user and status != 0:
            failed["user-namespace"] = "the helper could not map the sandbox's id to nobody"
    elif user:
        try:
            uid, gid = os.getuid(), os.getgid()
            _write("/proc/self/setgroups", "deny")
            _write("/proc/self/uid_map", f"{uid} {uid} 1")
            _write("/proc/self/gid_map", f"{gid} {gid} 1")
        except OSError as error:
            failed["user-namespace"] = f"its id map could not be written: {error}"
    made = user or libc.unshare(others) == 0
    layers["user-namespace"] = user
    layers["network-namespace"] = layers["pid-namespace"] = made
    return made


def _lock_down(job: dict[str, Any], pyseccomp: Any, *, as_root: bool, namespaces: bool, layers: dict[str, bool],
               failed: dict[str, str]) -> None:
    """In the process that runs the code: a private root, an unprivileged id, Landlock, no
    capabilities, resource limits, seccomp; each layer's state in `layers`, what broke in `failed`."""
    libc = _libc()
    libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG: gone with the process that waits for it
    policy, home = job["policy"], job["home"]
    mapped = layers["user-namespace"] and "user-namespace" not in failed
    owner = (NOBODY, NOBODY) if as_root else (os.getuid(), os.getgid())
    sources = {path: os.open(path, os.O_PATH | os.O_CLOEXEC) for path, kind in job["visible"]
               if not kind.startswith("->")} if namespaces else {}
    if as_root and mapped:  # still root outside until here: now `nobody`, with capabilities inside only
        _become_nobody()
    layers["mount-namespace"] = False
    if namespaces:
        if PIVOT_ROOT is None:
            failed["mount-namespace"] = f"pivot_root's number is unknown on {os.uname().machine}"
        else:
            try:
                home = _private_root(job, sources, owner=owner, folder=(policy["folder_bytes"], policy["folder_files"]))
                layers["mount-namespace"] = True
            except (LayerFailed, OSError) as error:
                failed["mount-namespace"] = str(error)
    for fd in sources.values():
        os.close(fd)
    os.environ.update(HOME=home, TMPDIR=home)
    os.chdir(home)
    rules = _landlock_rules(job["visible"], home, own_proc=layers["mount-namespace"])
    if as_root and not mapped and (layers["mount-namespace"] or job["python_readable"]):
        os.setgroups([])
        _become_nobody()
    layers["unprivileged-user"] = os.getuid() != 0 and "user-namespace" not in failed
    _check(libc.prctl(38, 1, 0, 0, 0), "no_new_privs")
    layers["landlock"] = _landlock(rules, failed)
    _drop_capabilities(libc)
    layers["resource-limits"] = _resource_limits(policy, failed)
    layers["seccomp"] = pyseccomp is not None and _seccomp(pyseccomp, failed)


def _become_nobody() -> None:
    os.setresgid(NOBODY, NOBODY, NOBODY)
    os.setresuid(NOBODY, NOBODY, NOBODY)


def _private_root(job: dict[str, Any], sources: dict[str, int], *, owner: tuple[int, int],
                  folder: tuple[int, int]) -> str:
    """Build the code's whole file system view on a tmpfs and pivot into it: the visible paths
    bound read-only (from descriptors opened while they could still be reached), five devices,
    fresh tmpfs mounts on /tmp (returned: the code's folder), /var/tmp and /dev/shm, its own /proc
    (where the kernel lets one be mounted here; none otherwise)."""
    libc = _libc()
    new = job["root"]

    def mount(source: str | None, target: str, kind: str | None, flags: int, options: str | None = None) -> None:
        _check(libc.mount(source and source.encode(), target.encode(), kind and kind.encode(), flags,
                          options and options.encode()), f"mount {kind or source} on {target}")

    mount(None, "/", None, MS_REC | MS_PRIVATE)
    mount("tmpfs", new, "tmpfs", MS_NOSUID | MS_NODEV, "mode=0755,size=1m,nr_inodes=1024")
    ids = f"uid={owner[0]},gid={owner[1]},mode=0700"
    for path, options in (("/dev", "mode=0755,size=64k,nr_inodes=64"), ("/proc", None),
                          ("/tmp", f"size={folder[0]},nr_inodes={folder[1]},{ids}"),
                          ("/var/tmp", f"size=1m,nr_inodes=64,{ids}"), ("/dev/shm", f"size=1m,nr_inodes=64,{ids}")):
        os.makedirs(new + path, mode=0o755, exist_ok=True)
        if options:
            mount("tmpfs", new + path, "tmpfs", MS_NOSUID | MS_NODEV | MS_NOEXEC * (path != "/dev"), options)
    for path, kind in sorted(job["visible"]):
        target = new + path
        os.makedirs(os.path.dirname(target), mode=0o755, exist_ok=True)
        if kind.startswith("->"):
            os.symlink(kind[2:], target)
            continue
        if kind == "dir":
            os.makedirs(target, mode=0o755, exist_ok=True)
        else:
            os.close(os.open(target, os.O_CREAT | os.O_WRONLY, 0o644))
        mount(f"/proc/self/fd/{sources[path]}", target, None, MS_BIND | MS_REC)
        locked = os.statvfs(target).f_flag
        flags = (locked & (MS_NOSUID | MS_NODEV | MS_NOEXEC | MS_NOATIME | MS_NODIRATIME)) | (
            MS_RELATIME if locked & ST_RELATIME else 0)  # a remount keeps the flags a namespace may not clear
        flags |= MS_NOSUID | (0 if kind == "device" else MS_RDONLY | MS_NODEV)
        mount(None, target, None, MS_REMOUNT | MS_BIND | flags)
    # A container that masks parts of /proc refuses a new one: the code then sees an empty /proc.
    libc.mount(b"proc", (new + "/proc").encode(), b"proc", MS_NOSUID | MS_NODEV | MS_NOEXEC, None)
    os.chdir(new)
    _check(libc.syscall(PIVOT_ROOT, b".", b"."), "pivot_root")
    _check(libc.umount2(b".", 2), "detach the host's root")  # MNT_DETACH
    os.chdir("/")
    mount(None, "/", None, MS_REMOUNT | MS_BIND | MS_RDONLY | MS_NOSUID | MS_NODEV)
    return "/tmp"


def _landlock_rules(visible: list[list[str]], home: str, *, own_proc: bool) -> list[tuple[int, str]]:
    """Descriptors for Landlock's rules, opened now (before any drop of privileges): [fd, what]."""
    rules = [(os.open(path, os.O_PATH | os.O_CLOEXEC), kind)
             for path, kind in visible if not kind.startswith("->") and os.path.exists(path)]
    rules.append((os.open(home, os.O_PATH | os.O_CLOEXEC), "home"))
    if own_proc:
        rules.append((os.open("/proc", os.O_PATH | os.O_CLOEXEC), "dir"))
    return rules


def _landlock(rules: list[tuple[int, str]], failed: dict[str, str]) -> bool:
    """Reads beneath the visible paths, everything beneath its folder, nothing else; with ABI 4 no
    TCP; with ABI 6 no signals out and no abstract unix sockets. False where the kernel has none."""
    import ctypes

    libc = _libc()
    try:
        abi = libc.syscall(444, None, 0, 1)  # landlock_create_ruleset(NULL, 0, LANDLOCK_CREATE_RULESET_VERSION)
        if abi < 1:
            return False
        everything = (1 << (13 + min(abi - 1, 2))) - 1 if abi < 5 else (1 << 16) - 1  # fs rights this ABI knows
        read = 1 | 4 | 8  # execute, read_file, read_dir
        file_rights = {"file": 1 | 4, "device": 2 | 4 | (1 << 14 if abi >= 3 else 0),
                       "home": everything, "dir": read}

        class RulesetAttr(ctypes.Structure):
            _fields_ = [("fs", ctypes.c_uint64), ("net", ctypes.c_uint64), ("scoped", ctypes.c_uint64)]

        class PathBeneath(ctypes.Structure):
            _pack_ = 1
            _fields_ = [("allowed", ctypes.c_uint64), ("parent_fd", ctypes.c_int32)]

        attr = RulesetAttr(everything, 0b11 if abi >= 4 else 0, 0b11 if abi >= 6 else 0)
        ruleset = libc.syscall(444, ctypes.byref(attr), 24 if abi >= 6 else 16 if abi >= 4 else 8, 0)
        if ruleset < 0:
            raise LayerFailed(f"landlock_create_ruleset: {os.strerror(ctypes.get_errno())}")
        for fd, what in rules:
            rule = PathBeneath(file_rights[what] & everything, fd)
            _check(libc.syscall(445, ruleset, 1, ctypes.byref(rule), 0), "landlock_add_rule")
            os.close(fd)
        _check(libc.syscall(446, ruleset, 0), "landlock_restrict_self")
        os.close(ruleset)
        return True
    except LayerFailed as error:
        failed["landlock"] = str(error)
        return False


def _drop_capabilities(libc: Any) -> None:
    """No capability left, even inside its own namespaces: bounding set, ambient, then the rest."""
    import ctypes

    for capability in range(64):
        if libc.prctl(24, capability, 0, 0, 0) != 0:  # PR_CAPBSET_DROP, until past the last one
            break
    libc.prctl(47, 4, 0, 0, 0)  # PR_CAP_AMBIENT_CLEAR_ALL

    class Header(ctypes.Structure):
        _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]

    no_capabilities = (ctypes.c_uint32 * 6)()
    _check(libc.capset(ctypes.byref(Header(0x20080522, 0)), no_capabilities), "capset")


def _resource_limits(policy: dict[str, Any], failed: dict[str, str]) -> bool:
    import resource

    wanted = {resource.RLIMIT_CPU: policy["cpu_seconds"], resource.RLIMIT_AS: policy["memory_bytes"],
              resource.RLIMIT_FSIZE: policy["output_bytes"], resource.RLIMIT_NOFILE: policy["open_files"],
              resource.RLIMIT_NPROC: policy["processes"], resource.RLIMIT_CORE: 0}
    try:
        for kind, value in wanted.items():
            resource.setrlimit(kind, (value, value))
    except (OSError, ValueError) as error:
        failed["resource-limits"] = str(error)
        return False
    return True


# What CPython needs to compute, import, read and write files, run threads and signal itself.
ALLOWED_CALLS = (
    "read write readv writev pread64 pwrite64 preadv pwritev preadv2 pwritev2 lseek close close_range dup dup2 dup3 "
    "fcntl flock fsync fdatasync ftruncate truncate fadvise64 open openat creat stat fstat lstat newfstatat statx "
    "statfs fstatfs access faccessat faccessat2 readlink readlinkat getdents getdents64 getcwd chdir fchdir mkdir "
    "mkdirat rmdir unlink unlinkat rename renameat renameat2 link linkat symlink symlinkat umask sendfile "
    "copy_file_range pipe pipe2 poll ppoll select pselect6 epoll_create epoll_create1 epoll_ctl epoll_wait "
    "epoll_pwait epoll_pwait2 eventfd2 mmap munmap mprotect mremap brk madvise mbind get_mempolicy msync mincore "
    "membarrier rt_sigaction rt_sigprocmask rt_sigreturn rt_sigpending rt_sigtimedwait rt_sigsuspend sigaltstack "
    "pause alarm getitimer setitimer timer_create timer_settime timer_gettime timer_getoverrun timer_delete futex "
    "futex_waitv set_robust_list get_robust_list set_tid_address rseq exit exit_group restart_syscall gettid getpid "
    "getppid getuid geteuid getgid getegid getgroups getresuid getresgid getpgrp getpgid getsid uname sysinfo "
    "getrusage times getrlimit getcpu sched_yield sched_getaffinity clock_gettime clock_getres clock_nanosleep "
    "nanosleep gettimeofday time getrandom arch_prctl").split()
IOCTLS = (0x5401, 0x5413, 0x5450, 0x5451, 0x5421, 0x541B)  # TCGETS TIOCGWINSZ FIONCLEX FIOCLEX FIONBIO FIONREAD


def _seccomp(seccomp: Any, failed: dict[str, str]) -> bool:
    """An allowlist: everything not named here fails with EPERM (clone3 with ENOSYS, so that
    threads fall back to clone), syscalls newer than this filter and other architectures' too."""
    pid = os.getpid()
    try:
        rules = seccomp.SyscallFilter(defaction=seccomp.ERRNO(errno.EPERM))
        for name in ALLOWED_CALLS:
            try:
                rules.add_rule(seccomp.ALLOW, name)
            except (OSError, RuntimeError, ValueError):
                pass  # a call this libseccomp does not know: refused, as everything unnamed
        rules.add_rule(seccomp.ALLOW, "clone", seccomp.Arg(0, seccomp.MASKED_EQ, 0x10000, 0x10000))  # CLONE_THREAD
        rules.add_rule(seccomp.ERRNO(errno.ENOSYS), "clone3")
        for name in ("kill", "tgkill"):
            rules.add_rule(seccomp.ALLOW, name, seccomp.Arg(0, seccomp.EQ, pid))  # itself only
        rules.add_rule(seccomp.ALLOW, "prlimit64", seccomp.Arg(0, seccomp.EQ, 0))
        for option in (15, 16):  # PR_SET_NAME, PR_GET_NAME
            rules.add_rule(seccomp.ALLOW, "prctl", seccomp.Arg(0, seccomp.EQ, option))
        for request in IOCTLS:
            rules.add_rule(seccomp.ALLOW, "ioctl", seccomp.Arg(1, seccomp.EQ, request))
        rules.load()
    except (OSError, RuntimeError, ValueError) as error:
        failed["seccomp"] = str(error)
        return False
    return True


if __name__ == "__main__":
    _child()
