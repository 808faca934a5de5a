"""Engines loaded from an exported model folder agree with ``Booster.predict``."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path
from typing import Any

import lightgbm as lgb
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from kernels.errors import ConfigError, InferenceError, ModelLoadError
from server.engines import (
    DEFAULT_GPU_MIN_ROWS,
    ENV_ALLOW_GPU,
    ENV_GPU_MIN_ROWS,
    CompiledEngine,
    Engine,
    HummingbirdEngine,
    NumbaEngine,
    OnnxEngine,
    Predictor,
    gpu_allowed,
    gpu_min_rows,
    load_engine,
    ort_has_cuda,
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
    return {k: load_engine(model_dir, "eta", k) for k in ("lightgbm", "onnx", "numba", "compiled")}


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
    assert np.array_equal(engines["compiled"].predict(X), ref)
    rows = np.concatenate([engines["compiled"].predict(X[i : i + 1]) for i in range(len(X))])
    assert np.array_equal(rows, ref)
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


def test_compiled_paths_agree(
    trio: dict[str, lgb.Booster], model_dir: Path, tmp_path: Path
) -> None:
    X, _ = _data(700, seed=8)
    X[::7, 1] = np.nan
    X[::11, CAT] = 99
    ref = trio["p90"].predict(X)
    path = model_dir / "p90.forest.npz"
    par = CompiledEngine(path, threads=2, cache_dir=tmp_path, parallel_from=64)
    assert "compiled in" in par.load_note
    single = CompiledEngine(path, threads=1, cache_dir=tmp_path)
    assert single.load_note.startswith("loaded from cache")
    par.warmup()
    assert np.array_equal(par.predict(X), ref)
    assert np.array_equal(single.predict(X), ref)
    rows = np.concatenate([single.predict(X[i : i + 1]) for i in range(50)])
    assert np.array_equal(rows, ref[:50])
    assert par.name == "compiled" and par.device == "cpu"


def test_compiled_engine_refuses_code_that_disagrees_with_numba(
    model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The load check: code compiled from another forest (a stand-in for a generator
    bug) is refused."""
    from kernels import compiled
    from training.export import Forest

    other = Forest.load(model_dir / "p10.forest.npz")
    real = compiled.compile_forest
    monkeypatch.setattr(compiled, "compile_forest", lambda _args, d: real(other, d))
    with pytest.raises(ModelLoadError, match="disagrees with the numba kernels"):
        CompiledEngine(model_dir / "eta.forest.npz", cache_dir=tmp_path)


def test_load_model_serves_compiled_from_the_numba_export(models: Any) -> None:
    """A registered version has no ``compiled`` export: the engine compiles ``numba``'s."""
    from server.models import load_model
    from training.registry import Registry

    reg = Registry(models.registry)
    compiled = load_model(reg, "v1", engine="compiled")
    numba = load_model(reg, "v1", engine="numba")
    assert compiled.engine_name == "compiled" and compiled.device == "cpu"
    rng = np.random.default_rng(0)
    X = rng.normal(0, 5, (200, compiled.pipe.n_features)).round().astype(np.float32)
    X[::5, 0] = np.nan
    for a, b in zip(compiled.predict(X), numba.predict(X), strict=True):
        assert np.array_equal(a, b)
    assert compiled.predictor.predict_one(X[:1]) == numba.predictor.predict_one(X[:1])


def test_inputs_are_converted_and_checked(engines: dict[str, Engine]) -> None:
    X, _ = _data(10, seed=1)
    ref = engines["numba"].predict(X)
    for kind in ("numba", "compiled"):
        assert np.array_equal(engines[kind].predict(X.astype(np.float64)), ref)
        assert np.array_equal(engines[kind].predict(np.asfortranarray(X)), ref)
        assert np.array_equal(engines[kind].predict(np.asfortranarray(X[:1])), ref[:1])
    for e in engines.values():
        with pytest.raises(InferenceError, match="matrix"):
            e.predict(np.zeros((3, F + 1), np.float32))
        with pytest.raises(InferenceError):
            e.predict(np.zeros(F, np.float32))


