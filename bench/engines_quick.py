"""Quick engine benchmark: single-row latency and batch throughput.

Trains a 500-tree x 63-leaf LightGBM regressor on 20 float32 features (14
continuous, 2 categorical codes, 4 numerics with NaN), exports it with
``training.export.export_engines`` (so the parity gate runs on the same model),
loads each engine through ``server.engines.load_engine`` and reports

* single-row latency: p50 / p99 in µs over ``--calls`` calls, each on a different
  row (rows with NaN included), after a warm-up;
* throughput: rows/s on one ``--rows``-row batch (best of 3).

Run: ``.venv/bin/python bench/engines_quick.py`` (about a minute on 2 cores).
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
from pathlib import Path

import lightgbm as lgb
import numba
import numpy as np
import onnxruntime as ort

from server.engines import Engine, load_engine
from training.export import export_engines

N_CONT, CATS, N_NUM = 14, (12, 6), 4
F = N_CONT + len(CATS) + N_NUM


def make_data(n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    X = np.empty((n, F), dtype=np.float32)
    X[:, :N_CONT] = rng.normal(size=(n, N_CONT))
    for k, levels in enumerate(CATS):
        X[:, N_CONT + k] = rng.integers(0, levels + 1, n)  # levels + unknown code
    num = rng.gamma(2.0, 2.0, size=(n, N_NUM))
    num[rng.random((n, N_NUM)) < 0.15] = np.nan
    X[:, N_CONT + len(CATS) :] = num
    y = (
        20
        + 8 * np.abs(X[:, 0])
        + 3 * np.sin(3 * X[:, 1])
        + 2 * X[:, 2] * X[:, 3]
        + np.where(X[:, N_CONT] % 3 == 0, 5.0, -2.0)
        + 1.5 * X[:, N_CONT + 1]
        + np.nan_to_num(num[:, 0], nan=6.0)
        + rng.normal(0, 2, n)
    )
    return X, y


def latency(engine: Engine, rows: np.ndarray, calls: int) -> tuple[float, float]:
    for i in range(200):
        engine.predict(rows[i : i + 1])
    ts = np.empty(calls)
    clock = time.perf_counter_ns
    for k in range(calls):
        x = rows[k % len(rows) : k % len(rows) + 1]
        t0 = clock()
        engine.predict(x)
        ts[k] = clock() - t0
    ts /= 1e3
    return float(np.percentile(ts, 50)), float(np.percentile(ts, 99))


def throughput(engine: Engine, X: np.ndarray) -> float:
    engine.predict(X[:1000])
    best = min(_timed(engine, X) for _ in range(3))
    return X.shape[0] / best


def _timed(engine: Engine, X: np.ndarray) -> float:
    t0 = time.perf_counter()
    engine.predict(X)
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trees", type=int, default=500)
    ap.add_argument("--leaves", type=int, default=63)
    ap.add_argument("--train-rows", type=int, default=50_000)
    ap.add_argument("--rows", type=int, default=100_000)
    ap.add_argument("--calls", type=int, default=5_000)
    args = ap.parse_args()

    rng = np.random.default_rng(0)
    X, y = make_data(args.train_rows, rng)
    cat = [N_CONT + k for k in range(len(CATS))]
    t0 = time.perf_counter()
    booster = lgb.train(
        {"num_leaves": args.leaves, "verbose": -1, "num_threads": 2, "seed": 0},
        lgb.Dataset(X, y, categorical_feature=cat),
        num_boost_round=args.trees,
    )
    print(f"trained {args.trees} trees x {args.leaves} leaves in {time.perf_counter() - t0:.1f}s")

    Xb, _ = make_data(args.rows, rng)
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        manifest = export_engines({"eta": booster}, Xb[:2000], Path(tmp), categorical=cat)
        print(f"exported + parity-checked in {time.perf_counter() - t0:.1f}s:")
        for eng, m in manifest.items():
            print(f"  {eng:<12} max_rel_err={m['max_rel_err']:.2e} rows={m['rows_checked']}")

        setups = [
            ("lightgbm", 1),
            ("onnx", 1),
            ("onnx", 2),
            ("numba", 1),
            ("numba", 2),
        ]
        print(
            f"\ncpu: {platform.processor() or platform.machine()}, os.cpu_count()={os.cpu_count()}, "
            f"numba {numba.__version__}, "
            f"onnxruntime {ort.__version__}, lightgbm {lgb.__version__}"
        )
        print(
            f"{'engine':<10}{'threads':>8}{'p50 µs':>10}{'p99 µs':>10}{'rows/s @' + str(args.rows):>18}"
        )
        for kind, threads in setups:
            engine = load_engine(Path(tmp), "eta", kind, threads=threads)
            p50, p99 = latency(engine, Xb[:2000], args.calls)
            rps = throughput(engine, Xb)
            print(f"{kind:<10}{threads:>8}{p50:>10.1f}{p99:>10.1f}{rps:>18,.0f}")
        print(f"numba threading layer: {numba.threading_layer()}")


if __name__ == "__main__":
    main()
