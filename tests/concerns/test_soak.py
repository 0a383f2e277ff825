"""``python -m bench.soak``: the classifier, the verdicts and a short real run.

The classifier is checked twice: on outcomes built by hand, and end to end, with the soak's
own client against a real server that misbehaves in each way a proxy could (truncates,
resets, drops the final line, leaks an extra chunk, answers 502). The verdicts are checked on
synthetic series, flat and leaking. The smoke run (16 clients, 12 s) starts the real
generator and proxy and must finish with every figure and no proxy-caused error.
"""

from __future__ import annotations

import asyncio
import json
import random
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from bench import procs
from bench.soak import clients, report, verdicts
from bench.soak.clients import Client, Outcome, Spec, classify

ROOT = Path(__file__).resolve().parents[2]


# -- the classifier ----------------------------------------------------------------------------


def streamed(**fields: Any) -> Outcome:
    base: dict[str, Any] = {"status": 200, "events": 5, "complete": True, "final_ok": True}
    return Outcome(True, 5, **(base | fields))


@pytest.mark.parametrize(
    ("outcome", "expected"),
    [
        (streamed(), "ok"),
        (Outcome(False, 0, status=200, complete=True, body_ok=True), "ok"),
        (streamed(cut=True, complete=False, events=2), "client_disconnect"),
        # A deliberate cut stays the client's even if the connection then reports an error.
        (streamed(cut=True, complete=False, error="connection lost"), "client_disconnect"),
        (streamed(status=502, upstream_ok=False), "upstream"),
        (Outcome(True, 5, refused=True, error="ECONNREFUSED"), "refused"),
        (streamed(stalled=True, complete=False), "stalled"),
        (streamed(complete=False, events=3, error="connection lost"), "reset"),
        (streamed(status=502, events=0, final_ok=False), "status"),
        (Outcome(False, 0, status=500, complete=True), "status"),
        (streamed(events=4, final_ok=False), "truncated"),
        (streamed(events=6), "extra"),
        (streamed(final_ok=False), "missing_final"),
        (Outcome(False, 0, status=200, complete=True, body_ok=False), "bad_body"),
    ],
)
def test_classify(outcome: Outcome, expected: str) -> None:
    assert classify(outcome) == expected
    assert (expected in clients.PROXY_ERRORS) == (
        expected not in ("ok", "client_disconnect", "upstream")
    )


def ndjson(lines: list[bytes]) -> bytes:
    head = b"HTTP/1.1 200 OK\r\nContent-Type: application/x-ndjson\r\n"
    head += b"Transfer-Encoding: chunked\r\n\r\n"
    return head + b"".join(b"%x\r\n%s\r\n" % (len(line), line) for line in lines)


TOKEN = b'{"model":"m","response":" tok","done":false}\n'
FINAL = b'{"model":"m","response":"","done":true,"eval_count":4}\n'
SSE_TOKEN = b'data: {"choices":[{"delta":{"content":" tok"}}]}\n\n'
USAGE = b'data: {"choices":[],"usage":{"completion_tokens":3}}\n\n'
DONE = b"data: [DONE]\n\n"
END = b"0\r\n\r\n"
JSON_OK = b'{"model":"m","response":"hi","done":true,"eval_count":1}'

# What the misbehaving server answers on each path: (bytes, then close the connection?)
ANSWERS: dict[str, tuple[bytes, bool]] = {
    "/ok": (ndjson([TOKEN] * 4 + [FINAL]) + END, False),
    "/truncated": (ndjson([TOKEN] * 2) + END, False),
    "/reset": (ndjson([TOKEN] * 2), True),
    "/no-final": (ndjson([TOKEN] * 5) + END, False),
    "/extra": (ndjson([TOKEN] * 5 + [FINAL]) + END, False),
    "/status": (
        b"HTTP/1.1 502 Bad Gateway\r\nContent-Length: 17\r\n\r\n" + b'{"error":"upstr"}',
        False,
    ),
    "/sse-ok": (ndjson([SSE_TOKEN] * 3 + [DONE]) + END, False),
    "/sse-usage": (ndjson([SSE_TOKEN] * 3 + [USAGE, DONE]) + END, False),
    "/json-ok": (
        b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(JSON_OK), JSON_OK),
        False,
    ),
    "/json-bad": (b'HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n{"a":', False),
    "/slow": (ndjson([TOKEN] * 2), False),  # then never ends: the client cuts it
}


