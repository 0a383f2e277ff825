"""Client applications: the value of the ``client_app`` label, named from request headers.

The exchange tap hands each request's ``User-Agent``, ``X-Title`` and ``X-Client-Name`` to a
:class:`ClientApps`; its answer is a short label value such as ``ollama-python``, ``curl`` or
``open-webui``. It runs on every request, so a repeated header triple is answered from a cache.

How a request is named, first rule that answers wins:

1. A naming header: ``X-Client-Name``, else ``X-Title`` (OpenRouter's header for an app's
   name; Open WebUI and Continue send it to OpenRouter). Its value is normalised (below); a
   value that normalises to nothing falls through to the next header, then to the UA.
2. A framework named anywhere in the User-Agent (LangChain, LiteLLM, LlamaIndex, Open WebUI):
   they speak through an HTTP library or SDK whose own name would otherwise win.
3. A known family, by the UA's first product token (each entry's comment shows its UA).
4. Any other UA: its first product token, normalised (``MyApp/1.2 (linux)`` → ``myapp``).
5. No User-Agent (and no usable naming header): :data:`UNKNOWN`. A UA with nothing usable in
   its first token (``(((``, control bytes): :data:`OTHER`.

Normalising: lower-case, trimmed, runs of whitespace → ``-``, only ``[a-z0-9._-]`` kept,
leading and trailing ``-._`` dropped, at most 32 characters. Only the first 512 characters
of each header are examined (real ones are shorter), so a 10 KB header costs what a short
one does, and the cache holds no long keys.

Cardinality: a known family always gets its name (:data:`FAMILY_NAMES`, a fixed set), so a
flood of invented User-Agents cannot crowd ``ollama-python`` out; any other name is admitted
first come first served while fewer than ``limit`` such names have been; every later new
name is :data:`OTHER`. So the label has at most ``len(FAMILY_NAMES) + limit + 2`` values (the
families, the names, ``other``, ``unknown``) however many clients call. An admitted name
stays admitted, and a refused one stays refused (the count never falls), so an answer never
changes for the same headers, and the cache cannot change one either.

One instance per process, called from the event loop thread (it is not locked).

Must not import: anything beyond the standard library (the package's rule: nothing of
``app`` but itself).
"""

from __future__ import annotations

import re
from typing import Final

OTHER: Final = "other"
UNKNOWN: Final = "unknown"  # no User-Agent and no naming header at all
_MAX_NAME: Final = 32
_MAX_EXAMINED: Final = 512
_CACHE_SIZE: Final = 1024

_DROP = re.compile(r"[^a-z0-9._-]+")

# Frameworks, searched anywhere in the lower-cased UA (rule 2), in this order.
_FRAMEWORK = re.compile(r"langchain|litellm|llama[-_ ]?index|open[-_ ]?webui")
_FRAMEWORK_NAMES: Final = {
    # LangChain.js sets `User-Agent: langchainjs` on some integrations (ChatGroq); LangChain
    # Python sends its provider SDK's UA, so "langchain" is seen when an app puts it there.
    "langchain": "langchain",
    # LiteLLM's own httpx handler: `litellm/1.55.2` (litellm/llms/custom_httpx/http_handler.py).
    "litellm": "litellm",
    # LlamaIndex sends its SDK's UA; its packages name themselves `llama-index-<part>/<v>`.
    "llama-index": "llama-index",
    "llama_index": "llama-index",
    "llama index": "llama-index",
    "llamaindex": "llama-index",
    # Open WebUI calls Ollama with aiohttp's default UA (below) and names itself only in
    # `X-Title: Open WebUI` to OpenRouter, or its web loaders' `Open WebUI (https://...)`.
    "open-webui": "open-webui",
    "open_webui": "open-webui",
    "open webui": "open-webui",
    "openwebui": "open-webui",
}

# Known families by the lower-cased first product token of the UA (rule 3).
_FAMILIES: Final = {
    # The Go client in Ollama's api/client.go (the `ollama` CLI, and any Go program using
    # the api package): `ollama/0.12.3 (amd64 linux) Go/go1.24.1`.
    "ollama": "ollama-cli",
    # ollama-python, ollama/_client.py: `ollama-python/0.6.3 (x86_64 linux) Python/3.11.7`.
    "ollama-python": "ollama-python",
    # ollama-js, src/utils.ts: `ollama-js/0.5.14 (x64 linux Node.js/v20.11.0)`.
    "ollama-js": "ollama-js",
    # Continue's own UA where it sets one (`Continue/IDE`); to Ollama it sends node-fetch's.
    "continue": "continue",
    # curl: `curl/8.5.0`.
    "curl": "curl",
    # GNU Wget: `Wget/1.21.4`; Wget2: `wget2/2.1.0`.
    "wget": "wget",
    "wget2": "wget",
    # httpx, httpx/_client.py: `python-httpx/0.28.1`.
    "python-httpx": "python-httpx",
    # requests, requests/utils.py default_user_agent(): `python-requests/2.32.3`.
    "python-requests": "python-requests",
    # The standard library's urllib.request: `Python-urllib/3.11`.
    "python-urllib": "python-urllib",
    # Go's net/http: `Go-http-client/1.1` (HTTP/2: `Go-http-client/2.0`).
    "go-http-client": "go-http",
    # node-fetch: v3 `node-fetch`, v2 `node-fetch/1.0 (+https://github.com/bitinn/node-fetch)`.
    "node-fetch": "node-fetch",
    # undici's fetch: `undici`; Node's built-in fetch (undici inside Node) sends `node`.
    "undici": "undici",
    "node": "undici",
    # Postman: `PostmanRuntime/7.39.0`.
    "postmanruntime": "postman",
    # Insomnia: `insomnia/2023.5.8` (also `insomnia/9.3.2`).
    "insomnia": "insomnia",
    # Every browser (and browser-like bot) UA starts so: `Mozilla/5.0 (X11; Linux x86_64)
    # AppleWebKit/537.36 (KHTML, like Gecko) Chrome/124.0.0.0 Safari/537.36`, Firefox's
    # `Mozilla/5.0 (...; rv:125.0) Gecko/20100101 Firefox/125.0`, Safari's and Edge's alike.
    "mozilla": "browser",
}

