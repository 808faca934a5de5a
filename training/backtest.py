"""Rolling-origin backtest: how a model trained *then* would have done on what came *next*.

The rule
--------
The valid rows, in event-time order, are cut into ``folds + 1`` consecutive segments of
(about) equal **row counts**. For fold ``k = 1..folds`` a model is trained on *all* rows
before segment ``k`` and tested on segment ``k``:

* training exactly as ``intellilog train`` does: the latest ``valid_fraction`` of the
  training rows is the early-stopping slice, the rest fits the point model and the
  p10/p90 quantile models (:func:`training.train.fit_models`); the naive baselines are fitted
  on the training rows only (:func:`training.train.evaluate_prepared`);
* learned categorical levels (``zone = []``) come from the fold's training rows only, so no
  model sees a row, nor a level, from its test period or later;
* a cut never splits rows with the same event time: they all go to the later segment, so
  every fold's latest training time is strictly before its earliest test time.

Equal row counts rather than equal time spans: every fold is scored on the same number of
rows, so the spread across folds shows how the model's quality moves with the period and
not how sample size moves with demand (order volume grows and has seasons); it is also how
the training holdout is defined (a share of rows, not of time).

Errors are one line: :class:`~kernels.errors.ConfigError` for ``folds < 2``,
:class:`~kernels.errors.DataError` when a segment would be too small to train on (fewer
than :data:`MIN_TRAIN_ROWS` rows before the first test segment) or to test on (fewer than
:data:`MIN_TEST_ROWS` rows in a test segment).
"""

from __future__ import annotations

import math
import statistics
import time
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any, TextIO

import lightgbm as lgb
import numpy as np
import pyarrow as pa

from kernels.errors import ConfigError, DataError
from kernels.spec import FeatureSpec
from training.io import learn_levels
from training.train import Prepared, TrainSettings, fit_models, prepare

__all__ = [
    "MIN_FOLDS",
    "MIN_TEST_ROWS",
    "MIN_TRAIN_ROWS",
    "BacktestResult",
    "FoldResult",
    "backtest",
    "format_backtest",
    "segment_bounds",
]

#: The fewest folds a backtest runs (one fold has no spread).
MIN_FOLDS = 2
#: The fewest rows before the first test segment (training + early stopping), as training needs.
MIN_TRAIN_ROWS = 250
#: The fewest rows in a test segment, as the training holdout needs.
MIN_TEST_ROWS = 50

#: The metrics summarised across folds (mean, standard deviation, min, max).
SPREAD_METRICS: tuple[str, ...] = ("mae", "accuracy")


def _iso(t: int) -> str:
    return datetime.fromtimestamp(int(t), UTC).isoformat()


@dataclass
class FoldResult:
    """One fold: what it trained on, what it was tested on, and how it did."""

    fold: int  # 1-based
    train_rows: int  # rows fitting the models
    early_stopping_rows: int  # the latest training rows, watched by early stopping
    test_rows: int
    train_from: str  # UTC ISO times; training covers train_from .. train_to
    train_to: str
    test_from: str
    test_to: str
    model: dict[str, float]  # point_metrics + interval_metrics of the model
    baselines: dict[str, dict[str, float]]  # median and distance_speed point_metrics
    best_iterations: dict[str, int]
    levels: dict[str, tuple[str, ...]]  # categorical levels the fold's models use
    seconds: float
    #: the fold's fitted boosters (eta, p10, p90); kept out of :meth:`to_dict`
    boosters: dict[str, lgb.Booster] = field(default_factory=dict, repr=False, compare=False)

    def to_dict(self) -> dict[str, Any]:
        return {
            "fold": self.fold,
            "train_rows": self.train_rows,
            "early_stopping_rows": self.early_stopping_rows,
            "test_rows": self.test_rows,
            "train_from": self.train_from,
            "train_to": self.train_to,
            "test_from": self.test_from,
            "test_to": self.test_to,
            "model": dict(self.model),
            "baselines": {k: dict(v) for k, v in self.baselines.items()},
            "best_iterations": dict(self.best_iterations),
            "seconds": round(self.seconds, 2),
        }


