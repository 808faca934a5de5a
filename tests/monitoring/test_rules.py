"""The Prometheus files of build/monitoring: promtool's own checks and unit tests, and
what every alert must carry (severity, summary, description, a runbook that exists)."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.monitoring.expected import (
    ALERTS,
    ALERTS_TEST,
    EXPECTED,
    PROMETHEUS_CONFIG,
    PROMETHEUS_DIR,
    ROOT,
    metric_names,
    require_binary,
    rules,
)

SEVERITIES = {"critical", "warning"}


def _promtool(*args: str) -> subprocess.CompletedProcess[str]:
    promtool = require_binary("promtool")
    return subprocess.run(
        [promtool, *args], cwd=PROMETHEUS_DIR, capture_output=True, text=True, timeout=120
    )


def test_promtool_check_rules() -> None:
    out = _promtool("check", "rules", ALERTS.name)
    assert out.returncode == 0, out.stdout + out.stderr
    assert f"SUCCESS: {len(rules())} rules found" in out.stdout + out.stderr


def test_promtool_test_rules() -> None:
    out = _promtool("test", "rules", ALERTS_TEST.name)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "SUCCESS" in out.stdout + out.stderr


def test_promtool_check_config() -> None:
    """prometheus.yml parses, and its rule_files (relative to it) load."""
    out = _promtool("check", "config", PROMETHEUS_CONFIG.name)
    assert out.returncode == 0, out.stdout + out.stderr


def test_scrape_config_targets_the_server() -> None:
    cfg = yaml.safe_load(PROMETHEUS_CONFIG.read_text(encoding="utf-8"))
    assert cfg["rule_files"] == ["alerts.yml"]
    (job,) = [j for j in cfg["scrape_configs"] if j["job_name"] == "intellilog"]
    assert job.get("metrics_path", "/metrics") == "/metrics"
    assert job["static_configs"][0]["targets"] == ["localhost:8000"]
    # the alerts select the server's series by this job name
    assert all('job="intellilog"' in r["expr"] for r in rules() if re.search(r"\bup\b", r["expr"]))


def _anchors(md: Path) -> set[str]:
    """GitHub's heading anchors of a Markdown file."""
    out = set()
    for line in md.read_text(encoding="utf-8").splitlines():
        if m := re.match(r"#{1,6}\s+(.*)", line):
            slug = re.sub(r"[^\w\- ]", "", m.group(1).strip().lower()).replace(" ", "-")
            out.add(slug)
    return out


def _alerts() -> list[dict]:
    return [r for r in rules() if "alert" in r]


@pytest.mark.parametrize("rule", _alerts(), ids=lambda r: r["alert"])
def test_alert_is_documented(rule: dict) -> None:
    assert rule["alert"].startswith("IntelliLog")
    assert rule.get("labels", {}).get("severity") in SEVERITIES, rule["alert"]
    ann = rule.get("annotations", {})
    for key in ("summary", "description", "runbook_url"):
        assert ann.get(key, "").strip(), f"{rule['alert']}: no {key} annotation"
    url = ann["runbook_url"]
    path, _, anchor = url.partition("#")
    assert re.fullmatch(r"docs/runbooks/[a-z0-9-]+\.md", path), url
    assert (ROOT / path).is_file(), f"{rule['alert']}: runbook {path} does not exist"
    if anchor:
        assert anchor in _anchors(ROOT / path), f"{rule['alert']}: no heading #{anchor} in {path}"
    # the runbook names the alert it serves
    assert rule["alert"] in (ROOT / path).read_text(encoding="utf-8")


def test_alert_names_are_unique() -> None:
    names = [r["alert"] for r in _alerts()]
    assert len(names) == len(set(names))


def test_every_alert_has_a_firing_and_a_quiet_case() -> None:
    """alerts_test.yml: each alert is expected to fire somewhere and to stay quiet somewhere."""
    doc = yaml.safe_load(ALERTS_TEST.read_text(encoding="utf-8"))
    fires: set[str] = set()
    quiet: set[str] = set()
    for t in doc["tests"]:
        for case in t.get("alert_rule_test", []):
            (fires if case.get("exp_alerts") else quiet).add(case["alertname"])
    names = {r["alert"] for r in _alerts()}
    assert names - fires == set(), "alerts never expected to fire in alerts_test.yml"
    assert names - quiet == set(), "alerts never expected to stay quiet in alerts_test.yml"
    assert fires | quiet <= names, "alerts_test.yml tests alerts that alerts.yml lacks"


def test_rule_metrics_are_expected() -> None:
    """Every metric an expression uses is in tests/monitoring/expected.py."""
    for r in rules():
        unknown = metric_names(r["expr"]) - EXPECTED
        assert not unknown, f"{r.get('alert') or r.get('record')}: unknown metrics {unknown}"


def test_thresholds_as_documented() -> None:
    """The budgets the README and runbooks quote are the ones the rules use."""
    by = {r["alert"]: r for r in _alerts()}
    lat = by["IntelliLogPredictionLatencyHigh"]
    assert "histogram_quantile(0.99" in lat["expr"]
    assert "intellilog_http_request_duration_seconds_bucket" in lat["expr"]
    assert re.search(r">\s*0\.05\s*$", lat["expr"].strip()) and lat["for"] == "5m"
    acc = by["IntelliLogAccuracyLow"]
    assert acc["expr"].strip() == 'intellilog_model_accuracy_ratio{window="1h"} < 0.9'
    assert acc["for"] == "1h"
    for name in ("IntelliLogFeatureDrift", "IntelliLogModelDrift"):
        assert by[name]["expr"].strip().endswith("> 0.3") and by[name]["for"] == "10m"
    assert re.search(r">\s*0\.01\s*$", by["IntelliLogHighErrorRate"]["expr"].strip())
    assert "7200" in by["IntelliLogFeedbackStalled"]["expr"]


def test_readme_lists_every_alert() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    index = (ROOT / "docs" / "runbooks" / "README.md").read_text(encoding="utf-8")
    for r in _alerts():
        assert r["alert"] in readme, f"README.md, Monitoring: {r['alert']} missing"
        row = f"| `{r['alert']}` | {r['labels']['severity']} |"
        assert row in index, f"docs/runbooks/README.md: no row {row!r}"


def test_missing_binary_skips_or_fails_under_ci(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without promtool/prometheus the checks skip on a workstation and fail under CI=true."""
    import tests.monitoring.expected as expected

    monkeypatch.setattr(expected.shutil, "which", lambda _name: None)
    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.skip.Exception, match="apt-get install"):
        expected.require_binary("promtool")
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="CI=true"):
        expected.require_binary("promtool")
