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
``compiled``     ``<name>.forest.npz``  :class:`CompiledEngine` (:mod:`kernels.compiled`)
===============  =====================  =========================================

``compiled`` has no export of its own: it compiles the numba engine's file to machine
code when it loads (or loads the object code from its cache), so a version exported
with ``numba`` serves ``compiled`` too (:data:`KIND_SOURCES`).

GPU: ``OnnxEngine``/``HummingbirdEngine`` use ``CUDAExecutionProvider`` when
onnxruntime offers it and GPU use is allowed (argument ``allow_gpu``, else the
environment variable ``INTELLILOG_ALLOW_GPU``, default true). An onnxmltools graph
made only of ``ai.onnx.ml`` operators (``TreeEnsembleRegressor``) has no CUDA
kernel, so it stays on the CPU provider (and says so in ``provider``/``device``).
The CUDA provider runs with ``use_tf32 = 0``: TF32 would round the inputs of the
tensorised trees' matrix products to 10 mantissa bits and flip comparisons.

Large batches on the GPU: a :class:`Predictor` on a CPU engine (numba by default)
sends batches of at least ``gpu_min_rows`` rows (``INTELLILOG_GPU_MIN_ROWS``,
default :data:`DEFAULT_GPU_MIN_ROWS`; 0 turns it off) to hummingbird's tensorised
trees on CUDA, when all of these hold: GPU use is allowed, the version has a
``<name>.hb.onnx`` for all three models (the export writes it only after it passed
parity with LightGBM, see :func:`training.export.export_engines`), and a CUDA device
answers: onnxruntime's ``CUDAExecutionProvider`` running the ``.hb.onnx`` file, else
hummingbird's torch model on ``torch.cuda`` (converted from ``<name>.txt``, the same
conversion the ``.hb.onnx`` was exported from). The GPU engines must then agree with
the CPU engine on a load-time check. Anything else (no CUDA, a missing file, a load
error, a failed check) logs one line and leaves every batch on the CPU engine;
:meth:`Predictor.describe` says which, and why. hummingbird-ml (0.4.12) cannot
convert LightGBM's categorical splits (microsoft/hummingbird#245): a model trained
with categorical features gets no ``.hb.onnx``, so no GPU route.

