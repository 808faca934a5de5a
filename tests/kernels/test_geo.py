"""Geo kernels against independent NumPy references (3-D vectors, plain trigonometry)."""

import math

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from kernels.geo import EARTH_RADIUS_KM, bearing, deltas_km, haversine_km, haversine_km_array

lat = st.floats(-90, 90, allow_nan=False)
lon = st.floats(-180, 180, allow_nan=False)


def _unit(la: float, lo: float) -> np.ndarray:
    a, b = math.radians(la), math.radians(lo)
    return np.array([math.cos(a) * math.cos(b), math.cos(a) * math.sin(b), math.sin(a)])


def ref_distance(la1: float, lo1: float, la2: float, lo2: float) -> float:
    u, v = _unit(la1, lo1), _unit(la2, lo2)
    return EARTH_RADIUS_KM * math.atan2(np.linalg.norm(np.cross(u, v)), float(np.dot(u, v)))


@given(lat, lon, lat, lon)
@settings(max_examples=300, deadline=None)
def test_haversine_matches_vector_formula(a: float, b: float, c: float, d: float) -> None:
    assert haversine_km(a, b, c, d) == np.float64(haversine_km(c, d, a, b)) or math.isclose(
        haversine_km(a, b, c, d), haversine_km(c, d, a, b), abs_tol=1e-9
    )
    assert math.isclose(
        haversine_km(a, b, c, d), ref_distance(a, b, c, d), rel_tol=1e-6, abs_tol=1e-6
    )


def test_known_distances_and_extremes() -> None:
    # Berlin -> Paris ~ 878 km; pole to pole = half the circumference
    assert abs(haversine_km(52.52, 13.405, 48.8566, 2.3522) - 878) < 3
    assert math.isclose(haversine_km(90, 0, -90, 0), math.pi * EARTH_RADIUS_KM, rel_tol=1e-12)
    # across the antimeridian the short way: 0.2 degrees of longitude at the equator
    assert math.isclose(
        haversine_km(0, 179.9, 0, -179.9), 0.2 * math.pi / 180 * EARTH_RADIUS_KM, rel_tol=1e-6
    )
    assert haversine_km(10, 20, 10, 20) == 0.0
    arr = haversine_km_array(
        np.array([52.52]), np.array([13.405]), np.array([48.8566]), np.array([2.3522])
    )
    assert arr.shape == (1,) and math.isclose(arr[0], haversine_km(52.52, 13.405, 48.8566, 2.3522))


@given(lat, lon, lat, lon)
@settings(max_examples=300, deadline=None)
def test_bearing_is_unit_and_matches_reference(a: float, b: float, c: float, d: float) -> None:
    s, co = bearing(a, b, c, d)
    assert math.isclose(s * s + co * co, 1.0, rel_tol=1e-9)
    p1, p2, dl = math.radians(a), math.radians(c), math.radians(d - b)
    y = math.sin(dl) * math.cos(p2)
    x = math.cos(p1) * math.sin(p2) - math.sin(p1) * math.cos(p2) * math.cos(dl)
    if math.hypot(x, y) > 1e-9:
        t = math.atan2(y, x)
        assert math.isclose(s, math.sin(t), abs_tol=1e-6)
        assert math.isclose(co, math.cos(t), abs_tol=1e-6)


def test_bearing_cardinal_directions() -> None:
    assert np.allclose(bearing(0, 0, 1, 0), (0.0, 1.0), atol=1e-12)  # north
    assert np.allclose(bearing(0, 0, 0, 1), (1.0, 0.0), atol=1e-12)  # east
    assert np.allclose(bearing(0, 179.5, 0, -179.5), (1.0, 0.0), atol=1e-9)  # east across 180°
    assert bearing(5, 5, 5, 5) == (0.0, 1.0)


@given(lat, lon, lat, lon)
@settings(max_examples=300, deadline=None)
def test_deltas_reference(a: float, b: float, c: float, d: float) -> None:
    north, east = deltas_km(a, b, c, d)
    dlon = ((d - b + 180.0) % 360.0) - 180.0
    assert -180.0 <= dlon < 180.0
    assert math.isclose(north, math.radians(c - a) * EARTH_RADIUS_KM, rel_tol=1e-9, abs_tol=1e-9)
    ref_e = math.radians(dlon) * EARTH_RADIUS_KM * math.cos(math.radians((a + c) / 2))
    assert math.isclose(east, ref_e, rel_tol=1e-9, abs_tol=1e-9)
    # never longer than half the way round in longitude
    assert abs(east) <= math.pi * EARTH_RADIUS_KM + 1e-6
