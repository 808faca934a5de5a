"""Geometry kernels over arrays of WGS84 degrees. Pure numba, no state."""

from __future__ import annotations

import math

import numpy as np
from numba import njit

__all__ = ["EARTH_RADIUS_KM", "bearing", "deltas_km", "haversine_km", "haversine_km_array"]

#: Mean Earth radius (IUGG), km.
EARTH_RADIUS_KM = 6371.0088
_RAD = math.pi / 180.0


@njit(cache=True, inline="always")
def haversine_km(lat1: float, lon1: float, lat2: float, lon2: float) -> float:
    """Great-circle distance, km.

    a = sin²(Δφ/2) + cos φ1 · cos φ2 · sin²(Δλ/2);  d = 2R · asin(min(1, √a))
    """
    p1 = lat1 * _RAD
    p2 = lat2 * _RAD
    sdp = math.sin((p2 - p1) * 0.5)
    sdl = math.sin((lon2 - lon1) * _RAD * 0.5)
    a = sdp * sdp + math.cos(p1) * math.cos(p2) * sdl * sdl
    root = math.sqrt(a)
    if root > 1.0:  # rounding; written so that NaN stays NaN
        root = 1.0
    return 2.0 * EARTH_RADIUS_KM * math.asin(root)


@njit(cache=True, inline="always")
def bearing(lat1: float, lon1: float, lat2: float, lon2: float) -> tuple[float, float]:
    """Initial bearing θ from point 1 to point 2 as (sin θ, cos θ).

    θ = atan2(sin Δλ · cos φ2, cos φ1 · sin φ2 − sin φ1 · cos φ2 · cos Δλ); (0, 1) for equal points.
    """
    p1 = lat1 * _RAD
    p2 = lat2 * _RAD
    dl = (lon2 - lon1) * _RAD
    y = math.sin(dl) * math.cos(p2)
    x = math.cos(p1) * math.sin(p2) - math.sin(p1) * math.cos(p2) * math.cos(dl)
    h = math.hypot(x, y)
    if h < 1e-15:
        return 0.0, 1.0
    return y / h, x / h


@njit(cache=True, inline="always")
def deltas_km(lat1: float, lon1: float, lat2: float, lon2: float) -> tuple[float, float]:
    """North and east displacement, km, on a local equirectangular projection.

    Δnorth = R · Δφ;  Δeast = R · wrap(Δλ) · cos((φ1 + φ2) / 2), with Δλ wrapped into
    [-180°, 180°) so a hop across the antimeridian is short.
    """
    dlon = lon2 - lon1
    dlon = (dlon + 180.0) % 360.0 - 180.0
    north = (lat2 - lat1) * _RAD * EARTH_RADIUS_KM
    east = dlon * _RAD * EARTH_RADIUS_KM * math.cos((lat1 + lat2) * 0.5 * _RAD)
    return north, east


@njit(cache=True)
def haversine_km_array(
    lat1: np.ndarray, lon1: np.ndarray, lat2: np.ndarray, lon2: np.ndarray
) -> np.ndarray:
    """Vectorised :func:`haversine_km` (used by the data generator and baselines)."""
    n = lat1.shape[0]
    out = np.empty(n, dtype=np.float64)
    for i in range(n):
        out[i] = haversine_km(lat1[i], lon1[i], lat2[i], lon2[i])
    return out
