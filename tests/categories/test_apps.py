"""The client application behind the ``client_app`` label (app.categories.apps): families as
the real libraries name themselves, naming headers, normalisation, the bound, bad input."""

from __future__ import annotations

import random
import re
import string
import sys
import urllib.request

import anthropic
import httpx
import ollama
import openai
import pytest
import requests
from hypothesis import given, settings
from hypothesis import strategies as st

from app.categories.apps import FAMILY_NAMES, OTHER, UNKNOWN, ClientApps

LABEL = re.compile(r"[a-z0-9._-]{1,32}")


def name(user_agent: str, title: str = "", client_name: str = "") -> str:
    """What a fresh instance, with every slot free, calls these headers."""
    return ClientApps()(user_agent, title, client_name)


# --- families, with the User-Agent each library builds ---------------------------------


def test_ollama_python_as_the_installed_client_sends_it() -> None:
    with ollama.Client() as client:
        user_agent = client._client.headers["User-Agent"]
    assert user_agent.startswith("ollama-python/")
    assert name(user_agent) == "ollama-python"


def test_openai_python_as_the_installed_clients_send_it() -> None:
    with openai.OpenAI(api_key="test") as client:
        assert client.user_agent.startswith("OpenAI/Python ")
        assert name(client.user_agent) == "openai-python"
    azure = openai.AzureOpenAI(api_key="t", api_version="2024-06-01", azure_endpoint="https://x")
    with azure:
        assert azure.user_agent.startswith("AzureOpenAI/Python ")
        assert name(azure.user_agent) == "openai-python"
    # The async client names its own class: `AsyncOpenAI/Python 1.54.0`.
    assert name(f"AsyncOpenAI/Python {openai.__version__}") == "openai-python"


def test_anthropic_python_as_the_installed_client_sends_it() -> None:
    with anthropic.Anthropic(api_key="test") as client:
        assert client.user_agent.startswith("Anthropic/Python ")
        assert name(client.user_agent) == "anthropic-python"
    assert name(f"AsyncAnthropicBedrock/Python {anthropic.__version__}") == "anthropic-python"


def test_httpx_requests_and_urllib_as_installed() -> None:
    with httpx.Client() as client:
        assert name(client.headers["User-Agent"]) == "python-httpx"
    assert name(requests.utils.default_user_agent()) == "python-requests"
    (header, user_agent), *_ = urllib.request.build_opener().addheaders
    assert header == "User-agent"
    assert name(user_agent) == "python-urllib"


def test_aiohttp_default_as_it_builds_it() -> None:
    # aiohttp/http.py: SERVER_SOFTWARE = "Python/{0[0]}.{0[1]} aiohttp/{1}"
    user_agent = "Python/{0[0]}.{0[1]} aiohttp/{1}".format(sys.version_info, "3.10.5")
    assert name(user_agent) == "aiohttp"
    # Python and a version alone is not aiohttp: the first product token names it.
    assert name("Python/3.11") == "python"


def test_the_ollama_go_client() -> None:
    # api/client.go: fmt.Sprintf("ollama/%s (%s %s) Go/%s", version.Version, runtime.GOARCH,
    # runtime.GOOS, runtime.Version()); runtime.Version() is "go1.24.1".
    for arch, goos in [("amd64", "linux"), ("arm64", "darwin"), ("amd64", "windows")]:
        assert name(f"ollama/0.12.3 ({arch} {goos}) Go/go1.24.1") == "ollama-cli"
    assert name("ollama/0.0.0 (amd64 linux) Go/go1.24.1") == "ollama-cli"  # a dev build


