"""Live quality per model version and arm (server.monitoring.quality): every figure equals
one computed here with numpy from the same rows, windows cut on the feedback's completion
time at their exact edges, unknown feedback and lag counted, gauges set and stale series
removed, ``intellilog quality`` (table, JSON, errors), the same snapshot on PostgreSQL, and
predictions and feedback driven through the HTTP app."""

from __future__ import annotations

import asyncio
import json
import logging
import math
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from prometheus_client import REGISTRY

from kernels.errors import ConfigError, StoreError
from server.monitoring import quality as q
from server.monitoring.quality import (
    DEFAULT_LOOKBACK_S,
    QualityMonitor,
    QualitySnapshot,
    Window,
    format_snapshot,
    parse_window,
    quality_route_payload,
    quality_snapshot,
)
from server.store import FeedbackRow, PredictionRow, Store, open_store
from tests.pgserver import PgServer, postgres  # noqa: F401  (the session fixture)

NOW = 1_750_000_000.0
TENANT = "t1"
TOL = 5.0
HOUR, DAY = 3600.0, 86_400.0
WINDOWS = (("1h", HOUR), ("24h", DAY), ("7d", 7 * DAY))
GROUPS = (("v1", "production"), ("v1", "candidate"), ("v2", "production"), ("v2", "candidate"))


# ---- the rows ----------------------------------------------------------------------------------


class Data:
    """Predictions and feedback of a tenant (plus another tenant's, to be ignored)."""

    def __init__(self) -> None:
        self.preds: list[PredictionRow] = []
        self.feedback: list[FeedbackRow] = []
        self._n = 0

    def pred(
        self,
        version: str,
        arm: str,
        order: str | None,
        created: float,
        eta: float,
        p10: float,
        p90: float,
        tenant: str = TENANT,
    ) -> None:
        self._n += 1
        self.preds.append(
            PredictionRow(
                row_id=f"r{self._n:04d}",
                request_id=f"q{self._n}",
                order_id=order,
                tenant=tenant,
                model_version=version,
                arm=arm,
                inputs="{}",
                features=b"\x00\x00\x80\x3f",
                eta=eta,
                p10=p10,
                p90=p90,
                created_at=created,
            )
        )

    def fb(
        self, order: str, actual: float, completed: float, received: float, tenant: str = TENANT
    ) -> None:
        self.feedback.append(
            FeedbackRow(
                order_id=order,
                tenant=tenant,
                actual_minutes=actual,
                completed_at=completed,
                received_at=received,
            )
        )

    def delivery(
        self,
        version: str,
        arm: str,
        order: str,
        age: float,
        *,
        took: float = 1800.0,
        eta: float = 30.0,
        lo: float = 5.0,
        hi: float = 7.0,
        actual: float | None = None,
        now: float = NOW,
    ) -> None:
        """A prediction made ``took`` seconds before its delivery completed ``age`` seconds
        before ``now``, with its feedback received 45 s after completion."""
        completed = now - age
        self.pred(version, arm, order, completed - took, eta, eta - lo, eta + hi)
        self.fb(order, eta + 1.0 if actual is None else actual, completed, completed + 45.0)


