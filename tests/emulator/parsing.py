"""Request decoding with the validation errors Ollama's Go types produce."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from tests.emulator import gojson
from tests.emulator.wire import ApiError

__all__ = [
    "BOOL",
    "CHAT",
    "COPY",
    "CREATE",
    "DELETE",
    "EMBED",
    "EMBEDDINGS",
    "GENERATE",
    "INT",
    "PULL",
    "PUSH",
    "SHOW",
    "STR",
    "Schema",
    "decode",
    "parse_keep_alive",
    "parse_think",
    "validate_options",
]

# field -> (Go type as printed in UnmarshalTypeError, accepted JSON kinds); None = any.
Fields = Mapping[str, tuple[str, frozenset[str] | None]]
STR = ("string", frozenset({"string"}))
BOOL = ("bool", frozenset({"bool"}))
INT = ("int", frozenset({"number"}))
_MAP = ("map[string]interface {}", frozenset({"object"}))
_ANY: tuple[str, frozenset[str] | None] = ("", None)


class Schema:
    def __init__(self, go_type: str, fields: Fields, nested: Mapping[str, Schema] | None = None):
        self.go_type = go_type
        self.struct = go_type.rsplit(".", 1)[-1]
        self.fields = fields
        self.nested = nested or {}


_MESSAGE = Schema(
    "api.Message",
    {
        "role": STR,
        "content": STR,
        "thinking": STR,
        "images": ("[]api.ImageData", frozenset({"array"})),
        "tool_calls": ("[]api.ToolCall", frozenset({"array"})),
        "tool_name": STR,
        "tool_call_id": STR,
    },
)
_INFERENCE_COMMON: dict[str, tuple[str, frozenset[str] | None]] = {
    "model": STR,
    "stream": BOOL,
    "format": _ANY,
    "options": _MAP,
    "keep_alive": _ANY,
    "think": _ANY,
    "truncate": BOOL,
    "shift": BOOL,
    "logprobs": BOOL,
    "top_logprobs": INT,
}
GENERATE = Schema(
    "api.GenerateRequest",
    {
        **_INFERENCE_COMMON,
        "prompt": STR,
        "suffix": STR,
        "system": STR,
        "template": STR,
        "context": ("[]int", frozenset({"array"})),
        "raw": BOOL,
        "images": ("[]api.ImageData", frozenset({"array"})),
    },
)
CHAT = Schema(
    "api.ChatRequest",
    {
        **_INFERENCE_COMMON,
        "messages": ("[]api.Message", frozenset({"array"})),
        "tools": ("api.Tools", frozenset({"array"})),
    },
    nested={"messages": _MESSAGE},
)
EMBED = Schema(
    "api.EmbedRequest",
    {
        "model": STR,
        "input": _ANY,
        "truncate": BOOL,
        "dimensions": INT,
        "options": _MAP,
        "keep_alive": _ANY,
    },
)
EMBEDDINGS = Schema(
    "api.EmbeddingRequest",
    {"model": STR, "prompt": STR, "options": _MAP, "keep_alive": _ANY},
)
SHOW = Schema(
    "api.ShowRequest",
    {"model": STR, "name": STR, "system": STR, "verbose": BOOL, "options": _MAP},
)
PULL = Schema(
    "api.PullRequest",
    {"model": STR, "name": STR, "insecure": BOOL, "stream": BOOL},
)
PUSH = Schema(
    "api.PushRequest",
    {"model": STR, "name": STR, "insecure": BOOL, "stream": BOOL},
)
COPY = Schema("api.CopyRequest", {"source": STR, "destination": STR})
DELETE = Schema("api.DeleteRequest", {"model": STR, "name": STR})
CREATE = Schema(
    "api.CreateRequest",
    {
        "model": STR,
        "name": STR,
        "from": STR,
        "files": ("map[string]string", frozenset({"object"})),
        "adapters": ("map[string]string", frozenset({"object"})),
        "template": STR,
        "license": _ANY,
        "system": STR,
        "parameters": _MAP,
        "messages": ("[]api.Message", frozenset({"array"})),
        "quantize": STR,
        "stream": BOOL,
    },
)


def _check(value: Mapping[str, Any], schema: Schema, struct: str, prefix: str) -> None:
    for name, item in value.items():
        spec = schema.fields.get(name)
        if spec is None or item is None:
            continue
        go_type, kinds = spec
        path = f"{prefix}{name}"
        if kinds is not None and gojson.json_kind(item) not in kinds:
            raise gojson.DecodeError(
                f"json: cannot unmarshal {gojson.json_kind(item)} into Go struct field "
                f"{struct}.{path} of type {go_type}"
            )
        inner = schema.nested.get(name)
        if inner is not None and isinstance(item, list):
            for element in item:
                if not isinstance(element, dict):
                    raise gojson.DecodeError(
                        f"json: cannot unmarshal {gojson.json_kind(element)} into Go struct "
                        f"field {struct}.{path} of type {inner.go_type}"
                    )
                _check(element, inner, inner.struct, f"{path}.")


def decode(raw: bytes, schema: Schema) -> dict[str, Any]:
    """Decode like gin's ShouldBindJSON into `schema`; raises MissingBody or DecodeError."""
    value = gojson.decode_object(raw, schema.go_type)
    _check(value, schema, schema.struct, "")
    return value


