"""The train job: data → quality gate → features → models → engines → registry."""

from __future__ import annotations

import hashlib
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

import numpy as np
import pyarrow as pa

from kernels.errors import IntelliLogError, ModelLoadError
from kernels.spec import FeatureSpec
from training import __version__
from training.drift import reference_histograms
from training.export import export_engines, parity_rows
from training.io import read_table
from training.quality import QualityReport, assess, require_quality
from training.registry import Registry
from training.train import (
    BoosterFit,
    TrainSettings,
    fit_models,
    metrics_table,
    prepare,
    settings_dict,
)

__all__ = ["ServedCheck", "TrainOutcome", "file_digest", "train_job"]

#: ``check(version, raw_rows, expected)``: prove a published version as it is served
#: (``server.models.verify_served`` with the registry bound); returns the largest relative
#: error per engine, raises on a mismatch. Training cannot import the server, so the
#: caller hands it in.
ServedCheck = Callable[[str, pa.Table, Sequence[np.ndarray]], dict[str, float]]
#: Raw rows the served check feeds through every engine.
SERVED_CHECK_ROWS = 2000


@dataclass
class TrainOutcome:
    version: str | None
    metrics: dict[str, Any] | None
    quality: QualityReport
    promoted: bool
    seconds: float
    #: Rows of the data file held out for the metrics (time-ordered; None on a dry run).
    holdout_rows: np.ndarray | None = None


def file_digest(path: Path, limit: int = 1 << 30) -> str:
    """sha256 of a data file (first ``limit`` bytes for huge files), for the manifest."""
    h = hashlib.sha256()
    left = limit
    with path.open("rb") as f:
        while left > 0 and (chunk := f.read(min(1 << 20, left))):
            h.update(chunk)
            left -= len(chunk)
    return h.hexdigest()


def train_job(
    data: str | Path,
    spec: FeatureSpec,
    registry: Registry,
    settings: TrainSettings,
    promote: bool = False,
    dry_run: bool = False,
    out: TextIO | None = None,
    *,
    served_check: ServedCheck,
    fit: BoosterFit | None = None,
) -> TrainOutcome:
    """Train, export, publish, prove the version as served, then (optionally) promote.

    A version whose served answers differ from the training-time boosters is deleted
    before anything can point at it, and the error names the engine and the row.
    ``fit`` trains each model elsewhere (:data:`training.train.BoosterFit`, e.g. on a
    Dask cluster); the manifest's ``trainer`` says which."""
    out = out or sys.stderr
    t0 = time.perf_counter()
    settings.validate()
    path = Path(data)
    out.write(f"reading {path}\n")
    table = read_table(path, spec, need_target=True)
    quality = assess(table, spec, threshold=settings.quality_threshold)
    out.write(quality.format() + "\n")
    require_quality(quality, path)
    prep = prepare(table, spec, settings)
    rej = len(prep.converted.reject_rows)
    out.write(
        f"{prep.converted.n_valid} valid rows ({rej} refused), {prep.X.shape[1]} features; "
        f"train {len(prep.train_idx)}, early-stopping {len(prep.valid_idx)}, holdout {len(prep.holdout_idx)}\n"
    )
    if dry_run:
        out.write("dry run: spec, data and settings are fine; nothing trained\n")
        return TrainOutcome(None, None, quality, False, time.perf_counter() - t0)
    res = fit_models(prep, settings, out, fit=fit)
    out.write(metrics_table(res.metrics) + "\n")
    staging = registry.stage()
    rng = np.random.default_rng(settings.seed)
    ho = prep.X[prep.holdout_idx]
    check = parity_rows(
        ho[rng.permutation(len(ho))[:2000]], rng, categorical=list(spec.categorical_feature_indices)
    )
    out.write(f"compiling engines and checking them against LightGBM on {len(check)} rows\n")
    engines = export_engines(
        res.boosters, check, staging, categorical=list(spec.categorical_feature_indices)
    )
    trainX = prep.X[np.concatenate([prep.train_idx, prep.valid_idx])]
    manifest: dict[str, Any] = {
        "intellilog": __version__,
        "spec": spec.to_dict(),
        "spec_hash": spec.hash,
        "levels": {k: list(v) for k, v in prep.pipe.levels.items()},
        "feature_names": list(spec.feature_names),
        "metrics": res.metrics,
        "baselines": res.baselines.to_dict(),
        "engines": engines,
        "best_iterations": res.best_iterations,
        "settings": settings_dict(settings),
        "params": res.params,
        "data": {
            "path": str(path),
            "sha256": file_digest(path),
            "rows": table.num_rows,
            "valid_rows": prep.converted.n_valid,
            "quality": quality.score,
            "train_from": prep.time_range(prep.train_idx)[0],
            "train_to": prep.time_range(prep.valid_idx)[1],
        },
        "reference": reference_histograms(
            trainX, list(spec.feature_names), categorical=list(spec.categorical_feature_indices)
        ),
        "train_seconds": round(res.seconds, 2),
        "trainer": str(getattr(fit, "description", "lightgbm")) if fit else "lightgbm",
    }
    version = registry.publish(staging, manifest)
    # the artifact as served: reloaded through the server's loader, fed raw input rows
    pick = prep.holdout_idx[rng.permutation(len(prep.holdout_idx))[:SERVED_CHECK_ROWS]]
    X_pick = prep.X[pick]
    eta = np.asarray(res.boosters["eta"].predict(X_pick), dtype=np.float64)
    expected: list[np.ndarray] = [
        eta,
        np.minimum(res.boosters["p10"].predict(X_pick), eta),
        np.maximum(res.boosters["p90"].predict(X_pick), eta),
    ]
    try:
        worst = served_check(version, table.take(prep.rows[pick]), expected)
    except IntelliLogError as exc:
        registry.delete(version)
        raise ModelLoadError(f"version {version} deleted: {exc}") from None
    out.write(
        f"served check on {len(pick)} raw rows, reloaded: "
        + ", ".join(f"{k} {v:.1e}" for k, v in worst.items())
        + " max relative error\n"
    )
    out.write(f"registered model {version} in {registry.root}\n")
    if promote:
        registry.promote(version, "production")
        out.write(f"promoted {version} to production\n")
    return TrainOutcome(
        version,
        res.metrics,
        quality,
        promote,
        time.perf_counter() - t0,
        prep.rows[prep.holdout_idx],
    )
