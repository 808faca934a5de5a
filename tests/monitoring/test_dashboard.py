"""The Grafana dashboard and provisioning files: valid, complete, and using only metrics
the server exports (or will: tests/monitoring/expected.py)."""

from __future__ import annotations

import json
import re
from typing import Any

import pytest
import yaml

from tests.monitoring.expected import (
    DASHBOARD,
    EXPECTED,
    GRAFANA_DIR,
    dashboard_exprs,
    metric_names,
)

#: What the dashboard must show: a metric for each topic of issue 9's list.
REQUIRED = {
    "latency percentiles": "intellilog_http_request_duration_seconds",
    "throughput and errors": "intellilog_http_requests_total",
    "errors by kind": "intellilog_errors_total",
    "accuracy per version and arm": "intellilog_model_accuracy_ratio",
    "MAE per version and arm": "intellilog_model_mae_minutes",
    "interval coverage": "intellilog_model_interval_coverage_ratio",
    "drift per feature": "intellilog_drift_score",
    "drift per model version": "intellilog_model_drift_score",
    "feedback lag": "intellilog_feedback_lag_seconds",
    "prediction-log spool": "intellilog_prediction_log_rows_total",
}


@pytest.fixture(scope="module")
def dash() -> dict[str, Any]:
    return json.loads(DASHBOARD.read_text(encoding="utf-8"))


def _panels(dash: dict[str, Any]) -> list[dict[str, Any]]:
    out = []
    for p in dash["panels"]:
        out.append(p)
        out.extend(p.get("panels", []))
    return out


def test_dashboard_shape(dash: dict[str, Any]) -> None:
    assert 36 <= dash["schemaVersion"] <= 41
    assert dash["uid"] and dash["title"]
    panels = _panels(dash)
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    cells: set[tuple[int, int]] = set()
    for p in panels:
        g = p["gridPos"]
        assert g["x"] >= 0 and g["w"] > 0 and g["x"] + g["w"] <= 24, p["title"]
        mine = {
            (x, y) for x in range(g["x"], g["x"] + g["w"]) for y in range(g["y"], g["y"] + g["h"])
        }
        assert not (mine & cells), f"panel {p['title']!r} overlaps another"
        cells |= mine
        if p["type"] == "row":
            continue
        assert p.get("targets"), f"panel {p['title']!r} has no query"
        assert p["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
        for t in p["targets"]:
            assert t.get("expr", "").strip(), p["title"]
            assert t.get("refId"), p["title"]


def test_template_variables_defined(dash: dict[str, Any]) -> None:
    defined = {v["name"] for v in dash["templating"]["list"]}
    text = DASHBOARD.read_text(encoding="utf-8")
    used = set(re.findall(r"\$\{?([a-z_]+)", text)) - {"__rate_interval", "__interval"}
    assert used <= defined, f"undefined variables: {used - defined}"
    (ds,) = [v for v in dash["templating"]["list"] if v["name"] == "datasource"]
    assert ds["type"] == "datasource" and ds["query"] == "prometheus"
    (window,) = [v for v in dash["templating"]["list"] if v["name"] == "window"]
    assert [o["value"] for o in window["options"]] == ["1h", "24h", "7d"]


def test_dashboard_metrics_are_expected(dash: dict[str, Any]) -> None:
    for title, expr in dashboard_exprs(dash):
        unknown = metric_names(expr) - EXPECTED
        assert not unknown, f"panel {title!r}: unknown metrics {unknown}"


@pytest.mark.parametrize("topic", sorted(REQUIRED))
def test_dashboard_covers(dash: dict[str, Any], topic: str) -> None:
    used = set().union(*(metric_names(e) for _, e in dashboard_exprs(dash)))
    assert REQUIRED[topic] in used, f"no panel for {topic} ({REQUIRED[topic]})"


def test_quality_panels_split_by_version_and_arm(dash: dict[str, Any]) -> None:
    for _title, expr in dashboard_exprs(dash):
        if metric_names(expr) & {
            "intellilog_model_accuracy_ratio",
            "intellilog_model_mae_minutes",
            "intellilog_model_interval_coverage_ratio",
        }:
            assert 'window="$window"' in expr, expr
    legends = [
        t.get("legendFormat", "")
        for p in _panels(dash)
        for t in p.get("targets", [])
        if "intellilog_model_accuracy_ratio" in t.get("expr", "")
    ]
    assert legends and all("{{version}}" in lg and "{{arm}}" in lg for lg in legends)


def test_provisioning_files() -> None:
    ds = yaml.safe_load((GRAFANA_DIR / "datasource.yml").read_text(encoding="utf-8"))
    assert ds["apiVersion"] == 1
    (source,) = ds["datasources"]
    assert source["type"] == "prometheus" and source["url"].startswith("http")
    prov = yaml.safe_load((GRAFANA_DIR / "dashboards.yml").read_text(encoding="utf-8"))
    (provider,) = prov["providers"]
    assert provider["type"] == "file" and provider["options"]["path"]
