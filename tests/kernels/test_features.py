"""The feature pipeline against a plain NumPy/Python reference; row path == batch path."""

import math
from datetime import UTC, datetime, timedelta

import msgspec
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kernels.errors import SpecError
from kernels.features import Columns, Pipeline, build_features, build_features_parallel
from kernels.spec import default_spec

SPEC = default_spec()
LEVELS = {"zone": ["Mitte", "Kreuzberg"]}
PIPE = Pipeline(SPEC, LEVELS)


def reference(c: Columns) -> np.ndarray:
    """Row-by-row reference written independently of the kernels."""
    R = 6371.0088
    out = []
    for i in range(len(c)):
        la1, lo1, la2, lo2 = c.pickup_lat[i], c.pickup_lon[i], c.dropoff_lat[i], c.dropoff_lon[i]
        p1, p2 = np.radians(la1), np.radians(la2)
        dl = np.radians(lo2 - lo1)
        a = np.sin((p2 - p1) / 2) ** 2 + np.cos(p1) * np.cos(p2) * np.sin(dl / 2) ** 2
        dist = 2 * R * np.arcsin(min(1.0, np.sqrt(a)))
        y = np.sin(dl) * np.cos(p2)
        x = np.cos(p1) * np.sin(p2) - np.sin(p1) * np.cos(p2) * np.cos(dl)
        th = np.arctan2(y, x)
        bs, bc = (np.sin(th), np.cos(th)) if np.hypot(x, y) >= 1e-15 else (0.0, 1.0)
        dlon = (lo2 - lo1 + 180) % 360 - 180
        north = np.radians(la2 - la1) * R
        east = np.radians(dlon) * R * np.cos(np.radians((la1 + la2) / 2))
        local = datetime.fromtimestamp(int(c.utc[i]), UTC) + timedelta(seconds=int(c.offset[i]))
        h = local.hour + local.minute / 60 + local.second / 3600
        dow = local.weekday()
        row = [la1, lo1, la2, lo2, dist, bs, bc, north, east]
        row += [np.sin(2 * np.pi * h / 24), np.cos(2 * np.pi * h / 24)]
        row += [np.sin(2 * np.pi * dow / 7), np.cos(2 * np.pi * dow / 7), float(dow >= 5)]
        row += list(c.cats[i].astype(float)) + list(c.nums[i])
        out.append(row)
    return np.asarray(out, dtype=np.float32).reshape(len(c), -1)


def random_columns(rng: np.random.Generator, n: int) -> Columns:
    nums = np.column_stack([rng.integers(1, 500, n).astype(float), rng.uniform(0, 240, n)])
    nums[rng.random(n) < 0.3, 1] = np.nan
    return Columns(
        rng.uniform(-90, 90, n),
        rng.uniform(-180, 180, n),
        rng.uniform(-90, 90, n),
        rng.uniform(-180, 180, n),
        rng.integers(0, 4_102_444_800, n),
        rng.integers(-14 * 4, 14 * 4, n).astype(np.int32) * 900,
        rng.integers(0, 5, (n, 3)).astype(np.int32),
        nums,
    )


@given(st.integers(0, 2**32 - 1), st.integers(1, 40))
@settings(max_examples=60, deadline=None)
def test_matrix_matches_reference(seed: int, n: int) -> None:
    c = random_columns(np.random.default_rng(seed), n)
    got = PIPE.matrix(c)
    assert got.dtype == np.float32 and got.flags.c_contiguous and got.shape == (n, 19)
    np.testing.assert_allclose(got, reference(c), rtol=2e-5, atol=2e-4)


def test_extremes_poles_antimeridian_missing() -> None:
    c = Columns(
        np.array([90.0, -90.0, 0.0, 10.0]),
        np.array([0.0, 180.0, 179.99, 5.0]),
        np.array([-90.0, 90.0, 0.0, 10.0]),
        np.array([0.0, -180.0, -179.99, 5.0]),
        np.array([0, 4_102_444_800, 1_711_846_800, 1_711_846_800]),
        np.array([0, 0, 7200, 3600], dtype=np.int32),
        np.array([[0, 1, 2]] * 4, dtype=np.int32),
        np.array([[1.0, np.nan]] * 4),
    )
    got = PIPE.matrix(c)
    assert np.isfinite(got[:, :17]).all()
    assert np.isnan(got[:, 18]).all()  # absent optional stays NaN
    assert abs(got[2, 4] - 0.02 * math.pi / 180 * 6371.0088) < 1e-3  # short hop over 180°
    np.testing.assert_allclose(got, reference(c), rtol=2e-5, atol=2e-4)


def test_parallel_equals_serial() -> None:
    c = random_columns(np.random.default_rng(1), 5000)
    a = np.empty((5000, 21), np.float32)
    b = np.empty((5000, 21), np.float32)
    every_time_feature = np.ones(4, np.bool_)
    args = (
        c.pickup_lat,
        c.pickup_lon,
        c.dropoff_lat,
        c.dropoff_lon,
        c.utc,
        c.offset,
        c.cats,
        c.nums,
        every_time_feature,
    )
    build_features(*args, a)
    build_features_parallel(*args, b)
    np.testing.assert_array_equal(a, b)


REQ = {
    "order_id": "o1",
    "pickup_lat": 52.5,
    "pickup_lon": 13.4,
    "dropoff_lat": 52.52,
    "dropoff_lon": 13.45,
    "created_at": "2026-03-29T01:30:00+01:00",
    "vehicle_type": "van",
    "weather": "sleet",
    "zone": "Kreuzberg",
    "items_count": 7,
}


def test_row_path_equals_batch_path_and_unknown_levels() -> None:
    item = msgspec.convert(REQ, SPEC.request_struct)
    one = PIPE.row(item, np.empty((1, PIPE.n_features), np.float32))
    starts = datetime.fromisoformat(REQ["created_at"])
    c = Columns(
        np.array([52.5]),
        np.array([13.4]),
        np.array([52.52]),
        np.array([13.45]),
        np.array([int(starts.timestamp())]),
        np.array([3600], dtype=np.int32),
        np.array([[3, 4, 1]], dtype=np.int32),  # van=3, 'sleet' unknown=4, Kreuzberg=1
        np.array([[7.0, np.nan]]),
    )
    np.testing.assert_array_equal(one, PIPE.matrix(c))
    assert PIPE.encode("weather", ["rain", "sleet", None]).tolist() == [1, 4, 4]


def test_learned_levels_must_be_given() -> None:
    with pytest.raises(SpecError, match="learns its levels"):
        Pipeline(SPEC)


def test_columns_of_structs_equal_row_path() -> None:
    reqs = [
        REQ,
        {**REQ, "created_at": 1767225600, "zone": "Mitte", "prep_minutes": 3.5},
        {**REQ, "created_at": "2026-07-01T08:00:00", "vehicle_type": "bike"},
    ]
    items = [msgspec.convert(r, SPEC.request_struct) for r in reqs]
    batch = PIPE.matrix(PIPE.columns(items))
    for i, it in enumerate(items):
        one = PIPE.row(it, np.empty((1, PIPE.n_features), np.float32))
        np.testing.assert_array_equal(one[0], batch[i])
    assert batch[1, 18] == np.float32(3.5) and np.isnan(batch[0, 18])
