"""The feature contract across the file boundary: column order from the spec, through the
manifest, to every engine as served; and the served check that refuses a version whose
reloaded answers differ from the training-time models."""

from __future__ import annotations

import hashlib
import io
import json
from pathlib import Path
from typing import Any

import lightgbm as lgb
import numpy as np
import pyarrow as pa
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kernels.errors import ModelLoadError
from kernels.spec import FeatureSpec, default_spec, spec_from_dict
from server.models import SERVED_CHECK_ENGINES, load_model, served_check
from training.io import to_columns
from training.job import train_job
from training.registry import MANIFEST, Registry
from training.synth import generate, write_table
from training.train import TrainSettings, prepare

pytestmark = pytest.mark.slow

SETTINGS = TrainSettings(max_rounds=25, num_leaves=7, quantile_num_leaves=7, seed=0)


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, pa.Table]:
    path = tmp_path_factory.mktemp("contract") / "deliveries.parquet"
    table = generate(2500, seed=11)
    write_table(table, path)
    return path, table


def reordered(spec: FeatureSpec, cats: list[int], nums: list[int]) -> FeatureSpec:
    d = spec.to_dict()
    d["categorical"] = [d["categorical"][i] for i in cats]
    d["numeric"] = [d["numeric"][i] for i in nums]
    return spec_from_dict(d)


def train(path: Path, spec: FeatureSpec, root: Path, **kw: Any) -> tuple[Registry, str]:
    reg = Registry(root)
    res = train_job(
        path, spec, reg, SETTINGS, out=io.StringIO(), served_check=served_check(reg), **kw
    )
    assert res.version is not None
    return reg, res.version


