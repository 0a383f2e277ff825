"""Settings: the one place that reads the environment and the configuration file.

Every knob has an environment variable (the field name in upper case) and a default that
suits the usual layout: the proxy on Ollama's own port 11434, the real Ollama moved to 11435.
A TOML configuration file (keys: the field names) sits below the environment; it is what a
Windows service reads, since a service does not see the user's environment. Command-line
flags are applied on top by passing them to ``Settings(...)`` as keyword arguments, which
pydantic-settings ranks above both.
"""

from __future__ import annotations

import os
import re
import socket
import sys
import tomllib
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic.fields import FieldInfo
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

from app import auth

CONFIG_ENV = "OLLAMA_METRICS_CONFIG"
CONFIG_NAME = "config.toml"


class ConfigFileError(ValueError):
    """The configuration file cannot be read, or names a setting that does not exist."""


def program_data_home() -> Path:
    """``%ProgramData%\\OllamaMetrics``: the Windows service's configuration, logs and data."""
    return Path(os.environ.get("PROGRAMDATA") or r"C:\ProgramData") / "OllamaMetrics"


def config_file_candidates() -> list[Path]:
    """Where the configuration file is looked for, first match wins.

    ``OLLAMA_METRICS_CONFIG`` names it outright (and then it must exist); otherwise
    ``config.toml`` next to a frozen executable, then, on Windows, in ``%ProgramData%``.
    """
    named = os.environ.get(CONFIG_ENV)
    if named:
        return [Path(named)]
    found: list[Path] = []
    if getattr(sys, "frozen", False):
        found.append(Path(sys.executable).resolve().parent / CONFIG_NAME)
    if sys.platform == "win32":
        found.append(program_data_home() / CONFIG_NAME)
    return found


def find_config_file() -> Path | None:
    candidates = config_file_candidates()
    if os.environ.get(CONFIG_ENV):
        if not candidates[0].is_file():
            raise ConfigFileError(f"{CONFIG_ENV}={candidates[0]}: no such file")
        return candidates[0]
    return next((path for path in candidates if path.is_file()), None)


