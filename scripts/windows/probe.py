"""The checks scripts/ci-windows.sh makes from Linux against the service running under Wine.

    python scripts/windows/probe.py CHECK [options]     (exit 0 = pass; a reason otherwise)

Each check prints one line saying what it saw. The proxy's answers are compared with the
emulator's own answers to the same requests, after the values that differ between any two
identical requests to Ollama (timestamps, the measured total_duration) are masked.
"""

from __future__ import annotations

import argparse
import json
import re
import socket
import sqlite3
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from urllib.parse import urlsplit

import httpx

MODEL = "llama3.2"
# A prompt the bundled category rules file as "translate" (the fallback would be "other").
TRANSLATE = "Translate 'good morning' into French"
_CREATED = re.compile(rb'"created_at":"[^"]*"')
_TOTAL = re.compile(rb'"total_duration":\d+')


class CheckFailed(Exception):
    pass


def expect(condition: bool, message: str) -> None:
    if not condition:
        raise CheckFailed(message)


def masked(body: bytes) -> bytes:
    return _TOTAL.sub(b'"total_duration":0', _CREATED.sub(b'"created_at":"T"', body))


def same_answer(proxy: str, upstream: str, method: str, path: str, body: object = None) -> bytes:
    """The proxy's answer, after checking that it is the upstream's answer byte for byte."""
    answers = []
    for base in (proxy, upstream):
        with httpx.Client(base_url=base, timeout=60) as client:
            response = client.request(method, path, json=body)
            expect(response.status_code == 200, f"{method} {base}{path}: {response.status_code}")
            answers.append(response.content)
    through, direct = answers
    expect(
        masked(through) == masked(direct),
        f"{method} {path}: the proxy answered {through[:300]!r}, Ollama {direct[:300]!r}",
    )
    return through


def search(proxy: str, words: str, expected: int, within: float = 15.0) -> list[dict[str, object]]:
    """``/analytics/search`` until it holds ``expected`` records (the writer is asynchronous)."""
    deadline = time.monotonic() + within
    while True:
        answer = httpx.get(f"{proxy}/analytics/search", params={"prompt_search": words}, timeout=10)
        expect(answer.status_code == 200, f"/analytics/search: {answer.status_code} {answer.text}")
        records: list[dict[str, object]] = answer.json()["records"]
        if len(records) >= expected or time.monotonic() > deadline:
            return records
        time.sleep(0.2)


def through(args: argparse.Namespace) -> str:
    """Requests of each kind through the proxy: answers, /test, /metrics, /analytics."""
    proxy, upstream, marker = args.proxy, args.upstream, args.marker
    same_answer(proxy, upstream, "GET", "/api/tags")
    generated = same_answer(
        proxy,
        upstream,
        "POST",
        "/api/generate",
        {"model": MODEL, "prompt": f"{TRANSLATE} ({marker})", "stream": False},
    )
    expect(json.loads(generated)["done"] is True, f"/api/generate: not done: {generated!r}")
    streamed = same_answer(
        proxy,
        upstream,
        "POST",
        "/api/chat",
        {
            "model": MODEL,
            "messages": [{"role": "user", "content": f"Why is the sky blue? {marker}"}],
        },
    )
    chunks = streamed.splitlines()
    expect(len(chunks) > 2, f"/api/chat: expected a stream of chunks, got {streamed[:200]!r}")
    expect(json.loads(chunks[-1])["done"] is True, "/api/chat: the stream did not end with done")

    chain = httpx.get(f"{proxy}/test", timeout=30).json()
    expect(chain["upstream_reachable"] is True, f"/test: {chain}")
    expect(chain["upstream"] == upstream, f"/test: upstream {chain['upstream']} != {upstream}")

    metrics = httpx.get(f"{proxy}/metrics", timeout=10).text
    for endpoint, category in (("/api/generate", "translate"), ("/api/chat", "question")):
        labels = f'(?=[^}}]*category="{category}")(?=[^}}]*endpoint="{re.escape(endpoint)}")'
        pattern = re.compile(r"^ollama_requests_total\{" + labels + r"[^}]*\} (\S+)$", re.MULTILINE)
        found = pattern.search(metrics)
        expect(
            found is not None and float(found.group(1)) >= 1,
            f"/metrics: no ollama_requests_total for {endpoint} with category={category}",
        )

    records = search(proxy, marker, 2)
    endpoints = sorted(str(record["endpoint"]) for record in records)
    expect(endpoints == ["/api/chat", "/api/generate"], f"/analytics/search: {records}")
    return (
        "tags, generate and streamed chat identical through the proxy; /test reachable; "
        f"/metrics counted them (category translate); /analytics/search found {endpoints}"
    )


