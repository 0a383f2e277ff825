"""Fault injection knobs, read per request.

Real Ollama ignores unknown options and headers, so a client talking to a real server
with these set behaves normally.

* header `X-Emulator-Fault: fail-after-N` or native `options.emulator_fail_after: N` —
  after N chunks the runner "fails": one `{"error": ...}` line at status 200 (Ollama's
  mid-stream error); N = 0 fails before the first line, so it is a 500 JSON error.
* `X-Emulator-Fault: reset-after-N` — after N chunks the connection is dropped without
  the chunked terminator (non-streamed: after the headers).
* `X-Emulator-Fault: hang` — the body is read, then nothing is sent until the client leaves.
* `X-Emulator-Fault: status-NNN` — answer NNN at once with Ollama's message for it
  (500: llama-server terminated, 503: queue full, 499: canceled).
* `X-Emulator-Fault: done-reason-WORD` — the final chunk's `done_reason` is WORD; `none`
  omits it, as llm/server.go's DoneReasonConnectionClosed (String() is "") does.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

__all__ = ["FAULT_HEADER", "STATUS_MESSAGES", "Fault", "parse_fault"]

FAULT_HEADER = "x-emulator-fault"
STATUS_MESSAGES = {
    499: "request canceled",
    # llm/llama_server.go WaitUntilRunning (the text since the llama-server engine)
    500: "llama-server process has terminated: exit status 2",
    502: "bad gateway",
    503: "server busy, please try again.  maximum pending requests exceeded",
}
_PATTERN = re.compile(r"^(fail-after|reset-after|status)-(\d+)$|^(hang)$|^done-reason-([a-z_]+)$")


@dataclass(frozen=True)
class Fault:
    fail_after: int | None = None
    reset_after: int | None = None
    hang: bool = False
    status: int | None = None
    done_reason: str | None = None  # "" = omitted

    def with_options(self, options: Mapping[str, Any] | None) -> Fault:
        """Merge the native `options.emulator_fail_after` knob."""
        value = (options or {}).get("emulator_fail_after")
        if isinstance(value, int | float) and not isinstance(value, bool) and value >= 0:
            return replace(self, fail_after=int(value))
        return self

    def status_message(self) -> str:
        assert self.status is not None
        return STATUS_MESSAGES.get(self.status, f"emulated error {self.status}")


def parse_fault(header_value: str | None) -> Fault:
    match = _PATTERN.match((header_value or "").strip().lower())
    if match is None:
        return Fault()
    if match.group(3):
        return Fault(hang=True)
    if match.group(4):
        word = match.group(4)
        return Fault(done_reason="" if word == "none" else word)
    kind, number = match.group(1), int(match.group(2))
    if kind == "fail-after":
        return Fault(fail_after=number)
    if kind == "reset-after":
        return Fault(reset_after=number)
    return Fault(status=number)
