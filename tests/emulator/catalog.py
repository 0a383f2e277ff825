"""The emulator's model store: what is installed, what the "registry" offers, what is loaded.

Model specs are static and shared with `tokens` (timings, capabilities); the `Catalog`
instance is the mutable per-server state changed by pull/copy/create/delete, and holds
the runners `scheduler` loads (what `/api/ps` lists).
"""

from __future__ import annotations

import hashlib
import re
import time
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from tests.emulator.scheduler import Runner

__all__ = [
    "BASE_MODELS",
    "REGISTRY_ONLY",
    "Catalog",
    "ModelSpec",
    "full_name",
    "normalize",
    "registry_spec",
    "spec_for",
]

# Go's time.Duration maximum: what Ollama uses for a negative keep_alive ("forever").
FOREVER_NS = 2**63 - 1


@dataclass(frozen=True)
class ModelSpec:
    name: str
    family: str
    parameter_size: str
    quantization_level: str
    size: int
    capabilities: tuple[str, ...]
    context_length: int
    embedding_length: int
    # Timings reported in the metrics, and slept for real, so no duration is longer than
    # the request took: a fast GPU's warm numbers (a few ms to load, 100-250 tokens/s).
    load_duration_ns: int
    prompt_ns_per_token: int
    eval_ns_per_token: int
    modified_ns: int = 1_746_405_464_706_015_396
    format: str = "gguf"
    template: str = "{{ .Prompt }}"
    parameters: str = ""
    license: str = ""
    families: tuple[str, ...] = ()

    @property
    def digest(self) -> str:
        return hashlib.sha256(f"emulator-model:{self.name}".encode()).hexdigest()

    def details(self) -> dict[str, object]:
        return {
            "parent_model": "",
            "format": self.format,
            "family": self.family,
            "families": list(self.families or (self.family,)),
            "parameter_size": self.parameter_size,
            "quantization_level": self.quantization_level,
        }


_LLAMA_TEMPLATE = (
    "<|start_header_id|>system<|end_header_id|>\n\n{{ .System }}<|eot_id|>"
    "<|start_header_id|>user<|end_header_id|>\n\n{{ .Prompt }}<|eot_id|>"
    "<|start_header_id|>assistant<|end_header_id|>\n\n"
)

BASE_MODELS: tuple[ModelSpec, ...] = (
    ModelSpec(
        name="llama3.2:latest",
        family="llama",
        parameter_size="3.2B",
        quantization_level="Q4_K_M",
        size=2_019_393_189,
        capabilities=("completion", "tools"),
        context_length=131_072,
        embedding_length=3072,
        load_duration_ns=2_201_337,
        prompt_ns_per_token=121_307,
        eval_ns_per_token=4_192_307,
        modified_ns=1_746_405_464_706_015_396,
        template=_LLAMA_TEMPLATE,
        parameters='stop                           "<|start_header_id|>"\n'
        'stop                           "<|end_header_id|>"\n'
        'stop                           "<|eot_id|>"',
        license="LLAMA 3.2 COMMUNITY LICENSE AGREEMENT",
    ),
    ModelSpec(
        name="qwen3:latest",
        family="qwen3",
        parameter_size="8.2B",
        quantization_level="Q4_K_M",
        size=5_225_388_164,
        capabilities=("completion", "tools", "thinking"),
        context_length=40_960,
        embedding_length=4096,
        load_duration_ns=3_487_333,
        prompt_ns_per_token=281_194,
        eval_ns_per_token=8_604_120,
        modified_ns=1_751_290_872_113_402_941,
        template="{{- range .Messages }}<|im_start|>{{ .Role }}\n{{ .Content }}<|im_end|>\n"
        "{{ end }}<|im_start|>assistant\n",
        parameters="repeat_penalty                 1\n"
        "stop                           <|im_start|>\n"
        "stop                           <|im_end|>\n"
        "temperature                    0.6\n"
        "top_k                          20\n"
        "top_p                          0.95",
        license="Apache License\nVersion 2.0, January 2004",
    ),
    ModelSpec(
        name="gemma:2b",
        family="gemma",
        parameter_size="3B",
        quantization_level="Q4_0",
        size=1_678_456_656,
        capabilities=("completion",),
        context_length=8192,
        embedding_length=2048,
        load_duration_ns=1_918_542,
        prompt_ns_per_token=150_155,
        eval_ns_per_token=5_870_336,
        modified_ns=1_738_243_395_081_773_522,
        template="<start_of_turn>user\n{{ .Prompt }}<end_of_turn>\n<start_of_turn>model\n",
        parameters="repeat_penalty                 1\n"
        'stop                           "<start_of_turn>"',
        license="Gemma Terms of Use",
    ),
    ModelSpec(
        name="nomic-embed-text:latest",
        family="nomic-bert",
        parameter_size="137M",
        quantization_level="F16",
        size=274_302_450,
        capabilities=("embedding",),
        context_length=2048,
        embedding_length=768,
        load_duration_ns=1_318_650,
        prompt_ns_per_token=40_213,
        eval_ns_per_token=0,
        modified_ns=1_721_900_211_454_808_183,
        parameters="num_ctx                        8192",
        license="Apache License\nVersion 2.0, January 2004",
    ),
)

