"""The analytics page in a real browser: headless Debian Chromium driven by Selenium
through chromium-driver, against a real proxy (SQLite) with real emulator traffic sent by the
real ``ollama`` client. What the page shows is checked against ``/analytics/*``.

Screenshots go to ``test-artifacts/ui-*.png``.
"""

from __future__ import annotations

import json
import re
import secrets
import shutil
import time
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import httpx
import ollama
import pytest

from app.analytics.rows import to_row
from app.analytics.sql import SqlStore, create_store_engine, database_url
from tests.conftest import ARTIFACTS
from tests.emulator import EmulatorServer
from tests.support import LocalHttpServer, ProxyProcess, sample_record

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")
try:
    from selenium import webdriver
    from selenium.common.exceptions import StaleElementReferenceException
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.remote.webdriver import WebDriver
    from selenium.webdriver.support.select import Select
    from selenium.webdriver.support.wait import WebDriverWait
except ImportError:  # pragma: no cover - the dev extra installs it
    webdriver = None  # type: ignore[assignment]

pytestmark = [
    pytest.mark.browser,
    pytest.mark.process,
    pytest.mark.skipif(
        webdriver is None or CHROMIUM is None or CHROMEDRIVER is None,
        reason=(
            "needs the selenium package (pip install -e .[dev]) and the Debian packages "
            "chromium and chromium-driver (scripts/setup.sh --dev)"
        ),
    ),
]

T = TypeVar("T")
TOKEN = "ui-browser-token"
HOSTILE_PROMPTS = [
    '<img src=x onerror="window.__xss=1">',
    "<script>window.__xss=1</script>",
    '"><svg onload=window.__xss=1>',
    "</pre><iframe src=javascript:window.__xss=1></iframe>",
]
HOSTILE_MODEL = "<b onmouseover=window.__xss=1>m</b>"
HOSTILE_RESPONSE = '<h1>Big</h1><img src=x onerror="window.__xss=1"><a href="javascript:1">x</a>'
HOSTILE_THINKING = "<script>window.__xss=1</script> thinking <style>*{display:none}</style>"


# ---------- the browser ----------


@pytest.fixture(scope="module")
def browser() -> Iterator[WebDriver]:
    options = webdriver.ChromeOptions()
    # Explicit binary and driver: selenium-manager is never asked to download either.
    options.binary_location = str(CHROMIUM)
    for argument in (
        "--headless=new",
        "--no-sandbox",  # root in a container
        "--disable-dev-shm-usage",
        "--disable-gpu",
        "--window-size=1440,1000",
        "--no-first-run",
        "--disable-extensions",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-default-apps",
    ):
        options.add_argument(argument)
    ARTIFACTS.mkdir(exist_ok=True)
    service = Service(
        executable_path=str(CHROMEDRIVER), log_output=str(ARTIFACTS / "ui-chromedriver.log")
    )
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("SE_OFFLINE", "true")
        driver = webdriver.Chrome(service=service, options=options)
    driver.set_page_load_timeout(30)
    try:
        yield driver
    finally:
        driver.quit()


def until(driver: WebDriver, condition: Callable[[WebDriver], T], timeout: float = 20) -> T:
    """Polls ``condition`` until it is truthy; a re-rendered element is simply retried."""
    stale = [StaleElementReferenceException]
    return WebDriverWait(driver, timeout, 0.1, ignored_exceptions=stale).until(condition)


def open_page(driver: WebDriver, url: str) -> None:
    driver.get("about:blank")  # a fresh document: no state carried over from the last test
    driver.get(url)


def row_ids(driver: WebDriver) -> list[str]:
    ids: list[str] = driver.execute_script(
        "return [...document.querySelectorAll('#results tbody tr[data-id]')]"
        ".map((row) => row.dataset.id)"
    )
    return ids


def rows_become(driver: WebDriver, expected: list[str]) -> None:
    try:
        until(driver, lambda d: row_ids(d) == expected)
    except Exception:
        pytest.fail(f"the table shows {row_ids(driver)}, expected {expected}")


def click_row(driver: WebDriver, record_id: str) -> None:
    # Its first cell: the left edge, never under an open record panel.
    selector = f'#results tr[data-id="{record_id}"] td:first-child'
    until(driver, lambda d: d.find_elements(By.CSS_SELECTOR, selector))[0].click()


