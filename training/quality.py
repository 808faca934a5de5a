"""Data-quality gate: score a training dataset 0-100, with a per-check breakdown.

:func:`assess` runs seven checks over a table (as read by :func:`training.io.read_table`)
and combines them into one score. Every check scores 0..100 and *passes* when its own score
is at least :data:`PASS_MARK` (60).

Share-based scoring
-------------------
Checks that count bad rows turn a share ``s`` of bad rows (over all rows of the table) into a
score with :func:`share_score`: 100 up to ``s = 1 %``, then falling linearly to 0 at
``s = 25 %``::

    score = 100 * clip(1 - (s - 0.01) / (0.25 - 0.01), 0, 1)

so 2 % bad rows score 95.8, 5 % 83.3, 10 % 62.5 (still passes), 15 % 41.7, 20 % 20.8,
25 % and more 0.

The checks and their weights (they sum to 100)
----------------------------------------------
``completeness`` (20)
    Share of rows missing a value (null, NaN, or blank text) in any required column
    (``spec.required_columns``) or the target; optional numerics may be absent. The detail
    names the worst column and its own missing share.
``validity`` (20)
    Share of rows :func:`training.io.to_columns` refuses for *type* reasons (not a number,
    not a time) or *range* reasons (coordinates outside the globe, numerics outside their
    declared bounds, times outside 1970..2100, unknown levels of a ``reject`` categorical).
    Missing values and impossible durations are left to their own checks.
``duplicates`` (10)
    Share of rows that repeat an earlier row: a repeated value of ``spec.key`` (when that
    column is present; null keys are not duplicates) or a row identical to an earlier one in
    every column.
``impossible_durations`` (20)
    Share of rows whose target is not a plausible duration by the spec's ``[target]``
    table (:class:`kernels.spec.Target`; delivery defaults 1 min .. 24 h, 150 km/h):
    ``<= 0``, above ``max`` or not finite (``to_columns`` refuses these), below ``min``, or
    implying a speed above ``max_speed_kmh`` over the great-circle distance between pickup
    and dropoff (rows with both points within range; no speed check when it is unset).
``volume`` (15)
    Valid rows ``v`` (accepted by ``to_columns``) against ``min_rows``; with the floor
    ``f = min(50, min_rows / 2)``: ``score = 100 * clip((v - f) / (min_rows - f), 0, 1)``, so
    fewer than 50 rows score 0 and ``min_rows`` or more score 100.
``freshness`` (5)
    Age of the latest valid event time relative to ``now`` (default: the current time; a naive
    ``now`` is read as UTC): 100 up to ``max_age_days``, then falling linearly to 0 over a
    further ``max(max_age_days, 1)`` days. Skipped when ``max_age_days`` is None: full score,
    detail ``"not checked"``.
``time_coverage`` (10)
    Over the valid event times (0.5 % trimmed at each end when there are at least 200, so a
    stray timestamp does not stretch the timeline), on the data's own cadence: the bucket
    ``b = max(1 day, 20 × the median gap between consecutive distinct event times)``. The
    span factor ``clip(span / 2b, 0, 1)`` (one bucket or less fails: a time-ordered holdout
    needs more) times the coverage factor ``clip(c / 0.8, 0, 1)``, where ``c`` is the share
    of buckets from the first to the last that hold at least one row (up to 20 % empty
    buckets are free). Daily-or-denser data get calendar days (UTC); sparse data (a trip a
    week) get buckets wide enough that their normal pauses are not gaps.

The total
---------
The weighted mean of the check scores, capped at the worst check's score plus
:data:`CAP_MARGIN` (20)::

    score = min(sum(w_i * s_i) / 100, min(s_i) + 20)

The cap is what lets one hard failure sink the dataset: without it a check of weight 20
scoring 0 would still leave 80 points, and a 30-row table would pass on the strength of the
other checks. With the default threshold of 80, a dataset passes only when every check passes
(a check at exactly 60 allows 80) and the weighted mean reaches 80. Both numbers are in
:meth:`QualityReport.to_dict` (``weighted_mean``, ``capped_by``).

An empty table scores 0 in every check (freshness: as above). A table lacking a required
column or the target raises :class:`~kernels.errors.DataError`, as
:func:`training.io.read_table` does.
"""

