"""docs/flags.md, made from the configs: every command's usage and every flag with its help, so
the reference cannot drift from the code (a test compares). `python -m tasks.flag_reference > docs/flags.md`."""

from __future__ import annotations

import argparse
import functools

from tasks.cli import command_parser
from tasks.config import (
    DecontaminateConfig,
    EvaluateConfig,
    ExportConfig,
    JudgeConfig,
    RefineConfig,
    SeedConfig,
    ServeConfig,
    StatusConfig,
    TextsConfig,
    WorkerConfig,
)
from tasks.config.base import Config

COMMANDS: dict[str, type[Config]] = {
    "flows/seed.py": SeedConfig, "flows/generate.py": WorkerConfig, "flows/status.py": StatusConfig,
    "flows/refine.py": RefineConfig, "flows/evaluate.py": EvaluateConfig, "flows/judge.py": JudgeConfig,
    "flows/decontaminate.py": DecontaminateConfig, "flows/export.py": ExportConfig, "flows/texts.py": TextsConfig,
    "deployments/serve.py": ServeConfig}


def reference() -> str:
    """The Markdown of docs/flags.md."""
    parts = ["# Every flag of every command", "",
             "[← README](../README.md) · [all docs](README.md) · made by `python -m tasks.flag_reference` from "
             "`tasks/config/`; `--help` prints the same.", ""]
    for script, config_class in COMMANDS.items():
        parser = command_parser(config_class, script, "")
        parser.formatter_class = functools.partial(argparse.HelpFormatter, width=110)
        usage = parser.format_usage().strip().replace("usage: ", "", 1)
        usage = usage.replace("\n       ", "\n")  # the indent is for "usage: "
        parts += [f"## `python {script}`", "", "```", usage, "```", "",
                  "| flag | what it sets |", "| --- | --- |"]
        for action in parser._actions:
            if action.dest != "help":
                flag = " ".join(action.option_strings) + (f" {action.metavar}" if action.metavar else "")
                flag, described = (text.replace("|", "\\|") for text in (flag, action.help or ""))
                parts.append(f"| `{flag}` | {described} |")
        parts.append("")
    return "\n".join(parts)


if __name__ == "__main__":
    print(reference(), end="")