# --------------------------------------------------------------------- loading errors


@pytest.mark.parametrize("kind", ["lightgbm", "onnx", "numba", "compiled", "hummingbird"])
def test_missing_file(tmp_path: Path, kind: str) -> None:
    with pytest.raises(ModelLoadError, match="missing"):
        load_engine(tmp_path, "eta", kind)


@pytest.mark.parametrize(
    ("kind", "file"),
    [
        ("onnx", "eta.onnx"),
        ("numba", "eta.forest.npz"),
        ("compiled", "eta.forest.npz"),
        ("lightgbm", "eta.txt"),
    ],
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


@pytest.mark.parametrize("kind", ["onnx", "numba", "compiled", "lightgbm"])
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
    # the single-request path gives exactly what predict() gives, row by row (NaN rows too)
    X[::3, 0] = np.nan
    eta, p10, p90 = pred.predict(X)
    for i in range(len(X)):
        assert pred.predict_one(X[i : i + 1]) == (eta[i], p10[i], p90[i])
    assert (pred._stacked is not None) == (kind == "numba")
    assert (pred._rows3 is not None) == (kind == "compiled")


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
    assert pred.predict_one(X[:1]) == (eta[0], p10[0], p90[0])


# --------------------------------------------------------------------- large batches on a GPU


@pytest.fixture
def hb_dir(model_dir: Path, tmp_path: Path) -> Path:
    """A copy of the model folder with ``.hb.onnx`` files, as an export with the gpu extra."""
    from tests.server.fakegpu import add_hb_files

    d = tmp_path / "hb"
    shutil.copytree(model_dir, d)
    add_hb_files(d)
    return d


def _same(a: tuple[np.ndarray, ...], b: tuple[np.ndarray, ...]) -> None:
    for x, y in zip(a, b, strict=True):
        np.testing.assert_array_equal(x, y)


def _clean(n: int, seed: int) -> np.ndarray:
    X, _ = _data(n, seed=seed)
    X[:, 1] = np.nan_to_num(X[:, 1], nan=0.5)
    return X


def test_large_batches_go_to_the_gpu_engine_small_ones_and_single_rows_do_not(
    hb_dir: Path, fake_gpu: Any
) -> None:
    cpu = Predictor(hb_dir, "numba", gpu_min_rows=0)
    pred = Predictor(hb_dir, "numba", gpu_min_rows=64)
    assert fake_gpu.loads == 1 and pred.large is not None
    fake_gpu.calls.clear()  # the load-time check ran on the fake too
    X = _clean(200, seed=11)
    _same(pred.predict(X[:1]), cpu.predict(X[:1]))
    _same(pred.predict(X[:63]), cpu.predict(X[:63]))
    assert fake_gpu.calls == []
    _same(pred.predict(X[:64]), cpu.predict(X[:64]))
    _same(pred.predict(X), cpu.predict(X))
    assert fake_gpu.rows("eta") == fake_gpu.rows("p10") == fake_gpu.rows("p90") == [64, 200]
    assert pred.large_rows == 264 and pred.large_cpu_rows == 0
    assert pred.describe() == {
        "engine": "numba",
        "device": "cpu",
        "large_batch": {
            "engine": "hummingbird",
            "device": "cuda",
            "runtime": "fake CUDA",
            "min_rows": 64,
            "nan_rows": "numba",
        },
        "large_batch_reason": None,
    }


def test_rows_with_nan_of_a_large_batch_stay_on_the_cpu(hb_dir: Path, fake_gpu: Any) -> None:
    cpu = Predictor(hb_dir, "numba", gpu_min_rows=0)
    pred = Predictor(hb_dir, "numba", gpu_min_rows=64)
    fake_gpu.calls.clear()
    X = _clean(200, seed=12)
    nan_rows = np.zeros(200, dtype=bool)
    nan_rows[::5] = True  # 40 rows with a missing value, in several features
    X[nan_rows, 1] = np.nan
    X[3, 0] = np.nan
    nan_rows[3] = True
    _same(pred.predict(X), cpu.predict(X))
    assert fake_gpu.rows() == [int((~nan_rows).sum())] and not fake_gpu.saw_nan()
    np.testing.assert_array_equal(fake_gpu.calls[0][1], X[~nan_rows])
    assert pred.large_rows == 159 and pred.large_cpu_rows == 41
    # fewer NaN-free rows than gpu_min_rows: the whole batch stays on the CPU
    fake_gpu.calls.clear()
    Y = X[:100].copy()
    Y[:50, 1] = np.nan
    _same(pred.predict(Y), cpu.predict(Y))
    assert fake_gpu.calls == []


def test_nan_rows_go_to_the_gpu_when_the_export_proved_nan_parity(
    hb_dir: Path, fake_gpu: Any
) -> None:
    pred = Predictor(hb_dir, "numba", gpu_min_rows=64, gpu_nan_ok=True)
    fake_gpu.calls.clear()
    X, _ = _data(100, seed=13)
    assert np.isnan(X).any()
    _same(pred.predict(X), Predictor(hb_dir, "numba", gpu_min_rows=0).predict(X))
    assert fake_gpu.rows() == [100] and fake_gpu.saw_nan()
    assert pred.describe()["large_batch"]["nan_rows"] == "gpu"


def test_gpu_load_failure_stays_on_cpu_with_one_log_line(
    hb_dir: Path, fake_gpu: Any, caplog: pytest.LogCaptureFixture
) -> None:
    fake_gpu.fail = RuntimeError("CUDA driver version is insufficient")
    records: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = records.append  # type: ignore[method-assign]
    logger = logging.getLogger("intellilog.engines")
    logger.addHandler(handler)  # (the "intellilog" logger may not propagate: server.logs)
    try:
        with caplog.at_level("INFO", logger="intellilog.engines"):
            pred = Predictor(hb_dir, "numba", gpu_min_rows=64)
    finally:
        logger.removeHandler(handler)
    assert pred.large is None
    reason = pred.describe()["large_batch_reason"]
    assert reason.startswith("GPU engine failed to load: RuntimeError: CUDA driver")
    assert len(records) == 1 and "CUDA driver" in records[0].getMessage()
    X = _clean(100, seed=14)
    _same(pred.predict(X), Predictor(hb_dir, "numba", gpu_min_rows=0).predict(X))
    assert fake_gpu.calls == []


def test_gpu_engine_that_disagrees_at_load_is_not_used(hb_dir: Path, fake_gpu: Any) -> None:
    fake_gpu.shift = 0.5
    pred = Predictor(hb_dir, "numba", gpu_min_rows=64)
    assert pred.large is None
    assert "disagrees with numba on the load check" in pred.describe()["large_batch_reason"]
    fake_gpu.calls.clear()
    pred.predict(_clean(100, seed=15))
    assert fake_gpu.calls == []


def test_reasons_for_no_large_batch_engine(
    model_dir: Path, hb_dir: Path, fake_gpu: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    def reason(d: Path, **kw: Any) -> str:
        p = Predictor(d, "numba", **kw)
        assert p.large is None and p.describe()["large_batch"] is None
        return str(p.describe()["large_batch_reason"])

    assert "INTELLILOG_GPU_MIN_ROWS=0" in reason(hb_dir, gpu_min_rows=0)
    assert "not allowed" in reason(hb_dir, allow_gpu=False)
    assert reason(model_dir).startswith("no hummingbird export: eta.hb.onnx, p10.hb.onnx")
    assert fake_gpu.loads == 0  # none of these tried to load a GPU engine
    monkeypatch.setenv("INTELLILOG_GPU_MIN_ROWS", "0")
    assert "INTELLILOG_GPU_MIN_ROWS=0" in reason(hb_dir)


@pytest.mark.skipif(ort_has_cuda(), reason="this machine has onnxruntime's CUDA provider")
def test_without_a_gpu_the_real_loader_says_why(
    hb_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pred = Predictor(hb_dir, "numba")
    reason = str(pred.describe()["large_batch_reason"])
    assert reason.startswith("no CUDA device: onnxruntime has no CUDAExecutionProvider"), reason
    # onnxruntime claims the provider but it cannot start: the engines are CPU, so no route
    monkeypatch.setattr("server.engines.ort_has_cuda", lambda: True)
    reason = str(Predictor(hb_dir, "numba").describe()["large_batch_reason"])
    assert reason.startswith("no CUDA device: onnxruntime's CUDAExecutionProvider failed"), reason


def test_gpu_min_rows_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(ENV_GPU_MIN_ROWS, raising=False)
    assert gpu_min_rows() == DEFAULT_GPU_MIN_ROWS == 4096
    assert gpu_min_rows(10) == 10
    monkeypatch.setenv(ENV_GPU_MIN_ROWS, "100000")
    assert gpu_min_rows() == 100_000
    for bad in ("many", "-1", "1.5"):
        monkeypatch.setenv(ENV_GPU_MIN_ROWS, bad)
        with pytest.raises(ConfigError, match=ENV_GPU_MIN_ROWS):
            gpu_min_rows()


def test_hummingbird_engine_runs_large_batches_in_chunks(model_dir: Path, tmp_path: Path) -> None:
    shutil.copy(model_dir / "eta.onnx", tmp_path / "eta.hb.onnx")
    whole = HummingbirdEngine(tmp_path / "eta.hb.onnx")
    chunked = HummingbirdEngine(tmp_path / "eta.hb.onnx", chunk_rows=7)
    X = _clean(50, seed=16)
    np.testing.assert_array_equal(chunked.predict(X), whole.predict(X))
    assert chunked.predict(X[:3]).shape == (3,)


def test_torch_hummingbird_engine_matches_lightgbm_without_nan(tmp_path: Path) -> None:
    """With the gpu extra: hummingbird's torch model (on the CPU here) against LightGBM,
    the NaN guard, chunked runs, and the loader's answer without a CUDA device. The
    model has no LightGBM categorical feature: hummingbird cannot convert those."""
    pytest.importorskip("hummingbird.ml")
    torch = pytest.importorskip("torch")
    from server.engines import TorchHummingbirdEngine, load_gpu_engines

    X, y = _data(800, seed=21)
    params = {"num_leaves": 15, "min_data_in_leaf": 10, "verbose": -1, "num_threads": 1}
    trio = {
        m: lgb.train({**params, "seed": i}, lgb.Dataset(X, y), num_boost_round=20)
        for i, m in enumerate(("eta", "p10", "p90"))
    }
    manifest = export_engines(trio, X[:300], tmp_path)
    assert "hummingbird" in manifest, manifest
    engine = TorchHummingbirdEngine(tmp_path / "eta.txt", "cpu", chunk_rows=64)
    assert engine.name == "hummingbird" and engine.device == "cpu"
    Xt = _clean(300, seed=22)
    np.testing.assert_allclose(engine.predict(Xt), trio["eta"].predict(Xt), rtol=1e-5, atol=1e-4)
    Xt[5, 1] = np.nan
    with pytest.raises(InferenceError, match="without missing values"):
        engine.predict(Xt)
    if not ort_has_cuda() and not torch.cuda.is_available():
        engines, why = load_gpu_engines(tmp_path)
        assert engines is None and why.startswith("no CUDA device: onnxruntime has no"), why
        assert why.endswith("torch.cuda is not available")
