"""The sandbox against a red team: each attack is model-written code run through the real sandbox
by a process that plays the worker (tests/sandbox_runner.py: secrets in its environment and on its
command line), and each verdict comes from evidence taken on the host, never from what the sandbox
says about itself. Where an attack could be shown to work, it is first run without the sandbox
(the control), so a test cannot pass because the attack was broken.

Three modes, each asserting which layers are on:
- root with this Python (pyenv's, under /root, which `nobody` cannot read), every layer;
- as on Kaggle: root in a container whose seccomp profile refuses namespaces (Docker's default
  without CAP_SYS_ADMIN), with a world-readable Python (a venv of /usr/bin/python3): the code runs
  as `nobody` under Landlock and seccomp;
- without Landlock (a kernel older than 5.13): namespaces and seccomp alone."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import socket
import sqlite3
import subprocess
import sys
import tempfile
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import pytest

from flows.seed import seed
from tasks.config import SeedConfig
from tasks.sandbox import LAYERS, remove_tree
from tasks.store.sqlite import SqliteStore
from tests.conftest import run_script
from tests.support import wait_until
from tests.test_sandbox import HOSTILE

ROOT = Path(__file__).resolve().parents[1]
RUNNER = ROOT / "tests" / "sandbox_runner.py"
TAG = uuid.uuid4().hex[:10]
SECRETS = {"environment": f"ENV-SECRET-{TAG}", "command line": f"CMDLINE-SECRET-{TAG}",
           "sqlite": f"SQLITE-SECRET-{TAG}", "0600 file": f"FILE-SECRET-{TAG}"}
NAMESPACES = {"user-namespace", "mount-namespace", "pid-namespace", "network-namespace"}

pytestmark = pytest.mark.skipif(os.getuid() != 0 or sys.platform != "linux",
                                reason="the attack suite plays a root worker on Linux (as on Kaggle and Colab)")


@dataclass(frozen=True)
class Mode:
    name: str
    python: str
    prefix: str  # the Python install the code may read
    deny: str
    off: frozenset[str]  # the layers expected off


@pytest.fixture(scope="session")
def kaggle_python() -> Iterator[Path]:
    """A venv of the system's Python (world-readable, as /opt/conda is on Kaggle) with pyseccomp."""
    import pyseccomp

    if not Path("/usr/bin/python3").exists():
        pytest.skip("no /usr/bin/python3 to make a world-readable Python from")
    folder = Path(tempfile.mkdtemp(prefix="fleetgen-kaggle-python-"))
    folder.chmod(0o755)
    subprocess.run(["/usr/bin/python3", "-m", "venv", "--without-pip", str(folder / "venv")], check=True)
    site = next((folder / "venv" / "lib").glob("python3*/site-packages"))
    shutil.copy(pyseccomp.__file__, site)
    yield folder / "venv"
    shutil.rmtree(folder)


@pytest.fixture(scope="session", params=["root", "as on Kaggle", "without Landlock"])
def mode(request: pytest.FixtureRequest) -> Mode:
    if request.param == "as on Kaggle":
        venv = request.getfixturevalue("kaggle_python")
        return Mode(request.param, str(venv / "bin" / "python"), str(venv), "namespaces", frozenset(NAMESPACES))
    if request.param == "without Landlock":
        return Mode(request.param, sys.executable, sys.prefix, "landlock", frozenset({"landlock"}))
    return Mode(request.param, sys.executable, sys.prefix, "", frozenset())


@dataclass
class Host:
    """What the attacks aim at, planted on the host: the worker's folder (world-searchable, as a
    notebook's working folder is) with a SQLite store and a 0600 token, root-owned programs to
    make setuid, and a Unix socket listening."""

    folder: Path
    listener: socket.socket

    @property
    def store(self) -> Path:
        return self.folder / "fleetgen.db"

    @property
    def token(self) -> Path:
        return self.folder / "token"

    @property
    def socket_path(self) -> Path:
        return self.folder / "sock"


