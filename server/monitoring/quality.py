"""Live quality of the served models, per model version and experiment arm.

Feedback (the actual minutes of a delivery) is joined to the predictions logged for the
same order (:meth:`Store.joined <server.store.Store.joined>`: one row per prediction that
has feedback). Per ``(model_version, arm, window)`` a snapshot gives the rows, MAE, the
90th percentile of the absolute error, RMSE, accuracy (share with
``|eta − actual| <= tolerance``), interval coverage (share with ``p10 <= actual <= p90``),
interval width and bias (mean of ``eta − actual``; positive: ETAs too long). The point and
interval formulas are :func:`training.metrics.point_metrics` and
:func:`training.metrics.interval_metrics`, the ones of the training holdout, so live and
holdout figures compare like for like.

**Window rule: windows are on the feedback's completion time.** A joined row is in
window ``w`` when its ``completed_at >= now − w`` (a ``completed_at`` slightly in the
future, from a sender whose clock runs ahead, counts in every window). "Accuracy over the
last hour" is then the accuracy of the deliveries completed in the last hour: every
window fills at the rate deliveries complete, whatever their length. On the prediction
time instead, the last hour would hold only the deliveries predicted *and* already
completed within it (the short ones), biased and nearly empty, and a window's figures
would keep changing long after it closed.

:meth:`Store.joined` selects by the prediction's time, so a snapshot reads predictions
made from ``now − largest window − lookback``, where ``lookback`` is the longest a
delivery may take between prediction and completion (the spec's ``target.max``,
:func:`lookback_for`): a delivery predicted before a window opened and completed inside
it is counted.

Totals per window: joined rows, feedback rows (orders) completed in it, and how many of
those name an order with no logged prediction (``unknown``). Feedback lag: seconds since
the newest feedback was *received* (the gauge: the feedback pipeline stalls whatever the
senders' clocks say), and since the newest delivery *completed* (how fresh the figures
can be at best).

:class:`QualityMonitor` refreshes a snapshot on a timer and sets the gauges
``intellilog_model_mae_minutes``, ``intellilog_model_accuracy_ratio``,
``intellilog_model_interval_coverage_ratio`` (labels ``version``, ``arm``, ``window``; a
series is there only while its window holds rows) and ``intellilog_feedback_lag_seconds``;
scrapes read the last values, never the database. :func:`quality_route_payload` is the
body of ``GET /v1/monitoring/quality``; ``intellilog quality`` prints a snapshot.
"""

from __future__ import annotations

import asyncio
import logging
import math
import re
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import numpy as np
from prometheus_client import Gauge

from kernels.errors import ConfigError, StoreError
from kernels.spec import FeatureSpec
from server import metrics
from server.monitoring.timer import refresh_every
from server.monitoring.windows import Window, parse_window, parse_windows
from server.store import JoinedRow, Store
from training.metrics import interval_metrics, point_metrics

__all__ = [
    "DEFAULT_LOOKBACK_S",
    "DEFAULT_WINDOWS",
    "FEEDBACK_LAG",
    "MODEL_ACCURACY",
    "MODEL_COVERAGE",
    "MODEL_MAE",
    "GroupQuality",
    "QualityMonitor",
    "QualitySnapshot",
    "Window",
    "WindowTotals",
    "format_snapshot",
    "lookback_for",
    "parse_window",
    "parse_windows",
    "quality_route_payload",
    "quality_snapshot",
    "tolerance_minutes_for",
]

log = logging.getLogger("intellilog.monitoring")

#: The windows of the monitor and of ``intellilog quality`` unless told otherwise.
DEFAULT_WINDOWS: tuple[str, ...] = ("1h", "24h", "7d")
#: Lookback when no spec is at hand: the delivery spec's ``target.max`` (1440 minutes).
DEFAULT_LOOKBACK_S = 86_400.0

# ---- gauges (set on a timer by QualityMonitor; scrapes never touch the database) -------------

# "mostrecent": with several workers (PROMETHEUS_MULTIPROC_DIR) each runs a monitor over the
# same database, and the exposition shows the latest refresh of any of them.
_LABELS = ["version", "arm", "window"]
MODEL_MAE = Gauge(
    "intellilog_model_mae_minutes",
    "mean absolute error of served ETAs against feedback, by completion window",
    _LABELS,
    multiprocess_mode="mostrecent",
)
MODEL_ACCURACY = Gauge(
    "intellilog_model_accuracy_ratio",
    "share of served ETAs within the spec's tolerance of the actual, by completion window",
    _LABELS,
    multiprocess_mode="mostrecent",
)
MODEL_COVERAGE = Gauge(
    "intellilog_model_interval_coverage_ratio",
    "share of actuals within the served [p10, p90] interval, by completion window",
    _LABELS,
    multiprocess_mode="mostrecent",
)
FEEDBACK_LAG = Gauge(
    "intellilog_feedback_lag_seconds",
    "seconds since the newest feedback was received (NaN: none yet)",
    multiprocess_mode="mostrecent",
)

