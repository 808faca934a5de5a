"""A loaded model version: verified artifact, its feature pipeline and its engines."""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from kernels.errors import ModelLoadError
from kernels.features import Pipeline
from kernels.spec import FeatureSpec, spec_from_dict
from server.config import DEFAULT_ENGINE
from server.engines import KIND_SOURCES, MODEL_NAMES, Predictor
from training.export import ENGINE_FILES, ParityError
from training.io import to_columns
from training.registry import Registry

__all__ = [
    "SERVED_CHECK_ENGINES",
    "LoadedModel",
    "check_model",
    "first_difference",
    "load_model",
    "model_spec",
    "servable_engines",
    "served_check",
    "verify_served",
]

#: The engines :func:`verify_served` proves on every new version (the CPU ones).
SERVED_CHECK_ENGINES = ("compiled", "numba", "onnx", "lightgbm")


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


def first_difference(a: Sequence[str], b: Sequence[str]) -> str | None:
    """Where two feature-name lists first differ, in words; None when they are equal."""
    for i, (x, y) in enumerate(zip(a, b, strict=False)):
        if x != y:
            return f"position {i}: {x!r} vs {y!r}"
    if len(a) != len(b):
        return f"lengths {len(a)} vs {len(b)}"
    return None


def _legacy_spec(raw: dict[str, Any], stored_hash: str, names: list[str], where: str) -> dict:
    """A spec written before column order was kept (tables as JSON objects, which came back
    sorted): check its old hash, then put the columns back in the manifest's feature order."""
    blob = json.dumps(raw, sort_keys=True, separators=(",", ":")).encode()
    if hashlib.sha256(blob).hexdigest()[:16] != stored_hash:
        raise ModelLoadError(f"{where}: spec hash mismatch; the manifest was edited: retrain")
    pos = {n: i for i, n in enumerate(names)}
    out = dict(raw)
    for table in ("categorical", "numeric"):
        cols = raw.get(table, {})
        if any(c not in pos for c in cols):
            raise ModelLoadError(
                f"{where}: written by an older intellilog and its feature_names do not name "
                f"every {table} column, so their order is unknown: retrain the model"
            )
        out[table] = [{"name": c, **cols[c]} for c in sorted(cols, key=pos.__getitem__)]
    return out


def model_spec(manifest: dict[str, Any], version: str) -> FeatureSpec:
    """The spec a version was trained with, checked against its stored hash.

    Manifests from before ordered specs are read in the order of their ``feature_names``
    (never in the sorted order JSON gave them)."""
    where = f"model {version} manifest"
    try:
        raw = manifest["spec"]
        stored_hash = manifest["spec_hash"]
        names = list(manifest["feature_names"])
    except KeyError as exc:
        raise ModelLoadError(
            f"model {version}: manifest lacks {exc.args[0]!r}; retrain it"
        ) from None
    if isinstance(raw.get("categorical"), dict) or isinstance(raw.get("numeric"), dict):
        spec = spec_from_dict(_legacy_spec(raw, stored_hash, names, where), where)
    else:
        spec = spec_from_dict(raw, where)
        if spec.hash != stored_hash:
            raise ModelLoadError(
                f"model {version}: its spec hash {stored_hash} does not match its own spec "
                f"({spec.hash}); the manifest was edited or written by another version"
            )
    return spec


def _booster_features(path: Path) -> list[str] | None:
    """``feature_names=`` of a LightGBM text model (read from its header, not parsed whole)."""
    with path.open("r", encoding="utf-8", errors="replace") as f:
        for line in f:
            if line.startswith("feature_names="):
                return line[len("feature_names=") :].split()
            if line.startswith("Tree="):
                break
    return None


def _check_feature_order(
    version: str, spec: FeatureSpec, manifest: dict[str, Any], folder: Path
) -> None:
    """The rebuilt pipeline's features must equal the manifest's and the LightGBM models'."""
    ours = list(spec.feature_names)
    diff = first_difference(ours, manifest["feature_names"])
    if diff is not None:
        raise ModelLoadError(
            f"model {version}: the spec rebuilds features that differ from the manifest's "
            f"feature_names at {diff}; refusing to serve permuted features: retrain the model"
        )
    for name in MODEL_NAMES:
        path = folder / f"{name}{ENGINE_FILES['lightgbm']}"
        got = _booster_features(path) if path.is_file() else None
        if got is None:
            raise ModelLoadError(f"model {version}: {path.name} has no feature_names line")
        diff = first_difference(ours, got)
        if diff is not None:
            raise ModelLoadError(
                f"model {version}: the spec's features differ from {path.name}'s "
                f"feature_names at {diff}; retrain the model"
            )


def servable_engines(manifest: dict[str, Any]) -> list[str]:
    """Engine kinds a version can serve: its exports plus kinds built from them."""
    exported = manifest.get("engines", {})
    kinds = [*exported, *(k for k, src in KIND_SOURCES.items() if src in exported)]
    return sorted(kinds)


