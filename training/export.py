"""Export LightGBM boosters to the serving engines and prove parity before shipping.

Every model is written in up to four forms, all checked against
``Booster.predict`` on the same *parity rows* (holdout rows plus adversarial
copies: NaN in every feature, huge/tiny/negative/infinite values, unseen
categorical codes, zeros):

====================  ==================  =============================================
engine                file                what
====================  ==================  =============================================
``lightgbm``          ``<name>.txt``      LightGBM text model, the reference
``onnx``              ``<name>.onnx``     onnxmltools ``TreeEnsembleRegressor`` (opset 15)
``numba``             ``<name>.forest.npz``  flattened forest for :mod:`kernels.forest`
``hummingbird``       ``<name>.hb.onnx``  tensorised trees (extra ``gpu``), optional
====================  ==================  =============================================

Parity metric: ``rel_i = |ref_i - got_i| / max(1, |ref_i|)`` (absolute error for
small predictions, relative error for large ones; NaN on one side only counts as
``inf``); an engine passes when ``max_i rel_i <= tol`` (default ``1e-4``).
"""

from __future__ import annotations

import json
import math
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import lightgbm as lgb
import numpy as np
from numpy.typing import ArrayLike

from kernels.errors import DataError, IntelliLogError, ModelLoadError
from kernels.forest import (
    FLAG_CATEGORICAL,
    FLAG_DEFAULT_LEFT,
    MISSING_NAN,
    MISSING_NONE,
    MISSING_ZERO,
    NODE_DTYPE,
    TRANSFORM_EXP,
    TRANSFORM_IDENTITY,
    TRANSFORM_SIGMOID,
    TRANSFORM_SQUARE,
    feature_kinds,
    predict_forest,
    predict_forest_parallel,
    predict_forest_row,
)
from training import optional

__all__ = [
    "ENGINE_FILES",
    "FOREST_FORMAT",
    "HB_RESTRICTION",
    "Forest",
    "ParityError",
    "ParityReport",
    "WorstRow",
    "check_parity",
    "export_engines",
    "export_hummingbird",
    "export_onnx",
    "flatten_booster",
    "parity_rows",
]

#: File suffix of every engine's artifact: ``<name><suffix>``.
ENGINE_FILES: dict[str, str] = {
    "lightgbm": ".txt",
    "onnx": ".onnx",
    "numba": ".forest.npz",
    "hummingbird": ".hb.onnx",
}
#: Version of the ``.forest.npz`` layout (bumped on incompatible changes).
FOREST_FORMAT = 1
#: The restriction recorded for a hummingbird engine that only passes without NaN.
HB_RESTRICTION = "inputs without missing values"

ONNX_OPSET = 15  # onnxmltools rejects anything higher for LightGBM

_MISSING = {"None": MISSING_NONE, "Zero": MISSING_ZERO, "NaN": MISSING_NAN}
_IDENTITY_OBJECTIVES = {
    "regression",
    "regression_l2",
    "l2",
    "mse",
    "regression_l1",
    "l1",
    "mae",
    "huber",
    "fair",
    "quantile",
    "mape",
    "lambdarank",
    "rank_xendcg",
    "custom",
    "none",
}
_EXP_OBJECTIVES = {"poisson", "gamma", "tweedie"}


class ParityError(IntelliLogError):
    """An exported engine does not reproduce ``Booster.predict``; the message lists
    the worst rows (index, inputs, reference, engine output)."""


# --------------------------------------------------------------------------- forest