@settings(
    max_examples=4,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(cats=st.permutations([0, 1, 2]), nums=st.permutations([0, 1]))
def test_permuted_specs_serve_exactly_the_training_time_models(
    data: tuple[Path, pa.Table], tmp_path_factory: pytest.TempPathFactory, cats: list, nums: list
) -> None:
    path, table = data
    spec = reordered(default_spec(), cats, nums)
    reg, version = train(path, spec, tmp_path_factory.mktemp("reg"))
    # training-time features, built from the spec in memory (never written or reloaded)
    prep = prepare(table, spec, SETTINGS)
    rows = prep.holdout_idx
    X_train_time = prep.X[rows]
    folder = reg.path(version)
    want = {
        m: lgb.Booster(model_file=str(folder / f"{m}.txt")).predict(X_train_time)
        for m in ("eta", "p10", "p90")
    }
    want["p10"] = np.minimum(want["p10"], want["eta"])
    want["p90"] = np.maximum(want["p90"], want["eta"])
    raw = table.take(prep.rows[rows])  # the same rows as raw input columns
    for engine in SERVED_CHECK_ENGINES:
        model = load_model(reg, version, engine=engine)
        assert model.pipe.feature_names == spec.feature_names
        conv = to_columns(raw, model.pipe)
        got = model.predict(model.pipe.matrix(conv.columns))
        for name, g in zip(("eta", "p10", "p90"), got, strict=True):
            if engine == "onnx":  # ONNX Runtime sums leaves in float32: exact to ~1e-7
                np.testing.assert_allclose(g, want[name], rtol=2e-6, err_msg=engine)
            else:  # compiled, numba, lightgbm: bit for bit
                np.testing.assert_array_equal(g, want[name], err_msg=f"{engine} {name}")


def test_served_check_refuses_a_permuted_artifact(
    data: tuple[Path, pa.Table], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Item 1's bug planted in the write path (columns come back in another order) with the
    load-time name check switched off: the served check alone refuses the version."""
    import server.models as models

    path, _ = data
    publish = Registry.publish

    def publish_permuted(self: Registry, staging: Any, manifest: Any) -> str:
        m = dict(manifest)
        spec = dict(manifest["spec"])
        spec["numeric"] = spec["numeric"][::-1]  # the order lost on the way to the file ...
        m["spec"] = spec
        m["spec_hash"] = spec_from_dict(spec).hash  # ... with a hash that agrees with it
        return publish(self, staging, m)

    monkeypatch.setattr(Registry, "publish", publish_permuted)
    monkeypatch.setattr(models, "_check_feature_order", lambda *a: None)
    reg = Registry(tmp_path / "reg")
    with pytest.raises(ModelLoadError) as exc:
        train(path, default_spec(), tmp_path / "reg")
    msg = str(exc.value)
    assert "version v1 deleted" in msg and "engine 'compiled'" in msg and "first bad row" in msg
    assert reg.versions() == []


def test_served_check_refuses_permuted_levels(
    data: tuple[Path, pa.Table], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path, _ = data
    publish = Registry.publish

    def publish_reversed_levels(self: Registry, staging: Any, manifest: Any) -> str:
        m = dict(manifest)
        m["levels"] = {k: v[::-1] for k, v in manifest["levels"].items()}
        return publish(self, staging, m)

    monkeypatch.setattr(Registry, "publish", publish_reversed_levels)
    with pytest.raises(ModelLoadError, match=r"version v1 deleted: .*engine 'compiled'"):
        train(path, default_spec(), tmp_path / "reg")
    assert Registry(tmp_path / "reg").versions() == []


def _rewrite_manifest(reg: Registry, version: str, change: Any) -> None:
    p = reg.path(version) / MANIFEST
    m = json.loads(p.read_text())
    change(m)
    p.write_text(json.dumps(m, indent=2, sort_keys=True))


def test_load_refuses_features_that_differ_from_the_manifest(
    data: tuple[Path, pa.Table], tmp_path: Path
) -> None:
    reg, version = train(data[0], default_spec(), tmp_path / "reg")

    def swap(m: dict[str, Any]) -> None:
        names = m["feature_names"]
        names[-1], names[-2] = names[-2], names[-1]

    _rewrite_manifest(reg, version, swap)
    with pytest.raises(ModelLoadError, match=r"position 17: 'items_count' vs 'prep_minutes'"):
        load_model(reg, version)


def test_old_manifests_are_read_in_their_feature_order(
    data: tuple[Path, pa.Table], tmp_path: Path
) -> None:
    """A manifest written before ordered specs (tables as JSON objects, sorted on write)
    is served in the order of its feature_names, never alphabetically."""
    path, table = data
    spec = reordered(default_spec(), [2, 0, 1], [1, 0])  # zone first: not alphabetical
    reg, version = train(path, spec, tmp_path / "reg")
    new = load_model(reg, version)

    def to_old_format(m: dict[str, Any]) -> None:
        s = m["spec"]
        old = {k: s[k] for k in ("name", "key", "event_time", "timezone", "pickup", "dropoff")}
        old["target"] = s["target"]["name"]
        old["categorical"] = {
            c["name"]: {"levels": c["levels"], "unknown": c["unknown"]}
            for c in sorted(s["categorical"], key=lambda c: c["name"])
        }
        old["numeric"] = {
            n["name"]: {k: n[k] for k in ("min", "max", "optional")}
            for n in sorted(s["numeric"], key=lambda n: n["name"])
        }
        m["spec"] = old
        blob = json.dumps(old, sort_keys=True, separators=(",", ":")).encode()
        m["spec_hash"] = hashlib.sha256(blob).hexdigest()[:16]

    _rewrite_manifest(reg, version, to_old_format)
    old = load_model(reg, version)
    assert old.pipe.feature_names == spec.feature_names
    conv = to_columns(table.slice(0, 500), old.pipe)
    X = old.pipe.matrix(conv.columns)
    for a, b in zip(old.predict(X), new.predict(X), strict=True):
        np.testing.assert_array_equal(a, b)
    # an edited old manifest (hash no longer matches) is refused
    _rewrite_manifest(reg, version, lambda m: m["spec"].update(timezone="UTC"))
    with pytest.raises(ModelLoadError, match="spec hash mismatch"):
        load_model(reg, version)
