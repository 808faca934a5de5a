"""Export: files, parity gate, parity rows, forest I/O, optional hummingbird."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import lightgbm as lgb
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import training.export as export
from kernels.errors import ConfigError, DataError, ModelLoadError
from kernels.forest import FLAG_CATEGORICAL
from tests.treedata import CAT, F
from tests.treedata import make_data as _data
from tests.treedata import train_model as _train
from training import optional
from training.export import (
    ENGINE_FILES,
    Forest,
    ParityError,
    check_parity,
    export_engines,
    export_onnx,
    flatten_booster,
    parity_rows,
)


@pytest.fixture(scope="session")
def trio() -> dict[str, lgb.Booster]:
    X, y = _data()
    return {
        "eta": _train(X, y),
        "p10": _train(X, y, objective="quantile", alpha=0.1),
        "p90": _train(X, y, objective="quantile", alpha=0.9),
    }


@pytest.fixture(scope="session")
def holdout() -> np.ndarray:
    return _data(400, seed=11)[0]


@pytest.fixture(scope="session")
def exported(
    trio: dict[str, lgb.Booster], holdout: np.ndarray, tmp_path_factory: pytest.TempPathFactory
) -> tuple[Path, dict[str, dict[str, object]]]:
    out = tmp_path_factory.mktemp("export")
    return out, export_engines(trio, holdout, out, categorical=[CAT])


# --------------------------------------------------------------------- export_engines


def test_export_writes_every_engine(exported: tuple[Path, dict[str, dict[str, object]]]) -> None:
    out, manifest = exported
    for name in ("eta", "p10", "p90"):
        for engine in ("lightgbm", "onnx", "numba"):
            assert (out / f"{name}{ENGINE_FILES[engine]}").is_file()
    assert {"lightgbm", "onnx", "numba"} <= set(manifest)
    assert manifest["numba"]["max_rel_err"] == 0.0  # bit-exact
    assert manifest["lightgbm"]["max_rel_err"] == 0.0
    assert 0.0 <= float(manifest["onnx"]["max_rel_err"]) <= 1e-4  # type: ignore[arg-type]
    assert manifest["onnx"]["files"] == ["eta.onnx", "p10.onnx", "p90.onnx"]
    assert int(manifest["onnx"]["rows_checked"]) > 400  # type: ignore[call-overload]
    assert manifest["onnx"]["restriction"] is None
    json.dumps(manifest)
    if not optional.has_hummingbird():
        assert "hummingbird" not in manifest
        assert not list(out.glob("*.hb.onnx"))
    elif "hummingbird" in manifest:
        assert manifest["hummingbird"]["restriction"] in (None, export.HB_RESTRICTION)


def test_broken_forest_fails_with_rows(
    trio: dict[str, lgb.Booster],
    holdout: np.ndarray,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    real = export.flatten_booster

    def broken(booster: lgb.Booster) -> Forest:
        f = real(booster)
        nodes = f.nodes.copy()
        num = np.flatnonzero((nodes["flags"] & FLAG_CATEGORICAL) == 0)
        nodes["threshold"][num[0]] = -nodes["threshold"][num[0]] - 5.0  # flipped threshold
        return Forest(
            nodes, f.cat_bounds, f.cat_bits, f.roots, f.leaf_value, f.n_features, f.divisor
        )

    monkeypatch.setattr(export, "flatten_booster", broken)
    with pytest.raises(ParityError) as info:
        export_engines(trio, holdout, tmp_path, categorical=[CAT])
    msg = str(info.value)
    assert "numba" in msg and "FAIL" in msg and "row " in msg and "ref=" in msg
    assert "onnx: max rel err" not in msg  # onnx itself passed
    assert not list(tmp_path.iterdir()), "failed export must not leave files behind"


def test_onnx_converter_gap_is_caught(holdout: np.ndarray, tmp_path: Path) -> None:
    """onnxmltools ignores zero_as_missing: the parity gate must refuse the model."""
    X, y = _data()
    X[::3, 4] = 0.0
    booster = _train(X, y + 10 * (X[:, 4] == 0), zero_as_missing=True)
    with pytest.raises(ParityError, match=r"onnx: max rel err .* FAIL"):
        export_engines({"eta": booster}, holdout, tmp_path, categorical=[CAT])


def test_feature_count_mismatch(trio: dict[str, lgb.Booster], tmp_path: Path) -> None:
    with pytest.raises(DataError, match="expects 6 features"):
        export_engines(trio, np.zeros((10, F + 1), np.float32), tmp_path)


# --------------------------------------------------------------------- parity helpers


def test_check_parity_metric_and_worst_rows() -> None:
    ref = np.array([100.0, 0.5, 2.0, np.nan, 10.0])
    got = np.array([100.01, 0.5005, 2.0, np.nan, np.nan])
    X = np.arange(10, dtype=np.float32).reshape(5, 2)
    rep = check_parity(ref, got, X, "x", tol=1e-3)
    assert rep.rows_checked == 5 and not rep.passed and rep.max_rel_err == np.inf
    assert [w.index for w in rep.worst] == [4, 1, 0]
    assert rep.worst[1].rel_err == pytest.approx(0.0005)  # |0.5-0.5005| / max(1, 0.5)
    assert rep.worst[2].rel_err == pytest.approx(1e-4)  # 0.01 / 100
    assert "row 4" in rep.describe() and "8" in rep.worst[0].inputs
    ok = check_parity(ref[:4], got[:4], X[:4], "x", tol=1e-3)
    assert ok.passed and ok.max_rel_err == pytest.approx(0.0005)


def test_parity_rows_cover_the_cases(holdout: np.ndarray) -> None:
    rows = parity_rows(holdout, np.random.default_rng(0), categorical=[CAT])
    assert rows.dtype == np.float32 and rows.flags.c_contiguous and rows.shape[1] == F
    for j in range(F):
        col = rows[:, j]
        assert np.isnan(col).any() and np.isposinf(col).any() and np.isneginf(col).any()
        assert (col == 0).any() and (col >= 1e30).any() and (col <= -1e30).any()
    only_one_nan = np.isnan(rows).sum(axis=1) == 1
    for j in range(F):
        assert np.any(only_one_nan & np.isnan(rows[:, j]))
    assert np.isnan(rows).all(axis=1).any() and (rows == 0).all(axis=1).any()
    cat = rows[:, CAT][np.isfinite(rows[:, CAT])]
    assert (cat > 7).any() and (cat < 0).any() and np.all(cat == np.floor(cat))
    assert (np.abs(rows[:, 0]) == np.float32(1e-36)).any()


# --------------------------------------------------------------------- ONNX parity


def _risky(booster: lgb.Booster) -> dict[int, np.ndarray]:
    """float32 inputs where a float32 threshold decides differently from LightGBM's
    float64 one (x == float32(t) > t, or -1e-35f at the zero threshold)."""
    zero = np.float32(1e-35)
    out: dict[int, list[np.float32]] = {}
    f = flatten_booster(booster)
    for nd in f.nodes[(f.nodes["flags"] & FLAG_CATEGORICAL) == 0]:
        t32 = np.float32(nd["threshold"])
        eff = 0.0 if abs(t32) <= zero else float(t32)
        if not eff <= nd["threshold"]:
            out.setdefault(int(nd["feature"]), []).append(t32)
    return {k: np.array(v, dtype=np.float32) for k, v in out.items()}


def _f32(v: float) -> float:
    return float(np.float32(v))


NUM_ELEMENT = st.one_of(
    st.sampled_from(
        [_f32(v) for v in (np.nan, np.inf, -np.inf, 0.0, -0.0, 1e-36, 1e30, -1e30, -1.0, 3e38)]
    ),
    st.floats(width=32, allow_nan=True, allow_infinity=True),
    st.floats(-5, 40, width=32),
)
CAT_ELEMENT = st.one_of(
    st.integers(-5, 50).map(float),
    st.sampled_from([_f32(v) for v in (np.nan, np.inf, -np.inf, 3e9, 2.0**31, -0.0)]),
)


@st.composite
def _matrices(draw: st.DrawFn) -> np.ndarray:
    n = draw(st.integers(1, 40))
    X = draw(hnp.arrays(np.float32, (n, F), elements=NUM_ELEMENT))
    X[:, CAT] = draw(hnp.arrays(np.float32, (n,), elements=CAT_ELEMENT))
    return X


@pytest.fixture(scope="session")
def onnx_sessions(
    exported: tuple[Path, dict[str, dict[str, object]]], trio: dict[str, lgb.Booster]
) -> dict[str, tuple[object, dict[int, np.ndarray]]]:
    import onnxruntime as ort

    out, _ = exported
    return {
        name: (ort.InferenceSession(str(out / f"{name}.onnx")), _risky(b))
        for name, b in trio.items()
    }


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(X=_matrices(), name=st.sampled_from(["eta", "p10", "p90"]))
def test_onnx_hypothesis_parity(
    trio: dict[str, lgb.Booster],
    onnx_sessions: dict[str, tuple[object, dict[int, np.ndarray]]],
    X: np.ndarray,
    name: str,
) -> None:
    """ONNX vs Booster.predict within 1e-4 on NaN, ±inf, huge values, negative and
    unseen integer codes, and inputs exactly at float32-rounded thresholds (export
    rounds every threshold down to float32, which is exact for float32 inputs)."""
    sess, _risky = onnx_sessions[name]
    got = sess.run(None, {"input": X})[0]  # type: ignore[attr-defined]
    rep = check_parity(trio[name].predict(X), got, X, "onnx")
    assert rep.passed, rep.describe()


# --------------------------------------------------------------------- forest I/O


def test_forest_roundtrip(trio: dict[str, lgb.Booster], tmp_path: Path) -> None:
    f = flatten_booster(trio["eta"])
    f.save(tmp_path / "eta.forest.npz")
    g = Forest.load(tmp_path / "eta.forest.npz")
    X = _data(50, seed=2)[0]
    assert np.array_equal(f.predict(X), g.predict(X))
    assert g.n_features == F and g.n_trees == 30


@pytest.mark.parametrize(
    "damage",
    ["garbage", "truncate", "missing", "tamper"],
)
def test_forest_load_errors(trio: dict[str, lgb.Booster], tmp_path: Path, damage: str) -> None:
    path = tmp_path / "eta.forest.npz"
    flatten_booster(trio["eta"]).save(path)
    if damage == "garbage":
        path.write_bytes(b"this is not a zip file")
    elif damage == "truncate":
        path.write_bytes(path.read_bytes()[:200])
    elif damage == "missing":
        path.unlink()
    else:
        with np.load(path) as z:
            arrays = dict(z)
        arrays["roots"] = arrays["roots"].copy()
        arrays["roots"][0] = 10**6
        np.savez(path, **arrays)
    with pytest.raises(ModelLoadError, match="forest file"):
        Forest.load(path)


def test_export_onnx_refuses_unsupported_objective(tmp_path: Path) -> None:
    X, y = _data(300)
    booster = _train(X, (y > y.mean()).astype(float), objective="cross_entropy", rounds=3)
    with pytest.raises(ModelLoadError, match="onnxmltools cannot convert"):
        export_onnx(booster, F, tmp_path / "x.onnx")


def test_flatten_rejects_multiclass() -> None:
    X, y = _data(300)
    booster = _train(
        X, (y > y.mean()).astype(float) + (y > 60), objective="multiclass", num_class=3, rounds=2
    )
    with pytest.raises(ModelLoadError, match="single-output"):
        flatten_booster(booster)


# --------------------------------------------------------------------- optional extra


def test_optional_hummingbird_message(trio: dict[str, lgb.Booster]) -> None:
    if optional.has_hummingbird():
        hb_ml, torch = optional.hummingbird()
        assert hasattr(hb_ml, "convert") and hasattr(torch, "onnx")
        return
    with pytest.raises(ConfigError, match=r"install `intellilog\[gpu\]` for exporting"):
        optional.hummingbird("exporting")
    with pytest.raises(ConfigError, match="gpu"):
        export.export_hummingbird(trio["eta"], np.zeros((2, F), np.float32), "x")


def test_hummingbird_export_when_installed(
    trio: dict[str, lgb.Booster], holdout: np.ndarray, tmp_path: Path
) -> None:
    if not optional.has_hummingbird():
        pytest.skip("extra `gpu` (hummingbird-ml, torch) not installed")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        manifest = export_engines({"eta": trio["eta"]}, holdout, tmp_path, categorical=[CAT])
    if "hummingbird" in manifest:
        assert (tmp_path / "eta.hb.onnx").is_file()
        assert manifest["hummingbird"]["restriction"] in (None, export.HB_RESTRICTION)
    else:
        assert not (tmp_path / "eta.hb.onnx").exists()


def test_onnx_exact_at_float32_rounded_thresholds(
    trio: dict[str, lgb.Booster],
    onnx_sessions: dict[str, tuple[object, dict[int, np.ndarray]]],
) -> None:
    """Inputs equal to a threshold's float32 rounding (and one ulp either side): the
    export rounds thresholds down to float32 so these branch exactly as LightGBM."""
    base = _data(1, seed=9)[0]
    for name, (sess, risky) in onnx_sessions.items():
        rows = []
        for j, vals in risky.items():
            for v in vals:
                for w in (
                    v,
                    np.nextafter(v, np.float32(np.inf)),
                    np.nextafter(v, np.float32(-np.inf)),
                ):
                    r = base[0].copy()
                    r[j] = w
                    rows.append(r)
        if not rows:
            continue
        X = np.ascontiguousarray(np.array(rows, dtype=np.float32))
        got = sess.run(None, {"input": X})[0]  # type: ignore[attr-defined]
        rep = check_parity(trio[name].predict(X), got, X, "onnx")
        assert rep.passed, rep.describe()


def test_positive_infinity_at_no_upper_bound_splits(tmp_path: Path) -> None:
    """LightGBM stores the 'not missing' side of a NaN split as threshold 1e300 and clamps
    inputs to ±1e300, so +inf goes *left* there; every engine must agree (found by a
    benchmark on random rows: both kernels and ONNX sent +inf right)."""
    import onnxruntime as ort

    rng = np.random.default_rng(3)
    n, f = 6000, 4
    X = rng.normal(size=(n, f)).astype(np.float32)
    X[rng.random(n) < 0.2, 2] = np.nan
    y = X[:, 0] + np.where(np.isnan(X[:, 2]), 4.0, 0.0) + rng.normal(size=n) * 0.1  # NaN-only split
    b = lgb.train({"num_leaves": 15, "verbose": -1}, lgb.Dataset(X, y), 40)
    forest = flatten_booster(b)
    assert np.any(forest.nodes["threshold"] >= 1e300), "no 1e300 threshold in the model"
    rows = rng.normal(size=(400, f)).astype(np.float32)
    rows[:, 2] = np.inf
    rows[::2, 2] = -np.inf
    rows[::5, 2] = np.nan
    ref = b.predict(rows)
    _assert_exact_all(forest, rows, ref)
    path = export_onnx(b, f, tmp_path / "m.onnx")
    got = ort.InferenceSession(str(path)).run(None, {"input": rows})[0].ravel()
    assert np.max(np.abs(got - ref) / np.maximum(1, np.abs(ref))) < 1e-5


def _assert_exact_all(forest: Forest, X: np.ndarray, ref: np.ndarray) -> None:
    assert np.array_equal(forest.predict(X), ref)
    assert np.array_equal(forest.predict(X, parallel=True), ref)
    assert np.array_equal(np.array([forest.predict_row(X[i : i + 1]) for i in range(len(X))]), ref)
