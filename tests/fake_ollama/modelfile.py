"""Enough of Ollama's Modelfile parser for `ollama create` to build its request.

FROM, TEMPLATE, SYSTEM, LICENSE, PARAMETER and MESSAGE, with quoted and triple-quoted
(multi-line) values. FROM must name a model: the real CLI would first upload a GGUF
file or a directory as blobs, which the stand-in does not do.
"""

from __future__ import annotations

import re
from typing import Any

__all__ = ["ModelfileError", "create_request"]

_COMMANDS = {"from", "adapter", "template", "system", "license", "parameter", "message"}
_ROLES = {"system", "user", "assistant"}
_UNKNOWN_COMMAND = (
    'command must be one of "from", "license", "template", "system", "adapter", '
    '"parameter", or "message"'
)


class ModelfileError(ValueError):
    pass


def _instructions(text: str) -> list[tuple[str, str]]:
    """(command, raw value) pairs; triple-quoted values may span lines."""
    found: list[tuple[str, str]] = []
    lines = iter(text.splitlines())
    for line in lines:
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        command, _, value = stripped.partition(" ")
        command = command.lower()
        if command not in _COMMANDS:
            raise ModelfileError(_UNKNOWN_COMMAND)
        value = value.strip()
        if value.startswith('"""'):
            body = value[3:]
            while '"""' not in body:
                try:
                    body += "\n" + next(lines)
                except StopIteration:
                    raise ModelfileError("unexpected EOF") from None
            value = body[: body.index('"""')]
        elif len(value) >= 2 and value[0] == value[-1] == '"':
            value = value[1:-1]
        found.append((command, value))
    return found


def _typed(value: str) -> Any:
    if re.fullmatch(r"-?\d+", value):
        return int(value)
    if re.fullmatch(r"-?(\d+\.\d*|\.\d+)([eE][-+]?\d+)?", value):
        return float(value)
    if value in ("true", "false"):
        return value == "true"
    return value


def create_request(name: str, text: str) -> dict[str, Any]:
    """The `/api/create` body the CLI sends for `ollama create <name>` and this Modelfile."""
    request: dict[str, Any] = {"model": ""}
    parameters: dict[str, Any] = {}
    messages: list[dict[str, str]] = []
    licenses: list[str] = []
    for command, value in _instructions(text):
        if command == "from":
            request["from"] = value
        elif command in ("template", "system"):
            request[command] = value
        elif command == "license":
            licenses.append(value)
        elif command == "parameter":
            key, _, raw = value.partition(" ")
            raw = raw.strip().strip('"')
            if key == "stop":
                parameters.setdefault("stop", []).append(raw)
            else:
                parameters[key] = _typed(raw)
        elif command == "message":
            role, _, content = value.partition(" ")
            if role not in _ROLES:
                raise ModelfileError("message role must be one of system, user, assistant")
            messages.append({"role": role, "content": content.strip().strip('"')})
        else:
            raise ModelfileError("fake ollama: ADAPTER is not supported")
    if "from" not in request:
        raise ModelfileError("no FROM line")
    if licenses:
        request["license"] = licenses[0] if len(licenses) == 1 else licenses
    if parameters:
        request["parameters"] = parameters
    if messages:
        request["messages"] = messages
    request["name"] = name  # the CLI fills the deprecated field; `model` stays ""
    return request
