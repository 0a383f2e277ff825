"""The Loki backend against a real HTTP receiver that checks every push like Loki would."""

from __future__ import annotations

import base64
import json
import logging
import re
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from app.analytics.loki import LokiBackend, LokiError, LokiRejected, status_class
from app.analytics.rows import RejectedRows
from tests.support import LocalHttpServer, sample_row

LABEL_NAME = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]*$")
NS = re.compile(r"^[0-9]+$")
HOSTILE = 'quote " backslash \\ newline \n nul \x00 sep \u2028 emoji 🦙 漢字 {"json": 1}'
T0 = 1_740_787_200.0  # 2025-03-01T00:00:00Z


def make_row(n: int = 0, **overrides: Any) -> dict[str, Any]:
    fields: dict[str, Any] = {
        "id": f"01JNX{n:021d}",
        "timestamp": T0 + n * 0.001,
        "prompt": f"prompt number {n}",
    }
    return sample_row(**{**fields, **overrides})


@dataclass
class Push:
    headers: dict[str, str]
    body: bytes
    streams: list[dict[str, Any]]

    def entries(self) -> list[tuple[dict[str, str], str, str]]:
        return [(s["stream"], ts, line) for s in self.streams for ts, line in s["values"]]


def format_errors(path: str, headers: dict[str, str], body: bytes) -> list[str]:
    """What Loki's JSON push handler would object to, strictly."""
    errors = []
    if path != "/loki/api/v1/push":
        errors.append(f"path {path}")
    if headers.get("content-type") != "application/json":
        errors.append(f"content type {headers.get('content-type')}")
    document = json.loads(body.decode("utf-8"))
    if not isinstance(document, dict) or list(document) != ["streams"]:
        return [*errors, "top level must be exactly {'streams': [...]}"]
    if not isinstance(document["streams"], list) or not document["streams"]:
        return [*errors, "streams must be a non-empty list"]
    for stream in document["streams"]:
        errors.extend(stream_errors(stream))
    return errors


def stream_errors(stream: Any) -> list[str]:
    if not isinstance(stream, dict) or set(stream) != {"stream", "values"}:
        return [f"stream must have exactly 'stream' and 'values': {stream!r:.100}"]
    labels, values = stream["stream"], stream["values"]
    errors = []
    if not isinstance(labels, dict) or not labels:
        errors.append("labels must be a non-empty object")
    elif not all(isinstance(v, str) and v and LABEL_NAME.match(k) for k, v in labels.items()):
        errors.append(f"bad labels {labels}")
    if not isinstance(values, list) or not values:
        return [*errors, "values must be a non-empty list"]
    previous = -1
    for value in values:
        if not (
            isinstance(value, list) and len(value) == 2 and all(isinstance(v, str) for v in value)
        ):
            errors.append(f"entry must be [string, string]: {value!r:.100}")
        elif not NS.match(value[0]):
            errors.append(f"timestamp must be a string of nanoseconds: {value[0]!r}")
        elif int(value[0]) < previous:
            errors.append("timestamps must not decrease within a stream")
        else:
            previous = int(value[0])
    return errors


class LokiReceiver(LocalHttpServer):
    """A loopback HTTP server taking Loki pushes: validates, stores, answers as scripted."""

    def __init__(self) -> None:
        self.pushes: list[Push] = []
        self.errors: list[str] = []
        self.status = 204
        self.body = b""
        self.hang = 0.0
        self.released = threading.Event()
        super().__init__(self.respond)

    def respond(
        self, method: str, path: str, headers: dict[str, str], body: bytes
    ) -> tuple[int, str | None, bytes]:
        self.take(path, headers, body)
        self.released.wait(self.hang)
        return self.status, None, self.body

    def take(self, path: str, headers: dict[str, str], body: bytes) -> None:
        problems = format_errors(path, headers, body)
        self.errors.extend(problems)
        if not problems:
            self.pushes.append(Push(headers, body, json.loads(body)["streams"]))

    def answer(self, status: int, body: str = "") -> None:
        self.status, self.body = status, body.encode()

    def __exit__(self, *exc: object) -> None:
        self.released.set()
        super().__exit__(*exc)


