"""Drift detection speed: how much traffic a tripled rain share needs before the alarm.

``.venv/bin/python bench/drift_speed.py [--rate 50] [--seeds 100]``

Reference as the train job builds it (200k generated deliveries, seed 0, 26 weeks from
2025-01-06); windows from new generator seeds over the same period. Two figures:

1. **Whole window shifted** (the rule on ``n`` rows, all with the rain share tripled):
   the detection rate (weather flagged and named first) and, on unshifted windows of
   the same size, the false-alarm rate, for the rule as shipped and without its
   minimum window (``min_rows=1``). The smallest ``n`` detected in >= 95 % of seeds,
   divided by the request rate, is the time to the first flag.
2. **Sliding window** (the monitor's 24 h and 1 h windows at the given rate): after
   ``t`` minutes of tripled rain the window holds ``t / W`` shifted traffic; expected
   bin counts (pooled over the seeds, so sampling noise is left out) give the minutes
   until the rule flags ``weather`` and until the model score passes 0.3 (the ops
   alert; Prometheus then waits its ``for: 10m``).
"""

from __future__ import annotations

import argparse
from dataclasses import replace

import numpy as np

from kernels.features import Columns, Pipeline
from kernels.spec import default_spec
from training.drift import MIN_ROWS, bin_counts, drift_rule, drift_rule_counts, reference_histograms
from training.io import learn_levels, to_columns
from training.synth import generate

GRID = (20, 50, 100, 150, 200, 300, 400, 500, 750, 1000)
ALERT = 0.3


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rate", type=float, default=50.0, help="requests per second")
    ap.add_argument("--seeds", type=int, default=100)
    args = ap.parse_args()

    spec = default_spec()
    names = list(spec.feature_names)
    table = generate(200_000, seed=0)
    pipe = Pipeline(spec, learn_levels(table, spec))
    ref_cols = to_columns(table, pipe).columns
    reference = reference_histograms(
        pipe.matrix(ref_cols), names, categorical=list(spec.categorical_feature_indices)
    )
    w = [c.name for c in spec.categorical].index("weather")
    rain = pipe.levels["weather"].index("rain")
    r = float(np.mean(ref_cols.cats[:, w] == rain))
    rng = np.random.default_rng(1)

    def tripled(c: Columns) -> np.ndarray:
        cats = c.cats.copy()
        turn = (cats[:, w] != rain) & (rng.random(len(c)) < 2.0 * r / (1.0 - r))
        cats[turn, w] = rain
        return pipe.matrix(replace(c, cats=cats))

    fresh, shifted = [], []
    for s in range(1, args.seeds + 1):
        cols = to_columns(generate(10_000, seed=10_000 + s), pipe).columns
        fresh.append(pipe.matrix(cols))
        shifted.append(tripled(cols))
    print(f"reference rain share {r:.3f}, tripled {3 * r:.3f}; {args.seeds} seeds x 10k rows")

    print("\n1. whole window shifted")
    print(f"{'rows':>6} {'seconds':>8} {'detected':>9} {'false alarms':>13} {'(no minimum)':>13}")
    first = None
    for n in GRID:
        det = np.mean(
            [
                drift_rule(reference, X[rng.choice(len(X), n, replace=False)], names)["drifted"][:1]
                == ["weather"]
                for X in shifted
            ]
        )
        fa, fa_raw = (
            np.mean(
                [
                    drift_rule(
                        reference, X[rng.choice(len(X), n, replace=False)], names, min_rows=m
                    )["verdict"]
                    == "drift"
                    for X in fresh
                ]
            )
            for m in (MIN_ROWS, 1)
        )
        print(f"{n:6d} {n / args.rate:8.1f} {det:9.0%} {fa:13.0%} {fa_raw:13.0%}")
        if first is None and det >= 0.95:
            first = n
    assert first is not None
    print(
        f"-> flagged in >= 95% of seeds from {first} rows: {first / args.rate:.0f} s "
        f"({first / args.rate / 60:.2f} min) of traffic at {args.rate:g} req/s"
    )

    print("\n2. sliding window (expected counts)")

    def pooled(windows: list[np.ndarray]) -> dict[str, np.ndarray]:
        return {
            name: np.sum([bin_counts(reference[name], X[:, j]) for X in windows], axis=0)
            for j, name in enumerate(names)
        }

    base, new = pooled(fresh), pooled(shifted)
    for window_h in (24, 1):
        rows = int(args.rate * 3600 * window_h)
        flag = alert = None
        for t in range(1, window_h * 60 + 1):
            share = t / (window_h * 60)
            counts = {}
            for name in names:
                b, a = base[name], new[name]
                mix = (1 - share) * b / b.sum() + share * a / a.sum()
                c = np.floor(mix * rows).astype(np.int64)
                c[np.argmax(c)] += rows - c.sum()  # one total for every feature
                counts[name] = c
            got = drift_rule_counts(reference, counts)
            if flag is None and "weather" in got["drifted"]:
                flag = t
            if alert is None and got["score"] > ALERT:
                alert = t
                break
        print(
            f"{window_h:3d} h window ({rows} rows): weather flagged after {flag} min, "
            f"score > {ALERT} after {alert} min (+10 min for the alert's `for`)"
        )


if __name__ == "__main__":
    main()
