"""Faults a fleet meets every day, as a worker meets them. Preemption: SIGTERM/SIGINT stop the
claims, what is being generated finishes within the grace period and is written, everything else
goes back at once, exit 0 with the summary; `--max-runtime` stops claiming in time; `--idle-exit`
picks up work queued after the run finished. A full disk stops the worker clearly, its claims
given back; a broken device stops without spending its items' attempts; a local Prefect server
whose port was taken before it bound it is started again on another, and one still being started
(its command line not yet readable) is waited for."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from flows.seed import seed
from tasks.config import SeedConfig, WorkerConfig
from tasks.errors import UserError
from tasks.local_servers import port_taken
from tasks.prefect_server import alive, local_server_url, stop_server
from tasks.store.models import Item
from tasks.store.sqlite import SqliteStore
from tasks.worker.leases import LeaseKeeper
from tasks.worker.loop import work_on_run
from tasks.worker.outbox import DeviceBroken
from tasks.worker.shutdown import Shutdown
from tests.support import ScriptedEngine, wait_until
from tests.test_generate_flow import start_worker


class TimedEngine(ScriptedEngine):
    """Answers each batch after `seconds`; calls `after_batch(n)` when batch n is answered."""

    def __init__(self, seconds: float, after_batch=lambda n: None):
        super().__init__({"": "#### 1"}, batch_size=4)
        self.seconds, self.after_batch, self.batches = seconds, after_batch, 0

    def run(self, feeder, sampling):
        for group in super().run(feeder, sampling):
            time.sleep(self.seconds)
            self.batches += 1
            self.after_batch(self.batches)
            yield group


def seeded(tmp_path: Path, count: int) -> tuple[SqliteStore, WorkerConfig]:
    store = SqliteStore(tmp_path / "w.db")
    store.seed("r", [Item(question_id=f"q{n:03d}", question=f"question {n}", reference="1") for n in range(count)])
    return store, WorkerConfig(store=f"sqlite:///{tmp_path / 'w.db'}", run="r", batch_size=4, lease_seconds=60,
                               worker="w")


def statuses(store: SqliteStore) -> dict[str, int]:
    counts: dict[str, int] = {}
    for item in store.items("r"):
        counts[item.status] = counts.get(item.status, 0) + 1
    return counts


def test_a_stop_writes_what_finished_and_gives_the_rest_back_at_once(tmp_path: Path) -> None:
    store, config = seeded(tmp_path, 40)
    shutdown = Shutdown(grace_seconds=30)
    engine = TimedEngine(0.05, after_batch=lambda n: n == 2 and shutdown.request("SIGTERM"))
    with LeaseKeeper(store, config.lease_seconds) as keeper, shutdown.on_signals(keeper.give_back_all):
        reports = work_on_run(store=store, engine=engine, config=config, keeper=keeper, shutdown=shutdown)
    assert sum(report.done for report in reports) == 8 == statuses(store)["done"]
    assert statuses(store) == {"done": 8, "pending": 32}  # the batch claimed ahead went back untouched
    assert {item.attempts for item in store.items("r")} == {0} and shutdown.reason == "SIGTERM"


def test_after_the_grace_period_what_is_still_generating_goes_back_too(tmp_path: Path) -> None:
    store, config = seeded(tmp_path, 8)
    shutdown = Shutdown(grace_seconds=0.2)
    engine = TimedEngine(3.0)
    with LeaseKeeper(store, config.lease_seconds) as keeper, shutdown.on_signals(keeper.give_back_all):
        threading.Timer(0.5, shutdown.request, args=("SIGTERM",)).start()
        worker = threading.Thread(target=work_on_run, kwargs=dict(store=store, engine=engine, config=config,
                                                                  keeper=keeper, shutdown=shutdown))
        worker.start()
        # the grace period over, the batch still being generated: its items are back for another worker
        assert wait_until(lambda: statuses(store) == {"pending": 8}, timeout=10)
        worker.join(timeout=30)
    assert statuses(store) == {"pending": 8}  # the late answers were refused: the items are no longer ours


def test_max_runtime_stops_claiming_when_less_time_is_left_than_a_batch_takes(tmp_path: Path) -> None:
    store, config = seeded(tmp_path, 40)
    shutdown = Shutdown(grace_seconds=30, max_runtime=1.5)
    with LeaseKeeper(store, config.lease_seconds) as keeper:
        work_on_run(store=store, engine=TimedEngine(0.4), config=config, keeper=keeper, shutdown=shutdown)
    assert "--max-runtime" in shutdown.reason
    done = statuses(store)
    assert 4 <= done["done"] <= 16  # it stopped claiming early: 40 items would take 4 s
    assert done.get("running", 0) == 0 and sum(done.values()) == 40


def test_idle_exit_picks_up_work_queued_after_the_run_finished(tmp_path: Path) -> None:
    store, config = seeded(tmp_path, 4)
    late = Item(question_id="late", question="a refine round", reference="1")
    threading.Timer(1.0, lambda: SqliteStore(tmp_path / "w.db").seed("r", [late])).start()
    with LeaseKeeper(store, config.lease_seconds) as keeper:
        work_on_run(store=store, engine=TimedEngine(0.01), config=config.model_copy(update={"lease_seconds": 10}),
                    keeper=keeper, idle_exit=4.0)
    assert statuses(store) == {"done": 5}


@pytest.mark.parametrize("engine", ["hf-static", "hf"])
def test_sigterm_ends_a_worker_cleanly_with_exit_0(tmp_path: Path, tiny_model: Path, engine: str) -> None:
    """The real command line on the machine's shared local Prefect server, as on a bare notebook,
    with each HF engine."""
    seed(SeedConfig(store=f"sqlite:///{tmp_path / 'fleetgen.db'}", run="r", limit=60))
    store = SqliteStore(tmp_path / "fleetgen.db")
    worker = start_worker(tmp_path, tiny_model, "preempted", "--engine", engine, "--batch-size", "4",
                          "--max-new-tokens", "48")
    deadline = time.monotonic() + 240
    while not any(item.status == "done" for item in store.items("r")):
        assert worker.poll() is None and time.monotonic() < deadline, worker.stdout.read() if worker.poll() else ""
        time.sleep(0.2)
    worker.send_signal(signal.SIGTERM)
    output = worker.communicate(timeout=120)[0]
    assert worker.returncode == 0, output
    assert "stopped (SIGTERM)" in output and "Traceback" not in output, output
    counts = statuses(store)
    assert counts.get("running", 0) == 0 and counts["done"] >= 1 and counts["done"] + counts.get("pending", 0) == 60
    assert wait_until(lambda: running_in_group(worker.pid) == [], timeout=10)  # nothing of the worker's own left


def running_in_group(pgid: int) -> list[int]:
    """Live processes of a process group (zombies left to an init that does not reap them aside)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            state, _, group = stat.read_text().rsplit(")", 1)[1].split()[:3]
        except (OSError, ValueError):
            continue
        if int(group) == pgid and state != "Z":
            found.append(int(stat.parent.name))
    return found