def dataset(now: float = NOW, *, edges: bool = True, seed: int = 7) -> Data:
    """Random deliveries of four (version, arm) groups at ages spread over 9 days, and
    (``edges``) rows exactly on the window edges, the lookback's and the metrics'."""
    rng = np.random.default_rng(seed)
    d = Data()
    ages = {
        ("v1", "production"): rng.uniform(60, 8.5 * DAY, 40),
        ("v1", "candidate"): rng.uniform(60, 3 * DAY, 15),
        ("v2", "production"): rng.uniform(60, 20 * HOUR, 25),
        ("v2", "candidate"): rng.uniform(1.5 * DAY, 6 * DAY, 8),  # only in the 7d window
    }
    for (version, arm), group_ages in ages.items():
        for i, age in enumerate(group_ages):
            eta = float(rng.uniform(15, 60))
            d.delivery(
                version,
                arm,
                f"{version}-{arm}-{i}",
                float(age),
                took=float(rng.uniform(600, 5400)),
                eta=eta,
                lo=float(rng.uniform(3, 8)),
                hi=float(rng.uniform(3, 10)),
                actual=eta + float(rng.normal(0.5, 6.0)),
                now=now,
            )
    if edges:
        d.delivery("v1", "production", "edge-1h-in", HOUR, now=now)  # completed at now - 1h
        d.delivery("v1", "production", "edge-1h-out", HOUR + 0.5, now=now)
        d.delivery("v1", "production", "edge-24h-in", DAY, now=now)
        d.delivery("v1", "production", "edge-24h-out", DAY + 0.5, now=now)
        d.delivery("v1", "candidate", "edge-7d-in", 7 * DAY, now=now)
        d.delivery("v1", "candidate", "edge-7d-out", 7 * DAY + 0.5, now=now)
        # |error| == tolerance exactly: accurate; actual == p10 and == p90: covered
        d.delivery("v2", "production", "tol-exact", 120.0, eta=30.0, actual=35.0, now=now)
        d.delivery("v2", "production", "tol-over", 130.0, eta=30.0, actual=35.25, now=now)
        d.delivery("v2", "production", "on-p10", 140.0, eta=30.0, lo=4.0, actual=26.0, now=now)
        d.delivery("v2", "production", "on-p90", 150.0, eta=30.0, hi=6.0, actual=36.0, now=now)
        # a sender whose clock runs ahead: completed "in the future", in every window
        completed = now + 30.0
        d.pred("v1", "production", "future", completed - 900.0, 20.0, 15.0, 28.0)
        d.fb("future", 22.0, completed, now - 5.0)
        # predicted 20 h before completing 7d - 1h ago: within the lookback, counted
        d.delivery("v1", "candidate", "long-in", 7 * DAY - HOUR, took=20 * HOUR, now=now)
        # predicted 30 h before completing 7d - 1h ago: before the lookback, not counted
        d.delivery("v1", "candidate", "long-out", 7 * DAY - HOUR, took=30 * HOUR, now=now)
        # feedback naming no logged prediction, on the 1h edge and just outside it
        d.fb("ghost-edge-in", 25.0, now - HOUR, now - HOUR + 60.0)
        d.fb("ghost-edge-out", 25.0, now - HOUR - 0.5, now - HOUR + 60.0)
        # one order predicted twice (a re-quote): each prediction is scored
        d.pred("v1", "production", "requote", now - 3000.0, 40.0, 33.0, 48.0)
        d.delivery(
            "v1", "production", "requote", 600.0, took=1200.0, eta=42.0, actual=47.0, now=now
        )
    # feedback naming no logged prediction, at several ages
    for i, age in enumerate((300.0, 5 * HOUR, 3 * DAY, 10 * DAY)):
        d.fb(f"ghost-{i}", 25.0, now - age, now - age + 60.0)
    # predictions without feedback, and another tenant's rows: not counted
    d.pred("v1", "production", "no-feedback", now - 600.0, 30.0, 25.0, 36.0)
    d.pred("v1", "production", None, now - 500.0, 30.0, 25.0, 36.0)
    d.pred("v1", "production", "other", now - 900.0, 10.0, 5.0, 15.0, tenant="t2")
    d.fb("other", 99.0, now - 300.0, now - 1.0, tenant="t2")
    d.fb("v1-production-0", 99.0, now - 300.0, now - 2.0, tenant="t2")
    return d


# ---- what the figures must be, computed here ---------------------------------------------------


def expected(
    d: Data,
    now: float,
    windows: Sequence[tuple[str, float]] = WINDOWS,
    tol: float = TOL,
    lookback: float = DEFAULT_LOOKBACK_S,
    tenant: str = TENANT,
) -> dict[str, Any]:
    since = now - max(s for _, s in windows) - lookback
    fb = {f.order_id: f for f in d.feedback if f.tenant == tenant}
    known = {p.order_id for p in d.preds if p.tenant == tenant}
    joined = sorted(
        (
            (p, fb[p.order_id])
            for p in d.preds
            if p.tenant == tenant and p.created_at >= since and p.order_id in fb
        ),
        key=lambda pf: (pf[0].created_at, pf[0].row_id),
    )
    groups: dict[tuple[str, str, str], dict[str, Any]] = {}
    totals = {}
    for label, secs in windows:
        cut = now - secs
        inside = [(p, f) for p, f in joined if f.completed_at >= cut]
        recent = [f for f in fb.values() if f.received_at >= since and f.completed_at >= cut]
        totals[label] = {
            "window": label,
            "seconds": secs,
            "joined": len(inside),
            "feedback": len(recent),
            "unknown": sum(1 for f in recent if f.order_id not in known),
        }
        for version, arm in sorted({(p.model_version, p.arm) for p, _ in inside}):
            sel = [(p, f) for p, f in inside if (p.model_version, p.arm) == (version, arm)]
            eta = np.array([p.eta for p, _ in sel])
            lo = np.array([p.p10 for p, _ in sel])
            hi = np.array([p.p90 for p, _ in sel])
            actual = np.array([f.actual_minutes for _, f in sel])
            err = np.abs(actual - eta)
            groups[(version, arm, label)] = {
                "model_version": version,
                "arm": arm,
                "window": label,
                "count": len(sel),
                "mae": float(err.mean()),
                "p90_ae": float(np.quantile(err, 0.9)),
                "rmse": float(np.sqrt(np.mean(err**2))),
                "accuracy": float(np.mean(err <= tol)),
                "coverage": float(np.mean((actual >= lo) & (actual <= hi))),
                "width": float(np.mean(hi - lo)),
                "bias": float(np.mean(eta - actual)),
            }
    recent_all = [f for f in fb.values() if f.received_at >= since]
    return {
        "groups": groups,
        "totals": totals,
        "newest_received_at": max(f.received_at for f in fb.values()),
        "newest_completed_at": max(f.completed_at for f in recent_all),
    }


