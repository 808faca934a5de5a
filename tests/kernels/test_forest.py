"""The numba forest kernels are bit-exact with ``Booster.predict``.

Models cover: a feature with NaN in training (missing type NaN), features without
NaN (NaN -> 0), a categorical feature, zero_as_missing (missing type Zero),
objective transforms (poisson: exp), random-forest averaging and one-leaf trees.
"""

from __future__ import annotations

from typing import Any

import lightgbm as lgb
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from kernels.forest import (
    FLAG_CATEGORICAL,
    KIND_NUMERIC_ZERO,
    MISSING_NAN,
    MISSING_NONE,
    MISSING_ZERO,
    predict_forest,
    predict_forest_parallel,
    predict_forest_row,
    predict_forests_row,
    stack_forests,
)
from tests.treedata import CAT, NAN_COL, F, model_zoo
from tests.treedata import make_data as _data
from tests.treedata import train_model as _train
from training.export import Forest, flatten_booster


@pytest.fixture(scope="session")
def models() -> dict[str, lgb.Booster]:
    zoo = model_zoo()  # the kinds the forest tests were written for
    return {k: zoo[k] for k in ("l2", "quantile", "zero_missing", "poisson", "rf")}


@pytest.fixture(scope="session")
def forests(models: dict[str, lgb.Booster]) -> dict[str, Forest]:
    return {k: flatten_booster(b) for k, b in models.items()}


def _f32(v: float | np.floating) -> float:
    return float(np.float32(v))


SPECIAL = [
    _f32(v)
    for v in (
        np.nan,
        np.inf,
        -np.inf,
        0.0,
        -0.0,
        1e-36,
        -1e-36,
        1e-35,
        -1e-35,
        1e-45,
        1e30,
        -1e30,
        np.finfo(np.float32).max,
        -1.0,
        -0.5,
        -0.99,
        0.5,
        2.7,
        3e9,
        2.0**31,
        2.0**31 - 128,
        40.0,
        1000.0,
    )
]
ELEMENT = st.one_of(
    st.sampled_from(SPECIAL),
    st.floats(width=32, allow_nan=True, allow_infinity=True),
    st.floats(-5, 40, width=32),
    st.integers(-3, 40).map(float),
)
MATRIX = st.integers(1, 40).flatmap(lambda n: hnp.arrays(np.float32, (n, F), elements=ELEMENT))


def _all_paths(forest: Forest, X: np.ndarray) -> list[np.ndarray]:
    a = forest.args()
    single = np.empty(X.shape[0])
    par = np.empty(X.shape[0])
    predict_forest(X, *a, single)
    predict_forest_parallel(X, *a, par)
    row = np.array([predict_forest_row(X[i : i + 1], *a) for i in range(X.shape[0])])
    return [single, par, row]


def test_zero_as_missing_model_has_zero_kind_features(forests: dict[str, Forest]) -> None:
    """Every model runs on the same kernels; zero_as_missing shows up as a feature kind."""
    for name, f in forests.items():
        kinds = f.args()[-1]
        assert (KIND_NUMERIC_ZERO in kinds) == (name == "zero_missing"), name


def _assert_exact(ref: Any, got: np.ndarray, X: np.ndarray) -> None:
    ref = np.asarray(ref)
    same = (ref == got) | (np.isnan(ref) & np.isnan(got))
    if not same.all():
        i = int(np.flatnonzero(~same)[0])
        raise AssertionError(f"row {i}: ref={ref[i]!r} got={got[i]!r} x={X[i].tolist()}")


def test_fixture_models_cover_the_split_kinds(forests: dict[str, Forest]) -> None:
    nodes = forests["l2"].nodes
    flags = nodes["flags"]
    assert np.any(flags & FLAG_CATEGORICAL), "no categorical split"
    nan_col = nodes["feature"] == NAN_COL
    assert np.any((flags[nan_col] & 3) == MISSING_NAN), "no NaN-aware split"
    assert np.any(((flags & 3) == MISSING_NONE) & ~nan_col & ((flags & FLAG_CATEGORICAL) == 0))
    assert np.any((forests["zero_missing"].nodes["flags"] & 3) == MISSING_ZERO)
    assert forests["rf"].divisor == forests["rf"].n_trees > 1


def test_layout_is_preorder_and_valid(forests: dict[str, Forest]) -> None:
    for f in forests.values():
        f.validate()
        idx = np.arange(f.nodes.shape[0])
        for side in ("left", "right"):
            ref = f.nodes[side]
            assert np.all((ref < 0) | (ref > idx))
        assert f.cat_bounds[-1] == f.cat_bits.size


