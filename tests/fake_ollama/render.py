"""How the real CLI prints: Ollama's `format` package, Go durations and its tables."""

from __future__ import annotations

import datetime as _dt
import math
import re
from collections.abc import Sequence

__all__ = [
    "go_duration",
    "human_bytes",
    "human_number",
    "human_time",
    "parse_time",
    "table",
]

_KB, _MB, _GB, _TB = 1000, 1000**2, 1000**3, 1000**4


def human_bytes(size: int) -> str:
    """`format.HumanBytes`: decimal units, one decimal below 10 ("2.0 GB", "274 MB")."""
    for unit, scale in (("TB", _TB), ("GB", _GB), ("MB", _MB), ("KB", _KB)):
        if size >= scale:
            value = size / scale
            if value >= 10 or value == math.trunc(value):
                return f"{int(value)} {unit}"
            return f"{value:.1f} {unit}"
    return f"{size} B"


def human_number(count: int) -> str:
    """`format.HumanNumber`: "3.2B", "135M", "23M"."""
    for suffix, scale in (("B", 1_000_000_000), ("M", 1_000_000), ("K", 1_000)):
        if count >= scale:
            value = count / scale
            return f"{value:.0f}{suffix}" if value == math.floor(value) else f"{value:.1f}{suffix}"
    return str(count)


def _human_duration(seconds_float: float) -> str:
    seconds = int(seconds_float)
    if seconds < 1:
        return "Less than a second"
    if seconds == 1:
        return "1 second"
    if seconds < 60:
        return f"{seconds} seconds"
    minutes = seconds // 60
    if minutes == 1:
        return "About a minute"
    if minutes < 60:
        return f"{minutes} minutes"
    hours = round(seconds_float / 3600)
    if hours == 1:
        return "About an hour"
    if hours < 48:
        return f"{hours} hours"
    if hours < 24 * 7 * 2:
        return f"{hours // 24} days"
    if hours < 24 * 30 * 2:
        return f"{hours // 24 // 7} weeks"
    if hours < 24 * 365 * 2:
        return f"{hours // 24 // 30} months"
    return f"{int(seconds_float / 3600) // 24 // 365} years"


def human_time(moment: _dt.datetime | None, zero: str, now: _dt.datetime | None = None) -> str:
    """`format.HumanTime`: "2 weeks ago", "4 minutes from now", "Forever"."""
    if moment is None:
        return zero
    current = now or _dt.datetime.now(_dt.UTC)
    delta = (current - moment).total_seconds()
    if int(int(int(delta / 3600) / 24) / 365) < -20:  # Go's integer division truncates
        return "Forever"
    if delta < 0:
        return _human_duration(-delta) + " from now"
    return _human_duration(delta) + " ago"


_FRACTION = re.compile(r"(\.\d{6})\d+")


def parse_time(text: str | None) -> _dt.datetime | None:
    """RFC3339 with up to 9 fractional digits; Go's zero time (year 1) → None."""
    if not text:
        return None
    moment = _dt.datetime.fromisoformat(_FRACTION.sub(r"\1", text).replace("Z", "+00:00"))
    return None if moment.year <= 1 else moment


_UNITS = (("ns", 1), ("µs", 1_000), ("ms", 1_000_000))


def _decimal(value: int, scale: int) -> str:
    whole, fraction = divmod(value, scale)
    digits = len(str(scale)) - 1
    text = str(whole)
    if fraction:
        text += "." + str(fraction).rjust(digits, "0").rstrip("0")
    return text


def go_duration(nanoseconds: int) -> str:
    """Go's `time.Duration.String()`: "1.5s", "12.403771ms", "1h2m0.5s", "0s"."""
    if nanoseconds == 0:
        return "0s"
    sign = "-" if nanoseconds < 0 else ""
    value = abs(nanoseconds)
    if value < 1_000_000_000:
        for unit, scale in _UNITS:
            if value < scale * 1000:
                return f"{sign}{_decimal(value, scale)}{unit}"
    hours, rest = divmod(value, 3600 * 1_000_000_000)
    minutes, rest = divmod(rest, 60 * 1_000_000_000)
    text = _decimal(rest, 1_000_000_000) + "s"
    if hours or minutes:
        text = f"{minutes}m{text}"
    if hours:
        text = f"{hours}h{text}"
    return sign + text


def table(rows: Sequence[Sequence[str]], padding: str = "    ") -> str:
    """tablewriter as the CLI configures it: left-aligned, no borders, padding after
    every cell (so lines end in spaces, like the real output)."""
    if not rows:
        return ""
    widths = [max(len(row[i]) for row in rows if i < len(row)) for i in range(len(rows[0]))]
    lines = ["".join(cell.ljust(widths[i]) + padding for i, cell in enumerate(row)) for row in rows]
    return "\n".join(lines) + "\n"
