from __future__ import annotations

import pytest
from pydantic import ValidationError

from app.cli import _parser, settings_from_args
from app.config import Settings, default_node


def test_defaults_put_the_proxy_on_ollamas_port(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("PROXY_HOST", "PROXY_PORT", "OLLAMA_UPSTREAM"):
        monkeypatch.delenv(name, raising=False)
    settings = Settings()
    assert (settings.proxy_host, settings.proxy_port) == ("127.0.0.1", 11434)
    assert settings.ollama_upstream == "http://127.0.0.1:11435"


def test_environment_is_read(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PROXY_HOST", "0.0.0.0")
    monkeypatch.setenv("PROXY_PORT", "8080")
    monkeypatch.setenv("OLLAMA_UPSTREAM", "http://gpu-box:11434/")
    settings = Settings()
    assert (settings.proxy_host, settings.proxy_port) == ("0.0.0.0", 8080)
    assert settings.ollama_upstream == "http://gpu-box:11434"


def test_flags_override_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PROXY_PORT", "8080")
    monkeypatch.setenv("OLLAMA_UPSTREAM", "http://from-env:1")
    args = _parser().parse_args(["proxy", "--port", "9090", "--upstream", "http://flag:2"])
    settings = settings_from_args(args)
    assert settings.proxy_port == 9090
    assert settings.ollama_upstream == "http://flag:2"


def test_unset_flags_keep_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PROXY_PORT", "8080")
    settings = settings_from_args(_parser().parse_args(["proxy"]))
    assert settings.proxy_port == 8080


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("127.0.0.1:11435", "http://127.0.0.1:11435"),
        ("  http://h:1/  ", "http://h:1"),
        ("https://ollama.internal/base/", "https://ollama.internal/base"),
    ],
)
def test_upstream_is_normalised(given: str, expected: str) -> None:
    assert Settings(ollama_upstream=given).ollama_upstream == expected


@pytest.mark.parametrize("bad", ["ftp://h:1", "http://", "http://h:1/?x=1"])
def test_bad_upstream_is_refused_with_its_name(bad: str) -> None:
    with pytest.raises(ValidationError, match="OLLAMA_UPSTREAM"):
        Settings(ollama_upstream=bad)


def test_bad_port_is_refused() -> None:
    with pytest.raises(ValidationError):
        Settings(proxy_port=70000)


@pytest.mark.parametrize("name", ["gpu-1", "rack4.gpu_b", "A" * 64, "x"])
def test_a_node_name_of_letters_digits_dots_underscores_dashes_is_taken(name: str) -> None:
    assert Settings(proxy_node=name).proxy_node == name


@pytest.mark.parametrize("bad", ["", "gpu 1", "a" * 65, "gpü", "node/1", "n:1", "a\nb"])
def test_a_bad_node_name_is_refused_saying_what_is_allowed(bad: str) -> None:
    with pytest.raises(ValidationError, match="PROXY_NODE must be 1 to 64 letters"):
        Settings(proxy_node=bad)


def test_the_node_defaults_to_the_host_name_made_valid(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PROXY_NODE", raising=False)
    monkeypatch.setattr("socket.gethostname", lambda: "My Box (lab)" + "x" * 80)
    node = Settings().proxy_node
    assert node == ("My-Box--lab-" + "x" * 80)[:64]
    monkeypatch.setattr("socket.gethostname", lambda: "")
    assert default_node() == "localhost"
