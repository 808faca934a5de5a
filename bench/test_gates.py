"""Regression gates: ratios measured in one run against the budgets in budgets.toml.

Short mode for CI (well under two minutes on 2 cores): a 300-tree model and 60k rows.
Absolute times are printed, never gated. ``test_planted_slowdown_trips_the_gate``
shows a gate failing when the served path gets slower.
"""

from __future__ import annotations

import time
import tomllib
from collections.abc import Callable
from pathlib import Path

import lightgbm as lgb
import numpy as np
import pytest

from server.engines import NumbaEngine
from training.export import export_engines

BUDGETS = tomllib.loads((Path(__file__).parent / "budgets.toml").read_text())


def _median_ratio(
    ours: Callable[[np.ndarray], object],
    ref: Callable[[np.ndarray], object],
    X: np.ndarray,
    calls: int = 1500,
) -> tuple[float, float, float]:
    """Interleaved one-row calls (a different row each), so outside load hits both alike."""
    a, b = [], []
    for i in range(calls):
        row = X[i % len(X) : i % len(X) + 1]
        t = time.perf_counter()
        ours(row)
        a.append(time.perf_counter() - t)
        t = time.perf_counter()
        ref(row)
        b.append(time.perf_counter() - t)
    ma, mb = float(np.median(a)), float(np.median(b))
    return ma / mb, ma, mb


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> tuple[lgb.Booster, NumbaEngine, np.ndarray]:
    rng = np.random.default_rng(0)
    n, f = 20_000, 19
    X = rng.normal(size=(n, f)).astype(np.float32)
    X[rng.random(n) < 0.15, 18] = np.nan
    y = X[:, 0] * 3 + np.sin(X[:, 1]) * 5 + np.nan_to_num(X[:, 18]) + rng.normal(size=n)
    params = {"num_leaves": 31, "verbose": -1, "num_threads": 1, "seed": 0}
    booster = lgb.train(params, lgb.Dataset(X, y), 300)
    out = tmp_path_factory.mktemp("gate-model")
    export_engines({"eta": booster}, X[:500], out)
    engine = NumbaEngine(out / "eta.forest.npz")
    engine.warmup()
    return booster, engine, rng.normal(size=(3000, f)).astype(np.float32)


def engine_gate(
    ours: Callable[[np.ndarray], object], booster: lgb.Booster, X: np.ndarray
) -> tuple[bool, float]:
    ratio, a, b = _median_ratio(ours, lambda r: booster.predict(r, num_threads=1), X)
    print(f"one row: ours {a * 1e6:.1f} us, Booster.predict {b * 1e6:.1f} us, ratio {ratio:.2f}")
    return ratio <= BUDGETS["engine_one_row"]["max_ratio"], ratio


def test_engine_one_row_gate(model: tuple[lgb.Booster, NumbaEngine, np.ndarray]) -> None:
    booster, engine, X = model
    ok, ratio = engine_gate(engine.predict, booster, X)
    assert ok, (
        f"one-row latency ratio {ratio:.2f} over budget {BUDGETS['engine_one_row']['max_ratio']}"
    )


def test_planted_slowdown_trips_the_gate(
    model: tuple[lgb.Booster, NumbaEngine, np.ndarray],
) -> None:
    """A slip a refactor could make on the hot path (a float64 round trip of the matrix
    and the forest walked seven times per call, e.g. once per output by mistake) must
    fail the gate: the gate catches slowdowns of about 2x and more."""
    booster, engine, X = model

    def slowed(row: np.ndarray) -> object:
        copy = np.ascontiguousarray(row.astype(np.float64).astype(np.float32))
        for _ in range(6):
            engine.predict(copy)
        return engine.predict(copy)

    ok, ratio = engine_gate(slowed, booster, X)
    assert not ok, f"a planted ~7x slowdown stayed within budget (ratio {ratio:.2f})"


def test_score_overhead_gate(tmp_path: Path) -> None:
    """End-to-end `score_file` against engine-only prediction on the same rows."""
    from server.cli import main
    from server.models import load_model
    from server.score import score_file
    from training.io import read_table, to_columns, write_table
    from training.registry import Registry
    from training.synth import generate

    write_table(generate(20_000, seed=1), tmp_path / "train.parquet")
    reg = tmp_path / "reg"
    code = main(
        [
            "train",
            "--data",
            str(tmp_path / "train.parquet"),
            "--registry",
            str(reg),
            "--promote",
            "--max-rounds",
            "150",
        ]
    )
    assert code == 0
    write_table(generate(60_000, seed=2), tmp_path / "in.parquet")
    model = load_model(Registry(reg), "production", engine="numba", threads=1)
    conv = to_columns(read_table(tmp_path / "in.parquet", model.pipe.spec), model.pipe)
    X = model.pipe.matrix(conv.columns)
    model.predict(X[:10])
    t = time.perf_counter()
    for s in range(0, len(X), 131_072):
        model.predict(X[s : s + 131_072])
    engine_s = time.perf_counter() - t
    rep = score_file(tmp_path / "in.parquet", tmp_path / "out.parquet", model, progress=False)
    ratio = rep.seconds / engine_s
    print(
        f"score: end to end {rep.rows_per_s:,.0f} rows/s, engine-only {len(X) / engine_s:,.0f} rows/s, ratio {ratio:.2f}"
    )
    assert ratio <= BUDGETS["score_overhead"]["max_ratio"], (
        f"score overhead ratio {ratio:.2f} over budget"
    )