def by_key(groups: list[dict[str, Any]]) -> dict[tuple[str, str, str], dict[str, Any]]:
    return {(g["model_version"], g["arm"], g["window"]): g for g in groups}


def assert_snapshot(snap: QualitySnapshot, exp: dict[str, Any], now: float) -> None:
    order = {label: i for i, (label, _) in enumerate(WINDOWS)}
    keys = sorted(exp["groups"], key=lambda k: (k[0], k[1], order[k[2]]))
    got = [(g.model_version, g.arm, g.window) for g in snap.groups]
    assert got == keys
    for g in snap.groups:
        want = exp["groups"][(g.model_version, g.arm, g.window)]
        assert g.to_dict() == want, (g.model_version, g.arm, g.window)  # exact equality
    assert [t.to_dict() for t in snap.totals] == list(exp["totals"].values())
    assert snap.newest_received_at == exp["newest_received_at"]
    assert snap.newest_completed_at == exp["newest_completed_at"]
    assert snap.feedback_lag_seconds == now - exp["newest_received_at"]
    assert snap.completed_lag_seconds == now - exp["newest_completed_at"]


# ---- stores ------------------------------------------------------------------------------------


def run(coro: Any) -> Any:
    return asyncio.run(coro)


async def filled(url: str, d: Data) -> Store:
    store = await open_store(url)
    await store.write_predictions(d.preds)
    await store.write_feedback(d.feedback)
    return store


def snapshot_of(url: str, d: Data, **kw: Any) -> QualitySnapshot:
    async def body() -> QualitySnapshot:
        store = await filled(url, d)
        try:
            return await quality_snapshot(store, TENANT, tolerance_minutes=TOL, **kw)
        finally:
            await store.close()

    result: QualitySnapshot = run(body())
    return result


