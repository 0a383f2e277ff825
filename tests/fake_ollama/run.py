"""`ollama run MODEL [PROMPT...]`: the request sequence of the real CLI.

`HEAD /` (done by the caller) → `POST /api/show` (a 404 pulls the model, then shows
it again) → `POST /api/generate` with only the model, which loads it → `POST /api/chat`
streamed, once for a one-shot prompt or once per line in interactive mode, the chat
history growing with every turn.

Interactive mode reads lines from stdin whether or not it is a terminal (the real
binary would read a piped stdin as one prompt); `>>> ` is written only on a TTY.
`/bye` or end of input ends the session with status 0.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from tests.fake_ollama import render
from tests.fake_ollama.client import Client, CliError
from tests.fake_ollama.commands import Console, generate_body, pull, show_body

__all__ = ["RunOptions", "keep_alive_value", "run"]

_HELP = """Available Commands:
  /clear          Clear session context
  /bye            Exit
  /?, /help       Help for a command

"""


@dataclass
class RunOptions:
    model: str
    prompt: str = ""
    format: str = ""
    keep_alive: str | int | None = None
    think: bool | str | None = None
    hide_thinking: bool = False
    verbose: bool = False
    insecure: bool = False
    messages: list[dict[str, str]] = field(default_factory=list)


def keep_alive_value(text: str) -> str | int | None:
    """`--keepalive 5m` → the JSON the Go client sends: "5m0s", or -1 for negative."""
    if not text:
        return None
    # Imported here: the emulator package is slow to load and only this flag needs it.
    from tests.emulator.gojson import DecodeError, parse_go_duration

    try:
        nanoseconds = parse_go_duration(text)
    except DecodeError as err:
        raise CliError(str(err)) from None
    return -1 if nanoseconds < 0 else render.go_duration(nanoseconds)


def _chat_body(opts: RunOptions) -> dict[str, Any]:
    body: dict[str, Any] = {"model": opts.model, "messages": opts.messages}
    if opts.format:
        body["format"] = opts.format
    if opts.keep_alive is not None:
        body["keep_alive"] = opts.keep_alive
    body["options"] = {}
    if opts.think is not None:
        body["think"] = opts.think
    return body


def _summary(final: dict[str, Any], console: Console) -> None:
    """`api.Metrics.Summary()`, printed by `--verbose` on stderr."""
    lines = []
    for key, label in (("total_duration", "total duration"), ("load_duration", "load duration")):
        if final.get(key):
            lines.append(f"{label + ':':<22}{render.go_duration(int(final[key]))}")
    for prefix, label in (("prompt_eval", "prompt eval"), ("eval", "eval")):
        count, duration = (
            int(final.get(f"{prefix}_count") or 0),
            int(final.get(f"{prefix}_duration") or 0),
        )
        if count:
            lines.append(f"{label + ' count:':<22}{count} token(s)")
        if duration:
            lines.append(f"{label + ' duration:':<22}{render.go_duration(duration)}")
            lines.append(f"{label + ' rate:':<22}{count / (duration / 1e9):.2f} tokens/s")
    console.status("".join(line + "\n" for line in lines))


def _chat(client: Client, console: Console, opts: RunOptions) -> dict[str, str] | None:
    """One streamed turn, printed as it arrives; None when interrupted with Ctrl-C."""
    content: list[str] = []
    final: dict[str, Any] = {}
    thinking = False
    try:
        for chunk in client.stream("/api/chat", _chat_body(opts)):
            message = chunk.get("message") or {}
            if message.get("thinking") and not opts.hide_thinking:
                if not thinking:
                    console.say("Thinking...\n")
                    thinking = True
                console.say(str(message["thinking"]))
            if message.get("content"):
                if thinking:
                    console.say("\n...done thinking.\n\n")
                    thinking = False
                content.append(str(message["content"]))
                console.say(content[-1])
            final = chunk
    except KeyboardInterrupt:
        console.say("\n")
        return None
    console.say("\n\n")
    if opts.verbose:
        _summary(final, console)
    return {"role": "assistant", "content": "".join(content)}


def _interactive(client: Client, console: Console, opts: RunOptions) -> int:
    tty = console.inp.isatty()
    while True:
        if tty:
            console.say(">>> ")
        try:
            line = console.inp.readline()
        except KeyboardInterrupt:
            console.say("\nUse Ctrl + d or /bye to exit.\n")
            continue
        if not line:
            return 0
        text = line.strip()
        if not text:
            continue
        if text.startswith("/"):
            command = text.split()[0]
            if command in ("/bye", "/exit"):
                return 0
            if command == "/clear":
                opts.messages.clear()
                console.say("Cleared session context\n")
            elif command in ("/?", "/help"):
                console.say(_HELP)
            else:
                console.say(f"Unknown command '{command}'. Type /? for help\n")
            continue
        opts.messages.append({"role": "user", "content": text})
        reply = _chat(client, console, opts)
        if reply is not None:
            opts.messages.append(reply)


def run(client: Client, console: Console, opts: RunOptions) -> int:
    try:
        client.call("POST", "/api/show", show_body(opts.model))
    except CliError as err:
        if err.status != 404:
            raise
        pull(client, console, opts.model, opts.insecure)
        client.call("POST", "/api/show", show_body(opts.model))
    for _ in client.stream("/api/generate", generate_body(opts.model, opts.keep_alive)):
        pass
    if not opts.prompt:
        return _interactive(client, console, opts)
    opts.messages.append({"role": "user", "content": opts.prompt})
    _chat(client, console, opts)
    return 0