Rows with a missing value: unless the export proved hummingbird's parity on NaN
rows too (no restriction in the manifest), the rows of a large batch that hold a
NaN are scored by the CPU engine and the others by the GPU engine (one
``np.isnan`` pass over the batch); when fewer than ``gpu_min_rows`` rows are
NaN-free the whole batch stays on the CPU.
"""

from __future__ import annotations

import importlib.util
import itertools
import logging
import os
import sys
import threading
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np

from kernels import compiled as _compiled
from kernels.errors import ConfigError, InferenceError, ModelLoadError
from kernels.forest import (
    BLOCK,
    predict_forest,
    predict_forest_parallel,
    predict_forest_row,
    predict_forests_row,
    stack_forests,
)
from training import optional
from training.export import ENGINE_FILES, Forest, check_parity

__all__ = [
    "DEFAULT_GPU_MIN_ROWS",
    "ENV_ALLOW_GPU",
    "ENV_GPU_MIN_ROWS",
    "KINDS",
    "KIND_SOURCES",
    "MODEL_NAMES",
    "CompiledEngine",
    "Engine",
    "HummingbirdEngine",
    "LightGBMEngine",
    "NumbaEngine",
    "OnnxEngine",
    "Predictor",
    "TorchHummingbirdEngine",
    "gpu_allowed",
    "gpu_min_rows",
    "load_engine",
    "load_gpu_engines",
    "ort_has_cuda",
]

log = logging.getLogger("intellilog.engines")

ENV_ALLOW_GPU = "INTELLILOG_ALLOW_GPU"
ENV_GPU_MIN_ROWS = "INTELLILOG_GPU_MIN_ROWS"
#: Rows from which a batch goes to the GPU engine (when there is one).
DEFAULT_GPU_MIN_ROWS = 4096
#: Rows per GPU run: bounds the device memory of hummingbird's [rows, trees] tensors.
GPU_CHUNK_ROWS = 1 << 18
#: Engine kinds that serve another kind's exported file (and parity record): the
#: ``compiled`` engine compiles the numba engine's ``.forest.npz`` at load.
KIND_SOURCES: dict[str, str] = {"compiled": "numba"}
#: Engine kinds accepted by :func:`load_engine`.
KINDS: tuple[str, ...] = (*ENGINE_FILES, *KIND_SOURCES)
#: The three models of one version, in the order :meth:`Predictor.predict` returns.
MODEL_NAMES: tuple[str, str, str] = ("eta", "p10", "p90")

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}
# numba's workqueue threading layer aborts on concurrent parallel launches; one
# parallel kernel at a time per process (it uses every thread it is given anyway).
_PARALLEL_LOCK = threading.Lock()
_forests_row: Any = predict_forests_row  # numba's Dispatcher type hides the signature
_rows3: Any = _compiled.call_rows3


@runtime_checkable
class Engine(Protocol):
    """A compiled model: ``predict(X float32 [n, F]) -> float64 [n]`` minutes."""

    name: str  # "onnx" | "numba" | "compiled" | "lightgbm" | "hummingbird"
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


def gpu_min_rows(value: int | None = None) -> int:
    """``value`` when given, else ``INTELLILOG_GPU_MIN_ROWS`` (a whole number >= 0;
    unset means :data:`DEFAULT_GPU_MIN_ROWS`; 0 turns large-batch GPU routing off).
    Raises ConfigError on other values."""
    if value is None:
        raw = os.environ.get(ENV_GPU_MIN_ROWS, "").strip()
        if raw == "":
            return DEFAULT_GPU_MIN_ROWS
        try:
            value = int(raw)
        except ValueError:
            raise ConfigError(
                f"{ENV_GPU_MIN_ROWS}={raw!r}: expected a whole number of rows (0 = off)"
            ) from None
    if value < 0:
        raise ConfigError(f"{ENV_GPU_MIN_ROWS}={value!r}: must be >= 0 (0 = off)")
    return int(value)


_gpu_min_rows = gpu_min_rows  # for Predictor, whose argument has the same name


def ort_has_cuda() -> bool:
    """Whether the installed onnxruntime offers ``CUDAExecutionProvider`` (the
    ``onnxruntime-gpu`` build). It may still fail to start (missing CUDA/cuDNN
    libraries): a session's ``get_providers()`` tells."""
    import onnxruntime as ort

    return "CUDAExecutionProvider" in ort.get_available_providers()


_CUDA_LIBS_READY = False


def _prepare_cuda_libs() -> None:
    """Make CUDA/cuDNN libraries findable for onnxruntime's CUDA provider, once:
    import torch when installed (a CUDA build of torch loads its libraries, which
    onnxruntime reuses when the CUDA major version matches), then
    ``onnxruntime.preload_dlls()`` (onnxruntime-gpu >= 1.21: the ``nvidia-*`` wheels
    of ``onnxruntime-gpu[cuda,cudnn]``; it leaves what torch loaded alone). Failures
    are ignored: the session then falls back to CPU, which the caller sees."""
    global _CUDA_LIBS_READY
    if _CUDA_LIBS_READY:
        return
    _CUDA_LIBS_READY = True
    try:
        if importlib.util.find_spec("torch") is not None:
            import torch  # noqa: F401
        import onnxruntime as ort

        preload = getattr(ort, "preload_dlls", None)
        if callable(preload):
            preload()
    except Exception as exc:  # a broken torch or library: the CUDA provider will say
        log.debug("preparing CUDA libraries failed: %s", exc)


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
        providers: list[Any] = ["CPUExecutionProvider"]
        self.provider_note = "CPU: CUDA not available or not allowed"
        if gpu_allowed(allow_gpu) and "CUDAExecutionProvider" in ort.get_available_providers():
            if _has_cuda_ops(model_bytes, path):
                _prepare_cuda_libs()
                providers = [("CUDAExecutionProvider", {"use_tf32": "0"}), "CPUExecutionProvider"]
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
        if self.provider_note == "CUDA" and self.device != "cuda":
            self.provider_note = (
                "CPU: CUDAExecutionProvider failed to start (CUDA/cuDNN libraries?)"
            )

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