def burst(args: argparse.Namespace) -> str:
    """``count`` requests at once, each answered before this returns."""

    def one(index: int) -> int:
        body = {"model": MODEL, "prompt": f"burst {args.marker} {index}", "stream": False}
        return httpx.post(f"{args.proxy}/api/generate", json=body, timeout=60).status_code

    with ThreadPoolExecutor(max_workers=args.count) as pool:
        statuses = list(pool.map(one, range(args.count)))
    expect(statuses == [200] * args.count, f"burst: statuses {statuses}")
    return f"{args.count} requests answered 200"


def stored(args: argparse.Namespace) -> str:
    """The SQLite store holds exactly ``count`` records whose prompt names the marker."""
    with sqlite3.connect(f"file:{args.db}?mode=ro", uri=True) as db:
        (count,) = db.execute(
            "SELECT count(*) FROM requests WHERE prompt LIKE ?", (f"%{args.marker}%",)
        ).fetchone()
    expect(count == args.count, f"{args.db}: {count} records of the burst, expected {args.count}")
    return f"{args.db}: all {count} records of the burst are stored"


def answers(args: argparse.Namespace) -> str:
    """The proxy and the Ollama behind it answer: /api/version and /api/tags as the
    upstream answers them directly, and /test."""
    version = same_answer(args.proxy, args.upstream, "GET", "/api/version")
    same_answer(args.proxy, args.upstream, "GET", "/api/tags")
    chain = httpx.get(f"{args.proxy}/test", timeout=30).json()
    expect(chain["upstream_reachable"] is True, f"/test: {chain}")
    return f"/api/version {version.decode()} and /api/tags through the proxy as from Ollama"


def listening(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(2)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def closed(args: argparse.Namespace) -> str:
    ports = [urlsplit(url).port or 80 for url in args.url]
    still = [port for port in ports if listening(port)]
    expect(not still, f"still listening on {still}")
    return f"nothing listens on {ports}"


def wait(args: argparse.Namespace) -> str:
    """Until ``url`` answers 200 (a service that says RUNNING listens already, but a boot
    starts it on its own schedule)."""
    deadline = time.monotonic() + args.timeout
    last = "no answer"
    while time.monotonic() < deadline:
        try:
            response = httpx.get(args.url[0], timeout=5)
            if response.status_code == 200:
                return f"{args.url[0]} answers"
            last = f"status {response.status_code}"
        except httpx.HTTPError as exc:
            last = f"{exc.__class__.__name__}: {exc}"
        time.sleep(0.5)
    raise CheckFailed(f"{args.url[0]}: {last} after {args.timeout}s")


CHECKS = {
    "through": through,
    "burst": burst,
    "stored": stored,
    "answers": answers,
    "closed": closed,
    "wait": wait,
}


def main() -> int:
    parser = argparse.ArgumentParser(prog="probe.py", description=__doc__)
    parser.add_argument("check", choices=sorted(CHECKS))
    parser.add_argument("--proxy", help="the proxy's base URL")
    parser.add_argument("--upstream", help="the Ollama's base URL")
    parser.add_argument("--marker", help="a word that names this run's prompts")
    parser.add_argument("--count", type=int, default=20)
    parser.add_argument("--db", help="the SQLite analytics database")
    parser.add_argument("--url", action="append", default=[], help="(closed, wait)")
    parser.add_argument("--timeout", type=float, default=60)
    args = parser.parse_args()
    try:
        print(f"probe {args.check}: {CHECKS[args.check](args)}")
    except (CheckFailed, httpx.HTTPError, sqlite3.Error, KeyError, ValueError) as exc:
        print(f"probe {args.check}: FAILED: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
