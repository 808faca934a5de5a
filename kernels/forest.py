"""Numba kernels that evaluate a flattened LightGBM forest (bit-exact with LightGBM).

Flattened layout
================

A forest of ``T`` trees with ``N`` internal nodes and ``L`` leaves in total is five
arrays (built by :func:`training.export.flatten_booster`, stored in ``.forest.npz``):

``nodes``: ``NODE_DTYPE[N]`` (one aligned 24-byte record per internal node)
    ``threshold`` float64
        numerical split: go left iff ``x <= threshold`` (LightGBM's own float64
        threshold, so the comparison of the float32 input widened to float64 is
        exactly LightGBM's); categorical split: the index ``s`` of the node's
        category set in ``cat_bounds`` (an integer stored as float64, as LightGBM
        itself stores it).
    ``feature`` int32
        column of ``X`` the node tests.
    ``left``, ``right`` int32
        child reference: ``c >= 0`` is an internal node index into ``nodes``,
        ``c < 0`` is the leaf ``~c`` (``= -c - 1``) in ``leaf_value``. Nodes are
        numbered in pre-order, so every internal child index is larger than its
        parent's (the loader checks this, which guarantees termination).
    ``flags`` uint8
        bits 0-1 missing type (``MISSING_NONE`` 0, ``MISSING_ZERO`` 1,
        ``MISSING_NAN`` 2), bit 2 ``FLAG_DEFAULT_LEFT``, bit 3 ``FLAG_CATEGORICAL``.
``cat_bounds``: int32[S + 1]
    category set ``s`` is the bitset ``cat_bits[cat_bounds[s]:cat_bounds[s + 1]]``.
``cat_bits``: uint32[W]
    category ``c`` is in a set iff ``word = c // 32`` is inside the set and bit
    ``c % 32`` of that word is 1.
``roots``: int32[T]
    the root reference of every tree, encoded like a child (a one-leaf tree has a
    negative root).
``leaf_value``: float64[L]
    leaf outputs as LightGBM dumps them: shrinkage (learning rate) already applied
    and the init score (``boost_from_average``) already folded into the first
    tree's leaves, so no separate bias term exists.

Plus two scalars: ``divisor`` (the number of trees for random-forest boosting,
``average_output``; else 1.0) and ``transform`` (``TRANSFORM_*``, the objective's
output conversion, with ``transform_param`` e.g. the sigmoid slope).

Decision rules (LightGBM 4.x ``Tree::NumericalDecision`` / ``CategoricalDecision``),
with ``v = float64(X[i, feature])``:

* numerical: if ``v`` is NaN and missing type is not NaN, ``v = 0``; if
  ``|v| <= 1e-35f`` (LightGBM's ``kZeroThreshold``), ``v = 0`` (LightGBM's
  dense-matrix reader drops such values as zeros before the trees see them). If
  (missing type Zero and ``v == 0``) or (missing type NaN and ``v`` is NaN): go to
  the default child (left iff ``FLAG_DEFAULT_LEFT``). Else left iff ``v <= threshold``.
  Values beyond ±1e300 (i.e. ``±inf``) are clamped to ±1e300 first, as LightGBM's
  ``AvoidInf`` does; so ``+inf`` goes left at a "no upper bound" threshold (stored 1e300).
* categorical: NaN goes right; ``c = int(v)`` truncated toward zero; ``c < 0`` (i.e.
  ``v <= -1``) or ``v >= 2**31`` (LightGBM's int cast overflows to a negative
  number there) goes right; else left iff ``c`` is in the node's set (unseen codes
  beyond the bitset go right).

Prediction: ``raw = (sum over trees t in order of leaf_value[leaf_t(x)]) / divisor``
(accumulated in float64 in tree order, as LightGBM does), then
``out = transform(raw)``: identity; ``exp(raw)`` (poisson, gamma, tweedie);
``1 / (1 + exp(-transform_param * raw))`` (binary, cross-entropy); ``sign(raw) *
raw**2`` (regression with ``reg_sqrt``).

Batch kernels work in blocks of ``BLOCK`` rows, tree-major inside a block (one
tree's nodes stay in cache while the block's rows walk it: ~1.7x the rows/s of a
row-major loop on a 500-tree forest); every row still adds its trees in order, so
results are bit-identical to the row-major order and to LightGBM.
:func:`predict_forest_row` is the one-row path (returns a float).

Missing-value rules are applied once per row, not at every node: LightGBM fixes the
missing type per feature (its bin mapper), so :func:`feature_kinds` gives one
``KIND_*`` per feature and each row is first normalised into float64: ``|v| <= 1e-35f``
becomes 0 and ``±inf`` becomes ±1e300; NaN becomes 0 on ``KIND_NUMERIC`` features;
on ``KIND_NUMERIC_ZERO`` features 0 and NaN become NaN. A numerical node is then only
"left iff ``x <= threshold``, else NaN takes the default branch, else right" —
the rules above, with one comparison and one NaN test per node.

All kernels are pure: no I/O, no global state; callers allocate ``out`` (float64[n]).
There are no bounds checks: only pass a forest that passed ``Forest.validate``
(``Forest.args()`` gives every kernel argument after ``X``, ``kinds`` included).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from numba import njit, prange

__all__ = [
    "BLOCK",
    "FLAG_CATEGORICAL",
    "FLAG_DEFAULT_LEFT",
    "KIND_CATEGORICAL",
    "KIND_NUMERIC",
    "KIND_NUMERIC_NAN",
    "KIND_NUMERIC_ZERO",
    "MISSING_MASK",
    "MISSING_NAN",
    "MISSING_NONE",
    "MISSING_ZERO",
    "NODE_DTYPE",
    "TRANSFORM_EXP",
    "TRANSFORM_IDENTITY",
    "TRANSFORM_SIGMOID",
    "TRANSFORM_SQUARE",
    "feature_kinds",
    "predict_forest",
    "predict_forest_parallel",
    "predict_forest_row",
    "predict_forests_row",
    "stack_forests",
]

MISSING_NONE = 0
MISSING_ZERO = 1
MISSING_NAN = 2
MISSING_MASK = 3
FLAG_DEFAULT_LEFT = 4
FLAG_CATEGORICAL = 8

TRANSFORM_IDENTITY = 0
TRANSFORM_EXP = 1
TRANSFORM_SIGMOID = 2
TRANSFORM_SQUARE = 3

#: One internal node (24 bytes aligned): a node's fields sit together in memory.
NODE_DTYPE = np.dtype(
    [
        ("threshold", np.float64),
        ("feature", np.int32),
        ("left", np.int32),
        ("right", np.int32),
        ("flags", np.uint8),
    ],
    align=True,
)

# LightGBM's kZeroThreshold is the float 1e-35f, compared after widening to double.
_ZERO = float(np.float32(1e-35))
# LightGBM clamps feature values beyond ±1e300 (Common::AvoidInf) before comparing, and
# stores "no upper bound" thresholds as 1e300: +inf must go left at such a node.
_HUGE = 1e300
_INT_LIMIT = 2147483648.0

#: Rows per block of the batch kernels (tree-major inside a block; measured best
#: between 256 and 512 rows for 500 x 63-leaf forests).
BLOCK = 256


#: ``feature_kinds`` values: how a feature's splits treat missing values.
KIND_NUMERIC = 0  # numerical, missing type None: NaN is compared as 0
KIND_NUMERIC_NAN = 1  # numerical, missing type NaN: NaN takes the default branch
KIND_CATEGORICAL = 2
KIND_NUMERIC_ZERO = 3  # numerical, missing type Zero (zero_as_missing): 0 and NaN default


@njit(cache=True)
def feature_kinds(nodes: np.ndarray, n_features: int) -> np.ndarray:
    """``KIND_*`` of every feature, read off the nodes that split on it."""
    kinds = np.zeros(n_features, dtype=np.uint8)
    for k in range(nodes.shape[0]):
        nd = nodes[k]
        f = nd.feature
        if nd.flags & FLAG_CATEGORICAL:
            kinds[f] = KIND_CATEGORICAL
        elif nd.flags & MISSING_MASK == MISSING_NAN:
            kinds[f] = KIND_NUMERIC_NAN
        elif nd.flags & MISSING_MASK == MISSING_ZERO:
            kinds[f] = KIND_NUMERIC_ZERO
    return kinds


@njit(cache=True, inline="always")
def _normalise(X: np.ndarray, i: int, kinds: np.ndarray, x: np.ndarray, j: int) -> None:
    """Row ``i`` of ``X`` into ``x[j]`` with the missing-value rules applied (module doc)."""
    for f in range(X.shape[1]):
        v = float(X[i, f])
        k = kinds[f]
        if k != KIND_CATEGORICAL:  # categorical values are used as they are
            if np.isnan(v):
                if k == KIND_NUMERIC:
                    v = 0.0
            elif v >= -_ZERO and v <= _ZERO:
                v = np.nan if k == KIND_NUMERIC_ZERO else 0.0
            elif v > _HUGE:
                v = _HUGE
            elif v < -_HUGE:
                v = -_HUGE
        x[j, f] = v


@njit(cache=True, inline="always")
def _leaf(
    x: np.ndarray,
    j: int,
    node: int,
    nodes: np.ndarray,
    cat_bounds: np.ndarray,
    cat_bits: np.ndarray,
) -> int:
    """Index into ``leaf_value`` of the leaf normalised row ``x[j]`` reaches from ``node``."""
    while node >= 0:
        nd = nodes[node]
        v = x[j, nd.feature]
        if nd.flags & FLAG_CATEGORICAL:
            go_left = False
            if v > -1.0 and v < _INT_LIMIT:  # False for NaN, ±inf, <= -1, >= 2**31
                c = np.int64(v)  # truncation toward zero, as C++ static_cast<int>
                s = np.int64(nd.threshold)
                lo = cat_bounds[s]
                word = c >> 5
                if word < cat_bounds[s + 1] - lo:
                    go_left = (cat_bits[lo + word] >> np.uint32(c & 31)) & np.uint32(1) != 0
            node = nd.left if go_left else nd.right
        elif v <= nd.threshold:
            node = nd.left
        elif v == v:
            node = nd.right
        else:  # missing: the default branch
            node = nd.left if nd.flags & FLAG_DEFAULT_LEFT else nd.right
    return -node - 1


@njit(cache=True, inline="always")
def _finish(raw: float, divisor: float, transform: int, transform_param: float) -> float:
    raw = raw / divisor
    if transform == TRANSFORM_EXP:
        return np.exp(raw)
    if transform == TRANSFORM_SIGMOID:
        return 1.0 / (1.0 + np.exp(-transform_param * raw))
    if transform == TRANSFORM_SQUARE:
        return raw * raw if raw >= 0.0 else -raw * raw
    return raw


@njit(cache=True, inline="always")
def _block(
    X: np.ndarray,
    start: int,
    end: int,
    nodes: np.ndarray,
    cat_bounds: np.ndarray,
    cat_bits: np.ndarray,
    roots: np.ndarray,
    leaf_value: np.ndarray,
    divisor: float,
    transform: int,
    transform_param: float,
    kinds: np.ndarray,
    out: np.ndarray,
) -> None:
    """Rows ``start:end``, normalised once, then tree-major: one tree's nodes stay in
    cache while every row of the block walks it; each row still sums its trees in order."""
    m = end - start
    x = np.empty((m, X.shape[1]))
    for j in range(m):
        _normalise(X, start + j, kinds, x, j)
    acc = np.zeros(m)
    for t in range(roots.shape[0]):
        root = roots[t]
        for j in range(m):
            acc[j] += leaf_value[_leaf(x, j, root, nodes, cat_bounds, cat_bits)]
    for j in range(m):
        out[start + j] = _finish(acc[j], divisor, transform, transform_param)


@njit(cache=True)
def predict_forest(
    X: np.ndarray,
    nodes: np.ndarray,
    cat_bounds: np.ndarray,
    cat_bits: np.ndarray,
    roots: np.ndarray,
    leaf_value: np.ndarray,
    divisor: float,
    transform: int,
    transform_param: float,
    kinds: np.ndarray,
    out: np.ndarray,
) -> None:
    """Fill ``out[n]`` (float64) with the forest's prediction for every row of
    ``X[n, F]`` (float32, C-contiguous), one thread, in blocks of ``BLOCK`` rows."""
    n = X.shape[0]
    for start in range(0, n, BLOCK):
        _block(
            X, start, min(n, start + BLOCK), nodes, cat_bounds, cat_bits, roots, leaf_value,
            divisor, transform, transform_param, kinds, out,
        )  # fmt: skip


@njit(cache=True, parallel=True)
def predict_forest_parallel(
    X: np.ndarray,
    nodes: np.ndarray,
    cat_bounds: np.ndarray,
    cat_bits: np.ndarray,
    roots: np.ndarray,
    leaf_value: np.ndarray,
    divisor: float,
    transform: int,
    transform_param: float,
    kinds: np.ndarray,
    out: np.ndarray,
) -> None:
    """:func:`predict_forest` with the row blocks spread over numba's threads
    (``prange``; use ``numba.set_num_threads``). Results are identical."""
    n = X.shape[0]
    for b in prange((n + BLOCK - 1) // BLOCK):
        start = b * BLOCK
        _block(
            X, start, min(n, start + BLOCK), nodes, cat_bounds, cat_bits, roots, leaf_value,
            divisor, transform, transform_param, kinds, out,
        )  # fmt: skip


@njit(cache=True)
def predict_forest_row(
    X: np.ndarray,
    nodes: np.ndarray,
    cat_bounds: np.ndarray,
    cat_bits: np.ndarray,
    roots: np.ndarray,
    leaf_value: np.ndarray,
    divisor: float,
    transform: int,
    transform_param: float,
    kinds: np.ndarray,
) -> float:
    """The prediction for row 0 of ``X[1, F]``, returned as a float (no output
    array, no block accumulator: the single-request fast path)."""
    x = np.empty((1, X.shape[1]))
    _normalise(X, 0, kinds, x, 0)
    acc = 0.0
    for t in range(roots.shape[0]):
        acc += leaf_value[_leaf(x, 0, roots[t], nodes, cat_bounds, cat_bits)]
    return _finish(acc, divisor, transform, transform_param)


def stack_forests(parts: Sequence[tuple[Any, ...]]) -> tuple[Any, ...]:
    """The arguments of :func:`predict_forests_row` (after ``X``, before ``out``) for
    the forests whose kernel arguments (``Forest.args()``) are ``parts``, in order.

    Node, leaf and category-set references of forest ``k`` are shifted past those of
    the forests before it; ``tree_bounds[k]:tree_bounds[k + 1]`` are its trees.
    """
    nodes, cat_bounds, cat_bits, roots, leaves = [], [np.zeros(1, np.int32)], [], [], []
    tree_bounds = [0]
    n_off = l_off = s_off = b_off = 0
    for nd, cb, bits, rts, lv, *_ in parts:
        nd = nd.copy()
        for side in ("left", "right"):
            ref = nd[side]
            nd[side] = np.where(ref >= 0, ref + n_off, ref - l_off)
        cat = (nd["flags"] & FLAG_CATEGORICAL) != 0
        nd["threshold"][cat] += s_off
        nodes.append(nd)
        cat_bounds.append(cb[1:] + b_off)
        cat_bits.append(bits)
        roots.append(np.where(rts >= 0, rts + n_off, rts - l_off).astype(np.int32))
        leaves.append(lv)
        tree_bounds.append(tree_bounds[-1] + rts.shape[0])
        n_off += nd.shape[0]
        l_off += lv.shape[0]
        s_off += cb.shape[0] - 1
        b_off += bits.shape[0]
    return (
        np.concatenate(nodes),
        np.concatenate(cat_bounds).astype(np.int32),
        np.concatenate(cat_bits).astype(np.uint32),
        np.concatenate(roots).astype(np.int32),
        np.array(tree_bounds, dtype=np.int64),
        np.concatenate(leaves).astype(np.float64),
        np.array([p[5] for p in parts], dtype=np.float64),
        np.array([p[6] for p in parts], dtype=np.int64),
        np.array([p[7] for p in parts], dtype=np.float64),
        np.ascontiguousarray(np.stack([p[8] for p in parts])),
    )


@njit(cache=True)
def predict_forests_row(
    X: np.ndarray,
    nodes: np.ndarray,
    cat_bounds: np.ndarray,
    cat_bits: np.ndarray,
    roots: np.ndarray,
    tree_bounds: np.ndarray,
    leaf_value: np.ndarray,
    divisors: np.ndarray,
    transforms: np.ndarray,
    transform_params: np.ndarray,
    kinds: np.ndarray,
    out: np.ndarray,
) -> None:
    """``out[k]`` = forest ``k``'s prediction for row 0 of ``X[1, F]``, for every forest
    stacked by :func:`stack_forests` (e.g. a model version's ETA and its two quantile
    models): one call instead of one per model, the same results as
    :func:`predict_forest_row` on each."""
    x = np.empty((1, X.shape[1]))
    for k in range(tree_bounds.shape[0] - 1):
        _normalise(X, 0, kinds[k], x, 0)
        acc = 0.0
        for t in range(tree_bounds[k], tree_bounds[k + 1]):
            acc += leaf_value[_leaf(x, 0, roots[t], nodes, cat_bounds, cat_bits)]
        out[k] = _finish(acc, divisors[k], transforms[k], transform_params[k])
