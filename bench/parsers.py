"""µs per stream chunk for the answer readers: ``python -m bench.parsers``.

Streams are built in the shape Ollama sends them (one token per line or event) and fed to the
readers one chunk at a time, as the relay does.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable

from app.ollama.streams import Answer, NdjsonReader, Reader, SseReader

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


def measure(
    make_reader: Callable[[Answer], Reader], chunks: list[bytes], rounds: int = 20
) -> float:
    """Microseconds per chunk: the fastest of ``rounds`` passes over the whole stream."""
    best = float("inf")
    for _ in range(rounds):
        answer = Answer()
        reader = make_reader(answer)
        started = time.perf_counter_ns()
        for chunk in chunks:
            reader.feed(chunk, 0.0)
        reader.end(0.0)
        best = min(best, time.perf_counter_ns() - started)
        assert answer.completion_tokens == TOKENS
    return best / len(chunks) / 1000


def run(*, rounds: int = 20) -> dict[str, float]:
    """µs per chunk for each reader, keyed as printed by ``main``."""
    native, sse = native_stream(), sse_stream()
    return {
        "ndjson_us_per_chunk": measure(lambda a: NdjsonReader(a, "chat"), native, rounds),
        "sse_us_per_chunk": measure(
            lambda a: SseReader(a, "openai_chat", strip_usage=False), sse, rounds
        ),
        "sse_strip_usage_us_per_chunk": measure(
            lambda a: SseReader(a, "openai_chat", strip_usage=True), sse, rounds
        ),
    }


LABELS = {
    "ndjson_us_per_chunk": "native NDJSON (chat)",
    "sse_us_per_chunk": "OpenAI SSE, read only",
    "sse_strip_usage_us_per_chunk": "OpenAI SSE, usage stripped",
}


def main() -> None:
    for key, per_chunk in run().items():
        print(f"{LABELS[key]:<34} {per_chunk:6.2f} µs/chunk  {1e6 / per_chunk:10,.0f} chunks/s")


if __name__ == "__main__":
    main()
