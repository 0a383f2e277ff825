"""Byte-level imitation of Go's `encoding/json` and `time` formatting.

A proxy that compares or re-parses upstream bytes must see exactly what Ollama's Go
server sends, so everything the emulator writes goes through `dumps`, and request
bodies go through `decode_object` to produce Go's decoder error messages.
"""

from __future__ import annotations

import datetime as _dt
import json
import re
import struct
import time
from collections.abc import Mapping
from decimal import Decimal
from typing import Any

__all__ = [
    "F32",
    "DecodeError",
    "MissingBody",
    "decode_object",
    "dumps",
    "dumps_bytes",
    "raw_elements",
    "raw_members",
    "rfc3339nano",
    "rfc3339nano_local",
]


class F32(float):
    """A float that Go holds as float32 (embeddings): formatted with float32 precision."""


class MissingBody(Exception):
    """Empty body: Go's decoder returns io.EOF."""


class DecodeError(Exception):
    """A Go `encoding/json` error; `str()` is the message Go would report."""


# --- encoding ---------------------------------------------------------------

_HTML_ESCAPES = str.maketrans(
    {"<": "\\u003c", ">": "\\u003e", "&": "\\u0026", "\u2028": "\\u2028", "\u2029": "\\u2029"}
)


def _string(value: str) -> str:
    # Python and Go agree on control-character escapes; Go additionally escapes
    # HTML-significant characters and the JS line separators.
    return json.dumps(value, ensure_ascii=False).translate(_HTML_ESCAPES)


def _shortest_float32(value: float) -> str:
    target = struct.unpack("<f", struct.pack("<f", value))[0]
    for precision in range(1, 10):
        text = f"{target:.{precision}g}"
        if struct.unpack("<f", struct.pack("<f", float(text)))[0] == target:
            return text
    return repr(target)


def _float(value: float, bits: int) -> str:
    if value != value or value in (float("inf"), float("-inf")):
        raise ValueError("json: unsupported value: NaN or Inf")
    if value == 0:
        return "-0" if str(value).startswith("-") else "0"
    shortest = _shortest_float32(value) if bits == 32 else repr(value)
    number = Decimal(shortest)
    magnitude = abs(float(shortest))
    # Go switches to exponent form outside [1e-6, 1e21), as JavaScript does.
    if 1e-6 <= magnitude < 1e21:
        text = format(number, "f")
        return text.rstrip("0").rstrip(".") if "." in text else text
    sign, digits, exponent = number.normalize().as_tuple()
    assert isinstance(exponent, int)
    mantissa = "".join(map(str, digits))
    exp10 = exponent + len(mantissa) - 1
    body = mantissa[0] + ("." + mantissa[1:] if len(mantissa) > 1 else "")
    # Go prints at least two exponent digits, then encoding/json trims "e-07" to "e-7".
    exp_text = f"{'-' if exp10 < 0 else '+'}{abs(exp10):02d}"
    if exp_text.startswith("-0"):
        exp_text = "-" + exp_text[2:]
    return f"{'-' if sign else ''}{body}e{exp_text}"


def _encode(value: Any, out: list[str]) -> None:
    if value is None:
        out.append("null")
    elif value is True:
        out.append("true")
    elif value is False:
        out.append("false")
    elif isinstance(value, str):
        out.append(_string(value))
    elif isinstance(value, F32):
        out.append(_float(value, 32))
    elif isinstance(value, int):
        out.append(str(value))
    elif isinstance(value, float):
        out.append(_float(value, 64))
    elif isinstance(value, Mapping):
        out.append("{")
        for index, (key, item) in enumerate(value.items()):
            if index:
                out.append(",")
            out.append(_string(str(key)))
            out.append(":")
            _encode(item, out)
        out.append("}")
    elif isinstance(value, list | tuple):
        out.append("[")
        for index, item in enumerate(value):
            if index:
                out.append(",")
            _encode(item, out)
        out.append("]")
    else:
        raise TypeError(f"cannot encode {type(value).__name__}")