from __future__ import annotations

import contextlib
import math
import numbers
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from kernels.errors import DataError
from kernels.features import UNKNOWN, Pipeline
from kernels.geo import haversine_km_array
from kernels.spec import FeatureSpec
from training.io import Converted, learn_levels, to_columns

__all__ = [
    "CAP_MARGIN",
    "PASS_MARK",
    "WEIGHTS",
    "Check",
    "QualityReport",
    "assess",
    "require_quality",
    "share_score",
]

#: A check passes when its own score is at least this.
PASS_MARK = 60.0
#: The total never exceeds the worst check's score by more than this.
CAP_MARGIN = 20.0
#: Check weights, in report order (they sum to 100).
WEIGHTS: dict[str, float] = {
    "completeness": 20.0,
    "validity": 20.0,
    "duplicates": 10.0,
    "impossible_durations": 20.0,
    "volume": 15.0,
    "freshness": 5.0,
    "time_coverage": 10.0,
}

_SHARE_FREE = 0.01  # bad-row share that still scores 100
_SHARE_ZERO = 0.25  # bad-row share that scores 0
_VOLUME_FLOOR = 50  # fewer valid rows than this score 0 (when min_rows allows)
_MIN_SPAN_BUCKETS = 2.0  # span that earns the full span factor
_FREE_EMPTY = 0.2  # share of empty buckets that costs nothing
_CADENCE_GAPS = 20  # a bucket holds this many median gaps (at least a day)
_TRIM = 0.005  # share of event times trimmed at each end for the timeline
_TRIM_FROM = 200  # ... when there are at least this many
_DAY = 86_400


# ---- the report ------------------------------------------------------------------------------


@dataclass
class Check:
    """One check's outcome: a score 0..100, its weight in the total, and what it found."""

    name: str
    score: float
    weight: float
    detail: str
    passed: bool

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "score": self.score,
            "weight": self.weight,
            "detail": self.detail,
            "passed": self.passed,
        }