def field(driver: WebDriver, selector: str) -> Any:
    return driver.execute_script(
        "const node = document.querySelector(arguments[0]);"
        "return node && {text: node.textContent, value: node.dataset.value};",
        selector,
    )


def shot(driver: WebDriver, name: str) -> None:
    driver.save_screenshot(str(ARTIFACTS / f"ui-{name}.png"))


# ---------- data ----------


def search_api(proxy: ProxyProcess, headers: dict[str, str] | None = None, **params: Any) -> Any:
    answer = httpx.get(
        proxy.url + "/analytics/search", params={"limit": 50, **params}, headers=headers
    )
    assert answer.status_code == 200, answer.text
    return answer.json()


def wait_for_records(
    proxy: ProxyProcess, count: int, headers: dict[str, str] | None = None, **params: Any
) -> list[dict[str, Any]]:
    """The writer is asynchronous: search until ``count`` records are there."""
    deadline = time.monotonic() + 30
    while True:
        records: list[dict[str, Any]] = search_api(proxy, headers, **{"limit": 1000, **params})[
            "records"
        ]
        if len(records) >= count:
            return records
        assert time.monotonic() < deadline, f"{len(records)} of {count} records stored"
        time.sleep(0.1)


def get_json(proxy: ProxyProcess, path: str) -> Any:
    answer = httpx.get(proxy.url + path)
    assert answer.status_code == 200, answer.text
    return answer.json()


class Traffic:
    def __init__(self, proxy: ProxyProcess, marker: str, count: int) -> None:
        self.proxy = proxy
        self.marker = marker
        self.count = count


@pytest.fixture(scope="module")
def traffic(emulator: EmulatorServer) -> Iterator[Traffic]:
    """A proxy of its own (so the data are known) and a morning's worth of traffic."""
    marker = "quokka" + secrets.token_hex(4)
    env = {"ANALYTICS_BACKEND": "sqlite", "PS_POLL_INTERVAL": "0"}
    with ProxyProcess(emulator.url, env=env) as proxy, ollama.Client(host=proxy.url) as client:
        client.chat(
            model="llama3.2", messages=[{"role": "user", "content": "Why is the sky blue?"}]
        )
        streamed = client.chat(
            model="qwen3",
            messages=[{"role": "user", "content": f"Tell me about the {marker} migration"}],
            stream=True,
            think=True,
        )
        assert "".join(part.message.content or "" for part in streamed)
        client.generate(model="gemma:2b", prompt="Translate 'good morning' into French")
        client.generate(model="llama3.2", prompt="Count to five", options={"num_predict": 5})
        with pytest.raises(ollama.ResponseError):
            client.chat(model="no-such-model", messages=[{"role": "user", "content": "hello?"}])
        # Enough records for a second page of 50.
        for i in range(50):
            client.embed(model="nomic-embed-text", input=f"document number {i}")
        count = 55
        wait_for_records(proxy, count)
        yield Traffic(proxy, marker, count)


# ---------- the tests ----------


def test_table_lists_the_requests_newest_first_pages_and_refreshes_live(
    browser: WebDriver, traffic: Traffic
) -> None:
    proxy = traffic.proxy
    open_page(browser, proxy.url + "/ui")
    assert browser.current_url == proxy.url + "/ui/"
    first = search_api(proxy)
    assert first["next_cursor"] is not None
    rows_become(browser, [r["id"] for r in first["records"]])
    assert browser.find_element(By.ID, "banner").is_displayed() is False
    assert browser.find_element(By.ID, "auth").is_displayed() is False
    # One row as the user reads it.
    newest = first["records"][0]
    cells = browser.execute_script(
        "return [...document.querySelector('#results tbody tr').cells].map(c => c.textContent)"
    )
    assert cells[1:6] == [
        newest["node"],
        newest["model"],
        newest["endpoint"],
        newest["category"],
        str(newest["status"]),
    ]
    shot(browser, "table")

    # Older →, then ← newer again.
    browser.find_element(By.ID, "next").click()
    second = search_api(proxy, cursor=first["next_cursor"])
    rows_become(browser, [r["id"] for r in second["records"]])
    assert browser.find_element(By.ID, "prev").is_enabled()
    browser.find_element(By.ID, "prev").click()
    rows_become(browser, [r["id"] for r in first["records"]])
    assert not browser.find_element(By.ID, "prev").is_enabled()

    # Live refresh: a new request shows up on the first page without a reload.
    live = "wombat" + secrets.token_hex(4)
    with ollama.Client(host=proxy.url) as client:
        client.generate(model="llama3.2", prompt=f"A word about the {live}")
    (record,) = wait_for_records(proxy, 1, prompt_search=live)
    until(browser, lambda d: row_ids(d)[:1] == [record["id"]], timeout=30)