def test_sigterm_while_waiting_for_the_local_prefect_server_ends_the_worker_with_exit_0(tmp_path: Path,
                                                                                        tiny_model: Path) -> None:
    seed(SeedConfig(store=f"sqlite:///{tmp_path / 'fleetgen.db'}", run="r", limit=8))
    home = tmp_path / "cold-prefect-home"  # no server yet: the worker starts one and waits for it
    try:
        worker = start_worker(tmp_path, tiny_model, "early", env={"PREFECT_HOME": str(home)})
        for line in worker.stdout:
            if "starting a local Prefect server" in line:
                worker.send_signal(signal.SIGTERM)
                break
        output = worker.communicate(timeout=120)[0]
        assert worker.returncode == 0, output
        assert "stopped (SIGTERM) while starting or ending; it held no claims" in output
        assert "Traceback" not in output
        assert statuses(SqliteStore(tmp_path / "fleetgen.db")) == {"pending": 8}
        assert local_server_url(home / "fleetgen-server")  # the shared server started on, for the next command
    finally:
        stop_server(home / "fleetgen-server")


def test_a_port_taken_before_the_prefect_server_binds_it_is_read_from_its_log(tmp_path: Path) -> None:
    """Prefect checks its port itself and exits with its own words: the start reads them as a taken port
    (and starts again on another) rather than as a server that cannot start."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        log = tmp_path / "server.log"
        with log.open("wb") as output:
            started = subprocess.run([sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1",
                                      "--port", str(taken.getsockname()[1])], stdout=output, stderr=subprocess.STDOUT,
                                     env={**os.environ, "PREFECT_HOME": str(tmp_path)}, timeout=120)
    assert started.returncode != 0 and port_taken(log), log.read_text()


def test_a_server_being_started_counts_as_alive_and_an_ended_one_does_not() -> None:
    """A server's command line reads empty from /proc between the fork's return and the end of its
    exec, and again once it has ended: read as stopped, the first made a command give up on a server
    that came up a moment later. Seen on the host: a process with an empty command line that runs (a
    kernel thread), a zombie, a named and an unnamed process."""
    running_unnamed = [int(entry.parent.name) for entry in Path("/proc").glob("[0-9]*/cmdline")
                       if _read(entry) == b"" and _state(entry.parent.name) == b"S"]
    if not running_unnamed:
        pytest.skip("no running process with an empty command line here (no kernel threads visible)")
    assert alive(running_unnamed[0])
    named = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)", "prefect"])
    unnamed = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    ended = subprocess.Popen([sys.executable, "-c", "pass"])
    try:
        assert wait_until(lambda: _state(ended.pid) == b"Z", timeout=30)  # ended, not waited for: a zombie
        assert not alive(ended.pid)
        assert wait_until(lambda: alive(named.pid), timeout=30) and not alive(unnamed.pid)
    finally:
        for process in (named, unnamed, ended):
            process.kill()
            process.wait()


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError:
        return b"-"


def _state(pid: int | str) -> bytes:
    """A process's state letter, read on the host (S sleeping, Z zombie)."""
    fields = _read(Path(f"/proc/{pid}/stat")).rpartition(b")")[2].split()
    return fields[0] if fields else b"-"