def decode_native(raw: bytes, schema: Schema) -> dict[str, Any]:
    """Native handlers answer an empty body with "missing request body"."""
    try:
        return decode(raw, schema)
    except gojson.MissingBody:
        raise ApiError(400, "missing request body") from None
    except gojson.DecodeError as err:
        raise ApiError(400, str(err)) from None


_THINK_LEVELS = ("high", "medium", "low", "max")


def parse_think(value: Any) -> bool | None:
    """`think`: bool or a level string (levels mean on); None when not sent."""
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, str):
        if value in _THINK_LEVELS:
            return True
        if value in ("true", "false"):
            return value == "true"
        raise ApiError(
            400,
            f'invalid think value: "{value}" '
            '(must be "high", "medium", "low", "max", true, or false)',
        )
    raise ApiError(
        400, 'think must be a boolean or string ("high", "medium", "low", true, or false)'
    )


def parse_keep_alive(value: Any) -> int | None:
    """keep_alive → nanoseconds (negative = forever); None when not sent."""
    if value is None:
        return None
    if isinstance(value, bool):
        raise ApiError(400, "Unsupported type: 'bool'")
    if isinstance(value, int | float):
        return -1 if value < 0 else int(value * 1_000_000_000)
    if isinstance(value, str):
        # A bare negative number is the documented "forever" spelling.
        if value.lstrip("-").isdigit() and value.startswith("-"):
            return -1
        try:
            duration = gojson.parse_go_duration(value)
        except gojson.DecodeError as err:
            raise ApiError(400, str(err)) from None
        return -1 if duration < 0 else duration
    raise ApiError(400, f"Unsupported type: '{gojson.json_kind(value)}'")


_INT_OPTIONS = frozenset(
    {"num_keep", "seed", "num_predict", "top_k", "repeat_last_n", "num_ctx", "num_batch"}
    | {"num_gpu", "main_gpu", "num_thread", "draft_num_predict"}
)
_FLOAT_OPTIONS = frozenset(
    {"temperature", "top_p", "min_p", "typical_p", "repeat_penalty", "presence_penalty"}
    | {"frequency_penalty"}
)
_BOOL_OPTIONS = frozenset({"use_mmap", "numa", "penalize_newline", "low_vram", "vocab_only"})


def validate_options(options: Mapping[str, Any] | None) -> None:
    """The type checks of api.Options.FromMap; unknown keys are ignored as in Ollama."""
    for key, value in (options or {}).items():
        if value is None:
            continue
        number = isinstance(value, int | float) and not isinstance(value, bool)
        if key in _INT_OPTIONS and not number:
            raise ApiError(400, f'option "{key}" must be of type integer')
        if key in _FLOAT_OPTIONS and not number:
            raise ApiError(400, f'option "{key}" must be of type float32')
        if key in _BOOL_OPTIONS and not isinstance(value, bool):
            raise ApiError(400, f'option "{key}" must be of type boolean')
        if key == "stop":
            if not isinstance(value, list):
                raise ApiError(400, f'option "{key}" must be of type array')
            if not all(isinstance(item, str) for item in value):
                raise ApiError(400, f'option "{key}" must be of an array of strings')


def num_ctx(options: Mapping[str, Any] | None, spec_parameters: str, trained: int) -> int:
    """The context a request runs with: its `num_ctx`, else the Modelfile's, else the
    VRAM-tier default of a CPU-only machine (4096; server/routes.go `defaultNumCtx`), capped
    at the model's trained context (llm/llama_server.go `NewLlamaServer`)."""
    value = (options or {}).get("num_ctx")
    if isinstance(value, int) and not isinstance(value, bool) and value > 0:
        return min(value, trained)
    for line in spec_parameters.splitlines():
        words = line.split()
        if len(words) == 2 and words[0] == "num_ctx":
            return min(int(words[1]), trained)
    value = DEFAULT_NUM_CTX
    return min(value, trained)


DEFAULT_NUM_CTX = 4096


def num_predict(options: Mapping[str, Any] | None) -> int | None:
    value = (options or {}).get("num_predict")
    if isinstance(value, int | float) and not isinstance(value, bool) and value > 0:
        return int(value)
    return None
