"""Prediction engines: one interface over LightGBM, ONNX Runtime, numba and hummingbird.

Every engine maps a float32 C-contiguous feature matrix ``X[n, F]`` (as built by
:class:`kernels.features.Pipeline`) to float64 predictions ``[n]`` (minutes). Other
dtypes/layouts are converted (one copy); a wrong shape raises InferenceError.

Files in a model folder (written and parity-checked by
:func:`training.export.export_engines`):

===============  =====================  =========================================
kind             file                   engine
===============  =====================  =========================================
``lightgbm``     ``<name>.txt``         :class:`LightGBMEngine` (the reference)
``onnx``         ``<name>.onnx``        :class:`OnnxEngine` (onnxruntime)
``numba``        ``<name>.forest.npz``  :class:`NumbaEngine` (:mod:`kernels.forest`)
``hummingbird``  ``<name>.hb.onnx``     :class:`HummingbirdEngine` (onnxruntime)
===============  =====================  =========================================

GPU: ``OnnxEngine``/``HummingbirdEngine`` use ``CUDAExecutionProvider`` when
onnxruntime offers it and GPU use is allowed (argument ``allow_gpu``, else the
environment variable ``INTELLILOG_ALLOW_GPU``, default true). An onnxmltools graph
made only of ``ai.onnx.ml`` operators (``TreeEnsembleRegressor``) has no CUDA
kernel, so it stays on the CPU provider (and says so in ``provider``/``device``).
"""

from __future__ import annotations

import itertools
import os
import threading
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np

from kernels.errors import ConfigError, InferenceError, ModelLoadError
from kernels.forest import (
    BLOCK,
    predict_forest,
    predict_forest_parallel,
    predict_forest_row,
)
from training.export import ENGINE_FILES, Forest

__all__ = [
    "ENV_ALLOW_GPU",
    "KINDS",
    "MODEL_NAMES",
    "Engine",
    "HummingbirdEngine",
    "LightGBMEngine",
    "NumbaEngine",
    "OnnxEngine",
    "Predictor",
    "gpu_allowed",
    "load_engine",
]

ENV_ALLOW_GPU = "INTELLILOG_ALLOW_GPU"
#: Engine kinds accepted by :func:`load_engine`.
KINDS: tuple[str, ...] = tuple(ENGINE_FILES)
#: The three models of one version, in the order :meth:`Predictor.predict` returns.
MODEL_NAMES: tuple[str, str, str] = ("eta", "p10", "p90")

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}
# numba's workqueue threading layer aborts on concurrent parallel launches; one
# parallel kernel at a time per process (it uses every thread it is given anyway).
_PARALLEL_LOCK = threading.Lock()


@runtime_checkable
class Engine(Protocol):
    """A compiled model: ``predict(X float32 [n, F]) -> float64 [n]`` minutes."""

    name: str  # "onnx" | "numba" | "lightgbm" | "hummingbird"
    device: str  # "cpu" | "cuda"

    def predict(self, X: np.ndarray) -> np.ndarray: ...


def gpu_allowed(flag: bool | None = None) -> bool:
    """``flag`` when given, else ``INTELLILOG_ALLOW_GPU`` (1/true/yes/on or
    0/false/no/off; unset means true). Raises ConfigError on other values."""
    if flag is not None:
        return bool(flag)
    raw = os.environ.get(ENV_ALLOW_GPU, "").strip().lower()
    if raw == "" or raw in _TRUE:
        return True
    if raw in _FALSE:
        return False
    raise ConfigError(f"{ENV_ALLOW_GPU}={raw!r}: use one of 1/true/yes/on or 0/false/no/off")


def _matrix(X: np.ndarray, n_features: int | None, engine: str) -> np.ndarray:
    X = np.ascontiguousarray(X, dtype=np.float32)
    if X.ndim != 2 or (n_features is not None and X.shape[1] != n_features):
        raise InferenceError(
            f"{engine} engine expects a [n, {n_features}] float32 matrix, got shape {X.shape}"
        )
    return X


