"""The Grafana part of the Docker deployment (deploy/grafana) holds up against the real thing.

- Provisioning: the data sources the dashboards name exist, and the values Grafana reads
  survive its environment-variable expansion (a literal ``$`` must be written ``$$``).
- Every PromQL expression of every dashboard, with Grafana's variables filled in, is run by a
  real Prometheus (the Debian binary) that scraped a real proxy carrying emulator traffic: it
  must be valid AND return data, so no panel of a healthy system stays empty.
- The diagnostics dashboard's metrics need traffic of their own: a module emulator with one
  parallel slot and a slow cold load, concurrent requests, an unload and a reload, truncated
  prompts and answers, and a client app of its own.
- Exemplars: the latency panels ask for them and Prometheus really has them, with the
  ``request_id`` label the Prometheus data source links to Loki, naming a stored record.
- LogQL has no server here, so a small recursive-descent parser checks the subset the
  dashboards use, and that stream selectors only use the labels the proxy sends to Loki.
"""

from __future__ import annotations

import json
import math
import re
import time
import urllib.parse
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from app.analytics.jsonl import compact_json
from app.analytics.loki import ROW_LABELS
from tests.emulator import EmulatorConfig, EmulatorServer
from tests.support import CHAT, ROOT, ProxyProcess, running_prometheus, sample_row

GRAFANA = ROOT / "deploy" / "grafana"
DASHBOARD_DIR = GRAFANA / "dashboards"
DATASOURCES_FILE = GRAFANA / "provisioning" / "datasources" / "datasources.yml"
PROVIDERS_FILE = GRAFANA / "provisioning" / "dashboards" / "dashboards.yml"
METRICS_DOC = ROOT / "docs" / "metrics.md"

# What app/analytics/loki.py labels each stream with.
LOKI_STREAM_LABELS = frozenset({"app", *ROW_LABELS})
# The built-in data source of Grafana's own annotations.
GRAFANA_BUILTIN = {"type": "grafana", "uid": "-- Grafana --"}
MODEL = "llama3.2:latest"
SAMPLE_ID = "01JDQ7ZVX3M8Q2W5K6T9B4N1RC"
# Grafana's variables as the tests fill them in.
VALUES = {
    "__rate_interval": "1m",
    "__interval": "15s",
    "__range": "1h",
    "__value.raw": SAMPLE_ID,
    "model": MODEL,
    # The node variable's All (allValue ".*"), which also matches series without a node label:
    # those of a single-machine stack, as Prometheus scrapes them here.
    "node": ".*",
    "search": "sky",
}
BUILTIN_VARIABLES = frozenset(name for name in VALUES if name.startswith("__"))
VARIABLE = re.compile(r"\$\{([\w.]+)(?::\w+)?\}|\$(\w+)|\[\[(\w+)\]\]")
ULID = re.compile(r"[0-9A-HJKMNP-TV-Z]{26}")
IDENTIFIER = re.compile(r"\b[A-Za-z_][A-Za-z0-9_]*")
PROMQL_STRING = re.compile(r'"(?:[^"\\]|\\.)*"')
# How long, after the second round of traffic, the queries may take to return data.
DATA_TIMEOUT = 30.0


def substitute(expression: str) -> str:
    """``expression`` with every Grafana variable replaced by its test value."""

    def value(match: re.Match[str]) -> str:
        name = match.group(1) or match.group(2) or match.group(3)
        if name not in VALUES:
            raise KeyError(f"no test value for the Grafana variable {match.group(0)}")
        return VALUES[name]

    return VARIABLE.sub(value, expression)


def variables_in(expression: str) -> set[str]:
    return {m.group(1) or m.group(2) or m.group(3) for m in VARIABLE.finditer(expression)}


# ------------------------------------------------------------------------ LogQL (subset)


class LogQLError(ValueError):
    pass


_LOGQL_TOKEN = re.compile(
    r"""\s*(?:
      (?P<string>"(?:[^"\\\n]|\\.)*"|`[^`]*`)
     |(?P<duration>(?:\d+(?:\.\d+)?(?:ns|us|µs|ms|s|m|h|d|w|y))+)(?![\w.])
     |(?P<number>\d+(?:\.\d+)?)(?![\w.])
     |(?P<ident>[A-Za-z_][A-Za-z0-9_]*)
     |(?P<op>\|=|\|~|!=|!~|=~|==|>=|<=|[=<>|{}()\[\],])
    )""",
    re.VERBOSE,
)
_MATCHERS = ("=", "!=", "=~", "!~")
_LINE_FILTERS = ("|=", "!=", "|~", "!~")
_COMPARISONS = ("==", "!=", ">", ">=", "<", "<=")
_RANGE_FUNCTIONS = frozenset(
    {"count_over_time", "rate", "bytes_over_time", "bytes_rate", "absent_over_time"}
)
_AGGREGATIONS = frozenset({"sum", "avg", "min", "max", "count", "stddev", "stdvar"})
_TOP = frozenset({"topk", "bottomk"})
_STAGES = frozenset({"json", "logfmt", "line_format", "label_format", "unwrap", "drop", "keep"})


