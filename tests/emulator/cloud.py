"""Account and ollama.com routes, answered as by an Ollama that no account is signed in to.

`/api/me` and the web tools go to ollama.com signed with the server's key; with no account
connected to that key the answer is 401 with the sign-in URL. Model recommendations come
from the built-in list when no cloud cache has been filled.
"""

from __future__ import annotations

from typing import Any

from starlette.requests import Request

from tests.emulator.faults import Fault
from tests.emulator.state import EmulatorState
from tests.emulator.wire import ApiError, GoResponse, go_json

__all__ = [
    "MODEL_RECOMMENDATIONS",
    "SIGNIN_URL",
    "model_recommendations",
    "signin_required",
    "signout",
    "web_experimental",
]

# server/routes.go signinURLStr: https://ollama.com/connect?name=<host>&key=<base64 pubkey>
SIGNIN_URL = "https://ollama.com/connect?name=emulator&key=ZW11bGF0b3I"
_GB = 1000 * 1000 * 1000  # format.GigaByte

# server/model_recommendations.go defaultModelRecommendations (api.ModelRecommendation:
# context_length, max_output_tokens, vram_bytes and required_plan are omitempty).
MODEL_RECOMMENDATIONS: list[dict[str, Any]] = [
    {
        "model": "kimi-k2.6:cloud",
        "description": "State-of-the-art coding, long-horizon execution, and multimodal agent"
        " swarm capability",
        "context_length": 262_144,
        "max_output_tokens": 262_144,
    },
    {
        "model": "glm-5.1:cloud",
        "description": "Reasoning and code generation",
        "context_length": 202_752,
        "max_output_tokens": 131_072,
    },
    {
        "model": "qwen3.5:cloud",
        "description": "Reasoning, coding, and agentic tool use with vision",
        "context_length": 262_144,
        "max_output_tokens": 32_768,
    },
    {
        "model": "minimax-m2.7:cloud",
        "description": "Fast, efficient coding and real-world productivity",
        "context_length": 204_800,
        "max_output_tokens": 128_000,
    },
    {
        "model": "gemma4",
        "description": "Reasoning and code generation locally",
        "vram_bytes": 12 * _GB,
    },
    {
        "model": "qwen3.5",
        "description": "Reasoning, coding, and visual understanding locally",
        "vram_bytes": 14 * _GB,
    },
]


async def signin_required(request: Request, state: EmulatorState, fault: Fault) -> GoResponse:
    """server/routes.go WhoamiHandler: ollama.com knows no account for this key."""
    raise ApiError(401, "unauthorized", signin_url=SIGNIN_URL)


async def signout(request: Request, state: EmulatorState, fault: Fault) -> GoResponse:
    """server/routes.go SignoutHandler (also DELETE /api/user/keys/:encodedKey): ollama.com
    refuses to disconnect a key that is not connected (an AuthorizationError)."""
    raise ApiError(401, "you are not currently signed in")


async def web_experimental(request: Request, state: EmulatorState, fault: Fault) -> GoResponse:
    """server/routes.go webExperimentalProxyHandler, then cloud_proxy.go
    proxyCloudRequestWithPath: the signed request is not accepted, as writeCloudUnauthorized
    answers it."""
    body = await request.body()
    if not body.strip():
        raise ApiError(400, "missing request body")
    raise ApiError(401, "unauthorized", signin_url=SIGNIN_URL)


async def model_recommendations(request: Request, state: EmulatorState, fault: Fault) -> GoResponse:
    """server/routes.go ModelRecommendationsExperimentalHandler (the default list)."""
    return go_json({"recommendations": MODEL_RECOMMENDATIONS})