def _require(path: Path, kind: str) -> None:
    if not path.is_file():
        raise ModelLoadError(
            f"{kind} model file {path} is missing; export the model version with "
            "training.export.export_engines (or pick another engine kind)"
        )


class LightGBMEngine:
    """``lightgbm.Booster`` from the text model; the reference, CPU only."""

    name = "lightgbm"
    device = "cpu"

    def __init__(self, path: str | Path, threads: int = 1) -> None:
        import lightgbm as lgb

        path = Path(path)
        _require(path, self.name)
        try:
            self._booster = lgb.Booster(model_file=str(path))
        except Exception as exc:  # LightGBMError on a corrupt/truncated file
            raise ModelLoadError(f"LightGBM model {path} cannot be read: {exc}") from exc
        self.path = path
        self.threads = max(1, int(threads))
        self.n_features = int(self._booster.num_feature())

    def predict(self, X: np.ndarray) -> np.ndarray:
        X = _matrix(X, self.n_features, self.name)
        try:
            out = self._booster.predict(X, num_threads=self.threads)
        except Exception as exc:
            raise InferenceError(f"lightgbm prediction failed: {exc}") from exc
        return np.asarray(out, dtype=np.float64).reshape(-1)

    def warmup(self) -> None:
        self.predict(np.zeros((1, self.n_features), dtype=np.float32))


class OnnxEngine:
    """An onnxruntime session over ``path`` (one per process).

    Session options: ``intra_op_num_threads = 1``, ``inter_op_num_threads = 1``, spinning off
    (``session.intra_op.allow_spinning = 0``), graph optimisation ``ORT_ENABLE_ALL``.
    Single rows use plain ``run`` with the output name (measured faster than IO
    binding for one row). ``provider`` is the execution provider actually used.

    ``threads > 1`` splits large batches into row blocks run concurrently on the same
    session (onnxruntime releases the GIL), instead of onnxruntime's own intra-op
    threads: those split the tree sum, which changes the float32 rounding with the
    thread count. Row blocks keep every row's result identical whatever ``threads``.
    """

    name = "onnx"

    def __init__(self, path: str | Path, threads: int = 1, allow_gpu: bool | None = None) -> None:
        import onnxruntime as ort

        path = Path(path)
        _require(path, self.name)
        self.path = path
        self.threads = max(1, int(threads))
        try:
            model_bytes = path.read_bytes()
        except OSError as exc:
            raise ModelLoadError(f"ONNX model {path} cannot be read: {exc}") from exc
        providers = ["CPUExecutionProvider"]
        self.provider_note = "CPU: CUDA not available or not allowed"
        if gpu_allowed(allow_gpu) and "CUDAExecutionProvider" in ort.get_available_providers():
            if _has_cuda_ops(model_bytes, path):
                providers = ["CUDAExecutionProvider", "CPUExecutionProvider"]
                self.provider_note = "CUDA"
            else:
                self.provider_note = (
                    "CPU: graph has only ai.onnx.ml tree operators (no CUDA kernel)"
                )
        so = ort.SessionOptions()
        so.intra_op_num_threads = 1
        so.inter_op_num_threads = 1
        so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        so.add_session_config_entry("session.intra_op.allow_spinning", "0")
        so.add_session_config_entry("session.inter_op.allow_spinning", "0")
        so.log_severity_level = 3
        try:
            self._session = ort.InferenceSession(model_bytes, so, providers=providers)
        except Exception as exc:  # InvalidProtobuf, Fail, ... on a corrupt file
            raise ModelLoadError(f"ONNX model {path} cannot be loaded: {exc}") from exc
        inputs, outputs = self._session.get_inputs(), self._session.get_outputs()
        if len(inputs) != 1 or not outputs:
            raise ModelLoadError(f"ONNX model {path} must have one input and an output")
        self._input = inputs[0].name
        self._outputs = [outputs[0].name]
        shape = inputs[0].shape
        self.n_features: int | None = (
            int(shape[1]) if len(shape) == 2 and isinstance(shape[1], int) else None
        )
        self.provider: str = self._session.get_providers()[0]
        self.device = "cuda" if self.provider == "CUDAExecutionProvider" else "cpu"

    _pool: Any = None

    def _run(self, X: np.ndarray) -> np.ndarray:
        try:
            return np.asarray(self._session.run(self._outputs, {self._input: X})[0]).reshape(-1)
        except Exception as exc:
            raise InferenceError(f"{self.name} prediction failed: {exc}") from exc

    def predict(self, X: np.ndarray) -> np.ndarray:
        X = _matrix(X, self.n_features, self.name)
        n = X.shape[0]
        if self.threads > 1 and n >= 4 * BLOCK:
            if self._pool is None:
                from concurrent.futures import ThreadPoolExecutor

                self._pool = ThreadPoolExecutor(self.threads, thread_name_prefix="onnx")
            bounds = np.linspace(0, n, self.threads + 1).astype(int)
            parts = self._pool.map(self._run, [X[a:b] for a, b in itertools.pairwise(bounds)])
            y = np.concatenate(list(parts))
        else:
            y = self._run(X)
        out = np.asarray(y, dtype=np.float64).reshape(-1)
        if out.shape[0] != X.shape[0]:
            raise InferenceError(
                f"{self.name} model returned {out.shape[0]} values for {X.shape[0]} rows"
            )
        return out

    def warmup(self) -> None:
        F = self.n_features or 1
        self.predict(np.zeros((1, F), dtype=np.float32))
        self.predict(np.zeros((2 * BLOCK, F), dtype=np.float32))