@dataclass
class _Token:
    kind: str
    text: str
    at: int


def _tokens(query: str) -> list[_Token]:
    tokens, at = [], 0
    while True:
        rest = query[at:]
        if not rest.strip():
            return tokens
        match = _LOGQL_TOKEN.match(query, at)
        if match is None or match.end() == at:
            offset = at + len(rest) - len(rest.lstrip())
            raise LogQLError(f"unexpected character {query[offset]!r} at {offset}")
        kind = match.lastgroup
        assert kind is not None
        tokens.append(_Token(kind, match.group(kind), match.start(kind)))
        at = match.end()


def _unquote(text: str) -> str:
    if text.startswith("`"):
        return text[1:-1]
    return str(json.loads(text))


def _regex(pattern: str) -> re.Pattern[str]:
    try:
        return re.compile(pattern)
    except re.error as exc:
        raise LogQLError(f"invalid regular expression {pattern!r}: {exc}") from exc


@dataclass
class LogQL:
    """The parsed facts the tests need: the labels the stream selectors use."""

    stream_labels: set[str] = field(default_factory=set)
    selectors: list[dict[str, tuple[str, str]]] = field(default_factory=list)


class _Parser:
    """Recursive descent over the subset of LogQL the dashboards use:

    query     := metric | log
    log       := '{' matcher (',' matcher)* '}' stage*
    matcher   := IDENT ('=' | '!=' | '=~' | '!~') STRING
    stage     := ('|=' | '!=' | '|~' | '!~') STRING
               | '|' ('json' | 'logfmt' | 'line_format' STRING | filter (('and'|'or'|',') filter)*)
    filter    := IDENT ('=' | '!=' | '=~' | '!~') STRING | IDENT COMPARISON (NUMBER | DURATION)
    metric    := RANGE_FN '(' log '[' DURATION ']' ')'
               | AGG [grouping] '(' metric ')' [grouping]
               | ('topk' | 'bottomk') [grouping] '(' NUMBER ',' metric ')' [grouping]
    grouping  := ('by' | 'without') '(' IDENT (',' IDENT)* ')'
    """

    def __init__(self, query: str) -> None:
        self.query = query
        self.tokens = _tokens(query)
        self.at = 0
        self.result = LogQL()

    # -- token helpers
    def peek(self, offset: int = 0) -> _Token | None:
        index = self.at + offset
        return self.tokens[index] if index < len(self.tokens) else None

    def fail(self, expected: str) -> LogQLError:
        token = self.peek()
        found = f"{token.text!r} at {token.at}" if token else "the end of the query"
        return LogQLError(f"expected {expected}, found {found} in {self.query!r}")

    def take(self, kind: str, *texts: str) -> _Token:
        token = self.peek()
        if token is None or token.kind != kind or (texts and token.text not in texts):
            raise self.fail(" or ".join(repr(t) for t in texts) if texts else kind)
        self.at += 1
        return token

    def at_op(self, *texts: str) -> bool:
        token = self.peek()
        return token is not None and token.kind == "op" and token.text in texts

    def at_ident(self, *texts: str) -> bool:
        token = self.peek()
        return token is not None and token.kind == "ident" and (not texts or token.text in texts)

    # -- grammar
    def parse(self) -> LogQL:
        if self.at_op("{"):
            self.log_query()
        elif self.at_ident(*_RANGE_FUNCTIONS, *_AGGREGATIONS, *_TOP):
            self.metric_query()
        else:
            raise self.fail("a stream selector '{...}' or a metric query")
        if self.peek() is not None:
            raise self.fail("the end of the query")
        return self.result

    def log_query(self) -> None:
        self.selector()
        while True:
            if self.at_op(*_LINE_FILTERS):
                operator = self.take("op").text
                text = _unquote(self.take("string").text)
                if operator.endswith("~"):
                    _regex(text)
            elif self.at_op("|"):
                self.take("op", "|")
                self.stage()
            else:
                return

    def selector(self) -> None:
        self.take("op", "{")
        matchers: dict[str, tuple[str, str]] = {}
        while True:
            name = self.take("ident").text
            operator = self.take("op", *_MATCHERS).text
            value = _unquote(self.take("string").text)
            if operator.endswith("~"):
                _regex(value)
            matchers[name] = (operator, value)
            if not self.at_op(","):
                break
            self.take("op", ",")
        self.take("op", "}")
        # Loki refuses a selector that would match every stream.
        if not any(_selects(operator, value) for operator, value in matchers.values()):
            raise LogQLError(
                f"{self.query!r}: a stream selector needs a matcher that does not match the "
                "empty string"
            )
        self.result.stream_labels |= set(matchers)
        self.result.selectors.append(matchers)

    def stage(self) -> None:
        if self.at_ident("json", "logfmt"):
            self.take("ident")
        elif self.at_ident("line_format"):
            self.take("ident")
            template = _unquote(self.take("string").text)
            if template.count("{{") != template.count("}}"):
                raise LogQLError(f"unbalanced template in line_format {template!r}")
        elif self.at_ident(*_STAGES):
            raise self.fail("a stage of the supported subset (json, logfmt, line_format)")
        else:
            self.label_filter()
            while self.at_ident("and", "or") or self.at_op(","):
                self.at += 1
                self.label_filter()

    def label_filter(self) -> None:
        self.take("ident")
        token = self.peek()
        if token is None or token.kind != "op":
            raise self.fail("a label comparison")
        if token.text in _MATCHERS and (after := self.peek(1)) and after.kind == "string":
            self.at += 2
            if token.text.endswith("~"):
                _regex(_unquote(after.text))
        elif token.text in _COMPARISONS:
            self.at += 1
            value = self.peek()
            if value is None or value.kind not in ("number", "duration"):
                raise self.fail("a number or a duration")
            self.at += 1
        else:
            raise self.fail("a label comparison")

    def metric_query(self) -> None:
        name = self.take("ident").text
        if name in _RANGE_FUNCTIONS:
            self.take("op", "(")
            self.log_query()
            self.take("op", "[")
            self.take("duration")
            self.take("op", "]")
            self.take("op", ")")
            return
        grouped = self.grouping()
        self.take("op", "(")
        if name in _TOP:
            self.take("number")
            self.take("op", ",")
        self.metric_query()
        self.take("op", ")")
        if not grouped:
            self.grouping()

    def grouping(self) -> bool:
        if not self.at_ident("by", "without"):
            return False
        self.take("ident")
        self.take("op", "(")
        self.take("ident")
        while self.at_op(","):
            self.take("op", ",")
            self.take("ident")
        self.take("op", ")")
        return True


