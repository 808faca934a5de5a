"""Small LightGBM fixtures shared by the forest, export and engine tests: six float32
features with NaN in training (column 1), a categorical column (2) and integer codes."""

from __future__ import annotations

import functools

import lightgbm as lgb
import numpy as np

F = 6
CAT = 2  # categorical column (codes 0..7)
NAN_COL = 1  # has NaN in training: missing type NaN


def make_data(n: int = 1500, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    X = np.empty((n, F), dtype=np.float32)
    X[:, 0] = rng.uniform(0, 30, n)
    X[:, 1] = rng.normal(0, 1, n)
    X[rng.random(n) < 0.25, 1] = np.nan
    X[:, 2] = rng.integers(0, 8, n)
    X[:, 3] = rng.integers(0, 4, n)
    X[:, 4] = rng.normal(size=n)
    X[:, 5] = rng.uniform(-1, 1, n)
    y = (
        40
        + 2 * X[:, 0]
        + 5 * np.nan_to_num(X[:, 1], nan=2.0)
        + np.where(np.isin(X[:, 2], [1, 3, 6]), 8.0, -4.0)
        + 3 * X[:, 3]
        + X[:, 4]
        + rng.normal(0, 1, n)
    )
    return X, y


def train_model(X: np.ndarray, y: np.ndarray, rounds: int = 30, **params: object) -> lgb.Booster:
    base = {"num_leaves": 15, "min_data_in_leaf": 10, "verbose": -1, "num_threads": 1, "seed": 0}
    ds = lgb.Dataset(X, y, categorical_feature=[CAT], free_raw_data=False)
    return lgb.train({**base, **params}, ds, num_boost_round=rounds)


@functools.cache
def model_zoo() -> dict[str, lgb.Booster]:
    """One model of every kind the forest kernels handle (trained once per session):
    l2, quantile, zero-as-missing, poisson (exp), random forest (divisor), binary
    (sigmoid with a slope), reg_sqrt (square)."""
    X, y = make_data()
    return {
        "l2": train_model(X, y),
        "quantile": train_model(X, y, objective="quantile", alpha=0.1),
        "zero_missing": train_model(X, y, zero_as_missing=True),
        "poisson": train_model(X, y / 10, objective="poisson", rounds=20),
        "rf": train_model(X, y, boosting="rf", bagging_fraction=0.6, bagging_freq=1, rounds=10),
        "binary": train_model(X, (y > np.median(y)).astype(float), objective="binary", sigmoid=0.7),
        "sqrt": train_model(X, y, reg_sqrt=True, rounds=20),
    }