def _has_cuda_ops(model_bytes: bytes, path: Path) -> bool:
    """Whether the graph has any operator outside ``ai.onnx.ml`` (which onnxruntime
    only implements on CPU)."""
    import onnx

    try:
        model = onnx.load_from_string(model_bytes)
    except Exception as exc:
        raise ModelLoadError(f"ONNX model {path} cannot be parsed: {exc}") from exc
    return any(
        node.domain not in ("ai.onnx.ml",) and node.op_type != "Identity"
        for node in model.graph.node
    )


class HummingbirdEngine(OnnxEngine):
    """Hummingbird's tensorised trees (``<name>.hb.onnx``) on onnxruntime, CUDA when
    available. hummingbird mishandles NaN on most rows, so by default rows with a
    missing value raise InferenceError (the export records the restriction
    "inputs without missing values"); ``allow_nan=True`` lifts the guard for a
    model whose export passed parity on NaN rows too."""

    name = "hummingbird"

    def __init__(
        self,
        path: str | Path,
        threads: int = 1,
        allow_gpu: bool | None = None,
        allow_nan: bool = False,
    ) -> None:
        super().__init__(path, threads, allow_gpu)
        self.allow_nan = allow_nan

    def predict(self, X: np.ndarray) -> np.ndarray:
        X = _matrix(X, self.n_features, self.name)
        if not self.allow_nan and np.isnan(X).any():
            raise InferenceError(
                "the hummingbird engine is restricted to inputs without missing values; "
                "use the onnx or numba engine for rows with NaN"
            )
        return super().predict(X)


