"""Text that every sink can hold: the one place that knows which characters cannot be stored.

Decoded bytes never hold a lone surrogate, but a JSON escape such as ``\\ud800`` (a client's
request, a broken upstream, a model's split emoji) makes one, and UTF-8 cannot encode it: a
metric label with one breaks ``/metrics``, a database driver refuses the whole record.
PostgreSQL's ``text`` also refuses NUL. Each such character becomes U+FFFD.
"""

from __future__ import annotations

import re

_LONE_SURROGATE = re.compile("[\ud800-\udfff]")
_UNSTORABLE = re.compile("[\x00\ud800-\udfff]")


def valid_text(text: str) -> str:
    """``text`` with any lone surrogate replaced by U+FFFD: it encodes to UTF-8. Returns
    ``text`` itself when there was none."""
    return _LONE_SURROGATE.sub("\ufffd", text)


def storable(text: str) -> str:
    """``text`` with NUL and any lone surrogate replaced by U+FFFD: every store holds it.
    Returns ``text`` itself when there was none."""
    if text.isascii() and "\x00" not in text:
        return text  # most text, found without the regex (it runs for every stored string)
    return _UNSTORABLE.sub("\ufffd", text)


def encodable(text: str) -> bool:
    """Whether ``text`` encodes to UTF-8 (holds no lone surrogate)."""
    return _LONE_SURROGATE.search(text) is None