@dataclass
class QualityReport:
    """The score of a dataset (0..100), its checks, and the threshold it is held to."""

    score: float
    rows: int
    checks: list[Check]
    threshold: float

    @property
    def passed(self) -> bool:
        """True when the score reaches the threshold."""
        return self.score >= self.threshold

    @property
    def weighted_mean(self) -> float:
        """The weighted mean of the check scores (the total before the cap)."""
        w = sum(c.weight for c in self.checks)
        return round(sum(c.score * c.weight for c in self.checks) / w, 2) if w else 0.0

    @property
    def capped_by(self) -> str | None:
        """Name of the worst check when the cap (worst + CAP_MARGIN) set the score."""
        if not self.checks or self.score >= self.weighted_mean:
            return None
        return min(self.checks, key=lambda c: c.score).name

    def failing(self) -> list[Check]:
        """Checks scoring below :data:`PASS_MARK`."""
        return [c for c in self.checks if not c.passed]

    def refusal(self) -> str | None:
        """Why the data is refused (the score, the threshold, each failing check and its
        detail), or None when it passed."""
        if self.passed:
            return None
        names = "; ".join(f"{c.name} ({c.score:.0f}: {c.detail})" for c in self.failing())
        return (
            f"data quality {self.score:.1f} is below the threshold {self.threshold:g}: "
            f"failing checks: {names or 'overall'}"
        )

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable summary (plain str, float, int, bool, list, dict)."""
        return {
            "score": self.score,
            "passed": self.passed,
            "threshold": self.threshold,
            "rows": self.rows,
            "weighted_mean": self.weighted_mean,
            "capped_by": self.capped_by,
            "pass_mark": PASS_MARK,
            "checks": [c.to_dict() for c in self.checks],
        }

    def format(self) -> str:
        """A short table: one line per check, then the total with PASS or FAIL."""
        width = max([len("check"), *(len(c.name) for c in self.checks)])
        lines = [f"{'check':<{width}}  {'score':>5}  {'weight':>6}        detail"]
        for c in self.checks:
            mark = "ok  " if c.passed else "FAIL"
            lines.append(f"{c.name:<{width}}  {c.score:5.1f}  {c.weight:6g}  {mark}  {c.detail}")
        verdict = "PASS" if self.passed else "FAIL"
        note = f"threshold {self.threshold:g}, {self.rows} rows"
        by = self.capped_by
        if by is not None:
            note += f"; weighted mean {self.weighted_mean:.1f}, capped at {by} + {CAP_MARGIN:g}"
        lines.append(f"{'total':<{width}}  {self.score:5.1f}  {'':6}  {verdict}  ({note})")
        return "\n".join(lines)


# ---- scoring helpers -------------------------------------------------------------------------


def share_score(share: float, free: float = _SHARE_FREE, zero: float = _SHARE_ZERO) -> float:
    """100 up to a bad-row share of ``free``, falling linearly to 0 at ``zero``."""
    if not share > free:  # also NaN -> 100 (no rows to judge is handled by the callers)
        return 100.0
    return 100.0 * min(1.0, max(0.0, 1.0 - (share - free) / (zero - free)))


def _check(name: str, score: float, detail: str) -> Check:
    s = round(min(100.0, max(0.0, float(score))), 2)
    return Check(name, s, WEIGHTS[name], detail, s >= PASS_MARK)


def _pct(part: int, whole: int) -> str:
    return f"{100.0 * part / whole:.1f}%" if whole else "0.0%"


def _clip_text(s: str, n: int = 70) -> str:
    return s if len(s) <= n else s[: n - 3] + "..."


# ---- column helpers --------------------------------------------------------------------------


def _plain(col: pa.ChunkedArray | pa.Array) -> pa.Array:
    """One contiguous array, dictionary-decoded."""
    arr = col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col
    if pa.types.is_dictionary(arr.type):
        arr = arr.dictionary_decode()
    return arr


def _is_text(t: pa.DataType) -> bool:
    return bool(pa.types.is_string(t) or pa.types.is_large_string(t))


def _missing(col: pa.ChunkedArray) -> np.ndarray:
    """Bool per row: null, NaN, or blank text."""
    arr = _plain(col)
    t = arr.type
    if pa.types.is_floating(t):
        m = pc.is_null(arr, nan_is_null=True)
    elif _is_text(t):
        m = pc.or_(arr.is_null(), pc.equal(pc.utf8_trim_whitespace(arr), "")).fill_null(True)
    else:
        m = arr.is_null()
    return np.asarray(m.to_numpy(zero_copy_only=False), dtype=bool)


def _floats(col: pa.ChunkedArray) -> np.ndarray:
    """float64 per row, NaN where missing or not a number (never raises)."""
    arr = _plain(col)
    t = arr.type
    n = len(arr)
    if pa.types.is_floating(t) or pa.types.is_integer(t) or pa.types.is_boolean(t):
        vals = arr.cast(pa.float64(), safe=False).to_numpy(zero_copy_only=False)
        return np.array(vals, dtype=np.float64)  # a writable copy
    if not _is_text(t):
        return np.full(n, np.nan)
    trimmed = pc.utf8_trim_whitespace(arr)
    trimmed = pc.if_else(pc.equal(trimmed, ""), pa.scalar(None, trimmed.type), trimmed)
    try:
        return np.array(trimmed.cast(pa.float64()).to_numpy(zero_copy_only=False), np.float64)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        pass
    out = np.full(n, np.nan)
    for i, v in enumerate(trimmed.to_pylist()):
        if v is None:
            continue
        with contextlib.suppress(ValueError):
            out[i] = float(v)
    return out


def _codes(col: pa.ChunkedArray) -> np.ndarray:
    """int64 code per row, equal codes for equal values; -1 for null."""
    arr = _plain(col)
    for encode in (
        lambda: pc.dictionary_encode(arr),
        lambda: pc.dictionary_encode(arr.cast(pa.string())),
    ):
        try:
            idx = encode().indices.fill_null(-1)
        except (pa.ArrowNotImplementedError, pa.ArrowInvalid, pa.ArrowTypeError):
            continue
        return np.asarray(idx.to_numpy(zero_copy_only=False), dtype=np.int64)
    vals = [None if v is None else repr(v) for v in arr.to_pylist()]
    keys = ["" if v is None else "v" + v for v in vals]
    _, inv = np.unique(np.asarray(keys, dtype=object), return_inverse=True)
    out = inv.astype(np.int64).reshape(-1)
    out[[v is None for v in vals]] = -1
    return out


def _repeats(codes: np.ndarray) -> np.ndarray:
    """Bool per row: the row's code occurred in an earlier row."""
    dup = np.ones(codes.shape[0], dtype=bool)
    if codes.size:
        _, first = np.unique(codes, return_index=True)
        dup[first] = False
    return dup