def test_a_full_disk_stops_the_worker_with_a_clear_message_and_its_claims_given_back(tmp_path: Path) -> None:
    store, config = seeded(tmp_path, 40)
    pages = store._db.execute("PRAGMA page_count").fetchone()[0]
    store._db.execute(f"PRAGMA max_page_count = {pages}")  # no room for a single answer more
    engine = TimedEngine(0.01)
    with LeaseKeeper(store, config.lease_seconds) as keeper, pytest.raises(UserError) as raised:
        work_on_run(store=store, engine=engine, config=config, keeper=keeper)
    assert "The disk is full" in str(raised.value) and "cannot rollback" not in str(raised.value)
    after = statuses(SqliteStore(tmp_path / "w.db"))  # what fitted is kept; nothing lost, nothing left held
    assert after.get("running", 0) == 0 and after["pending"] > 0 and after["pending"] + after.get("done", 0) == 40


class BrokenEngine(ScriptedEngine):
    """A device whose every answer fails (a corrupted CUDA context)."""

    def run(self, feeder, sampling):
        while (requests := feeder.take(self.batch_size, wait=True)) is not None:
            yield [(request, RuntimeError("CUDA error: an illegal memory access was encountered"))
                   for request in requests]


def test_a_broken_device_stops_and_gives_its_items_back_with_no_attempt_spent(tmp_path: Path) -> None:
    store, config = seeded(tmp_path, 40)
    with LeaseKeeper(store, config.lease_seconds) as keeper, pytest.raises(DeviceBroken, match="illegal memory"):
        work_on_run(store=store, engine=BrokenEngine({}), config=config, keeper=keeper)
    assert statuses(store) == {"pending": 40} and {item.attempts for item in store.items("r")} == {0}


def test_items_that_fail_among_answered_ones_fail_as_their_own(tmp_path: Path) -> None:
    store, config = seeded(tmp_path, 12)

    class Flaky(ScriptedEngine):
        def run(self, feeder, sampling):
            for group in super().run(feeder, sampling):
                yield [(request, RuntimeError("bad item") if "question 3" in str(request.prompt) or
                        "question 7" in str(request.prompt) else answer)
                       for request, answer in group]

    with LeaseKeeper(store, config.lease_seconds) as keeper:
        for _ in range(config.max_attempts):
            work_on_run(store=store, engine=Flaky({"": "#### 1"}), config=config, keeper=keeper)
    assert statuses(store) == {"done": 10, "failed": 2}


def test_a_worker_goes_on_without_its_broken_device_and_says_so(prefect_env, tmp_path: Path, monkeypatch) -> None:
    from flows.generate import generate
    from tasks.worker import steps

    store, config = seeded(tmp_path, 40)
    store.ensure_run("r", {})
    def engine(**kwargs):
        kind = BrokenEngine if kwargs["label"] == "cpu#1" else ScriptedEngine
        return kind({"": "#### 1"}, label=kwargs["label"])

    monkeypatch.setattr(steps, "create_engine", engine)
    result = generate(config.model_copy(update={"devices": "cpu,cpu"}))
    assert list(result["broken"]) == ["cpu#1"] and "illegal memory access" in result["broken"]["cpu#1"]
    assert statuses(store) == {"done": 40} and result["devices"]["all"]["done"] == 40

    store.seed("r2", [Item(question_id=f"q{n}", question=f"question {n}", reference="1") for n in range(40)])
    store.ensure_run("r2", {})
    monkeypatch.setattr(steps, "create_engine", lambda **kwargs: BrokenEngine({}, label=kwargs["label"]))
    with pytest.raises(UserError, match="Every device of this worker stopped: cpu#0: .* Restart the machine"):
        generate(config.model_copy(update={"devices": "cpu,cpu", "run": "r2"}))
    assert {(i.status, i.attempts) for i in store.items("r2")} == {("pending", 0)}