@pytest.fixture
def host() -> Iterator[Host]:
    folder = Path(tempfile.mkdtemp(prefix="fleetgen-attack-"))
    folder.chmod(0o755)
    with sqlite3.connect(folder / "fleetgen.db") as db:
        db.execute("create table items (secret text)")
        db.execute("insert into items values (?)", (SECRETS["sqlite"],))
    (folder / "fleetgen.db").chmod(0o644)
    token = folder / "token"
    token.write_text(SECRETS["0600 file"])
    token.chmod(0o600)
    listener = socket.socket(socket.AF_UNIX)
    listener.bind(str(folder / "sock"))
    os.chmod(folder / "sock", 0o777)
    listener.listen(4)
    listener.setblocking(False)
    yield Host(folder, listener)
    listener.close()
    shutil.rmtree(folder)


def attack(mode: Mode, host: Host, codes: list[str], *, parallel: bool = False) -> list[dict]:
    """Run `codes` through the sandbox from a process that plays the worker, started in the
    worker's folder with a store URL on its command line and secrets in its environment."""
    environment = {**os.environ, "MONGODB_URI": f"mongodb://alice:{SECRETS['environment']}@db.example/fleet",
                   "OPENAI_API_KEY": SECRETS["environment"]}
    command = [mode.python, str(RUNNER), "--deny", mode.deny,
               "--store", f"mongodb://alice:{SECRETS['command line']}@db.example/fleet"] + ["--parallel"] * parallel
    done = subprocess.run(command, input=json.dumps(codes), capture_output=True, text=True, cwd=host.folder,
                          env=environment, timeout=120)
    assert done.returncode == 0, done.stderr  # execute() never raised
    executions = json.loads(done.stdout)
    for execution in executions:
        assert {name for name in LAYERS if not execution["layers"].get(name)} == mode.off, execution
    return executions


def unsandboxed(code: str, cwd: Path) -> subprocess.CompletedProcess:
    """The control: the same attack run as a plain process of the worker's user."""
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=cwd, timeout=60)


def evidence(path: Path) -> tuple:
    """What an attack on a file could change, read on the host."""
    status = os.lstat(path)
    attributes = sorted((name, os.getxattr(path, name, follow_symlinks=False))
                        for name in os.listxattr(path, follow_symlinks=False))
    return (status.st_mode, status.st_uid, status.st_gid, status.st_mtime_ns, status.st_size,
            hashlib.sha256(path.read_bytes()).hexdigest(), attributes)


CHANGE_FILES = r"""
import ctypes, os, struct
libc = ctypes.CDLL(None, use_errno=True)
capability = struct.pack("<IIIII", 0x02000001, 1 << 2, 0, 0, 0)  # cap_dac_read_search, effective
acl = struct.pack("<I", 2) + b"".join(struct.pack("<HHI", tag, 7, 0xFFFFFFFF) for tag in (1, 4, 0x20))
for path in {paths!r}:
    for name, attempt in [
            ("chmod", lambda: os.chmod(path, 0o4755)),
            ("fchmodat2", lambda: libc.syscall(452, -100, path.encode(), 0o4755, 0) == 0 or 1 / 0),
            ("capability", lambda: os.setxattr(path, "security.capability", capability)),
            ("acl", lambda: os.setxattr(path, "system.posix_acl_access", acl)),
            ("user xattr", lambda: os.setxattr(path, "user.fleetgen", b"1")),
            ("utime", lambda: os.utime(path, (0, 0))),
            ("chown", lambda: os.chown(path, 65534, 65534)),
            ("append", lambda: open(path, "ab").write(b"x")),
            ("truncate", lambda: os.truncate(path, 1))]:
        try:
            attempt()
            print(name, "worked on", path)
        except BaseException as error:
            print(name, "failed:", type(error).__name__)
"""


def test_host_files_keep_their_mode_attributes_and_times(mode: Mode, host: Host) -> None:
    """The setuid bit on a root-owned copy of `id`, a file capability, an ACL, its mtime: a copy
    where the code can see it (beside its Python) and one in the worker's folder."""
    targets = [Path(mode.prefix) / f"fleetgen-attack-id-{TAG}", host.folder / "id"]
    control = host.folder / "control-id"
    for target in [*targets, control]:
        shutil.copy("/usr/bin/id", target)
    try:
        before, control_before = [evidence(target) for target in targets], evidence(control)
        worked = unsandboxed(CHANGE_FILES.format(paths=[str(control)]), host.folder)
        for attempt in ("chmod", "fchmodat2", "capability", "acl", "utime"):  # the attacks are real
            assert f"{attempt} worked" in worked.stdout, worked
        assert evidence(control) != control_before
        (execution,) = attack(mode, host, [CHANGE_FILES.format(paths=[str(target) for target in targets])])
        assert "worked" not in execution["output"], execution
        assert [evidence(target) for target in targets] == before
    finally:
        targets[0].unlink(missing_ok=True)


