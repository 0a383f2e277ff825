"""What text every sink can hold: lone surrogates and NUL become U+FFFD, nothing else moves."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from app.text import encodable, storable, valid_text

SURROGATE = json.loads('"a\\ud800b"')  # what a JSON escape makes; no decoder does


@pytest.mark.parametrize(
    ("text", "valid", "stored"),
    [
        ("plain", "plain", "plain"),
        ("Grüße, 世界 🙂", "Grüße, 世界 🙂", "Grüße, 世界 🙂"),
        (SURROGATE, "a\ufffdb", "a\ufffdb"),
        ("a\x00b", "a\x00b", "a\ufffdb"),  # NUL encodes; only PostgreSQL's text refuses it
        ("ü\x00" + SURROGATE, "ü\x00a\ufffdb", "ü\ufffda\ufffdb"),
    ],
)
def test_what_is_replaced(text: str, valid: str, stored: str) -> None:
    assert valid_text(text) == valid
    assert storable(text) == stored
    assert encodable(valid_text(text))
    assert storable(text).encode("utf-8")
    assert "\x00" not in storable(text)


def test_clean_text_is_returned_itself() -> None:
    text = "nothing to do here, ö"
    assert valid_text(text) is text
    assert storable("ascii only") == "ascii only"


def test_encodable_tells_a_lone_surrogate() -> None:
    assert encodable("ok ✓")
    assert not encodable(SURROGATE)


# Any text, with lone surrogates and NUL drawn often (plain st.text() never draws them).
ANY_TEXT = st.text(
    st.one_of(
        st.characters(),
        st.characters(min_codepoint=0xD800, max_codepoint=0xDFFF, exclude_categories=()),
        st.just("\x00"),
    )
)


@given(ANY_TEXT)
def test_storable_text_always_encodes_and_keeps_its_length(text: str) -> None:
    stored = storable(text)
    assert len(stored) == len(text)
    stored.encode("utf-8")
    assert "\x00" not in stored
    assert all(a == b or b == "\ufffd" for a, b in zip(text, stored, strict=True))