class NumbaEngine:
    """The flattened forest on :mod:`kernels.forest` (bit-exact with LightGBM).

    ``n == 1``: :func:`predict_forest_row`; ``n >= parallel_from`` and
    ``threads > 1``: :func:`predict_forest_parallel` on ``threads`` numba threads
    (one parallel call at a time per process); else :func:`predict_forest`.
    """

    name = "numba"
    device = "cpu"

    def __init__(self, path: str | Path, threads: int = 1, parallel_from: int = 4 * BLOCK) -> None:
        import numba

        path = Path(path)
        _require(path, self.name)
        self.path = path
        self.forest = Forest.load(path)
        self._args = self.forest.args()
        self.n_features = self.forest.n_features
        self.threads = max(1, min(int(threads), int(getattr(numba.config, "NUMBA_NUM_THREADS", 1))))
        self.parallel_from = max(1, int(parallel_from))

    def predict(self, X: np.ndarray) -> np.ndarray:
        X = _matrix(X, self.n_features, self.name)
        n = X.shape[0]
        if n == 1:
            return np.array([predict_forest_row(X, *self._args)])
        out = np.empty(n, dtype=np.float64)
        if self.threads > 1 and n >= self.parallel_from:
            import numba

            with _PARALLEL_LOCK:
                numba.set_num_threads(self.threads)
                predict_forest_parallel(X, *self._args, out)
        else:
            predict_forest(X, *self._args, out)
        return out

    def warmup(self) -> None:
        """Compile (or load from numba's cache) all three kernels."""
        X = np.zeros((2, self.n_features), dtype=np.float32)
        self.predict(X[:1])
        self.predict(X)
        if self.threads > 1:
            saved, self.parallel_from = self.parallel_from, 1
            try:
                self.predict(X)
            finally:
                self.parallel_from = saved


def load_engine(
    model_dir: Path,
    name: str,
    kind: str,
    threads: int = 1,
    allow_gpu: bool | None = None,
) -> Engine:
    """Load model ``name`` (e.g. ``"eta"``) of the folder ``model_dir`` as engine
    ``kind`` (``onnx`` | ``numba`` | ``lightgbm`` | ``hummingbird``).

    Raises ConfigError for an unknown kind, ModelLoadError when the file
    ``<name><suffix>`` is missing or corrupt.
    """
    if kind not in ENGINE_FILES:
        raise ConfigError(f"unknown engine kind {kind!r}; choose one of {', '.join(KINDS)}")
    path = Path(model_dir) / f"{name}{ENGINE_FILES[kind]}"
    if kind == "lightgbm":
        return LightGBMEngine(path, threads)
    if kind == "onnx":
        return OnnxEngine(path, threads, allow_gpu)
    if kind == "numba":
        return NumbaEngine(path, threads)
    return HummingbirdEngine(path, threads, allow_gpu)


class Predictor:
    """The three models of one version (``eta``, ``p10``, ``p90``) on one engine kind.

    :meth:`predict` returns ``(eta, p10, p90)`` float64 arrays. Quantile models are
    trained separately and can cross the point model; the ETA is kept as it is and
    the interval is widened to contain it: ``p10 = min(p10, eta)``,
    ``p90 = max(p90, eta)`` (as in the training metrics).
    """

    def __init__(
        self,
        model_dir: Path,
        kind: str,
        threads: int = 1,
        allow_gpu: bool | None = None,
    ) -> None:
        self.model_dir = Path(model_dir)
        self.kind = kind
        self.engines: dict[str, Engine] = {
            m: load_engine(self.model_dir, m, kind, threads, allow_gpu) for m in MODEL_NAMES
        }
        feats = {getattr(e, "n_features", None) for e in self.engines.values()} - {None}
        if len(feats) > 1:
            raise ModelLoadError(
                f"models in {self.model_dir} disagree on the feature count: {sorted(str(f) for f in feats)}"
            )
        self.n_features: int | None = feats.pop() if feats else None
        self.device = self.engines["eta"].device

    def predict(self, X: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        X = _matrix(X, self.n_features, self.kind)
        eta = self.engines["eta"].predict(X)
        p10 = self.engines["p10"].predict(X)
        p90 = self.engines["p90"].predict(X)
        return eta, np.minimum(p10, eta), np.maximum(p90, eta)

    def warmup(self) -> None:
        """Run every engine once (numba compile/cache load, ORT first-run setup)."""
        for engine in self.engines.values():
            warm: Any = getattr(engine, "warmup", None)
            if callable(warm):
                warm()
            else:
                engine.predict(np.zeros((1, self.n_features or 1), dtype=np.float32))