# The Stainless-generated SDKs send `<client class>/<language> <version>` (`user_agent` in
# openai/_base_client.py, `getUserAgent()` in openai-node): `OpenAI/Python 1.54.0`,
# `AsyncOpenAI/Python 1.54.0`, `AzureOpenAI/Python ...`, `OpenAI/JS 4.73.0`;
# `Anthropic/Python 0.40.0`, `AsyncAnthropicBedrock/Python ...`, `Anthropic/JS 0.32.1`.
_SDK = re.compile(r"(?:async)?(?:azure)?(openai|anthropic)[a-z]*/(python|js)\b")
_SDK_NAMES: Final = {
    ("openai", "python"): "openai-python",
    ("openai", "js"): "openai-node",
    ("anthropic", "python"): "anthropic-python",
    ("anthropic", "js"): "anthropic-node",
}

# A naming header spelling a family's name its own way (`X-Title: Open WebUI` is already
# `open-webui`).
_ALIASES: Final = {
    "openwebui": "open-webui",
    "llamaindex": "llama-index",
    "llama_index": "llama-index",
}


# Every name a known family can have: always handed out, outside the limit.
FAMILY_NAMES: Final = frozenset(
    {*_FRAMEWORK_NAMES.values(), *_FAMILIES.values(), *_SDK_NAMES.values(), "aiohttp"}
)


def _normalise(value: str) -> str:
    """A header value as a label value: ``"  My App 2 "`` → ``"my-app-2"``; ``""`` if none."""
    text = "-".join(value[:_MAX_EXAMINED].lower().split())
    return _DROP.sub("", text).strip("-._")[:_MAX_NAME].rstrip("-._")


def _family(user_agent: str) -> str | None:
    """The known family a User-Agent belongs to (rules 2 and 3), or None."""
    low = user_agent[:_MAX_EXAMINED].lower()
    if found := _FRAMEWORK.search(low):
        return _FRAMEWORK_NAMES[found[0]]
    head = low.split(None, 1)
    product = head[0].partition("/")[0] if head else ""
    if named := _FAMILIES.get(product):
        return named
    if sdk := _SDK.match(low.lstrip()):
        return _SDK_NAMES[sdk[1], sdk[2]]
    # aiohttp's default, aiohttp/http.py SERVER_SOFTWARE: `Python/3.11 aiohttp/3.10.5`. Its
    # first token is `Python`; an app that sets its own UA replaces the whole string.
    if product == "python" and "aiohttp/" in low:
        return "aiohttp"
    return None


def _text(value: object) -> str:
    """A header as text whatever a caller passed: bytes as latin-1 (as ASGI's are), None as
    nothing; then its first :data:`_MAX_EXAMINED` characters."""
    if isinstance(value, bytes | bytearray):
        value = bytes(value).decode("latin-1")
    elif value is None:
        value = ""
    elif not isinstance(value, str):
        value = str(value)
    return value[:_MAX_EXAMINED]


class ClientApps:
    """Names the client application of each request, from at most ``limit`` names."""

    def __init__(self, limit: int = 20) -> None:
        if limit < 0:
            raise ValueError(f"limit must be at least 0, not {limit}")
        self._limit = limit
        self._admitted: set[str] = set()
        self._cache: dict[tuple[object, object, object], str] = {}

    def __call__(self, user_agent: str, title: str = "", client_name: str = "") -> str:
        """The ``client_app`` of a request with these headers (``""`` for one not sent)."""
        try:
            return self._cache[user_agent, title, client_name]
        except (KeyError, TypeError):  # a miss; TypeError: an unhashable value, not a str
            return self._miss(user_agent, title, client_name)

    def _miss(self, user_agent: object, title: object, client_name: object) -> str:
        key = (_text(user_agent), _text(title), _text(client_name))
        found = self._cache.get(key)
        if found is None:
            found = self._classify(*key)
            if len(self._cache) >= _CACHE_SIZE:
                self._cache.clear()
            self._cache[key] = found
        return found

    def _classify(self, user_agent: str, title: str, client_name: str) -> str:
        for header in (client_name, title):
            if header and (name := _normalise(header)):
                return self._admit(_ALIASES.get(name, name))
        if not user_agent.strip():
            return UNKNOWN
        if named := _family(user_agent):
            return self._admit(named)
        head = user_agent.split(None, 1)
        name = _normalise(head[0].partition("/")[0]) if head else ""
        return self._admit(name) if name else OTHER

    def _admit(self, name: str) -> str:
        if name in self._admitted or name in FAMILY_NAMES:
            return name
        if name in (OTHER, UNKNOWN) or len(self._admitted) >= self._limit:
            return OTHER
        self._admitted.add(name)
        return name
