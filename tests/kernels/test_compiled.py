"""The compiled forests (:mod:`kernels.compiled`) are bit-exact with ``Booster.predict``
on their three paths (batch, parallel, row), and their object cache behaves.

Models: the fixtures of ``test_forest.py`` (NaN-aware, NaN -> 0, categorical,
zero_as_missing, poisson's exp, random-forest averaging) plus binary (sigmoid with a
slope), ``reg_sqrt`` (square), one-leaf trees and a categorical feature with 300 levels
(multi-word bitsets).
"""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from pathlib import Path
from typing import Any

import lightgbm as lgb
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kernels.compiled import (
    CompiledForest,
    compare_with_kernel,
    compile_forest,
    edge_rows,
    generate_ir,
)
from kernels.forest import (
    FLAG_CATEGORICAL,
    TRANSFORM_EXP,
    TRANSFORM_SIGMOID,
    TRANSFORM_SQUARE,
)
from server.objcache import FileObjectCache
from tests.kernels.test_forest import MATRIX
from tests.treedata import CAT, F, model_zoo
from tests.treedata import make_data as _data
from tests.treedata import train_model as _train
from training.export import Forest, flatten_booster

ROOT = Path(__file__).resolve().parents[2]
NAMES = ["l2", "quantile", "zero_missing", "poisson", "rf", "binary", "sqrt"]


@pytest.fixture(scope="session")
def models() -> dict[str, lgb.Booster]:
    return model_zoo()


@pytest.fixture(scope="session")
def cache(tmp_path_factory: pytest.TempPathFactory) -> FileObjectCache:
    return FileObjectCache(tmp_path_factory.mktemp("compiled-cache"))


@pytest.fixture(scope="session")
def forests(models: dict[str, lgb.Booster]) -> dict[str, Forest]:
    return {k: flatten_booster(b) for k, b in models.items()}


@pytest.fixture(scope="session")
def compiled(forests: dict[str, Forest], cache: FileObjectCache) -> dict[str, CompiledForest]:
    return {k: compile_forest(f, cache) for k, f in forests.items()}


def _paths(cf: CompiledForest, X: np.ndarray) -> dict[str, np.ndarray]:
    single, par = np.empty(X.shape[0]), np.empty(X.shape[0])
    cf.predict(X, single)
    cf.predict_parallel(X, par, 2)
    row = np.array([cf.predict_row(X[i : i + 1]) for i in range(X.shape[0])])
    return {"batch": single, "parallel": par, "row": row}


def _assert_exact(ref: Any, cf: CompiledForest, X: np.ndarray) -> None:
    ref = np.asarray(ref)
    for path, got in _paths(cf, X).items():
        same = (ref == got) | (np.isnan(ref) & np.isnan(got))
        if not same.all():
            i = int(np.flatnonzero(~same)[0])
            raise AssertionError(f"{path} row {i}: ref={ref[i]!r} got={got[i]!r} x={X[i].tolist()}")


def test_fixtures_cover_the_transforms(forests: dict[str, Forest]) -> None:
    assert forests["poisson"].transform == TRANSFORM_EXP
    assert forests["binary"].transform == TRANSFORM_SIGMOID
    assert forests["binary"].transform_param == 0.7
    assert forests["sqrt"].transform == TRANSFORM_SQUARE
    assert forests["rf"].divisor > 1


@pytest.mark.parametrize("name", NAMES)
def test_holdout_and_edge_rows_exact(
    models: dict[str, lgb.Booster],
    forests: dict[str, Forest],
    compiled: dict[str, CompiledForest],
    name: str,
) -> None:
    X, _ = _data(700, seed=5)
    X = np.concatenate([X, edge_rows(forests[name], 64, seed=1)])
    _assert_exact(models[name].predict(X), compiled[name], X)


@pytest.mark.parametrize("flat", [(1, 1), (2, 3), (64, 10**6)], ids=["branches", "mixed", "flat"])
def test_branch_free_subtree_limits_do_not_change_results(
    models: dict[str, lgb.Booster], forests: dict[str, Forest], flat: tuple[int, int]
) -> None:
    """Every tree branching down to its leaf pairs, half and half, or fully branch-free:
    the same bits on every path (the default limits mix both within most trees)."""
    X, _ = _data(300, seed=6)
    for name in NAMES:
        Xe = np.concatenate([X, edge_rows(forests[name], 64, seed=2)])
        _assert_exact(models[name].predict(Xe), compile_forest(forests[name], None, flat), Xe)


def test_flat_limits_are_checked(forests: dict[str, Forest]) -> None:
    with pytest.raises(ValueError, match="flat limits"):
        generate_ir(forests["l2"], flat=(0, 15))


@settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(X=MATRIX, which=st.sampled_from(NAMES))
def test_hypothesis_parity_exact(
    models: dict[str, lgb.Booster],
    compiled: dict[str, CompiledForest],
    X: np.ndarray,
    which: str,
) -> None:
    """NaN, ±inf, huge/tiny values, negative, fractional and unseen categorical codes."""
    _assert_exact(models[which].predict(X), compiled[which], X)


