"""The feature pipeline: typed columns in, a C-contiguous float32 matrix out.

Training, batch scoring and the server all call :meth:`Pipeline.matrix` (or
:meth:`Pipeline.row`, the same kernel on one row), so train/serve skew cannot
happen by construction.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from numba import njit, prange

from kernels.errors import SpecError
from kernels.geo import bearing, deltas_km, haversine_km
from kernels.spec import TIME_FEATURE_COLUMNS, FeatureSpec
from kernels.timefeat import day_of_year_features, local_time_features, to_utc_offset, zone_table

__all__ = ["UNKNOWN", "Columns", "Pipeline", "build_features"]

#: The level every unseen categorical value maps to.
UNKNOWN = "unknown"


@dataclass(slots=True)
class Columns:
    """One batch of raw inputs as typed arrays (the kernel's input contract).

    ``cats`` holds categorical codes (``0..L-1`` known levels, ``L`` = unknown);
    ``nums`` holds numeric values, NaN where an optional one is absent. ``offset`` is
    the spec's zone offset at each instant (the clock rule, :mod:`kernels.spec`).
    """

    pickup_lat: np.ndarray  # float64 [n]
    pickup_lon: np.ndarray
    dropoff_lat: np.ndarray
    dropoff_lon: np.ndarray
    utc: np.ndarray  # int64 [n] epoch seconds
    offset: np.ndarray  # int32 [n] seconds east of UTC
    cats: np.ndarray  # int32 [n, C]
    nums: np.ndarray  # float64 [n, K]

    def __len__(self) -> int:
        return int(self.pickup_lat.shape[0])

    def take(self, idx: np.ndarray) -> Columns:
        return Columns(*(getattr(self, f)[idx] for f in self.__slots__))


@njit(cache=True, inline="always")
def _row(
    i: int,
    plat: np.ndarray,
    plon: np.ndarray,
    dlat: np.ndarray,
    dlon: np.ndarray,
    utc: np.ndarray,
    offset: np.ndarray,
    cats: np.ndarray,
    nums: np.ndarray,
    th: bool,
    td: bool,
    tw: bool,
    ty: bool,
    out: np.ndarray,
) -> None:
    a, b, c, d = plat[i], plon[i], dlat[i], dlon[i]
    out[i, 0] = a
    out[i, 1] = b
    out[i, 2] = c
    out[i, 3] = d
    out[i, 4] = haversine_km(a, b, c, d)
    s, co = bearing(a, b, c, d)
    out[i, 5] = s
    out[i, 6] = co
    north, east = deltas_km(a, b, c, d)
    out[i, 7] = north
    out[i, 8] = east
    hs, hc, ds, dc, we = local_time_features(utc[i], offset[i])
    j = 9
    if th:
        out[i, j] = hs
        out[i, j + 1] = hc
        j += 2
    if td:
        out[i, j] = ds
        out[i, j + 1] = dc
        j += 2
    if tw:
        out[i, j] = we
        j += 1
    if ty:  # filled by _day_of_year (a second pass keeps this loop lean)
        j += 2
    for k in range(cats.shape[1]):
        out[i, j] = cats[i, k]
        j += 1
    for k in range(nums.shape[1]):
        out[i, j] = nums[i, k]
        j += 1


@njit(cache=True)
def _day_of_year(utc: np.ndarray, offset: np.ndarray, tflags: np.ndarray, out: np.ndarray) -> None:
    """When chosen (``tflags[3]``): (sin, cos) of the local day of the year (kernels.timefeat)
    in its two columns, after the geo features and the other chosen time features."""
    if not tflags[3]:
        return
    j = 9 + 2 * tflags[0] + 2 * tflags[1] + tflags[2]
    for i in range(utc.shape[0]):
        ys, yc = day_of_year_features(utc[i], offset[i])
        out[i, j] = ys
        out[i, j + 1] = yc


@njit(cache=True)
def build_features(
    plat: np.ndarray,
    plon: np.ndarray,
    dlat: np.ndarray,
    dlon: np.ndarray,
    utc: np.ndarray,
    offset: np.ndarray,
    cats: np.ndarray,
    nums: np.ndarray,
    tflags: np.ndarray,
    out: np.ndarray,
) -> None:
    """Fill ``out[n, 9 + T + C + K]`` (float32) with the features of every row.

    Columns: the four coordinates, great-circle distance (km), bearing (sin, cos),
    north/east deltas (km), the chosen time features (``tflags``: local hour (sin, cos),
    day of week (sin, cos), weekend, day of year (sin, cos)), categorical codes, numerics
    (NaN when absent). Formulas: see kernels.geo and kernels.timefeat.
    """
    th, td, tw, ty = tflags[0], tflags[1], tflags[2], tflags[3]
    for i in range(plat.shape[0]):
        _row(i, plat, plon, dlat, dlon, utc, offset, cats, nums, th, td, tw, ty, out)
    _day_of_year(utc, offset, tflags, out)


@njit(cache=True, parallel=True)
def build_features_parallel(
    plat: np.ndarray,
    plon: np.ndarray,
    dlat: np.ndarray,
    dlon: np.ndarray,
    utc: np.ndarray,
    offset: np.ndarray,
    cats: np.ndarray,
    nums: np.ndarray,
    tflags: np.ndarray,
    out: np.ndarray,
) -> None:
    """:func:`build_features` with rows spread over threads (large batches)."""
    th, td, tw, ty = tflags[0], tflags[1], tflags[2], tflags[3]
    for i in prange(plat.shape[0]):
        _row(i, plat, plon, dlat, dlon, utc, offset, cats, nums, th, td, tw, ty, out)
    _day_of_year(utc, offset, tflags, out)


_PARALLEL_FROM = 50_000


class Pipeline:
    """A spec plus the categorical levels a model was trained with.

    ``levels`` maps every categorical name to its known levels (declared, or learned
    from training data). Codes: index in the levels, ``len(levels)`` for anything else.
    """

    def __init__(self, spec: FeatureSpec, levels: Mapping[str, Sequence[str]] | None = None):
        self.spec = spec
        lv: dict[str, tuple[str, ...]] = {}
        for c in spec.categorical:
            got = tuple((levels or {}).get(c.name, c.levels))
            if not got and c.learned:
                raise SpecError(
                    f"categorical {c.name!r} learns its levels from training data; "
                    "pass the learned levels (they are stored in the model manifest)"
                )
            lv[c.name] = got
        self.levels = lv
        self.codes: dict[str, dict[str, int]] = {
            name: {v: i for i, v in enumerate(levels_)} for name, levels_ in lv.items()
        }
        self.zone_starts, self.zone_offsets = zone_table(spec.timezone)
        self.n_features = len(spec.feature_names)
        self.tflags = np.array([f in spec.time_features for f in TIME_FEATURE_COLUMNS], np.bool_)
        self._lower = spec.categorical_case == "lower"
        # single-row scratch buffers, reused (callers serialise per pipeline)
        self._r_f = np.empty(4, dtype=np.float64)
        self._r_t = np.empty(1, dtype=np.int64)
        self._r_o = np.empty(1, dtype=np.int32)
        self._r_c = np.empty((1, len(spec.categorical)), dtype=np.int32)
        self._r_n = np.empty((1, len(spec.numeric)), dtype=np.float64)

    @property
    def feature_names(self) -> tuple[str, ...]:
        return self.spec.feature_names

    def unknown_code(self, name: str) -> int:
        return len(self.levels[name])

    def encode(self, name: str, values: np.ndarray | Sequence[Any]) -> np.ndarray:
        """Codes of a column of strings (unknown and missing values get the unknown code)."""
        arr = np.asarray(values, dtype=object)
        uniq, inv = np.unique(arr.astype(str), return_inverse=True)
        table = self.codes[name]
        unk = len(table)
        norm = self.spec.normalize_level
        mapped = np.fromiter(
            (table.get(norm(u), unk) for u in uniq), dtype=np.int32, count=len(uniq)
        )
        return mapped[inv.reshape(-1)]

    def matrix(self, cols: Columns, out: np.ndarray | None = None) -> np.ndarray:
        """Feature matrix ``[n, F]`` float32, C-contiguous."""
        n = len(cols)
        if out is None:
            out = np.empty((n, self.n_features), dtype=np.float32)
        fn = build_features_parallel if n >= _PARALLEL_FROM else build_features
        fn(
            cols.pickup_lat,
            cols.pickup_lon,
            cols.dropoff_lat,
            cols.dropoff_lon,
            cols.utc,
            cols.offset,
            cols.cats,
            cols.nums,
            self.tflags,
            out,
        )
        return out

    def columns(self, items: Sequence[Any]) -> Columns:
        """Columns of a batch of request structs (one pass over each field)."""
        spec = self.spec
        n = len(items)
        geo = np.array(
            [
                (
                    getattr(it, spec.pickup_lat),
                    getattr(it, spec.pickup_lon),
                    getattr(it, spec.dropoff_lat),
                    getattr(it, spec.dropoff_lon),
                )
                for it in items
            ],
            dtype=np.float64,
        ).reshape(n, 4)
        utc = np.empty(n, dtype=np.int64)
        off = np.empty(n, dtype=np.int32)
        st, of = self.zone_starts, self.zone_offsets
        for i, it in enumerate(items):
            utc[i], off[i] = to_utc_offset(getattr(it, spec.event_time), st, of)
        cats = np.empty((n, len(spec.categorical)), dtype=np.int32)
        norm = spec.normalize_level
        for k, c in enumerate(spec.categorical):
            table = self.codes[c.name]
            unk = len(table)
            cats[:, k] = [table.get(norm(getattr(it, c.name)), unk) for it in items]
        nums = np.empty((n, len(spec.numeric)), dtype=np.float64)
        for k, nm in enumerate(spec.numeric):
            nums[:, k] = [np.nan if (v := getattr(it, nm.name)) is None else v for it in items]
        return Columns(
            np.ascontiguousarray(geo[:, 0]),
            np.ascontiguousarray(geo[:, 1]),
            np.ascontiguousarray(geo[:, 2]),
            np.ascontiguousarray(geo[:, 3]),
            utc,
            off,
            cats,
            nums,
        )

    def row(self, item: Any, out: np.ndarray) -> np.ndarray:
        """Features of one request struct into ``out[0]`` (shape ``[1, F]``).

        Reads the struct's fields once; no per-field Python loop beyond that.
        """
        spec = self.spec
        f = self._r_f
        f[0] = getattr(item, spec.pickup_lat)
        f[1] = getattr(item, spec.pickup_lon)
        f[2] = getattr(item, spec.dropoff_lat)
        f[3] = getattr(item, spec.dropoff_lon)
        u, o = to_utc_offset(getattr(item, spec.event_time), self.zone_starts, self.zone_offsets)
        self._r_t[0] = u
        self._r_o[0] = o
        norm = spec.normalize_level
        for k, c in enumerate(spec.categorical):
            table = self.codes[c.name]
            self._r_c[0, k] = table.get(norm(getattr(item, c.name)), len(table))
        for k, nm in enumerate(spec.numeric):
            v = getattr(item, nm.name)
            self._r_n[0, k] = np.nan if v is None else v
        build_features(
            f[0:1],
            f[1:2],
            f[2:3],
            f[3:4],
            self._r_t,
            self._r_o,
            self._r_c,
            self._r_n,
            self.tflags,
            out,
        )
        return out