READ_SECRETS = r"""
import glob, os
seen = [repr(dict(os.environ))]
for path in {paths!r} + sorted(glob.glob("/proc/*/cmdline") + glob.glob("/proc/*/environ")):
    try:
        with open(path, "rb") as file:
            seen.append(path + ": " + repr(file.read(1 << 16)))
    except OSError as error:
        seen.append(path + ": " + type(error).__name__)
print("\n".join(seen))
"""


def test_no_secret_of_the_worker_or_the_host_can_be_read(mode: Mode, host: Host) -> None:
    """The worker's environment and command line, its SQLite store (0644), a 0600 token, /etc/shadow."""
    paths = [str(host.store), str(host.token), "/etc/shadow", f"{host.folder}/../{host.folder.name}/token"]
    plain = unsandboxed(READ_SECRETS.format(paths=paths), host.folder)
    assert SECRETS["sqlite"] in plain.stdout and SECRETS["0600 file"] in plain.stdout  # the reads are real
    (execution,) = attack(mode, host, [READ_SECRETS.format(paths=paths)])
    assert "fleetgen.db" in execution["output"]  # the attack ran to its end
    shadow = Path("/etc/shadow").read_text().split("\n")[0]
    for secret in [*SECRETS.values(), shadow]:
        assert secret not in execution["output"] and secret not in (execution["error"] or ""), secret


URING = r"""
import ctypes, os
libc = ctypes.CDLL(None, use_errno=True)
libc.mmap.restype = ctypes.c_void_p
libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long]
params = (ctypes.c_uint32 * 30)()
ring = libc.syscall(425, 4, params)  # io_uring_setup
if ring < 0:
    raise OSError(ctypes.get_errno(), "io_uring_setup: " + os.strerror(ctypes.get_errno()))
entries, cq_entries, sq_off, cq_off = params[0], params[1], params[10:20], params[20:30]
sq = libc.mmap(None, sq_off[6] + entries * 4, 3, 1, ring, 0)
cq = libc.mmap(None, cq_off[5] + cq_entries * 16, 3, 1, ring, 0x8000000)
sqes = libc.mmap(None, entries * 64, 3, 1, ring, 0x10000000)
u32 = lambda base, offset: ctypes.c_uint32.from_address(base + offset)

def submit(opcode, fd, addr=0, length=0, off=0):
    ctypes.memset(sqes, 0, 64)
    ctypes.c_uint8.from_address(sqes).value = opcode
    ctypes.c_int32.from_address(sqes + 4).value = fd
    ctypes.c_uint64.from_address(sqes + 8).value = off
    ctypes.c_uint64.from_address(sqes + 16).value = addr
    ctypes.c_uint32.from_address(sqes + 24).value = length
    tail = u32(sq, sq_off[1]).value
    u32(sq, sq_off[6] + 4 * (tail & u32(sq, sq_off[2]).value)).value = 0
    u32(sq, sq_off[1]).value = tail + 1
    libc.syscall(426, ring, 1, 1, 1, None, 0)  # io_uring_enter: submit one, wait for it
    head = u32(cq, cq_off[0]).value
    result = ctypes.c_int32.from_address(cq + cq_off[5] + 16 * (head & u32(cq, cq_off[2]).value) + 8).value
    u32(cq, cq_off[0]).value = head + 1
    return result

sock = submit(45, 1, off=1)  # IORING_OP_SOCKET: AF_UNIX, SOCK_STREAM
address = ctypes.create_string_buffer(b"\x01\x00" + {path!r}.encode(), 110)
print("connect", submit(16, sock, ctypes.addressof(address), 0, 110))  # IORING_OP_CONNECT
message = ctypes.create_string_buffer(b"pwned through io_uring")
print("send", submit(26, sock, ctypes.addressof(message), 22))  # IORING_OP_SEND
"""
PLAIN_SOCKET = "import socket\ns = socket.socket(socket.AF_UNIX)\ns.connect({path!r})\ns.sendall(b'pwned')"


