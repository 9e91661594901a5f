"""Plays the worker for the sandbox's attack tests: reads a JSON list of code blocks on stdin, runs
them through `tasks.sandbox.execute` (all at once with --parallel) and prints the executions as
JSON. Standard library only, so that any Python can run it (a venv of the system's Python, as on
Kaggle).

    python tests/sandbox_runner.py [--deny namespaces,landlock] [--parallel] [--store URL] < codes.json
    python tests/sandbox_runner.py --deny landlock -- python flows/generate.py ...

--deny makes this process (and so every sandbox it starts) meet a kernel without those features:
`namespaces` refuses unshare, mount and namespaced clones with EPERM, as Docker's default seccomp
profile does in a container without CAP_SYS_ADMIN (Kaggle's notebooks); `landlock` answers its
calls with ENOSYS, as a kernel older than 5.13 does; `landlock-restrict` lets Landlock be found
but refuses to turn it on (a broken layer). --store is not used: it puts a secret on this
process's command line, where a worker's store URL would be. After `--`, the command is run
under the same refusals instead."""

from __future__ import annotations

import argparse
import errno
import json
import os
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

NAMESPACE_FLAGS = 0x7E020000  # CLONE_NEWNS, NEWCGROUP, NEWUTS, NEWIPC, NEWUSER, NEWPID, NEWNET


def deny(features: set[str]) -> None:
    import pyseccomp as seccomp

    rules = seccomp.SyscallFilter(defaction=seccomp.ALLOW)
    if "namespaces" in features:
        for name in ("unshare", "setns", "mount", "umount2", "pivot_root", "open_tree", "move_mount", "fsopen"):
            rules.add_rule(seccomp.ERRNO(errno.EPERM), name)
        rules.add_rule(seccomp.ERRNO(errno.EPERM), "clone", seccomp.Arg(0, seccomp.MASKED_EQ, NAMESPACE_FLAGS,
                                                                        NAMESPACE_FLAGS))
        rules.add_rule(seccomp.ERRNO(errno.ENOSYS), "clone3")
    if "landlock" in features:
        for name in ("landlock_create_ruleset", "landlock_add_rule", "landlock_restrict_self"):
            rules.add_rule(seccomp.ERRNO(errno.ENOSYS), name)
    if "landlock-restrict" in features:
        rules.add_rule(seccomp.ERRNO(errno.EPERM), "landlock_restrict_self")
    rules.load()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--deny", default="")
    parser.add_argument("--parallel", action="store_true")
    parser.add_argument("--store", default="")
    parser.add_argument("--wall-seconds", type=float, default=5.0)
    parser.add_argument("command", nargs="*")
    args = parser.parse_args()
    if args.deny:
        deny(set(args.deny.split(",")))
    if args.command:
        os.execvp(args.command[0], args.command)
    from tasks.sandbox import SandboxPolicy, execute

    codes = json.load(sys.stdin)
    policy = SandboxPolicy(wall_seconds=args.wall_seconds, cpu_seconds=int(args.wall_seconds), required=())
    with ThreadPoolExecutor(len(codes) if args.parallel else 1) as pool:
        executions = list(pool.map(lambda code: execute(code, policy), codes))
    print(json.dumps([asdict(execution) for execution in executions]))


if __name__ == "__main__":
    main()
