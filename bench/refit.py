"""Refit experiment: does refitting the final model on *all* rows help on a later period?

For each seed, generated deliveries over ``--weeks`` weeks are cut by event time into the
file ``intellilog train`` would be given (the earlier rows) and a *later* period (the latest
``--later-fraction`` of rows) that no model sees. On the file:

* (a) ``holdout``: the model ``train`` makes today: fitted on the earliest 72 %, early
  stopping on the next 8 %, the latest 20 % held out (:func:`training.train.fit_models`);
* (b) ``refit``: the same parameters refitted on *all* rows of the file (train + early-stopping
  + holdout) for exactly the rounds early stopping chose for (a), per model (eta, p10, p90).

Both are scored on the later period with :mod:`training.metrics`. The generator drifts
(a 4 % slowdown over the period, a seasonal travel-time cycle, 20 % demand growth that loads
kitchens and couriers), so the latest rows are the most like what comes next.

    .venv/bin/python bench/refit.py --rows 120000 --weeks 39 --seeds 1 2 3
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import lightgbm as lgb  # noqa: E402
import numpy as np  # noqa: E402

from kernels.spec import default_spec  # noqa: E402
from training.io import to_columns  # noqa: E402
from training.metrics import BaselineModel, interval_metrics, point_metrics  # noqa: E402
from training.synth import generate  # noqa: E402
from training.train import TrainSettings, fit_models, prepare  # noqa: E402


def _score(
    boosters: dict[str, lgb.Booster], X: np.ndarray, y: np.ndarray, tol: float
) -> dict[str, float]:
    p = {k: np.asarray(b.predict(X), np.float64) for k, b in boosters.items()}
    lo, hi = np.minimum(p["p10"], p["eta"]), np.maximum(p["p90"], p["eta"])
    return {**point_metrics(y, p["eta"], tol), **interval_metrics(y, lo, hi)}


def run_seed(seed: int, rows: int, weeks: int, later_fraction: float, s: TrainSettings) -> dict:
    spec = default_spec()
    table = generate(rows, seed=seed, weeks=weeks)  # sorted by created_at
    n_later = math.ceil(rows * later_fraction)
    file, later = table.slice(0, rows - n_later), table.slice(rows - n_later)

    t0 = time.perf_counter()
    prep = prepare(file, spec, s)  # exactly what `intellilog train` does with the file
    res = fit_models(prep, s)
    t_a = time.perf_counter() - t0
    h = res.metrics["holdout"]
    tol = float(h["accuracy_tolerance"])

    t0 = time.perf_counter()
    every = np.arange(len(prep.y))  # train + early-stopping + holdout rows
    dall = lgb.Dataset(
        prep.X[every],
        prep.y[every],
        feature_name=list(spec.feature_names),
        categorical_feature=list(spec.categorical_feature_indices),
        free_raw_data=False,
    )
    refit = {
        name: lgb.train(res.params[name], dall, num_boost_round=res.best_iterations[name])
        for name in res.boosters
    }
    t_b = time.perf_counter() - t0

    conv = to_columns(later, prep.pipe, with_target=True)
    X_l = prep.pipe.matrix(conv.columns)
    assert conv.target is not None
    y_l = conv.target
    base_all = BaselineModel.fit(prep.X[every, 4].astype(np.float64), prep.y[every])
    t_l = conv.columns.utc
    return {
        "seed": seed,
        "file_rows": len(prep.y),
        "later_rows": int(conv.n_valid),
        "file_to": prep.time_range(prep.holdout_idx)[1],
        "later_from": datetime.fromtimestamp(int(t_l.min()), UTC).isoformat(),
        "later_to": datetime.fromtimestamp(int(t_l.max()), UTC).isoformat(),
        "best_iterations": res.best_iterations,
        "holdout_mae_a": res.metrics["model"]["mae"],
        "a_holdout": _score(res.boosters, X_l, y_l, tol),
        "b_refit": _score(refit, X_l, y_l, tol),
        "median_baseline_mae": float(np.mean(np.abs(y_l - base_all.median_minutes))),
        "seconds": {"a": round(t_a, 1), "b": round(t_b, 1)},
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=120_000)
    ap.add_argument("--weeks", type=int, default=39)
    ap.add_argument("--later-fraction", type=float, default=0.15)
    ap.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    ap.add_argument("--max-rounds", type=int, default=1500)
    ap.add_argument("--num-leaves", type=int, default=63)
    ap.add_argument("--json", type=Path, help="also write the results here")
    a = ap.parse_args(argv)
    s = TrainSettings(max_rounds=a.max_rounds, num_leaves=a.num_leaves, seed=0)
    print(
        f"refit experiment: {a.rows} rows over {a.weeks} weeks per seed, later period = latest "
        f"{a.later_fraction:.0%}; threads {os.environ.get('OMP_NUM_THREADS', 'all')}",
        flush=True,
    )
    head = f"{'seed':>4} {'rounds eta/p10/p90':>18} {'later period':>23} {'(a) MAE':>8} {'(b) MAE':>8} {'b-a':>6} {'(a) ±tol':>8} {'(b) ±tol':>8} {'(a) cov':>7} {'(b) cov':>7}"
    print(head, flush=True)
    out: list[dict[str, Any]] = []
    for seed in a.seeds:
        r = run_seed(seed, a.rows, a.weeks, a.later_fraction, s)
        out.append(r)
        A, B = r["a_holdout"], r["b_refit"]
        it = "/".join(str(r["best_iterations"][k]) for k in ("eta", "p10", "p90"))
        print(
            f"{seed:>4} {it:>18} {r['later_from'][:10]}..{r['later_to'][:10]} "
            f"{A['mae']:8.3f} {B['mae']:8.3f} {B['mae'] - A['mae']:+6.3f} "
            f"{A['accuracy']:8.1%} {B['accuracy']:8.1%} {A['coverage']:7.1%} {B['coverage']:7.1%}",
            flush=True,
        )
    d = [r["b_refit"]["mae"] - r["a_holdout"]["mae"] for r in out]
    rel = [dd / r["a_holdout"]["mae"] for dd, r in zip(d, out, strict=True)]
    sd = statistics.stdev(d) if len(d) > 1 else float("nan")
    print(
        f"mean MAE (a) {statistics.fmean(r['a_holdout']['mae'] for r in out):.3f}  "
        f"(b) {statistics.fmean(r['b_refit']['mae'] for r in out):.3f}  "
        f"b-a {statistics.fmean(d):+.3f} (sd {sd:.3f}, {statistics.fmean(rel):+.1%}); "
        f"b better in {sum(x < 0 for x in d)}/{len(d)} seeds"
    )
    if a.json:
        a.json.write_text(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
