"""API keys for the proxied API: who may use Ollama through the proxy, and under which name.

Ollama has no authentication of its own. With ``PROXY_API_KEYS`` and/or
``PROXY_API_KEYS_FILE`` set, every proxied request must carry ``Authorization: Bearer
<key>`` (what the ``ollama`` client sends for ``OLLAMA_API_KEY`` and the ``openai`` client for
its ``api_key``) or ``x-api-key: <key>`` (the ``anthropic`` client). The key's *name* is
what the proxy keeps (in the ASGI scope under ``SCOPE_KEY``, then in the record and the
analytics row); the key itself is never stored, logged or shown, and never goes upstream.

Keys are held as SHA-256 digests and a presented key is compared with every one of them
with ``hmac.compare_digest``, without stopping at a match: the time taken says nothing about
which key, or how much of one, was right.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

# Where ProxyApp puts the name of the key a request presented; app.exchange reads it.
SCOPE_KEY = "ollama_metrics.api_key"

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@-]{0,63}")
# Printable ASCII without spaces: what survives an HTTP header and a shell unchanged.
_KEY = re.compile(r"[!-~]+")
# How often, at most, the keys file is checked for changes.
RELOAD_INTERVAL = 1.0


class ApiKeyError(ValueError):
    """The configured keys cannot be used. The message never contains a key."""


def derived_name(key: str) -> str:
    """The stable name of a key given without one: ``key-`` and 8 hex digits of its SHA-256."""
    return "key-" + hashlib.sha256(key.encode()).hexdigest()[:8]


def _entry(name: str | None, key: str, where: str) -> tuple[str, str]:
    if not key:
        raise ApiKeyError(f"{where}: empty key")
    if not _KEY.fullmatch(key):
        raise ApiKeyError(f"{where}: a key may hold only printable ASCII without spaces")
    if name is None:
        return derived_name(key), key
    if not _NAME.fullmatch(name):
        raise ApiKeyError(
            f"{where}: invalid key name (1-64 of letters, digits, '.', '_', '@', '-', "
            "starting with a letter or digit)"
        )
    return name, key


def parse_env(value: str) -> list[tuple[str, str]]:
    """``PROXY_API_KEYS``: comma-separated ``name:key`` pairs or bare keys."""
    entries = []
    for number, item in enumerate(value.split(","), 1):
        item = item.strip()
        if not item:
            continue
        name, sep, key = item.partition(":")
        where = f"PROXY_API_KEYS entry {number}"
        entries.append(
            _entry(name.strip(), key.strip(), where) if sep else _entry(None, name, where)
        )
    return entries


def parse_file(text: str, source: str) -> list[tuple[str, str]]:
    """A keys file: one ``name key`` or ``name: key`` (or a bare key) per line; ``#`` starts a
    comment line; blank lines are skipped."""
    entries = []
    for number, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        where = f"{source} line {number}"
        name, sep, key = line.partition(":")
        if sep and not any(c.isspace() for c in name):
            entries.append(_entry(name.strip(), key.strip(), where))
            continue
        parts = line.split()
        if len(parts) == 1:
            entries.append(_entry(None, parts[0], where))
        elif len(parts) == 2:
            entries.append(_entry(parts[0], parts[1], where))
        else:
            raise ApiKeyError(f"{where}: expected 'name key' or 'name: key'")
    return entries


def read_file(path: Path) -> list[tuple[str, str]]:
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        why = exc.strerror if isinstance(exc, OSError) and exc.strerror else type(exc).__name__
        raise ApiKeyError(f"PROXY_API_KEYS_FILE={path}: cannot read: {why}") from None
    return parse_file(text, f"PROXY_API_KEYS_FILE={path}")


def check_unique(entries: list[tuple[str, str]]) -> None:
    names: set[str] = set()
    keys: dict[str, str] = {}
    for name, key in entries:
        if name in names:
            raise ApiKeyError(f"API key name {name!r} is given twice")
        if key in keys:
            raise ApiKeyError(f"API keys {keys[key]!r} and {name!r} are the same key")
        names.add(name)
        keys[key] = name


def load(env_value: str | None, file: Path | None) -> list[tuple[str, str]]:
    """Every configured (name, key), checked: valid, no name or key twice, at least one."""
    entries = parse_env(env_value) if env_value else []
    if file is not None:
        entries += read_file(file)
    check_unique(entries)
    if (env_value or file is not None) and not entries:
        raise ApiKeyError("PROXY_API_KEYS/PROXY_API_KEYS_FILE are set but name no key")
    return entries


@dataclass(frozen=True, slots=True)
class _Digests:
    items: tuple[tuple[bytes, str], ...]

    @classmethod
    def of(cls, entries: list[tuple[str, str]]) -> _Digests:
        return cls(tuple((hashlib.sha256(key.encode()).digest(), name) for name, key in entries))


class ApiKeys:
    """The configured keys; ``name_of`` answers which key (by name) a request presented.

    The file, when there is one, is checked for changes at most once a ``RELOAD_INTERVAL``;
    a changed file that no longer reads or validates leaves the previous keys in force.
    """

    def __init__(self, env_value: str | None, file: Path | None) -> None:
        self._env_value = env_value
        self._file = file
        self._stamp = _stamp(file)
        self._digests = _Digests.of(load(env_value, file))
        self._next_check = time.monotonic() + RELOAD_INTERVAL

    @classmethod
    def configured(cls, env_value: str | None, file: Path | None) -> ApiKeys | None:
        """The keys, or None when none are configured (the proxy is open, as Ollama is)."""
        if not env_value and file is None:
            return None
        return cls(env_value, file)

    def __len__(self) -> int:
        return len(self._digests.items)

    def name_of(self, presented: bytes) -> str | None:
        """The name of the key ``presented`` is, or None. Every key is compared."""
        if self._file is not None:
            self._maybe_reload()
        digest = hashlib.sha256(presented).digest()
        found: str | None = None
        for candidate, name in self._digests.items:
            if hmac.compare_digest(digest, candidate):
                found = name
        return found

    def _maybe_reload(self) -> None:
        now = time.monotonic()
        if now < self._next_check:
            return
        self._next_check = now + RELOAD_INTERVAL
        stamp = _stamp(self._file)
        if stamp == self._stamp:
            return
        self._stamp = stamp
        try:
            digests = _Digests.of(load(self._env_value, self._file))
        except ApiKeyError as exc:
            log.error("API keys not reloaded, the previous ones stay in force: %s", exc)
            return
        self._digests = digests
        log.info("API keys reloaded: %d keys", len(digests.items))


def _stamp(file: Path | None) -> tuple[int, int, int] | None:
    if file is None:
        return None
    try:
        st = os.stat(file)
    except OSError:
        return None
    return (st.st_mtime_ns, st.st_size, st.st_ino)


def presented_key(headers: list[tuple[bytes, bytes]]) -> tuple[bytes | None, bool]:
    """The key a request presents (``Authorization: Bearer`` or ``x-api-key``) and whether
    it presented any credential at all. Several credentials count as none valid."""
    found: list[bytes] = []
    any_credential = False
    for name, value in headers:
        if name == b"authorization":
            any_credential = True
            scheme, _, secret = value.strip().partition(b" ")
            found.append(secret.strip() if scheme.lower() == b"bearer" else b"")
        elif name == b"x-api-key":
            any_credential = True
            found.append(value.strip())
    if len(found) != 1 or not found[0]:
        return None, any_credential
    return found[0], True


def without_credentials(headers: list[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
    """The headers less the proxy's own credential: Ollama must not see or log it."""
    return [(k, v) for k, v in headers if k != b"authorization" and k != b"x-api-key"]