_NAN_REFUSED = (
    "the hummingbird engine is restricted to inputs without missing values; "
    "use the onnx or numba engine for rows with NaN"
)


class HummingbirdEngine(OnnxEngine):
    """Hummingbird's tensorised trees (``<name>.hb.onnx``) on onnxruntime, CUDA when
    available. hummingbird mishandles NaN on most rows, so by default rows with a
    missing value raise InferenceError (the export records the restriction
    "inputs without missing values"); ``allow_nan=True`` lifts the guard for a
    model whose export passed parity on NaN rows too.

    Batches run in runs of at most ``chunk_rows`` rows: the tensorised trees hold
    ``[rows, trees]`` intermediates (about 4 kB a row for 500 trees, several alive),
    which would not fit a GPU for 10M rows at once."""

    name = "hummingbird"
    runtime = "onnxruntime"

    def __init__(
        self,
        path: str | Path,
        threads: int = 1,
        allow_gpu: bool | None = None,
        allow_nan: bool = False,
        chunk_rows: int = GPU_CHUNK_ROWS,
    ) -> None:
        super().__init__(path, threads, allow_gpu)
        self.allow_nan = allow_nan
        self.chunk_rows = max(1, int(chunk_rows))

    def predict(self, X: np.ndarray) -> np.ndarray:
        X = _matrix(X, self.n_features, self.name)
        if not self.allow_nan and np.isnan(X).any():
            raise InferenceError(_NAN_REFUSED)
        n, step = X.shape[0], self.chunk_rows
        if n <= step:
            return super().predict(X)
        return np.concatenate(
            [super(HummingbirdEngine, self).predict(X[a : a + step]) for a in range(0, n, step)]
        )


class TorchHummingbirdEngine:
    """Hummingbird's torch model of ``<name>.txt`` on a torch device (``cuda``).

    The same conversion (``hummingbird.ml.convert(booster, "torch")``) that
    :func:`training.export.export_hummingbird` exports to ``<name>.hb.onnx``, run by
    torch instead of onnxruntime: the GPU route where onnxruntime has no CUDA
    provider. ``predict`` copies each run of ``chunk_rows`` rows host -> device and
    the result back. NaN guard as :class:`HummingbirdEngine`. Needs the ``gpu`` extra.
    """

    name = "hummingbird"
    runtime = "torch"

    def __init__(
        self,
        path: str | Path,
        device: str = "cuda",
        allow_nan: bool = False,
        chunk_rows: int = GPU_CHUNK_ROWS,
    ) -> None:
        import lightgbm as lgb

        hb_ml, torch = optional.hummingbird("the hummingbird engine on torch")
        path = Path(path)
        _require(path, self.name)
        try:
            booster = lgb.Booster(model_file=str(path))
        except Exception as exc:
            raise ModelLoadError(f"LightGBM model {path} cannot be read: {exc}") from exc
        self.path = path
        self.n_features = int(booster.num_feature())
        sample = np.zeros((2, self.n_features), dtype=np.float32)
        try:
            container = hb_ml.convert(booster, "torch", sample)
            container.to(device)
        except Exception as exc:
            raise ModelLoadError(f"hummingbird cannot convert {path} for {device}: {exc}") from exc
        self._module = container.model.eval()
        self._torch = torch
        self._device = torch.device(device)
        self.device = self._device.type
        self.allow_nan = allow_nan
        self.chunk_rows = max(1, int(chunk_rows))

    def _run(self, X: np.ndarray) -> np.ndarray:
        torch = self._torch
        with torch.inference_mode():
            y = self._module(torch.from_numpy(X).to(self._device))
            if isinstance(y, tuple | list):
                y = y[0]
            return np.asarray(y.reshape(-1).cpu().numpy(), dtype=np.float64)

    def predict(self, X: np.ndarray) -> np.ndarray:
        X = _matrix(X, self.n_features, self.name)
        if not self.allow_nan and np.isnan(X).any():
            raise InferenceError(_NAN_REFUSED)
        n, step = X.shape[0], self.chunk_rows
        try:
            if n <= step:
                out = self._run(X)
            else:
                out = np.concatenate([self._run(X[a : a + step]) for a in range(0, n, step)])
        except Exception as exc:
            raise InferenceError(
                f"hummingbird (torch, {self.device}) prediction failed: {exc}"
            ) from exc
        if out.shape[0] != n:
            raise InferenceError(f"hummingbird model returned {out.shape[0]} values for {n} rows")
        return out

    def warmup(self) -> None:
        self.predict(np.zeros((2 * BLOCK, self.n_features), dtype=np.float32))


