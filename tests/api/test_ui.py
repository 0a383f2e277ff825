"""The analytics page (``/ui``) as files and headers, without a browser: served by the proxy
itself with a strict Content-Security-Policy, complete and offline, open without the
analytics token while the data stays guarded, and never forwarded to Ollama.
(``tests/concerns/test_ui_browser.py`` drives it in Chromium.)"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import get_args

import httpx
import pytest
from fastapi import FastAPI

from app.analytics.sql import SqlStore, create_store_engine, database_url
from app.api.analytics import Record, RecordSummary, create_analytics_router
from app.api.ui import CONTENT_SECURITY_POLICY
from app.ollama.residency import ColdCause, Placement
from tests.emulator import EmulatorServer
from tests.support import ROOT, ProxyProcess, sample_row

PAGE = ROOT / "app" / "ui"
TOKEN = "ui-test-token"
KEY = "sk-ui-test-key-0123456789"
EXPECTED_HEADERS = {
    "content-security-policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    ),
    "x-content-type-options": "nosniff",
    "referrer-policy": "no-referrer",
    "cache-control": "no-cache",
}
MEDIA_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
}
# What a page that works offline and renders data only as text must not contain.
FORBIDDEN = {
    "an absolute URL": re.compile(r"https?:", re.IGNORECASE),
    "a protocol-relative URL (or a // comment that could hide one)": re.compile(r"//"),
    "a CSS import": re.compile(r"@import", re.IGNORECASE),
    "an inline event handler": re.compile(r"\son[a-z]+\s*=", re.IGNORECASE),
}
CSS_URL = re.compile(r"url\(", re.IGNORECASE)  # (JavaScript's new URL() is fine)
# Sinks that would parse data as markup or code.
UNSAFE_JS = re.compile(
    r"innerHTML|outerHTML|insertAdjacentHTML|document\.write|\beval\(|new Function|"
    r"createContextualFragment|srcdoc"
)


def page_files() -> list[Path]:
    return sorted(p for p in PAGE.iterdir() if p.suffix in MEDIA_TYPES)


@pytest.fixture(scope="module")
def guarded(emulator: EmulatorServer) -> Iterator[ProxyProcess]:
    env = {"ANALYTICS_TOKEN": TOKEN, "PS_POLL_INTERVAL": "0", "PROXY_API_KEYS": f"alice:{KEY}"}
    with ProxyProcess(emulator.url, env=env) as process:
        yield process


def assert_page_headers(answer: httpx.Response) -> None:
    for name, value in EXPECTED_HEADERS.items():
        assert answer.headers.get(name) == value, (name, dict(answer.headers))


def test_the_policy_is_the_one_documented() -> None:
    assert EXPECTED_HEADERS["content-security-policy"] == CONTENT_SECURITY_POLICY


@pytest.mark.process
def test_ui_redirects_to_the_page_relatively(proxy: ProxyProcess) -> None:
    with proxy.client() as client:
        answer = client.get("/ui")
        assert answer.status_code == 307
        # Relative, so that a reverse proxy's path prefix (/ollama/ui) is kept.
        assert answer.headers["location"] == "ui/"
        assert_page_headers(answer)
        assert client.get("/ui?x=1").headers["location"] == "ui/?x=1"
        followed = client.get("/ui", follow_redirects=True)
    assert followed.status_code == 200
    assert str(followed.url) == proxy.url + "/ui/"
    assert followed.text == (PAGE / "index.html").read_text(encoding="utf-8")


@pytest.mark.process
def test_every_file_is_served_with_its_type_and_the_headers(proxy: ProxyProcess) -> None:
    files = page_files()
    assert {p.name for p in files} >= {"index.html", "app.js", "app.css"}
    with proxy.client() as client:
        for path in files:
            answer = client.get(f"/ui/{path.name}")
            assert answer.status_code == 200, path.name
            assert answer.content == path.read_bytes()
            assert answer.headers["content-type"] == MEDIA_TYPES[path.suffix]
            assert_page_headers(answer)
        index = client.get("/ui/")
        assert index.status_code == 200
        assert index.content == (PAGE / "index.html").read_bytes()
        assert_page_headers(index)
        head = client.head("/ui/")
        assert head.status_code == 200
        assert head.content == b""


@pytest.mark.process
def test_every_asset_the_page_names_loads(proxy: ProxyProcess) -> None:
    html = (PAGE / "index.html").read_text(encoding="utf-8")
    named = re.findall(r'(?:src|href)="([^"]+)"', html)
    # The empty icon: without it the browser asks for /favicon.ico, which would go to Ollama.
    assert sorted(named) == ["app.css", "app.js", "data:,"]
    named.remove("data:,")
    with proxy.client() as client:
        for name in named:
            # Relative to the page's URL, /ui/.
            assert client.get("/ui/" + name).status_code == 200, name


@pytest.mark.process
def test_unknown_files_are_404_and_nothing_outside_the_folder_is_reachable(
    proxy: ProxyProcess,
) -> None:
    with proxy.client() as client:
        for path in ("/ui/nope.js", "/ui/..%2Fmain.py", "/ui/%2e%2e%2fconfig.py", "/ui/a/b.js"):
            answer = client.get(path)
            assert answer.status_code == 404, path
            assert b"import" not in answer.content


@pytest.mark.parametrize("path", page_files(), ids=lambda p: p.name)
def test_the_page_is_offline_and_self_contained(path: Path) -> None:
    text = path.read_text(encoding="utf-8")
    for what, pattern in FORBIDDEN.items():
        found = pattern.search(text)
        assert found is None, f"{path.name} holds {what}: {text[found.start() - 40 :][:100]!r}"
    if path.suffix == ".css":
        assert CSS_URL.search(text) is None


def test_the_script_never_parses_data_as_markup() -> None:
    script = (PAGE / "app.js").read_text(encoding="utf-8")
    assert UNSAFE_JS.search(script) is None
    # Data reaches the DOM through textContent and Node.append(string) only.
    assert "textContent" in script
    assert ".append(" in script


@pytest.mark.process
def test_the_page_is_open_but_the_data_needs_the_token(guarded: ProxyProcess) -> None:
    with guarded.client() as client:
        # API keys guard the proxied API, not the page: it holds nothing.
        assert client.get("/api/version").status_code == 401
        assert client.get("/ui").status_code == 307
        for name in ("", "app.js", "app.css"):
            answer = client.get("/ui/" + name)
            assert answer.status_code == 200, name
            assert_page_headers(answer)
        refused = client.get("/analytics/search")
        assert refused.status_code == 401
        assert refused.headers["www-authenticate"] == "Bearer"
        assert client.get("/analytics/stats").status_code == 401
        allowed = client.get("/analytics/search", headers={"Authorization": f"Bearer {TOKEN}"})
        assert allowed.status_code == 200
        assert "records" in allowed.json()


@pytest.mark.process
def test_the_page_is_never_forwarded_to_ollama(
    proxy: ProxyProcess, emulator: EmulatorServer
) -> None:
    before = len(emulator.requests())
    with proxy.client() as client:
        for path in ("/ui", "/ui/", "/ui/app.js", "/ui/app.css", "/ui/missing.png"):
            client.get(path)
        client.head("/ui/")
        # A path the proxy does not own is forwarded (and logged by the emulator): the log
        # would show /ui requests if they went there too.
        assert client.get("/api/version").status_code == 200
    # (/api/ps: the proxies' model pollers)
    arrived = [e["path"] for e in emulator.requests()[before:] if e["path"] != "/api/ps"]
    assert arrived == ["/api/version"]


@pytest.mark.process
def test_the_page_is_not_in_the_openapi_description(proxy: ProxyProcess) -> None:
    with proxy.client() as client:
        paths = client.get("/openapi.json").json()["paths"]
    assert not [path for path in paths if path.startswith("/ui")]


# ---------- what the page asks for and reads, against what the API offers ----------


def _select_values(html: str, select_id: str) -> list[str]:
    found = re.search(rf'<select id="{select_id}"[^>]*>(.*?)</select>', html, re.DOTALL)
    assert found, select_id
    return re.findall(r'<option value="([^"]*)"', found.group(1))


def _headers(html: str, table_id: str) -> list[str]:
    found = re.search(rf'<table id="{table_id}"[^>]*>\s*<thead><tr>(.*?)</tr></thead>', html)
    assert found, table_id
    return re.findall(r"<th[^>]*>([^<]*)</th>", found.group(1))


def test_the_page_has_the_diagnostic_filters_and_columns() -> None:
    html = (PAGE / "index.html").read_text(encoding="utf-8")
    # A client-app select filled from the values seen, two of fixed choices.
    assert _select_values(html, "f-app") == [""]
    assert _select_values(html, "f-cold") == ["", "true", "false"]
    assert _select_values(html, "f-placement") == ["", *get_args(Placement)]
    assert _headers(html, "models")[-4:] == ["cut", "cold starts", "queue p95", "on CPU"]
    results = _headers(html, "results")
    assert results[-2:] == ["why slow or cut", "prompt"]
    script = (PAGE / "app.js").read_text(encoding="utf-8")
    # The empty rows span every column.
    for table, colspan in (("results", len(results)), ("models", len(_headers(html, "models")))):
        assert f"colspan: {colspan}" in script, table
    # The fixed choices the page accepts from its URL are the selects' own.
    choices = re.search(r"const CHOICES = \{ cold: (\[.*?\]), placement: (\[.*?\]) \};", script)
    assert choices, "CHOICES"
    assert json.loads(choices.group(1)) == _select_values(html, "f-cold")[1:]
    assert json.loads(choices.group(2)) == _select_values(html, "f-placement")[1:]
    # Every cold cause the API can filter on has the page's words.
    causes = re.search(r"const COLD_CAUSES = \{(.*?)\};", script, re.DOTALL)
    assert causes, "COLD_CAUSES"
    assert re.findall(r"^\s*(\w+):", causes.group(1), re.MULTILINE) == list(get_args(ColdCause))


def test_every_search_parameter_the_page_sends_is_one_the_api_takes() -> None:
    script = (PAGE / "app.js").read_text(encoding="utf-8")
    call = re.search(r'api\("search", \{(.*?)\}\);', script, re.DOTALL)
    assert call, "the search call"
    sent = re.findall(r"^\s*(\w+):", call.group(1), re.MULTILINE)
    assert {"client_app", "cold_start", "placement"} <= set(sent)
    api = FastAPI()
    api.include_router(create_analytics_router(store=None, token=None, backends=()))
    parameters = api.openapi()["paths"]["/analytics/search"]["get"]["parameters"]
    assert set(sent) <= {p["name"] for p in parameters}


def test_every_field_the_page_reads_is_served(tmp_path: Path) -> None:
    script = (PAGE / "app.js").read_text(encoding="utf-8")
    # Records are r, the per-model entries of the stats m.
    record_fields = set(re.findall(r"\br\.([a-z_]+)", script))
    model_fields = set(re.findall(r"\bm\.([a-z_0-9]+)", script))
    assert {"diagnosis", "cold_cause", "cold_detail", "placement", "gpu_share"} <= record_fields
    assert {"requests_ahead", "ollama_load_s"} <= record_fields
    assert {"cold_starts", "cold_start_share", "placed", "spilled_share"} <= model_fields
    assert {"queue_wait_p95_s", "truncations"} <= model_fields
    assert record_fields <= set(Record.model_fields)
    summary_only = {"diagnosis", "cold_cause", "placement"}  # shown in the table's rows
    assert summary_only <= set(RecordSummary.model_fields)
    store = SqlStore(create_store_engine(database_url(None, tmp_path)))
    try:
        store.write([sample_row(cold_cause="expired", placement="mixed", gpu_share=0.5)])
        stats = store.stats(0)
    finally:
        store.close()
    assert "cold_starts" in stats
    assert "client_apps" in stats
    (model,) = stats["models"]
    assert model_fields <= set(model)
    assert (model["cold_starts"], model["placed"], model["spilled_share"]) == (1, 1, 1.0)
