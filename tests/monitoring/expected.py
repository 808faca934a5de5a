"""What the monitoring files (build/monitoring, docs/runbooks) may rely on: one place.

* :data:`EXPORTED`: metric names ``server/metrics.py`` exports today. ``test_live.py``
  checks every one against a live ``intellilog serve``'s ``/metrics``.
* :data:`COMING`: metric names being added with issue 9 (live quality, drift, feedback,
  prediction log), used by the alerts and the dashboard already. A name may be missing
  while it appears nowhere in the server's source (no string literal ``"name"`` in
  ``server/**/*.py``; see :func:`in_server_source`); once it appears there, the live
  server must export it. **Make this strict** when issue 9 has landed: set
  :data:`STRICT_COMING` to True (or run with ``INTELLILOG_STRICT_METRICS=1``), then every
  coming name must be exported, and move the names to :data:`EXPORTED`.

Metric names are read out of PromQL and prose with :data:`NAME` (``intellilog_[a-z_]+``)
and the histogram/summary suffixes ``_bucket``, ``_sum``, ``_count`` are stripped
(:func:`metric_names`).
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
MONITORING = ROOT / "build" / "monitoring"
PROMETHEUS_DIR = MONITORING / "prometheus"
ALERTS = PROMETHEUS_DIR / "alerts.yml"
ALERTS_TEST = PROMETHEUS_DIR / "alerts_test.yml"
PROMETHEUS_CONFIG = PROMETHEUS_DIR / "prometheus.yml"
GRAFANA_DIR = MONITORING / "grafana"
DASHBOARD = GRAFANA_DIR / "dashboard.json"
RUNBOOKS = ROOT / "docs" / "runbooks"

#: Exported today by server/metrics.py (checked against a live server's /metrics).
EXPORTED: frozenset[str] = frozenset(
    {
        "intellilog_http_requests_total",  # counter {route, method, status}
        "intellilog_http_request_duration_seconds",  # histogram {route, method, status}
        "intellilog_prediction_duration_seconds",  # histogram {kind}: features + engine
        "intellilog_batch_rows",  # histogram
        "intellilog_micro_batch_rows",  # histogram
        "intellilog_errors_total",  # counter {kind}
        "intellilog_rate_limited_total",  # counter
        "intellilog_model_reloads_total",  # counter {result}: ok | failed
        "intellilog_model_info",  # gauge {version, engine, device}
        "intellilog_retrain_last_run_timestamp_seconds",  # gauge {outcome}: the run log
        "intellilog_retrain_runs",  # gauge {outcome}: runs in the run log
        "intellilog_retrain_first_run_timestamp_seconds",  # gauge: 0 without a run log
        # counter: rows the log writer's ring had no room for (logged in the worker)
        "intellilog_prediction_log_relay_overflow_rows_total",
    }
)

# COMING (issue 9): may be absent until the name shows up in server/**/*.py; from then on
# the live server must export it (tests/monitoring/test_live.py). STRICT_COMING = True
# turns "may be absent" off.
COMING: frozenset[str] = frozenset(
    {
        "intellilog_model_mae_minutes",  # gauge {version, arm, window}: 1h | 24h | 7d
        "intellilog_model_accuracy_ratio",  # gauge {version, arm, window}
        "intellilog_model_interval_coverage_ratio",  # gauge {version, arm, window}
        "intellilog_feedback_rows_total",  # counter {result}: inserted | updated | unknown
        "intellilog_feedback_lag_seconds",  # gauge: age of the newest feedback row
        "intellilog_drift_score",  # gauge {feature}
        "intellilog_model_drift_score",  # gauge {version}
        "intellilog_prediction_log_rows_total",  # counter {outcome}: written|spooled|replayed|dropped
        "intellilog_prediction_log_queue_depth",  # gauge
    }
)
#: Issue 9 has landed: every COMING name must be exported.
STRICT_COMING = True

EXPECTED: frozenset[str] = EXPORTED | COMING

NAME = re.compile(r"intellilog_[a-z_]+")
_SUFFIX = re.compile(r"_(bucket|sum|count)$")


def strict_coming() -> bool:
    return STRICT_COMING or os.environ.get("INTELLILOG_STRICT_METRICS", "") not in ("", "0")


def metric_names(text: str) -> set[str]:
    """Metric names in a PromQL expression (or any text), histogram suffixes stripped.

    A match directly followed by ``(`` is a regular-expression group in a ``grep``
    command (``intellilog_feedback_(rows_total|lag_seconds)``), not a name: skipped.
    """
    names = set()
    for m in NAME.finditer(text):
        if text[m.end() : m.end() + 1] == "(":
            continue
        names.add(_SUFFIX.sub("", m.group(0).rstrip("_")))
    return names


def in_server_source(name: str) -> list[str]:
    """Files of server/**/*.py that hold ``name`` as a string literal (``"name"``)."""
    pat = re.compile(r"""["']""" + re.escape(name) + r"""["']""")
    return sorted(
        str(p.relative_to(ROOT))
        for p in (ROOT / "server").rglob("*.py")
        if pat.search(p.read_text(encoding="utf-8"))
    )


def require_binary(name: str, package: str = "prometheus") -> str:
    """The path of ``name``; skips when it is missing, fails instead under ``CI=true``."""
    path = shutil.which(name)
    if path is not None:
        return path
    reason = (
        f"{name} not found: install it with `apt-get install -y --no-install-recommends "
        f"{package}` (Debian/Ubuntu; .ci/run does this in CI)"
    )
    if os.environ.get("CI", "").strip().lower() == "true":
        pytest.fail(f"{reason}; CI=true: the monitoring checks may not be skipped")
    pytest.skip(reason)
    raise AssertionError("unreachable")


def rules() -> list[dict]:
    """Every rule of alerts.yml (alerting and recording), with its group's name."""
    import yaml

    doc = yaml.safe_load(ALERTS.read_text(encoding="utf-8"))
    return [dict(r, group=g["name"]) for g in doc["groups"] for r in g["rules"]]


def dashboard_exprs(dash: dict) -> Iterable[tuple[str, str]]:
    """(panel title, PromQL) of every target of every panel, rows' panels included."""

    def walk(panels: list[dict]) -> Iterable[dict]:
        for p in panels:
            yield p
            yield from walk(p.get("panels", []))

    for p in walk(dash["panels"]):
        for t in p.get("targets", []):
            if t.get("expr"):
                yield p["title"], t["expr"]


# ---- runbook shell blocks ------------------------------------------------------------------

_SEPARATORS = {"|", "||", "&&", ";", "&"}
_REDIRECTS = {">", ">>", "<", "2>", "&>", "2>&1"}


@dataclass(frozen=True)
class Command:
    where: str  # file:line
    argv: tuple[str, ...]  # after "intellilog"

    def __str__(self) -> str:
        return f"{self.where}: intellilog {shlex.join(self.argv)}"


def _sh_blocks(md: Path) -> list[tuple[int, str]]:
    """(line number, line) of every ```sh block line, continuation lines joined."""
    out: list[tuple[int, str]] = []
    inside = False
    pending = ""
    start = 0
    for n, line in enumerate(md.read_text(encoding="utf-8").splitlines(), 1):
        stripped = line.strip()
        if stripped.startswith("```"):
            inside = stripped in ("```sh", "```bash", "```shell") if not inside else False
            continue
        if not inside:
            continue
        if not pending:
            start = n
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        out.append((start, pending + stripped))
        pending = ""
    return out


def _commands(line: str) -> list[list[str]]:
    """The simple commands of one shell line (pipes and lists split, redirects dropped)."""
    lex = shlex.shlex(line, posix=True, punctuation_chars=True)
    lex.whitespace_split = True
    lex.commenters = "#"
    cmds: list[list[str]] = [[]]
    skip = False
    for tok in lex:
        if skip:
            skip = False
        elif tok in _SEPARATORS:
            cmds.append([])
        elif tok in _REDIRECTS:
            skip = True
        else:
            cmds[-1].append(tok)
    return [c for c in cmds if c]


def runbook_commands() -> list[Command]:
    found = []
    for md in sorted(RUNBOOKS.glob("*.md")):
        for n, line in _sh_blocks(md):
            for cmd in _commands(line):
                while cmd and re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*=.*", cmd[0]):
                    cmd = cmd[1:]  # VAR=value prefixes
                if cmd and Path(cmd[0]).name == "intellilog":
                    found.append(Command(f"{md.name}:{n}", tuple(cmd[1:])))
    return found


def runbook_urls() -> list[tuple[str, str, str]]:
    """(file:line, method, path) of every ``curl ... localhost:8000/PATH`` in a ```sh block."""
    found = []
    for md in sorted(RUNBOOKS.glob("*.md")):
        for n, line in _sh_blocks(md):
            for cmd in _commands(line):
                if not cmd or cmd[0] != "curl":
                    continue
                method = "POST" if ("-d" in cmd or "POST" in cmd) else "GET"
                for tok in cmd[1:]:
                    if m := re.match(r"(?:https?://)?localhost:8000(/[^\s?#]*)", tok):
                        found.append((f"{md.name}:{n}", method, m.group(1)))
    return found
