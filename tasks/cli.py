"""Command lines built from the config models: one flag per setting (nested settings flattened,
`--max-new-tokens` for `sampling.max_new_tokens`), `--help` from the fields' descriptions, and
values validated by the config itself, so a command line fails exactly as a deployment would."""

from __future__ import annotations

import argparse
import sys
from typing import Any, Callable, Literal, get_args, get_origin

from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined

from tasks.config.base import Config, extra_of, flag_name, nested_config
from tasks.errors import UserError
from tasks.logs import setup_logging
from tasks.secrets import redact
from tasks.signals import TERMINATED, raise_on_sigterm


def _help(info: FieldInfo) -> str:
    default = info.default
    shown = not (default is None or default is False or default is PydanticUndefined or isinstance(default, Config))
    return (info.description or "") + (f" (default: {default})" if shown else "")


def _metavar(name: str, info: FieldInfo) -> str:
    choices = [arg for arg in get_args(info.annotation) if get_origin(arg) is Literal] or [info.annotation]
    if get_origin(choices[0]) is Literal:
        return "{" + ",".join(map(str, get_args(choices[0]))) + "}"
    return str(extra_of(info).get("metavar") or name.upper())


def _add_settings(parser: argparse.ArgumentParser, group: Any, config_class: type[Config],
                  path: tuple[str, ...]) -> None:
    for name, info in config_class.model_fields.items():
        nested = nested_config(info)
        if nested is not None:
            _add_settings(parser, parser.add_argument_group(f"{name} settings"), nested, (*path, name))
            continue
        options: dict[str, Any] = {"dest": ".".join((*path, name)), "default": argparse.SUPPRESS, "help": _help(info)}
        if info.annotation is bool:
            options["action"] = "store_true"
        else:
            options["metavar"] = _metavar(name, info)
            options["required"] = info.is_required()
        also = extra_of(info).get("also")
        group.add_argument(f"--{flag_name(name, info)}", *([f"--{also}"] if also else []), **options)


def command_parser(config_class: type[Config], script: str, doc: str) -> argparse.ArgumentParser:
    """The parser of a command whose settings are `config_class`; its description is the first
    line of the script's docstring."""
    parser = argparse.ArgumentParser(prog=f"python {script}", description=doc.strip().split("\n")[0])
    _add_settings(parser, parser, config_class, ())
    return parser


def parse_command(config_class: type[Config], argv: list[str] | None, script: str, doc: str) -> Any:
    """The config a command line asks for (ConfigError on a bad value)."""
    values: dict[str, Any] = {}
    for dotted, value in vars(command_parser(config_class, script, doc).parse_args(argv)).items():
        *parents, name = dotted.split(".")
        target = values
        for parent in parents:
            target = target.setdefault(parent, {})
        target[name] = value
    return config_class(**values)


def answer_early(config_class: type[Config], script: str, doc: str) -> None:
    """`--help`, and bad flags or values, answered before a command's heavy imports (Prefect,
    torch): a command line calls this first, and exits here when there is nothing else to do."""
    try:
        parse_command(config_class, None, script, doc)
    except UserError as error:
        print(f"error: {redact(str(error))}", file=sys.stderr)
        raise SystemExit(2) from None


def run_cli(main: Callable[[list[str] | None], None], argv: list[str] | None = None, *,
            stopped_early: str | None = None) -> int:
    """Run a command's main: exit code 0; a UserError becomes one clear paragraph on stderr and exit
    code 2; Ctrl-C 130; SIGTERM 143, or 0 with `stopped_early` printed (the worker, which stops
    cleanly by itself once it works). A SIGTERM can land in any library's code, which may wrap
    the exception it raises: the flag it sets decides."""
    setup_logging()
    raise_on_sigterm()
    try:
        main(argv)
        return 0
    except UserError as error:
        print(f"error: {redact(str(error))}", file=sys.stderr)
        return 2
    except BaseException as error:
        if TERMINATED.is_set():
            print(stopped_early or "stopped (SIGTERM)", file=sys.stderr)
            return 0 if stopped_early else 143
        if isinstance(error, KeyboardInterrupt):
            print("interrupted", file=sys.stderr)
            return 130
        raise
