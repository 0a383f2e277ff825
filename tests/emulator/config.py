"""Runtime knobs of one emulator process (changeable live via POST /_emulator/config)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any

__all__ = ["OPENAI_LAYOUTS", "EmulatorConfig"]

# "new" = the v0.32.6+ OpenAI chunk layout; "old" = the layout before it.
OPENAI_LAYOUTS = ("new", "old")


@dataclass
class EmulatorConfig:
    """`token_delay`: the least time a streamed token takes (the model's own rate applies
    when it is slower); `first_token_delay`: extra time before the first token, outside
    every reported duration; `cold_load_delay`: what loading a model that is not in
    /api/ps takes, inside its load_duration (0: cold and warm loads alike);
    `num_parallel`: OLLAMA_NUM_PARALLEL, requests one model serves at once, the others
    wait for a slot (0: no limit; Ollama's default is 1).

    The scheduler's knobs (server/sched.go, envconfig/config.go): `max_loaded_models`:
    OLLAMA_MAX_LOADED_MODELS, runners loaded at once (0: automatic, 3 = defaultModelsPerGPU
    on a CPU-only or one-GPU host); `vram_bytes`: the GPU memory models are placed in
    (0: unlimited, every model wholly on the GPU); `keep_alive`: OLLAMA_KEEP_ALIVE in
    seconds, how long an idle runner stays loaded (negative: forever); `max_queue`:
    OLLAMA_MAX_QUEUE, requests that may wait for the scheduler before a 503."""

    token_delay: float = 0.0
    version: str = "0.33.0"
    openai_layout: str = "new"
    first_token_delay: float = 0.0
    cold_load_delay: float = 0.0
    num_parallel: int = 0
    max_loaded_models: int = 0
    vram_bytes: int = 0
    keep_alive: float = 300.0
    max_queue: int = 512

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        if self.openai_layout not in OPENAI_LAYOUTS:
            raise ValueError(f"openai_layout must be one of {OPENAI_LAYOUTS}")
        if min(self.token_delay, self.first_token_delay, self.cold_load_delay) < 0:
            raise ValueError("delays must be >= 0")
        counts = {
            "num_parallel": self.num_parallel,
            "max_loaded_models": self.max_loaded_models,
            "vram_bytes": self.vram_bytes,
            "max_queue": self.max_queue,
        }
        for name, value in counts.items():
            if value < 0:
                raise ValueError(f"{name} must be >= 0")

    def update(self, changes: dict[str, Any]) -> None:
        """Apply a partial update; unknown keys raise, so a typo in a test is loud."""
        unknown = set(changes) - {f.name for f in fields(self)}
        if unknown:
            raise ValueError(f"unknown config keys: {sorted(unknown)}")
        previous = asdict(self)
        casts = {"float": float, "int": int, "str": str}
        kinds = {f.name: casts[str(f.type)] for f in fields(self)}
        for key, value in changes.items():
            setattr(self, key, kinds[key](value))
        try:
            self.validate()
        except ValueError:
            for key, value in previous.items():
                setattr(self, key, value)
            raise

    def version_tuple(self) -> tuple[int, ...]:
        return version_tuple(self.version)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def version_tuple(text: str) -> tuple[int, ...]:
    core = text.split("-", 1)[0]
    return tuple(int(part) for part in core.split(".") if part.isdigit())