@dataclass(frozen=True, slots=True, eq=False)
class Forest:
    """A flattened LightGBM forest: the arrays :mod:`kernels.forest` evaluates.

    Layout and decision rules: see the :mod:`kernels.forest` docstring. ``divisor``
    is the number of trees for ``average_output`` (random forest) models, else 1.
    """

    nodes: np.ndarray  # NODE_DTYPE[N]
    cat_bounds: np.ndarray  # int32[S + 1]
    cat_bits: np.ndarray  # uint32[W]
    roots: np.ndarray  # int32[T]
    leaf_value: np.ndarray  # float64[L]
    n_features: int
    divisor: float = 1.0
    transform: int = TRANSFORM_IDENTITY
    transform_param: float = 1.0

    @property
    def n_trees(self) -> int:
        return int(self.roots.shape[0])

    def args(
        self,
    ) -> tuple[
        np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray, float, int, float, np.ndarray
    ]:
        """The kernel arguments after ``X`` (before ``out``), in kernel order; the
        per-feature missing-value kinds are derived from the nodes."""
        return (
            self.nodes,
            self.cat_bounds,
            self.cat_bits,
            self.roots,
            self.leaf_value,
            self.divisor,
            self.transform,
            self.transform_param,
            feature_kinds(self.nodes, self.n_features),
        )

    def predict(self, X: np.ndarray, parallel: bool = False) -> np.ndarray:
        """float64[n] predictions for float32 ``X[n, F]`` (converted if needed)."""
        X = np.ascontiguousarray(X, dtype=np.float32)
        if X.ndim != 2 or X.shape[1] != self.n_features:
            raise DataError(f"expected a [n, {self.n_features}] matrix, got shape {X.shape}")
        out = np.empty(X.shape[0], dtype=np.float64)
        (predict_forest_parallel if parallel else predict_forest)(X, *self.args(), out)
        return out

    def predict_row(self, X: np.ndarray) -> float:
        """The prediction of ``X[0]`` (``X`` is ``[>=1, F]``) through the one-row kernel."""
        X = np.ascontiguousarray(X, dtype=np.float32)
        if X.ndim != 2 or X.shape[0] < 1 or X.shape[1] != self.n_features:
            raise DataError(f"expected a [1, {self.n_features}] matrix, got shape {X.shape}")
        return float(predict_forest_row(X, *self.args()))

    # ------------------------------------------------------------------ I/O

    def save(self, path: str | Path) -> None:
        """Write an uncompressed ``.npz`` (no pickles)."""
        meta = np.array(
            [FOREST_FORMAT, self.n_features, self.transform], dtype=np.int64
        )  # format, F, transform
        fmeta = np.array([self.divisor, self.transform_param], dtype=np.float64)
        with open(path, "wb") as fh:
            np.savez(
                fh,
                nodes=self.nodes,
                cat_bounds=self.cat_bounds,
                cat_bits=self.cat_bits,
                roots=self.roots,
                leaf_value=self.leaf_value,
                meta=meta,
                fmeta=fmeta,
            )

    @classmethod
    def load(cls, path: str | Path) -> Forest:
        """Read and fully validate a ``.forest.npz``.

        Raises ModelLoadError when the file is missing, not an npz, misses arrays,
        has wrong dtypes or any out-of-range reference (the kernels do no bounds
        checks, so a tampered file must never reach them).
        """
        path = Path(path)
        if not path.is_file():
            raise ModelLoadError(f"forest file {path} does not exist")
        try:
            with np.load(path, allow_pickle=False) as z:
                arrays = {k: z[k] for k in z.files}
        except Exception as exc:  # BadZipFile, ValueError, OSError, EOFError, ...
            raise ModelLoadError(
                f"forest file {path} is corrupt or not an .npz ({type(exc).__name__}: {exc}); "
                "re-export the model"
            ) from exc
        try:
            meta, fmeta = arrays["meta"], arrays["fmeta"]
            if meta.dtype != np.int64 or meta.shape != (3,) or fmeta.shape != (2,):
                raise ValueError("bad meta arrays")
            if int(meta[0]) != FOREST_FORMAT:
                raise ValueError(f"format {int(meta[0])}, this build reads {FOREST_FORMAT}")
            forest = cls(
                nodes=arrays["nodes"],
                cat_bounds=arrays["cat_bounds"],
                cat_bits=arrays["cat_bits"],
                roots=arrays["roots"],
                leaf_value=arrays["leaf_value"],
                n_features=int(meta[1]),
                divisor=float(fmeta[0]),
                transform=int(meta[2]),
                transform_param=float(fmeta[1]),
            )
            forest.validate()
        except (KeyError, ValueError, TypeError) as exc:
            raise ModelLoadError(
                f"forest file {path} is invalid: {exc}; re-export the model"
            ) from exc
        return forest

    def validate(self) -> None:
        """Check dtypes and every index; raise ValueError on the first problem.

        Guarantees for the kernels: children are in range and point forward
        (pre-order, so traversal terminates), features are ``< n_features``,
        category sets and leaf indices are in range.
        """
        want = {
            "nodes": NODE_DTYPE,
            "cat_bounds": np.dtype(np.int32),
            "cat_bits": np.dtype(np.uint32),
            "roots": np.dtype(np.int32),
            "leaf_value": np.dtype(np.float64),
        }
        for name, dt in want.items():
            arr = getattr(self, name)
            if not isinstance(arr, np.ndarray) or arr.dtype != dt or arr.ndim != 1:
                raise ValueError(f"{name} must be a 1-d {dt} array")
            if not arr.flags.c_contiguous:
                raise ValueError(f"{name} must be C-contiguous")
        n_nodes, n_leaves = self.nodes.shape[0], self.leaf_value.shape[0]
        if self.n_features < 1 or self.roots.shape[0] < 1 or n_leaves < 1:
            raise ValueError("empty forest")
        if not (math.isfinite(self.divisor) and self.divisor > 0):
            raise ValueError(f"divisor {self.divisor} is not positive")
        if self.transform not in (
            TRANSFORM_IDENTITY,
            TRANSFORM_EXP,
            TRANSFORM_SIGMOID,
            TRANSFORM_SQUARE,
        ):
            raise ValueError(f"unknown transform {self.transform}")

        def check_ref(ref: np.ndarray, lo: np.ndarray | int, what: str) -> None:
            internal = ref >= 0
            if np.any(internal & ((ref <= lo) | (ref >= n_nodes))):
                raise ValueError(f"{what}: node reference out of range or not forward")
            if np.any(~internal & (-ref.astype(np.int64) - 1 >= n_leaves)):
                raise ValueError(f"{what}: leaf reference out of range")

        idx = np.arange(n_nodes)
        check_ref(self.roots, -1, "roots")
        check_ref(self.nodes["left"], idx, "left")
        check_ref(self.nodes["right"], idx, "right")
        feat = self.nodes["feature"]
        if np.any((feat < 0) | (feat >= self.n_features)):
            raise ValueError("feature index out of range")
        flags = self.nodes["flags"]
        if np.any(flags & ~np.uint8(15)) or np.any((flags & 3) == 3):
            raise ValueError("unknown node flags")
        cb = self.cat_bounds
        if cb.shape[0] < 1 or cb[0] != 0 or np.any(np.diff(cb) < 0) or cb[-1] != self.cat_bits.size:
            raise ValueError("cat_bounds are not monotone offsets into cat_bits")
        cat = (flags & FLAG_CATEGORICAL) != 0
        sets = self.nodes["threshold"][cat]
        if np.any((sets != np.floor(sets)) | (sets < 0) | (sets >= cb.shape[0] - 1)):
            raise ValueError("categorical node refers to a missing category set")