@pytest.fixture(params=["sqlite", "postgres"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A fresh database: a SQLite file, or a new database on the session's PostgreSQL."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'db' / 'intellilog.db'}"
    server: PgServer = request.getfixturevalue("postgres")
    return server.new_database()


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'db' / 'intellilog.db'}"


# ---- the snapshot ------------------------------------------------------------------------------


def test_snapshot_figures_equal_numpy_on_the_same_rows(db_url: str) -> None:
    d = dataset()
    snap = snapshot_of(db_url, d, now=NOW)
    exp = expected(d, NOW)
    assert_snapshot(snap, exp, NOW)
    assert snap.tenant == TENANT and snap.now == NOW and snap.tolerance_minutes == TOL
    assert [w.label for w in snap.windows] == ["1h", "24h", "7d"]
    # the group with rows only 1.5 to 6 days old is only in the 7d window
    assert snap.group("v2", "candidate", "7d") is not None
    assert snap.group("v2", "candidate", "24h") is None
    assert snap.group("v2", "candidate", "1h") is None
    # unknown feedback: ghost-edge-in (1 h), ghost-0 (5 min); in 24h also ghost-edge-out
    # (1 h 0.5 s) and ghost-1 (5 h); in 7d also ghost-2 (3 days); ghost-3 is 10 days old
    assert [t.unknown for t in snap.totals] == [2, 4, 5]


def test_windows_cut_on_completion_time_at_their_exact_edges(sqlite_url: str) -> None:
    d = dataset()
    snap = snapshot_of(sqlite_url, d, now=NOW)
    rows = {
        w: {f.order_id for p, f in _joined_in(d, NOW, secs)} for w, secs in WINDOWS
    }  # cross-check of the rule itself, independent of expected()
    assert {"edge-1h-in", "future", "requote"} <= rows["1h"]
    assert "edge-1h-out" not in rows["1h"] and "edge-1h-out" in rows["24h"]
    assert "edge-24h-in" in rows["24h"] and "edge-24h-out" not in rows["24h"]
    assert "edge-24h-out" in rows["7d"]
    assert "edge-7d-in" in rows["7d"] and "edge-7d-out" not in rows["7d"]
    assert "long-in" in rows["7d"] and "long-out" not in rows["7d"]
    for label, _ in WINDOWS:
        assert sum(g.count for g in snap.groups if g.window == label) == len(
            [1 for _ in _joined_in(d, NOW, dict(WINDOWS)[label])]
        )
    # one second later the rows on the edges have left their windows
    later = snapshot_of(sqlite_url.replace("intellilog.db", "later.db"), d, now=NOW + 1.0)
    assert_snapshot(later, expected(d, NOW + 1.0), NOW + 1.0)
    v1p = snap.group("v1", "production", "1h")
    v1p_later = later.group("v1", "production", "1h")
    assert v1p is not None and v1p_later is not None
    assert v1p_later.count == v1p.count - 1  # edge-1h-in is out


def _joined_in(d: Data, now: float, secs: float) -> list[tuple[PredictionRow, FeedbackRow]]:
    since = now - 7 * DAY - DEFAULT_LOOKBACK_S
    fb = {f.order_id: f for f in d.feedback if f.tenant == TENANT}
    return [
        (p, fb[p.order_id])
        for p in d.preds
        if p.tenant == TENANT
        and p.order_id in fb
        and p.created_at >= since
        and fb[p.order_id].completed_at >= now - secs
    ]


def test_metric_edges_tolerance_and_interval_bounds(sqlite_url: str) -> None:
    d = Data()
    d.delivery("v2", "production", "tol-exact", 120.0, eta=30.0, actual=35.0)
    d.delivery("v2", "production", "tol-over", 130.0, eta=30.0, actual=35.25)
    d.delivery("v2", "production", "on-p10", 140.0, eta=30.0, lo=4.0, actual=26.0)
    d.delivery("v2", "production", "on-p90", 150.0, eta=30.0, hi=6.0, actual=36.0)
    snap = snapshot_of(sqlite_url, d, now=NOW, windows=("1h",))
    (g,) = snap.groups
    # errors 5, 5.25, 4, 6: within 5 min: 5 and 4; actuals 35 (in [25, 37]), 35.25 (in),
    # 26 (== p10), 36 (== p90): all covered
    assert (g.count, g.accuracy, g.coverage) == (4, 0.5, 1.0)
    assert g.mae == (5.0 + 5.25 + 4.0 + 6.0) / 4
    assert g.bias == (-5.0 - 5.25 + 4.0 - 6.0) / 4


def test_custom_windows_lookback_and_empty_store(sqlite_url: str) -> None:
    d = dataset()
    wins = (("15m", 900.0), ("2d", 2 * DAY))
    snap = snapshot_of(sqlite_url, d, now=NOW, windows=("15m", "2d"), lookback_s=0.0)
    exp = expected(d, NOW, windows=wins, lookback=0.0)
    assert [(g.model_version, g.arm, g.window) for g in snap.groups] == sorted(
        exp["groups"], key=lambda k: (k[0], k[1], 0 if k[2] == "15m" else 1)
    )
    for g in snap.groups:
        assert g.to_dict() == exp["groups"][(g.model_version, g.arm, g.window)]
    assert [t.to_dict() for t in snap.totals] == list(exp["totals"].values())

    empty = snapshot_of(sqlite_url.replace("intellilog.db", "empty.db"), Data(), now=NOW)
    assert empty.groups == ()
    assert [(t.joined, t.feedback, t.unknown) for t in empty.totals] == [(0, 0, 0)] * 3
    assert empty.newest_received_at is None and empty.feedback_lag_seconds is None
    body = empty.to_dict()
    assert body["feedback"] == {
        "newest_received_at": None,
        "newest_completed_at": None,
        "lag_seconds": None,
        "completed_lag_seconds": None,
    }
    assert "no feedback joined" in format_snapshot(empty)


def test_to_dict_is_json_and_the_route_payload(sqlite_url: str) -> None:
    d = dataset()
    snap = snapshot_of(sqlite_url, d, now=NOW)
    body = json.loads(json.dumps(snap.to_dict(), allow_nan=False))
    exp = expected(d, NOW)
    assert body["tenant"] == TENANT and body["generated_at"] == NOW
    assert body["generated_at_iso"] == "2025-06-15T15:06:40Z"
    assert body["tolerance_minutes"] == TOL
    assert body["window_rule"] == "feedback completed_at >= generated_at - window"
    assert body["windows"] == list(exp["totals"].values())
    assert by_key(body["groups"]) == exp["groups"]
    assert body["feedback"]["lag_seconds"] == NOW - exp["newest_received_at"]

    payload = quality_route_payload(snap, now=NOW + 12.5)
    assert payload["status"] == "ok" and payload["age_seconds"] == 12.5
    assert {k: v for k, v in payload.items() if k not in ("status", "age_seconds")} == (
        snap.to_dict()
    )
    pending = quality_route_payload(None)
    assert pending["status"] == "pending" and "groups" not in pending


def test_store_errors_and_bad_arguments(sqlite_url: str) -> None:
    async def body() -> None:
        store = await open_store(sqlite_url)
        await store.close()
        with pytest.raises(StoreError):
            await quality_snapshot(store, TENANT, tolerance_minutes=TOL, now=NOW)
        with pytest.raises(ConfigError, match="tolerance"):
            await quality_snapshot(store, TENANT, tolerance_minutes=0.0)
        with pytest.raises(ConfigError, match="windows='1y'"):
            await quality_snapshot(store, TENANT, tolerance_minutes=TOL, windows=("1y",))
        with pytest.raises(ConfigError, match="twice"):
            await quality_snapshot(store, TENANT, tolerance_minutes=TOL, windows=("1h", "1H"))

    run(body())


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("15m", 900.0), ("1h", 3600.0), ("24h", 86_400.0), ("7d", 604_800.0), ("90s", 90.0)],
)
def test_parse_window(text: str, seconds: float) -> None:
    assert parse_window(text) == Window(text, seconds)


