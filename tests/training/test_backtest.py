"""Rolling-origin backtest: fold layout, no look-ahead, metrics, errors and the CLI."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pytest

from kernels.errors import ConfigError, DataError
from kernels.features import Pipeline
from kernels.spec import default_spec
from training.backtest import BacktestResult, backtest, segment_bounds
from training.io import to_columns
from training.synth import generate
from training.train import TrainSettings

ROWS = 3000
FOLDS = 4
NEW_ZONE = "Newtown"  # a zone that only appears in the last test segment
FAST = TrainSettings(max_rounds=40, num_leaves=15, quantile_num_leaves=15, seed=0)


def _utc(table: pa.Table) -> np.ndarray:
    return np.array(
        [datetime.fromisoformat(s).timestamp() for s in table.column("created_at").to_pylist()]
    )


def _ts(iso: str) -> float:
    return datetime.fromisoformat(iso).timestamp()


@pytest.fixture(scope="module")
def table() -> pa.Table:
    """3000 generated rows (sorted by time); the latest 300 get a zone never seen before."""
    tb = generate(ROWS, seed=3)
    zone = tb.column("zone").to_pylist()
    zone[-300:] = [NEW_ZONE] * 300
    return tb.set_column(tb.column_names.index("zone"), "zone", pa.array(zone, pa.string()))


@pytest.fixture(scope="module")
def result(table: pa.Table) -> BacktestResult:
    return backtest(table, default_spec(), FAST, folds=FOLDS)


def test_folds_are_time_ordered_consecutive_and_cover_the_tail(
    table: pa.Table, result: BacktestResult
) -> None:
    utc = _utc(table)
    assert [f.fold for f in result.folds] == list(range(1, FOLDS + 1))
    assert result.valid_rows == ROWS and result.refused_rows == 0
    for f in result.folds:
        # never a row at or after the test period in training
        assert _ts(f.train_to) < _ts(f.test_from) <= _ts(f.test_to)
        assert f.train_rows + f.early_stopping_rows == int(np.sum(utc < _ts(f.test_from)))
        in_test = (utc >= _ts(f.test_from)) & (utc <= _ts(f.test_to))
        assert f.test_rows == int(in_test.sum()) == f.model["rows"]
        # early stopping uses the latest valid_fraction of the training rows, as training does
        assert f.early_stopping_rows == int(
            np.ceil((f.train_rows + f.early_stopping_rows) * FAST.valid_fraction)
        )
    for a, b in zip(result.folds, result.folds[1:], strict=False):
        assert _ts(a.test_to) < _ts(b.test_from)  # disjoint and in order
        # consecutive: the next fold trains on exactly everything up to the end of this test
        assert (
            b.train_rows + b.early_stopping_rows
            == a.train_rows + a.early_stopping_rows + a.test_rows
        )
    first = result.folds[0]
    # equal-row segments: the first training block and every test segment ~ ROWS / (FOLDS + 1)
    sizes = [first.train_rows + first.early_stopping_rows] + [f.test_rows for f in result.folds]
    assert sum(sizes) == ROWS
    assert max(sizes) - min(sizes) <= 2
    assert _ts(result.folds[-1].test_to) == utc.max()  # the tail is covered to the last row


def test_levels_come_from_the_folds_training_rows_only(result: BacktestResult) -> None:
    for f in result.folds:
        assert NEW_ZONE not in f.levels["zone"]  # only in the last segment: never trained on
        assert f.levels["zone"]  # but the city's zones are there


def test_metrics_equal_a_direct_recomputation(table: pa.Table, result: BacktestResult) -> None:
    f = result.folds[-1]  # the fold whose test rows hold the unseen zone
    utc = _utc(table)
    y_all = np.asarray(table.column("actual_minutes").to_numpy())
    test = np.flatnonzero((utc >= _ts(f.test_from)) & (utc <= _ts(f.test_to)))
    pipe = Pipeline(default_spec(), f.levels)
    conv = to_columns(table.take(test), pipe, with_target=True)
    X = pipe.matrix(conv.columns)
    pred = {k: np.asarray(b.predict(X), np.float64) for k, b in f.boosters.items()}
    y = y_all[test]
    err = np.abs(y - pred["eta"])
    tol = result.accuracy_tolerance
    assert f.model["mae"] == pytest.approx(err.mean(), rel=1e-9)
    assert f.model["rmse"] == pytest.approx(np.sqrt(np.mean(err**2)), rel=1e-9)
    assert f.model["p90_ae"] == pytest.approx(np.quantile(err, 0.9), rel=1e-9)
    assert f.model["accuracy"] == pytest.approx(np.mean(err <= tol))
    lo, hi = np.minimum(pred["p10"], pred["eta"]), np.maximum(pred["p90"], pred["eta"])
    assert f.model["coverage"] == pytest.approx(np.mean((y >= lo) & (y <= hi)))
    med = np.median(y_all[utc < _ts(f.test_from)])  # the baseline sees training rows only
    assert f.baselines["median"]["mae"] == pytest.approx(np.mean(np.abs(y - med)), rel=1e-9)
    # the spread is over the folds' own numbers (sample standard deviation)
    maes = [g.model["mae"] for g in result.folds]
    sp = result.spread()["mae"]
    assert sp["mean"] == pytest.approx(np.mean(maes))
    assert sp["std"] == pytest.approx(np.std(maes, ddof=1))
    assert (sp["min"], sp["max"]) == (min(maes), max(maes))


def test_segment_cuts_never_split_equal_times() -> None:
    rng = np.random.default_rng(0)
    utc = np.sort(rng.integers(0, 40, 3000))  # ~75 rows per distinct time
    b = segment_bounds(utc, 4)
    assert b[0] == 0 and b[-1] == len(utc) and np.all(np.diff(b) > 0)
    for cut in b[1:-1]:
        assert utc[cut - 1] < utc[cut]


@pytest.mark.parametrize("folds", [1, 0, -3])
def test_fewer_than_two_folds_is_a_config_error(table: pa.Table, folds: int) -> None:
    with pytest.raises(ConfigError, match=rf"--folds={folds}: a backtest needs at least 2 folds"):
        backtest(table, default_spec(), FAST, folds=folds)


def test_too_few_rows_per_fold_names_the_numbers(table: pa.Table) -> None:
    with pytest.raises(
        DataError, match=r"3000 valid rows are too few for 12 folds.*needs at least 250"
    ):
        backtest(table, default_spec(), FAST, folds=12)
    # a block of equal times swallows a test segment: the fold and its size are named
    utc = np.concatenate([np.arange(1500), np.full(1500, 10**6)])
    with pytest.raises(DataError, match=r"test segment of fold 3 has 0 rows.*at least 50"):
        segment_bounds(utc, 4)


def test_cli_prints_the_table_and_the_json(cli: Callable[..., Any], train_data: Path) -> None:
    fast = ("--max-rounds", "30", "--num-leaves", "15", "--folds", "2")
    r = cli("backtest", "--data", train_data, *fast)
    assert r.code == 0, r.err
    lines = r.out.splitlines()
    assert lines[0].startswith("backtest: 2 folds, rolling origin over 3000 valid rows")
    assert "test period (UTC)" in lines[1] and "MAE" in lines[1] and "cover" in lines[1]
    assert [ln.split()[:3] for ln in lines[2:4]] == [["1", "1000", "1000"], ["2", "2000", "1000"]]
    assert lines[4].startswith("spread over 2 folds")
    assert "fold 2/2: training on 2000 rows" in r.err

    j = cli("backtest", "--data", train_data, *fast, "--json")
    assert j.code == 0, j.err
    doc = j.json()
    assert doc["folds"] == 2 and [f["fold"] for f in doc["results"]] == [1, 2]
    assert [f["test_rows"] for f in doc["results"]] == [1000, 1000]
    assert set(doc["results"][0]["model"]) >= {"mae", "rmse", "p90_ae", "accuracy", "coverage"}
    assert "median" in doc["results"][0]["baselines"]
    maes = [f["model"]["mae"] for f in doc["results"]]
    assert doc["spread"]["mae"]["min"] == min(maes) and doc["spread"]["mae"]["max"] == max(maes)
    # the table shows the same numbers as the JSON (same seed: deterministic)
    assert lines[2].split()[6] == f"{maes[0]:.2f}"


def test_cli_bad_folds_is_one_line_error(cli: Callable[..., Any], train_data: Path) -> None:
    r = cli("backtest", "--data", train_data, "--folds", "1")
    assert r.code == 2
    assert r.err_lines == ["error: --folds=1: a backtest needs at least 2 folds"]
