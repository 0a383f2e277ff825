"""The client subcommands other than `run`: what each sends and what it prints.

Request bodies follow the Go structs the real CLI fills in, zero values included: it
names the model in the deprecated `name` field of show/pull/push/delete/create and
leaves `model` empty, and it sends `options: null` and `keep_alive: "0s"` when
unloading. A proxy in between has to cope with exactly that.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from tests.fake_ollama import render
from tests.fake_ollama.client import CLIENT_VERSION, Client, CliError
from tests.fake_ollama.modelfile import ModelfileError, create_request

__all__ = [
    "Console",
    "copy",
    "create",
    "generate_body",
    "list_models",
    "list_running",
    "pull",
    "push",
    "remove",
    "show",
    "show_body",
    "stop",
    "version",
]


@dataclass
class Console:
    out: TextIO
    err: TextIO
    inp: TextIO

    def say(self, text: str) -> None:
        self.out.write(text)
        self.out.flush()

    def status(self, text: str) -> None:
        """Progress and spinners: the real CLI draws them on stderr."""
        self.err.write(text)
        self.err.flush()


def show_body(model: str) -> dict[str, Any]:
    return {
        "model": "",
        "system": "",
        "template": "",
        "verbose": False,
        "options": None,
        "name": model,
    }


def generate_body(model: str, keep_alive: str | int | None) -> dict[str, Any]:
    """The load/unload request: a GenerateRequest with only the model (and keep_alive)."""
    body: dict[str, Any] = {
        "model": model,
        "prompt": "",
        "suffix": "",
        "system": "",
        "template": "",
    }
    if keep_alive is not None:
        body["keep_alive"] = keep_alive
    body["options"] = None
    return body


def _transfer_body(model: str, insecure: bool) -> dict[str, Any]:
    body: dict[str, Any] = {"model": ""}
    if insecure:
        body["insecure"] = True
    body.update(username="", password="", name=model)
    return body


def _bar(label: str, completed: int, total: int) -> str:
    fraction = min(completed / total, 1.0) if total else 0.0
    filled = math.floor(fraction * 16)
    done = render.human_bytes(total)
    if completed < total:
        done = f"{render.human_bytes(completed)}/{done}"
    return (
        f"{label} {math.floor(fraction * 100):3d}% ▕{'█' * filled}{' ' * (16 - filled)}▏ {done}\n"
    )


def show_progress(items: Iterable[dict[str, Any]], console: Console, verb: str) -> None:
    """One stderr line per status change and per layer progress update."""
    status = None
    for item in items:
        digest = str(item.get("digest") or "")
        if digest:
            completed, total = int(item.get("completed") or 0), int(item.get("total") or 0)
            console.status(_bar(f"{verb} {digest[7:19]}...", completed, total))
        elif item.get("status") != status:
            status = item.get("status")
            console.status(f"{status}\n")


def list_models(client: Client, console: Console, prefix: str | None) -> int:
    rows = [["NAME", "ID", "SIZE", "MODIFIED"]]
    for model in client.call("GET", "/api/tags")["models"]:
        if prefix is None or model["name"].lower().startswith(prefix.lower()):
            modified = render.human_time(render.parse_time(model.get("modified_at")), "Never")
            size = render.human_bytes(int(model["size"]))
            rows.append([model["name"], model["digest"][:12], size, modified])
    console.say(render.table(rows))
    return 0


def _processor(size: int, size_vram: int) -> str:
    if size_vram == 0:
        return "100% CPU"
    if size_vram == size:
        return "100% GPU"
    if size_vram > size or size == 0:
        return "Unknown"
    cpu = round((size - size_vram) / size * 100)
    return f"{cpu}%/{100 - cpu}% CPU/GPU"


def list_running(client: Client, console: Console, prefix: str | None) -> int:
    rows = [["NAME", "ID", "SIZE", "PROCESSOR", "CONTEXT", "UNTIL"]]
    for model in client.call("GET", "/api/ps")["models"]:
        if prefix is not None and not model["name"].startswith(prefix):
            continue
        size, size_vram = int(model["size"]), int(model.get("size_vram") or 0)
        expires = render.parse_time(model.get("expires_at"))
        until = render.human_time(expires, "Never")
        if until.endswith(" ago"):
            until = "Stopping..."
        context = str(model.get("context_length") or "")
        rows.append(
            [
                model["name"],
                model["digest"][:12],
                render.human_bytes(size),
                _processor(size, size_vram),
                context,
                until,
            ]
        )
    console.say(render.table(rows))
    return 0


def _show_sections(info: dict[str, Any]) -> list[tuple[str, list[list[str]]]]:
    details = info.get("details") or {}
    model_info = info.get("model_info") or {}
    arch = model_info.get("general.architecture")
    if arch:
        model_rows = [
            ["architecture", str(arch)],
            ["parameters", render.human_number(int(model_info.get("general.parameter_count", 0)))],
            ["context length", str(model_info.get(f"{arch}.context_length", ""))],
            ["embedding length", str(model_info.get(f"{arch}.embedding_length", ""))],
        ]
    else:
        model_rows = [
            ["architecture", str(details.get("family", ""))],
            ["parameters", str(details.get("parameter_size", ""))],
        ]
    model_rows.append(["quantization", str(details.get("quantization_level", ""))])
    sections = [("Model", model_rows)]
    if info.get("capabilities"):
        sections.append(("Capabilities", [[str(c)] for c in info["capabilities"]]))
    if info.get("parameters"):
        parameters = [line.split(None, 1) for line in info["parameters"].splitlines() if line]
        sections.append(("Parameters", [[p[0], p[1] if len(p) > 1 else ""] for p in parameters]))
    for key in ("system", "license"):
        lines = [line.strip() for line in str(info.get(key) or "").splitlines() if line.strip()]
        if lines:
            sections.append((key.title(), [[line] for line in lines[:2]]))
    return sections


def show(client: Client, console: Console, model: str, field: str | None) -> int:
    info = client.call("POST", "/api/show", show_body(model))
    if field is not None:
        console.say(f"{info.get(field) or ''}\n")
        return 0
    for header, rows in _show_sections(info):
        console.say(f"  {header}\n" + render.table([["", *row] for row in rows]) + "\n")
    return 0


def pull(client: Client, console: Console, model: str, insecure: bool) -> int:
    show_progress(client.stream("/api/pull", _transfer_body(model, insecure)), console, "pulling")
    return 0


def push(client: Client, console: Console, model: str, insecure: bool) -> int:
    show_progress(client.stream("/api/push", _transfer_body(model, insecure)), console, "pushing")
    short = model.removesuffix(":latest")
    console.say(f"\nYou can find your model at:\n\n\thttps://ollama.com/{short}\n")
    return 0


def _modelfile_text(path: str | None) -> str:
    target = Path(path or "Modelfile")
    if not target.is_file():
        if path is None:
            raise CliError("no Modelfile or safetensors files found")
        raise CliError("specified Modelfile wasn't found")
    return target.read_text(encoding="utf-8")


def create(client: Client, console: Console, model: str, path: str | None, quantize: str) -> int:
    try:
        body = create_request(model, _modelfile_text(path))
    except ModelfileError as err:
        raise CliError(str(err)) from None
    console.status("gathering model components\n")
    if quantize:
        body["quantize"] = quantize
    show_progress(client.stream("/api/create", body), console, "pulling")
    return 0


def copy(client: Client, console: Console, source: str, destination: str) -> int:
    client.call("POST", "/api/copy", {"source": source, "destination": destination})
    console.say(f"copied '{source}' to '{destination}'\n")
    return 0


def _unload(client: Client, model: str) -> None:
    for _ in client.stream("/api/generate", generate_body(model, "0s")):
        pass


def remove(client: Client, console: Console, models: list[str]) -> int:
    try:  # the real CLI unloads the first model before deleting
        _unload(client, models[0])
    except CliError as err:
        if "not found" not in str(err):
            raise CliError(f'unable to stop existing running model "{models[0]}": {err}') from None
    for model in models:
        client.call("DELETE", "/api/delete", {"model": "", "name": model})
        console.say(f"deleted '{model}'\n")
    return 0


def stop(client: Client, console: Console, model: str) -> int:
    try:
        _unload(client, model)
    except CliError as err:
        if "not found" in str(err):
            raise CliError(f'couldn\'t find model "{model}" to stop') from None
        raise
    return 0


def version(client: Client, console: Console) -> int:
    """`ollama -v`: no heartbeat, never fails."""
    server_version = ""
    try:
        server_version = str(client.call("GET", "/api/version").get("version") or "")
    except CliError:
        console.say("Warning: could not connect to a running Ollama instance\n")
    if server_version:
        console.say(f"ollama version is {server_version}\n")
    if server_version != CLIENT_VERSION:
        console.say(f"Warning: client version is {CLIENT_VERSION}\n")
    return 0