def check_model(
    registry: Registry,
    ref: str = "production",
    engine: str = DEFAULT_ENGINE,
    spec: FeatureSpec | None = None,
) -> tuple[str, dict[str, Any], FeatureSpec]:
    """Every check :func:`load_model` makes before it builds an engine: the reference
    resolves, every checksum matches (no file missing, none half-written), the spec hash
    and feature order agree, and the version has ``engine``'s export.

    Cheap (hashes the files, compiles nothing): ``intellilog serve`` runs it before it
    starts any worker, so a broken alias is one error line and a non-zero exit instead of
    a traceback from every worker. Returns the version, its manifest and its spec; raises
    :class:`ModelLoadError` naming the first problem.
    """
    version = registry.resolve(ref)
    manifest = registry.verify(version)
    trained = model_spec(manifest, version)
    if manifest.get("levels") is None:
        raise ModelLoadError(f"model {version}: manifest lacks 'levels'; retrain it")
    _check_feature_order(version, trained, manifest, registry.path(version))
    if spec is not None and spec.hash != trained.hash:
        raise ModelLoadError(
            f"model {version} was trained with spec {trained.name!r} (hash {trained.hash}); "
            f"the given spec {spec.name!r} has hash {spec.hash}: use the model's spec or retrain"
        )
    engines = manifest.get("engines", {})
    source = KIND_SOURCES.get(engine, engine)  # compiled: serves the numba export
    if source not in engines:
        have = ", ".join(sorted(engines)) or "none"
        via = f" (the {engine!r} engine needs its {source!r} export)" if source != engine else ""
        raise ModelLoadError(f"model {version} has no {source!r} engine{via} (has: {have})")
    return version, manifest, trained


def load_model(
    registry: Registry,
    ref: str = "production",
    engine: str = DEFAULT_ENGINE,
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
    version, manifest, trained = check_model(registry, ref, engine, spec)
    engines = manifest.get("engines", {})
    pipe = Pipeline(trained, manifest["levels"])
    hb = engines.get("hummingbird")
    predictor = Predictor(
        registry.path(version),
        engine,
        threads=threads,
        allow_gpu=allow_gpu,
        gpu_min_rows=gpu_min_rows,
        gpu_nan_ok=isinstance(hb, dict) and hb.get("restriction") is None,
        scale=trained.goal.minutes,
    )
    return LoadedModel(version, manifest, pipe, predictor, engine, predictor.device)


def verify_served(
    registry: Registry,
    version: str,
    raw: pa.Table,
    expected: Sequence[np.ndarray],
    tol: float = 1e-4,
) -> dict[str, float]:
    """Prove a published version on the artifact as served.

    Every CPU engine the version serves is loaded through :func:`load_model` (what the
    server and ``score`` call), fed ``raw`` (input columns as they were read, not a
    matrix) through the reloaded pipeline, and must give ``expected`` (eta, p10, p90 of
    the training-time boosters on the same rows, in the target's unit; p10/p90 already
    widened to contain eta) within ``tol`` (relative, as at export). Returns the largest
    relative error per engine; raises :class:`ParityError` naming the engine, the model
    and the first bad row.
    """
    manifest = registry.manifest(version)
    worst: dict[str, float] = {}
    for kind in (k for k in SERVED_CHECK_ENGINES if k in servable_engines(manifest)):
        model = load_model(registry, version, engine=kind, threads=1, allow_gpu=False)
        conv = to_columns(raw, model.pipe)
        if len(conv.reject_rows):
            i = int(conv.reject_rows[0])
            raise ParityError(
                f"model {version}: {len(conv.reject_rows)} parity rows refused when read back "
                f"through the served pipeline (row {i}: {conv.reject_reasons[0]})"
            )
        got = model.predict(model.pipe.matrix(conv.columns))
        scale = model.predictor.scale
        err = 0.0
        for name, g, e in zip(MODEL_NAMES, got, expected, strict=True):
            ref = np.asarray(e, dtype=np.float64) * scale
            with np.errstate(invalid="ignore"):
                rel = np.abs(ref - g) / np.maximum(1.0, np.abs(ref))
            rel = np.where(np.isnan(rel), np.inf, rel)
            bad = np.flatnonzero(rel > tol)
            if bad.size:
                i = int(bad[0])
                raise ParityError(
                    f"model {version}: engine {kind!r} serves model {name!r} differently from "
                    f"the training-time LightGBM on {bad.size} of {len(ref)} rows; first bad row "
                    f"{i}: served {g[i]!r}, trained {ref[i]!r} (relative error {rel[i]:.3g} > {tol:g})"
                )
            err = max(err, float(rel.max()) if rel.size else 0.0)
        worst[kind] = err
    if not worst:
        raise ParityError(
            f"model {version}: no CPU engine to verify (has {servable_engines(manifest)})"
        )
    return worst


def served_check(registry: Registry) -> Any:
    """:func:`verify_served` bound to ``registry``: the ``served_check`` of
    :func:`training.job.train_job`."""

    def check(version: str, raw: pa.Table, expected: Sequence[np.ndarray]) -> dict[str, float]:
        return verify_served(registry, version, raw, expected)

    return check