@dataclass
class BacktestResult:
    """Every fold in time order, and the spread of the key metrics across them."""

    folds: list[FoldResult]
    valid_rows: int  # valid rows of the whole table
    refused_rows: int
    accuracy_tolerance: float  # accuracy = share of |error| <= this, in the target's unit
    unit: str  # the target's unit
    seconds: float

    def spread(self) -> dict[str, dict[str, float]]:
        """Mean, sample standard deviation (n − 1), min and max across folds, per metric
        (model ``mae`` and ``accuracy``, and the median baseline's ``median_mae``)."""
        series: dict[str, list[float]] = {
            m: [f.model[m] for f in self.folds] for m in SPREAD_METRICS
        }
        series["median_mae"] = [f.baselines["median"]["mae"] for f in self.folds]
        out: dict[str, dict[str, float]] = {}
        for name, xs in series.items():
            out[name] = {
                "mean": statistics.fmean(xs),
                "std": statistics.stdev(xs) if len(xs) > 1 else 0.0,
                "min": min(xs),
                "max": max(xs),
            }
        return out

    def to_dict(self) -> dict[str, Any]:
        return {
            "rule": "rolling origin: equal-row segments by event time; fold k trains on all "
            "rows before segment k and tests on segment k",
            "folds": len(self.folds),
            "valid_rows": self.valid_rows,
            "refused_rows": self.refused_rows,
            "accuracy_tolerance": self.accuracy_tolerance,
            "unit": self.unit,
            "results": [f.to_dict() for f in self.folds],
            "spread": self.spread(),
            "seconds": round(self.seconds, 2),
        }


def segment_bounds(utc: np.ndarray, folds: int) -> np.ndarray:
    """Start index of each of ``folds + 1`` segments of sorted times ``utc``, plus ``len(utc)``.

    Segments have about equal row counts; a cut that would split equal times moves back to
    the first row of that time, so equal times always share a segment. Raises
    :class:`ConfigError` for ``folds < 2`` and :class:`DataError` for a segment too small.
    """
    if isinstance(folds, bool) or not isinstance(folds, int | np.integer) or folds < MIN_FOLDS:
        raise ConfigError(f"--folds={folds!r}: a backtest needs at least {MIN_FOLDS} folds")
    n = len(utc)
    parts = folds + 1
    need = MIN_TRAIN_ROWS * parts
    if n < need:
        raise DataError(
            f"{n} valid rows are too few for {folds} folds: {parts} segments of "
            f"~{n // parts} rows, but the first fold needs at least {MIN_TRAIN_ROWS} training "
            f"rows ({need} valid rows for {folds} folds); use fewer --folds or more data"
        )
    cuts = [round(j * n / parts) for j in range(parts + 1)]
    bounds = [0]
    for c in cuts[1:-1]:
        bounds.append(int(np.searchsorted(utc, utc[c], side="left")))
    bounds.append(n)
    b = np.asarray(bounds, dtype=np.int64)
    if b[1] < MIN_TRAIN_ROWS:
        raise DataError(
            f"only {b[1]} rows before the first test segment (rows sharing an event time "
            f"stay together); the first fold needs at least {MIN_TRAIN_ROWS}"
        )
    sizes = np.diff(b)[1:]
    for k, size in enumerate(sizes.tolist(), start=1):
        if size < MIN_TEST_ROWS:
            raise DataError(
                f"test segment of fold {k} has {size} rows (rows sharing an event time stay "
                f"together); each needs at least {MIN_TEST_ROWS}: use fewer --folds"
            )
    return b


def _fold_prepared(
    table: pa.Table,
    spec: FeatureSpec,
    settings: TrainSettings,
    rows_in: np.ndarray,
    utc_in: np.ndarray,
    t_start: int,
    t_end: int | None,
) -> Prepared:
    """The fold's rows (event time < ``t_end``) featurised with levels learned from the
    training rows (event time < ``t_start``), split as training splits them."""
    before = rows_in[utc_in < t_start]
    in_test = (utc_in >= t_start) if t_end is None else (utc_in >= t_start) & (utc_in < t_end)
    levels = learn_levels(table.take(before), spec, min_count=settings.min_level_count)
    # prepare() validates, featurises and sorts by time; its own holdout split is replaced
    # below (0.5 only keeps its holdout-size check quiet: the segments were checked already)
    sub = table.take(np.concatenate([before, rows_in[in_test]]))
    p = prepare(sub, spec, replace(settings, holdout_fraction=0.5), levels=levels)
    n_train = int(np.searchsorted(p.utc, t_start, side="left"))
    n_valid = max(1, math.ceil(n_train * settings.valid_fraction))  # as time_split does
    idx = np.arange(len(p.utc))
    return replace(
        p,
        train_idx=idx[: n_train - n_valid],
        valid_idx=idx[n_train - n_valid : n_train],
        holdout_idx=idx[n_train:],
    )