def test_threshold_and_categorical_edges(
    models: dict[str, lgb.Booster], forests: dict[str, Forest], compiled: dict[str, CompiledForest]
) -> None:
    f = forests["l2"]
    num = f.nodes[(f.nodes["flags"] & FLAG_CATEGORICAL) == 0]
    rows = _data(len(num) * 3, seed=9)[0]
    for k, nd in enumerate(num):
        t = np.float32(nd["threshold"])
        for j, v in enumerate((t, np.nextafter(t, np.float32(np.inf)), np.nextafter(t, -np.inf))):
            rows[3 * k + j, nd["feature"]] = v
    blocks = [rows]
    base = _data(4, seed=3)[0]
    for v in (-0.5, -0.999, -1.0, 0.9, 6.5, 8.0, 31.0, 32.0, 33.0, 1e9, 2.0**31, np.nan, -np.inf):
        b = base.copy()
        b[:, CAT] = v
        blocks.append(b)
    X = np.concatenate(blocks)
    _assert_exact(models["l2"].predict(X), compiled["l2"], X)


def test_many_level_categorical_uses_multi_word_sets(cache: FileObjectCache) -> None:
    """300 levels: category sets of up to 10 words (a global bitset, not an immediate)."""
    rng = np.random.default_rng(0)
    n = 3000
    X = np.empty((n, 3), dtype=np.float32)
    X[:, 0] = rng.integers(0, 300, n)
    X[:, 1] = rng.normal(size=n)
    X[:, 2] = rng.integers(0, 40, n)
    effect = rng.normal(0, 10, 300)
    y = effect[X[:, 0].astype(int)] + X[:, 1] + rng.normal(0, 0.1, n)
    params = {"num_leaves": 15, "min_data_in_leaf": 5, "verbose": -1, "num_threads": 1,
              "max_cat_to_onehot": 4, "max_cat_threshold": 128, "cat_smooth": 1, "seed": 0}  # fmt: skip
    ds = lgb.Dataset(X, y, categorical_feature=[0, 2])
    booster = lgb.train(params, ds, num_boost_round=15)
    f = flatten_booster(booster)
    widths = np.diff(f.cat_bounds)
    assert widths.max() > 2, widths  # bitsets past 64 bits
    assert "constant [" in generate_ir(f)
    cf = compile_forest(f, cache)
    codes = np.concatenate(
        [np.arange(-3, 340), [-0.5, 0.5, 299.9, 2.0**31, 3e9, -3e9, np.nan, np.inf, -np.inf]]
    ).astype(np.float32)
    Xt = np.repeat(X[:1], codes.shape[0], axis=0)
    Xt[:, 0] = codes
    Xt[:, 2] = np.roll(codes, 7)
    Xt = np.concatenate([Xt, X[:500], edge_rows(f, 64)])
    _assert_exact(booster.predict(Xt), cf, Xt)
    _assert_exact(booster.predict(Xt), compile_forest(f, None, (1, 1)), Xt)  # branching


def test_one_leaf_trees_and_empty_batch(cache: FileObjectCache) -> None:
    X, _ = _data(300)
    booster = _train(X, np.full(300, 7.5), rounds=3)
    f = flatten_booster(booster)
    assert f.nodes.shape[0] == 0 and np.all(f.roots < 0)
    cf = compile_forest(f, cache)
    _assert_exact(booster.predict(X[:5]), cf, X[:5])
    empty = np.empty((0, F), dtype=np.float32)
    out = np.empty(0)
    cf.predict(empty, out)
    cf.predict_parallel(empty, out, 2)


def test_inputs_are_checked(compiled: dict[str, CompiledForest]) -> None:
    cf = compiled["l2"]
    X = _data(4)[0]
    with pytest.raises(ValueError, match="float32"):
        cf.predict(X.astype(np.float64), np.empty(4))
    with pytest.raises(ValueError, match="float32"):
        cf.predict(np.asfortranarray(X), np.empty(4))
    with pytest.raises(ValueError, match="out"):
        cf.predict(X, np.empty(3))
    with pytest.raises(ValueError):
        cf.predict_row(X[:0])
    with pytest.raises(ValueError):
        cf.predict_row(np.zeros((1, F + 1), np.float32))


def test_compare_with_kernel_finds_a_wrong_forest(
    forests: dict[str, Forest], compiled: dict[str, CompiledForest]
) -> None:
    for name, cf in compiled.items():
        assert compare_with_kernel(cf, forests[name], threads=2) is None, name
    problem = compare_with_kernel(compiled["quantile"], forests["l2"])
    assert problem is not None and "differs from kernels.forest" in problem