@pytest.mark.parametrize("bad", ["", "h", "0h", "-1h", "1.5h", "1y", "1 h x", "24"])
def test_parse_window_refuses_naming_the_flag(bad: str) -> None:
    with pytest.raises(ConfigError) as e:
        parse_window(bad, "--window")
    msg = str(e.value)
    assert msg.startswith(f"--window={bad!r}: ") and "\n" not in msg


def test_tolerance_and_lookback_from_the_spec() -> None:
    from kernels.spec import load_spec

    spec = load_spec(None)
    assert q.tolerance_minutes_for(spec) == spec.goal.tolerance * spec.goal.minutes
    assert q.lookback_for(spec) == spec.goal.max * spec.goal.minutes * 60.0
    assert q.lookback_for(spec) == DEFAULT_LOOKBACK_S  # the delivery spec's 1440 minutes


# ---- the monitor and its gauges ----------------------------------------------------------------

GAUGES = {
    "intellilog_model_mae_minutes": "mae",
    "intellilog_model_accuracy_ratio": "accuracy",
    "intellilog_model_interval_coverage_ratio": "coverage",
}


def series(name: str) -> dict[tuple[str, str, str], float]:
    """The samples of gauge ``name`` in the default registry, by (version, arm, window)."""
    out = {}
    for fam in REGISTRY.collect():
        for s in fam.samples:
            if s.name == name:
                out[(s.labels["version"], s.labels["arm"], s.labels["window"])] = s.value
    return out


@pytest.fixture(autouse=True)
def clean_gauges() -> Any:
    """No series of other tests' monitors (e.g. an app's) in the way, none left behind."""
    gauges = (q.MODEL_MAE, q.MODEL_ACCURACY, q.MODEL_COVERAGE)
    for g in gauges:
        g.clear()
    yield
    for g in gauges:
        g.clear()


