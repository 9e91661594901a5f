"""The machinery behind the configs: frozen pydantic models whose validation errors become one
clear paragraph naming each setting's path and command-line flag, raised by the outermost model
being built, so a command line, a deployment and a Python call all read the same message."""

from __future__ import annotations

from contextvars import ContextVar
from typing import Any, ClassVar, Self, get_args

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError
from pydantic.fields import FieldInfo
from pydantic.json_schema import JsonDict

from tasks.errors import UserError

_depth: ContextVar[int] = ContextVar("config_depth", default=0)


class ConfigError(UserError):
    """A setting with a bad value; the same paragraph from the command line, a deployment or Python."""


def setting(default: Any = ..., help: str = "", *, flag: str | None = None, metavar: str | None = None,
            also: str | None = None, **constraints: Any) -> Any:
    """A config field: `help` is its `--help` text and its description in the Prefect UI; `flag`
    names its command-line flag when that is not the field's name with dashes, `also` a second
    flag for it."""
    extra: JsonDict = {key: value for key, value in (("flag", flag), ("metavar", metavar), ("also", also)) if value}
    return Field(default, description=help, json_schema_extra=extra or None, **constraints)


class Config(BaseModel):
    """A frozen settings model whose validation errors become one ConfigError, raised by the
    outermost model being built (nested models let it report their errors with their path)."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    title: ClassVar[str] = "settings"

    def __init__(self, **data: Any) -> None:
        depth = _depth.set(_depth.get() + 1)
        try:
            super().__init__(**data)
        except ValidationError as error:
            if _depth.get() > 1:
                raise
            raise ConfigError(describe_errors(type(self), error)) from None
        finally:
            _depth.reset(depth)

    @classmethod
    def load(cls, value: Self | dict[str, Any] | None) -> Self:
        """A flow's parameter as a validated config: an instance as it is, a dict (a deployment's or
        the UI's parameters) validated, None the defaults."""
        if isinstance(value, cls):
            return value
        if value is None or isinstance(value, dict):
            return cls(**(value or {}))
        raise ConfigError(f"Invalid {cls.title}: expected {cls.__name__} or a dict of its settings, "
                          f"got {type(value).__name__}.")


def extra_of(info: FieldInfo) -> dict[str, Any]:
    """What `setting` keeps beside a field: its flag, metavar and second flag where given."""
    return info.json_schema_extra if isinstance(info.json_schema_extra, dict) else {}


def flag_name(name: str, info: FieldInfo) -> str:
    return str(extra_of(info).get("flag") or name.replace("_", "-"))


def nested_config(info: FieldInfo) -> type[Config] | None:
    annotation = info.annotation
    return annotation if isinstance(annotation, type) and issubclass(annotation, Config) else None


def _field_at(config_class: type[Config], path: tuple[str, ...]) -> FieldInfo | None:
    info: FieldInfo | None = None
    current: type[Config] | None = config_class
    for part in path:
        info = current.model_fields.get(part) if current else None
        if info is None:
            return None
        current = nested_config(info)
    return info


def describe_errors(config_class: type[Config], error: ValidationError) -> str:
    """One paragraph naming each bad setting (path and flag), the value (never a secret's) and why."""
    problems = []
    for problem in error.errors(include_url=False):
        path = tuple(str(part) for part in problem["loc"])
        info = _field_at(config_class, path)
        leaf = info is not None and nested_config(info) is None
        where = ".".join(path) + (f" (--{flag_name(path[-1], info)})" if info is not None and leaf else "")
        secret = info is not None and leaf and SecretStr in (info.annotation, *get_args(info.annotation))
        shown = (f" = {problem['input']!r:.80}" if (leaf or info is None) and path and not secret
                 and problem["type"] != "missing" else "")
        reason = {"extra_forbidden": "not a known setting", "missing": "required, none given"}.get(
            problem["type"], problem["msg"].removeprefix("Value error, "))
        problems.append(f"{where}{shown}: {reason}" if where else reason)
    return (f"Invalid {config_class.title}: " + "; ".join(problems) + ". Fix it on the command line (--help lists "
            "every setting), in the deployment's parameters or in the Python call.")