# ---- windows -----------------------------------------------------------------------------------


def tolerance_minutes_for(spec: FeatureSpec) -> float:
    """The spec's accuracy tolerance (``target.tolerance``, target unit) in minutes, the
    unit of served ETAs."""
    return float(spec.goal.tolerance * spec.goal.minutes)


def lookback_for(spec: FeatureSpec) -> float:
    """Seconds a delivery may take between prediction and completion: the spec's
    ``target.max``."""
    return float(spec.goal.max * spec.goal.minutes * 60.0)


# ---- the snapshot ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class GroupQuality:
    """Figures of one ``(model_version, arm, window)``; errors in minutes."""

    model_version: str
    arm: str
    window: str
    count: int
    mae: float
    p90_ae: float
    rmse: float
    accuracy: float
    coverage: float
    width: float
    bias: float

    def to_dict(self) -> dict[str, Any]:
        return {
            "model_version": self.model_version,
            "arm": self.arm,
            "window": self.window,
            "count": self.count,
            "mae": _num(self.mae),
            "p90_ae": _num(self.p90_ae),
            "rmse": _num(self.rmse),
            "accuracy": _num(self.accuracy),
            "coverage": _num(self.coverage),
            "width": _num(self.width),
            "bias": _num(self.bias),
        }


@dataclass(frozen=True, slots=True)
class WindowTotals:
    """One window's totals: joined predictions, feedback rows (orders) completed in it and
    those naming no logged prediction; ``feedback``/``unknown`` are None when the store
    cannot count them."""

    window: str
    seconds: float
    joined: int
    feedback: int | None
    unknown: int | None

    def to_dict(self) -> dict[str, Any]:
        return {
            "window": self.window,
            "seconds": self.seconds,
            "joined": self.joined,
            "feedback": self.feedback,
            "unknown": self.unknown,
        }