FAMILIES = [
    # ollama-js src/utils.ts: `ollama-js/${version} (${getPlatform()})`, the platform being
    # `${process.arch} ${process.platform} Node.js/${process.version}` under Node.
    ("ollama-js/0.5.14 (x64 linux Node.js/v20.11.0)", "ollama-js"),
    ("ollama-js/0.5.14 (arm64 darwin Node.js/v22.3.0)", "ollama-js"),
    # Stainless getUserAgent(): `${this.constructor.name}/JS ${VERSION}`.
    ("OpenAI/JS 4.73.0", "openai-node"),
    ("AzureOpenAI/JS 4.73.0", "openai-node"),
    ("Anthropic/JS 0.32.1", "anthropic-node"),
    ("curl/8.5.0", "curl"),
    ("curl/7.81.0", "curl"),
    ("Wget/1.21.4", "wget"),
    ("wget2/2.1.0", "wget"),
    ("Go-http-client/1.1", "go-http"),
    ("Go-http-client/2.0", "go-http"),
    # node-fetch v3 and v2 defaults.
    ("node-fetch", "node-fetch"),
    ("node-fetch/1.0 (+https://github.com/bitinn/node-fetch)", "node-fetch"),
    # undici's fetch standalone, and inside Node (its defaultUserAgent).
    ("undici", "undici"),
    ("node", "undici"),
    ("PostmanRuntime/7.39.0", "postman"),
    ("insomnia/2023.5.8", "insomnia"),
    ("insomnia/9.3.2", "insomnia"),
    # Continue's UA where it sets one (packages/openai-adapters, OrcaRouter).
    ("Continue/IDE", "continue"),
    # Browsers.
    (
        "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
        "Chrome/124.0.0.0 Safari/537.36",
        "browser",
    ),
    ("Mozilla/5.0 (X11; Linux x86_64; rv:125.0) Gecko/20100101 Firefox/125.0", "browser"),
    (
        "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605.1.15 (KHTML, like "
        "Gecko) Version/17.4.1 Safari/605.1.15",
        "browser",
    ),
    (
        "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
        "Chrome/124.0.0.0 Safari/537.36 Edg/124.0.2478.80",
        "browser",
    ),
    # LiteLLM's httpx handler sets its own UA.
    ("litellm/1.55.2", "litellm"),
    # LangChain.js's ChatGroq sets `User-Agent: langchainjs` over the Groq SDK's.
    ("langchainjs", "langchain"),
    # Open WebUI's web loaders.
    ("Open WebUI (https://github.com/open-webui/open-webui) RAG Bot", "open-webui"),
]


@pytest.mark.parametrize(("user_agent", "expected"), FAMILIES)
def test_families(user_agent: str, expected: str) -> None:
    assert name(user_agent) == expected


@pytest.mark.parametrize(
    ("user_agent", "expected"),
    [
        ("python-httpx/0.28.1 langchain-ollama/0.2.1", "langchain"),
        ("ollama-python/0.4.4 (x86_64 linux) Python/3.12.3 LangChain/0.3", "langchain"),
        ("OpenAI/Python 1.54.0 litellm/1.55.2", "litellm"),
        ("python-requests/2.32.3 llama-index-llms-ollama/0.4.2", "llama-index"),
        ("python-httpx/0.28.1 (llama_index)", "llama-index"),
        ("Python/3.11 aiohttp/3.10.5 open-webui/0.5.4", "open-webui"),
    ],
)
def test_a_framework_anywhere_wins_over_its_http_library(user_agent: str, expected: str) -> None:
    assert name(user_agent) == expected


def test_the_first_product_token_names_an_unknown_client() -> None:
    assert name("MyApp/1.2 (linux)") == "myapp"
    assert name("okhttp/4.12.0") == "okhttp"
    assert name("Bun/1.1.8") == "bun"
    assert name("Some Tool") == "some"
    assert name("  Weird_Name.v2/3 extra") == "weird_name.v2"
    assert name("OpenAI/Java 0.8") == "openai"  # not the Python or JS SDK


# --- naming headers -------------------------------------------------------------------


def test_a_naming_header_wins_over_the_user_agent() -> None:
    user_agent = "OpenAI/Python 1.54.0"
    assert name(user_agent, title="My Chat App") == "my-chat-app"
    assert name(user_agent, client_name="batch-jobs") == "batch-jobs"
    assert name(user_agent, title="My Chat App", client_name="batch-jobs") == "batch-jobs"
    assert name("", title="Cline") == "cline"  # no User-Agent needed