class Records(logging.Handler):
    """The records of one logger (the product's loggers may not propagate to caplog)."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


class Clock:
    def __init__(self, t: float) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def test_monitor_sets_gauges_and_removes_stale_series(sqlite_url: str) -> None:
    d = dataset()
    clock = Clock(NOW)

    async def body() -> None:
        store = await filled(sqlite_url, d)
        mon = QualityMonitor(store, TENANT, tolerance_minutes=TOL, clock=clock)
        try:
            assert mon.snapshot is None
            snap = await mon.refresh()
            assert snap is not None and mon.snapshot is snap
            exp = expected(d, NOW)
            for name, fig in GAUGES.items():
                assert series(name) == {k: v[fig] for k, v in exp["groups"].items()}, name
            lag = REGISTRY.get_sample_value("intellilog_feedback_lag_seconds")
            assert lag == NOW - exp["newest_received_at"]

            # 2 days later: the 1h and 24h windows are empty, the 7d one has fewer groups
            clock.t = NOW + 2 * DAY
            await mon.refresh()
            exp2 = expected(d, clock.t)
            assert {k[2] for k in exp2["groups"]} == {"7d"}
            for name, fig in GAUGES.items():
                assert series(name) == {k: v[fig] for k, v in exp2["groups"].items()}, name
            assert REGISTRY.get_sample_value("intellilog_feedback_lag_seconds") == (
                clock.t - exp["newest_received_at"]
            )

            # 30 days later: nothing left at all
            clock.t = NOW + 30 * DAY
            await mon.refresh()
            for name in GAUGES:
                assert series(name) == {}, name
        finally:
            await store.close()

    run(body())


def _empty(now: float) -> QualitySnapshot:
    return QualitySnapshot(
        tenant=TENANT,
        now=now,
        tolerance_minutes=TOL,
        lookback_s=DEFAULT_LOOKBACK_S,
        windows=(Window("1h", HOUR),),
        groups=(),
        totals=(),
        newest_received_at=None,
        newest_completed_at=None,
    )


def test_metrics_endpoint_text_shows_the_gauges(sqlite_url: str) -> None:
    from server import metrics

    d = Data()
    d.delivery("v1", "production", "a", 60.0, eta=30.0, actual=33.0)

    async def body() -> bytes:
        store = await filled(sqlite_url, d)
        mon = QualityMonitor(lambda: store, TENANT, tolerance_minutes=TOL, clock=Clock(NOW))
        try:
            await mon.refresh()
            return metrics.render()
        finally:
            await store.close()

    text = run(body()).decode()
    labels = '{arm="production",version="v1",window="1h"}'
    assert f"intellilog_model_mae_minutes{labels} 3.0" in text
    assert f"intellilog_model_accuracy_ratio{labels} 1.0" in text
    assert f"intellilog_model_interval_coverage_ratio{labels} 1.0" in text
    assert "intellilog_feedback_lag_seconds 15.0" in text  # received 45 s after completing


def test_multiprocess_mode_marks_stale_series_nan(
    sqlite_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """prometheus-client cannot remove a series in multiprocess mode: it is set to NaN."""
    d = Data()
    d.delivery("v9", "production", "a", 60.0)

    async def body() -> None:
        store = await filled(sqlite_url, d)
        mon = QualityMonitor(store, TENANT, tolerance_minutes=TOL, clock=Clock(NOW))
        try:
            await mon.refresh()
            monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", "/nonexistent")
            mon.publish(_empty(NOW))
            values = series("intellilog_model_mae_minutes")
            assert math.isnan(values[("v9", "production", "1h")])
            monkeypatch.delenv("PROMETHEUS_MULTIPROC_DIR")
        finally:
            await store.close()

    run(body())


def test_run_refreshes_on_a_timer_and_survives_store_failures(sqlite_url: str) -> None:
    d = Data()
    d.delivery("v1", "production", "a", 60.0)
    state: dict[str, Store | None] = {"store": None}

    async def body() -> None:
        store = await filled(sqlite_url, d)
        closed = await open_store(sqlite_url)
        await closed.close()
        mon = QualityMonitor(
            lambda: state["store"], TENANT, tolerance_minutes=lambda: TOL, clock=Clock(NOW)
        )
        task = asyncio.create_task(mon.run(0.01))
        try:
            await asyncio.sleep(0.05)
            assert mon.snapshot is None and not task.done()  # no store yet: nothing
            state["store"] = closed  # a store that fails
            await asyncio.sleep(0.05)
            assert mon.snapshot is None and not task.done()
            state["store"] = store
            for _ in range(200):
                if mon.snapshot is not None:
                    break
                await asyncio.sleep(0.01)
            assert mon.snapshot is not None and mon.snapshot.groups[0].count == 1
            assert not task.done()
        finally:
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            await store.close()
        with pytest.raises(ConfigError, match="interval_s"):
            await mon.run(0.0)

    logger = logging.getLogger("intellilog.monitoring")
    seen = Records()
    logger.addHandler(seen)
    try:
        run(body())
    finally:
        logger.removeHandler(seen)
    failed = [r for r in seen.records if getattr(r, "event", "") == "quality_refresh_failed"]
    assert len(failed) == 1  # once per distinct message, not once per tick
    assert "not open" in failed[0].getMessage()


# ---- intellilog quality ------------------------------------------------------------------------


@pytest.fixture
def cli_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Callable[..., Any]:
    """Run ``intellilog quality ...`` in an empty folder with DATABASE_URL set; returns
    (exit code, stdout, stderr)."""
    from server.cli import main

    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)  # no .env
    for var in ("TENANT_ID", "MODEL_ARTIFACT_PATH", "INTELLILOG_DEBUG"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("DATABASE_URL", f"sqlite:///{tmp_path / 'cli' / 'intellilog.db'}")
    monkeypatch.setenv("MODEL_ARTIFACT_PATH", str(tmp_path / "no-models"))

    def cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
        capsys.readouterr()
        code = main(["quality", *argv])
        out, err = capsys.readouterr()
        return code, out, err

    cli.url = f"sqlite:///{tmp_path / 'cli' / 'intellilog.db'}"  # type: ignore[attr-defined]
    return cli


def fill(url: str, d: Data) -> None:
    async def body() -> None:
        store = await filled(url, d)
        await store.close()

    run(body())


def test_cli_table_and_json(cli_env: Any, capsys: pytest.CaptureFixture[str]) -> None:
    now = time.time()
    d = dataset(now, edges=False)  # no row near an edge: the command's clock is later
    fill(cli_env.url, d)
    for tenant_args in ([], ["--tenant", TENANT]):
        code, out, err = cli_env(capsys, "--tolerance", "5", "--json", *tenant_args)
        if not tenant_args:  # the default tenant has no rows
            assert code == 0, err
            assert json.loads(out)["groups"] == [] and json.loads(out)["tenant"] == "default"
            continue
        assert code == 0, err
        body = json.loads(out)
        exp = expected(d, body["generated_at"])
        assert now <= body["generated_at"] <= time.time()
        assert by_key(body["groups"]) == exp["groups"]
        assert body["windows"] == list(exp["totals"].values())
        assert body["tolerance_minutes"] == 5.0

    code, out, err = cli_env(capsys, "--tenant", TENANT, "--tolerance", "4", "--window", "24h")
    assert code == 0, err
    lines = out.splitlines()
    assert "accuracy: |ETA - actual| <= 4 min" in lines[0]
    assert lines[1].split() == [
        *("version", "arm", "window", "rows", "MAE", "p90", "AE", "bias"),
        *("accuracy", "coverage"),
    ]
    exp = expected(d, time.time(), windows=(("24h", DAY),), tol=4.0)
    table = [ln.split() for ln in lines[2 : 2 + len(exp["groups"])]]
    for (version, arm, window), g in sorted(exp["groups"].items()):
        row = next(r for r in table if r[:3] == [version, arm, window])
        assert row[3:] == [
            str(g["count"]),
            f"{g['mae']:.2f}",
            f"{g['p90_ae']:.2f}",
            f"{g['bias']:+.2f}",
            f"{g['accuracy'] * 100:.1f}%",
            f"{g['coverage'] * 100:.1f}%",
        ]
    t = exp["totals"]["24h"]
    assert (
        f"   24h: {t['joined']} predictions joined, {t['feedback']} feedback rows, "
        f"{t['unknown']} for orders with no logged prediction" in lines
    )
    assert lines[-1].startswith("newest feedback received ")


def test_cli_errors_are_one_line(cli_env: Any, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = cli_env(capsys, "--window", "5x", "--tolerance", "5")
    assert code == 2 and out == ""
    assert err.strip().count("\n") == 0
    assert err.startswith("error: --window='5x': use a whole number")

    code, out, err = cli_env(capsys)  # no model in the registry and no --tolerance
    assert code == 2 and out == "" and err.strip().count("\n") == 0
    assert "--tolerance MINUTES" in err and "no tolerance" in err

    code, out, err = cli_env(capsys, "--tolerance", "-1")
    assert code == 2 and "--tolerance=-1.0: must be > 0" in err


# ---- with a served model: the spec's tolerance, and end to end over HTTP ------------------------


@pytest.mark.slow
def test_cli_reads_the_tolerance_from_the_production_model(
    models: Any, cli_env: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    from server.models import model_spec
    from training.registry import Registry

    reg = Registry(models.registry)
    spec = model_spec(reg.manifest("production"), reg.resolve("production"))
    now = time.time()
    d = dataset(now, edges=False)
    fill(cli_env.url, d)
    code, out, err = cli_env(
        capsys, "--registry", str(models.registry), "--tenant", TENANT, "--json"
    )
    assert code == 0, err
    body = json.loads(out)
    tol = spec.goal.tolerance * spec.goal.minutes
    assert body["tolerance_minutes"] == tol
    assert body["lookback_seconds"] == spec.goal.max * spec.goal.minutes * 60.0
    exp = expected(d, body["generated_at"], tol=tol)
    assert by_key(body["groups"]) == exp["groups"]


@pytest.mark.slow
def test_quality_of_predictions_and_feedback_sent_over_http(
    registry: Path, make_client: Callable[..., Any], tmp_path: Path
) -> None:
    """Predictions through POST /v1/predict and /v1/predict/batch, feedback through
    POST /v1/feedback; the snapshot's figures equal those computed from the answers."""
    from tests.e2e import servekit as kit

    url = f"sqlite:///{tmp_path / 'http' / 'intellilog.db'}"
    c = make_client(registry, database_url=url)

    def post(path: str, body: Any) -> Any:
        r = c.post(path, content=json.dumps(body), headers={"content-type": "application/json"})
        assert r.status_code in (200, 202), r.text
        return r.json()

    rows = kit.sample_rows(20, seed=61)
    answers = [post("/v1/predict", r) for r in rows[:8]]
    answers += post("/v1/predict/batch", {"deliveries": rows[8:]})["predictions"]
    assert [a["order_id"] for a in answers] == [r["order_id"] for r in rows]
    t0 = time.time()
    rng = np.random.default_rng(3)
    ages = [300.0 * (i + 1) for i in range(len(answers))]  # 5 min .. 100 min: 1h cuts them
    actual = [a["eta_minutes"] + float(rng.normal(0.0, 6.0)) for a in answers]
    feedback = [
        {"order_id": a["order_id"], "actual_minutes": y, "completed_at": t0 - age}
        for a, y, age in zip(answers, actual, ages, strict=True)
    ]
    feedback.append({"order_id": "never-predicted", "actual_minutes": 20.0, "completed_at": t0})
    got = post("/v1/feedback", {"feedback": feedback})
    assert (got["accepted"], got["unknown_order_ids"], got["spooled"]) == (21, 1, 0)

    async def read() -> QualitySnapshot:
        store = await open_store(url)
        try:
            return await quality_snapshot(
                store, "default", tolerance_minutes=TOL, windows=("1h", "24h"), now=t0 + 1.0
            )
        finally:
            await store.close()

    snap = run(read())
    version = answers[0]["model_version"]
    eta = np.array([a["eta_minutes"] for a in answers])
    lo = np.array([a["eta_p10"] for a in answers])
    hi = np.array([a["eta_p90"] for a in answers])
    y = np.array(actual)
    # the store orders rows by prediction time, then row id: the 8 single requests, then the
    # batch's rows (one time) by their row ids "<request>:<i>" as text: 0, 1, 10, 11, 2, ...
    logged = list(range(8)) + [8 + i for i in sorted(range(12), key=str)]
    for window, n in (("1h", 11), ("24h", 20)):  # ages 300..3300 s are within 1h + 1 s
        sel = np.array([i for i in logged if i < n])
        g = snap.group(version, "production", window)
        assert g is not None and g.count == n
        err = np.abs(y[sel] - eta[sel])
        assert g.mae == float(err.mean())
        assert g.p90_ae == float(np.quantile(err, 0.9))
        assert g.accuracy == float(np.mean(err <= TOL))
        assert g.coverage == float(np.mean((y[sel] >= lo[sel]) & (y[sel] <= hi[sel])))
        assert g.bias == float(np.mean(eta[sel] - y[sel]))
    assert [(t.joined, t.feedback, t.unknown) for t in snap.totals] == [(11, 12, 1), (20, 21, 1)]
    assert snap.feedback_lag_seconds is not None and 0 <= snap.feedback_lag_seconds < 60