def _row_codes(table: pa.Table) -> np.ndarray:
    """int64 code per row, equal exactly when the rows are equal in every column."""
    n = table.num_rows
    combined = np.zeros(n, dtype=np.int64)
    size = 1
    for i in range(table.num_columns):
        c = _codes(table.column(i)) + 1  # 0 = null
        k = int(c.max()) + 1 if n else 1
        if size * k >= 2**62:  # re-number densely before the product could overflow
            _, inv = np.unique(combined, return_inverse=True)
            combined = inv.astype(np.int64).reshape(-1)
            size = int(combined.max()) + 1
        combined = combined * k + c
        size *= k
    return combined


def _levels(table: pa.Table, spec: FeatureSpec) -> dict[str, tuple[str, ...]]:
    """Every level seen (``min_count=1``); a learned column with no values at all gets a
    placeholder level, so its rows are judged missing rather than the table refused."""
    try:
        return learn_levels(table, spec, min_count=1)
    except DataError:
        pass
    out: dict[str, tuple[str, ...]] = {}
    for c in spec.categorical:
        if not c.learned:
            out[c.name] = c.levels
            continue
        arr = _plain(table.column(c.name))
        if pa.types.is_nested(arr.type) or pa.types.is_binary(arr.type):
            raise DataError(f"column {c.name!r} has type {arr.type}, expected text")
        arr = pc.utf8_trim_whitespace(arr if _is_text(arr.type) else arr.cast(pa.string()))
        vals = [v for v in pc.unique(arr.drop_null()).to_pylist() if v]
        out[c.name] = tuple(vals) or (UNKNOWN,)
    return out


# ---- the checks ------------------------------------------------------------------------------


def _completeness(table: pa.Table, spec: FeatureSpec, n: int) -> Check:
    any_missing = np.zeros(n, dtype=bool)
    worst_name, worst = "", 0
    for name in (*spec.required_columns, spec.target):
        m = _missing(table.column(name))
        k = int(m.sum())
        if k > worst:
            worst_name, worst = name, k
        any_missing |= m
    bad = int(any_missing.sum())
    if bad == 0:
        return _check("completeness", 100.0, "no missing values in required columns or target")
    detail = f"{_pct(bad, n)} rows miss a value; worst: {worst_name} {_pct(worst, n)}"
    return _check("completeness", share_score(bad / n), detail)


def _validity(conv: Converted, spec: FeatureSpec, n: int) -> Check:
    n_type = conv.checks.get("type", 0)
    n_range = conv.checks.get("range", 0)
    bad, example = 0, ""
    if n_type or n_range:
        impossible = f"{spec.target}: not a duration"
        for reason in conv.reject_reasons:
            for part in reason.split("; "):
                if part.endswith(": missing") or part.startswith(impossible):
                    continue
                bad += 1
                example = example or part
                break
    if bad == 0:
        return _check("validity", 100.0, "no values of the wrong type or out of range")
    detail = (
        f"{_pct(bad, n)} rows refused ({n_type} type, {n_range} range problems), "
        f"e.g. {_clip_text(example)}"
    )
    return _check("validity", share_score(bad / n), detail)