def test_search_finds_the_prompt_and_a_click_shows_the_whole_record(
    browser: WebDriver, traffic: Traffic
) -> None:
    proxy = traffic.proxy
    (summary,) = wait_for_records(proxy, 1, prompt_search=traffic.marker)
    record = get_json(proxy, f"/analytics/records/{summary['id']}")
    open_page(browser, proxy.url + "/ui/")
    until(browser, lambda d: len(row_ids(d)) == 50)
    box = browser.find_element(By.ID, "q")
    box.send_keys(traffic.marker, Keys.ENTER)
    rows_become(browser, [record["id"]])
    assert f"q={traffic.marker}" in browser.current_url
    shot(browser, "search")

    click_row(browser, record["id"])
    until(browser, lambda d: field(d, '#record pre[data-field="prompt"]') is not None)
    assert f"id={record['id']}" in browser.current_url
    assert record["prompt"] == f"Tell me about the {traffic.marker} migration"
    for name in ("prompt", "response", "thinking"):
        assert record[name], name
        shown = field(browser, f'#record pre[data-field="{name}"]')
        assert shown["text"] == record[name], name
    assert field(browser, '#record dd[data-field="model"]')["text"] == "qwen3:latest"
    assert field(browser, '#record dd[data-field="status"]')["text"] == "200"
    # Timings: the exact stored values, shown rounded.
    for name in (
        "duration_s",
        "ttft_s",
        "ollama_total_s",
        "ollama_load_s",
        "ollama_prompt_eval_s",
        "ollama_eval_s",
    ):
        assert record[name] is not None, name
        shown = field(browser, f'#record dd[data-field="{name}"]')
        assert float(shown["value"]) == record[name], name
        assert shown_seconds(shown["text"]) == pytest.approx(record[name], rel=0.01, abs=6e-5)
        if name != "ttft_s":
            bar = field(browser, f'#record svg.waterfall rect[data-field="{name}"]')
            assert float(bar["value"]) == record[name], name
    assert field(browser, '#record svg.waterfall line[data-field="ttft_s"]') is not None
    for name in ("prompt_tokens", "completion_tokens"):
        shown = field(browser, f'#record dd[data-field="{name}"]')
        assert shown["text"] == f"{record[name]:,}"
        assert int(shown["value"]) == record[name]
    rate = field(browser, '#record dd[data-field="tokens_per_second"]')
    assert float(rate["text"]) == pytest.approx(record["tokens_per_second"], abs=0.051)
    shot(browser, "record")

    # The hash links the record: a fresh page opens it straight away.
    link = browser.current_url
    open_page(browser, link)
    until(browser, lambda d: field(d, '#record pre[data-field="prompt"]') is not None)
    assert field(browser, '#record pre[data-field="prompt"]')["text"] == record["prompt"]
    assert browser.find_element(By.ID, "q").get_attribute("value") == traffic.marker


def test_a_failed_request_shows_its_error(browser: WebDriver, traffic: Traffic) -> None:
    proxy = traffic.proxy
    (failed,) = wait_for_records(proxy, 1, model="no-such-model")
    assert failed["status"] == 404
    # Older than the first page of everything: the status filter brings it up.
    open_page(browser, f"{proxy.url}/ui/#status=404&id={failed['id']}")
    until(browser, lambda d: field(d, '#record pre[data-field="error"]') is not None)
    assert field(browser, '#record pre[data-field="error"]')["text"].startswith(failed["error"])
    assert "not found" in failed["error"]
    row = until(
        browser, lambda d: d.find_elements(By.CSS_SELECTOR, f'tr[data-id="{failed["id"]}"]')
    )[0]
    assert "bad" in row.get_attribute("class")


