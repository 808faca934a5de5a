"""Training: time-ordered split, LightGBM point + quantile models, honest evaluation.

The holdout is the latest ``holdout_fraction`` of the valid rows by event time (never a
random split); early stopping watches the latest slice of the remaining rows, so no
model ever sees the future it is judged on. Quantile models (p10, p90) give the
prediction interval. Every compiled engine is checked against the LightGBM reference
before the artifact is published to the registry.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field, fields
from typing import Any, TextIO

import lightgbm as lgb
import numpy as np
import pyarrow as pa

from kernels.errors import ConfigError, DataError
from kernels.features import Pipeline
from kernels.spec import FeatureSpec
from training.io import Converted, learn_levels, to_columns
from training.metrics import BaselineModel, interval_metrics, point_metrics

__all__ = [
    "BoosterFit",
    "Prepared",
    "TrainResult",
    "TrainSettings",
    "fit_models",
    "prepare",
    "settings_dict",
    "settings_from_dict",
    "time_split",
]

_MIN_TRAIN_ROWS = 200
_MIN_HOLDOUT_ROWS = 50


@dataclass
class TrainSettings:
    holdout_fraction: float = 0.2
    valid_fraction: float = 0.1
    accuracy_threshold: float | None = None  # None: the spec's target.tolerance
    quality_threshold: float = 80.0
    objective: str = "huber"
    huber_delta: float | None = None  # None: the spec's target.huber_delta (2 × tolerance)
    num_leaves: int = 63
    learning_rate: float = 0.08
    max_rounds: int = 1500
    early_stopping: int = 50
    min_data_in_leaf: int = 40
    quantile_num_leaves: int = 31
    quantiles: tuple[float, float] = (0.1, 0.9)
    min_level_count: int = 5
    seed: int = 0
    threads: int = 0

    def validate(self) -> None:
        def bad(name: str, why: str) -> ConfigError:
            return ConfigError(f"{name}={getattr(self, name)!r}: {why}")

        if not 0.01 <= self.holdout_fraction <= 0.5:
            raise bad("holdout_fraction", "must be within [0.01, 0.5]")
        if not 0.01 <= self.valid_fraction <= 0.5:
            raise bad("valid_fraction", "must be within [0.01, 0.5]")
        if self.accuracy_threshold is not None and not self.accuracy_threshold > 0:
            raise bad("accuracy_threshold", "must be > 0 (in the target's unit)")
        if self.huber_delta is not None and not self.huber_delta > 0:
            raise bad("huber_delta", "must be > 0 (in the target's unit)")
        if not 0 <= self.quality_threshold <= 100:
            raise bad("quality_threshold", "must be within [0, 100]")
        if self.objective not in ("regression", "huber", "regression_l1", "fair"):
            raise bad("objective", "use regression, huber, regression_l1 or fair")
        if not 2 <= self.num_leaves <= 4096 or not 2 <= self.quantile_num_leaves <= 4096:
            raise bad("num_leaves", "must be within [2, 4096]")
        if not 0 < self.learning_rate <= 1:
            raise bad("learning_rate", "must be within (0, 1]")
        if self.max_rounds < 1:
            raise bad("max_rounds", "must be >= 1")
        lo, hi = self.quantiles
        if not 0 < lo < 0.5 < hi < 1:
            raise bad("quantiles", "need 0 < low < 0.5 < high < 1")


@dataclass
class Prepared:
    """Valid rows of a dataset, featurised and split by time."""

    pipe: Pipeline
    converted: Converted
    X: np.ndarray  # float32 [n, F], rows in time order
    y: np.ndarray  # float64 [n]
    utc: np.ndarray  # int64 [n]
    train_idx: np.ndarray
    valid_idx: np.ndarray
    holdout_idx: np.ndarray
    rows: np.ndarray  # int64 [n]: the input table's row of each X row

    def time_range(self, idx: np.ndarray) -> tuple[str, str]:
        from datetime import UTC, datetime

        t = self.utc[idx]
        return (
            datetime.fromtimestamp(int(t.min()), UTC).isoformat(),
            datetime.fromtimestamp(int(t.max()), UTC).isoformat(),
        )


def time_split(
    n: int, holdout_fraction: float, valid_fraction: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Indices (train, valid, holdout) of ``n`` rows already in time order."""
    n_hold = max(1, math.ceil(n * holdout_fraction))
    n_rest = n - n_hold
    n_valid = max(1, math.ceil(n_rest * valid_fraction))
    idx = np.arange(n)
    return idx[: n_rest - n_valid], idx[n_rest - n_valid : n_rest], idx[n_rest:]


