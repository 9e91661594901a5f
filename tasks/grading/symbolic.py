"""Symbolic comparison with math-verify, in a small pool of processes with a deadline.

math-verify times itself out with `signal.alarm`, which works on the main thread only: on the
worker's save thread every symbolic comparison used to fail, so `\\frac{3}{4}` and `0.75` were
equal when a run was seeded and unequal when a worker graded it. Here math-verify runs with its
own timeouts off in a pebble process pool (spawned, so a parent holding torch threads or a CUDA
context forks nothing). A comparison that uses `TIMEOUT_SECONDS` of CPU time has its process
ended by the kernel (or after `WALL_SECONDS`, whatever it used) and counts as "not equal": the
same answer on any thread, however busy the machine, and no input can hang the caller. The
processes run at the lowest priority (nice 19): generation comes first.
"""

from __future__ import annotations

import atexit
import math
import multiprocessing
import os
import re
import resource
import threading
from concurrent.futures import TimeoutError as FutureTimeout
from typing import Any

TIMEOUT_SECONDS = 5.0  # of a comparison's own CPU time: a busy machine's wall clock is not its fault
WALL_SECONDS = 60.0  # its process killed after this long whatever its CPU time (stuck where no signal reaches)
READABLE = re.compile(r"[\d$\\\[]")  # every pattern of math-verify's `parse` (0.9) needs one of these
PYTHON_STYLE = re.compile(r"\*\*|\b(?:sqrt|exp|log|sin|cos|tan|pi)\(")  # `2**(1/4)`, `-1 + sqrt(3)`
WORKERS = 2
TASKS_PER_WORKER = 5000  # then a fresh process (sympy's caches bounded); each start imports for ~2 s of CPU
NICENESS = 19  # the lowest: on a machine of few cores, generation's threads barely notice the pool
WARM_UP = [("\\frac{1}{2}", "0.5"), ("2\\sqrt{3}", "\\sqrt{12}"), ("(-\\infty, 3]", "x \\le 3"),
           ("\\text{Evelyn}", "Evelyn"), ("18", "x**2 - 2"), ("3", "the number of apples")]
_pool: Any = None
_lock = threading.Lock()


def _latex(text: str) -> str:
    """math-verify reads LaTeX between delimiters; a bare answer gets them."""
    return text if "$" in text or "\\boxed" in text or "\\[" in text or "\\(" in text else f"${text}$"


def compare_answers(reference: str, predicted: str) -> bool:
    """In a pool process: two bare answers, read as LaTeX, else as plain expressions (`2**(1/4)`)."""
    from math_verify import ExprExtractionConfig, LatexExtractionConfig, parse, verify

    def read(text: str) -> list[Any]:  # one reading, the next only where it finds nothing: `x < 5` is not `5`
        if PYTHON_STYLE.search(text):
            from sympy.parsing.sympy_parser import implicit_multiplication, parse_expr, standard_transformations

            try:
                return [parse_expr(text, transformations=(*standard_transformations, implicit_multiplication))]
            except Exception:  # not Python after all: read it as math
                pass
        for source, config in ((_latex(text), LatexExtractionConfig()), (text, ExprExtractionConfig())):
            if found := parse(source, [config], parsing_timeout=None):  # type: ignore[arg-type]
                return found
        return []

    return bool(verify(read(reference), read(predicted), timeout_seconds=None))  # type: ignore[arg-type]


def might_read(response: str) -> bool:
    """Whether math-verify's reading of a whole response (`compare_response`) can find anything:
    each of its patterns needs a digit or LaTeX (`$`, `\\`, `[`); a text with none is not sent."""
    return READABLE.search(response) is not None


def compare_response(reference: str, response: str) -> str | None:
    """In a pool process: math-verify's own reading of a whole response; the answer it found
    equal to the reference, else None."""
    from math_verify import parse, verify

    found = parse(response, parsing_timeout=None)  # type: ignore[arg-type]
    if found and verify(parse(_latex(reference), parsing_timeout=None), found,  # type: ignore[arg-type]
                        timeout_seconds=None):  # type: ignore[arg-type]
        return str(found[-1])
    return None


def _start_worker() -> None:
    """Pool initializer: the lowest CPU priority (grading waits; a device's loop should not), no
    core file, math-verify's warning that its timeouts are off silenced (on purpose here: the
    pool's deadline replaces them), and a few comparisons of each kind made, so that what they
    import and cache on first use (the LaTeX parser's tables) is ready before the first batch."""
    os.nice(NICENESS)
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))  # a comparison ended for its CPU time leaves no core file
    import math_verify.grader
    import math_verify.parser

    math_verify.grader.TIMEOUT_WARNING_SHOWN = math_verify.parser.TIMEOUT_WARNING_SHOWN = True
    for reference, answer in WARM_UP:
        compare_answers(reference, answer)
        compare_response(reference, f"So the answer is ${answer}$.")


def _timed(function: Any, args: tuple[str, str], cpu_seconds: float) -> Any:
    """In a pool process: `function(*args)`; the kernel ends the process (SIGXCPU) once it has
    used `cpu_seconds` more CPU time (in whole seconds, rounded up), wherever it is stuck."""
    used = resource.getrusage(resource.RUSAGE_SELF)
    _, hard = resource.getrlimit(resource.RLIMIT_CPU)
    resource.setrlimit(resource.RLIMIT_CPU, (math.ceil(used.ru_utime + used.ru_stime + cpu_seconds), hard))
    return function(*args)


def _get_pool() -> Any:
    global _pool
    with _lock:
        if _pool is None or not _pool.active:
            from pebble import ProcessPool

            _pool = ProcessPool(max_workers=WORKERS, max_tasks=TASKS_PER_WORKER, initializer=_start_worker,
                                context=multiprocessing.get_context("spawn"))
            atexit.register(_shut_down, _pool)
        return _pool


def _shut_down(pool: Any) -> None:
    """At exit: let the workers (and one still being started after a timeout) finish cleanly."""
    pool.close()
    try:
        pool.join(timeout=10)
    except TimeoutError:
        pool.stop()


def start() -> None:
    """Start the pool's processes now (each imports math-verify and sympy and makes its warm-up
    comparisons: seconds of CPU), e.g. while a worker loads its models, not during its first batches."""
    _get_pool().schedule(os.getpid)


def run_all(calls: list[tuple[Any, tuple[str, str]]]) -> list[Any]:
    """Run `function(*args)` for each call in the pool, in parallel; a call that raises, uses
    `TIMEOUT_SECONDS` of CPU time or runs `WALL_SECONDS` gives None."""
    if not calls:
        return []
    pool = _get_pool()
    futures = [pool.schedule(_timed, args=(function, args, TIMEOUT_SECONDS), timeout=WALL_SECONDS)
               for function, args in calls]
    results = []
    for future in futures:
        try:
            results.append(future.result())
        except (FutureTimeout, Exception):  # a timeout, or math-verify giving up: not equal
            results.append(None)
    return results