def test_a_header_naming_a_family_gives_the_family() -> None:
    # Open WebUI and Continue send these to OpenRouter.
    assert name("Python/3.11 aiohttp/3.10.5", title="Open WebUI") == "open-webui"
    assert name("node-fetch", title="Continue") == "continue"
    assert name("", client_name="OpenWebUI") == "open-webui"
    assert name("", client_name="LlamaIndex") == "llama-index"


def test_a_header_with_nothing_usable_falls_back() -> None:
    assert name("curl/8.5.0", client_name="   ", title="日本語") == "curl"
    assert name("curl/8.5.0", client_name="!!!", title="Tool") == "tool"
    assert name("", title="\x00\x01") == UNKNOWN


def test_no_headers_at_all_is_unknown() -> None:
    assert name("") == UNKNOWN
    assert name("   \t ") == UNKNOWN


def test_the_reserved_values_cannot_be_claimed() -> None:
    assert name("", client_name="Unknown") == OTHER
    assert name("unknown/1.0") == OTHER
    assert name("", title="other") == OTHER


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("  My   App  ", "my-app"),
        ("My\tApp\n2", "my-app-2"),
        ("MyApp™ Pro", "myapp-pro"),
        ("Ünïcode App", "ncode-app"),
        ("---x---", "x"),
        ("a.b_c-d", "a.b_c-d"),
        ("(compat) thing", "compat-thing"),
        ("x" * 40, "x" * 32),
        ("a" * 31 + " b", "a" * 31),  # cut at 32, then no trailing "-"
        ("\u212aelvin", "kelvin"),  # the Kelvin sign lower-cases to an ASCII k
    ],
)
def test_normalisation(value: str, expected: str) -> None:
    assert name("", client_name=value) == expected
    assert name("", title=value) == expected


# --- the bound ------------------------------------------------------------------------


def test_at_most_limit_names_then_other() -> None:
    apps = ClientApps(limit=3)
    assert [apps(f"app{i}/1.0") for i in range(5)] == ["app0", "app1", "app2", OTHER, OTHER]
    # A family is always named, outside the limit; an admitted name stays admitted.
    assert apps("curl/8.5.0") == "curl"
    assert apps("app9/1.0") == OTHER
    assert apps("app1/2.0") == "app1"
    assert apps("") == UNKNOWN


def test_limit_zero_and_negative() -> None:
    apps = ClientApps(limit=0)
    assert apps("curl/8.5.0") == "curl"
    assert apps("", title="x") == OTHER
    assert apps("") == UNKNOWN
    with pytest.raises(ValueError, match="limit"):
        ClientApps(limit=-1)


def random_user_agent(rng: random.Random) -> tuple[str, str, str]:
    word = "".join(rng.choices(string.ascii_letters + string.digits + "-_. /()\t", k=12))
    pick = rng.random()
    if pick < 0.2:
        return (rng.choice(FAMILIES)[0], "", "")
    if pick < 0.5:
        return ("", "", word) if pick < 0.35 else ("curl/8", word, "")
    return (f"{word}/{rng.randint(0, 99)} (x)", "", "")


@pytest.mark.parametrize("limit", [0, 1, 5, 20, 100])
def test_a_flood_of_names_stays_bounded(limit: int) -> None:
    rng = random.Random(limit)
    apps = ClientApps(limit=limit)
    answers = {apps(*random_user_agent(rng)) for _ in range(5000)}
    assert len(answers - FAMILY_NAMES) <= limit + 2
    assert len(answers) <= len(FAMILY_NAMES) + limit + 2
    assert all(LABEL.fullmatch(answer) for answer in answers)
    assert len(apps._cache) <= 1024  # the cache is bounded as well