def read_config_file(path: Path, known: set[str]) -> dict[str, Any]:
    """The file's settings, keys lower-cased; unknown keys are an error (a typo is not
    silently ignored)."""
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8-sig"))
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigFileError(f"{path}: cannot read: {exc}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigFileError(f"{path}: not valid TOML: {exc}") from exc
    values = {key.lower(): value for key, value in data.items()}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ConfigFileError(f"{path}: unknown setting {', '.join(unknown)}")
    return values


class _ConfigFileSource(PydanticBaseSettingsSource):
    def __init__(self, settings_cls: type[BaseSettings]) -> None:
        super().__init__(settings_cls)
        path = find_config_file()
        known = set(settings_cls.model_fields)
        self.values = {} if path is None else read_config_file(path, known)

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        return self.values.get(field_name), field_name, False

    def __call__(self) -> dict[str, Any]:
        return dict(self.values)


NODE_NAME = re.compile(r"[A-Za-z0-9._-]{1,64}")


def default_node() -> str:
    """The host name, made a valid node name (other characters become ``-``, cut to 64)."""
    name = re.sub(r"[^A-Za-z0-9._-]", "-", socket.gethostname())[:64]
    return name or "localhost"


class Settings(BaseSettings):
    # Inputs are hidden in validation errors: they may hold tokens, keys and passwords.
    model_config = SettingsConfigDict(
        env_prefix="", case_sensitive=False, extra="ignore", hide_input_in_errors=True
    )

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # Flags, then the environment, then the configuration file, then the defaults.
        return (init_settings, env_settings, _ConfigFileSource(settings_cls))

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
    log_format: str = Field("text", pattern="^(text|json)$", description="text or json lines.")
    ollama_bin: str | None = Field(None, description="The ollama executable for serve/run.")
    ollama_log: Path | None = Field(
        None, description="Where serve writes Ollama's own output (default: in ANALYTICS_DIR)."
    )
    ollama_env: dict[str, str] = Field(
        default_factory=dict,
        description="Extra environment for the Ollama that serve starts (e.g. OLLAMA_MODELS).",
    )
    service_command: str = Field(
        "serve",
        pattern="^(serve|proxy)$",
        description="What the Windows service runs: serve (Ollama and the proxy) or proxy.",
    )

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
    reload_window: float = Field(
        600.0,
        ge=0,
        description="A model loaded again within this many seconds of its unload is a reload.",
    )

    analytics_backend: str = Field(
        "sqlite",
        description="Comma list of sqlite, postgresql, jsonl, loki; 'none' turns analytics off.",
    )
    analytics_dir: Path = Field(
        Path("ollama_analytics"), description="SQLite database and JSONL files live here."
    )
    analytics_database_url: SecretStr | None = Field(
        None, description="SQLAlchemy URL of the SQL store; postgresql://… selects PostgreSQL."
    )
    analytics_max_text_bytes: int = Field(
        256 * 1024, ge=0, description="Cap per stored text field (prompt, response, …)."
    )
    analytics_store_prompts: bool = Field(
        True, description="Store prompt, request and response texts (false keeps the rest)."
    )
    analytics_retention_days: float = Field(
        7.0, ge=0, description="Delete records older than this many days (0 keeps all)."
    )
    analytics_queue_size: int = Field(
        10_000, ge=1, description="Records that may wait per backend before new ones drop."
    )
    analytics_batch_size: int = Field(500, ge=1, description="Records per write.")
    analytics_auto_migrate: bool = Field(
        True, description="Upgrade the SQL store to the newest schema at start."
    )
    analytics_drain_seconds: float = Field(
        10.0, ge=0, description="On shutdown, how long queued records may take to be written."
    )
    analytics_token: SecretStr | None = Field(
        None, description="When set, /analytics/* requires Authorization: Bearer <token>."
    )
    metrics_token: SecretStr | None = Field(
        None, description="When set, /metrics requires Authorization: Bearer <token>."
    )
    proxy_api_keys: SecretStr | None = Field(
        None,
        description="Comma list of name:key (or bare keys): proxied requests need one as Bearer.",
    )
    proxy_api_keys_file: Path | None = Field(
        None, description="File of 'name key' lines, like PROXY_API_KEYS; re-read on change."
    )
    proxy_node: str = Field(
        default_factory=lambda: default_node(),
        description="The machine's name on every record, Loki stream and ollama_proxy_info.",
    )
    loki_url: str | None = Field(None, description="Loki base URL for the loki backend.")
    loki_tenant: str | None = Field(None, description="X-Scope-OrgID sent to Loki.")

    @property
    def analytics_backends(self) -> tuple[str, ...]:
        names = [n.strip().lower() for n in self.analytics_backend.split(",") if n.strip()]
        return tuple(n for n in names if n != "none")

    @field_validator("analytics_backend")
    @classmethod
    def _check_backends(cls, value: str) -> str:
        names = [n.strip().lower() for n in value.split(",") if n.strip()]
        unknown = sorted(set(names) - {"sqlite", "postgresql", "jsonl", "loki", "none"})
        if unknown:
            raise ValueError(
                f"ANALYTICS_BACKEND: unknown backend {', '.join(unknown)} "
                "(choose from sqlite, postgresql, jsonl, loki, none)"
            )
        if "sqlite" in names and "postgresql" in names:
            raise ValueError("ANALYTICS_BACKEND: choose sqlite or postgresql, not both")
        return value

    @model_validator(mode="after")
    def _check_analytics(self) -> Settings:
        backends = self.analytics_backends
        if "postgresql" in backends and self.analytics_database_url is None:
            raise ValueError(
                "ANALYTICS_BACKEND=postgresql needs ANALYTICS_DATABASE_URL=postgresql://…"
            )
        if "loki" in backends and not self.loki_url:
            raise ValueError("ANALYTICS_BACKEND=loki needs LOKI_URL")
        # Checked here so that a bad key stops the start with a clear message (never the key).
        auth.load(self.api_keys_value, self.proxy_api_keys_file)
        return self

    @property
    def api_keys_value(self) -> str | None:
        """``PROXY_API_KEYS`` as text, None when unset or blank."""
        given = self.proxy_api_keys
        text = given.get_secret_value().strip() if given is not None else ""
        return text or None

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

    @field_validator("proxy_node")
    @classmethod
    def _check_node(cls, value: str) -> str:
        if not NODE_NAME.fullmatch(value):
            raise ValueError(
                f"PROXY_NODE must be 1 to 64 letters, digits, '.', '_' or '-', got {value!r}"
            )
        return value

    @field_validator("log_level")
    @classmethod
    def _check_log_level(cls, value: str) -> str:
        value = value.strip().lower()
        if value not in ("debug", "info", "warning", "error"):
            raise ValueError("LOG_LEVEL must be debug, info, warning or error")
        return value