def received(listener: socket.socket) -> bytes:
    try:
        connection, _ = listener.accept()
    except BlockingIOError:
        return b""
    with connection:
        connection.settimeout(5)
        return connection.recv(100) or b"(connected)"


def test_no_socket_reaches_a_unix_listener_not_even_through_io_uring(mode: Mode, host: Host) -> None:
    plain = unsandboxed(URING.format(path=str(host.socket_path)), host.folder)
    assert received(host.listener) == b"pwned through io_uring", plain  # the io_uring attack is real
    executions = attack(mode, host, [URING.format(path=str(host.socket_path)),
                                     PLAIN_SOCKET.format(path=str(host.socket_path))])
    assert all(execution["error"] for execution in executions), executions
    assert received(host.listener) == b""


PLANT = r"""
import os
for folder in ["/tmp", "/dev/shm", "/var/tmp", os.getcwd(), os.environ["HOME"], {worker!r}]:
    try:
        with open(os.path.join(folder, "planted-{tag}"), "w") as file:
            file.write("left by the first execution")
        print("planted in", folder)
    except OSError as error:
        print("could not plant in", folder, type(error).__name__)
"""
FIND = r"""
import os
for folder in ["/tmp", "/dev/shm", "/var/tmp", os.getcwd(), os.environ["HOME"], {worker!r}]:
    try:
        print(folder, [name for name in os.listdir(folder) if "{tag}" in name])
    except OSError as error:
        print(folder, type(error).__name__)
"""


def scratch_folders() -> set[str]:
    return {name for name in os.listdir(tempfile.gettempdir()) if name.startswith("fleetgen-sandbox-")}


def test_nothing_persists_and_executions_cannot_see_each_other(mode: Mode, host: Host) -> None:
    before = scratch_folders()
    plant, find = PLANT.format(worker=str(host.folder), tag=TAG), FIND.format(worker=str(host.folder), tag=TAG)
    planted, found = attack(mode, host, [plant, find])
    assert "planted in" in planted["output"]  # its own folder at least
    assert f"planted-{TAG}" not in found["output"], found
    for folder in ["/tmp", "/dev/shm", "/var/tmp", str(host.folder)]:
        assert not [name for name in os.listdir(folder) if TAG in name], folder
    left = scratch_folders() - before  # every execution's folder removed (another test's goes when it ends)
    assert wait_until(lambda: not left & scratch_folders(), timeout=60), left


def test_a_kill_of_every_process_hits_nothing_outside(mode: Mode, host: Host) -> None:
    """kill(-1, 9) and a sweep of pids, beside a concurrent execution and a process of `nobody`."""
    bystander = subprocess.Popen(["sleep", "60"], user=65534, group=65534)
    try:
        killer = (f"import os\ntry:\n    os.kill(-1, 9)\nexcept OSError as error:\n    print(error)\n"
                  f"for pid in [{bystander.pid}, *range(1, 4096)]:\n    try:\n        os.kill(pid, 9)\n"
                  f"    except OSError:\n        pass\nprint('swept')")
        victim, sweeper = attack(mode, host, ["import time\ntime.sleep(3)\nprint('still alive')", killer],
                                 parallel=True)
        assert victim["output"].strip() == "still alive" and victim["error"] is None, victim
        assert bystander.poll() is None  # the runner (the worker) lived too: attack() read its answer
    finally:
        bystander.kill()
        bystander.wait()


def test_clean_up_and_the_report_cannot_be_broken(mode: Mode, host: Host) -> None:
    """1,200 nested folders; a forged report on stderr and on every descriptor; escape sequences."""
    before = scratch_folders()
    deep = "import os\nfor _ in range(1200):\n    os.mkdir('d')\n    os.chdir('d')\nopen('bottom', 'w').write('x')"
    forged = json.dumps({"layers": {name: True for name in LAYERS}, "status": 0})
    forge = (f"import os, sys\nsys.stderr.write({forged!r} + '\\n')\nfor fd in range(3, 64):\n    try:\n"
             f"        os.write(fd, {forged!r}.encode() + b'\\n')\n    except OSError:\n        pass\n"
             "print('\\x1b[2J\\x1b]0;owned\\x07\\x00ok\\r')\nsys.exit(3)")
    brackets = "import sys\nsys.stderr.write('[' * 200000)\nsys.exit(1)"
    nested, lied, bracketed = attack(mode, host, [deep, forge, brackets])
    assert nested["error"] is None
    left = scratch_folders() - before  # every execution's folder removed (another test's goes when it ends)
    assert wait_until(lambda: not left & scratch_folders(), timeout=60), left
    assert lied["error"] and "refused" not in lied["error"]  # its exit 3 stands; attack() checked the layers
    assert lied["output"] == "ok\n"
    assert bracketed["error"] and len(bracketed["error"]) <= 300