def _objective(obj: str) -> tuple[int, float]:
    """(transform, param) of LightGBM's ``ConvertOutput`` for a dumped objective string
    such as ``"binary sigmoid:1"`` or ``"regression sqrt"``."""
    parts = obj.split()
    name = parts[0] if parts else "none"
    params = dict(p.split(":", 1) for p in parts[1:] if ":" in p)
    if name in _IDENTITY_OBJECTIVES:
        if name in {"regression", "regression_l2", "l2", "mse"} and "sqrt" in parts[1:]:
            return TRANSFORM_SQUARE, 1.0
        return TRANSFORM_IDENTITY, 1.0
    if name in _EXP_OBJECTIVES:
        return TRANSFORM_EXP, 1.0
    if name == "binary":
        return TRANSFORM_SIGMOID, float(params.get("sigmoid", 1.0))
    if name in {"cross_entropy", "xentropy"}:
        return TRANSFORM_SIGMOID, 1.0
    raise ModelLoadError(
        f"objective {obj!r} is not supported by the numba engine "
        "(single-output regression, poisson/gamma/tweedie, binary only)"
    )


def flatten_booster(booster: lgb.Booster) -> Forest:
    """Flatten ``booster.dump_model()`` into a :class:`Forest` (pre-order node numbering).

    Uses the same iterations as ``booster.predict()`` (``best_iteration`` when set).
    Raises ModelLoadError for models the kernels cannot evaluate exactly
    (multi-class, linear trees, unknown objectives).
    """
    dump = booster.dump_model()
    if int(dump.get("num_tree_per_iteration", 1)) != 1 or int(dump.get("num_class", 1)) != 1:
        raise ModelLoadError("only single-output models can be flattened (got a multi-class model)")
    transform, tparam = _objective(str(dump.get("objective", "none")))
    trees = dump["tree_info"]
    if not trees:
        raise ModelLoadError("the booster has no trees")
    n_features = int(dump["max_feature_idx"]) + 1

    nodes: list[tuple[float, int, int, int, int]] = []
    leaves: list[float] = []
    cat_bounds: list[int] = [0]
    cat_bits: list[int] = []
    roots: list[int] = []
    # (dict, parent index or -1 for root, side 0 = left / 1 = right)
    for tree in trees:
        stack: list[tuple[dict[str, Any], int, int]] = [(tree["tree_structure"], -1, 0)]
        while stack:
            nd, parent, side = stack.pop()
            if "split_index" not in nd:
                if "leaf_coeff" in nd or tree.get("is_linear"):
                    raise ModelLoadError("linear trees (linear_tree=true) are not supported")
                ref = -len(leaves) - 1
                leaves.append(float(nd["leaf_value"]))
            else:
                ref = len(nodes)
                flags = _MISSING[str(nd.get("missing_type", "None"))]
                if nd.get("default_left", False):
                    flags |= FLAG_DEFAULT_LEFT
                dt = nd["decision_type"]
                if dt == "==":
                    flags |= FLAG_CATEGORICAL
                    cats = [int(c) for c in str(nd["threshold"]).split("||") if c != ""]
                    words = [0] * (max(cats) // 32 + 1 if cats else 0)
                    for c in cats:
                        words[c // 32] |= 1 << (c % 32)
                    threshold = float(len(cat_bounds) - 1)
                    cat_bits.extend(words)
                    cat_bounds.append(len(cat_bits))
                elif dt == "<=":
                    threshold = float(nd["threshold"])
                else:
                    raise ModelLoadError(f"unsupported decision type {dt!r}")
                nodes.append((threshold, int(nd["split_feature"]), 0, 0, flags))
                stack.append((nd["right_child"], ref, 1))
                stack.append((nd["left_child"], ref, 0))
            if parent < 0:
                roots.append(ref)
            else:
                th, f, lft, rgt, fl = nodes[parent]
                nodes[parent] = (th, f, ref, rgt, fl) if side == 0 else (th, f, lft, ref, fl)

    forest = Forest(
        nodes=np.array(nodes, dtype=NODE_DTYPE),
        cat_bounds=np.array(cat_bounds, dtype=np.int32),
        cat_bits=np.array(cat_bits, dtype=np.uint32),
        roots=np.array(roots, dtype=np.int32),
        leaf_value=np.array(leaves, dtype=np.float64),
        n_features=n_features,
        divisor=float(len(trees)) if dump.get("average_output", False) else 1.0,
        transform=transform,
        transform_param=tparam,
    )
    forest.validate()
    return forest


# --------------------------------------------------------------------------- converters


def export_onnx(booster: lgb.Booster, n_features: int, path: str | Path) -> Path:
    """Convert with onnxmltools (``TreeEnsembleRegressor``, target opset 15, no
    ZipMap) and write ``path``. Input ``"input"`` float32 ``[None, n_features]``,
    output ``"variable"`` float32 ``[n, 1]``.

    Known converter limits (caught by the parity check, not here): ``zero_as_missing``,
    ``reg_sqrt`` and random-forest (``average_output``) models convert to wrong
    graphs. Thresholds are float32 in ``ai.onnx.ml`` opset 1: :func:`_make_exact`
    rounds each one down so float32 inputs branch exactly as in LightGBM. Raises
    ModelLoadError when onnxmltools refuses the model (e.g. ``cross_entropy``).
    """
    from onnxmltools import convert_lightgbm
    from onnxmltools.convert.common.data_types import FloatTensorType

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model = convert_lightgbm(
                booster,
                initial_types=[("input", FloatTensorType([None, n_features]))],
                target_opset=ONNX_OPSET,
                zipmap=False,
            )
    except Exception as exc:  # NotImplementedError for unsupported objectives, ...
        raise ModelLoadError(
            f"onnxmltools cannot convert this booster to ONNX ({type(exc).__name__}: {exc})"
        ) from exc
    _make_exact(model, booster)
    path = Path(path)
    path.write_bytes(model.SerializeToString())
    return path


def _split_info(booster: lgb.Booster) -> tuple[set[int], list[dict[tuple[int, float], set[float]]]]:
    """Features with LightGBM's NaN missing type, and per tree the float64 thresholds of
    its numerical splits keyed by (feature, threshold rounded to float32)."""
    nan_feats: set[int] = set()
    trees: list[dict[tuple[int, float], set[float]]] = []

    def walk(node: dict[str, Any], acc: dict[tuple[int, float], set[float]]) -> None:
        if "split_feature" not in node:
            return
        f = int(node["split_feature"])
        if node.get("missing_type") == "NaN":
            nan_feats.add(f)
        if node.get("decision_type") == "<=":
            thr = float(node["threshold"])
            with np.errstate(over="ignore"):  # 1e300 ("no upper bound") rounds to inf
                key = (f, float(np.float32(thr)))
            acc.setdefault(key, set()).add(thr)
        walk(node["left_child"], acc)
        walk(node["right_child"], acc)

    for tree in booster.dump_model()["tree_info"]:
        acc: dict[tuple[int, float], set[float]] = {}
        walk(tree["tree_structure"], acc)
        trees.append(acc)
    return nan_feats, trees


def _floor32(thr: float) -> float:
    """The largest float32 <= thr: for float32 x, ``x <= thr`` iff ``x <= _floor32(thr)``."""
    v = np.float32(thr)
    if float(v) > thr:
        v = np.nextafter(v, np.float32(-np.inf))
    return float(v)


def _make_exact(model: Any, booster: lgb.Booster) -> None:
    """Patch onnxmltools' graph so that float32 inputs take LightGBM's branches exactly.

    1. Thresholds: LightGBM compares ``double(x) <= thr`` with a float64 ``thr``;
       onnxmltools rounds ``thr`` to the *nearest* float32, so an input equal to the
       rounded-up value goes left in ONNX and right in LightGBM. Each threshold is
       replaced by the largest float32 not above it, which is exact for float32 inputs.
    2. NaN on features that had no NaN in training: LightGBM turns it into 0.0 and
       compares (missing type None); onnxmltools sends it along the default branch.
       ``missing_value_tracks_true`` of those nodes becomes ``0 <= threshold``.
       Categorical ``BRANCH_EQ`` nodes send NaN to the false side, as LightGBM does.
    """
    nan_feats, trees = _split_info(booster)
    for node in model.graph.node:
        if not node.op_type.startswith("TreeEnsemble"):
            continue
        at = {a.name: a for a in node.attribute}
        modes = [m.decode() for m in at["nodes_modes"].strings]
        feats = list(at["nodes_featureids"].ints)
        tree_ids = list(at["nodes_treeids"].ints)
        vals = list(at["nodes_values"].floats)
        tracks = at["nodes_missing_value_tracks_true"]
        new_tracks = list(tracks.ints) or [0] * len(modes)
        for i, mode in enumerate(modes):
            if mode == "BRANCH_LEQ":
                cands = trees[tree_ids[i]].get((feats[i], float(np.float32(vals[i]))), set())
                if len(cands) == 1:
                    thr = next(iter(cands))
                    # LightGBM clamps inputs to ±1e300, so +inf goes left at a 1e300
                    # ("no upper bound") threshold: in float32 that threshold is +inf
                    vals[i] = math.inf if thr >= 1e300 else _floor32(thr)
                if feats[i] not in nan_feats:
                    new_tracks[i] = 1 if vals[i] >= 0.0 else 0
            elif mode == "BRANCH_EQ":
                new_tracks[i] = 0
        del at["nodes_values"].floats[:]
        at["nodes_values"].floats.extend(vals)
        del tracks.ints[:]
        tracks.ints.extend(new_tracks)


def export_hummingbird(booster: lgb.Booster, X_sample: np.ndarray, path: str | Path) -> Path:
    """Tensorise ``booster`` with hummingbird (torch backend) and export it to ONNX
    with a dynamic batch axis (input ``"input"``, output ``"output"`` [n]).

    The torch export is done here rather than through hummingbird's ``"onnx"``
    backend so that ``dynamo=False`` (the TorchScript exporter hummingbird's graphs
    need; torch >= 2.9 defaults to dynamo) can be passed. Raises ConfigError when
    the ``gpu`` extra is not installed.
    """
    hb_ml, torch = optional.hummingbird("exporting the hummingbird engine")
    X_sample = np.ascontiguousarray(X_sample[: min(len(X_sample), 64)], dtype=np.float32)
    container = hb_ml.convert(booster, "torch", X_sample)
    module = container.model.eval()

    class _Flat(torch.nn.Module):  # type: ignore[name-defined]
        def __init__(self, inner: Any) -> None:
            super().__init__()
            self.inner = inner

        def forward(self, x: Any) -> Any:
            y = self.inner(x)
            if isinstance(y, tuple | list):
                y = y[0]
            return y.reshape(-1)

    path = Path(path)
    kwargs: dict[str, Any] = {
        "input_names": ["input"],
        "output_names": ["output"],
        "dynamic_axes": {"input": {0: "batch"}, "output": {0: "batch"}},
        "opset_version": ONNX_OPSET,
        "do_constant_folding": True,
    }
    with torch.no_grad():
        try:
            torch.onnx.export(
                _Flat(module), torch.from_numpy(X_sample), str(path), dynamo=False, **kwargs
            )
        except TypeError:  # torch < 2.5 has no ``dynamo`` argument
            torch.onnx.export(_Flat(module), torch.from_numpy(X_sample), str(path), **kwargs)
    return path


# --------------------------------------------------------------------------- parity


@dataclass(frozen=True, slots=True)
class WorstRow:
    """One of the rows an engine got most wrong."""

    index: int
    inputs: str  # compact rendering of the row's features
    ref: float
    got: float
    rel_err: float

    def __str__(self) -> str:
        return (
            f"row {self.index}: ref={self.ref:.9g} got={self.got:.9g} "
            f"rel_err={self.rel_err:.3g} inputs={self.inputs}"
        )


@dataclass(frozen=True, slots=True)
class ParityReport:
    """Result of :func:`check_parity`."""

    engine: str
    max_rel_err: float
    rows_checked: int
    tol: float
    passed: bool
    worst: list[WorstRow] = field(default_factory=list)

    def describe(self) -> str:
        head = (
            f"{self.engine}: max rel err {self.max_rel_err:.3g} over {self.rows_checked} rows "
            f"(tol {self.tol:g}) -> {'pass' if self.passed else 'FAIL'}"
        )
        return "\n".join([head, *(f"  {w}" for w in self.worst)])


def _render_row(x: np.ndarray) -> str:
    return "[" + ", ".join(f"{i}:{float(v):.6g}" for i, v in enumerate(x)) + "]"


def check_parity(
    reference: ArrayLike,
    got: ArrayLike,
    X: np.ndarray,
    engine: str,
    tol: float = 1e-4,
    n_worst: int = 5,
) -> ParityReport:
    """Compare an engine's output with the reference on the rows of ``X``.

    ``rel_i = |ref_i - got_i| / max(1, |ref_i|)``; both NaN counts as 0, NaN on one
    side (or a shape mismatch) as ``inf``. ``passed = max_i rel_i <= tol``. The
    report keeps the ``n_worst`` rows with the largest error (only rows with error).
    """
    ref = np.asarray(reference, dtype=np.float64).reshape(-1)
    out = np.asarray(got, dtype=np.float64).reshape(-1)
    n = ref.shape[0]
    if out.shape[0] != n:
        return ParityReport(engine, math.inf, n, tol, False, [])
    with np.errstate(invalid="ignore", over="ignore"):
        rel = np.abs(ref - out) / np.maximum(1.0, np.abs(ref))
    both_nan = np.isnan(ref) & np.isnan(out)
    rel = np.where(both_nan, 0.0, np.where(np.isnan(rel), np.inf, rel))
    max_err = float(rel.max()) if n else 0.0
    order = np.argsort(-rel, kind="stable")[:n_worst]
    worst = [
        WorstRow(int(i), _render_row(X[i]), float(ref[i]), float(out[i]), float(rel[i]))
        for i in order
        if rel[i] > 0
    ]
    return ParityReport(engine, max_err, n, tol, bool(max_err <= tol), worst)


def parity_rows(
    X_holdout: np.ndarray,
    rng: np.random.Generator,
    categorical: Sequence[int] = (),
    max_base: int = 256,
    per_case: int = 4,
) -> np.ndarray:
    """Build the float32 check matrix: ``max_base`` holdout rows, then copies of
    ``per_case`` of them per case:

    * NaN in one feature at a time (every feature), random NaN mixes (p = 0.3 and
      p = 0.7) and an all-NaN row;
    * per feature: ``±1e30``, ``±inf``, ``float32 max``, ``-0.0``, ``0``, ``-1``;
      numeric features also ``±1e-36`` (below LightGBM's zero threshold) and
      ``10 x`` the holdout range beyond both ends;
    * per categorical column (indices in ``categorical``): unseen codes ``max+1``,
      ``max+40``, ``1000``, a huge code ``3e9`` and a large negative code;
    * an all-zero row.

    Categorical codes are integers by contract (:class:`kernels.features.Columns`),
    so no fractional codes are generated: LightGBM truncates them (``2.7`` is
    category 2) while the ONNX graph compares with ``==`` and sends them right.
    """
    X = np.ascontiguousarray(X_holdout, dtype=np.float32)
    if X.ndim != 2 or X.shape[0] == 0:
        raise DataError(f"parity rows need a non-empty [n, F] holdout matrix, got {X.shape}")
    n, F = X.shape
    base = X[rng.choice(n, size=min(n, max_base), replace=False)]
    pick = base[: min(per_case, len(base))]
    blocks: list[np.ndarray] = [base]

    for j in range(F):
        b = pick.copy()
        b[:, j] = np.nan
        blocks.append(b)
    for p in (0.3, 0.7):
        b = base[rng.integers(0, len(base), size=8 * per_case)].copy()
        b[rng.random(b.shape) < p] = np.nan
        blocks.append(b)
    blocks.append(np.full((1, F), np.nan, dtype=np.float32))

    with np.errstate(all="ignore"):
        lo = np.nanmin(np.where(np.isfinite(X), X, np.nan), axis=0)
        hi = np.nanmax(np.where(np.isfinite(X), X, np.nan), axis=0)
    lo = np.nan_to_num(lo, nan=0.0)
    hi = np.nan_to_num(hi, nan=0.0)
    f32max = float(np.finfo(np.float32).max)
    cat_cols = set(categorical)
    for j in range(F):
        span = float(hi[j] - lo[j]) or 1.0
        specials = [1e30, -1e30, np.inf, -np.inf, f32max, -0.0, 0.0, -1.0]
        if j in cat_cols:
            top = math.floor(max(float(hi[j]), 0.0))
            specials += [top + 1, top + 40, 1000.0, 3e9, -math.ceil(10 * span)]
        else:
            specials += [1e-36, -1e-36, float(hi[j]) + 10 * span, float(lo[j]) - 10 * span]
        for v in specials:
            b = pick.copy()
            with np.errstate(over="ignore"):
                b[:, j] = v
            blocks.append(b)
    blocks.append(np.zeros((1, F), dtype=np.float32))
    return np.ascontiguousarray(np.concatenate(blocks).astype(np.float32, copy=False))


# --------------------------------------------------------------------------- export


def _onnx_predict(path: Path, X: np.ndarray) -> np.ndarray:
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name
    return np.asarray(sess.run(None, {name: X})[0], dtype=np.float64).reshape(-1)


def _forest_predict(forest: Forest, X: np.ndarray) -> np.ndarray:
    """All three kernels; returns the output of the one farthest from the others'
    (so any disagreement between them shows up in the parity check)."""
    single = forest.predict(X)
    par = forest.predict(X, parallel=True)
    row = np.array([forest.predict_row(X[i : i + 1]) for i in range(X.shape[0])])
    out = single.copy()
    for other in (par, row):
        diff = ~((other == single) | (np.isnan(other) & np.isnan(single)))
        out[diff] = other[diff]
    return out


def export_engines(
    boosters: Mapping[str, lgb.Booster],
    X_check: np.ndarray,
    out_dir: Path,
    categorical: Sequence[int] = (),
    tol: float = 1e-4,
    seed: int = 0,
) -> dict[str, dict[str, Any]]:
    """Write every engine's file for every booster and prove parity on
    :func:`parity_rows` of ``X_check``.

    For each ``name -> booster`` writes ``<name>.txt``, ``<name>.onnx``,
    ``<name>.forest.npz`` and, with the ``gpu`` extra, ``<name>.hb.onnx``, then
    compares each engine (loaded back from its file) with ``booster.predict``.

    * ONNX, numba or the reloaded text model out of tolerance: every file this call
      wrote is removed and ParityError is raised, listing the worst rows.
    * hummingbird out of tolerance: kept only if it passes on the NaN-free parity
      rows, with restriction :data:`HB_RESTRICTION`; otherwise its files are
      removed and it is left out of the result.

    Returns the manifest block ``{engine: {"files": [...], "max_rel_err": float,
    "rows_checked": int, "restriction": str | None, "per_model": {name: err}}}``
    (``max_rel_err`` is the maximum over all models, ``rows_checked`` the parity
    rows per model).
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    X_check = np.ascontiguousarray(X_check, dtype=np.float32)
    if X_check.ndim != 2:
        raise DataError(f"X_check must be a [n, F] matrix, got shape {X_check.shape}")
    F = X_check.shape[1]
    rows = parity_rows(X_check, np.random.default_rng(seed), categorical)
    nan_free = ~np.isnan(rows).any(axis=1)

    written: list[Path] = []
    reports: dict[str, dict[str, ParityReport]] = {e: {} for e in ENGINE_FILES}
    hb_restricted = False
    hb_ok = optional.has_hummingbird()
    failures: list[str] = []
    try:
        for name, booster in boosters.items():
            if booster.num_feature() != F:
                raise DataError(
                    f"model {name!r} expects {booster.num_feature()} features, X_check has {F}"
                )
            ref = np.asarray(booster.predict(rows), dtype=np.float64)
            paths = {e: out_dir / f"{name}{sfx}" for e, sfx in ENGINE_FILES.items()}

            booster.save_model(str(paths["lightgbm"]))
            written.append(paths["lightgbm"])
            reloaded = lgb.Booster(model_file=str(paths["lightgbm"]))
            reports["lightgbm"][name] = check_parity(
                ref, np.asarray(reloaded.predict(rows)), rows, "lightgbm", tol
            )

            export_onnx(booster, F, paths["onnx"])
            written.append(paths["onnx"])
            reports["onnx"][name] = check_parity(
                ref, _onnx_predict(paths["onnx"], rows), rows, "onnx", tol
            )

            flatten_booster(booster).save(paths["numba"])
            written.append(paths["numba"])
            forest = Forest.load(paths["numba"])
            reports["numba"][name] = check_parity(
                ref, _forest_predict(forest, rows), rows, "numba", tol
            )

            if hb_ok:
                try:
                    export_hummingbird(booster, X_check, paths["hummingbird"])
                    written.append(paths["hummingbird"])
                    got = _onnx_predict(paths["hummingbird"], rows)
                except Exception as exc:  # conversion/export problems: engine not shipped
                    warnings.warn(f"hummingbird export of {name!r} failed: {exc}", stacklevel=2)
                    hb_ok = False
                    continue
                rep = check_parity(ref, got, rows, "hummingbird", tol)
                if not rep.passed:
                    clean = check_parity(
                        ref[nan_free], got[nan_free], rows[nan_free], "hummingbird", tol
                    )
                    if clean.passed:
                        hb_restricted = True
                        rep = clean
                    else:
                        warnings.warn(
                            f"hummingbird engine dropped: {clean.describe()}", stacklevel=2
                        )
                        hb_ok = False
                reports["hummingbird"][name] = rep

        for engine in ("lightgbm", "onnx", "numba"):
            for name, rep in reports[engine].items():
                if not rep.passed:
                    failures.append(f"model {name!r}, {rep.describe()}")
        if failures:
            raise ParityError(
                "exported engines do not match Booster.predict; nothing was kept in "
                f"{out_dir}:\n" + "\n".join(failures)
            )
    except BaseException:
        for p in written:
            p.unlink(missing_ok=True)
        raise

    if not hb_ok:
        for name in boosters:
            (out_dir / f"{name}{ENGINE_FILES['hummingbird']}").unlink(missing_ok=True)
        reports.pop("hummingbird")
    elif not reports["hummingbird"]:
        reports.pop("hummingbird")

    manifest: dict[str, dict[str, Any]] = {}
    for engine, per_model in reports.items():
        manifest[engine] = {
            "files": [f"{name}{ENGINE_FILES[engine]}" for name in per_model],
            "max_rel_err": max(r.max_rel_err for r in per_model.values()),
            "rows_checked": max(r.rows_checked for r in per_model.values()),
            "restriction": HB_RESTRICTION if engine == "hummingbird" and hb_restricted else None,
            "per_model": {name: r.max_rel_err for name, r in per_model.items()},
        }
    json.dumps(manifest)  # the manifest must be JSON-serialisable
    return manifest
