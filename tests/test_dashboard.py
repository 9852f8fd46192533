"""``docs/grafana-dashboard.json`` and ``docs/operations.md`` query only metrics that exist (SPEC §9, issue 13).

Every PromQL expression is taken apart into the metric names it selects,
and each must be a series ``counters.py`` exports: a counter's ``_total``, a
gauge's own name, a histogram's ``_bucket``, ``_sum`` or ``_count`` (never its
bare name, which selects nothing). ``_created`` is left out: multiprocess mode,
the mode of every gunicorn deployment, does not export it.
"""

from __future__ import annotations

import json
import re
import typing as t
from pathlib import Path

import pytest
from prometheus_client.metrics import MetricWrapperBase

from streamapp import counters
from tests.test_counters import SPEC_METRICS

ROOT = Path(__file__).resolve().parent.parent
DASHBOARD = ROOT / "docs" / "grafana-dashboard.json"
OPERATIONS = ROOT / "docs" / "operations.md"

#: PromQL words that are not metric names when no "(" follows them.
_KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "bool", "and", "or", "unless"}


def exported() -> set[str]:
    """Every sample name counters.py's metrics export, with the suffixes of their types."""
    names = set()
    for value in vars(counters).values():
        if isinstance(value, MetricWrapperBase):
            for family in value.collect():
                names.update(s.name for s in family.samples if not s.name.endswith("_created"))
    return names


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression selects (functions, labels and keywords left out)."""
    expr = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)  # strings: label values, label_replace arguments
    expr = re.sub(r"\{[^}]*\}", "", expr)  # label matchers
    expr = re.sub(r"\[[^\]]*\]", "", expr)  # range and subquery durations
    expr = re.sub(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", expr)  # label lists
    expr = re.sub(r"\boffset\s+-?(?:\d+[a-z]+)+", "", expr)  # offset 5m, offset 1h30m
    expr = re.sub(r"\b\d+(?:\.\d+)?(?:e[+-]?\d+)?\b", "", expr)  # numbers, 1e3 included
    names = set()
    for match in re.finditer(r"[A-Za-z_:][A-Za-z0-9_:]*", expr):
        is_call = expr[match.end() :].lstrip().startswith("(")
        if not is_call and match.group() not in _KEYWORDS:
            names.add(match.group())
    return names


def unknown_metrics(exprs: t.Iterable[str]) -> dict[str, set[str]]:
    """Each expression that names a metric counters.py does not export, with those names."""
    known = exported()
    found = {}
    for expr in exprs:
        if not metric_names(expr):
            found[expr] = {"(no metric at all)"}
        elif metric_names(expr) - known:
            found[expr] = metric_names(expr) - known
    return found


def _dashboard() -> dict[str, t.Any]:
    return t.cast(dict[str, t.Any], json.loads(DASHBOARD.read_text()))


def _panels() -> list[dict[str, t.Any]]:
    return [p for p in _dashboard()["panels"] if p["type"] != "row"]


def _dashboard_exprs() -> list[str]:
    exprs = [target["expr"] for panel in _panels() for target in panel["targets"]]
    for variable in _dashboard()["templating"]["list"]:
        query = variable.get("query")
        if isinstance(query, dict):
            exprs.append(re.sub(r"^label_values\((.*),\s*\w+\)$", r"\1", query["query"]))
    return exprs


def _operations_exprs() -> list[str]:
    """The alert expressions docs/operations.md suggests, one per line of its ```promql blocks."""
    blocks = re.findall(r"```promql\n(.*?)```", OPERATIONS.read_text(), re.S)
    return [line.strip() for block in blocks for line in block.splitlines() if line.strip()]


@pytest.mark.parametrize(
    ("expr", "names"),
    [
        ('sum by (kind) (streamapp_open_streams{instance=~"$instance"})', {"streamapp_open_streams"}),
        (
            "histogram_quantile(0.99, sum by (le) (rate(streamapp_commit_to_send_seconds_bucket[$__rate_interval])))",
            {"streamapp_commit_to_send_seconds_bucket"},
        ),
        ("sum(rate(a_sum[5m])) by (job) / sum(rate(a_count[5m])) > 1e3", {"a_sum", "a_count"}),
        ('label_replace(up, "x", "$1", "instance", "(.*)") offset 5m', {"up"}),
        ("max(streamapp_notification_queue_usage) > bool 0.5", {"streamapp_notification_queue_usage"}),
    ],
)
def test_metric_names_are_found_in_promql(expr, names):
    assert metric_names(expr) == names


@pytest.mark.parametrize(
    "expr",
    [
        "sum(rate(streamapp_streams_opened[5m]))",  # a counter without _total
        "histogram_quantile(0.5, rate(streamapp_stream_seconds[5m]))",  # a histogram's bare name
        "rate(streamapp_events_sent_total_created[5m])",
        "streamapp_no_such_metric",
        "vector(1)",
    ],
)
def test_a_metric_that_does_not_exist_is_reported(expr):
    assert expr in unknown_metrics([expr])


def test_every_dashboard_expression_names_metrics_that_exist():
    assert unknown_metrics(_dashboard_exprs()) == {}


def test_every_suggested_alert_names_metrics_that_exist():
    exprs = _operations_exprs()
    assert exprs, "docs/operations.md has no ```promql block"
    assert unknown_metrics(exprs) == {}


def test_every_spec_metric_has_a_panel():
    used = {name for expr in _dashboard_exprs() for name in metric_names(expr)}
    for name, kind in SPEC_METRICS.items():
        series = {f"{name}_bucket", f"{name}_count", f"{name}_sum"} if kind == "histogram" else {name, f"{name}_total"}
        assert used & series, name


def test_panels_query_the_chosen_data_source():
    variables = {v["name"]: v for v in _dashboard()["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    ids = [panel["id"] for panel in _dashboard()["panels"]]
    assert len(ids) == len(set(ids))
    for panel in _panels():
        assert panel["targets"], panel["title"]
        assert panel["description"], panel["title"]
        for source in [panel["datasource"], *(target["datasource"] for target in panel["targets"])]:
            assert source == {"type": "prometheus", "uid": "${datasource}"}, panel["title"]


def test_operations_guide_explains_every_panel():
    text = OPERATIONS.read_text()
    for panel in _panels():
        assert panel["title"] in text, panel["title"]
