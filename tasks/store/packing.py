"""Long texts kept compressed in the store (zlib): Atlas counts a database's uncompressed data
size against the free tier's 512 MB, so a 64 KB reasoning trace stored as it is costs 64 KB
there. A text of PACK_CHARS characters or more is stored as {"zlib": its compressed UTF-8 bytes}
(MongoDB: BSON binary; SQLite's JSON: base64 text); shorter ones, and stores written before,
stay plain strings and read back unchanged."""

from __future__ import annotations

import base64
import zlib
from typing import Any

PACK_CHARS = 512  # shorter texts gain little (and a GSM8K answer is about this long)
RESULT_TEXTS = ("response", "reasoning")  # Result fields packed
CHECKPOINT_TEXTS = ("text",)  # Checkpoint fields packed


def pack(doc: dict[str, Any], keys: tuple[str, ...], *, binary: bool) -> dict[str, Any]:
    """`doc` with its long texts under `keys` compressed (bytes where the store keeps binary, else base64)."""
    packed = dict(doc)
    for key in keys:
        text = doc.get(key)
        if isinstance(text, str) and len(text) >= PACK_CHARS:
            data = zlib.compress(text.encode(), 6)
            packed[key] = {"zlib": data if binary else base64.b64encode(data).decode()}
    return packed


def unpack(doc: dict[str, Any], keys: tuple[str, ...]) -> dict[str, Any]:
    """`doc` with its packed texts under `keys` as plain strings again."""
    unpacked = dict(doc)
    for key in keys:
        value = doc.get(key)
        if isinstance(value, dict) and "zlib" in value:
            data = value["zlib"]
            unpacked[key] = zlib.decompress(base64.b64decode(data) if isinstance(data, str) else bytes(data)).decode()
    return unpacked