@pytest.mark.parametrize("name", ["l2", "quantile", "zero_missing", "poisson", "rf"])
def test_holdout_exact(
    models: dict[str, lgb.Booster], forests: dict[str, Forest], name: str
) -> None:
    X, _ = _data(700, seed=5)
    ref = models[name].predict(X)
    for got in _all_paths(forests[name], X):
        _assert_exact(ref, got, X)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(X=MATRIX, which=st.sampled_from(["l2", "quantile", "zero_missing", "poisson", "rf"]))
def test_hypothesis_parity_exact(
    models: dict[str, lgb.Booster], forests: dict[str, Forest], X: np.ndarray, which: str
) -> None:
    """NaN, ±inf, huge/tiny values, negative, fractional and unseen categorical codes."""
    ref = models[which].predict(X)
    for got in _all_paths(forests[which], X):
        _assert_exact(ref, got, X)


KINDS = ["l2", "quantile", "zero_missing", "poisson", "rf"]


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(X=MATRIX)
def test_stacked_forests_row_exact(
    models: dict[str, lgb.Booster], forests: dict[str, Forest], X: np.ndarray
) -> None:
    """Five different forests (categorical sets, zero-as-missing, a transform, a divisor)
    stacked into one call give each forest's own LightGBM prediction, row by row."""
    stacked = stack_forests([forests[k].args() for k in KINDS])
    refs = [np.asarray(models[k].predict(X)) for k in KINDS]
    out = np.empty(len(KINDS))
    for i in range(X.shape[0]):
        predict_forests_row(X[i : i + 1], *stacked, out)
        for k, ref in enumerate(refs):
            _assert_exact(ref[i : i + 1], out[k : k + 1], X[i : i + 1])


def test_threshold_edges_exact(models: dict[str, lgb.Booster], forests: dict[str, Forest]) -> None:
    """Inputs at, just below and just above every float32-rounded threshold."""
    f, booster = forests["l2"], models["l2"]
    num = f.nodes[(f.nodes["flags"] & FLAG_CATEGORICAL) == 0]
    base, _ = _data(len(num) * 3, seed=9)
    rows = base.copy()
    for k, nd in enumerate(num):
        t = np.float32(nd["threshold"])
        for j, v in enumerate((t, np.nextafter(t, np.float32(np.inf)), np.nextafter(t, -np.inf))):
            rows[3 * k + j, nd["feature"]] = v
    ref = booster.predict(rows)
    for got in _all_paths(f, rows):
        _assert_exact(ref, got, rows)


def test_categorical_edge_values(
    models: dict[str, lgb.Booster], forests: dict[str, Forest]
) -> None:
    X, _ = _data(8, seed=3)
    for v in (-0.5, -0.999, -1.0, 0.9, 6.5, 8.0, 31.0, 32.0, 33.0, 1e9, 2.0**31, np.nan, -np.inf):
        Xc = X.copy()
        Xc[:, CAT] = v
        ref = models["l2"].predict(Xc)
        for got in _all_paths(forests["l2"], Xc):
            _assert_exact(ref, got, Xc)


def test_one_leaf_trees() -> None:
    X, _ = _data(300)
    booster = _train(X, np.full(300, 7.5), rounds=3)
    f = flatten_booster(booster)
    assert f.nodes.shape[0] == 0 and np.all(f.roots < 0)
    for got in _all_paths(f, X[:5]):
        _assert_exact(booster.predict(X[:5]), got, X[:5])


def test_empty_batch(forests: dict[str, Forest]) -> None:
    X = np.empty((0, F), dtype=np.float32)
    for parallel in (False, True):
        assert forests["l2"].predict(X, parallel=parallel).shape == (0,)


def _tampered(f: Forest, **changes: np.ndarray) -> Forest:
    fields = {k: getattr(f, k) for k in Forest.__dataclass_fields__}
    fields.update(changes)
    return Forest(**fields)


def test_validate_rejects_bad_references(forests: dict[str, Forest]) -> None:
    f = forests["l2"]
    nodes = f.nodes.copy()
    nodes["left"][1] = 0  # points backwards: would loop forever
    with pytest.raises(ValueError, match="forward"):
        _tampered(f, nodes=nodes).validate()
    nodes = f.nodes.copy()
    nodes["feature"][0] = F + 3
    with pytest.raises(ValueError, match="feature"):
        _tampered(f, nodes=nodes).validate()
    nodes = f.nodes.copy()
    cat = np.flatnonzero(nodes["flags"] & FLAG_CATEGORICAL)[0]
    nodes["threshold"][cat] = 1e6
    with pytest.raises(ValueError, match="category set"):
        _tampered(f, nodes=nodes).validate()
    with pytest.raises(ValueError, match="leaf"):
        _tampered(f, roots=np.array([-(10**6)], dtype=np.int32)).validate()
    with pytest.raises(ValueError, match="leaf_value"):
        _tampered(f, leaf_value=f.leaf_value.astype(np.float32)).validate()
