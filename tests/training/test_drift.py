"""Tests for training.drift: reference histograms, PSI and the drift report."""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from kernels.errors import ConfigError, DataError, ModelLoadError
from training.drift import drift_report, psi, psi_flag, reference_histograms


def _ref1(values: np.ndarray) -> dict[str, Any]:
    """Reference entry of a single feature."""
    return reference_histograms(np.asarray(values, dtype=float)[:, None], ["x"])["x"]


def test_same_distribution_gives_small_psi() -> None:
    rng = np.random.default_rng(0)
    ref = _ref1(rng.normal(size=20_000))
    assert psi(ref, rng.normal(size=20_000)) < 0.01


def test_shifted_distribution_gives_drift() -> None:
    rng = np.random.default_rng(1)
    ref = _ref1(rng.normal(size=20_000))
    value = psi(ref, rng.normal(loc=1.0, size=20_000))
    assert value > 0.2
    assert psi_flag(value) == "drift"
    assert psi_flag(0.15) == "moderate"
    assert psi_flag(0.05) == "ok"


def test_values_outside_training_range_and_infinities_are_counted() -> None:
    rng = np.random.default_rng(2)
    ref = _ref1(rng.uniform(0, 1, size=5_000))
    assert psi(ref, rng.uniform(5, 6, size=5_000)) > 1.0
    assert np.isfinite(psi(ref, np.full(100, np.inf)))
    assert psi(ref, np.full(100, np.inf)) > 1.0


def test_nan_share_change_is_detected() -> None:
    rng = np.random.default_rng(3)
    base = rng.normal(size=10_000)
    base[rng.random(10_000) < 0.05] = np.nan
    ref = _ref1(base)
    assert ref["nan_share"] == pytest.approx(0.05, abs=0.01)
    assert sum(ref["shares"]) + ref["nan_share"] == pytest.approx(1.0)
    new = rng.normal(size=10_000)
    new[rng.random(10_000) < 0.40] = np.nan
    assert psi(ref, new) > 0.2
    same_share = rng.normal(size=10_000)
    same_share[rng.random(10_000) < 0.05] = np.nan
    assert psi(ref, same_share) < 0.02


def test_point_mass_and_discrete_features_get_their_own_bins() -> None:
    rng = np.random.default_rng(4)
    mostly_zero = np.where(rng.random(10_000) < 0.9, 0.0, rng.exponential(size=10_000))
    ref = _ref1(mostly_zero)
    assert 0.0 in ref["edges"]
    half_zero = np.where(rng.random(10_000) < 0.5, 0.0, rng.exponential(size=10_000))
    assert psi(ref, half_zero) > 0.2

    binary = _ref1(rng.integers(0, 2, size=10_000))
    assert psi(binary, rng.integers(0, 2, size=10_000)) < 0.01
    assert psi(binary, (rng.random(10_000) < 0.9).astype(float)) > 0.2
    assert psi(binary, np.full(1_000, 0.5)) > 1.0  # a value between the levels

    constant = _ref1(np.full(1_000, 3.0))
    assert psi(constant, np.full(1_000, 3.0)) == pytest.approx(0.0, abs=1e-12)
    assert psi(constant, np.full(1_000, 4.0)) > 1.0


def test_categorical_shares() -> None:
    rng = np.random.default_rng(5)
    codes = rng.choice([0, 1, 2, 3], p=[0.5, 0.3, 0.15, 0.05], size=20_000).astype(float)
    codes[:200] = np.nan
    X = np.column_stack([codes, rng.normal(size=20_000)])
    ref = reference_histograms(X, ["vehicle", "dist"], categorical=[0])
    entry = ref["vehicle"]
    assert entry["kind"] == "categorical"
    assert entry["codes"] == [0, 1, 2, 3]
    assert entry["shares"] == pytest.approx([0.495, 0.297, 0.1485, 0.0495], abs=0.01)
    assert entry["nan_share"] == pytest.approx(0.01)
    same = rng.choice([0, 1, 2, 3], p=[0.5, 0.3, 0.15, 0.05], size=20_000).astype(float)
    assert 0.03 < psi(entry, same) < 0.1  # only the 1% NaN share is gone
    same[:200] = np.nan
    assert psi(entry, same) < 0.01
    flipped = rng.choice([0, 1, 2, 3], p=[0.05, 0.15, 0.3, 0.5], size=20_000)
    assert psi(entry, flipped) > 0.2
    unseen = np.full(1_000, 7.0)  # a code never seen in training: the "other" bin
    assert psi(entry, unseen) > 1.0


