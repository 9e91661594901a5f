"""Secrets are never shown: the password of every `scheme://user:password@host` and every
registered value (a store password, an API key) is masked in any text we print, log or raise."""

from __future__ import annotations

import re
import threading
from urllib.parse import unquote

REDACTED = "***"  # what a secret becomes in text we print, log or store
# The password runs to the last `@` of the URL's unbroken text, as pymongo splits it, so an
# unescaped `@` inside it is masked too; a password with a space is caught by registration.
_CREDENTIALS = re.compile(r"(?P<scheme>[a-z][\w+.-]*://)(?P<user>[^:/@\s]*):(?P<password>\S*)@", re.I)
_MIN_REGISTERED = 4  # shorter values would mask ordinary text; URLs still mask them by pattern
_registered: set[str] = set()
_lock = threading.Lock()


def register_secret(value: str | None) -> None:
    """Mask `value` (and its URL-decoded form) wherever it appears from now on."""
    for form in {value or "", unquote(value or "")}:
        if len(form) >= _MIN_REGISTERED:
            with _lock:
                _registered.add(form)


def register_url(url: str) -> None:
    """Register the password of `scheme://user:password@host...` (everything between the first
    `:` after the user and the URL's last `@`)."""
    _, separator, rest = url.partition("://")
    if separator and "@" in rest:
        register_secret(rest.rpartition("@")[0].partition(":")[2])


def redact(text: str) -> str:
    """`text` with every registered secret and every URL password replaced by `***`."""
    with _lock:
        secrets = sorted(_registered, key=len, reverse=True)
    for secret in secrets:
        text = text.replace(secret, REDACTED)
    return _CREDENTIALS.sub(rf"\g<scheme>\g<user>:{REDACTED}@", text)