# Pullable but not installed at start, so tests can watch a pull add a model.
REGISTRY_ONLY: tuple[ModelSpec, ...] = (
    ModelSpec(
        name="smollm2:135m",
        family="llama",
        parameter_size="134.52M",
        quantization_level="F16",
        size=270_898_672,
        capabilities=("completion", "tools"),
        context_length=8192,
        embedding_length=576,
        load_duration_ns=1_103_771,
        prompt_ns_per_token=52_417,
        eval_ns_per_token=2_201_338,
    ),
    ModelSpec(
        name="all-minilm:latest",
        family="bert",
        parameter_size="23M",
        quantization_level="F16",
        size=45_960_996,
        capabilities=("embedding",),
        context_length=512,
        embedding_length=384,
        load_duration_ns=1_018_402,
        prompt_ns_per_token=15_022,
        eval_ns_per_token=0,
    ),
)

# Used for names created at runtime from files only; copies inherit their source's spec.
DEFAULT_SPEC = replace(BASE_MODELS[0], name="", capabilities=("completion",))

_PART = r"[A-Za-z0-9][A-Za-z0-9_.\-]{0,79}"
_NAME = re.compile(
    rf"^(?:(?P<host>[A-Za-z0-9][A-Za-z0-9_.\-:]*)/)??(?:(?P<ns>{_PART})/)?"
    rf"(?P<model>{_PART})(?::(?P<tag>[A-Za-z0-9_][A-Za-z0-9_.\-]{{0,79}}))?$"
)
_DEFAULT_HOST = "registry.ollama.ai"
_DEFAULT_NAMESPACE = "library"


def _parts(name: str) -> tuple[str, str, str, str] | None:
    match = _NAME.match(name.strip())
    if match is None:
        return None
    return (
        match.group("host") or _DEFAULT_HOST,
        match.group("ns") or _DEFAULT_NAMESPACE,
        match.group("model"),
        match.group("tag") or "latest",
    )


def normalize(name: str) -> str | None:
    """Display name as `/api/tags` shows it (`llama3.2` → `llama3.2:latest`); None if invalid."""
    parts = _parts(name)
    if parts is None:
        return None
    host, namespace, model, tag = parts
    prefix = ""
    if host != _DEFAULT_HOST:
        prefix = f"{host}/{namespace}/"
    elif namespace != _DEFAULT_NAMESPACE:
        prefix = f"{namespace}/"
    return f"{prefix}{model}:{tag}"


def full_name(name: str) -> str:
    """The internal name Ollama puts into capability errors: registry.ollama.ai/library/m:t."""
    parts = _parts(name)
    if parts is None:
        return name
    host, namespace, model, tag = parts
    return f"{host}/{namespace}/{model}:{tag}"


def namespace_of(name: str) -> str:
    parts = _parts(name)
    return parts[1] if parts else _DEFAULT_NAMESPACE


_SPECS = {spec.name: spec for spec in BASE_MODELS + REGISTRY_ONLY}


def spec_for(name: str) -> ModelSpec:
    """Static spec for a registry model name; unknown names get the default profile."""
    key = normalize(name) or name
    return _SPECS.get(key, replace(DEFAULT_SPEC, name=key))


def registry_spec(name: str) -> ModelSpec | None:
    """What a pull of `name` downloads; None when the "registry" has no such model."""
    return _SPECS.get(normalize(name) or "")


@dataclass
class Catalog:
    """Installed models (by display name) and loaded runners (by model name, in load
    order; the scheduler's `s.loaded`); one per server."""

    installed: dict[str, tuple[ModelSpec, int]] = field(default_factory=dict)
    loaded: dict[str, Runner] = field(default_factory=dict)
    blobs: set[str] = field(default_factory=set)

    @classmethod
    def initial(cls) -> Catalog:
        return cls(installed={spec.name: (spec, spec.modified_ns) for spec in BASE_MODELS})

    def reset(self) -> None:
        fresh = Catalog.initial()
        for runner in self.loaded.values():
            runner.discard()
        self.installed, self.loaded, self.blobs = fresh.installed, {}, set()

    def lookup(self, name: str) -> ModelSpec | None:
        key = normalize(name)
        if key is None:
            return None
        entry = self.installed.get(key)
        return entry[0] if entry else None

    def modified_ns(self, name: str) -> int:
        return self.installed[normalize(name) or name][1]

    def add(self, name: str, spec: ModelSpec) -> None:
        self.installed[name] = (replace(spec, name=name), time.time_ns())

    def remove(self, name: str) -> bool:
        key = normalize(name) or name
        runner = self.loaded.pop(key, None)
        if runner is not None:
            runner.discard()
        return self.installed.pop(key, None) is not None

    def newest_first(self) -> list[tuple[ModelSpec, int]]:
        return sorted(self.installed.values(), key=lambda item: item[1], reverse=True)
