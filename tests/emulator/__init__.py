"""A faithful Ollama emulator (v0.33 HTTP API) served by uvicorn, for testing the proxy.

    with EmulatorServer(EmulatorConfig(token_delay=0.01)) as upstream:
        ollama.Client(host=upstream.url).chat("llama3.2", [...])
        upstream.requests()          # what the emulator received (GET /_emulator/requests)
        upstream.stop(); upstream.start()   # same port

Request flow: `app` (routing, request log, faults, error shapes; the arrival time) →
`native` handlers (`openai_chat`, `openai_compat`, `responses_api`, `anthropic_compat`,
`audio` wrap them as Ollama's middlewares do) → `scheduler` (server/sched.go) grants a
runner: the fast path, or the pending queue (503 when full), evictions and a cold load;
then a slot → `engine` paces the plan from `tokens`, sleeping every duration it reports
(slower for a runner partly on the CPU) → `wire` writes it the way Go's net/http does.
`catalog` holds the models and the loaded runners, `gojson` the Go encoding rules,
`cloud` the account routes of a server no account is signed in to.

A scheduling scenario is a config, at start or live (POST /_emulator/config,
`EmulatorServer.configure`); the defaults keep every model loaded and loads free:

    EmulatorConfig(max_loaded_models=2, cold_load_delay=0.3, vram_bytes=4_000_000_000,
                   keep_alive=300, max_queue=512, num_parallel=1)

Fault knobs are described in `faults`, control endpoints in `control`, the live config
in `config`; every count and every duration but total_duration (measured, at least
`Expected.timed_duration`) is predictable with `tokens.expected_generation`.
"""

from __future__ import annotations

from tests.emulator.app import create_app
from tests.emulator.config import EmulatorConfig
from tests.emulator.server import EmulatorServer
from tests.emulator.tokens import (
    Expected,
    chat_prompt_tokens,
    count_text_tokens,
    embed_prompt_tokens,
    embedding_vector,
    expected_generation,
    generate_prompt_tokens,
)

__all__ = [
    "EmulatorConfig",
    "EmulatorServer",
    "Expected",
    "chat_prompt_tokens",
    "count_text_tokens",
    "create_app",
    "embed_prompt_tokens",
    "embedding_vector",
    "expected_generation",
    "generate_prompt_tokens",
]