@pytest.fixture
def loki() -> Iterator[LokiReceiver]:
    with LokiReceiver() as receiver:
        yield receiver
    assert receiver.errors == []


@pytest.fixture
def backend(loki: LokiReceiver) -> Iterator[LokiBackend]:
    backend = LokiBackend(loki.url, timeout=5)
    yield backend
    backend.close()


@pytest.mark.process
def test_a_batch_is_one_post_in_the_documented_format(
    loki: LokiReceiver, backend: LokiBackend
) -> None:
    backend.write([make_row(n) for n in range(1000)])

    assert len(loki.pushes) == 1
    assert len(loki.pushes[0].entries()) == 1000
    assert loki.pushes[0].headers["content-type"] == "application/json"
    assert loki.pushes[0].streams[0]["stream"] == {
        "app": "ollama-metrics",
        "model": "llama3.2:latest",
        "endpoint": "/api/chat",
        "status_class": "2xx",
        "node": "gpu-1",
    }


@pytest.mark.process
def test_an_empty_batch_sends_nothing(loki: LokiReceiver, backend: LokiBackend) -> None:
    backend.write([])
    assert loki.pushes == []


@pytest.mark.process
def test_streams_stay_few_whatever_the_prompts_ids_and_clients(loki: LokiReceiver) -> None:
    models = ["llama3.2:latest", "qwen3:8b", "gemma3:4b"]
    endpoints = ["/api/chat", "/v1/chat/completions"]
    statuses = [200, 201, 404, 499, 500, 503]
    rows = [
        make_row(
            n,
            model=models[n % 3],
            endpoint=endpoints[n % 2],
            status=statuses[n % 6],
            prompt=f"unique prompt {n} {HOSTILE}",
            user_agent=f"agent/{n}",
        )
        for n in range(1000)
    ]
    backend = LokiBackend(loki.url, labels={"instance": "gpu-1"})
    backend.write(rows)
    backend.close()

    (push,) = loki.pushes
    assert len(push.streams) <= len(models) * len(endpoints) * 3  # 2xx, 4xx, 5xx
    label_sets = [stream["stream"] for stream in push.streams]
    assert all(
        set(labels) == {"app", "model", "endpoint", "status_class", "node", "instance"}
        for labels in label_sets
    )
    assert {labels["status_class"] for labels in label_sets} == {"2xx", "4xx", "5xx"}
    assert {labels["instance"] for labels in label_sets} == {"gpu-1"}
    values = {value for labels in label_sets for value in labels.values()}
    assert not values & {
        row[key] for row in rows for key in ("id", "prompt", "client", "user_agent")
    }


@pytest.mark.process
def test_junk_model_names_do_not_become_streams(loki: LokiReceiver) -> None:
    backend = LokiBackend(loki.url, max_models=2)
    junk = [make_row(n, model=f"junk-{n}", status=404) for n in range(300)]
    real = [make_row(1000 + n, model=f"real-{n % 4}") for n in range(8)]
    backend.write(junk + real)
    backend.write(junk)  # once admitted, a model stays; junk is still junk
    backend.close()

    first, second = ({s["stream"]["model"] for s in push.streams} for push in loki.pushes)
    assert first == {"other", "real-0", "real-1"}
    assert second == {"other"}


@pytest.mark.process
def test_each_line_is_the_row_as_json_at_its_timestamp(
    loki: LokiReceiver, backend: LokiBackend
) -> None:
    rows = [
        make_row(0, prompt=HOSTILE, response=HOSTILE, tool_calls='[{"name": "x"}]'),
        make_row(1, prompt="a lone surrogate \udc80 from a client's JSON", model=""),
        make_row(2, timestamp=1_740_787_200.123456, ttft_s=None, status=502),
    ]
    backend.write(rows)

    entries = loki.pushes[0].entries()
    assert [json.loads(line) for _, _, line in entries] == rows
    assert [ts for _, ts, _ in entries] == [
        "1740787200000000000",
        "1740787200001000000",
        "1740787200123456000",
    ]
    assert ", " not in entries[2][2]  # compact
    assert "漢字" in loki.pushes[0].body.decode("utf-8")  # UTF-8 on the wire, not \\u escapes
    assert entries[1][0]["model"] == "none"  # Loki would drop an empty label


