"""The HTTP side of the client commands: Ollama's Go `api.Client`, errors included.

Requests carry the real client's headers and JSON encoding; failures are turned into
`CliError`s here, once, worded as the Go client words them, so the CLI only prints
`Error: <message>`:

- a non-streamed call that gets status >= 400 → the body's `error` text;
- a streamed call (pull, push, create, generate, chat) that gets status >= 400 →
  `"<status line>: <error text>"`, e.g. `404 Not Found: model 'x' not found`;
- an `{"error": ...}` line inside a stream → that text;
- no connection → `Post "<url>": dial tcp <addr>: connect: connection refused`.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import httpx

__all__ = [
    "CLIENT_VERSION",
    "USER_AGENT",
    "CliError",
    "Client",
    "ConnectionRefused",
    "go_json",
]

CLIENT_VERSION = "0.33.0"
USER_AGENT = f"ollama/{CLIENT_VERSION} (amd64 linux) Go/go1.24.0"
# Go's encoder escapes these; they can only occur inside strings, so the whole
# document can be translated. (Importing tests.emulator.gojson would load the whole
# emulator package and slow every client command down.)
_GO_ESCAPES = str.maketrans(
    {"<": "\\u003c", ">": "\\u003e", "&": "\\u0026", "\u2028": "\\u2028", "\u2029": "\\u2029"}
)

# What `api.StatusError` says when the server gave neither a status nor a message.
_NO_DETAILS = "something went wrong, please see the ollama server logs for details"


class CliError(Exception):
    """Ends the command: printed as `Error: <message>`, exit status 1.

    `status` is the HTTP status when the server answered with an error.
    """

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class ConnectionRefused(CliError):
    """Nothing listens at the server address (the heartbeat turns this into advice)."""


class Client:
    def __init__(self, base_url: str) -> None:
        self.base_url = base_url.rstrip("/")
        # Go's client has no timeout, and does not proxy loopback addresses.
        self._http = httpx.Client(timeout=None, trust_env=False)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def heartbeat(self) -> None:
        """`HEAD /`, which every client command sends first."""
        try:
            self.call("HEAD", "/")
        except ConnectionRefused:
            raise CliError(
                "could not connect to ollama server, run 'ollama serve' to start it"
            ) from None

    def call(self, method: str, path: str, body: Any = None) -> Any:
        """A non-streamed request; the decoded JSON body, or None when it is empty."""
        with self._exchange(method, path, body, "application/json") as response:
            raw = response.read()
            if response.status_code >= 400:
                raise CliError(_error_text(raw) or _NO_DETAILS, response.status_code)
            return _decode(raw) if raw.strip() and method != "HEAD" else None

    def stream(self, path: str, body: Any) -> Iterator[dict[str, Any]]:
        """POST and yield each NDJSON object as it arrives."""
        with self._exchange("POST", path, body, "application/x-ndjson") as response:
            if response.status_code >= 400:
                message = _error_text(response.read())
                status = f"{response.status_code} {response.reason_phrase}"
                text = f"{status}: {message}" if message else status
                raise CliError(text, response.status_code)
            try:
                for line in response.iter_lines():
                    if not line:
                        continue
                    item = _decode(line.encode())
                    if not isinstance(item, dict):
                        raise CliError(f"json: cannot unmarshal {line[:40]!r} into a response")
                    if item.get("error"):
                        raise CliError(str(item["error"]))
                    yield item
            except httpx.TransportError:
                raise CliError("unexpected EOF") from None

    @contextmanager
    def _exchange(self, method: str, path: str, body: Any, accept: str) -> Iterator[httpx.Response]:
        url = self.base_url + path
        headers = {"User-Agent": USER_AGENT, "Accept": accept, "Accept-Encoding": "gzip"}
        content = None
        if body is not None:
            content = go_json(body)
            headers["Content-Type"] = "application/json"
        request = self._http.build_request(method, url, content=content, headers=headers)
        try:
            response = self._http.send(request, stream=True)
        except httpx.ConnectError as err:
            if "refused" in str(err):
                raise ConnectionRefused(
                    f'{method.title()} "{url}": dial tcp {request.url.netloc.decode()}: '
                    "connect: connection refused"
                ) from None
            raise CliError(f'{method.title()} "{url}": {err}') from None
        except httpx.TransportError as err:
            raise CliError(f'{method.title()} "{url}": {err or "EOF"}') from None
        try:
            yield response
        finally:
            response.close()


def go_json(value: Any) -> bytes:
    """A request body as Go's `json.Marshal` writes it (keys in the order given)."""
    text = json.dumps(value, ensure_ascii=False, separators=(",", ":"))
    return text.translate(_GO_ESCAPES).encode()


def _decode(raw: bytes) -> Any:
    """JSON from the server; garbage (say, from a broken proxy) is an error, not a crash."""
    try:
        return json.loads(raw)
    except ValueError as err:
        raise CliError(f"invalid character in server response: {err}") from None


def _error_text(raw: bytes) -> str:
    """`checkError`: the `error` field of a JSON body, else the whole body as text."""
    try:
        decoded = json.loads(raw)
    except ValueError:
        return raw.decode("utf-8", "replace")
    if isinstance(decoded, dict):
        return str(decoded.get("error") or "")
    return raw.decode("utf-8", "replace")