def test_filters_narrow_the_table(browser: WebDriver, traffic: Traffic) -> None:
    proxy = traffic.proxy
    open_page(browser, proxy.url + "/ui/")
    until(browser, lambda d: len(row_ids(d)) == 50)
    # The choices come from the stats and the rows seen.
    until(browser, lambda d: "gemma:2b" in option_values(d, "f-model"))
    Select(browser.find_element(By.ID, "f-model")).select_by_value("gemma:2b")
    expected = search_api(proxy, model="gemma:2b")["records"]
    assert len(expected) == 1
    rows_become(browser, [r["id"] for r in expected])
    assert "model=gemma%3A2b" in browser.current_url
    until(browser, lambda d: "/api/embed" in option_values(d, "f-endpoint"))
    Select(browser.find_element(By.ID, "f-model")).select_by_value("")
    Select(browser.find_element(By.ID, "f-endpoint")).select_by_value("/api/embed")
    embeds = search_api(proxy, endpoint="/api/embed")
    rows_become(browser, [r["id"] for r in embeds["records"]])
    Select(browser.find_element(By.ID, "f-endpoint")).select_by_value("")
    Select(browser.find_element(By.ID, "f-status")).select_by_value("404")
    rows_become(browser, [r["id"] for r in search_api(proxy, status=404)["records"]])


def option_values(driver: WebDriver, select_id: str) -> list[str]:
    values: list[str] = driver.execute_script(
        "return [...document.getElementById(arguments[0]).options].map((o) => o.value)",
        select_id,
    )
    return values


def test_charts_show_the_stats(browser: WebDriver, traffic: Traffic) -> None:
    proxy = traffic.proxy
    open_page(browser, proxy.url + "/ui/")
    stats = get_json(proxy, "/analytics/stats?hours=24")
    assert stats["total_requests"] >= traffic.count
    assert stats["errors"] >= 1

    def sums(driver: WebDriver) -> dict[str, float]:
        result: dict[str, float] = driver.execute_script(
            "const sums = {};"
            "for (const rect of document.querySelectorAll('#summary svg rect[data-series]')) {"
            "  const key = rect.closest('figure div').id + ':' + rect.dataset.series;"
            "  sums[key] = (sums[key] || 0) + Number(rect.dataset.value);"
            "}"
            "return sums;"
        )
        return result

    def matches(driver: WebDriver) -> bool:
        got = sums(driver)
        return (
            got.get("chart-requests:ok", 0) + got.get("chart-requests:errors", 0)
            == stats["total_requests"]
        )

    until(browser, matches)
    got = sums(browser)
    assert got["chart-requests:errors"] == stats["errors"]
    assert got["chart-tokens:prompt_tokens"] == stats["tokens"]["prompt_total"]
    assert got["chart-tokens:completion_tokens"] == stats["tokens"]["completion_total"]
    assert got["chart-errors:error_rate"] > 0
    assert got["chart-latency:latency p50"] == stats["latency"]["p50_s"]
    assert got["chart-latency:latency p95"] == stats["latency"]["p95_s"]
    assert got["chart-latency:TTFT p95"] == stats["ttft"]["p95_s"]
    models = browser.execute_script(
        "return [...document.querySelectorAll('#models tbody tr')].map((r) => r.dataset.model)"
    )
    assert models == [m["name"] for m in stats["models"]]
    card = field(browser, '#cards [data-field="total_requests"] .card-value')
    assert card["text"] == f"{stats['total_requests']:,}"
    shot(browser, "summary")


# ---------- why a request was slow ----------

# Records with known diagnostics, newest first: what the stored fields make the API say.
DIAGNOSED: list[dict[str, Any]] = [
    {  # cold, reloaded for its options, partly on the CPU, queued behind two others
        "model": "qwen3:8b",
        "client_app": "zed",
        "prompt": "Refactor the parser",
        "ollama_load_s": 6.4,
        "cold_cause": "options",
        "cold_detail": "num_ctx 8192 ≠ loaded 4096",
        "placement": "mixed",
        "gpu_share": 0.62,
        "requests_ahead": 2,
    },
    {  # warm, all on the GPU
        "model": "qwen3:8b",
        "client_app": "aider",
        "prompt": "Explain the diff",
        "placement": "gpu",
        "gpu_share": 1.0,
        "requests_ahead": 0,
    },
    {  # cold: never loaded before, all on the CPU
        "model": "llama3.2:latest",
        "client_app": "aider",
        "prompt": "Write a haiku",
        "node": "gpu-2",
        "ollama_load_s": 2.5,
        "cold_cause": "first_load",
        "placement": "cpu",
        "gpu_share": 0.0,
    },
    {  # warm, placement unknown, no client app
        "model": "llama3.2:latest",
        "client_app": "",
        "prompt": "Say hi",
        "node": "gpu-2",
    },
]


