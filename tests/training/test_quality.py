"""Tests of the data-quality gate (training.quality)."""

from __future__ import annotations

import functools
import itertools
import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import numpy as np
import pyarrow as pa
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import kernels.features
from kernels.errors import DataError
from kernels.spec import default_spec
from training.quality import (
    CAP_MARGIN,
    PASS_MARK,
    WEIGHTS,
    QualityReport,
    assess,
    share_score,
)

SPEC = default_spec()
T0 = int(datetime(2025, 3, 1, tzinfo=UTC).timestamp())
DAY = 86_400
NAMES = list(WEIGHTS)


@pytest.fixture(autouse=True, scope="module")
def _cached_zone_table() -> Iterator[None]:
    """Every Pipeline builds its zone's transition table (~0.25 s); share it across calls."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(kernels.features, "zone_table", functools.cache(kernels.features.zone_table))
        yield


def clean_table(n: int = 2000, seed: int = 0, days: float = 30.0) -> pa.Table:
    """A plausible delivery table: Berlin trips of a few km at 10-35 km/h over ``days``."""
    rng = np.random.default_rng(seed)
    plat = 52.52 + rng.normal(0, 0.03, n)
    plon = 13.40 + rng.normal(0, 0.05, n)
    dlat = plat + rng.normal(0, 0.02, n)
    dlon = plon + rng.normal(0, 0.03, n)
    km = np.hypot((dlat - plat) * 111.2, (dlon - plon) * 67.7)
    speed = rng.uniform(10, 35, n)
    minutes = np.round(8 + 60 * km / speed + rng.exponential(5, n), 2)
    created = np.sort(T0 + rng.integers(0, int(days * DAY), n))
    prep = rng.uniform(2, 30, n)
    return pa.table(
        {
            "order_id": pa.array([f"o{i:07d}" for i in range(n)]),
            "created_at": pa.array(created, pa.int64()),
            "pickup_lat": plat,
            "pickup_lon": plon,
            "dropoff_lat": dlat,
            "dropoff_lon": dlon,
            "vehicle_type": pa.array(rng.choice(["bike", "scooter", "car", "van"], n)),
            "weather": pa.array(rng.choice(["clear", "rain", "snow", "fog"], n)),
            "zone": pa.array(rng.choice(["Mitte", "Kreuzberg", "Wedding", "Pankow"], n)),
            "items_count": pa.array(rng.integers(1, 20, n)),
            "prep_minutes": pa.array(prep, mask=rng.random(n) < 0.15),
            "actual_minutes": minutes,
        }
    )


def replace(table: pa.Table, name: str, values: object) -> pa.Table:
    i = table.column_names.index(name)
    arr = values if isinstance(values, pa.Array) else pa.array(values)
    return table.set_column(i, name, arr)


def rows_mask(n: int, share: float, seed: int = 1) -> np.ndarray:
    rng = np.random.default_rng(seed)
    m = np.zeros(n, dtype=bool)
    m[rng.choice(n, round(n * share), replace=False)] = True
    return m


def check(report: QualityReport, name: str) -> float:
    return next(c.score for c in report.checks if c.name == name)


# ---- clean data ------------------------------------------------------------------------------


def test_clean_table_scores_high() -> None:
    r = assess(clean_table(), SPEC)
    assert r.score >= 90
    assert r.passed
    assert [c.name for c in r.checks] == NAMES
    assert r.failing() == []
    assert all(c.score == 100 for c in r.checks), r.format()
    assert r.rows == 2000


def test_synth_table_scores_high() -> None:
    synth = pytest.importorskip("training.synth")
    r = assess(synth.generate(2000, seed=3), SPEC)
    assert r.score >= 90, r.format()


def test_weights_sum_to_100() -> None:
    assert sum(WEIGHTS.values()) == pytest.approx(100.0)
    r = assess(clean_table(300), SPEC, min_rows=100)
    assert sum(c.weight for c in r.checks) == pytest.approx(100.0)


def test_string_typed_table_like_csv() -> None:
    t = clean_table(1500)
    t = pa.table({name: t.column(name).cast(pa.string()) for name in t.column_names})
    r = assess(t, SPEC)
    assert r.score >= 90, r.format()


def test_iso_time_strings() -> None:
    t = clean_table(1500)
    iso = [datetime.fromtimestamp(v, UTC).isoformat() for v in t.column("created_at").to_pylist()]
    r = assess(replace(t, "created_at", iso), SPEC)
    assert r.score >= 90, r.format()


# ---- share scoring ---------------------------------------------------------------------------


def test_share_score_degrades_smoothly() -> None:
    assert share_score(0.0) == 100
    assert share_score(0.01) == 100
    assert share_score(0.02) > 90  # 2 % bad rows is still fine
    assert share_score(0.10) >= PASS_MARK  # 10 % passes, barely
    assert share_score(0.20) < 30  # 20 % is bad
    assert share_score(0.30) == 0
    grid = np.linspace(0, 1, 101)
    scores = [share_score(float(s)) for s in grid]
    assert all(a >= b for a, b in itertools.pairwise(scores))
    steps = np.abs(np.diff(scores))
    assert steps.max() < 5  # no jumps


# ---- injected faults -------------------------------------------------------------------------


def test_light_missing_values_are_tolerated() -> None:
    t = clean_table()
    zone = t.column("zone").to_pylist()
    m = rows_mask(t.num_rows, 0.02)
    r = assess(replace(t, "zone", pa.array(zone, mask=m)), SPEC)
    assert 90 <= check(r, "completeness") < 100
    assert r.score >= 90
    assert r.passed


def test_heavy_missing_values_fail_completeness() -> None:
    t = clean_table()
    n = t.num_rows
    m = rows_mask(n, 0.30)
    half = m & (np.arange(n) % 2 == 0)
    t = replace(t, "zone", pa.array(t.column("zone").to_pylist(), mask=half))
    t = replace(
        t, "actual_minutes", pa.array(t.column("actual_minutes").to_numpy(), mask=m & ~half)
    )
    r = assess(t, SPEC)
    comp = next(c for c in r.checks if c.name == "completeness")
    assert comp.score < 10
    assert not comp.passed
    assert "30.0%" in comp.detail
    assert "zone" in comp.detail or "actual_minutes" in comp.detail
    assert check(r, "validity") == 100
    assert check(r, "impossible_durations") == 100
    assert r.score < 80
    assert not r.passed
    assert [c.name for c in r.failing()] == ["completeness"]


def test_blank_strings_and_nan_count_as_missing() -> None:
    t = clean_table()
    m = rows_mask(t.num_rows, 0.3)
    zone = np.where(m, "  ", np.asarray(t.column("zone").to_pylist(), dtype=object))
    r = assess(replace(t, "zone", pa.array(zone.tolist(), pa.string())), SPEC)
    assert check(r, "completeness") == 0
    lat = np.where(m, np.nan, t.column("pickup_lat").to_numpy())
    r = assess(replace(t, "pickup_lat", lat), SPEC)
    assert check(r, "completeness") == 0


def test_optional_numeric_may_be_missing() -> None:
    t = clean_table()
    n = t.num_rows
    r = assess(replace(t, "prep_minutes", pa.nulls(n, pa.float64())), SPEC)
    assert check(r, "completeness") == 100
    assert r.score >= 90


def test_duplicate_keys_fail_duplicates() -> None:
    t = clean_table()
    n = t.num_rows
    ids = np.asarray(t.column("order_id").to_pylist(), dtype=object)
    m = rows_mask(n, 0.30)
    m[0] = False
    ids[m] = ids[0]  # same key, different content
    r = assess(replace(t, "order_id", ids.tolist()), SPEC)
    dup = next(c for c in r.checks if c.name == "duplicates")
    assert dup.score == 0
    assert "order_id" in dup.detail
    assert check(r, "completeness") == 100
    assert check(r, "validity") == 100
    assert r.score < 80
    assert not r.passed


def test_identical_rows_without_key_column() -> None:
    t = clean_table(1500).drop_columns(["order_id"])
    copies = t.take(pa.array(np.arange(0, 1500, 3)))  # a third of the rows again
    r = assess(pa.concat_tables([t, copies]), SPEC)
    dup = next(c for c in r.checks if c.name == "duplicates")
    assert dup.score < 10
    assert "no order_id column" in dup.detail
    assert "500 identical rows" in dup.detail
    assert r.score < 80


def test_few_duplicates_are_tolerated() -> None:
    t = clean_table()
    r = assess(pa.concat_tables([t, t.slice(0, 20)]), SPEC)  # 1 % repeated
    assert 95 <= check(r, "duplicates") <= 100
    assert r.passed


def test_negative_durations_fail_impossible() -> None:
    t = clean_table()
    y = t.column("actual_minutes").to_numpy().copy()
    m = rows_mask(t.num_rows, 0.30)
    y[m] = -y[m]
    r = assess(replace(t, "actual_minutes", y), SPEC)
    imp = next(c for c in r.checks if c.name == "impossible_durations")
    assert imp.score == 0
    assert "600 <= 0 or > target.max (1440 minutes)" in imp.detail
    assert check(r, "validity") == 100
    assert check(r, "completeness") == 100
    assert r.score < 80


def test_too_long_and_too_short_durations() -> None:
    t = clean_table()
    y = t.column("actual_minutes").to_numpy().copy()
    y[:100] = 2000.0  # > 24 h
    y[100:200] = 0.5  # < 1 minute
    r = assess(replace(t, "actual_minutes", y), SPEC)
    imp = next(c for c in r.checks if c.name == "impossible_durations")
    assert "100 <= 0 or > target.max (1440 minutes)" in imp.detail
    assert "100 under target.min (1 minutes)" in imp.detail
    assert imp.score == pytest.approx(share_score(0.10), abs=0.01)


def test_impossible_speeds_fail_impossible() -> None:
    t = clean_table()
    m = rows_mask(t.num_rows, 0.30)
    lat = t.column("dropoff_lat").to_numpy().copy()
    lat[m] += 5.0  # ~556 km away, delivered in well under an hour or two
    r = assess(replace(t, "dropoff_lat", lat), SPEC)
    imp = next(c for c in r.checks if c.name == "impossible_durations")
    assert imp.score == 0
    assert "600 faster than target.max_speed_kmh (150 km/h)" in imp.detail
    assert check(r, "validity") == 100
    assert r.score < 80


def test_out_of_range_coordinates_fail_validity() -> None:
    t = clean_table()
    m = rows_mask(t.num_rows, 0.30)
    lat = t.column("pickup_lat").to_numpy().copy()
    lat[m] = 95.0
    r = assess(replace(t, "pickup_lat", lat), SPEC)
    val = next(c for c in r.checks if c.name == "validity")
    assert val.score == 0
    assert "pickup_lat" in val.detail
    assert check(r, "impossible_durations") == 100  # no speed from an invalid point
    assert check(r, "completeness") == 100
    assert r.score < 80


def test_type_errors_fail_validity() -> None:
    t = clean_table()
    items = [str(v) for v in t.column("items_count").to_pylist()]
    m = rows_mask(t.num_rows, 0.05)
    items = ["many" if bad else v for v, bad in zip(items, m, strict=True)]
    r = assess(replace(t, "items_count", items), SPEC)
    val = next(c for c in r.checks if c.name == "validity")
    assert val.score == pytest.approx(share_score(0.05), abs=0.01)
    assert "type" in val.detail
    assert r.passed  # 5 % is a warning, not a failure


def test_too_few_rows() -> None:
    r = assess(clean_table(30), SPEC)
    assert check(r, "volume") == 0
    assert r.score < 80
    assert not r.passed
    assert r.score <= CAP_MARGIN
    # proportional in between
    half = assess(clean_table(525, days=20), SPEC, min_rows=1000)
    assert check(half, "volume") == pytest.approx(50.0, abs=0.1)
    full = assess(clean_table(525, days=20), SPEC, min_rows=500)
    assert check(full, "volume") == 100
    assert full.passed


def test_empty_table() -> None:
    r = assess(clean_table(10).slice(0, 0), SPEC)
    assert r.rows == 0
    assert r.score < 10
    assert not r.passed
    json.dumps(r.to_dict())


def test_freshness() -> None:
    t = clean_table(days=30)
    latest = datetime.fromtimestamp(int(t.column("created_at").to_numpy().max()), UTC)
    skipped = assess(t, SPEC)
    fr = next(c for c in skipped.checks if c.name == "freshness")
    assert fr.score == 100 and fr.detail == "not checked"
    fresh = assess(t, SPEC, max_age_days=7, now=latest + timedelta(days=3))
    assert check(fresh, "freshness") == 100
    aging = assess(t, SPEC, max_age_days=7, now=latest + timedelta(days=10.5))
    assert check(aging, "freshness") == pytest.approx(50.0, abs=0.5)
    stale = assess(t, SPEC, max_age_days=7, now=latest + timedelta(days=60))
    fr = next(c for c in stale.checks if c.name == "freshness")
    assert fr.score == 0 and not fr.passed
    assert "days old" in fr.detail
    assert stale.score < 80
    # a naive `now` is read as UTC
    naive = assess(
        t, SPEC, max_age_days=7, now=(latest + timedelta(days=10.5)).replace(tzinfo=None)
    )
    assert check(naive, "freshness") == check(aging, "freshness")


def test_time_coverage_needs_more_than_a_day() -> None:
    r = assess(clean_table(days=0.25), SPEC)
    cov = next(c for c in r.checks if c.name == "time_coverage")
    assert cov.score < PASS_MARK
    assert "need more than one bucket" in cov.detail
    assert not r.passed
    ok = assess(clean_table(days=3), SPEC)
    assert check(ok, "time_coverage") == 100


def test_time_coverage_gaps_and_stray_times() -> None:
    t = clean_table(days=30)
    created = t.column("created_at").to_numpy().copy()
    # move half the rows 300 days later: a long empty stretch in the middle
    created[1000:] += 300 * DAY
    gap = assess(replace(t, "created_at", created), SPEC)
    assert check(gap, "time_coverage") < PASS_MARK
    # one stray timestamp years away is trimmed, not stretching the timeline
    created = t.column("created_at").to_numpy().copy()
    created[0] = T0 - 3 * 365 * DAY
    stray = assess(replace(t, "created_at", created), SPEC)
    assert check(stray, "time_coverage") == 100


# ---- the report ------------------------------------------------------------------------------


def test_format_and_to_dict() -> None:
    t = clean_table()
    y = t.column("actual_minutes").to_numpy().copy()
    y[:600] = -1.0
    r = assess(replace(t, "actual_minutes", y), SPEC, max_age_days=30, now=datetime(2025, 4, 5))
    text = r.format()
    for name in NAMES:
        assert name in text
    assert "FAIL" in text and "total" in text
    lines = text.splitlines()
    assert len(lines) == len(NAMES) + 2  # header, checks, total
    d = r.to_dict()
    back = json.loads(json.dumps(d))
    assert back["score"] == r.score
    assert back["passed"] is False
    assert [c["name"] for c in back["checks"]] == NAMES
    assert back["capped_by"] == "impossible_durations"
    assert back["weighted_mean"] > r.score
    ok = assess(clean_table(), SPEC)
    assert "PASS" in ok.format()
    assert ok.to_dict()["capped_by"] is None


def test_total_is_weighted_mean_capped_by_worst() -> None:
    t = clean_table()
    y = t.column("actual_minutes").to_numpy().copy()
    y[:100] = -1.0  # 5 %: a mild problem, the weighted mean rules
    r = assess(replace(t, "actual_minutes", y), SPEC)
    mean = sum(c.score * c.weight for c in r.checks) / 100
    worst = min(c.score for c in r.checks)
    assert r.score == pytest.approx(min(mean, worst + CAP_MARGIN), abs=0.01)
    assert r.weighted_mean == pytest.approx(mean, abs=0.01)


def test_threshold() -> None:
    t = clean_table(30)
    assert assess(t, SPEC, threshold=0).passed
    assert not assess(t, SPEC, threshold=80).passed


def test_bad_arguments() -> None:
    t = clean_table(100)
    with pytest.raises(ValueError, match="threshold"):
        assess(t, SPEC, threshold=101)
    with pytest.raises(ValueError, match="min_rows"):
        assess(t, SPEC, min_rows=0)
    with pytest.raises(ValueError, match="max_age_days"):
        assess(t, SPEC, max_age_days=-1)
    with pytest.raises(DataError, match="actual_minutes"):
        assess(t.drop_columns(["actual_minutes"]), SPEC)
    with pytest.raises(DataError, match="zone"):
        assess(t.drop_columns(["zone"]), SPEC)


# ---- property --------------------------------------------------------------------------------


def _col(elem: st.SearchStrategy[object], n: int) -> st.SearchStrategy[list[object]]:
    return st.lists(st.one_of(st.none(), elem), min_size=n, max_size=n)


@st.composite
def random_tables(draw: st.DrawFn) -> pa.Table:
    n = draw(st.integers(0, 25))
    floats = st.floats(allow_nan=True, allow_infinity=True, width=64)
    lat = st.one_of(st.floats(-95, 95), floats)
    lon = st.one_of(st.floats(-185, 185), floats)
    text = st.sampled_from(["bike", "car", "rain", "clear", "Mitte", "", " ", "x"])
    times = st.integers(-(10**6), 5 * 10**9)
    minutes = st.one_of(st.floats(-10, 2000), floats)
    return pa.table(
        {
            "order_id": pa.array(draw(_col(st.sampled_from(["a", "b", "c", "d"]), n)), pa.string()),
            "created_at": pa.array(draw(_col(times, n)), pa.int64()),
            "pickup_lat": pa.array(draw(_col(lat, n)), pa.float64()),
            "pickup_lon": pa.array(draw(_col(lon, n)), pa.float64()),
            "dropoff_lat": pa.array(draw(_col(lat, n)), pa.float64()),
            "dropoff_lon": pa.array(draw(_col(lon, n)), pa.float64()),
            "vehicle_type": pa.array(draw(_col(text, n)), pa.string()),
            "weather": pa.array(draw(_col(text, n)), pa.string()),
            "zone": pa.array(draw(_col(text, n)), pa.string()),
            "items_count": pa.array(draw(_col(st.integers(-5, 600), n)), pa.int64()),
            "prep_minutes": pa.array(draw(_col(floats, n)), pa.float64()),
            "actual_minutes": pa.array(draw(_col(minutes, n)), pa.float64()),
        }
    )


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    table=random_tables(),
    min_rows=st.integers(1, 100),
    max_age=st.one_of(st.none(), st.floats(0, 1000)),
)
def test_score_always_within_bounds(table: pa.Table, min_rows: int, max_age: float | None) -> None:
    r = assess(
        table, SPEC, min_rows=min_rows, max_age_days=max_age, now=datetime(2025, 6, 1, tzinfo=UTC)
    )
    assert 0.0 <= r.score <= 100.0
    assert all(0.0 <= c.score <= 100.0 for c in r.checks)
    assert all(c.passed == (c.score >= PASS_MARK) for c in r.checks)
    assert r.passed == (r.score >= r.threshold)
    assert [c.name for c in r.checks] == NAMES
    json.dumps(r.to_dict(), allow_nan=False)
    assert r.format()


def test_time_coverage_follows_the_data_cadence() -> None:
    # a row every ~2.4 days over two years: no calendar day has two rows, most have none;
    # on the data's own cadence that is full coverage
    sparse = clean_table(n=300, days=730.0)
    cov = next(c for c in assess(sparse, SPEC, min_rows=100).checks if c.name == "time_coverage")
    assert cov.score == 100.0, cov.detail
    assert "buckets (the data's cadence)" in cov.detail
    # the same cadence with a year-long hole in the middle is not covered
    t = sparse.column("created_at").to_numpy()
    holed = replace(sparse, "created_at", np.where(t > T0 + 180 * DAY, t + 365 * DAY, t))
    cov2 = next(c for c in assess(holed, SPEC, min_rows=100).checks if c.name == "time_coverage")
    assert cov2.score < cov.score
