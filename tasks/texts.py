"""Answers' long texts out of the store, as shard files on storage people already have (`--texts
URL`: a local folder, hf://datasets/<user>/<repo>, s3://bucket/prefix, gs://bucket/prefix: any
fsspec URL; credentials come from the environment, as every secret does).

Layout: `<URL>/<run>/<worker>/<UTC time>-<random>.jsonl.gz`, one gzip-compressed JSON line per
answer: {"id", "token", "question_id", "stage", "sample", "response", "reasoning"}. A shard is
written whole, once (one PUT; one commit on the hub), never appended to. An answer's item keeps
{"shard": path} in its result; its row is the one with the item's id and claim token, so rows
written under a claim the store then refused (orphans) are never read (`orphans` finds them)."""

from __future__ import annotations

import calendar
import gzip
import json
import re
import time
import uuid
from collections import defaultdict
from pathlib import Path
from typing import Any, Iterable

import fsspec

from tasks.errors import UserError
from tasks.store.models import Item, Result
from tasks.store.protocol import Store

SHARD_SUFFIX = ".jsonl.gz"
STAMP = "%Y%m%dT%H%M%SZ"
# the Hugging Face hub's limits (huggingface.co/docs/hub/repositories-recommendations, and the 429 it answers)
HUB_COMMITS_PER_HOUR = 128  # per repository; a shard is one commit
FLEET_WORKERS = 50  # the fleet the default windows are sized for
HUB_SHARD_SECONDS = 1800.0  # 50 workers x 2 shards an hour = 100 commits an hour, under the hub's 128
SHARD_SECONDS = 60.0  # elsewhere (a folder, S3, GCS): a shard a minute per worker


def path_part(name: str) -> str:
    """A run's or worker's name as one folder name."""
    return re.sub(r"[^A-Za-z0-9._-]", "_", name) or "_"


def on_hub(url: str) -> bool:
    """The URL names the Hugging Face hub (its commit limits apply)."""
    return url.startswith("hf://")


def default_shard_seconds(url: str) -> float:
    return HUB_SHARD_SECONDS if on_hub(url) else SHARD_SECONDS