def dumps(value: Any) -> str:
    """Compact JSON exactly as Go's `json.Marshal` writes it (field order = dict order)."""
    out: list[str] = []
    _encode(value, out)
    return "".join(out)


def dumps_bytes(value: Any, *, newline: bool = False) -> bytes:
    """UTF-8 bytes; `newline=True` imitates `json.NewEncoder(w).Encode`."""
    return (dumps(value) + ("\n" if newline else "")).encode("utf-8", "replace")


# --- time -------------------------------------------------------------------


def _trimmed_fraction(nanos: int) -> str:
    fraction = f"{nanos:09d}".rstrip("0")
    return f".{fraction}" if fraction else ""


def rfc3339nano(epoch_ns: int | None = None) -> str:
    """Go's `time.RFC3339Nano` in UTC: trailing zeros of the fraction are dropped."""
    ns = time.time_ns() if epoch_ns is None else epoch_ns
    seconds, nanos = divmod(ns, 1_000_000_000)
    stamp = _dt.datetime.fromtimestamp(seconds, _dt.UTC).strftime("%Y-%m-%dT%H:%M:%S")
    return f"{stamp}{_trimmed_fraction(nanos)}Z"


def rfc3339nano_local(epoch_ns: int) -> str:
    """RFC3339Nano in the server's local zone, as Go prints file times (`modified_at`)."""
    seconds, nanos = divmod(epoch_ns, 1_000_000_000)
    moment = _dt.datetime.fromtimestamp(seconds).astimezone()
    offset = moment.utcoffset() or _dt.timedelta(0)
    if offset == _dt.timedelta(0):
        zone = "Z"
    else:
        minutes = int(offset.total_seconds()) // 60
        zone = f"{'-' if minutes < 0 else '+'}{abs(minutes) // 60:02d}:{abs(minutes) % 60:02d}"
    stamp = moment.strftime("%Y-%m-%dT%H:%M:%S")
    return f"{stamp}{_trimmed_fraction(nanos)}{zone}"


# --- decoding ---------------------------------------------------------------


def _quote_char(char: str) -> str:
    # Go's quoteChar in encoding/json/scanner.go.
    if char == "'":
        return "'\\''"
    if char == '"':
        return "'\"'"
    quoted = json.dumps(char)[1:-1]
    return f"'{quoted}'"


def _container_at(text: str, position: int) -> str:
    """Innermost open bracket before `position` ('{' or '['), skipping string contents."""
    stack: list[str] = []
    in_string = escaped = False
    for char in text[:position]:
        if in_string:
            if escaped:
                escaped = False
            elif char == "\\":
                escaped = True
            elif char == '"':
                in_string = False
        elif char == '"':
            in_string = True
        elif char in "{[":
            stack.append(char)
        elif char in "}]" and stack:
            stack.pop()
    return stack[-1] if stack else ""


def _go_syntax_message(text: str, err: json.JSONDecodeError) -> str:
    position = err.pos
    if position >= len(text.rstrip()) or err.msg.startswith("Unterminated string"):
        return "unexpected EOF"
    char = _quote_char(text[position])
    message = err.msg
    if message.startswith("Expecting value"):
        return f"invalid character {char} looking for beginning of value"
    if message.startswith("Expecting property name"):
        return f"invalid character {char} looking for beginning of object key string"
    if message.startswith("Expecting ':'"):
        return f"invalid character {char} after object key"
    if message.startswith("Expecting ','"):
        if _container_at(text, position) == "[":
            return f"invalid character {char} after array element"
        return f"invalid character {char} after object key:value pair"
    if message.startswith("Invalid control character"):
        return f"invalid character {char} in string literal"
    if message.startswith("Invalid \\escape"):
        return f"invalid character {_quote_char(text[position + 1])} in string escape code"
    return f"invalid character {char} looking for beginning of value"