HEADER = st.one_of(
    st.text(max_size=60),
    st.text(st.characters(codec="latin-1"), max_size=60),
    # Lone surrogates, control characters, spaces: st.text() alone seldom draws them.
    st.text(st.characters(categories=["Cs", "Cc", "Zs", "Ll", "Lu", "Nd", "Po"]), max_size=60),
    st.sampled_from([entry[0] for entry in FAMILIES]),
    st.builds(lambda a, b: f"{a}/{b}", st.text(string.ascii_letters, max_size=10), st.text()),
)


@settings(max_examples=60, deadline=None)
@given(
    limit=st.integers(0, 30),
    calls=st.lists(st.tuples(HEADER, HEADER, HEADER), min_size=50, max_size=200),
)
def test_any_headers_give_a_bounded_stable_label(
    limit: int, calls: list[tuple[str, str, str]]
) -> None:
    apps = ClientApps(limit=limit)
    answers = [apps(*call) for call in calls]
    assert len(set(answers) - FAMILY_NAMES) <= limit + 2
    assert all(LABEL.fullmatch(answer) for answer in answers)
    # Asked again, in any order, every call gets the answer it got the first time.
    assert [apps(*call) for call in reversed(calls)] == answers[::-1]


# --- bad input ------------------------------------------------------------------------

BAD = [
    "A" * 10_000,
    "curl/8.5.0 " + "x" * 10_000,
    bytes(range(256)).decode("latin-1"),
    "\x00" * 100,
    "\x00curl/8.5.0",
    "\r\n\x1b[31mred\x7f",
    "\ud800\udfff lone surrogates",
    "\udcff" * 5000,
    "/" * 1000,
    "(" * 1000 + ")" * 1000,
    "\u202e\u200bzero-width",
]


@pytest.mark.parametrize("value", BAD, ids=range(len(BAD)))
def test_bad_input_never_raises_and_stays_a_label(value: str) -> None:
    apps = ClientApps()
    for call in [(value, "", ""), ("", value, ""), ("", "", value), (value, value, value)]:
        answer = apps(*call)
        assert LABEL.fullmatch(answer), answer
        assert apps(*call) == answer


def test_a_long_user_agent_is_examined_only_at_its_start() -> None:
    assert name("x" * 600 + " langchain/0.3") == "x" * 32
    assert name("curl/8.5.0 " + "y" * 10_000) == "curl"


def test_values_that_are_not_text_do_not_raise() -> None:
    apps = ClientApps()
    # Headers are bytes in ASGI; a caller forgetting to decode them still gets an answer.
    assert apps(b"curl/8.5.0") == "curl"  # type: ignore[arg-type]
    assert apps(None, None, None) == UNKNOWN  # type: ignore[arg-type]
    assert apps(bytearray(b"Wget/1.21.4")) == "wget"  # type: ignore[arg-type]


# --- the cache ------------------------------------------------------------------------


def test_the_cache_does_not_change_answers() -> None:
    rng = random.Random(7)
    calls = [random_user_agent(rng) for _ in range(3000)]  # > 1024: the cache clears
    calls += rng.choices(calls, k=3000)  # and repeats, hit or miss
    cached, uncached = ClientApps(limit=20), ClientApps(limit=20)
    for call in calls:
        uncached._cache.clear()
        assert cached(*call) == uncached(*call), call


def test_a_cache_hit_admits_nothing() -> None:
    apps = ClientApps(limit=2)
    assert apps("one/1") == "one"
    for _ in range(10):
        assert apps("one/1") == "one"
    assert apps("two/1") == "two"
    assert apps("three/1") == OTHER


def test_a_flood_of_invented_names_cannot_crowd_out_a_family() -> None:
    apps = ClientApps(limit=20)
    assert {apps(f"junk{i}/1.0") for i in range(1000)} == {f"junk{i}" for i in range(20)} | {OTHER}
    assert apps("ollama-python/0.6.3 (x86_64 linux) Python/3.11.7") == "ollama-python"
    assert apps("", title="Open WebUI") == "open-webui"
    assert len(FAMILY_NAMES) < 40  # a fixed, small set