def prepare(
    table: pa.Table,
    spec: FeatureSpec,
    settings: TrainSettings,
    levels: dict[str, tuple[str, ...]] | None = None,
) -> Prepared:
    """Validate rows, learn categorical levels, featurise, sort by time and split.

    Learned levels (``levels`` None) come from the training and early-stopping rows only,
    never from the holdout: a value first seen in the holdout period is 'unknown' there,
    as it will be in production.
    """
    settings.validate()
    learn = levels is None
    if levels is None:  # provisional levels: they decide nothing about validity
        levels = learn_levels(table, spec, min_count=settings.min_level_count)
    pipe = Pipeline(spec, levels)
    conv = to_columns(table, pipe, with_target=True)
    n = conv.n_valid
    need = _MIN_TRAIN_ROWS + _MIN_HOLDOUT_ROWS
    if n < need:
        raise DataError(
            f"only {n} valid rows (of {table.num_rows}); training needs at least {need}"
        )
    order = np.argsort(conv.columns.utc, kind="stable")
    tr, va, ho = time_split(n, settings.holdout_fraction, settings.valid_fraction)
    if len(ho) < _MIN_HOLDOUT_ROWS:
        raise DataError(f"holdout has {len(ho)} rows; use more data or a larger --holdout-fraction")
    rows = np.flatnonzero(conv.valid)[order]
    if learn and any(c.learned for c in spec.categorical):
        seen = table.take(rows[: n - len(ho)])
        pipe = Pipeline(spec, learn_levels(seen, spec, min_count=settings.min_level_count))
        valid = conv.valid
        conv = to_columns(table, pipe, with_target=True)
        assert np.array_equal(conv.valid, valid)  # learned levels never refuse a row
    cols = conv.columns.take(order)
    assert conv.target is not None
    y = conv.target[order]
    X = pipe.matrix(cols)
    return Prepared(pipe, conv, X, y, cols.utc, tr, va, ho, rows)


@dataclass
class TrainResult:
    boosters: dict[str, lgb.Booster]
    metrics: dict[str, Any]
    baselines: BaselineModel
    best_iterations: dict[str, int]
    seconds: float
    params: dict[str, Any] = field(default_factory=dict)


def _params(
    s: TrainSettings, objective: str, leaves: int, alpha: float | None = None, delta: float = 10.0
) -> dict[str, Any]:
    p: dict[str, Any] = {
        "objective": objective,
        "learning_rate": s.learning_rate,
        "num_leaves": leaves,
        "min_data_in_leaf": s.min_data_in_leaf,
        "feature_fraction": 0.9,
        "bagging_fraction": 0.8,
        "bagging_freq": 1,
        "lambda_l2": 1.0,
        "cat_smooth": 10.0,
        "min_data_per_group": 50,
        "seed": s.seed,
        "deterministic": True,
        "force_row_wise": True,
        "verbosity": -1,
        "num_threads": s.threads,
    }
    if objective == "huber":
        p["alpha"] = s.huber_delta if s.huber_delta is not None else delta
        p["metric"] = "l1"
    if alpha is not None:
        p["alpha"] = alpha
        p["metric"] = "quantile"
    return p


def _progress(name: str, total: int, out: TextIO | None) -> Callable[[Any], None]:
    start = time.perf_counter()

    def cb(env: Any) -> None:
        it = env.iteration + 1
        if out is None or (it % 100 and it != total):
            return
        res = env.evaluation_result_list
        score = f"{res[0][1]} {res[0][2]:.4f}" if res else ""
        out.write(
            f"  [{name}] round {it}/{total} valid {score} ({time.perf_counter() - start:.1f}s)\n"
        )
        out.flush()

    return cb


#: ``fit(name, params, prep, settings, out)``: another trainer for one model (e.g.
#: ``server.distributed.DaskFit`` on a Dask cluster). It trains on ``prep``'s training rows
#: with ``params`` and returns the booster with ``best_iteration`` set by the same
#: early-stopping rule on ``prep``'s early-stopping rows; everything around it is shared.
BoosterFit = Callable[[str, dict[str, Any], Prepared, TrainSettings, TextIO | None], lgb.Booster]


