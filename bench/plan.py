"""How big each scenario is in each mode: full, ``--quick`` and ``--smoke``."""

from __future__ import annotations

from dataclasses import dataclass

SCENARIOS = ("small", "stream", "memory", "analytics", "micro", "openwebui")
WAYS = ("direct", "proxy", "nginx")
# Lines the generator writes per send(), each still its own HTTP chunk. One send per line
# costs the generator as much CPU per line as the proxy spends when it merges the lines it
# reads (it relays ~10 lines per chunk even for a single stream, the lines/HTTP chunk
# column; ~300 for one stream), so the generator would not be ≥ 5× faster. Several lines
# per send make it so: 32 for a single stream, whose lines the proxy merges most; 16 for 64
# and 256 streams, where the generator also pays for that many sockets (8 measured 3.2×).
BURST = {1: 32, 64: 16, 256: 16}


@dataclass(frozen=True)
class Plan:
    mode: str
    wrk_seconds: float
    warmup_seconds: float
    tokens: int
    # concurrency -> streams run in all (each of ``tokens`` tokens)
    streams: dict[int, int]
    # concurrency -> lines the generator writes per write() (1 = one send per line)
    burst: dict[int, int]
    # concurrency -> streams for LiteLLM (~100-400 chunks/s here): fewer, or none
    litellm_streams: dict[int, int]
    big_bytes: int
    series_total: int
    series_every: int
    analytics_records: int
    parser_rounds: int
    category_prompts: int
    category_rounds: int
    # The paced relay: this many concurrent streams of ``paced_tokens`` lines, one line
    # every ``paced_interval_ms`` per stream (a model's pace), so each line is its own read.
    paced_streams: int = 256
    paced_tokens: int = 300
    paced_interval_ms: int = 10
    # Records per timed round of bench.diagnostics.
    diagnostic_calls: int = 20_000
    # Seconds of each of bench.openwebui's two runs (chats alone, chats and polls).
    openwebui_seconds: float = 20.0

    @property
    def smoke(self) -> bool:
        return self.mode == "smoke"


FULL = Plan(
    mode="full",
    wrk_seconds=10,
    warmup_seconds=2,
    tokens=1000,
    streams={1: 100, 64: 256, 256: 512},
    burst=BURST,
    litellm_streams={1: 3, 64: 64},
    big_bytes=2 << 30,
    series_total=100_000,
    series_every=10_000,
    analytics_records=1_000_000,
    parser_rounds=20,
    category_prompts=5_000,
    category_rounds=5,
    paced_tokens=500,
)
QUICK = Plan(
    mode="quick",
    wrk_seconds=3,
    warmup_seconds=1,
    tokens=1000,
    streams={1: 20, 64: 64, 256: 256},
    burst=BURST,
    litellm_streams={1: 2, 64: 64},
    big_bytes=256 << 20,
    series_total=20_000,
    series_every=2_000,
    analytics_records=100_000,
    parser_rounds=5,
    category_prompts=1_000,
    category_rounds=2,
    paced_tokens=200,
)
SMOKE = Plan(
    mode="smoke",
    wrk_seconds=1,
    warmup_seconds=0,
    tokens=20,
    streams={1: 3, 64: 64, 256: 256},
    burst=BURST,
    litellm_streams={1: 2, 64: 64, 256: 256},
    big_bytes=2 << 20,
    series_total=200,
    series_every=20,
    analytics_records=1_000,
    parser_rounds=1,
    diagnostic_calls=200,
    category_prompts=50,
    category_rounds=1,
    paced_streams=8,
    paced_tokens=10,
)
PLANS = {plan.mode: plan for plan in (FULL, QUICK, SMOKE)}