@pytest.fixture(scope="module")
def diagnosed(emulator: EmulatorServer) -> Iterator[tuple[ProxyProcess, list[str]]]:
    """A proxy whose store holds ``DIAGNOSED`` (written before it starts) and nothing else;
    with the record ids, newest first."""
    proxy = ProxyProcess(
        emulator.url,
        env={"ANALYTICS_BACKEND": "sqlite", "PS_POLL_INTERVAL": "0"},
    )
    now = time.time()
    records = [
        sample_record(timestamp=now - 60 * (i + 1), **fields) for i, fields in enumerate(DIAGNOSED)
    ]
    store = SqlStore(create_store_engine(database_url(None, proxy.workdir)))
    try:
        store.write([to_row(r, store_prompts=True, max_text_bytes=1 << 20) for r in records])
    finally:
        store.close()
    with proxy:
        yield proxy, [r.id for r in records]


def test_a_diagnosed_record_says_why_in_the_table_and_the_detail(
    browser: WebDriver, diagnosed: tuple[ProxyProcess, list[str]]
) -> None:
    proxy, ids = diagnosed
    records = search_api(proxy)["records"]
    assert [r["id"] for r in records] == ids
    cold = get_json(proxy, f"/analytics/records/{ids[0]}")
    assert cold["diagnosis"] == (
        "cold start: 6.4 s loading qwen3:8b, reloaded because num_ctx 8192 ≠ loaded 4096; "
        "model 38 % on CPU"
    )
    open_page(browser, proxy.url + "/ui/")
    rows_become(browser, ids)
    # The table: each row's diagnosis (the full one in its title), nothing for the others.
    shown = browser.execute_script(
        "return [...document.querySelectorAll('#results tbody td.why')]"
        ".map((cell) => [cell.textContent, cell.title])"
    )
    assert shown == [[r["diagnosis"] or "", r["diagnosis"] or ""] for r in records]
    assert records[1]["diagnosis"] is None

    click_row(browser, ids[0])
    until(browser, lambda d: field(d, '#record [data-field="diagnosis"]') is not None)
    why = browser.find_element(By.CSS_SELECTOR, "#record .why-block")
    # At the top: right under the head, before every fact.
    assert browser.execute_script(
        "return document.querySelector('#record .panel-head').nextElementSibling === arguments[0]",
        why,
    )
    assert field(browser, '#record [data-field="diagnosis"]')["text"] == cold["diagnosis"]
    start = field(browser, '#record dd[data-field="cold_start"]')
    assert start["value"] == "options"
    assert "num_ctx 8192 ≠ loaded 4096" in start["text"]
    assert "6.40 s loading" in start["text"]
    placement = field(browser, '#record dd[data-field="placement"]')
    assert placement["value"] == "mixed"
    assert "38 % on CPU" in placement["text"]
    ahead = field(browser, '#record dd[data-field="requests_ahead"]')
    assert ahead["value"] == "2"
    assert ahead["text"].startswith("2 ")
    shot(browser, "diagnosis")

    # A warm record: no "Why" block, and the facts say what is (not) known.
    click_row(browser, ids[3])
    until(browser, lambda d: record_shown(d) == ids[3])
    assert browser.find_elements(By.CSS_SELECTOR, "#record .why-block") == []
    assert field(browser, '#record dd[data-field="cold_start"]')["value"] == "null"
    assert field(browser, '#record dd[data-field="placement"]')["text"] == "unknown"
    assert field(browser, '#record dd[data-field="requests_ahead"]')["text"] == "unknown"