def hub_plan(url: str, shard_seconds: float) -> str | None:
    """Said once at start on the hub: how many workers writing this often fit its commit limit."""
    if not on_hub(url):
        return None
    fit = int(HUB_COMMITS_PER_HOUR * shard_seconds // 3600)
    plan = (f"texts: a shard every {shard_seconds:g} s to {url}; the hub takes {HUB_COMMITS_PER_HOUR} commits an hour "
            f"per repository, so {fit} workers writing this often fit")
    return plan if fit >= FLEET_WORKERS else plan + (f" (not a fleet of {FLEET_WORKERS}: raise --shard-seconds to "
                                                     f"{HUB_SHARD_SECONDS:g}, or give groups of workers their own "
                                                     "repository)")


class TextsLocation:
    """Where a run's texts are: shards written and read through fsspec."""

    def __init__(self, url: str):
        if re.match(r"^[\w.+-]+://[^/@]*:[^/@]*@", url):
            raise UserError("--texts takes no credentials in the URL (it is logged and kept in the store): give them "
                            "through the environment (HF_TOKEN, AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, "
                            "GOOGLE_APPLICATION_CREDENTIALS).")
        if "://" not in url:  # a local folder: the same path for every reader on this machine
            url = str(Path(url).expanduser().resolve())
        self.url = url
        try:
            self.fs, self.root = fsspec.core.url_to_fs(url)
        except ImportError as error:  # s3fs, gcsfs: installed on demand
            raise UserError(f"--texts {url} needs a package that is not installed ({error}). Install it (s3:// needs "
                            "`pip install s3fs`, gs:// `pip install gcsfs`) or use a local folder.") from None
        except ValueError as error:
            raise UserError(f"--texts {url} is not a storage URL fsspec knows ({error}): use a folder, "
                            "hf://datasets/<user>/<repo>, s3://bucket/prefix or gs://bucket/prefix.") from None

    def _full(self, path: str) -> str:
        return f"{self.root.rstrip('/')}/{path}"

    def check(self) -> None:
        """Before any answer is generated: the location can be written (a folder is made)."""
        try:
            if on_hub(self.url):
                if not self.fs.exists(self.root):
                    raise UserError(f"--texts {self.url}: no such dataset repository, or this token may not see it. "
                                    "Create it first (`hf repo create <user>/<repo> --repo-type dataset`) and set "
                                    "HF_TOKEN to a token that may write to it.")
            else:
                self.fs.makedirs(self.root, exist_ok=True)
        except UserError:
            raise
        except Exception as error:
            raise UserError(f"--texts {self.url} cannot be used: {type(error).__name__}: {error}. Check the URL and "
                            "the credentials in the environment.") from error

    def new_shard(self, run: str, worker: str) -> str:
        """A fresh shard's path under the location, for one run and worker."""
        return (f"{path_part(run)}/{path_part(worker)}/{time.strftime(STAMP, time.gmtime())}-"
                f"{uuid.uuid4().hex[:8]}{SHARD_SUFFIX}")

    def write(self, path: str, rows: list[dict[str, Any]]) -> int:
        """Write one shard whole; return its bytes."""
        data = gzip.compress("".join(json.dumps(row) + "\n" for row in rows).encode(), 6)
        self.fs.makedirs(self._full(path).rsplit("/", 1)[0], exist_ok=True)
        with self.fs.open(self._full(path), "wb") as file:
            file.write(data)
        return len(data)

    def read(self, path: str) -> list[dict[str, Any]]:
        with self.fs.open(self._full(path), "rb") as file:
            data = file.read()
        return [json.loads(line) for line in gzip.decompress(data).decode().splitlines() if line]

    def remove(self, path: str) -> None:
        self.fs.rm(self._full(path))

    def shards(self, run: str) -> dict[str, int]:
        """Every shard of the run: path (under the location) -> bytes."""
        base = self._full(path_part(run))
        if not self.fs.exists(base):
            return {}
        found = self.fs.find(base, detail=True)
        return {name[len(self.root.rstrip('/')) + 1:]: int(info.get("size") or 0) for name, info in found.items()
                if name.endswith(SHARD_SUFFIX)}

    def fill(self, items: Iterable[Item], run: str) -> None:
        """Put the texts of the items' answers that point at shards back into their results,
        reading each shard once. An answer whose row is not there is said plainly (a moved or
        deleted shard)."""
        wanted: dict[str, list[Item]] = defaultdict(list)
        for item in items:
            if item.result is not None and item.result.texts:
                wanted[item.result.texts["shard"]].append(item)
        for path, pointing in wanted.items():
            try:
                rows = {(row["id"], row["token"]): row for row in self.read(path)}
            except FileNotFoundError:
                raise UserError(f"The texts of {len(pointing)} answers of run {run!r} are missing: shard {path} is not "
                                f"in {self.url}. Give the readers --texts with where the shards are now.") from None
            for item in pointing:
                row = rows.get((item.id, item.token))
                if row is None:
                    raise UserError(f"Shard {path} in {self.url} has no row for item {item.id} of run {run!r}: the "
                                    "shard was replaced or damaged.")
                fill_texts(item.result, row)  # type: ignore[arg-type]  # pointing: has a result


def run_texts(store: Store, run: str, texts_url: str | None = None) -> TextsLocation | None:
    """Where the run's answers' texts are: `texts_url` when given, else where its workers wrote
    them; None when they are in the store."""
    url = texts_url or store.texts_url(run)
    return TextsLocation(url) if url else None


def texts_row(item: Item, token: str, result: Result) -> dict[str, Any]:
    """An answer's row in its shard."""
    return {"id": item.id, "token": token, "question_id": item.question_id, "stage": item.stage,
            "sample": item.sample, "response": result.response, "reasoning": result.reasoning}


def fill_texts(result: Result, row: dict[str, Any]) -> None:
    result.response, result.reasoning = row["response"], row.get("reasoning")


def orphans(location: TextsLocation, run: str, kept: dict[tuple[str, str], str], *,
            older_than: float) -> dict[str, tuple[int, int]]:
    """Shards of the run written more than `older_than` seconds ago holding rows no done item points
    at (`kept`: (item id, token) -> shard of every done item with texts there): path -> (their rows,
    all rows). Younger shards are left alone: their answers may be being written to the store."""
    found: dict[str, tuple[int, int]] = {}
    now = time.time()
    for path in location.shards(run):
        stamp = Path(path).name.split("-", 1)[0]
        try:
            written = calendar.timegm(time.strptime(stamp, STAMP))
        except ValueError:
            continue  # not a shard of ours
        if now - written < older_than:
            continue
        rows = location.read(path)
        stray = sum(1 for row in rows if kept.get((row["id"], row["token"])) != path)
        if stray:
            found[path] = (stray, len(rows))
    return found


def drop_orphans(location: TextsLocation, found: dict[str, tuple[int, int]],
                 kept: dict[tuple[str, str], str]) -> tuple[int, int]:
    """Rewrite each shard `orphans` found without its orphan rows (delete it when none is left);
    return (orphan rows dropped, shards changed)."""
    dropped = 0
    for path in found:
        rows = [row for row in location.read(path) if kept.get((row["id"], row["token"])) == path]
        if rows:
            location.write(path, rows)
        else:
            location.remove(path)
        dropped += found[path][0]
    return dropped, len(found)