def load_gpu_engines(
    model_dir: Path, allow_nan: bool = False
) -> tuple[dict[str, Engine] | None, str]:
    """The three models on a CUDA device, or why not: ``(engines, how)`` or
    ``(None, reason)``.

    First onnxruntime's CUDA provider on ``<name>.hb.onnx``; else hummingbird's torch
    model of ``<name>.txt`` on ``torch.cuda``. Load errors raise (ModelLoadError,
    ConfigError, ...); the caller turns them into a reason.
    """
    model_dir = Path(model_dir)
    if ort_has_cuda():
        engines: dict[str, Engine] = {
            m: HummingbirdEngine(
                model_dir / f"{m}{ENGINE_FILES['hummingbird']}", 1, True, allow_nan
            )
            for m in MODEL_NAMES
        }
        if all(e.device == "cuda" for e in engines.values()):
            return engines, "onnxruntime CUDAExecutionProvider"
        ort_why = (
            "onnxruntime's CUDAExecutionProvider failed to start (CUDA 13 / cuDNN 9 libraries?)"
        )
    else:
        ort_why = "onnxruntime has no CUDAExecutionProvider (onnxruntime-gpu not installed)"
    if not optional.has_hummingbird():
        return None, f"no CUDA device: {ort_why}; hummingbird-ml/torch not installed"
    _, torch = optional.hummingbird("the hummingbird engine on torch")
    if not torch.cuda.is_available():
        return None, f"no CUDA device: {ort_why}; torch.cuda is not available"
    engines = {
        m: TorchHummingbirdEngine(model_dir / f"{m}{ENGINE_FILES['lightgbm']}", "cuda", allow_nan)
        for m in MODEL_NAMES
    }
    return engines, f"hummingbird on torch CUDA ({torch.cuda.get_device_name(0)})"


def _warm_paths(engine: Any) -> None:
    """Run every path of a numba-backed engine once (one row, a batch, the parallel
    batch when ``threads > 1``), so compiling or loading them happens now."""
    X = np.zeros((2, engine.n_features), dtype=np.float32)
    engine.predict(X[:1])
    engine.predict(X)
    if engine.threads > 1:
        saved, engine.parallel_from = engine.parallel_from, 1
        try:
            engine.predict(X)
        finally:
            engine.parallel_from = saved


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
        _warm_paths(self)