def _duplicates(table: pa.Table, spec: FeatureSpec, n: int) -> Check:
    same_row = np.zeros(n, dtype=bool)
    same_key = np.zeros(n, dtype=bool)
    if spec.key in table.column_names:
        key = _codes(table.column(spec.key))
        has = key >= 0
        same_key = _repeats(key) & has
        # identical rows share their key (or both lack one): only those rows need comparing
        counts = np.bincount(key[has]) if has.any() else np.zeros(0, np.int64)
        cand = ~has
        cand[has] = counts[key[has]] > 1
        parts = [f"{int(same_key.sum())} repeated {spec.key} values"]
    else:
        cand = np.ones(n, dtype=bool)
        parts = [f"no {spec.key} column"]
    idx = np.flatnonzero(cand)
    if idx.size > 1:
        sub = table if idx.size == n else table.take(pa.array(idx))
        same_row[idx] = _repeats(_row_codes(sub))
    parts.append(f"{int(same_row.sum())} identical rows")
    bad = int((same_row | same_key).sum())
    if bad == 0:
        return _check("duplicates", 100.0, "no repeated rows: " + ", ".join(parts))
    detail = f"{_pct(bad, n)} rows repeat an earlier one: " + ", ".join(parts)
    return _check("duplicates", share_score(bad / n), detail)


def _impossible(table: pa.Table, spec: FeatureSpec, n: int) -> Check:
    g = spec.goal
    t = _floats(table.column(g.name))

    def coord(name: str, bound: float) -> np.ndarray:
        v = _floats(table.column(name))
        with np.errstate(invalid="ignore"):
            v[~(np.abs(v) <= bound)] = np.nan
        return v

    plat, plon = coord(spec.pickup_lat, 90.0), coord(spec.pickup_lon, 180.0)
    dlat, dlon = coord(spec.dropoff_lat, 90.0), coord(spec.dropoff_lon, 180.0)
    km = haversine_km_array(plat, plon, dlat, dlon)
    # the kernel clamps with min(1, sqrt(a)), which turns NaN into half the globe: mask it
    km[np.isnan(plat) | np.isnan(plon) | np.isnan(dlat) | np.isnan(dlon)] = np.nan
    present = ~np.isnan(t)
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
        out_of_range = present & ((t <= 0) | (t > g.max) | ~np.isfinite(t))
        short = present & ~out_of_range & (t < g.min)
        fast = np.zeros_like(short)
        if g.max_speed_kmh is not None:
            fast = present & ~out_of_range & ~short & (km / (t * g.hours) > g.max_speed_kmh)
    bad = int((out_of_range | short | fast).sum())
    if bad == 0:
        return _check("impossible_durations", 100.0, "all durations plausible")
    unit = g.unit
    detail = (
        f"{_pct(bad, n)} rows: {int(out_of_range.sum())} <= 0 or > target.max ({g.max:g} {unit}), "
        f"{int(short.sum())} under target.min ({g.min:g} {unit})"
    )
    if g.max_speed_kmh is not None:
        detail += f", {int(fast.sum())} faster than target.max_speed_kmh ({g.max_speed_kmh:g} km/h)"
    return _check("impossible_durations", share_score(bad / n), detail)


def _volume(valid: int, min_rows: int) -> Check:
    floor = min(float(_VOLUME_FLOOR), min_rows / 2.0)
    score = 100.0 * min(1.0, max(0.0, (valid - floor) / (min_rows - floor)))
    return _check("volume", score, f"{valid} valid rows (want at least {min_rows})")


def _freshness(utc: np.ndarray, max_age_days: float | None, now: datetime | None) -> Check:
    if max_age_days is None:
        return _check("freshness", 100.0, "not checked")
    if utc.size == 0:
        return _check("freshness", 0.0, "no valid event times")
    when = now if now is not None else datetime.now(UTC)
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    latest = int(utc.max())
    age = (when.timestamp() - latest) / _DAY
    grace = max(max_age_days, 1.0)
    score = 100.0 * min(1.0, max(0.0, 1.0 - (age - max_age_days) / grace))
    stamp = datetime.fromtimestamp(latest, UTC).strftime("%Y-%m-%d %H:%M UTC")
    if age < 0:
        detail = f"latest event {stamp} is {-age:.1f} days after now"
    else:
        detail = f"latest event {stamp}, {age:.1f} days old (max {max_age_days:g})"
    return _check("freshness", score, detail)