def test_cold_start_client_app_and_placement_filters_narrow_the_table(
    browser: WebDriver, diagnosed: tuple[ProxyProcess, list[str]]
) -> None:
    proxy, ids = diagnosed
    open_page(browser, proxy.url + "/ui/")
    rows_become(browser, ids)
    # The client apps come from the stats (and the rows seen).
    until(browser, lambda d: option_values(d, "f-app") == ["", "aider", "zed"])

    Select(browser.find_element(By.ID, "f-cold")).select_by_value("true")
    rows_become(browser, [ids[0], ids[2]])
    assert [r["id"] for r in search_api(proxy, cold_start="true")["records"]] == [ids[0], ids[2]]
    assert "cold=true" in browser.current_url

    Select(browser.find_element(By.ID, "f-app")).select_by_value("aider")
    rows_become(browser, [ids[2]])
    assert "app=aider" in browser.current_url

    Select(browser.find_element(By.ID, "f-cold")).select_by_value("false")
    rows_become(browser, [ids[1]])
    Select(browser.find_element(By.ID, "f-cold")).select_by_value("")
    rows_become(browser, [ids[1], ids[2]])
    assert "cold=" not in browser.current_url

    Select(browser.find_element(By.ID, "f-app")).select_by_value("")
    Select(browser.find_element(By.ID, "f-placement")).select_by_value("cpu")
    rows_become(browser, [ids[2]])
    assert "placement=cpu" in browser.current_url
    Select(browser.find_element(By.ID, "f-placement")).select_by_value("mixed")
    rows_become(browser, [ids[0]])

    # The URL holds them: a fresh page opens with the same filters.
    link = browser.current_url + "&cold=true&app=zed"
    open_page(browser, link)
    rows_become(browser, [ids[0]])
    assert Select(browser.find_element(By.ID, "f-cold")).first_selected_option.text == (
        "cold starts only"
    )
    assert browser.find_element(By.ID, "f-app").get_attribute("value") == "zed"
    assert browser.find_element(By.ID, "f-placement").get_attribute("value") == "mixed"
    # A value the API would refuse is dropped rather than sent.
    open_page(browser, proxy.url + "/ui/#cold=perhaps&placement=tpu")
    rows_become(browser, ids)
    assert browser.find_element(By.ID, "banner").is_displayed() is False
    browser.find_element(By.ID, "clear-button").click()


def test_cold_starts_queue_and_cpu_share_are_summarised(
    browser: WebDriver, diagnosed: tuple[ProxyProcess, list[str]]
) -> None:
    proxy, _ids = diagnosed
    stats = get_json(proxy, "/analytics/stats?hours=24")
    assert stats["cold_starts"] == 2
    open_page(browser, proxy.url + "/ui/")
    until(browser, lambda d: field(d, '#cards [data-field="cold_starts"] .card-value') is not None)
    card = field(browser, '#cards [data-field="cold_starts"] .card-value')
    assert card["text"] == "2"
    detail = field(browser, '#cards [data-field="cold_starts"] .card-detail')["text"]
    assert detail.startswith("50.0 %")

    def cells(driver: WebDriver) -> dict[str, dict[str, Any]]:
        found: dict[str, dict[str, Any]] = driver.execute_script(
            "const out = {};"
            "for (const row of document.querySelectorAll('#models tbody tr[data-model]')) {"
            "  const tds = [...row.querySelectorAll('td[data-field]')];"
            "  out[row.dataset.model] = Object.fromEntries("
            "    tds.map((td) => [td.dataset.field, [td.textContent, td.dataset.value, td.title]])"
            "  );"
            "}"
            "return out;"
        )
        return found

    until(browser, lambda d: len(cells(d)) == 2)
    got = cells(browser)
    by_name = {m["name"]: m for m in stats["models"]}
    assert set(got) == set(by_name) == {"qwen3:8b", "llama3.2:latest"}
    for name, m in by_name.items():
        assert m["cold_starts"] == 1, m
        assert m["cold_start_share"] == 0.5, m
        text, value, title = got[name]["cold_starts"]
        assert (text, value) == ("50.0 %", "1")
        assert title.startswith("1 of 2 requests")
        assert got[name]["truncations"][0] == "0"
        assert got[name]["queue_wait_p95_s"][1] == (
            "null" if m["queue_wait_p95_s"] is None else str(m["queue_wait_p95_s"])
        )
    # qwen3:8b: one of its two placed requests was partly on the CPU.
    assert by_name["qwen3:8b"]["placed"] == 2
    assert got["qwen3:8b"]["spilled_share"][0] == "50.0 %"
    assert got["qwen3:8b"]["spilled_share"][2].startswith("1 of the 2 requests")
    # llama3.2: only one of its requests had a known placement, on the CPU.
    assert by_name["llama3.2:latest"]["placed"] == 1
    assert got["llama3.2:latest"]["spilled_share"][0] == "100.0 %"
    headers = browser.execute_script(
        "return [...document.querySelectorAll('#models thead th')].map((th) => th.textContent)"
    )
    assert headers[-4:] == ["cut", "cold starts", "queue p95", "on CPU"]
    shot(browser, "models")