def backtest(
    table: pa.Table,
    spec: FeatureSpec,
    settings: TrainSettings,
    folds: int = 4,
    out: TextIO | None = None,
) -> BacktestResult:
    """Rolling-origin evaluation of ``settings`` on ``table`` (see the module docstring).

    Progress lines go to ``out`` (None: silent). Raises ConfigError / DataError (one line).
    """
    t0 = time.perf_counter()
    if isinstance(folds, bool) or not isinstance(folds, int | np.integer) or folds < MIN_FOLDS:
        raise ConfigError(f"--folds={folds!r}: a backtest needs at least {MIN_FOLDS} folds")
    settings.validate()
    whole = prepare(table, spec, settings)  # validation, refusals, time order of all rows
    bounds = segment_bounds(whole.utc, folds)
    conv = whole.converted
    rows_in = np.flatnonzero(conv.valid)  # input rows of the valid rows, input order
    utc_in = np.asarray(conv.columns.utc)
    if out is not None:
        sizes = ", ".join(str(int(s)) for s in np.diff(bounds))
        out.write(
            f"backtest: {conv.n_valid} valid rows ({len(conv.reject_rows)} refused) in "
            f"{folds + 1} segments by event time ({sizes} rows)\n"
        )
    results: list[FoldResult] = []
    tolerance, unit = float("nan"), "minutes"
    for k in range(1, folds + 1):
        tf = time.perf_counter()
        t_start = int(whole.utc[bounds[k]])
        t_end = int(whole.utc[bounds[k + 1]]) if k < folds else None
        p = _fold_prepared(table, spec, settings, rows_in, utc_in, t_start, t_end)
        n_fit = len(p.train_idx) + len(p.valid_idx)
        if n_fit < MIN_TRAIN_ROWS or len(p.holdout_idx) < MIN_TEST_ROWS:
            raise DataError(
                f"fold {k}: {n_fit} valid training rows and {len(p.holdout_idx)} test rows after "
                f"its levels were learned; needs {MIN_TRAIN_ROWS} and {MIN_TEST_ROWS}"
            )
        if out is not None:
            out.write(
                f"fold {k}/{folds}: training on {n_fit} rows up to {_iso(p.utc[n_fit - 1])[:19]}, "
                f"testing on {len(p.holdout_idx)} rows\n"
            )
            out.flush()
        res = fit_models(p, settings)
        m = res.metrics
        h = m["holdout"]
        tolerance, unit = float(h["accuracy_tolerance"]), str(h.get("unit", unit))
        fit_all = np.concatenate([p.train_idx, p.valid_idx])
        tr0, tr1 = p.time_range(fit_all)
        results.append(
            FoldResult(
                fold=k,
                train_rows=len(p.train_idx),
                early_stopping_rows=len(p.valid_idx),
                test_rows=len(p.holdout_idx),
                train_from=tr0,
                train_to=tr1,
                test_from=m["holdout"]["from"],
                test_to=m["holdout"]["to"],
                model=dict(m["model"]),
                baselines={k2: dict(v) for k2, v in m["baselines"].items()},
                best_iterations=dict(res.best_iterations),
                levels=dict(p.pipe.levels),
                seconds=time.perf_counter() - tf,
                boosters=res.boosters,
            )
        )
    return BacktestResult(
        folds=results,
        valid_rows=conv.n_valid,
        refused_rows=len(conv.reject_rows),
        accuracy_tolerance=tolerance,
        unit=unit,
        seconds=time.perf_counter() - t0,
    )


def format_backtest(result: BacktestResult) -> str:
    """One line per fold, then the spread across folds of MAE and accuracy."""
    short = {"minutes": "min", "hours": "h", "seconds": "s"}.get(result.unit, result.unit)
    thr = f"±{result.accuracy_tolerance:g}{short}"
    lines = [
        f"backtest: {len(result.folds)} folds, rolling origin over {result.valid_rows} valid rows "
        f"({result.refused_rows} refused); each fold trains on every row before its test period",
        f"{'fold':>4} {'train':>7} {'test':>6}  {'test period (UTC)':42} {'MAE':>6} {'RMSE':>6} "
        f"{'p90 AE':>6} {thr:>7} {'cover':>6} {'median':>7}",
    ]
    for f in result.folds:
        m = f.model
        period = f"{f.test_from[:19]} .. {f.test_to[:19]}"
        lines.append(
            f"{f.fold:>4} {f.train_rows + f.early_stopping_rows:>7} {f.test_rows:>6}  {period:42} "
            f"{m['mae']:6.2f} {m['rmse']:6.2f} {m['p90_ae']:6.2f} {m['accuracy'] * 100:6.1f}% "
            f"{m['coverage'] * 100:5.1f}% {f.baselines['median']['mae']:7.2f}"
        )
    sp = result.spread()
    lines.append(
        f"spread over {len(result.folds)} folds    {'mean':>8} {'std':>8} {'min':>8} {'max':>8}"
    )
    for name, label, pct in (
        ("mae", "MAE", False),
        ("accuracy", f"accuracy {thr}", True),
        ("median_mae", "median MAE", False),
    ):
        q = sp[name]
        cells = [
            f"{q[k] * 100:7.2f}%" if pct else f"{q[k]:8.2f}" for k in ("mean", "std", "min", "max")
        ]
        lines.append(f"  {label:20} {' '.join(cells)}")
    lines.append(
        "train = training + early-stopping rows; cover = share in p10..p90; "
        "median = MAE of the training-median baseline"
    )
    return "\n".join(lines)