@pytest.mark.process
def test_values_are_sorted_by_time_within_each_stream(
    loki: LokiReceiver, backend: LokiBackend
) -> None:
    rows = [make_row(n, timestamp=T0 + (n * 7919) % 101) for n in range(101)]
    backend.write(rows)

    (stream,) = loki.pushes[0].streams
    stamps = [int(ts) for ts, _ in stream["values"]]
    assert stamps == sorted(stamps)
    assert len(stamps) == 101


@pytest.mark.process
def test_a_retried_batch_is_sent_byte_for_byte_again(
    loki: LokiReceiver, backend: LokiBackend
) -> None:
    # Identical stream, timestamp and line is what lets Loki drop the second copy.
    rows = [make_row(n, model=f"m{n % 3}", status=404 if n == 0 else 200) for n in range(30)]
    backend.write(rows)
    backend.write(rows)
    assert loki.pushes[0].body == loki.pushes[1].body


@pytest.mark.process
def test_tenant_and_bearer_token_are_sent_and_never_logged(
    loki: LokiReceiver, caplog: pytest.LogCaptureFixture
) -> None:
    backend = LokiBackend(loki.url, tenant="team-a", bearer="s3cret-token")
    with caplog.at_level(logging.DEBUG):
        backend.write([make_row()])
        loki.answer(500, "boom")
        with pytest.raises(LokiError) as failure:
            backend.write([make_row()])
    backend.close()

    headers = loki.pushes[0].headers
    assert headers["x-scope-orgid"] == "team-a"
    assert headers["authorization"] == "Bearer s3cret-token"
    assert "s3cret-token" not in caplog.text + str(failure.value)
    assert "pushed 1 rows in 1 streams" in caplog.text


@pytest.mark.process
def test_basic_auth_is_sent(loki: LokiReceiver) -> None:
    backend = LokiBackend(loki.url, auth=("user", "pa:ss"))
    backend.write([make_row()])
    backend.close()
    expected = base64.b64encode(b"user:pa:ss").decode()
    assert loki.pushes[0].headers["authorization"] == f"Basic {expected}"
    assert "x-scope-orgid" not in loki.pushes[0].headers


@pytest.mark.process
def test_credentials_in_the_url_become_basic_auth_and_stay_out_of_logs(
    loki: LokiReceiver, caplog: pytest.LogCaptureFixture
) -> None:
    url = loki.url.replace("http://", "http://12345:glc_s3cret@")
    with caplog.at_level(logging.DEBUG):
        backend = LokiBackend(url + "/")
        backend.write([make_row()])
        backend.close()
    expected = base64.b64encode(b"12345:glc_s3cret").decode()
    assert loki.pushes[0].headers["authorization"] == f"Basic {expected}"
    assert "glc_s3cret" not in caplog.text
    assert "/loki/api/v1/push" in caplog.text


@pytest.mark.process
@pytest.mark.parametrize("status", [429, 500, 502, 503, 401, 404])
def test_answers_worth_retrying_raise_loki_error(
    loki: LokiReceiver, backend: LokiBackend, status: int
) -> None:
    loki.answer(status, "ingestion rate limit exceeded " + "x" * 500)
    with pytest.raises(LokiError, match=f"Loki answered {status}: ingestion rate") as failure:
        backend.write([make_row()])
    assert not isinstance(failure.value, RejectedRows)  # so the writer retries it
    assert failure.value.status == status
    assert len(str(failure.value)) < 250  # the first 200 characters of the body only