@pytest.mark.slow
def test_monitoring_routes_and_gauges_served_by_the_app(
    registry: Path, make_client: Callable[..., Any], tmp_path: Path
) -> None:
    """The app runs the quality monitor on its timer: GET /v1/monitoring/quality answers its
    latest snapshot (503 before the first refresh) and /metrics carries its gauges; the
    drift route exists only with ENABLE_DRIFT_DETECTION."""
    from tests.e2e import servekit as kit

    url = f"sqlite:///{tmp_path / 'mon' / 'intellilog.db'}"
    c = make_client(registry, database_url=url, quality_interval_s=1.0, drift_interval_s=1.0)
    rows = kit.sample_rows(6, seed=62)
    answers = [c.post("/v1/predict", json=r).json() for r in rows]
    t0 = time.time()
    fb = [
        {"order_id": a["order_id"], "actual_minutes": a["eta_minutes"] + 3.0, "completed_at": t0}
        for a in answers
    ]
    assert c.post("/v1/feedback", json={"feedback": fb}).status_code == 202
    deadline = time.time() + 20
    body: dict[str, Any] = {}
    while time.time() < deadline:
        r = c.get("/v1/monitoring/quality")
        body = r.json()
        if r.status_code == 200 and any(g["count"] == 6 for g in body["groups"]):
            break
        assert r.status_code in (200, 503)
        time.sleep(0.2)
    g = next(g for g in body["groups"] if g["window"] == "1h")
    assert g["count"] == 6
    assert g["mae"] == pytest.approx(3.0, abs=1e-9) and g["bias"] == pytest.approx(-3.0, abs=1e-9)
    text = c.get("/metrics").text
    version = answers[0]["model_version"]
    mae = kit.metric(
        text, "intellilog_model_mae_minutes", version=version, arm="production", window="1h"
    )
    assert mae == pytest.approx(3.0, abs=1e-9)
    drift = c.get("/v1/monitoring/drift")
    assert drift.status_code == 200 and drift.json()["verdict"] in ("insufficient data", "no data")

    off = make_client(registry, database_url=url, enable_drift_detection=False)
    assert off.get("/v1/monitoring/drift").status_code == 404