class CompiledEngine:
    """The flattened forest of ``<name>.forest.npz`` compiled to machine code
    (:mod:`kernels.compiled`; bit-exact with LightGBM, like :class:`NumbaEngine`).

    At load: compiles the forest, or loads its object code from ``cache_dir``
    (:class:`server.objcache.FileObjectCache`; None: ``$INTELLILOG_CACHE_DIR`` or
    ``~/.cache/intellilog/compiled``; an unwritable folder only costs the compile in
    every process), then checks the compiled code against
    the :mod:`kernels.forest` kernels on :func:`kernels.compiled.edge_rows` (NaN, ±inf,
    zeros, ±1e-36, huge values, thresholds and their neighbours, seen, unseen, negative
    and huge categorical codes): any difference raises ModelLoadError (a code
    generator bug; the numba engine still serves the file). ``load_note`` says how
    long the compile or cache load took.

    ``n == 1``: the compiled row function; ``n >= parallel_from`` and ``threads > 1``:
    row blocks over ``threads`` numba threads (one parallel call at a time per
    process); else the compiled batch function on one thread. The GIL is released
    while the compiled code runs.
    """

    name = "compiled"
    device = "cpu"

    def __init__(
        self,
        path: str | Path,
        threads: int = 1,
        cache_dir: str | Path | None = None,
        parallel_from: int = 4 * BLOCK,
    ) -> None:
        import numba

        path = Path(path)
        _require(path, self.name)
        self.path = path
        self.forest = Forest.load(path)
        self.n_features = self.forest.n_features
        self.threads = max(1, min(int(threads), int(getattr(numba.config, "NUMBA_NUM_THREADS", 1))))
        self.parallel_from = max(1, int(parallel_from))
        args = self.forest.args()
        from server.objcache import FileObjectCache

        cache: FileObjectCache | None = None
        try:
            cache = FileObjectCache(cache_dir)
        except RuntimeError as exc:  # no home folder to put the default under
            log.warning("no compiled-forest cache folder (%s): compiling in memory", exc)
        try:
            self.compiled = _compiled.compile_forest(args, cache)
        except Exception as exc:  # LLVM errors: not expected for a validated forest
            raise ModelLoadError(
                f"compiled engine: {path} could not be compiled ({type(exc).__name__}: {exc}); "
                "use the numba engine"
            ) from exc
        self.load_note: str = self.compiled.info["note"]
        with _PARALLEL_LOCK:
            problem = _compiled.compare_with_kernel(self.compiled, args, threads=self.threads)
        if problem is not None:
            raise ModelLoadError(
                f"compiled engine: the code compiled for {path} disagrees with the numba "
                f"kernels ({problem}); a code generator bug: use the numba engine"
            )
        self.row_addr = self.compiled.row_addr
        self._batch_addr = self.compiled.batch_addr
        self._block = self.compiled.block
        log.info("%s: compiled engine ready (%s)", path.name, self.load_note)

    def predict(self, X: np.ndarray) -> np.ndarray:
        X = _matrix(X, self.n_features, self.name)
        n = X.shape[0]
        if n == 1:
            return np.array([_compiled.call_row(self.row_addr, X)])
        out = np.empty(n, dtype=np.float64)
        if self.threads > 1 and n >= self.parallel_from:
            import numba

            with _PARALLEL_LOCK:
                numba.set_num_threads(self.threads)
                _compiled.call_parallel(self._batch_addr, X, out, self._block)
        else:
            _compiled.call_batch(self._batch_addr, X, out)
        return out

    def warmup(self) -> None:
        """Compile (or load from numba's cache) the numba wrappers of every path."""
        _warm_paths(self)


