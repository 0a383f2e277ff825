"""app.auth: parsing the configured keys, naming them, matching a presented key."""

from __future__ import annotations

import hashlib
import time
from pathlib import Path

import pytest
from pydantic import ValidationError

from app import auth
from app.auth import ApiKeyError, ApiKeys, derived_name, presented_key, without_credentials
from app.config import Settings

SECRET = "sk-Zq8v-very-secret-0001"


def test_env_pairs_and_bare_keys() -> None:
    entries = auth.parse_env(f" alice:{SECRET} , sk-bare-key ,, bob: sk:with:colons ")
    assert entries == [
        ("alice", SECRET),
        (derived_name("sk-bare-key"), "sk-bare-key"),
        ("bob", "sk:with:colons"),
    ]


def test_derived_name_is_stable_and_from_the_digest() -> None:
    expected = "key-" + hashlib.sha256(b"sk-bare-key").hexdigest()[:8]
    assert derived_name("sk-bare-key") == expected
    assert derived_name("sk-bare-key") == derived_name("sk-bare-key")
    assert derived_name("sk-other") != expected


def test_file_lines_comments_and_forms() -> None:
    text = "# team keys\n\nalice sk-a\nbob: sk-b\n  # indented comment\nsk-c\ncarol sk:c\n"
    assert auth.parse_file(text, "keys") == [
        ("alice", "sk-a"),
        ("bob", "sk-b"),
        (derived_name("sk-c"), "sk-c"),
        ("carol", "sk:c"),
    ]


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ("alice:", "entry 1: empty key"),
        (f"alice:{SECRET},bob:{SECRET}", "'alice' and 'bob' are the same key"),
        (f"alice:{SECRET},alice:sk-2", "name 'alice' is given twice"),
        (f"{SECRET},{SECRET}", f"name '{derived_name(SECRET)}' is given twice"),
        (f"al ice:{SECRET}", "invalid key name"),
        (f"alice:{SECRET}\u00e9", "printable ASCII"),
        (" , ,", "name no key"),
    ],
)
def test_malformed_keys_are_clear_errors_that_never_show_the_key(env: str, message: str) -> None:
    with pytest.raises(ApiKeyError) as caught:
        auth.load(env, None)
    assert message in str(caught.value)
    assert SECRET not in str(caught.value)


def test_file_errors_name_the_line_never_the_content(tmp_path: Path) -> None:
    keys = tmp_path / "keys"
    keys.write_text(f"alice {SECRET}\nbob {SECRET} extra\n")
    with pytest.raises(ApiKeyError, match=r"keys line 2: expected 'name key'") as caught:
        auth.load(None, keys)
    assert SECRET not in str(caught.value)
    missing = tmp_path / "nope"
    with pytest.raises(ApiKeyError, match="cannot read: No such file"):
        auth.load(None, missing)
    env_and_file = tmp_path / "dup"
    env_and_file.write_text(f"alice {SECRET}\n")
    with pytest.raises(ApiKeyError, match="given twice"):
        auth.load("alice:sk-other", env_and_file)


def test_unreadable_file(tmp_path: Path) -> None:
    # Root reads any file whatever its mode; a folder and bytes that are not UTF-8 do not read.
    with pytest.raises(ApiKeyError, match="cannot read: Is a directory"):
        auth.load(None, tmp_path)
    binary = tmp_path / "keys"
    binary.write_bytes(b"alice \xff\xfe" + SECRET.encode())
    with pytest.raises(ApiKeyError, match="cannot read: UnicodeDecodeError") as caught:
        auth.load(None, binary)
    assert SECRET not in str(caught.value)


def test_settings_stop_on_a_bad_key_without_showing_any_secret() -> None:
    with pytest.raises(ValidationError) as caught:
        Settings(
            proxy_api_keys=f"alice:{SECRET},bob:{SECRET}",
            analytics_token="tok-analytics-secret",
            metrics_token="tok-metrics-secret",
        )
    text = str(caught.value)
    assert "are the same key" in text
    for secret in (SECRET, "tok-analytics-secret", "tok-metrics-secret"):
        assert secret not in text
        assert secret not in repr(caught.value.errors(include_input=False))


def test_no_keys_configured_means_none() -> None:
    assert ApiKeys.configured(None, None) is None
    assert Settings().api_keys_value is None
    assert Settings(proxy_api_keys="  ").api_keys_value is None


def test_name_of_matches_by_digest() -> None:
    keys = ApiKeys(f"alice:{SECRET},bob:sk-b", None)
    assert len(keys) == 2
    assert keys.name_of(SECRET.encode()) == "alice"
    assert keys.name_of(b"sk-b") == "bob"
    assert keys.name_of(SECRET.encode()[:-1]) is None
    assert keys.name_of(SECRET.encode() + b"x") is None
    assert keys.name_of(b"") is None


def test_the_file_is_reloaded_when_it_changes(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "keys"
    path.write_text("alice sk-a\n")
    keys = ApiKeys(None, path)
    assert keys.name_of(b"sk-a") == "alice"
    path.write_text("bob sk-b\n# alice left\n")
    deadline = time.monotonic() + 10
    while keys.name_of(b"sk-b") is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert keys.name_of(b"sk-b") == "bob"
    assert keys.name_of(b"sk-a") is None
    # A broken edit keeps the keys in force and says why, without the key.
    path.write_text(f"carol {SECRET}\ndave {SECRET}\n")
    deadline = time.monotonic() + 10
    while "not reloaded" not in caplog.text and time.monotonic() < deadline:
        keys.name_of(b"sk-b")
        time.sleep(0.05)
    assert "are the same key" in caplog.text
    assert SECRET not in caplog.text
    assert keys.name_of(b"sk-b") == "bob"
    assert keys.name_of(SECRET.encode()) is None


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ([], (None, False)),
        ([(b"authorization", b"Bearer sk-a")], (b"sk-a", True)),
        ([(b"authorization", b"bearer   sk-a  ")], (b"sk-a", True)),
        ([(b"x-api-key", b"sk-a")], (b"sk-a", True)),
        ([(b"authorization", b"Basic dXNlcjpwdw==")], (None, True)),
        ([(b"authorization", b"Bearer ")], (None, True)),
        ([(b"authorization", b"Bearer sk-a"), (b"x-api-key", b"sk-a")], (None, True)),
        ([(b"authorization", b"Bearer sk-a"), (b"authorization", b"Bearer sk-b")], (None, True)),
    ],
)
def test_presented_key(headers: list[tuple[bytes, bytes]], expected: object) -> None:
    assert presented_key(headers) == expected


def test_without_credentials_keeps_everything_else() -> None:
    headers = [
        (b"host", b"h"),
        (b"authorization", b"Bearer sk-a"),
        (b"x-api-key", b"sk-a"),
        (b"user-agent", b"ua"),
    ]
    assert without_credentials(headers) == [(b"host", b"h"), (b"user-agent", b"ua")]
