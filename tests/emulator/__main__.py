"""Run the emulator until Ctrl-C/SIGTERM.

`python -m tests.emulator --port N [--token-delay S] [--first-token-delay S]
[--cold-load-delay S] [--num-parallel N] [--max-loaded-models N] [--vram-bytes B]
[--keep-alive S] [--max-queue N] [--version V] [--openai-layout new|old]`
"""

from __future__ import annotations

import argparse

from tests.emulator.config import OPENAI_LAYOUTS, EmulatorConfig
from tests.emulator.server import serve


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m tests.emulator", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=11434)
    parser.add_argument("--token-delay", type=float, default=0.0, help="seconds between chunks")
    parser.add_argument(
        "--first-token-delay", type=float, default=0.0, help="extra seconds before the first chunk"
    )
    parser.add_argument(
        "--cold-load-delay", type=float, default=0.0, help="seconds a cold model load takes"
    )
    parser.add_argument(
        "--num-parallel", type=int, default=0, help="OLLAMA_NUM_PARALLEL (0: no limit)"
    )
    parser.add_argument(
        "--max-loaded-models",
        type=int,
        default=0,
        help="OLLAMA_MAX_LOADED_MODELS (0: automatic, 3)",
    )
    parser.add_argument(
        "--vram-bytes", type=int, default=0, help="GPU memory for models (0: unlimited)"
    )
    parser.add_argument(
        "--keep-alive",
        type=float,
        default=300.0,
        help="OLLAMA_KEEP_ALIVE in seconds (negative: forever)",
    )
    parser.add_argument("--max-queue", type=int, default=512, help="OLLAMA_MAX_QUEUE")
    parser.add_argument("--version", default="0.33.0", help="version reported by /api/version")
    parser.add_argument("--openai-layout", choices=OPENAI_LAYOUTS, default="new")
    args = parser.parse_args(argv)
    config = EmulatorConfig(
        token_delay=args.token_delay,
        version=args.version,
        openai_layout=args.openai_layout,
        first_token_delay=args.first_token_delay,
        cold_load_delay=args.cold_load_delay,
        num_parallel=args.num_parallel,
        max_loaded_models=args.max_loaded_models,
        vram_bytes=args.vram_bytes,
        keep_alive=args.keep_alive,
        max_queue=args.max_queue,
    )
    print(
        f"Ollama emulator {config.version} listening on http://{args.host}:{args.port}", flush=True
    )
    serve(config, args.host, args.port)


if __name__ == "__main__":
    main()