_CHILD = """
import json, sys, time
from kernels.compiled import compile_forest
from server.objcache import FileObjectCache
from training.export import Forest
import numpy as np
f = Forest.load(sys.argv[1])
args = f.args()  # numba's feature_kinds (cached): not part of the compile
t = time.perf_counter()
cf = compile_forest(args, FileObjectCache(sys.argv[2]))
dt = time.perf_counter() - t
X = np.load(sys.argv[3])
out = np.empty(X.shape[0])
cf.predict(X, out)
np.save(sys.argv[4], out)
print(json.dumps({"cached": cf.info["cached"], "seconds": dt}))
"""


def test_cache_hit_in_a_fresh_process(
    models: dict[str, lgb.Booster], forests: dict[str, Forest], tmp_path: Path
) -> None:
    cache = tmp_path / "cache"
    f = forests["l2"]
    cold = compile_forest(f, FileObjectCache(cache))
    assert not cold.info["cached"] and Path(cold.info["cache_path"]).is_file()
    f.save(tmp_path / "m.forest.npz")
    X = np.concatenate([_data(300, seed=2)[0], edge_rows(f)])
    np.save(tmp_path / "X.npy", X)
    proc = subprocess.run(
        [sys.executable, "-c", _CHILD, str(tmp_path / "m.forest.npz"), str(cache),
         str(tmp_path / "X.npy"), str(tmp_path / "out.npy")],
        cwd=ROOT, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    info = json.loads(proc.stdout.strip().splitlines()[-1])
    assert info["cached"] is True
    assert info["seconds"] < 0.1 and info["seconds"] < cold.info["seconds"]
    assert np.array_equal(np.load(tmp_path / "out.npy"), models["l2"].predict(X))


def test_damaged_cache_file_is_recompiled(
    forests: dict[str, Forest], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    cf = compile_forest(forests["poisson"], FileObjectCache(tmp_path))
    path = Path(cf.info["cache_path"])
    data = path.read_bytes()
    path.write_bytes(data[:-100] + bytes(100))
    with caplog.at_level(logging.WARNING, logger="intellilog.engines"):
        again = compile_forest(forests["poisson"], FileObjectCache(tmp_path))
    assert not again.info["cached"] and "damaged" in caplog.text
    assert path.read_bytes() == data  # rewritten
    assert compile_forest(forests["poisson"], FileObjectCache(tmp_path)).info["cached"]


def test_unwritable_cache_dir_compiles_in_memory(
    models: dict[str, lgb.Booster],
    forests: dict[str, Forest],
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    with caplog.at_level(logging.WARNING, logger="intellilog.engines"):
        cf = compile_forest(forests["rf"], FileObjectCache(blocker / "cache"))
    assert "not writable" in caplog.text and "in memory" in cf.info["note"]
    assert cf.info["cache_path"] is None and not cf.info["cached"]
    X = _data(50, seed=4)[0]
    _assert_exact(models["rf"].predict(X), cf, X)


def test_default_cache_dir_from_environment(
    forests: dict[str, Forest], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("INTELLILOG_CACHE_DIR", str(tmp_path / "env-cache"))
    cf = compile_forest(forests["quantile"], FileObjectCache())
    assert Path(cf.info["cache_path"]).parent == tmp_path / "env-cache"


def test_cache_keeps_under_its_size_limit_dropping_the_least_recently_used(
    forests: dict[str, Forest], tmp_path: Path
) -> None:
    import os

    folder = tmp_path / "small-cache"
    first = compile_forest(forests["l2"], FileObjectCache(folder, max_bytes=0))
    one = Path(first.info["cache_path"]).stat().st_size
    # room for about two forests of this size
    cache = FileObjectCache(folder, max_bytes=int(one * 2.5))
    a = Path(first.info["cache_path"])
    os.utime(a, (1, 1))  # long unused...
    b = Path(compile_forest(forests["quantile"], cache).info["cache_path"])
    os.utime(b, (2, 2))
    assert compile_forest(forests["l2"], cache).info["cached"]  # ...until this hit
    c = Path(compile_forest(forests["binary"], cache).info["cache_path"])
    assert a.exists() and c.exists() and not b.exists()  # b: least recently used
    assert compile_forest(forests["quantile"], cache).info["cached"] is False


def test_cache_size_limit_from_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from kernels.errors import ConfigError

    monkeypatch.setenv("INTELLILOG_CACHE_MAX_MB", "1.5")
    assert FileObjectCache(tmp_path).max_bytes == int(1.5 * 1024 * 1024)
    monkeypatch.setenv("INTELLILOG_CACHE_MAX_MB", "0")
    assert FileObjectCache(tmp_path).max_bytes == 0
    for bad in ("lots", "-1", "nan"):
        monkeypatch.setenv("INTELLILOG_CACHE_MAX_MB", bad)
        with pytest.raises(ConfigError, match="INTELLILOG_CACHE_MAX_MB"):
            FileObjectCache(tmp_path)