def test_the_process_limit_binds(mode: Mode, host: Host) -> None:
    bomb = ("import threading, time\nstarted = 0\ntry:\n    while True:\n"
            "        threading.Thread(target=time.sleep, args=(5,), daemon=True).start()\n        started += 1\n"
            "except RuntimeError:\n    print(started)")
    (execution,) = attack(mode, host, [bomb])
    assert 0 < int(execution["output"]) <= 128, execution


def test_the_known_hostile_snippets_are_contained(mode: Mode, host: Host) -> None:
    executions = attack(mode, host, [code for code, _ in HOSTILE.values()], parallel=True)
    for (what, (_, error)), execution in zip(HOSTILE.items(), executions):
        assert execution["error"] is not None and error in execution["error"], (what, execution)


def test_remove_tree_takes_any_tree_and_follows_no_link(tmp_path: Path) -> None:
    """3,000 nested folders with names long enough that their path is over the system's limit,
    a folder no one may enter, links out: gone, and nothing outside touched."""
    keep = tmp_path / "keep.txt"
    keep.write_text("outside")
    tree = tmp_path / "tree"
    tree.mkdir()
    folder = os.open(tree, os.O_RDONLY)
    for depth in range(3000):
        name = "d" * (200 if depth < 40 else 1)
        os.mkdir(name, dir_fd=folder)
        inner = os.open(name, os.O_RDONLY, dir_fd=folder)
        os.close(folder)
        folder = inner
    os.symlink(tmp_path, "link", dir_fd=folder)
    os.close(folder)
    (tree / "file-link").symlink_to(keep)
    (tree / "locked").mkdir(mode=0o000)
    remove_tree(tree)
    assert not tree.exists() and keep.read_text() == "outside"
    remove_tree(tmp_path / "missing")  # never raises


def test_a_layer_the_kernel_offers_that_does_not_turn_on_refuses_the_code(host: Host) -> None:
    broken = Mode("Landlock refused", sys.executable, sys.prefix, "landlock-restrict", frozenset({"landlock"}))
    (execution,) = attack(broken, host, ["print('the code ran')"])
    assert execution["output"] == ""
    assert execution["error"].startswith("the sandbox refused to run the code: landlock did not turn on "
                                         "(landlock_restrict_self: Operation not permitted)"), execution


def test_the_worker_refuses_code_execution_without_a_layer_it_requires(prefect_env, tmp_path: Path,
                                                                      tiny_model: Path) -> None:
    """Through the command line, on a kernel without Landlock: one paragraph, exit 2, nothing
    generated; and the same worker runs when it requires only what this machine has."""
    url = f"sqlite:///{tmp_path / 'fleetgen.db'}"
    seed(SeedConfig(store=url, run="r", limit=2))
    worker = ["--", sys.executable, str(ROOT / "flows" / "generate.py"), "--run", "r", "--model", str(tiny_model),
              "--devices", "cpu", "--code-execution", "--max-new-tokens", "4"]
    refused = run_script("tests/sandbox_runner.py", "--deny", "landlock", *worker, "--sandbox-layers",
                         "landlock,seccomp", cwd=tmp_path, env=prefect_env)
    assert refused.returncode == 2 and "Traceback" not in refused.stderr, refused.stderr
    assert ("Code execution cannot start: the sandbox refused to run the code: required layer(s) off on this "
            "machine: landlock") in refused.stderr
    assert {item.status for item in SqliteStore(tmp_path / "fleetgen.db").items("r")} == {"pending"}
    ran = run_script("tests/sandbox_runner.py", "--deny", "landlock", *worker, "--sandbox-layers", "seccomp",
                     cwd=tmp_path, env=prefect_env)
    assert ran.returncode == 0, ran.stderr
    assert "off here: landlock" in ran.stderr
    assert {item.status for item in SqliteStore(tmp_path / "fleetgen.db").items("r")} == {"done"}