def test_an_idle_device_ends_as_soon_as_its_sibling_finishes_the_run(tmp_path: Path) -> None:
    """Not after its idle poll (7.5-22.5 s with the default lease): the sibling's last write wakes it."""
    store, config = seeded(tmp_path, 8)
    config = config.model_copy(update={"lease_seconds": 600})
    with LeaseKeeper(store, config.lease_seconds) as keeper:
        slow = threading.Thread(target=work_on_run, kwargs=dict(store=store, engine=TimedEngine(1.0), config=config,
                                                                keeper=keeper))
        started = time.monotonic()
        slow.start()
        while statuses(store).get("running", 0) < 4:  # the slow device holds its first batch
            time.sleep(0.01)
        work_on_run(store=store, engine=TimedEngine(0.0), config=config, keeper=keeper)
        slow.join()
    assert statuses(store) == {"done": 8} and time.monotonic() - started < 7, time.monotonic() - started


def test_at_the_grace_periods_end_the_engine_stops_generating(tmp_path: Path, tiny_model: Path) -> None:
    """A batch far from its end when the grace runs out is stopped (not generated to its end for
    nothing: its items are back in the store), on hf-static's model.generate."""
    from tasks.config import ModelConfig, SamplingConfig
    from tasks.engines.hf_static import HFStaticEngine

    store, config = seeded(tmp_path, 4)
    config = config.model_copy(update={"sampling": SamplingConfig(max_new_tokens=3500)})  # ~4 s here, alone
    engine = HFStaticEngine(ModelConfig(model=str(tiny_model)), device="cpu", batch_size=4)
    shutdown = Shutdown(grace_seconds=0.2)
    generated: list[int] = []
    generate = engine.model.generate

    def stopped_as_it_starts(**kwargs):
        shutdown.request("SIGTERM")  # the batch has 0.2 s of grace
        output = generate(**kwargs)
        generated.append(output.shape[1] - kwargs["input_ids"].shape[1])
        return output

    engine.model.generate = stopped_as_it_starts
    with LeaseKeeper(store, config.lease_seconds) as keeper, shutdown.on_signals(keeper.give_back_all):
        work_on_run(store=store, engine=engine, config=config, keeper=keeper, shutdown=shutdown)
    assert generated == [generated[0]] and generated[0] < 3500  # stopped, not run to its 3,500 tokens
    assert statuses(store) == {"pending": 4} and {item.attempts for item in store.items("r")} == {0}


def test_a_streamed_answer_stops_at_the_grace_periods_end() -> None:
    """The openai/vllm engines close the stream of an answer whose item went back (the server then
    drops the request) instead of reading it to its end."""
    from tasks.config import EngineConfig, SamplingConfig
    from tasks.engines import Abandoned, Request, answer_all
    from tasks.engines.openai_api import OpenAIEngine
    from tests.support import ScriptedServer

    server = ScriptedServer([], reply=lambda body: (" word" * 400, "stop"), stream_delay=0.01)
    grace_over = threading.Event()
    try:
        engine = OpenAIEngine(api_base=server.url, model="scripted-model", label="api",
                              settings=EngineConfig(name="openai", api_base=server.url))
        request = Request(key="1", prompt="Eggs?", on_progress=lambda read: grace_over.set(),  # as it starts
                          abandoned=grace_over.is_set)
        [answer] = answer_all(engine, [request], SamplingConfig(max_new_tokens=1000))
        assert isinstance(answer, Abandoned) and "1 streamed pieces of its answer dropped" in str(answer)
        counts: list[int] = []

        def stopped_growing() -> bool:  # a server still streaming to its end grows 30 words between looks
            counts.append(server.streamed[-1])
            time.sleep(0.3)
            return len(counts) > 1 and counts[-1] == counts[-2]

        assert wait_until(stopped_growing, timeout=20) and counts[-1] < 400
    finally:
        server.close()
