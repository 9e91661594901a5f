"""One config definition feeds every entry point: each command's --help lists every setting of
its config, and a bad value gets the same message from the command line, a Python call and a
deployment run executed by a real Prefect runner."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Iterator

import pytest
from prefect.client.orchestration import get_client
from prefect.deployments import run_deployment
from prefect.runner import Runner

from flows.generate import generate
from flows.refine import refine
from flows.seed import seed
from tasks.cli import command_parser, parse_command
from tasks.config import EngineConfig, ModelConfig, RefineConfig, SamplingConfig, SeedConfig, WorkerConfig
from tasks.config.base import Config, ConfigError, nested_config
from tasks.flag_reference import COMMANDS, reference
from tasks.sandbox import LAYERS
from tasks.store.sqlite import SqliteStore
from tests.conftest import ROOT, run_script


def setting_paths(config_class: type[Config], prefix: tuple[str, ...] = ()) -> Iterator[str]:
    for name, info in config_class.model_fields.items():
        nested = nested_config(info)
        yield from setting_paths(nested, (*prefix, name)) if nested else [".".join((*prefix, name))]


@pytest.mark.parametrize("script", COMMANDS)
def test_help_lists_every_setting_of_the_config(tmp_path: Path, script: str) -> None:
    result = run_script(script, "--help", cwd=tmp_path, timeout=120, env={"PYTHONPROFILEIMPORTTIME": "1"})
    assert result.returncode == 0, result.stderr
    imported = {line.split("|")[-1].strip() for line in result.stderr.splitlines() if line.startswith("import time:")}
    assert "tasks.config" in imported and not imported & {"prefect", "torch", "transformers"}, "imported too early"
    options = [action for action in command_parser(COMMANDS[script], script, "")._actions if action.dest != "help"]
    assert sorted(action.dest for action in options) == sorted(setting_paths(COMMANDS[script]))
    for action in options:
        assert action.option_strings[0] in result.stdout and action.help, action.dest


def test_the_flag_reference_is_made_from_the_configs() -> None:
    """docs/flags.md is what `python -m tasks.flag_reference` makes now: a changed setting without
    the reference made again fails here."""
    assert (ROOT / "docs" / "flags.md").read_text() == reference(), (
        "run: python -m tasks.flag_reference > docs/flags.md")
    assert set(COMMANDS) == {str(path.relative_to(ROOT)) for folder in ("flows", "deployments")
                             for path in (ROOT / folder).glob("*.py") if "parse_command(" in path.read_text()}


def test_flags_reach_the_config(tmp_path: Path) -> None:
    flags = ["--quantization", "4bit", "--max-new-tokens", "7", "--temperature", "0.5", "--devices", "cpu,cpu",
             "--sandbox-layers", "seccomp, landlock"]
    parsed = command_parser(WorkerConfig, "flows/generate.py", "").parse_args(flags)
    assert vars(parsed) == {"model.quantization": "4bit", "sampling.max_new_tokens": "7", "sampling.temperature": "0.5",
                            "devices": "cpu,cpu", "sandbox_layers": "seccomp, landlock"}
    config = parse_command(WorkerConfig, flags, "flows/generate.py", "")  # what the worker is then given
    assert (config.model.quantization, config.sampling.max_new_tokens, config.sampling.temperature, config.devices,
            config.required_sandbox_layers) == ("4bit", 7, 0.5, "cpu,cpu", ("seccomp", "landlock"))
    assert config.model.model == ModelConfig().model and not config.model.merge_adapter  # the rest as defaults
    with pytest.raises(ConfigError, match="--merge-adapter cannot merge into a quantized model"):
        parse_command(WorkerConfig, [*flags, "--merge-adapter"], "flows/generate.py", "")  # checked as a whole


def error_of(result) -> str:
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    return result.stderr.strip().removeprefix("error: ")


def test_a_bad_value_reads_the_same_from_the_command_line_python_and_a_deployment(
        prefect_env, tmp_path: Path, monkeypatch) -> None:
    cli = error_of(run_script("flows/generate.py", "--quantization", "nf4", cwd=tmp_path))
    assert cli.startswith("Invalid worker settings: model.quantization (--quantization) = 'nf4': Input should be")
    with pytest.raises(ConfigError) as built:
        WorkerConfig(model=ModelConfig(quantization="nf4"))
    with pytest.raises(ConfigError) as nested:
        WorkerConfig(model={"quantization": "nf4"})
    with pytest.raises(ConfigError) as called:
        generate({"model": {"quantization": "nf4"}})
    assert str(nested.value) == str(called.value) == cli
    # a ModelConfig built on its own reports as one
    assert str(built.value) == cli.replace("worker settings: model.quantization", "model settings: quantization")

    monkeypatch.chdir(ROOT)  # deployments name their flow by a path relative to here
    deployment = generate.to_deployment(name="bad-quantization", enforce_parameter_schema=False,
                                        parameters={"config": {"model": {"quantization": "nf4"}}})
    state = run_through_deployment(deployment)
    assert state.is_failed() and cli in state.message


def run_through_deployment(deployment):
    """Apply the deployment, create a run of it, and execute that run with a Prefect runner (a
    subprocess, as a work pool's worker would); the run's final state."""
    deployment_id = deployment.apply()
    flow_run = run_deployment(deployment_id, timeout=0, as_subflow=False)
    asyncio.run(Runner().execute_flow_run(flow_run.id, stream_output=False))
    with get_client(sync_client=True) as client:
        return client.read_flow_run(flow_run.id).state


def test_a_deployment_config_runs_the_flow(prefect_env, tmp_path: Path, monkeypatch) -> None:
    db = tmp_path / "w.db"
    store = SqliteStore(db)
    seed(SeedConfig(store=f"sqlite:///{db}", run="dep", limit=3))
    claim = store.claim("dep", "hand", 3, 60)
    store.fail(claim, claim.ids, "boom", max_attempts=1)  # three missing answers for refine to queue
    monkeypatch.setenv("MONGODB_URI", f"sqlite:///{db}")  # deployments take the store from the environment
    monkeypatch.chdir(ROOT)
    deployment = refine.to_deployment(name="refine-dep", enforce_parameter_schema=False,
                                      parameters={"config": {"run": "dep", "max_rounds": 1}})
    state = run_through_deployment(deployment)
    assert state.is_completed(), state.message
    assert sorted(item.stage for item in store.items("dep")) == [0, 0, 0, 1, 1, 1]


def test_a_masked_store_says_where_the_url_belongs() -> None:
    with pytest.raises(ConfigError, match=r"store \(--store\): the store URL arrived masked.*set MONGODB_URI"):
        RefineConfig.load({"store": "**********", "run": "r"})


def test_configs_are_frozen_and_refuse_unknown_settings() -> None:
    config = SeedConfig()
    with pytest.raises(Exception):
        config.run = "other"  # type: ignore[misc]
    with pytest.raises(ConfigError, match=r"sampels = 3: not a known setting"):
        SeedConfig.load({"sampels": 3})
    assert json.loads(WorkerConfig(store="sqlite:///x.db").model_dump_json())["store"] == "**********"


def test_the_sandbox_layers_a_worker_requires(tmp_path: Path) -> None:
    assert WorkerConfig().required_sandbox_layers == ("unprivileged-user",)
    assert WorkerConfig(sandbox_layers="all").required_sandbox_layers == LAYERS
    assert WorkerConfig(sandbox_layers="none").required_sandbox_layers == ()
    assert WorkerConfig(sandbox_layers=" landlock, seccomp ").required_sandbox_layers == ("landlock", "seccomp")
    cli = error_of(run_script("flows/generate.py", "--sandbox-layers", "landlok,seccomp", cwd=tmp_path))
    assert cli.startswith("Invalid worker settings: sandbox_layers (--sandbox-layers) = 'landlok,seccomp': unknown "
                          "sandbox layer(s) landlok: use all, none, or a comma list of own-session,")


@pytest.mark.parametrize("sampling, context", [
    ({}, 4096),  # 512 new tokens: the old default
    ({"max_new_tokens": 16384, "thinking": "on"}, 2048 + 16384),  # a reasoning model's traces
    ({"thinking_budget": 8000, "answer_budget": 1024}, 2048 + 8000 + 1024),  # budget forcing: both parts
])
def test_a_started_server_gets_the_context_the_answers_need(sampling: dict, context: int) -> None:
    assert SamplingConfig(**sampling).context_tokens() == context
    assert "--max-model-len {max_model_len}" in EngineConfig().serve_command
