"""The benchmark models and data: shared by ``bench/run.py`` (the suite) and its tests.

The data: 20 float32 features (14 continuous, 2 categorical codes incl. an unseen one,
4 numerics with ~15 % NaN) and a non-linear target; a model is a LightGBM regressor of
``trees`` x ``leaves`` trained on it.

:func:`node_visits` gives what the physical-limit estimate needs: how many internal
nodes a row visits, summed over the trees (the depth of the leaf it reaches in each).
"""

from __future__ import annotations

import os
from typing import Any

import lightgbm as lgb
import numpy as np

N_CONT, CATS, N_NUM = 14, (12, 6), 4
F = N_CONT + len(CATS) + N_NUM
CATEGORICAL = [N_CONT + k for k in range(len(CATS))]


def make_data(n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """``X[n, 20]`` float32 (continuous, categorical codes incl. an unseen one, numerics
    with NaN) and a non-linear target."""
    X = np.empty((n, F), dtype=np.float32)
    X[:, :N_CONT] = rng.normal(size=(n, N_CONT))
    for k, levels in enumerate(CATS):
        X[:, N_CONT + k] = rng.integers(0, levels + 1, n)  # levels + the unknown code
    num = rng.gamma(2.0, 2.0, size=(n, N_NUM))
    num[rng.random((n, N_NUM)) < 0.15] = np.nan
    X[:, N_CONT + len(CATS) :] = num
    y = (
        20
        + 8 * np.abs(X[:, 0])
        + 3 * np.sin(3 * X[:, 1])
        + 2 * X[:, 2] * X[:, 3]
        + np.where(X[:, N_CONT] % 3 == 0, 5.0, -2.0)
        + 1.5 * X[:, N_CONT + 1]
        + np.nan_to_num(num[:, 0], nan=6.0)
        + rng.normal(0, 2, n)
    )
    return X, y


def train(trees: int, leaves: int, rows: int, rng: np.random.Generator) -> lgb.Booster:
    """A ``trees`` x ``leaves`` regressor on ``rows`` rows of :func:`make_data`."""
    X, y = make_data(rows, rng)
    return lgb.train(
        {
            "num_leaves": leaves,
            "min_data_in_leaf": 10,
            "verbose": -1,
            "num_threads": os.cpu_count() or 1,
            "seed": 0,
        },
        lgb.Dataset(X, y, categorical_feature=CATEGORICAL),
        num_boost_round=trees,
    )


def model_shape(booster: lgb.Booster) -> dict[str, Any]:
    info = booster.dump_model()["tree_info"]
    leaves = np.array([t["num_leaves"] for t in info])
    return {
        "trees": len(info),
        "mean_leaves": float(leaves.mean()),
        "min_leaves": int(leaves.min()),
        "features": booster.num_feature(),
        "internal_nodes": int((leaves - 1).sum()),
        "leaves_total": int(leaves.sum()),
    }


def leaf_depths(booster: lgb.Booster) -> list[np.ndarray]:
    """Per tree, ``depth[leaf_index]``: internal nodes on the path from the root."""
    out: list[np.ndarray] = []
    for tree in booster.dump_model()["tree_info"]:
        depth = np.zeros(max(1, int(tree["num_leaves"])), dtype=np.int64)
        stack: list[tuple[dict[str, Any], int]] = [(tree["tree_structure"], 0)]
        while stack:
            node, d = stack.pop()
            if "leaf_index" in node or "split_index" not in node:
                depth[int(node.get("leaf_index", 0))] = d
            else:
                stack.append((node["left_child"], d + 1))
                stack.append((node["right_child"], d + 1))
        out.append(depth)
    return out


def node_visits(booster: lgb.Booster, X: np.ndarray) -> dict[str, float]:
    """Internal nodes visited per row (sum over trees of the depth of the leaf
    reached; ``predict(pred_leaf=True)``): mean, p50, max over the rows of ``X``, and
    the deepest path of any tree (the critical path of one tree walk)."""
    leaves = np.asarray(booster.predict(X, pred_leaf=True), dtype=np.int64)
    if leaves.ndim == 1:
        leaves = leaves[:, None]
    depths = leaf_depths(booster)
    per_row = np.zeros(leaves.shape[0], dtype=np.int64)
    for t, depth in enumerate(depths):
        per_row += depth[leaves[:, t]]
    return {
        "rows": len(per_row),
        "mean": float(per_row.mean()),
        "p50": float(np.median(per_row)),
        "max": int(per_row.max()),
        "mean_per_tree": float(per_row.mean() / max(1, len(depths))),
        "max_tree_depth": int(max(int(d.max()) for d in depths)),
    }