def fit_models(
    prep: Prepared,
    settings: TrainSettings,
    out: TextIO | None = None,
    fit: BoosterFit | None = None,
) -> TrainResult:
    """Fit the point model and the two quantile models; evaluate on the holdout.

    Progress goes to ``out`` (None: silent). ``fit`` (None: LightGBM on this machine)
    trains each model instead of :func:`lightgbm.train`.
    """
    t0 = time.perf_counter()
    X, y = prep.X, prep.y
    cat = list(prep.pipe.spec.categorical_feature_indices)
    names = list(prep.pipe.spec.feature_names)
    tr, va, _ho = prep.train_idx, prep.valid_idx, prep.holdout_idx
    dtrain = lgb.Dataset(
        X[tr], y[tr], feature_name=names, categorical_feature=cat, free_raw_data=False
    )
    dvalid = lgb.Dataset(X[va], y[va], reference=dtrain)
    lo, hi = settings.quantiles
    jobs = {
        "eta": _params(
            settings, settings.objective, settings.num_leaves, delta=prep.pipe.spec.goal.delta
        ),
        "p10": _params(settings, "quantile", settings.quantile_num_leaves, lo),
        "p90": _params(settings, "quantile", settings.quantile_num_leaves, hi),
    }
    boosters: dict[str, lgb.Booster] = {}
    best: dict[str, int] = {}
    for name, params in jobs.items():
        if out is not None:
            out.write(
                f"training {name} model ({params['objective']}, {len(tr)} rows, early stopping on {len(va)})\n"
            )
        if fit is not None:
            b = fit(name, params, prep, settings, out)
        else:
            b = lgb.train(
                params,
                dtrain,
                num_boost_round=settings.max_rounds,
                valid_sets=[dvalid],
                valid_names=["valid"],
                callbacks=[
                    lgb.early_stopping(settings.early_stopping, verbose=False),
                    _progress(name, settings.max_rounds, out),
                ],
            )
        best[name] = int(b.best_iteration or b.current_iteration())
        # keep only the trees that early stopping chose, so every engine serves the same model
        boosters[name] = lgb.Booster(model_str=b.model_to_string(num_iteration=best[name]))
    metrics, base = evaluate_prepared(prep, boosters, settings)
    return TrainResult(boosters, metrics, base, best, time.perf_counter() - t0, params=jobs)


def evaluate_prepared(
    prep: Prepared, boosters: dict[str, lgb.Booster], settings: TrainSettings
) -> tuple[dict[str, Any], BaselineModel]:
    X, y = prep.X, prep.y
    tr, ho = np.concatenate([prep.train_idx, prep.valid_idx]), prep.holdout_idx
    dist = X[:, 4].astype(np.float64)
    base = BaselineModel.fit(dist[tr], y[tr])
    preds = {
        k: np.asarray(b.predict(X[ho], num_threads=settings.threads or 0), dtype=np.float64)
        for k, b in boosters.items()
    }
    eta = preds["eta"]
    lo = np.minimum(preds["p10"], eta)
    hi = np.maximum(preds["p90"], eta)
    goal = prep.pipe.spec.goal
    thr = settings.accuracy_threshold if settings.accuracy_threshold is not None else goal.tolerance
    h0, h1 = prep.time_range(ho)
    metrics = {
        "holdout": {
            "rows": len(ho),
            "from": h0,
            "to": h1,
            "accuracy_tolerance": thr,
            "unit": goal.unit,
        },
        "model": {**point_metrics(y[ho], eta, thr), **interval_metrics(y[ho], lo, hi)},
        "baselines": base.evaluate(dist[ho], y[ho], thr),
        "train_rows": len(prep.train_idx),
        "valid_rows": len(prep.valid_idx),
    }
    return metrics, base


def metrics_table(metrics: dict[str, Any]) -> str:
    """A short table: the model against the naive baselines on the holdout."""
    h = metrics["holdout"]
    thr = h["accuracy_tolerance"]
    unit = {"minutes": "min", "hours": "h", "seconds": "s"}.get(h.get("unit", "minutes"), "")
    rows = [("model", metrics["model"]), *list(metrics["baselines"].items())]
    lines = [
        f"holdout: {h['rows']} rows, {h['from'][:19]} .. {h['to'][:19]} (latest by event time)",
        f"{'':16} {'MAE':>7} {'RMSE':>7} {'p90 AE':>7} {f'±{thr:g}{unit}':>8} {'cover':>6}",
    ]
    for name, m in rows:
        cov = f"{m['coverage'] * 100:5.1f}%" if "coverage" in m else f"{'-':>6}"
        lines.append(
            f"{name:16} {m['mae']:7.2f} {m['rmse']:7.2f} {m['p90_ae']:7.2f} {m['accuracy'] * 100:7.1f}% {cov}"
        )
    return "\n".join(lines)


def settings_dict(s: TrainSettings) -> dict[str, Any]:
    """``s`` as the manifest's ``settings`` (JSON); :func:`settings_from_dict` reads it back."""
    d = asdict(s)
    d["quantiles"] = list(s.quantiles)
    return d


def settings_from_dict(raw: Mapping[str, Any]) -> TrainSettings:
    """The settings a manifest's ``settings`` (:func:`settings_dict`) records, validated.

    Keys this version does not know (a manifest of another intellilog) are ignored;
    missing ones keep their defaults."""
    known = {f.name for f in fields(TrainSettings)}
    kept = {k: v for k, v in raw.items() if k in known}
    if "quantiles" in kept:
        kept["quantiles"] = tuple(kept["quantiles"])
    s = TrainSettings(**kept)
    s.validate()
    return s