def test_reference_is_json_serialisable_with_finite_unique_edges() -> None:
    rng = np.random.default_rng(6)
    X = np.column_stack(
        [
            rng.normal(size=3_000),
            rng.integers(0, 4, size=3_000),
            np.full(3_000, np.nan),
            np.where(rng.random(3_000) < 0.3, np.inf, rng.normal(size=3_000)),
        ]
    )
    ref = reference_histograms(X, ["a", "b", "c", "d"], categorical=[1])
    text = json.dumps(ref, allow_nan=False)
    assert json.loads(text) == ref
    for name in ("a", "c", "d"):
        edges = ref[name]["edges"]
        assert all(np.isfinite(edges))
        assert edges == sorted(set(edges))
        assert len(ref[name]["shares"]) == len(edges) + 1
    assert len(ref["a"]["edges"]) == 9  # 10 quantile bins
    assert ref["c"]["nan_share"] == 1.0
    report = drift_report(ref, X, ["a", "b", "c", "d"])
    assert json.loads(json.dumps(report, allow_nan=False)) == report


def test_drift_report_flags_and_ks() -> None:
    rng = np.random.default_rng(7)
    n = 5_000
    train = np.column_stack([rng.normal(size=n), rng.exponential(size=n), rng.integers(0, 3, n)])
    names = ["stable", "shifted", "cat"]
    ref = reference_histograms(train, names, categorical=[2])
    live = np.column_stack(
        [rng.normal(size=n), rng.exponential(size=n) * 1.25, rng.integers(0, 3, n)]
    )
    report = drift_report(ref, live, names)
    feats = report["features"]
    assert feats["stable"]["flag"] == "ok"
    assert feats["stable"]["ks_pvalue"] > 0.001
    assert feats["shifted"]["psi"] >= 0.02
    assert feats["shifted"]["ks_pvalue"] < 1e-6
    assert feats["cat"]["ks_pvalue"] is None
    assert report["n_rows"] == n

    moved = live.copy()
    moved[:, 1] += 2.0
    report = drift_report(ref, moved, names)
    assert report["features"]["shifted"]["flag"] == "drift"
    assert report["overall"]["flag"] == "drift"
    assert report["overall"]["drift"] == ["shifted"]
    assert report["overall"]["max_psi"] == report["features"]["shifted"]["psi"]


def test_ks_on_discrete_data_from_same_distribution_is_not_flagged() -> None:
    rng = np.random.default_rng(8)
    ref = reference_histograms(rng.integers(1, 6, size=(50_000, 1)), ["items"])
    report = drift_report(ref, rng.integers(1, 6, size=(50_000, 1)), ["items"])
    assert report["features"]["items"]["ks_pvalue"] > 0.001


def test_errors_say_what_to_fix() -> None:
    X = np.zeros((10, 2))
    with pytest.raises(DataError, match="one name per column"):
        reference_histograms(X, ["a"])
    with pytest.raises(DataError, match="no rows"):
        reference_histograms(np.zeros((0, 1)), ["a"])
    with pytest.raises(ConfigError, match="bins"):
        reference_histograms(X, ["a", "b"], bins=1)
    with pytest.raises(ConfigError, match="out of range"):
        reference_histograms(X, ["a", "b"], categorical=[5])
    ref = reference_histograms(X, ["a", "b"])
    with pytest.raises(DataError, match="no reference histogram"):
        drift_report(ref, np.zeros((3, 1)), ["zz"])
    with pytest.raises(ModelLoadError, match=r"reference_histograms\(\.\.\.\)\[name\]"):
        psi(ref, np.zeros(3))  # the whole reference instead of one entry
    with pytest.raises(DataError, match="at least one"):
        psi(ref["a"], np.zeros(0))


_floats = st.one_of(st.floats(min_value=-1e6, max_value=1e6), st.just(float("nan")))


@settings(max_examples=60, deadline=None)
@given(
    data=hnp.arrays(np.float64, st.integers(1, 300), elements=_floats),
    other=hnp.arrays(np.float64, st.integers(1, 300), elements=_floats),
    bins=st.integers(2, 12),
    categorical=st.booleans(),
)
def test_psi_properties(data: np.ndarray, other: np.ndarray, bins: int, categorical: bool) -> None:
    if categorical:
        data, other = np.round(data / 1e5), np.round(other / 1e5)
    ref = reference_histograms(
        data[:, None], ["x"], bins=bins, categorical=[0] if categorical else ()
    )
    json.dumps(ref, allow_nan=False)
    assert psi(ref["x"], data) == pytest.approx(0.0, abs=1e-9)
    value = psi(ref["x"], other)
    assert np.isfinite(value)
    assert value >= 0.0