def load_engine(
    model_dir: Path,
    name: str,
    kind: str,
    threads: int = 1,
    allow_gpu: bool | None = None,
) -> Engine:
    """Load model ``name`` (e.g. ``"eta"``) of the folder ``model_dir`` as engine
    ``kind`` (``onnx`` | ``numba`` | ``compiled`` | ``lightgbm`` | ``hummingbird``).

    Raises ConfigError for an unknown kind, ModelLoadError when the file
    ``<name><suffix>`` is missing or corrupt (``compiled`` reads the numba file).
    """
    if kind not in KINDS:
        raise ConfigError(f"unknown engine kind {kind!r}; choose one of {', '.join(KINDS)}")
    path = Path(model_dir) / f"{name}{ENGINE_FILES[KIND_SOURCES.get(kind, kind)]}"
    if kind == "lightgbm":
        return LightGBMEngine(path, threads)
    if kind == "onnx":
        return OnnxEngine(path, threads, allow_gpu)
    if kind == "numba":
        return NumbaEngine(path, threads)
    if kind == "compiled":
        return CompiledEngine(path, threads)
    return HummingbirdEngine(path, threads, allow_gpu)


#: ``Predictor._large_from`` when there is no GPU engine: no batch is that large.
_NEVER = sys.maxsize
#: Relative tolerance of the load-time check of a GPU engine against the CPU engine
#: (the export's parity tolerance).
_GPU_CHECK_TOL = 1e-4


def _check_rows(n_features: int, n: int = 256, seed: int = 0) -> np.ndarray:
    """NaN-free rows for the load-time GPU check: zeros, and normal draws at three
    scales rounded to whole numbers (categorical codes must be whole: LightGBM
    truncates a fractional code, the tensorised graphs do not). No real data is at
    hand; the export's parity check covered the edge cases, this one catches a device
    or build that computes differently."""
    rng = np.random.default_rng(seed)
    scale = rng.choice([2.0, 20.0, 2000.0], (n, n_features))
    X = np.round(rng.standard_normal((n, n_features)) * scale)
    X[0] = 0.0
    return np.ascontiguousarray(X, dtype=np.float32)


