"""/v1/audio/transcriptions: a multipart upload turned into a native chat, as
middleware/openai.go TranscriptionMiddleware and openai/openai.go FromTranscriptionRequest
do; TranscriptionWriter collects the streamed text and answers once.
"""

from __future__ import annotations

import base64
from email.message import Message
from email.parser import BytesParser
from email.policy import HTTP
from typing import Any

from starlette.requests import Request

from tests.emulator.faults import Fault
from tests.emulator.native import prepare_chat
from tests.emulator.openai_common import openai_abort, openai_error
from tests.emulator.state import EmulatorState
from tests.emulator.wire import (
    NDJSON,
    ApiError,
    CollectedResponse,
    GoResponse,
    arrival_of,
    encoder_json,
)

__all__ = ["transcriptions"]

_SYSTEM = (
    "Transcribe the audio exactly as spoken. Output only the spoken words. "
    "Do not answer any question in the audio."
)
_QUESTION = "What exact words are spoken in this audio?"


class _NotMultipart(Exception):
    pass


def _parts(content_type: str, body: bytes) -> list[Message]:
    """The parts of a multipart/form-data body (net/http ParseMultipartForm)."""
    if content_type.split(";", 1)[0].strip().lower() != "multipart/form-data":
        raise _NotMultipart("request Content-Type isn't multipart/form-data")
    head = f"Content-Type: {content_type}\r\nMIME-Version: 1.0\r\n\r\n".encode()
    message = BytesParser(policy=HTTP).parsebytes(head + body)
    if message.get_boundary() is None:
        raise _NotMultipart("no multipart boundary param in Content-Type")
    payload = message.get_payload()
    if not isinstance(payload, list):
        return []
    return [part for part in payload if isinstance(part, Message)]


def _form(request: Request, parts: list[Message]) -> tuple[dict[str, str], dict[str, bytes]]:
    """(FormValue fields, FormFile files): a part with a filename is a file."""
    values: dict[str, str] = {key: value for key, value in request.query_params.items()}
    files: dict[str, bytes] = {}
    for part in parts:
        name = part.get_param("name", header="content-disposition")
        if not isinstance(name, str):
            continue
        data = part.get_payload(decode=True)
        raw = data if isinstance(data, bytes) else b""
        if part.get_filename() is not None:
            files.setdefault(name, raw)
        else:
            values.setdefault(name, raw.decode("utf-8", "replace"))
    return values, files


async def transcriptions(request: Request, state: EmulatorState, fault: Fault) -> Any:
    try:
        parts = _parts(request.headers.get("content-type", ""), await request.body())
    except _NotMultipart as err:
        return openai_abort(f"failed to parse multipart form: {err}")
    values, files = _form(request, parts)
    model = values.get("model", "")
    if not model:
        return openai_abort("model is required")
    if "file" not in files:
        return openai_abort("file is required: http: no such file")
    audio = files["file"]
    if not audio:
        return openai_abort("audio file is empty")
    system = _SYSTEM
    if values.get("language"):
        system += f" The audio is in {values['language']}."
    if values.get("prompt"):
        system += f" Context: {values['prompt']}"
    native = {
        "model": model,
        "messages": [
            {"role": "system", "content": system},
            {"role": "user", "content": _QUESTION, "images": [base64.b64encode(audio).decode()]},
        ],
        "stream": True,
        "options": {"temperature": 0},
    }
    try:
        prepared = await prepare_chat(state, native, fault, arrival_of(request.scope))
    except ApiError as err:
        return openai_error(err.status, err.message)
    as_text = values.get("response_format") == "text"

    def finish(items: list[dict[str, Any]]) -> GoResponse:
        text = "".join(item.get("message", {}).get("content", "") for item in items).strip()
        if as_text:
            return GoResponse(text.encode(), content_type="text/plain")
        return encoder_json({"text": text})

    if prepared.items is None:
        return finish([prepared.special or {}])
    return CollectedResponse(
        prepared.items,
        finish,
        lambda failure: openai_error(failure.status, failure.message),
        # After the first chunk the status is 200 and the error line decodes as an empty
        # ChatResponse: nothing is written, and the stream's own content type stays.
        on_late_failure=lambda failure: GoResponse(content_type=NDJSON),
    )
