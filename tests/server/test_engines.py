"""Engines loaded from an exported model folder agree with ``Booster.predict``."""

from __future__ import annotations

import shutil
from pathlib import Path

import lightgbm as lgb
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from kernels.errors import ConfigError, InferenceError, ModelLoadError
from server.engines import (
    ENV_ALLOW_GPU,
    Engine,
    HummingbirdEngine,
    NumbaEngine,
    OnnxEngine,
    Predictor,
    gpu_allowed,
    load_engine,
)
from tests.treedata import CAT, F
from tests.treedata import make_data as _data
from tests.treedata import train_model as _train
from training.export import check_parity, export_engines


@pytest.fixture(scope="session")
def trio() -> dict[str, lgb.Booster]:
    X, y = _data()
    return {
        "eta": _train(X, y),
        "p10": _train(X, y, objective="quantile", alpha=0.1),
        "p90": _train(X, y, objective="quantile", alpha=0.9),
    }


@pytest.fixture(scope="session")
def model_dir(trio: dict[str, lgb.Booster], tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("models")
    export_engines(trio, _data(300, seed=4)[0], out, categorical=[CAT])
    return out


@pytest.fixture(scope="session")
def engines(model_dir: Path) -> dict[str, Engine]:
    return {k: load_engine(model_dir, "eta", k) for k in ("lightgbm", "onnx", "numba")}


def _f32(v: float) -> float:
    return float(np.float32(v))


NUM_ELEMENT = st.one_of(
    st.sampled_from(
        [_f32(v) for v in (np.nan, np.inf, -np.inf, 0.0, -0.0, 1e-36, 1e30, -1e30, -1.0, 3e38)]
    ),
    st.floats(-5, 40, width=32),
)
CAT_ELEMENT = st.one_of(
    st.integers(-5, 50).map(float),
    st.sampled_from([_f32(v) for v in (np.nan, np.inf, -np.inf, 3e9, -0.0)]),
)


@st.composite
def _matrices(draw: st.DrawFn) -> np.ndarray:
    n = draw(st.integers(1, 40))
    X = draw(hnp.arrays(np.float32, (n, F), elements=NUM_ELEMENT))
    X[:, CAT] = draw(hnp.arrays(np.float32, (n,), elements=CAT_ELEMENT))
    return X


def test_engine_attributes(engines: dict[str, Engine]) -> None:
    for kind, e in engines.items():
        assert isinstance(e, Engine)
        assert e.name == kind and e.device == "cpu"
    onnx = engines["onnx"]
    assert isinstance(onnx, OnnxEngine)
    assert onnx.provider in ("CPUExecutionProvider", "CUDAExecutionProvider")


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(X=_matrices())
def test_hypothesis_engines_match_lightgbm(
    trio: dict[str, lgb.Booster], engines: dict[str, Engine], X: np.ndarray
) -> None:
    ref = trio["eta"].predict(X)
    assert np.array_equal(engines["lightgbm"].predict(X), ref)
    assert np.array_equal(engines["numba"].predict(X), ref)  # bit-exact
    rep = check_parity(ref, engines["onnx"].predict(X), X, "onnx")
    assert rep.passed, rep.describe()


def test_numba_paths_agree(trio: dict[str, lgb.Booster], model_dir: Path) -> None:
    X, _ = _data(700, seed=8)
    X[::7, 1] = np.nan
    X[::11, CAT] = 99
    ref = trio["p90"].predict(X)
    par = NumbaEngine(model_dir / "p90.forest.npz", threads=2, parallel_from=64)
    single = NumbaEngine(model_dir / "p90.forest.npz", threads=1)
    par.warmup()
    assert np.array_equal(par.predict(X), ref)
    assert np.array_equal(single.predict(X), ref)
    rows = np.concatenate([single.predict(X[i : i + 1]) for i in range(50)])
    assert np.array_equal(rows, ref[:50])
    out = single.predict(X[:1])
    assert out.shape == (1,) and out.dtype == np.float64


def test_inputs_are_converted_and_checked(engines: dict[str, Engine]) -> None:
    X, _ = _data(10, seed=1)
    ref = engines["numba"].predict(X)
    assert np.array_equal(engines["numba"].predict(X.astype(np.float64)), ref)
    assert np.array_equal(engines["numba"].predict(np.asfortranarray(X)), ref)
    for e in engines.values():
        with pytest.raises(InferenceError, match="matrix"):
            e.predict(np.zeros((3, F + 1), np.float32))
        with pytest.raises(InferenceError):
            e.predict(np.zeros(F, np.float32))


# --------------------------------------------------------------------- loading errors


@pytest.mark.parametrize("kind", ["lightgbm", "onnx", "numba", "hummingbird"])
def test_missing_file(tmp_path: Path, kind: str) -> None:
    with pytest.raises(ModelLoadError, match="missing"):
        load_engine(tmp_path, "eta", kind)


@pytest.mark.parametrize(
    ("kind", "file"),
    [("onnx", "eta.onnx"), ("numba", "eta.forest.npz"), ("lightgbm", "eta.txt")],
)
@pytest.mark.parametrize("damage", ["garbage", "truncate"])
def test_corrupt_file(model_dir: Path, tmp_path: Path, kind: str, file: str, damage: str) -> None:
    data = (model_dir / file).read_bytes()
    (tmp_path / file).write_bytes(b"\x00garbage\xff" * 10 if damage == "garbage" else data[:150])
    with pytest.raises(ModelLoadError):
        load_engine(tmp_path, "eta", kind)


def test_unknown_kind(model_dir: Path) -> None:
    with pytest.raises(ConfigError, match="unknown engine kind"):
        load_engine(model_dir, "eta", "tensorrt")


# --------------------------------------------------------------------- GPU selection


def test_gpu_flag(monkeypatch: pytest.MonkeyPatch, model_dir: Path) -> None:
    monkeypatch.delenv(ENV_ALLOW_GPU, raising=False)
    assert gpu_allowed() is True
    assert gpu_allowed(False) is False
    monkeypatch.setenv(ENV_ALLOW_GPU, "0")
    assert gpu_allowed() is False
    engine = OnnxEngine(model_dir / "eta.onnx")
    assert engine.provider == "CPUExecutionProvider" and engine.device == "cpu"
    assert "not allowed" in engine.provider_note
    monkeypatch.setenv(ENV_ALLOW_GPU, "maybe")
    with pytest.raises(ConfigError, match=ENV_ALLOW_GPU):
        gpu_allowed()


def test_hummingbird_engine_refuses_nan(model_dir: Path, tmp_path: Path) -> None:
    """The engine wrapper (any ONNX graph works as a stand-in for ``.hb.onnx``)."""
    shutil.copy(model_dir / "eta.onnx", tmp_path / "eta.hb.onnx")
    engine = load_engine(tmp_path, "eta", "hummingbird")
    assert isinstance(engine, HummingbirdEngine) and engine.name == "hummingbird"
    X, _ = _data(5, seed=3)
    X[:, 1] = 0.5
    assert engine.predict(X).shape == (5,)
    X[2, 0] = np.nan
    with pytest.raises(InferenceError, match="without missing values"):
        engine.predict(X)


# --------------------------------------------------------------------- Predictor


@pytest.mark.parametrize("kind", ["onnx", "numba", "lightgbm"])
def test_predictor(trio: dict[str, lgb.Booster], model_dir: Path, kind: str) -> None:
    pred = Predictor(model_dir, kind, threads=2)
    pred.warmup()
    X, _ = _data(300, seed=6)
    eta, p10, p90 = pred.predict(X)
    assert eta.shape == p10.shape == p90.shape == (300,)
    assert np.all(p10 <= eta) and np.all(eta <= p90)
    ref = {m: trio[m].predict(X) for m in ("p10", "eta", "p90")}
    np.testing.assert_allclose(eta, ref["eta"], rtol=1e-5)
    np.testing.assert_allclose(p10, np.minimum(ref["p10"], ref["eta"]), rtol=1e-5)
    np.testing.assert_allclose(p90, np.maximum(ref["p90"], ref["eta"]), rtol=1e-5)
    one = pred.predict(X[:1])
    assert [float(a[0]) for a in one] == pytest.approx([eta[0], p10[0], p90[0]])


def test_predictor_widens_crossing_quantiles(
    trio: dict[str, lgb.Booster], model_dir: Path, tmp_path: Path
) -> None:
    """p10/p90 files swapped: every row crosses; the ETA is kept, the interval holds it."""
    for src, dst in (("eta", "eta"), ("p10", "p90"), ("p90", "p10")):
        shutil.copy(model_dir / f"{src}.forest.npz", tmp_path / f"{dst}.forest.npz")
    pred = Predictor(tmp_path, "numba")
    X, _ = _data(50, seed=7)
    eta, p10, p90 = pred.predict(X)
    assert np.all(p10 <= eta) and np.all(eta <= p90)
    np.testing.assert_allclose(eta, trio["eta"].predict(X), rtol=1e-9)
    e1, lo1, hi1 = pred.predict(X[:1])
    assert lo1[0] == p10[0] and e1[0] == eta[0] and hi1[0] == p90[0]
