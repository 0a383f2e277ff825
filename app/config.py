"""Settings: the one place that reads the environment.

Every knob has an environment variable (the field name in upper case) and a default that
suits the usual layout: the proxy on Ollama's own port 11434, the real Ollama moved to 11435.
Command-line flags are applied on top by passing them to ``Settings(...)`` as keyword
arguments, which pydantic-settings ranks above the environment.
"""

from __future__ import annotations

from pathlib import Path
from urllib.parse import urlsplit

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="", case_sensitive=False, extra="ignore")

    proxy_host: str = Field("127.0.0.1", description="Address the proxy listens on.")
    proxy_port: int = Field(11434, ge=0, le=65535, description="Port the proxy listens on.")
    ollama_upstream: str = Field(
        "http://127.0.0.1:11435", description="Base URL of the real Ollama server."
    )
    upstream_connect_timeout: float = Field(
        10.0, gt=0, description="Seconds to wait for a TCP connection to Ollama."
    )
    upstream_max_connections: int = Field(
        0, ge=0, description="Cap on pooled upstream connections (0 = no cap)."
    )
    shutdown_grace_seconds: float = Field(
        30.0, ge=0, description="On SIGTERM, how long in-flight requests may finish."
    )
    log_level: str = Field("info", description="debug, info, warning or error.")

    metrics_max_models: int = Field(
        100, ge=1, description="Distinct model label values before new ones become 'other'."
    )
    usage_injection: bool = Field(
        True,
        description="Ask Ollama for token usage on OpenAI-compatible streams and hide it again.",
    )
    prompt_category_rules: Path | None = Field(
        None, description="JSON file of prompt category rules replacing the built-in ones."
    )
    ps_poll_interval: float = Field(
        10.0, ge=0, description="Seconds between /api/ps polls for loaded models (0 = off)."
    )

    @field_validator("ollama_upstream")
    @classmethod
    def _check_upstream(cls, value: str) -> str:
        value = value.strip()
        if "://" not in value:
            # Ollama's own clients accept "host:port"; so do we.
            value = "http://" + value
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"OLLAMA_UPSTREAM must be an http(s) URL, got {value!r}")
        if parts.query or parts.fragment:
            raise ValueError("OLLAMA_UPSTREAM must not carry a query string or fragment")
        return value.rstrip("/")

    @field_validator("log_level")
    @classmethod
    def _check_log_level(cls, value: str) -> str:
        value = value.strip().lower()
        if value not in ("debug", "info", "warning", "error"):
            raise ValueError("LOG_LEVEL must be debug, info, warning or error")
        return value
