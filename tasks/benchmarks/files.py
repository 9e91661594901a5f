"""Where a dataset's rows come from: a local JSONL file or a Hugging Face hub dataset."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tasks.errors import UserError


@dataclass(frozen=True)
class Source:
    """A local JSONL file or a hub dataset id (`owner/name[:config]`), its split, and the benchmark
    adapter that reads its rows (None: a user's file, read by field names)."""

    name: str  # prefix of generated question ids
    path: Path | None = None
    hub_id: str | None = None
    split: str = "test"
    benchmark: str | None = None

    @property
    def where(self) -> str:
        return str(self.path or self.hub_id)

    def fingerprint(self) -> str:
        """Content hash of a file, or the hub id and split (used as the load cache key)."""
        if self.path:
            return hashlib.sha256(self.path.read_bytes()).hexdigest()
        return f"{self.hub_id}@{self.split}"


def read_rows(source: Source) -> list[tuple[int, dict[str, Any]]]:
    """(line or row number, row) for every row of the source."""
    return _read_jsonl(source.path) if source.path else _read_hub(source)


def _read_jsonl(path: Path) -> list[tuple[int, dict[str, Any]]]:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise UserError(f"Cannot read dataset file {path}: {error}.") from error
    rows = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as error:
            raise UserError(f"Line {number} of {path} is not valid JSON ({error.msg}). Each line must be one JSON "
                            "object.") from error
        if not isinstance(row, dict):
            raise UserError(f"Line {number} of {path} is a JSON {type(row).__name__}, not an object with named fields.")
        rows.append((number, row))
    return rows


def _read_hub(source: Source) -> list[tuple[int, dict[str, Any]]]:
    import datasets

    name, _, config = str(source.hub_id).partition(":")
    try:
        data = datasets.load_dataset(name, config or None, split=source.split)
    except Exception as error:  # the hub raises many kinds; every one means "could not load"
        raise UserError(
            f"Could not load {source.hub_id!r} (split {source.split!r}) from the Hugging Face hub: "
            f"{str(error).splitlines()[0][:300]}. Offline? Save it as JSONL and pass its path to --dataset."
        ) from error
    return [(index + 1, dict(row)) for index, row in enumerate(data)]


def number_text(value: float) -> str:
    """A reference number as text: `145.0` -> `145`, `11.5` stays."""
    return str(int(value)) if float(value).is_integer() else repr(float(value))