class Predictor:
    """The three models of one version (``eta``, ``p10``, ``p90``) on one engine kind,
    plus, when a GPU answers, the same models on the GPU for large batches.

    :meth:`predict` returns ``(eta, p10, p90)`` float64 arrays. Quantile models are
    trained separately and can cross the point model; the ETA is kept as it is and
    the interval is widened to contain it: ``p10 = min(p10, eta)``,
    ``p90 = max(p90, eta)`` (as in the training metrics).

    Large batches (module docstring): ``gpu_min_rows`` (None: ``INTELLILOG_GPU_MIN_ROWS``
    or :data:`DEFAULT_GPU_MIN_ROWS`; 0: off); ``gpu_nan_ok`` says the export proved
    hummingbird's parity on NaN rows (the manifest's hummingbird block has no
    restriction), else NaN rows stay on the CPU engine. A batch under
    ``gpu_min_rows`` rows costs one integer comparison more than before.
    ``large_rows`` / ``large_cpu_rows`` count the rows of large batches scored on the
    GPU / kept on the CPU for NaN. :meth:`describe` reports the set-up.

    ``scale`` turns the models' unit (the spec's ``target.unit``) into the minutes every
    answer is given in; 1.0 (a target in minutes) leaves the models' outputs untouched.
    """

    def __init__(
        self,
        model_dir: Path,
        kind: str,
        threads: int = 1,
        allow_gpu: bool | None = None,
        gpu_min_rows: int | None = None,
        gpu_nan_ok: bool = False,
        scale: float = 1.0,
    ) -> None:
        self.model_dir = Path(model_dir)
        self.kind = kind
        self.scale = float(scale)
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
        # large-batch GPU route: set by _set_up_large, or left off with a reason
        self.large: dict[str, Engine] | None = None
        self.large_how: str | None = None
        self.large_reason: str | None = None
        self.large_min_rows = _gpu_min_rows(gpu_min_rows)
        self.large_nan_ok = bool(gpu_nan_ok)
        self.large_rows = 0
        self.large_cpu_rows = 0
        self._large_from = _NEVER
        self._set_up_large(allow_gpu, self.large_min_rows)
        # one-row path: the three numba forests stacked, walked in one kernel call
        self._stacked: tuple[Any, ...] | None = None
        if all(isinstance(e, NumbaEngine) for e in self.engines.values()):
            forests = [self.engines[m].forest.args() for m in MODEL_NAMES]  # type: ignore[attr-defined]
            self._stacked = stack_forests(forests)
        # on compiled: the three compiled row functions, called from one numba wrapper
        self._rows3: tuple[int, int, int] | None = None
        if all(isinstance(e, CompiledEngine) for e in self.engines.values()):
            eta, p10, p90 = (self.engines[m].row_addr for m in MODEL_NAMES)  # type: ignore[attr-defined]
            self._rows3 = (eta, p10, p90)

    # ---- set-up ---------------------------------------------------------------------

    def _set_up_large(self, allow_gpu: bool | None, min_rows: int) -> None:
        reason = self._large_blocker(allow_gpu, min_rows)
        if reason is None:
            try:
                engines, how = load_gpu_engines(self.model_dir, allow_nan=self.large_nan_ok)
            except Exception as exc:  # no error: the CPU engine serves every batch
                engines, how = None, f"GPU engine failed to load: {type(exc).__name__}: {exc}"
            if engines is None:
                reason = how
            else:
                reason = self._check_large(engines)
                if reason is None:
                    self.large, self.large_how = engines, how
                    self._large_from = min_rows
                    log.info(
                        "%s: batches of >= %d rows go to hummingbird on cuda (%s)%s",
                        self.model_dir.name,
                        min_rows,
                        how,
                        "" if self.large_nan_ok else "; their rows with NaN to " + self.kind,
                    )
                    return
        self.large_reason = reason
        log.info(
            "%s: every batch on %s (%s): %s", self.model_dir.name, self.kind, self.device, reason
        )

    def _large_blocker(self, allow_gpu: bool | None, min_rows: int) -> str | None:
        """Why there can be no GPU route, from configuration and files alone."""
        if min_rows <= 0:
            return f"large-batch GPU routing is off ({ENV_GPU_MIN_ROWS}=0)"
        if self.device == "cuda":
            return f"the {self.kind} engine itself runs on cuda"
        if not gpu_allowed(allow_gpu):
            return f"GPU use is not allowed ({ENV_ALLOW_GPU}=false)"
        sfx = ENGINE_FILES["hummingbird"]
        missing = [f"{m}{sfx}" for m in MODEL_NAMES if not (self.model_dir / f"{m}{sfx}").is_file()]
        if missing:
            return (
                f"no hummingbird export: {', '.join(missing)} missing (exported with the gpu "
                "extra installed, when hummingbird passes parity with LightGBM)"
            )
        return None

    def _check_large(self, engines: dict[str, Engine]) -> str | None:
        """Load-time check of the GPU engines against the CPU engines (NaN-free rows)."""
        if self.n_features is None:
            return None
        rows = _check_rows(self.n_features)
        for m in MODEL_NAMES:
            try:
                rep = check_parity(
                    self.engines[m].predict(rows),
                    engines[m].predict(rows),
                    rows,
                    "gpu",
                    _GPU_CHECK_TOL,
                )
            except Exception as exc:
                return f"GPU engine failed its first run: {type(exc).__name__}: {exc}"
            if not rep.passed:
                return (
                    f"GPU engine disagrees with {self.kind} on the load check: model {m}, "
                    f"max rel err {rep.max_rel_err:.3g} > {_GPU_CHECK_TOL:g}"
                )
        return None

    def describe(self) -> dict[str, Any]:
        """What serves which batches: ``{"engine", "device", "large_batch",
        "large_batch_reason"}``; ``large_batch`` is ``{"engine", "device", "runtime",
        "min_rows", "nan_rows"}`` or None, with ``large_batch_reason`` saying why."""
        large: dict[str, Any] | None = None
        if self.large is not None:
            first = self.large["eta"]
            large = {
                "engine": first.name,
                "device": first.device,
                "runtime": self.large_how,
                "min_rows": self.large_min_rows,
                "nan_rows": "gpu" if self.large_nan_ok else self.kind,
            }
        return {
            "engine": self.kind,
            "device": self.device,
            "large_batch": large,
            "large_batch_reason": self.large_reason,
        }

    # ---- prediction -----------------------------------------------------------------

    def predict(self, X: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        X = _matrix(X, self.n_features, self.kind)
        if X.shape[0] >= self._large_from:
            eta, p10, p90 = self._predict_large(X)
        else:
            eta = self.engines["eta"].predict(X)
            p10 = np.minimum(self.engines["p10"].predict(X), eta)
            p90 = np.maximum(self.engines["p90"].predict(X), eta)
        if self.scale != 1.0:
            return eta * self.scale, p10 * self.scale, p90 * self.scale
        return eta, p10, p90

    def predict_one(self, X: np.ndarray) -> tuple[float, float, float]:
        """``(eta, p10, p90)`` of row 0 of ``X[1, F]``, as :meth:`predict` gives them: the
        single-request path. On numba the three forests are one kernel call (no array
        per model); on compiled the three row functions are called from one numba
        wrapper; other engines go through :meth:`predict`."""
        if X.shape == (1, self.n_features) and X.dtype == np.float32:
            st = self._stacked
            if st is not None:
                out = np.empty(3)
                _forests_row(np.ascontiguousarray(X), *st, out)
                eta, p10, p90 = out.tolist()
                return self._one(eta, p10, p90)
            rows = self._rows3
            if rows is not None:
                eta, p10, p90 = _rows3(rows[0], rows[1], rows[2], np.ascontiguousarray(X))
                return self._one(eta, p10, p90)
        eta_a, p10_a, p90_a = self.predict(X[:1])
        return float(eta_a[0]), float(p10_a[0]), float(p90_a[0])

    def _one(self, eta: float, p10: float, p90: float) -> tuple[float, float, float]:
        s = self.scale
        if s != 1.0:
            return eta * s, min(p10, eta) * s, max(p90, eta) * s
        return eta, min(p10, eta), max(p90, eta)

    def _predict_large(self, X: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        gpu = self.large
        assert gpu is not None
        n = X.shape[0]
        if self.large_nan_ok:
            parts = [gpu[m].predict(X) for m in MODEL_NAMES]
            self.large_rows += n
        else:
            nan_rows = np.isnan(X).any(axis=1)
            k = int(np.count_nonzero(nan_rows))
            if k == 0:
                parts = [gpu[m].predict(X) for m in MODEL_NAMES]
                self.large_rows += n
            elif n - k < self.large_min_rows:
                parts = [self.engines[m].predict(X) for m in MODEL_NAMES]
                self.large_cpu_rows += n
            else:
                clean, dirty = np.flatnonzero(~nan_rows), np.flatnonzero(nan_rows)
                Xc, Xd = X[clean], X[dirty]
                parts = []
                for m in MODEL_NAMES:
                    out = np.empty(n, dtype=np.float64)
                    out[clean] = gpu[m].predict(Xc)
                    out[dirty] = self.engines[m].predict(Xd)
                    parts.append(out)
                self.large_rows += n - k
                self.large_cpu_rows += k
        eta, p10, p90 = parts
        return eta, np.minimum(p10, eta), np.maximum(p90, eta)

    def warmup(self) -> None:
        """Run every engine once (numba compile/cache load, ORT first-run setup), the
        GPU engines too."""
        engines = list(self.engines.values()) + list((self.large or {}).values())
        for engine in engines:
            warm: Any = getattr(engine, "warmup", None)
            if callable(warm):
                warm()
            else:
                engine.predict(np.zeros((1, self.n_features or 1), dtype=np.float32))