async def misbehave(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
            await reader.readexactly(length)
            answer, close = ANSWERS[head.split()[1].decode()]
            writer.write(answer)
            await writer.drain()
            if close:
                break
    except (asyncio.IncompleteReadError, ConnectionError):
        pass
    finally:
        writer.close()


@pytest.mark.process
@pytest.mark.parametrize(
    ("path", "spec", "expected"),
    [
        ("/ok", {"expected": 5}, "ok"),
        ("/truncated", {"expected": 5}, "truncated"),
        ("/reset", {"expected": 5}, "reset"),
        ("/no-final", {"expected": 5}, "missing_final"),
        ("/extra", {"expected": 5}, "extra"),
        ("/status", {"expected": 5}, "status"),
        ("/sse-ok", {"expected": 4, "sse": True}, "ok"),
        ("/sse-usage", {"expected": 4, "sse": True}, "extra"),
        ("/json-ok", {"streamed": False, "expected": 0}, "ok"),
        ("/json-bad", {"streamed": False, "expected": 0}, "bad_body"),
        ("/slow", {"expected": 5, "cut_after": 2}, "client_disconnect"),
        ("/slow", {"expected": 5, "cut_after": 2, "cut_abort": True}, "client_disconnect"),
    ],
)
def test_client_sees_what_a_proxy_did(path: str, spec: dict[str, Any], expected: str) -> None:
    async def go() -> tuple[str, str]:
        server = await asyncio.start_server(misbehave, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        async with server:
            conn = await Client.open(port)
            fields = {"streamed": True} | spec
            outcome = await conn.request(Spec(path, b"{}", **fields))
            # The same connection then serves a good request, unless it ended.
            after = "closed"
            if not conn.closed:
                again = await conn.request(Spec("/ok", b"{}", True, 5))
                after = classify(again)
            conn.close()
        return classify(outcome), after

    found, after = asyncio.run(go())
    assert found == expected
    if expected in ("ok", "truncated", "missing_final", "extra", "status", "bad_body"):
        assert after == "ok"  # keep-alive framing was followed to the end of each answer


def test_refused_is_counted_against_the_proxy() -> None:
    tally = clients.Tally()

    async def go() -> None:
        port = procs.free_port()  # nothing listens there
        assert (
            await clients.one(port, Spec("/ok", b"{}", True, 5), None, tally, lambda: True) is None
        )

    asyncio.run(go())
    assert tally.classes["refused"] == 1
    assert tally.proxy_errors == 1
    assert tally.sent == 1


# -- the verdicts ------------------------------------------------------------------------------


def synthetic(
    *, rss_per_request: float = 0.0, fds_per_request: float = 0.0, noise: float = 0.3
) -> dict[str, Any]:
    """A run's result: 40,000 requests sampled 40 times, RSS rising fast during the warm-up
    then by ``rss_per_request`` MB, with ± ``noise`` MB of (seeded) noise, and so on."""
    rng = random.Random(7)
    series = []
    for index in range(41):
        done = index * 1000
        warm = min(done, 5000) / 5000 * 20
        series.append(
            {
                "requests": done,
                "load": True,
                "rss_mb": 80 + warm + done * rss_per_request + rng.uniform(-noise, noise),
                "other_fds": 20 + int(done * fds_per_request),
                "tasks": 250 + (-1) ** index * 10,
                "upstream_established": 250,
            }
        )
    baseline = {"fds": 25, "upstream_established": 5, "tasks": 6, "in_flight": 0}
    end = {"fds": 270, "upstream_established": 250, "upstream_other": 0, "tasks": 6}
    return {
        "series": series,
        "baseline": baseline,
        "end": end | {"in_flight": 0},
        "probe": {"streams": 250, "upstream_peak": 250, "upstream_after": 250, "ok": 250},
        "records": {"stored": 40_010, "sent": 40_010, "dropped": 0, "cancelled": 3600},
        "proxy_errors": 0,
        "client_disconnects": 3600,
    }


def failed(result: dict[str, Any]) -> set[str]:
    return {check["check"] for check in verdicts.judge(result, 256) if check["pass"] is False}


def test_flat_run_passes_despite_warm_up_and_noise() -> None:
    result = synthetic()
    assert failed(result) == set()
    assert verdicts.passes(verdicts.judge(result, 256))


def test_slow_rss_leak_fails() -> None:
    # 3 MB per 100,000 requests: 1.2 MB over the whole run, hidden in ± 0.3 MB of noise.
    assert failed(synthetic(rss_per_request=3 / 100_000)) == {"RSS trend"}


def test_fd_leak_fails_trend_and_end_state() -> None:
    result = synthetic(fds_per_request=1 / 500)  # one fd per 500 requests
    result["end"]["fds"] += 80
    assert failed(result) == {
        "fds trend (not live connections)",
        "fds after the load, less idle pool",
    }


def test_leaks_after_the_load_fail() -> None:
    result = synthetic()
    result["end"]["tasks"] = 9  # three tasks never finished
    result["end"]["upstream_other"] = 2  # CLOSE_WAIT: the upstream closed, the proxy did not
    result["probe"]["upstream_peak"] = 251  # the pool was missing a connection
    result["records"]["stored"] -= 1
    result["records"]["cancelled"] -= 1
    result["series"][20]["upstream_established"] = 300  # more than clients, and closing
    assert failed(result) == {
        "tasks after the load",
        "upstream sockets not established, after",
        "idle pool reused",
        "records stored = requests sent",
        "cancelled records = client disconnects",
        "upstream connections under load",
    }


def test_drain_samples_are_not_fitted() -> None:
    result = synthetic()
    # After the deadline the request count stops while the load falls: not a trend.
    result["series"].append(result["series"][-1] | {"load": False, "rss_mb": 130.0})
    assert "RSS trend" not in failed(result)


# -- a short real run --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def smoke(tmp_path_factory: pytest.TempPathFactory) -> tuple[int, dict[str, Any], str, str]:
    out = tmp_path_factory.mktemp("soak")
    command = [sys.executable, "-m", "bench.soak", "--minutes", "0.2", "--streams", "16"]
    command += ["--output", str(out / "soak.md"), "--json-output", str(out / "soak.json")]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=240)
    assert (out / "soak.json").exists(), done.stdout[-3000:] + done.stderr[-3000:]
    data = json.loads((out / "soak.json").read_text())
    return done.returncode, data, (out / "soak.md").read_text(), done.stdout


@pytest.mark.soak
@pytest.mark.process
def test_smoke_run_has_no_proxy_caused_error(smoke: tuple[int, dict[str, Any], str, str]) -> None:
    code, data, _, stdout = smoke
    result = data["result"]
    assert result["proxy_errors"] == 0, result["error_examples"]
    assert result["outcomes"]["ok"] >= 8
    assert sum(result["outcomes"].values()) == result["requests"]
    # Every kind of the mix was sent (5: three streamed paths, two not streamed): with the
    # default seed the 16 clients' first requests already cover them.
    assert len(result["kinds"]) == 5, result["kinds"]
    # Twelve seconds are too short for a trend (the warm-up is most of it); every other
    # verdict must hold.
    judged = {c["check"]: c["pass"] for c in data["verdicts"] if "trend" not in c["check"]}
    assert all(judged.values()), data["verdicts"]
    assert code in (0, 1)
    assert "wrote" in stdout


@pytest.mark.soak
@pytest.mark.process
def test_smoke_run_has_every_figure(smoke: tuple[int, dict[str, Any], str, str]) -> None:
    _, data, markdown, _ = smoke
    result = data["result"]
    assert data["meta"]["command"] == "python -m bench.soak --minutes 0.2 --streams 16"
    assert {"cpu", "cores", "kernel", "python", "commit"} <= data["machine"].keys()
    assert len(result["series"]) >= 5
    for row in [*result["series"], result["baseline"], result["end"]]:
        missing = [key for key in report.SERIES_COLUMNS if row.get(key) is None]
        assert not missing, (missing, row)
        assert row["rss_mb"] > 10
        assert row["fds"] > 5
        assert row["tasks"] >= 1
    loaded = [row for row in result["series"] if row["load"]]
    assert max(row["upstream_established"] for row in loaded) >= 1
    assert max(row["records_written"] for row in result["series"]) >= 1
    assert result["records"]["stored"] == result["records"]["sent"] > result["requests"]
    assert result["client_disconnects"] == result["outcomes"]["client_disconnect"]
    names = {check["check"] for check in data["verdicts"]}
    assert len(names) == 11
    assert "proxy-caused errors" in names
    for heading in ("## Verdicts", "## Requests", "## Series", "## Method"):
        assert heading in markdown
    assert data["meta"]["command"] in markdown
