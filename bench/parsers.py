"""µs per stream chunk for the answer readers: ``python -m bench.parsers``.

Streams are built in the shape Ollama sends them (one token per line or event) and fed to the
readers one chunk at a time, as the relay does.
"""

from __future__ import annotations

import json
import time

from app.ollama.streams import Answer, NdjsonReader, SseReader

TOKENS = 1000


def native_stream() -> list[bytes]:
    lines = [
        json.dumps(
            {
                "model": "llama3.2",
                "created_at": "2026-08-21T10:00:00.501Z",
                "message": {"role": "assistant", "content": f" tok{i}"},
                "done": False,
            },
            separators=(",", ":"),
        ).encode()
        + b"\n"
        for i in range(TOKENS)
    ]
    final = {"model": "llama3.2", "message": {"role": "assistant", "content": ""}, "done": True}
    final |= {"prompt_eval_count": 26, "eval_count": TOKENS, "eval_duration": 10**9}
    return [*lines, json.dumps(final).encode() + b"\n"]


def sse_stream() -> list[bytes]:
    head = '{"id":"chatcmpl-1","object":"chat.completion.chunk","created":1,"model":"m",'
    events = [
        f'data: {head}"choices":[{{"index":0,"delta":{{"content":" tok{i}"}},'
        f'"finish_reason":null}}]}}\n\n'.encode()
        for i in range(TOKENS)
    ]
    counts = f'{{"prompt_tokens":26,"completion_tokens":{TOKENS}}}'
    usage = f'data: {head}"choices":[],"usage":{counts}}}\n\n'
    return [*events, usage.encode(), b"data: [DONE]\n\n"]


def measure(name: str, make_reader: object, chunks: list[bytes], rounds: int = 20) -> None:
    best = float("inf")
    for _ in range(rounds):
        answer = Answer()
        reader = make_reader(answer)  # type: ignore[operator]
        started = time.perf_counter_ns()
        for chunk in chunks:
            reader.feed(chunk, 0.0)
        reader.end(0.0)
        best = min(best, time.perf_counter_ns() - started)
        assert answer.completion_tokens == TOKENS, name
    per_chunk = best / len(chunks) / 1000
    print(f"{name:<34} {per_chunk:6.2f} µs/chunk  {1e6 / per_chunk:10,.0f} chunks/s")


def main() -> None:
    measure("native NDJSON (chat)", lambda a: NdjsonReader(a, "chat"), native_stream())
    measure(
        "OpenAI SSE, read only",
        lambda a: SseReader(a, "openai_chat", strip_usage=False),
        sse_stream(),
    )
    measure(
        "OpenAI SSE, usage stripped",
        lambda a: SseReader(a, "openai_chat", strip_usage=True),
        sse_stream(),
    )


if __name__ == "__main__":
    main()