def _time_coverage(utc: np.ndarray) -> Check:
    if utc.size == 0:
        return _check("time_coverage", 0.0, "no valid event times")
    s = np.sort(utc)
    k = int(s.size * _TRIM) if s.size >= _TRIM_FROM else 0
    lo, hi = int(s[k]), int(s[s.size - 1 - k])
    kept = s[k : s.size - k]
    gaps = np.diff(np.unique(kept))
    median_gap = float(np.median(gaps)) if gaps.size else 0.0
    bucket = max(_DAY, int(_CADENCE_GAPS * median_gap))
    span = (hi - lo) / bucket
    filled = np.unique(kept // bucket).size
    total = hi // bucket - lo // bucket + 1
    span_f = min(1.0, span / _MIN_SPAN_BUCKETS)
    cover_f = min(1.0, filled / total / (1.0 - _FREE_EMPTY))
    trimmed = f" ({_TRIM:.1%} trimmed at each end)" if k else ""
    what = "days" if bucket == _DAY else f"{bucket / _DAY:.1f}-day buckets (the data's cadence)"
    detail = (
        f"valid rows span {(hi - lo) / _DAY:.1f} days{trimmed}; "
        f"{filled} of {total} {what} have data"
    )
    if span <= 1.0:
        detail += " (need more than one bucket for a time-ordered holdout)"
    return _check("time_coverage", 100.0 * span_f * cover_f, detail)


# ---- the entry point -------------------------------------------------------------------------


def assess(
    table: pa.Table,
    spec: FeatureSpec,
    threshold: float = 80.0,
    min_rows: int = 1000,
    max_age_days: float | None = None,
    now: datetime | None = None,
) -> QualityReport:
    """Score ``table`` (with its target column) against ``spec``; see the module docstring.

    ``threshold`` is the score the report must reach to pass (0..100), ``min_rows`` the
    number of valid rows for a full volume score, ``max_age_days`` the oldest acceptable
    latest event (None: freshness not checked) measured from ``now`` (default: the current
    time). Raises :class:`ValueError` for a bad argument and
    :class:`~kernels.errors.DataError` when a required column or the target is missing.
    """
    if not (isinstance(threshold, numbers.Real) and 0.0 <= threshold <= 100.0):
        raise ValueError(f"threshold must be within [0, 100], got {threshold!r}")
    if isinstance(min_rows, bool) or not isinstance(min_rows, numbers.Integral) or min_rows < 1:
        raise ValueError(f"min_rows must be an integer >= 1, got {min_rows!r}")
    if max_age_days is not None and not (
        isinstance(max_age_days, numbers.Real) and math.isfinite(max_age_days) and max_age_days >= 0
    ):
        raise ValueError(f"max_age_days must be a number >= 0 or None, got {max_age_days!r}")
    need = [*spec.required_columns, spec.target]
    missing = [c for c in need if c not in table.column_names]
    if missing:
        raise DataError(
            f"missing column{'s' if len(missing) > 1 else ''} {', '.join(missing)} "
            f"(spec {spec.name!r} needs {', '.join(need)})"
        )
    n = table.num_rows
    if n == 0:
        checks = [_check(name, 0.0, "no rows") for name in WEIGHTS if name != "freshness"]
        checks.insert(5, _freshness(np.empty(0, np.int64), max_age_days, now))
        return _report(checks, 0, float(threshold))

    pipe = Pipeline(spec, _levels(table, spec))
    conv = to_columns(table, pipe, with_target=True)
    utc = np.asarray(conv.columns.utc, dtype=np.int64)
    checks = [
        _completeness(table, spec, n),
        _validity(conv, spec, n),
        _duplicates(table, spec, n),
        _impossible(table, spec, n),
        _volume(conv.n_valid, int(min_rows)),
        _freshness(utc, max_age_days, now),
        _time_coverage(utc),
    ]
    return _report(checks, n, float(threshold))


def _report(checks: list[Check], rows: int, threshold: float) -> QualityReport:
    total_w = sum(c.weight for c in checks)
    mean = sum(c.score * c.weight for c in checks) / total_w
    worst = min(c.score for c in checks)
    score = round(min(100.0, max(0.0, min(mean, worst + CAP_MARGIN))), 2)
    return QualityReport(score=score, rows=rows, checks=checks, threshold=threshold)


def require_quality(report: QualityReport, path: object) -> None:
    """The training gate: a DataError naming every failing check and its detail when
    ``report`` did not pass (``train``, ``backtest`` and ``retrain`` refuse the same data
    alike)."""
    why = report.refusal()
    if why is not None:
        raise DataError(f"{why} (run `intellilog validate --data {path}` for details)")