@pytest.mark.process
@pytest.mark.parametrize("status", [400, 413])
def test_a_refused_batch_raises_loki_rejected(
    loki: LokiReceiver, backend: LokiBackend, status: int
) -> None:
    loki.answer(status, "entry for stream '{app=\"ollama-metrics\"}' has timestamp too old")
    with pytest.raises(LokiRejected, match=f"Loki answered {status}: entry for stream") as failure:
        backend.write([make_row()])
    assert failure.value.status == status
    assert isinstance(failure.value, RejectedRows)  # so the writer drops and counts it


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_an_unreachable_loki_raises_loki_error() -> None:
    backend = LokiBackend(f"http://127.0.0.1:{closed_port()}", timeout=2)
    with pytest.raises(LokiError, match="ConnectError") as failure:
        backend.write([make_row()])
    assert failure.value.status is None
    backend.close()


@pytest.mark.process
def test_a_loki_that_hangs_raises_within_the_timeout(loki: LokiReceiver) -> None:
    loki.hang = 10
    backend = LokiBackend(loki.url, timeout=0.5)
    started = time.monotonic()
    with pytest.raises(LokiError, match="ReadTimeout"):
        backend.write([make_row()])
    assert time.monotonic() - started < 2
    backend.close()


@pytest.mark.process
def test_retention_is_left_to_loki(backend: LokiBackend) -> None:
    assert backend.delete_older_than(time.time()) == 0


@pytest.mark.parametrize(
    "labels",
    [{"bad-name": "x"}, {"0abc": "x"}, {"model": "x"}, {"status_class": "x"}, {"instance": ""}],
)
def test_static_labels_are_checked(labels: dict[str, str]) -> None:
    with pytest.raises(ValueError, match="label"):
        LokiBackend("http://127.0.0.1:1", labels=labels)


def test_auth_and_bearer_together_are_refused() -> None:
    with pytest.raises(ValueError, match="not both"):
        LokiBackend("http://127.0.0.1:1", auth=("u", "p"), bearer="t")


@pytest.mark.parametrize(
    ("status", "expected"),
    [
        (200, "2xx"),
        (204, "2xx"),
        (301, "3xx"),
        (404, "4xx"),
        (499, "4xx"),
        (500, "5xx"),
        (599, "5xx"),
        (0, "unknown"),
        (600, "unknown"),
        (None, "unknown"),
        (True, "unknown"),
    ],
)
def test_status_class(status: object, expected: str) -> None:
    assert status_class(status) == expected


@pytest.mark.process
def test_a_static_app_label_replaces_the_default(loki: LokiReceiver) -> None:
    backend = LokiBackend(loki.url, labels={"app": "proxy-eu", "instance": "gpu-1"})
    backend.write([make_row()])
    backend.close()
    labels = loki.pushes[0].streams[0]["stream"]
    assert (labels["app"], labels["instance"]) == ("proxy-eu", "gpu-1")


GOOD_STREAM = {"stream": {"app": "x"}, "values": [["1", "a"], ["2", "b"]]}


@pytest.mark.parametrize(
    "document",
    [
        {"streams": []},
        {"streams": [GOOD_STREAM], "extra": 1},
        [GOOD_STREAM],
        {"streams": [{"stream": {"app": "x"}, "values": [[1, "a"]]}]},
        {"streams": [{"stream": {"app": "x"}, "values": [["1.5", "a"]]}]},
        {"streams": [{"stream": {"app": "x"}, "values": [["2", "a"], ["1", "b"]]}]},
        {"streams": [{"stream": {"app": "x"}, "values": [["1", "a", "b"]]}]},
        {"streams": [{"stream": {"app": "x"}, "values": [["1", {"line": 1}]]}]},
        {"streams": [{"stream": {"bad-label": "x"}, "values": [["1", "a"]]}]},
        {"streams": [{"stream": {"app": 1}, "values": [["1", "a"]]}]},
        {"streams": [{"stream": {}, "values": [["1", "a"]]}]},
        {"streams": [{"labels": '{app="x"}', "entries": []}]},
    ],
)
def test_the_receiver_is_strict(document: object) -> None:
    headers = {"content-type": "application/json"}
    assert (
        format_errors("/loki/api/v1/push", headers, json.dumps({"streams": [GOOD_STREAM]}).encode())
        == []
    )
    assert format_errors("/loki/api/v1/push", headers, json.dumps(document).encode()) != []