# ---------- hostile content ----------


def hostile_upstream(method: str, path: str, headers: dict[str, str], body: bytes) -> Any:
    """An Ollama whose answers are HTML, as a compromised or playful model's may be."""
    if path != "/api/generate":
        return 404, "text/plain", b"404 page not found"
    request = json.loads(body)
    answer = {
        "model": request["model"],
        "created_at": "2025-01-01T00:00:00Z",
        "response": HOSTILE_RESPONSE,
        "thinking": HOSTILE_THINKING,
        "done": True,
        "done_reason": "stop",
        "total_duration": 9_000_000,
        "load_duration": 1_000_000,
        "prompt_eval_count": 5,
        "prompt_eval_duration": 2_000_000,
        "eval_count": 7,
        "eval_duration": 5_000_000,
    }
    return 200, "application/json; charset=utf-8", json.dumps(answer).encode()


def test_hostile_prompts_and_responses_are_shown_as_text(browser: WebDriver) -> None:
    with (
        LocalHttpServer(hostile_upstream) as upstream,
        ProxyProcess(
            upstream.url, env={"ANALYTICS_BACKEND": "sqlite", "PS_POLL_INTERVAL": "0"}
        ) as proxy,
    ):
        for prompt in HOSTILE_PROMPTS:
            body = {"model": "llama3.2", "prompt": prompt, "stream": False}
            assert httpx.post(proxy.url + "/api/generate", json=body).status_code == 200
        body = {"model": HOSTILE_MODEL, "prompt": "plain", "stream": False}
        assert httpx.post(proxy.url + "/api/generate", json=body).status_code == 200
        records = wait_for_records(proxy, len(HOSTILE_PROMPTS) + 1)
        open_page(browser, proxy.url + "/ui/")
        rows_become(browser, [r["id"] for r in records])
        excerpts = browser.execute_script(
            "return [...document.querySelectorAll('#results td.excerpt')].map(c => c.textContent)"
        )
        assert set(excerpts) == {*HOSTILE_PROMPTS, "plain"}
        for record in records:
            click_row(browser, record["id"])
            until(browser, lambda d, r=record: record_shown(d) == r["id"])
            assert field(browser, '#record pre[data-field="prompt"]')["text"] == record["prompt"]
            assert field(browser, '#record pre[data-field="response"]')["text"] == HOSTILE_RESPONSE
            assert field(browser, '#record pre[data-field="thinking"]')["text"] == HOSTILE_THINKING
            assert field(browser, '#record dd[data-field="model"]')["text"] == record["model"]
            assert_nothing_injected(browser)
        assert HOSTILE_MODEL + ":latest" in option_values(browser, "f-model")
        shot(browser, "xss")


def record_shown(driver: WebDriver) -> str | None:
    head = driver.find_elements(By.CSS_SELECTOR, "#record .panel-head code")
    if not head or not driver.find_elements(By.CSS_SELECTOR, '#record pre[data-field="prompt"]'):
        return None
    return str(head[0].text)


