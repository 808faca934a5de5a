"""A loaded model version: verified artifact, its feature pipeline and its engines."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import numpy as np

from kernels.errors import ModelLoadError
from kernels.features import Pipeline
from kernels.spec import FeatureSpec, spec_from_dict
from server.engines import KIND_SOURCES, Predictor
from training.registry import Registry

__all__ = ["LoadedModel", "load_model"]


@dataclass
class LoadedModel:
    version: str
    manifest: dict[str, Any]
    pipe: Pipeline
    predictor: Predictor
    engine_name: str
    device: str

    def predict(self, X: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        return self.predictor.predict(X)

    def describe(self) -> dict[str, Any]:
        """Engine and device, and the large-batch GPU engine or why there is none
        (:meth:`server.engines.Predictor.describe`)."""
        return self.predictor.describe()


def load_model(
    registry: Registry,
    ref: str = "production",
    engine: str = "onnx",
    threads: int = 1,
    spec: FeatureSpec | None = None,
    allow_gpu: bool | None = None,
    gpu_min_rows: int | None = None,
) -> LoadedModel:
    """Resolve ``ref`` (alias or version), verify checksums and spec hash, load engines.

    ``spec``, when given, must be the spec the model was trained with (same hash).
    ``threads`` <= 0 means every core. ``allow_gpu`` / ``gpu_min_rows`` (None: the
    environment, see :mod:`server.engines`) set up the large-batch GPU route; rows
    with NaN may go to it only when the manifest records hummingbird's parity
    without restriction.
    """
    if threads <= 0:  # 0: every core this process may run on
        threads = (
            len(os.sched_getaffinity(0))
            if hasattr(os, "sched_getaffinity")
            else (os.cpu_count() or 1)
        )
    version = registry.resolve(ref)
    manifest = registry.verify(version)
    try:
        model_spec = spec_from_dict(manifest["spec"], f"model {version} manifest")
        stored_hash = manifest["spec_hash"]
        levels = manifest["levels"]
    except KeyError as exc:
        raise ModelLoadError(
            f"model {version}: manifest lacks {exc.args[0]!r}; retrain it"
        ) from None
    if model_spec.hash != stored_hash:
        raise ModelLoadError(
            f"model {version}: its spec hash {stored_hash} does not match its own spec "
            f"({model_spec.hash}); the manifest was edited or written by another version"
        )
    if spec is not None and spec.hash != stored_hash:
        raise ModelLoadError(
            f"model {version} was trained with spec {model_spec.name!r} (hash {stored_hash}); "
            f"the given spec {spec.name!r} has hash {spec.hash}: use the model's spec or retrain"
        )
    engines = manifest.get("engines", {})
    source = KIND_SOURCES.get(engine, engine)  # compiled: serves the numba export
    if source not in engines:
        have = ", ".join(sorted(engines)) or "none"
        via = f" (the {engine!r} engine needs its {source!r} export)" if source != engine else ""
        raise ModelLoadError(f"model {version} has no {source!r} engine{via} (has: {have})")
    pipe = Pipeline(model_spec, levels)
    hb = engines.get("hummingbird")
    predictor = Predictor(
        registry.path(version),
        engine,
        threads=threads,
        allow_gpu=allow_gpu,
        gpu_min_rows=gpu_min_rows,
        gpu_nan_ok=isinstance(hb, dict) and hb.get("restriction") is None,
    )
    return LoadedModel(version, manifest, pipe, predictor, engine, predictor.device)