def _selects(operator: str, value: str) -> bool:
    """True when the matcher rules out the empty label value (so it narrows the streams)."""
    if operator == "=":
        return value != ""
    if operator == "=~":
        return re.fullmatch(value, "") is None
    return False


def parse_logql(query: str) -> LogQL:
    return _Parser(query).parse()


# ---------------------------------------------------------------------- dashboards on disk


def dashboard_files() -> list[Path]:
    return sorted(DASHBOARD_DIR.glob("*.json"))


def load_dashboards() -> dict[str, dict[str, Any]]:
    """Every dashboard that parses (the JSON test reports those that do not)."""
    loaded = {}
    for path in dashboard_files():
        try:
            loaded[path.name] = json.loads(path.read_text())
        except ValueError:
            continue
    return loaded


def all_panels(panels: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    for panel in panels:
        yield panel
        yield from all_panels(panel.get("panels", []))


@dataclass(frozen=True)
class Target:
    dashboard: str
    panel: str
    panel_type: str
    ref: str
    datasource: dict[str, Any]
    expr: str
    exemplar: bool

    @property
    def name(self) -> str:
        return f"{self.dashboard} / {self.panel!r} / {self.ref}"

    def __str__(self) -> str:
        return f"{self.name}: {self.expr}"


def all_targets() -> list[Target]:
    found = []
    for name, dashboard in load_dashboards().items():
        for panel in all_panels(dashboard.get("panels", [])):
            for target in panel.get("targets", []):
                found.append(
                    Target(
                        dashboard=name,
                        panel=str(panel.get("title", "")),
                        panel_type=str(panel.get("type", "")),
                        ref=str(target.get("refId", "")),
                        datasource=target.get("datasource") or panel.get("datasource") or {},
                        expr=str(target.get("expr", "")),
                        exemplar=bool(target.get("exemplar", False)),
                    )
                )
    return found


TARGETS = all_targets()
PROMQL = [t for t in TARGETS if t.datasource.get("type") == "prometheus"]
LOGQL = [t for t in TARGETS if t.datasource.get("type") == "loki"]
EXEMPLARS = [t for t in PROMQL if t.exemplar]


def documented_names() -> set[str]:
    """The names docs/metrics.md documents: every `backticked` word (metric names, label
    values) and every word of the "labels" columns of its tables (label names)."""
    text = METRICS_DOC.read_text()
    words = set()
    for quoted in re.findall(r"`([^`]+)`", text):
        words |= set(IDENTIFIER.findall(quoted))
    column = None
    for line in text.splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if not line.startswith("|"):
            column = None
        elif column is None:
            column = next((i for i, cell in enumerate(cells) if cell.endswith("labels")), -1)
        elif 0 <= column < len(cells):
            words |= set(IDENTIFIER.findall(cells[column]))
    return words


def provisioned(value: str) -> str:
    """``value`` as Grafana stores it: it expands environment variables in provisioning
    files, ``$$`` being a literal ``$``. A lone ``$`` would be silently replaced: refuse it."""
    parts = value.split("$$")
    for part in parts:
        assert "$" not in part, (
            f"{value!r}: Grafana expands $... as an environment variable; write $$ for a $"
        )
    return "$".join(parts)


def read_yaml(path: Path) -> dict[str, Any]:
    data = yaml.safe_load(path.read_text())
    assert isinstance(data, dict), f"{path} is not a YAML mapping"
    return data


@pytest.fixture(scope="module")
def datasources() -> dict[str, dict[str, Any]]:
    config = read_yaml(DATASOURCES_FILE)
    assert config.get("apiVersion") == 1
    sources = config["datasources"]
    uids = [source["uid"] for source in sources]
    assert len(uids) == len(set(uids)), f"duplicate data source uids {uids}"
    return {source["uid"]: source for source in sources}


# ---------------------------------------------------------------------- provisioning files


def test_datasources_are_prometheus_and_loki(datasources: dict[str, dict[str, Any]]) -> None:
    prometheus, loki = datasources["prometheus"], datasources["loki"]
    assert (prometheus["type"], prometheus["url"]) == ("prometheus", "http://prometheus:9090")
    assert (loki["type"], loki["url"]) == ("loki", "http://loki:3100")
    assert [uid for uid, source in datasources.items() if source.get("isDefault")] == ["prometheus"]
    for source in datasources.values():
        assert source["access"] == "proxy"
        for value in _strings(source):
            provisioned(value)


def _strings(value: Any) -> Iterator[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for item in value.values():
            yield from _strings(item)
    elif isinstance(value, list):
        for item in value:
            yield from _strings(item)


def test_exemplars_link_to_the_request_record_in_loki(
    datasources: dict[str, dict[str, Any]],
) -> None:
    [destination] = datasources["prometheus"]["jsonData"]["exemplarTraceIdDestinations"]
    assert destination["name"] == "request_id"
    # With datasourceUid Grafana makes an internal link whose query is the bare value
    # "${__value.raw}" (its Tempo trace-id convention), which is no LogQL: hence the URL.
    assert "datasourceUid" not in destination
    url = urllib.parse.urlsplit(provisioned(destination["url"]))
    assert url.path == "/explore"
    query = urllib.parse.parse_qs(url.query)
    assert query["schemaVersion"] == ["1"]
    [pane] = json.loads(query["panes"][0]).values()
    assert pane["datasource"] in datasources
    [loki_query] = pane["queries"]
    assert loki_query["datasource"] == {"type": "loki", "uid": "loki"}
    assert loki_query["expr"] == '{app="ollama-metrics"} |= "${__value.raw}"'
    parsed = parse_logql(substitute(loki_query["expr"]))
    assert parsed.stream_labels <= LOKI_STREAM_LABELS


def test_loki_derived_field_finds_the_record_id_in_a_real_line(
    datasources: dict[str, dict[str, Any]],
) -> None:
    [derived] = datasources["loki"]["jsonData"]["derivedFields"]
    assert derived["datasourceUid"] in datasources
    row = sample_row()
    line = compact_json(row)  # the log line app/analytics/loki.py pushes for the row
    match = re.search(derived["matcherRegex"], line)
    assert match is not None, f"{derived['matcherRegex']} does not match {line[:120]}"
    assert match.group(1) == row["id"]
    query = provisioned(derived["url"])
    assert query == '{app="ollama-metrics"} |= "${__value.raw}"'
    assert parse_logql(substitute(query)).stream_labels <= LOKI_STREAM_LABELS


def test_dashboard_provider_loads_the_mounted_folder() -> None:
    config = read_yaml(PROVIDERS_FILE)
    assert config.get("apiVersion") == 1
    [provider] = config["providers"]
    assert provider["type"] == "file"
    assert provider["options"]["path"] == "/var/lib/grafana/dashboards"
    assert "deploy/grafana/dashboards" in PROVIDERS_FILE.read_text()


# ---------------------------------------------------------------------- dashboard structure


def test_the_five_dashboards_exist_with_unique_uids_and_titles() -> None:
    names = [path.name for path in dashboard_files()]
    assert names == [
        "analytics.json", "diagnostics.json", "fleet.json", "model.json", "overview.json",
    ]  # fmt: skip
    dashboards = [json.loads(path.read_text()) for path in dashboard_files()]
    uids = [d["uid"] for d in dashboards]
    titles = [d["title"] for d in dashboards]
    assert all(uids), uids
    assert len(set(uids)) == len(uids), uids
    assert all(len(uid) <= 40 and re.fullmatch(r"[\w-]+", uid) for uid in uids), uids
    assert all(titles), titles
    assert len(set(titles)) == len(titles), titles
    assert all(title.startswith("Ollama Metrics Proxy / ") for title in titles), titles
    assert all(uid.startswith("ollama-metrics-") for uid in uids), uids


@pytest.mark.parametrize("path", dashboard_files(), ids=lambda path: path.name)
def test_dashboard_structure(path: Path, datasources: dict[str, dict[str, Any]]) -> None:
    dashboard = json.loads(path.read_text())
    assert dashboard["schemaVersion"] == 39
    assert dashboard.get("id") is None, "provisioned dashboards carry no database id"
    panels = list(all_panels(dashboard["panels"]))
    ids = [panel["id"] for panel in panels]
    assert len(ids) == len(set(ids)), f"duplicate panel ids in {path.name}"
    for panel in panels:
        where = f"{path.name} / {panel.get('title')!r}"
        grid = panel["gridPos"]
        assert grid["x"] + grid["w"] <= 24, where
        assert panel.get("title"), f"{path.name}: a panel without a title"
        if panel["type"] != "row":
            assert panel.get("targets"), f"{where} has no query"
            refs = [target["refId"] for target in panel["targets"]]
            assert len(refs) == len(set(refs)), f"{where}: duplicate refIds {refs}"
    for ref in _datasource_refs(dashboard):
        assert isinstance(ref, dict), f"{path.name}: data source {ref!r} is not a uid reference"
        if ref == GRAFANA_BUILTIN:
            continue
        assert ref.get("uid") in datasources, f"{path.name}: unknown data source {ref}"
        assert ref["type"] == datasources[ref["uid"]]["type"], f"{path.name}: {ref}"


def _datasource_refs(value: Any) -> Iterator[Any]:
    if isinstance(value, dict):
        for key, item in value.items():
            if key == "datasource":
                yield item
            else:
                yield from _datasource_refs(item)
    elif isinstance(value, list):
        for item in value:
            yield from _datasource_refs(item)


@pytest.mark.parametrize("path", dashboard_files(), ids=lambda path: path.name)
def test_every_variable_used_is_defined(path: Path) -> None:
    dashboard = json.loads(path.read_text())
    defined = {variable["name"] for variable in dashboard["templating"]["list"]}
    used: set[str] = set()
    for panel in all_panels(dashboard["panels"]):
        for target in panel.get("targets", []):
            used |= variables_in(target.get("expr", ""))
    assert used - BUILTIN_VARIABLES <= defined, f"{path.name}: undefined {used - defined}"
    assert defined <= used, f"{path.name}: variables no query uses: {defined - used}"


# Prometheus's own: the scrape's health and the target labels it adds; exported_node is the
# proxy's node label (ollama_proxy_info) kept aside where a targets file sets node (the fleet).
PROMETHEUS_OWN = {"up", "job", "instance", "exported_node"}


def test_promql_uses_only_documented_metrics_and_labels() -> None:
    documented = documented_names() | {"le"} | PROMETHEUS_OWN
    functions = {
        "sum", "max", "min", "avg", "count", "rate", "increase", "histogram_quantile", "vector",
    }  # fmt: skip
    keywords = {"by", "without", "or", "and", "unless", "on", "ignoring", "group_left"}
    for target in PROMQL:
        expr = PROMQL_STRING.sub('""', substitute(target.expr))
        for word in IDENTIFIER.findall(expr):
            if word in functions | keywords:
                continue
            base = re.sub(r"_(bucket|sum|count)$", "", word)
            assert word in documented or base in documented, f"{word!r} undocumented: {target}"


def test_rates_use_the_rate_interval() -> None:
    for target in PROMQL:
        for window in re.findall(r"\[([^\]]*)\]", PROMQL_STRING.sub('""', target.expr)):
            assert window in ("$__rate_interval", "$__range"), f"[{window}] in {target}"


def test_latency_panels_ask_for_exemplars() -> None:
    # The histograms the proxy attaches a request_id exemplar to (docs/metrics.md).
    latency = re.compile(
        r"(request_duration|time_to_first_token|queue_wait|stream_max_gap)_seconds_bucket"
    )
    for target in PROMQL:
        # Only graphs draw exemplars; a stat panel has nowhere to put them.
        if target.panel_type == "timeseries" and latency.search(target.expr):
            assert target.exemplar, f"exemplar is off: {target}"
    assert EXEMPLARS


MODEL_DASHBOARDS = ["model.json", "diagnostics.json"]


@pytest.mark.parametrize("name", MODEL_DASHBOARDS)
def test_model_variable_lists_models(name: str) -> None:
    node, variable = load_dashboards()[name]["templating"]["list"]
    assert node["name"] == "node", "the node comes first: it narrows the models listed"
    assert variable["name"] == "model"
    assert variable["datasource"] == {"type": "prometheus", "uid": "prometheus"}
    query = 'label_values(ollama_requests_total{node=~"$node"}, model)'
    assert variable["query"]["query"] == query
    assert variable["definition"] == variable["query"]["query"]
    assert (variable["multi"], variable["includeAll"], variable["allValue"]) == (True, True, ".+")


NODE_QUERY = "label_values(ollama_proxy_info, node)"
# Every dashboard is filtered by node; the Fleet overview shows them side by side.
NODE_DASHBOARDS = [
    "analytics.json",
    "diagnostics.json",
    "fleet.json",
    "model.json",
    "overview.json",
]
PROMQL_SELECTOR = re.compile(r"\b((?:ollama|gen_ai)_[a-z_]+|up)\b(\{[^}]*\})?")
NODE_MATCHER = 'node=~"$node"'


def variable_named(dashboard: dict[str, Any], name: str) -> dict[str, Any]:
    [variable] = [v for v in dashboard["templating"]["list"] if v["name"] == name]
    return variable


@pytest.mark.parametrize("name", NODE_DASHBOARDS)
def test_node_variable_lists_nodes_and_all_covers_a_single_machine(name: str) -> None:
    dashboard = load_dashboards()[name]
    variable = variable_named(dashboard, "node")
    assert dashboard["templating"]["list"][0] is variable
    assert variable["type"] == "query"
    assert variable["datasource"] == {"type": "prometheus", "uid": "prometheus"}
    assert variable["query"]["query"] == variable["definition"] == NODE_QUERY
    assert (variable["multi"], variable["includeAll"]) == (True, True)
    # All must match series without a node label too (a single-machine stack's: an absent
    # label is ""), which ".+" would not.
    assert variable["allValue"] == ".*"
    assert re.fullmatch(variable["allValue"], "")
    assert variable["current"] == {}, "All (the first option) unless the URL says otherwise"


@pytest.mark.parametrize("name", NODE_DASHBOARDS)
def test_every_selector_is_narrowed_to_the_chosen_nodes(name: str) -> None:
    targets = [t for t in TARGETS if t.dashboard == name]
    assert targets
    for target in targets:
        if target.datasource.get("type") == "prometheus":
            expr = PROMQL_STRING.sub(
                lambda m: m[0].replace("{", "(").replace("}", ")"), target.expr
            )
            selectors = list(PROMQL_SELECTOR.finditer(expr))
            assert selectors, target
            for selector in selectors:
                assert NODE_MATCHER in (selector[2] or ""), f"{selector[0]} in {target}"
        else:
            for matchers in parse_logql(target.expr.replace("$search", "")).selectors:
                assert matchers.get("node") == ("=~", "$node"), target


def test_search_variable_is_a_line_filter() -> None:
    dashboard = load_dashboards()["analytics.json"]
    variable = variable_named(dashboard, "search")
    assert variable["type"] == "textbox"
    assert any('|= "$search"' in target.expr for target in LOGQL)
    # Empty (the default) it filters nothing and is still valid LogQL.
    for target in LOGQL:
        parse_logql(target.expr.replace("$search", ""))


# ---------------------------------------------------------------------------------- LogQL


@pytest.mark.parametrize("target", LOGQL, ids=lambda target: target.name)
def test_logql_parses_and_selects_proxy_labels(target: Target) -> None:
    parsed = parse_logql(substitute(target.expr))
    assert parsed.stream_labels <= LOKI_STREAM_LABELS, (
        f"{target}: labels {parsed.stream_labels - LOKI_STREAM_LABELS} are never sent to Loki"
    )
    for selector in parsed.selectors:
        assert selector.get("app") == ("=", "ollama-metrics"), target


@pytest.mark.parametrize(
    "query",
    [
        '{app="ollama-metrics"}',
        '{app="ollama-metrics", model=~"llama.*", endpoint!="/api/tags", status_class!~"2xx"}',
        '{app="ollama-metrics"} |= "sky" != "blue" |~ "(?i)haiku" !~ "x+" | json',
        '{app="ollama-metrics"} | logfmt | line_format "{{.status}} {{.model}}"',
        '{app="ollama-metrics"} | json | status >= 400 and duration_s > 2.5',
        '{app="ollama-metrics"} | json | upstream_error != "", model =~ "q.*"',
        "{app=`ollama-metrics`} |= `raw \\ string`",
        'sum by (model) (count_over_time({app="ollama-metrics"}[1m]))',
        'sum(rate({app="ollama-metrics"} |= "x" [5m])) by (status_class)',
        'topk(3, sum by (model) (bytes_over_time({app="ollama-metrics"} | json [1h30m])))',
    ],
)
def test_logql_parser_accepts(query: str) -> None:
    parse_logql(query)


@pytest.mark.parametrize(
    "query",
    [
        "",
        "{}",
        '{app="ollama-metrics"',
        "{app=ollama-metrics}",
        '{app=~".*"}',
        '{app!="x"}',
        '{app="x",}',
        '{app="x"} |= sky',
        '{app="x"} |= "unterminated',
        '{app="x"} |~ "("',
        '{app="x"} | jsn',
        '{app="x"} | json |',
        '{app="x"} | json | duration_s >',
        '{app="x"} | json | duration_s > "1"',
        '{app="x"} | line_format {{.status}}',
        '{app="x"} | line_format "{{.status}"',
        '{app="x"} | json | unwrap duration_s',
        '{app="x"} json',
        'count_over_time({app="x"})',
        'count_over_time({app="x"}[1 m])',
        'count_over_time({app="x"}[$__interval])',
        'sum by model (count_over_time({app="x"}[1m]))',
        'sum by (model) (count_over_time({app="x"}[1m])',
        'sum by (model) (count_over_time({app="x"}[1m])) by (model)',
        'rate({app="x"}[1m]) extra',
        'frobnicate({app="x"}[1m])',
    ],
)
def test_logql_parser_rejects(query: str) -> None:
    with pytest.raises(LogQLError):
        parse_logql(query)


# ------------------------------------------------------ PromQL on a real Prometheus


@pytest.fixture(scope="module")
def diagnostics_emulator() -> Iterator[EmulatorServer]:
    """An emulator of the module's own, so the diagnostics panels have something to show:
    one parallel slot per model (concurrent requests wait in its queue) and a cold load
    slow enough (0.3 s) to count as a cold start. Its models start unloaded."""
    with EmulatorServer(EmulatorConfig(num_parallel=1, cold_load_delay=0.3)) as server:
        yield server


@pytest.fixture(scope="module")
def metrics_proxy(diagnostics_emulator: EmulatorServer) -> Iterator[ProxyProcess]:
    # A quick /api/ps poller, so the loaded-model series exist within the test's time.
    with ProxyProcess(diagnostics_emulator.url, env={"PS_POLL_INTERVAL": "0.5"}) as process:
        yield process


@pytest.fixture(scope="module")
def prometheus(
    metrics_proxy: ProxyProcess, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    work = tmp_path_factory.mktemp("prometheus-dashboards")
    # Scrapes OpenMetrics and keeps the exemplars, as the deployment must.
    with running_prometheus(metrics_proxy.port, work, "--enable-feature=exemplar-storage") as url:
        yield url


def send_traffic(client: httpx.Client) -> int:
    """A mix of API shapes; returns how many requests it sent."""
    ok = [
        ("/api/generate", {"model": "llama3.2", "prompt": "Why is the sky blue?", "stream": False}),
        ("/api/generate", {"model": "llama3.2", "prompt": "Write a haiku about the sea"}),
        ("/api/chat", {"model": "llama3.2", "messages": CHAT}),
        ("/api/chat", {"model": "llama3.2", "messages": CHAT, "stream": False}),
        ("/v1/chat/completions", {"model": "llama3.2", "messages": CHAT}),
        ("/v1/chat/completions", {"model": "llama3.2", "messages": CHAT, "stream": True}),
        ("/api/embed", {"model": "nomic-embed-text", "input": "hello"}),
    ]
    for path, body in ok:
        answer = client.post(path, json=body)
        assert answer.status_code == 200, (path, answer.text)
    missing = {"model": "no-such-model", "prompt": "hi", "stream": False}
    assert client.post("/api/generate", json=missing).status_code == 404
    return len(ok) + 1 + send_diagnostics_traffic(client)


# The context Ollama cuts a longer prompt to for num_ctx 64 is 35 tokens (app/exchange.py).
LONG_PROMPT = " ".join(f"word{i}" for i in range(200))
CONCURRENT = 4


def send_diagnostics_traffic(client: httpx.Client) -> int:
    """What the diagnostics dashboard's panels need beyond the mix above (which already
    streams, for the stream gaps): an answer cut at its token limit, a prompt cut by a small
    num_ctx, a client app of its own, requests queued behind one parallel slot, and an
    unload followed by a reload (a cold start). Returns how many requests it sent."""
    generate = {"model": "llama3.2", "prompt": "Tell me a story", "stream": False}
    cut_answer = {**generate, "options": {"num_predict": 3}}
    answer = client.post("/api/generate", json=cut_answer)
    assert answer.json()["done_reason"] == "length", answer.text
    cut_prompt = {**generate, "prompt": LONG_PROMPT, "options": {"num_ctx": 64}}
    answer = client.post("/api/generate", json=cut_prompt)
    assert answer.json()["prompt_eval_count"] >= 35, answer.text
    app = {"User-Agent": "diagnostics-dashboard/1.0"}
    chat = {"model": "llama3.2", "messages": CHAT}
    assert client.post("/api/chat", json=chat, headers=app).status_code == 200

    def queued(_: int) -> int:
        with httpx.Client(base_url=str(client.base_url), timeout=30) as own:
            return own.post("/api/generate", json=generate).status_code

    with ThreadPoolExecutor(CONCURRENT) as pool:
        assert list(pool.map(queued, range(CONCURRENT))) == [200] * CONCURRENT

    # keep_alive 0 without a prompt unloads the model; once the poller saw it gone, the next
    # request loads it again within RELOAD_WINDOW: a reload, and a cold start.
    wait_for_poller(client, loaded=True)
    unload = client.post("/api/generate", json={"model": "llama3.2", "keep_alive": 0})
    assert unload.json()["done_reason"] == "unload", unload.text
    wait_for_poller(client, loaded=False)
    assert client.post("/api/generate", json=generate).status_code == 200
    return 5 + CONCURRENT


def wait_for_poller(client: httpx.Client, *, loaded: bool) -> None:
    """Until the proxy's /api/ps poller shows llama3.2 loaded (or not)."""
    series = f'ollama_model_loaded{{model="{MODEL}"}}'
    deadline = time.monotonic() + 10
    while (series in client.get("/metrics").text) != loaded:
        assert time.monotonic() < deadline, f"the poller never saw {MODEL} loaded={loaded}"
        time.sleep(0.1)


def instant(prometheus: str, promql: str) -> dict[str, Any]:
    answer: dict[str, Any] = httpx.get(
        prometheus + "/api/v1/query", params={"query": promql}, timeout=10
    ).json()
    return answer


def has_data(answer: dict[str, Any]) -> bool:
    """Some series with a number that is not NaN (histogram_quantile without traffic)."""
    data = answer["data"]
    samples = [data["result"]] if data["resultType"] == "scalar" else data["result"]
    values = [s[1] if data["resultType"] == "scalar" else s["value"][1] for s in samples]
    return any(not math.isnan(float(value)) for value in values)


@dataclass
class Scraped:
    prometheus: str
    proxy: ProxyProcess
    deadline: float


@pytest.fixture(scope="module")
def scraped(prometheus: str, metrics_proxy: ProxyProcess) -> Scraped:
    """Prometheus after two rounds of traffic, the second after a scrape saw the first:
    rate() needs an increase between two samples, histogram_quantile() a rate."""
    with metrics_proxy.client() as client:
        sent = send_traffic(client)
        deadline = time.monotonic() + DATA_TIMEOUT
        while True:
            answer = instant(prometheus, "sum(ollama_requests_total)")
            result = answer["data"]["result"]
            if result and float(result[0]["value"][1]) >= sent:
                break
            assert time.monotonic() < deadline, f"Prometheus never scraped the proxy: {answer}"
            time.sleep(0.2)
        send_traffic(client)
    return Scraped(prometheus, metrics_proxy, time.monotonic() + DATA_TIMEOUT)


@pytest.mark.process
@pytest.mark.parametrize("target", PROMQL, ids=lambda target: target.name)
def test_promql_is_valid_and_returns_data(target: Target, scraped: Scraped) -> None:
    promql = substitute(target.expr)
    while True:
        answer = instant(scraped.prometheus, promql)
        assert answer["status"] == "success", (
            f"{target.name}: Prometheus refused {promql}: {answer.get('error')}"
        )
        if has_data(answer):
            return
        if time.monotonic() > scraped.deadline:
            pytest.fail(f"{target.name}: no data for {promql}: {answer['data']}")
        time.sleep(0.5)


def label_values(prometheus: str, query: str) -> list[str]:
    """What Grafana lists for the variable query ``label_values(SERIES, LABEL)``."""
    match = re.fullmatch(r"label_values\((\w+(?:\{[^}]*\})?),\s*(\w+)\)", substitute(query))
    assert match, query
    series, label = match.groups()
    answer = httpx.get(f"{prometheus}/api/v1/label/{label}/values", params={"match[]": series})
    assert answer.json()["status"] == "success", answer.text
    values: list[str] = answer.json()["data"]
    return values


@pytest.mark.process
def test_model_variable_query_finds_the_model(scraped: Scraped) -> None:
    variable = variable_named(load_dashboards()["model.json"], "model")
    assert MODEL in label_values(scraped.prometheus, variable["query"]["query"])


@pytest.mark.process
def test_node_variable_query_finds_the_machine(scraped: Scraped) -> None:
    """A single-machine stack: the one proxy's node (PROXY_NODE, its host name by default)."""
    variable = variable_named(load_dashboards()["overview.json"], "node")
    nodes = label_values(scraped.prometheus, variable["query"]["query"])
    assert len(nodes) == 1, nodes
    assert re.fullmatch(r"[A-Za-z0-9._-]{1,64}", nodes[0]), nodes


@pytest.mark.process
@pytest.mark.parametrize("target", EXEMPLARS, ids=lambda target: target.name)
def test_exemplars_reach_prometheus_and_name_a_record(
    target: Target, scraped: Scraped, datasources: dict[str, dict[str, Any]]
) -> None:
    [destination] = datasources["prometheus"]["jsonData"]["exemplarTraceIdDestinations"]
    label = destination["name"]
    promql = substitute(target.expr)
    while True:
        now = time.time()
        answer = httpx.get(
            scraped.prometheus + "/api/v1/query_exemplars",
            params={"query": promql, "start": now - 300, "end": now},
        ).json()
        assert answer["status"] == "success", f"{target.name}: {answer}"
        ids = [
            exemplar["labels"][label]
            for series in answer["data"]
            for exemplar in series["exemplars"]
            if label in exemplar["labels"]
        ]
        if ids:
            break
        if time.monotonic() > scraped.deadline:
            pytest.fail(f"{target.name}: no exemplar with {label!r} for {promql}: {answer}")
        time.sleep(0.5)
    # The link opens Loki on this id: it is a record the proxy stored.
    record_id = ids[-1]
    assert ULID.fullmatch(record_id), record_id
    with scraped.proxy.client() as client:
        deadline = time.monotonic() + 10
        while (answer := client.get(f"/analytics/records/{record_id}")).status_code == 404:
            assert time.monotonic() < deadline, f"no stored record {record_id}"
            time.sleep(0.2)
        assert answer.status_code == 200, answer.text
        assert answer.json()["id"] == record_id