def assert_nothing_injected(driver: WebDriver) -> None:
    found = driver.execute_script(
        "const record = document.getElementById('record');"
        "return {"
        "  xss: typeof window.__xss,"
        "  images: document.querySelectorAll('img, iframe, object, embed, style, a').length,"
        "  scripts: [...document.scripts].map((s) => s.getAttribute('src')),"
        "  recordSvgs: [...record.querySelectorAll('svg')].map((s) => s.getAttribute('class')),"
        "  preChildren: [...record.querySelectorAll('pre')].map((p) => p.childElementCount),"
        "  cellChildren: [...document.querySelectorAll('#results tbody td')]"
        "    .reduce((n, td) => n + td.childElementCount, 0),"
        "  optionChildren: [...document.querySelectorAll('option')]"
        "    .reduce((n, o) => n + o.childElementCount, 0),"
        "  h1: document.querySelectorAll('h1').length,"
        "};"
    )
    assert found == {
        "xss": "undefined",
        "images": 0,
        "scripts": ["app.js"],
        "recordSvgs": ["waterfall"],
        "preChildren": [0] * len(found["preChildren"]),
        "cellChildren": 0,
        "optionChildren": 0,
        "h1": 1,
    }
    assert len(found["preChildren"]) >= 3


# ---------- the token ----------


def test_the_token_is_asked_once_per_session(browser: WebDriver, emulator: EmulatorServer) -> None:
    auth = {"Authorization": f"Bearer {TOKEN}"}
    env = {"ANALYTICS_TOKEN": TOKEN, "PS_POLL_INTERVAL": "0", "ANALYTICS_BACKEND": "sqlite"}
    with ProxyProcess(emulator.url, env=env) as proxy:
        with ollama.Client(host=proxy.url) as client:
            client.generate(model="llama3.2", prompt="Is the page guarded?")
        (record,) = wait_for_records(proxy, 1, headers=auth)
        open_page(browser, proxy.url + "/ui/")
        until(browser, lambda d: d.find_element(By.ID, "auth").is_displayed())
        assert row_ids(browser) == []
        shot(browser, "token")

        box = browser.find_element(By.ID, "token-input")
        box.send_keys("not-the-token", Keys.ENTER)
        until(
            browser,
            lambda d: (
                d.find_element(By.ID, "auth").is_displayed()
                and "not accepted" in d.find_element(By.ID, "auth-message").text
            ),
        )
        assert row_ids(browser) == []

        browser.find_element(By.ID, "token-input").send_keys(TOKEN, Keys.ENTER)
        rows_become(browser, [record["id"]])
        assert not browser.find_element(By.ID, "auth").is_displayed()
        stored = browser.execute_script(
            "return [sessionStorage.length, localStorage.length, document.cookie]"
        )
        assert stored == [1, 0, ""]

        # A reload in the same session: straight to the data.
        browser.refresh()
        rows_become(browser, [record["id"]])
        assert not browser.find_element(By.ID, "auth").is_displayed()

        # Forgetting the token asks again.
        browser.find_element(By.ID, "forget-token").click()
        until(browser, lambda d: d.find_element(By.ID, "auth").is_displayed())
        browser.execute_script("sessionStorage.clear()")


def shown_seconds(text: str) -> float:
    """The seconds a "12.3 ms" / "1.23 s" text stands for."""
    match = re.fullmatch(r"([0-9.]+) (ms|s)", text)
    assert match, text
    return float(match.group(1)) / (1000 if match.group(2) == "ms" else 1)


def test_the_node_column_and_filter_show_which_machine_served_each_request(
    browser: WebDriver, diagnosed: tuple[ProxyProcess, list[str]]
) -> None:
    proxy, ids = diagnosed
    open_page(browser, proxy.url + "/ui/")
    rows_become(browser, ids)
    shown = browser.execute_script(
        "return [...document.querySelectorAll('#results tbody td[data-field=node]')]"
        ".map((cell) => cell.textContent)"
    )
    assert shown == ["gpu-1", "gpu-1", "gpu-2", "gpu-2"]
    # The nodes come from the stats (per node) and the rows seen.
    until(browser, lambda d: option_values(d, "f-node") == ["", "gpu-1", "gpu-2"])
    Select(browser.find_element(By.ID, "f-node")).select_by_value("gpu-2")
    rows_become(browser, ids[2:])
    assert "node=gpu-2" in browser.current_url
    assert [r["id"] for r in search_api(proxy, node="gpu-2")["records"]] == ids[2:]
    click_row(browser, ids[2])
    until(browser, lambda d: (field(d, '#record [data-field="node"]') or {}).get("text") == "gpu-2")
    browser.find_element(By.ID, "clear-button").click()
    rows_become(browser, ids)