def _reject_constant(name: str) -> Any:
    raise DecodeError(f"invalid character '{name[0]}' looking for beginning of value")


_DECODER = json.JSONDecoder(parse_constant=_reject_constant)


def json_kind(value: Any) -> str:
    """The JSON kind name Go uses in UnmarshalTypeError messages."""
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    return "object"


def decode_object(raw: bytes, go_type: str) -> dict[str, Any]:
    """Decode one JSON value like `json.Decoder.Decode` into a Go struct named `go_type`.

    Like Go, only the first value is read (trailing bytes are ignored).
    """
    text = raw.decode("utf-8", "replace")
    start = len(text) - len(text.lstrip(" \t\r\n"))
    if start == len(text):
        raise MissingBody
    try:
        value, _ = _DECODER.raw_decode(text, start)
    except json.JSONDecodeError as err:
        raise DecodeError(_go_syntax_message(text, err)) from None
    if not isinstance(value, dict):
        if value is None:
            return {}
        raise DecodeError(
            f"json: cannot unmarshal {json_kind(value)} into Go value of type {go_type}"
        )
    return value


_WHITESPACE = re.compile(r"[ \t\n\r]*")
_scanstring: Any = getattr(json.decoder, "scanstring")  # noqa: B009 - untyped in typeshed


def _skip(text: str, position: int) -> int:
    match = _WHITESPACE.match(text, position)
    return match.end() if match else position


def raw_members(text: str, start: int = 0) -> dict[str, str]:
    """The members of the JSON object at `start` as their raw source text (what Go keeps in
    a json.RawMessage field: the bytes exactly as sent). {} when it is not an object."""
    position = _skip(text, start)
    members: dict[str, str] = {}
    if text[position : position + 1] != "{":
        return members
    position = _skip(text, position + 1)
    while text[position : position + 1] == '"':
        key, position = _scanstring(text, position + 1)
        position = _skip(text, position)
        position = _skip(text, position + 1)  # the colon
        _, end = _DECODER.raw_decode(text, position)
        members[key] = text[position:end]
        position = _skip(text, end)
        if text[position : position + 1] != ",":
            break
        position = _skip(text, position + 1)
    return members


def raw_elements(text: str) -> list[str]:
    """The elements of a raw JSON array as raw source text; [] when it is not an array."""
    position = _skip(text, 0)
    elements: list[str] = []
    if text[position : position + 1] != "[":
        return elements
    position = _skip(text, position + 1)
    while position < len(text) and text[position] != "]":
        _, end = _DECODER.raw_decode(text, position)
        elements.append(text[position:end])
        position = _skip(text, end)
        if text[position : position + 1] != ",":
            break
        position = _skip(text, position + 1)
    return elements


_DURATION_PART = re.compile(r"(\d+\.?\d*|\.\d+)(ns|us|µs|μs|ms|s|m|h)")
_UNIT_NS = {
    "ns": 1,
    "us": 1_000,
    "µs": 1_000,
    "μs": 1_000,
    "ms": 1_000_000,
    "s": 1_000_000_000,
    "m": 60_000_000_000,
    "h": 3_600_000_000_000,
}


def parse_go_duration(text: str) -> int:
    """`time.ParseDuration` → nanoseconds; raises DecodeError with Go's message."""
    body = text
    sign = 1
    if body[:1] in "+-" and body:
        sign = -1 if body[0] == "-" else 1
        body = body[1:]
    if body == "0":
        return 0
    if not body:
        raise DecodeError(f'time: invalid duration "{text}"')
    total = 0
    position = 0
    while position < len(body):
        match = _DURATION_PART.match(body, position)
        if match is None:
            if re.fullmatch(r"\d+\.?\d*", body[position:]):
                raise DecodeError(f'time: missing unit in duration "{text}"')
            raise DecodeError(f'time: invalid duration "{text}"')
        total += int(float(match.group(1)) * _UNIT_NS[match.group(2)])
        position = match.end()
    return sign * total
