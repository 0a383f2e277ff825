"""The TOML configuration file: where it is found, what it may say, and its rank below
the environment and the flags."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from app import config
from app.cli import settings_from_args
from app.config import CONFIG_ENV, ConfigFileError, Settings


@pytest.fixture
def cfg(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    for name in ("PROXY_PORT", "PROXY_HOST", "OLLAMA_UPSTREAM", "LOG_LEVEL"):
        monkeypatch.delenv(name, raising=False)
    path = tmp_path / "config.toml"
    monkeypatch.setenv(CONFIG_ENV, str(path))
    return path


def test_file_values_are_used_and_typed(cfg: Path) -> None:
    cfg.write_text(
        "\ufeff"  # Notepad's BOM
        "# comment\n"
        'PROXY_PORT = 18000\nollama_upstream = "10.0.0.5:11434"\n'
        "analytics_retention_days = 0.5\nusage_injection = false\n"
        '[ollama_env]\nOLLAMA_MODELS = "D:\\\\models"\n',
        encoding="utf-8",
    )
    settings = Settings()
    assert settings.proxy_port == 18000
    assert settings.ollama_upstream == "http://10.0.0.5:11434"
    assert settings.analytics_retention_days == 0.5
    assert settings.usage_injection is False
    assert settings.ollama_env == {"OLLAMA_MODELS": "D:\\models"}


def test_environment_beats_file_and_flags_beat_both(
    cfg: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import argparse

    cfg.write_text('proxy_port = 18000\nproxy_host = "0.0.0.0"\nlog_level = "debug"\n')
    monkeypatch.setenv("PROXY_PORT", "18001")
    settings = settings_from_args(argparse.Namespace(host="127.0.0.2"))
    assert settings.proxy_port == 18001  # environment over the file
    assert settings.proxy_host == "127.0.0.2"  # flag over the file
    assert settings.log_level == "debug"  # the file over the default


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("proxy_prot = 1\n", "unknown setting proxy_prot"),
        ("proxy_port = \n", "not valid TOML"),
        ("proxy_port 1\n", "not valid TOML"),
    ],
)
def test_a_bad_file_is_refused_with_its_name(cfg: Path, text: str, message: str) -> None:
    cfg.write_text(text)
    with pytest.raises(ConfigFileError, match=message) as caught:
        Settings()
    assert str(cfg) in str(caught.value)


def test_a_named_file_must_exist(cfg: Path) -> None:
    with pytest.raises(ConfigFileError, match="no such file"):
        Settings()


def test_no_file_anywhere_means_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(CONFIG_ENV, raising=False)
    monkeypatch.delenv("PROXY_PORT", raising=False)
    assert config.find_config_file() is None or sys.platform == "win32"
    assert Settings().proxy_port == 11434


def test_the_frozen_exe_looks_next_to_itself_then_in_programdata(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(CONFIG_ENV, raising=False)
    monkeypatch.setattr(sys, "frozen", True, raising=False)
    monkeypatch.setattr(sys, "executable", str(tmp_path / "bin" / "ollama-metrics.exe"))
    monkeypatch.setattr(sys, "platform", "win32")
    monkeypatch.setenv("PROGRAMDATA", str(tmp_path / "ProgramData"))
    beside = tmp_path / "bin" / "config.toml"
    shared = tmp_path / "ProgramData" / "OllamaMetrics" / "config.toml"
    assert config.config_file_candidates() == [beside.resolve(), shared]
    assert config.find_config_file() is None
    shared.parent.mkdir(parents=True)
    shared.write_text("proxy_port = 1\n")
    assert config.find_config_file() == shared
    beside.parent.mkdir(parents=True)
    beside.write_text("proxy_port = 2\n")
    assert config.find_config_file() == beside.resolve()


def run_cli(*args: str, env_config: Path | None = None) -> subprocess.CompletedProcess[str]:
    import os

    env = dict(os.environ)
    env.pop(CONFIG_ENV, None)
    if env_config is not None:
        env[CONFIG_ENV] = str(env_config)
    return subprocess.run(
        [sys.executable, "-m", "app.cli", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )


@pytest.mark.process
def test_the_cli_names_the_file_and_the_problem(tmp_path: Path) -> None:
    bad = tmp_path / "config.toml"
    bad.write_text("proxy_prot = 1\n")
    result = run_cli("--config", str(bad), "proxy")
    assert result.returncode == 2
    assert result.stderr.strip() == (
        f"ollama-metrics: configuration file {bad}: unknown setting proxy_prot"
    )
    bad.write_text('proxy_port = "high"\n')
    result = run_cli("proxy", env_config=bad)
    assert result.returncode == 2
    assert "invalid PROXY_PORT" in result.stderr
    assert "Traceback" not in result.stderr


def test_the_configuration_reference_lists_every_setting() -> None:
    reference = (Path(__file__).resolve().parents[1] / "docs" / "configuration.md").read_text()
    missing = [name for name in Settings.model_fields if f"`{name.upper()}`" not in reference]
    assert missing == []