@dataclass(frozen=True, slots=True)
class QualitySnapshot:
    """Live quality of one tenant at ``now`` (epoch seconds); see the module docstring."""

    tenant: str
    now: float
    tolerance_minutes: float
    lookback_s: float
    windows: tuple[Window, ...]
    #: figures per (model_version, arm, window) with rows, sorted by version, arm, window
    groups: tuple[GroupQuality, ...]
    totals: tuple[WindowTotals, ...]
    #: newest ``received_at`` of the tenant's feedback (None: none at all)
    newest_received_at: float | None
    #: newest ``completed_at`` of feedback received in the lookback (None: none)
    newest_completed_at: float | None

    @property
    def feedback_lag_seconds(self) -> float | None:
        """``now`` − the newest feedback's ``received_at`` (the gauge)."""
        return None if self.newest_received_at is None else self.now - self.newest_received_at

    @property
    def completed_lag_seconds(self) -> float | None:
        """``now`` − the newest feedback's ``completed_at``."""
        return None if self.newest_completed_at is None else self.now - self.newest_completed_at

    def group(self, model_version: str, arm: str, window: str) -> GroupQuality | None:
        """The figures of one group, or None when its window holds no rows."""
        for g in self.groups:
            if (g.model_version, g.arm, g.window) == (model_version, arm, window):
                return g
        return None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready (NaN becomes null)."""
        return {
            "tenant": self.tenant,
            "generated_at": self.now,
            "generated_at_iso": _iso(self.now),
            "window_rule": "feedback completed_at >= generated_at - window",
            "tolerance_minutes": self.tolerance_minutes,
            "lookback_seconds": self.lookback_s,
            "windows": [t.to_dict() for t in self.totals],
            "groups": [g.to_dict() for g in self.groups],
            "feedback": {
                "newest_received_at": self.newest_received_at,
                "newest_completed_at": self.newest_completed_at,
                "lag_seconds": _num(self.feedback_lag_seconds),
                "completed_lag_seconds": _num(self.completed_lag_seconds),
            },
        }


def _num(v: float | None) -> float | None:
    return None if v is None or not math.isfinite(v) else float(v)


def _iso(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).isoformat().replace("+00:00", "Z")


def _natural(s: str) -> tuple[Any, ...]:
    """Sort key putting v2 before v10."""
    return tuple(int(p) if p.isdigit() else p for p in re.split(r"(\d+)", s))


def _group_figures(
    version: str,
    arm: str,
    window: str,
    eta: np.ndarray,
    p10: np.ndarray,
    p90: np.ndarray,
    actual: np.ndarray,
    tolerance: float,
) -> GroupQuality:
    pm = point_metrics(actual, eta, tolerance)
    im = interval_metrics(actual, p10, p90)
    return GroupQuality(
        model_version=version,
        arm=arm,
        window=window,
        count=int(pm["rows"]),
        mae=pm["mae"],
        p90_ae=pm["p90_ae"],
        rmse=pm["rmse"],
        accuracy=pm["accuracy"],
        coverage=im["coverage"],
        width=im["width"],
        bias=float(np.mean(eta - actual)),
    )


def _figures(
    rows: Sequence[JoinedRow], windows: Sequence[Window], now: float, tolerance: float
) -> tuple[list[GroupQuality], list[int]]:
    """Per-group figures (rows in store order) and joined rows per window."""
    n = len(rows)
    eta = np.fromiter((r.eta for r in rows), np.float64, n)
    p10 = np.fromiter((r.p10 for r in rows), np.float64, n)
    p90 = np.fromiter((r.p90 for r in rows), np.float64, n)
    actual = np.fromiter((r.actual for r in rows), np.float64, n)
    completed = np.fromiter((r.completed_at for r in rows), np.float64, n)
    members: dict[tuple[str, str], list[int]] = {}
    for i, r in enumerate(rows):
        members.setdefault((r.model_version, r.arm), []).append(i)
    keys = sorted(members, key=lambda k: (_natural(k[0]), _natural(k[1])))
    groups: list[GroupQuality] = []
    joined: list[int] = []
    for w in windows:
        inside = completed >= now - w.seconds
        joined.append(int(inside.sum()))
        for version, arm in keys:
            idx = np.asarray(members[(version, arm)], dtype=np.intp)
            idx = idx[inside[idx]]
            if idx.size:
                groups.append(
                    _group_figures(
                        version, arm, w.label, eta[idx], p10[idx], p90[idx], actual[idx], tolerance
                    )
                )
    order = {w.label: i for i, w in enumerate(windows)}
    groups.sort(key=lambda g: (_natural(g.model_version), _natural(g.arm), order[g.window]))
    return groups, joined


# ---- feedback totals (the Store protocol has no query for them yet) ---------------------------


@dataclass(frozen=True, slots=True)
class _FeedbackTotals:
    newest_received_at: float | None
    newest_completed_at: float | None
    #: (feedback rows, unknown rows) completed at or after each cutoff
    counts: list[tuple[int, int]]


def _totals_sql(k: int, ph: Callable[[int], str]) -> tuple[str, str]:
    """(per-window counts and newest times since a received time, newest received at all);
    parameters: tenant, since, then one cutoff per window."""
    cols = ["MAX(c)"]
    for i in range(k):
        p = ph(3 + i)
        cols.append(f"SUM(CASE WHEN c >= {p} THEN 1 ELSE 0 END)")
        cols.append(f"SUM(CASE WHEN c >= {p} AND NOT known THEN 1 ELSE 0 END)")
    counts = (
        f"SELECT {', '.join(cols)} FROM ("
        " SELECT f.completed_at AS c, EXISTS (SELECT 1 FROM prediction_orders p"
        " WHERE p.tenant = f.tenant AND p.order_id = f.order_id) AS known"
        f" FROM feedback f WHERE f.tenant = {ph(1)} AND f.received_at >= {ph(2)}) AS s"
    )
    newest = (
        f"SELECT received_at FROM feedback WHERE tenant = {ph(1)} ORDER BY received_at DESC LIMIT 1"
    )
    return counts, newest


def _parse_totals(counts: Sequence[Any] | None, newest: Any, k: int) -> _FeedbackTotals:
    vals = list(counts) if counts is not None else [None] * (1 + 2 * k)
    pairs = [(int(vals[1 + 2 * i] or 0), int(vals[2 + 2 * i] or 0)) for i in range(k)]
    return _FeedbackTotals(
        newest_received_at=None if newest is None else float(newest),
        newest_completed_at=None if vals[0] is None else float(vals[0]),
        counts=pairs,
    )


async def _feedback_totals(
    store: Store, tenant: str, since: float, cutoffs: Sequence[float]
) -> _FeedbackTotals | None:
    """Counts of the feedback table for SQLite and PostgreSQL, through the stores' own
    connections (read only); None for another store. To move into the Store protocol."""
    k = len(cutoffs)
    params = (tenant, since, *cutoffs)
    from server.store.sqlite import SqliteStore

    if isinstance(store, SqliteStore):
        counts_q, newest_q = _totals_sql(k, lambda i: f"?{i}")
        sq = store

        def read() -> tuple[Any, Any]:
            db = sq._db
            row = db.execute(counts_q, params).fetchone()
            top = db.execute(newest_q, (tenant,)).fetchone()
            return row, None if top is None else top[0]

        row, newest = await sq._call(read)
        return _parse_totals(row, newest, k)
    if type(store).__name__ == "PostgresStore":
        from server.store.postgres import PostgresStore

        assert isinstance(store, PostgresStore)
        counts_q, newest_q = _totals_sql(k, lambda i: f"${i}")

        async def read_pg(conn: Any) -> tuple[Any, Any]:
            return await conn.fetchrow(counts_q, *params), await conn.fetchval(newest_q, tenant)

        row, newest = await store._with_connection(read_pg)
        return _parse_totals(None if row is None else tuple(row), newest, k)
    return None


async def quality_snapshot(
    store: Store,
    tenant: str,
    *,
    tolerance_minutes: float,
    windows: Iterable[str | Window] = DEFAULT_WINDOWS,
    now: float | None = None,
    lookback_s: float = DEFAULT_LOOKBACK_S,
) -> QualitySnapshot:
    """Live quality of ``tenant`` at ``now`` (default: the clock); see the module docstring.

    ``tolerance_minutes`` defines accuracy (:func:`tolerance_minutes_for` of the served
    spec); ``lookback_s`` how long before a window opened a prediction may have been made
    (:func:`lookback_for`). Raises StoreError when the database fails, ConfigError for a
    bad window or tolerance.
    """
    wins = parse_windows(windows, "windows")
    if not (math.isfinite(tolerance_minutes) and tolerance_minutes > 0):
        raise ConfigError(f"tolerance={tolerance_minutes!r}: must be > 0 minutes")
    if not (math.isfinite(lookback_s) and lookback_s >= 0):
        raise ConfigError(f"lookback={lookback_s!r}: must be >= 0 seconds")
    t = time.time() if now is None else float(now)
    since = t - max(w.seconds for w in wins) - lookback_s
    rows = await store.joined(tenant, since)
    # off the event loop: a week of a busy tenant is many rows
    groups, joined = await asyncio.to_thread(_figures, rows, wins, t, tolerance_minutes)
    fb = await _feedback_totals(store, tenant, since, [t - w.seconds for w in wins])
    totals = tuple(
        WindowTotals(
            window=w.label,
            seconds=w.seconds,
            joined=joined[i],
            feedback=None if fb is None else fb.counts[i][0],
            unknown=None if fb is None else fb.counts[i][1],
        )
        for i, w in enumerate(wins)
    )
    return QualitySnapshot(
        tenant=tenant,
        now=t,
        tolerance_minutes=float(tolerance_minutes),
        lookback_s=float(lookback_s),
        windows=wins,
        groups=tuple(groups),
        totals=totals,
        newest_received_at=None if fb is None else fb.newest_received_at,
        newest_completed_at=(
            fb.newest_completed_at
            if fb is not None
            else (max(r.completed_at for r in rows) if rows else None)
        ),
    )


# ---- the route and the command line ------------------------------------------------------------


def quality_route_payload(
    snapshot: QualitySnapshot | None, now: float | None = None
) -> dict[str, Any]:
    """The body of ``GET /v1/monitoring/quality``: the monitor's latest snapshot with its
    age in seconds (``status: "ok"``), or ``status: "pending"`` before the first refresh."""
    if snapshot is None:
        return {
            "status": "pending",
            "detail": "no quality snapshot yet: the first refresh has not finished",
        }
    t = time.time() if now is None else now
    return {"status": "ok", "age_seconds": max(0.0, t - snapshot.now), **snapshot.to_dict()}


def _fmt(v: float, pct: bool = False, sign: bool = False) -> str:
    if not math.isfinite(v):
        return "-"
    if pct:
        return f"{v * 100:.1f}%"
    return f"{v:+.2f}" if sign else f"{v:.2f}"


def _ago(seconds: float | None) -> str:
    if seconds is None:
        return "never"
    s = abs(seconds)
    text = f"{s:.0f} s" if s < 120 else f"{s / 60:.0f} min" if s < 7200 else f"{s / 3600:.1f} h"
    return f"{text} ago" if seconds >= 0 else f"in {text}"


def format_snapshot(snap: QualitySnapshot) -> str:
    """The table of ``intellilog quality``: one line per version, arm and window."""
    lines = [
        f"live quality of tenant {snap.tenant!r} at {_iso(snap.now)} (windows on the feedback's "
        f"completion time; accuracy: |ETA - actual| <= {snap.tolerance_minutes:g} min)"
    ]
    if snap.groups:
        lines.append(
            f"{'version':10} {'arm':14} {'window':>6} {'rows':>8} {'MAE':>7} {'p90 AE':>7} "
            f"{'bias':>7} {'accuracy':>8} {'coverage':>8}"
        )
        for g in snap.groups:
            lines.append(
                f"{g.model_version:10} {g.arm:14} {g.window:>6} {g.count:8d} {_fmt(g.mae):>7} "
                f"{_fmt(g.p90_ae):>7} {_fmt(g.bias, sign=True):>7} "
                f"{_fmt(g.accuracy, pct=True):>8} {_fmt(g.coverage, pct=True):>8}"
            )
    else:
        longest = max(snap.windows, key=lambda w: w.seconds).label
        lines.append(f"no feedback joined to a logged prediction in the last {longest}")
    for t in snap.totals:
        counted = (
            ""
            if t.feedback is None
            else f", {t.feedback} feedback rows, {t.unknown} for orders with no logged prediction"
        )
        lines.append(f"{t.window:>6}: {t.joined} predictions joined{counted}")
    lines.append(
        f"newest feedback received {_ago(snap.feedback_lag_seconds)}, newest delivery "
        f"completed {_ago(snap.completed_lag_seconds)}"
    )
    return "\n".join(lines)


# ---- the refresh loop --------------------------------------------------------------------------


class QualityMonitor:
    """Refreshes a :class:`QualitySnapshot` on a timer and publishes it as gauges.

    ``store``: the store, or a function returning it (None while there is none yet, e.g.
    ``lambda: recorder.store``). ``tolerance_minutes`` and ``lookback_s``: numbers, or
    functions read at every refresh (so a hot-swapped model's spec applies). The latest
    snapshot is :attr:`snapshot` (None before the first refresh).

    A series whose ``(version, arm, window)`` holds no rows any more is removed from the
    gauges (set to NaN in multiprocess mode: :func:`server.metrics.forget`).
    """

    def __init__(
        self,
        store: Store | Callable[[], Store | None],
        tenant: str,
        *,
        tolerance_minutes: float | Callable[[], float],
        windows: Iterable[str | Window] = DEFAULT_WINDOWS,
        lookback_s: float | Callable[[], float] = DEFAULT_LOOKBACK_S,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._store = store
        self.tenant = tenant
        self.windows = parse_windows(windows, "windows")
        self._tolerance = tolerance_minutes
        self._lookback = lookback_s
        self._clock = clock
        self.snapshot: QualitySnapshot | None = None
        self._series: set[tuple[str, str, str]] = set()

    def _current_store(self) -> Store | None:
        s = self._store
        return s if isinstance(s, Store) else s()

    async def refresh(self) -> QualitySnapshot | None:
        """One snapshot, published; None (nothing changed) while there is no store.
        Raises StoreError when the database fails (the gauges keep their values)."""
        store = self._current_store()
        if store is None:
            return None
        tol = self._tolerance() if callable(self._tolerance) else self._tolerance
        back = self._lookback() if callable(self._lookback) else self._lookback
        snap = await quality_snapshot(
            store,
            self.tenant,
            tolerance_minutes=tol,
            windows=self.windows,
            now=self._clock(),
            lookback_s=back,
        )
        self.publish(snap)
        self.snapshot = snap
        return snap

    def publish(self, snap: QualitySnapshot) -> None:
        """Set the gauges from ``snap``; remove the series it no longer has."""
        now: set[tuple[str, str, str]] = set()
        for g in snap.groups:
            key = (g.model_version, g.arm, g.window)
            now.add(key)
            MODEL_MAE.labels(*key).set(g.mae)
            MODEL_ACCURACY.labels(*key).set(g.accuracy)
            MODEL_COVERAGE.labels(*key).set(g.coverage)
        for key in self._series - now:
            for gauge in (MODEL_MAE, MODEL_ACCURACY, MODEL_COVERAGE):
                metrics.forget(gauge, *key)
        self._series = now
        lag = snap.feedback_lag_seconds
        FEEDBACK_LAG.set(math.nan if lag is None else lag)

    async def run(self, interval_s: float) -> None:
        """Refresh now, then every ``interval_s`` seconds, until cancelled (a failing
        refresh keeps the last figures: :func:`server.monitoring.timer.refresh_every`)."""
        await refresh_every(self.refresh, interval_s, "quality", (StoreError,))
