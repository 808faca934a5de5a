"""A second kind of data end to end: long trips (hours, thousands of km, many zones) with
a spec whose tables are not alphabetical. Training's holdout metrics are reproduced by
``evaluate`` on the same rows, and ``score``, ``/v1/predict`` and V2 give the same ETAs."""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest

from kernels.spec import load_spec
from training.registry import Registry
from training.synth import generate_trips
from training.train import TrainSettings, prepare

pytestmark = pytest.mark.slow

TRAIN = ("--max-rounds", "80", "--num-leaves", "15", "--seed", "0")


def test_long_trips_train_evaluate_score_and_serve(cli: Any, tmp_path: Path) -> None:
    spec = load_spec("trips")
    assert [n.name for n in spec.numeric] != sorted(n.name for n in spec.numeric)
    assert [c.name for c in spec.categorical] != sorted(c.name for c in spec.categorical)
    table = generate_trips(8000, seed=3)
    data = tmp_path / "trips.parquet"
    pq.write_table(table, data)
    reg = ("--registry", tmp_path / "reg")

    res = cli("train", "--data", data, "--spec", "trips", *reg, "--promote", "--json", *TRAIN)
    assert res.code == 0, res.err
    trained = res.json()["metrics"]
    assert (
        trained["holdout"]["unit"] == "minutes" and trained["holdout"]["accuracy_tolerance"] == 30
    )

    # the holdout rows, as raw rows, evaluated through the registry: the same numbers
    prep = prepare(table, spec, TrainSettings())
    holdout = tmp_path / "holdout.parquet"
    pq.write_table(table.take(prep.rows[prep.holdout_idx]), holdout)
    res = cli("evaluate", "--data", holdout, *reg, "--json")
    assert res.code == 0, res.err
    ev = res.json()
    assert ev["engine"] == "compiled"
    assert ev["holdout"]["rows"] == trained["holdout"]["rows"]
    assert ev["model"] == trained["model"]  # MAE, RMSE, p90 AE, accuracy, coverage: equal
    assert ev["baselines"] == trained["baselines"]

    # score, /v1/predict and V2 on the same new rows
    new = generate_trips(40, seed=9).drop_columns(["duration_minutes"])
    src = tmp_path / "new.csv"
    pacsv.write_csv(new, src)
    out = tmp_path / "etas.parquet"
    res = cli("score", src, "--out", out, "--quiet", *reg)
    assert res.code == 0, res.err
    scored = pq.read_table(out).column("eta_minutes").to_numpy()

    from litestar.testing import TestClient

    from server.app import create_app
    from server.config import Settings

    app = create_app(Settings(model_artifact_path=str(tmp_path / "reg"), log_level="WARNING"))
    with TestClient(app) as client:
        _serve_and_compare(client, new, scored)


def _serve_and_compare(client: Any, new: Any, scored: np.ndarray) -> None:
    rows = new.to_pylist()
    single = [client.post("/v1/predict", json=r).json()["eta_minutes"] for r in rows]
    batch = client.post("/v1/predict/batch", json={"deliveries": rows}).json()
    inputs = []
    for name in new.column_names:
        col = new.column(name).to_pylist()
        if name in ("departed_at", "trip_id") or isinstance(col[0], str):
            inputs.append({"name": name, "shape": [len(col)], "datatype": "BYTES", "data": col})
        elif name == "customs_checks" and any(v is None for v in col):
            continue  # optional; sent per row over /v1 (V2 tensors carry no nulls)
        else:
            inputs.append({"name": name, "shape": [len(col)], "datatype": "FP64", "data": col})
    r = client.post("/v2/models/eta/infer", json={"inputs": inputs})
    assert r.status_code == 200, r.text
    v2 = next(o["data"] for o in r.json()["outputs"] if o["name"] == "eta_minutes")

    np.testing.assert_array_equal(np.array(single), scored)
    np.testing.assert_array_equal(
        np.array([p["eta_minutes"] for p in batch["predictions"]]), scored
    )
    if any(i["name"] == "customs_checks" for i in inputs):
        np.testing.assert_array_equal(np.array(v2), scored)
    else:  # compare V2 with /v1 on the same rows without the optional column
        bare = [{k: v for k, v in row.items() if k != "customs_checks"} for row in rows]
        want = [client.post("/v1/predict", json=b).json()["eta_minutes"] for b in bare]
        np.testing.assert_array_equal(np.array(v2), np.array(want))


def test_train_refuses_long_trips_when_the_spec_bounds_say_so(cli: Any, tmp_path: Path) -> None:
    text = resources.files("kernels").joinpath("trips.toml").read_text()
    slow = tmp_path / "slow_trips.toml"
    slow.write_text(text.replace("max_speed_kmh = 950", "max_speed_kmh = 150"))
    data = tmp_path / "trips.parquet"
    pq.write_table(generate_trips(3000, seed=4), data)
    res = cli("train", "--data", data, "--spec", slow, "--registry", tmp_path / "reg", *TRAIN)
    assert res.code == 2
    line = res.err.strip().splitlines()[-1]
    assert line.startswith("error:") and "max_speed_kmh" in line, res.err
    assert Registry(tmp_path / "reg").versions() == []


def test_a_target_in_hours_is_evaluated_in_hours_and_served_in_minutes(
    cli: Any, tmp_path: Path
) -> None:
    from kernels.spec import default_spec
    from training.synth import generate

    spec_path = tmp_path / "hours.toml"
    spec = default_spec()  # its columns, with the target in hours
    cats = "\n".join(
        f'{c.name} = {{ levels = {list(c.levels)!r}, unknown = "map" }}'.replace("'", '"')
        for c in spec.categorical
    )
    nums = "\n".join(
        f"{n.name} = {{ min = {n.min}, max = {n.max}, optional = {str(n.optional).lower()} }}"
        for n in spec.numeric
    )
    spec_path.write_text(
        f'name = "hours"\nkey = "order_id"\nevent_time = "created_at"\n'
        f'timezone = "Europe/Berlin"\n[target]\nname = "actual_hours"\nunit = "hours"\n'
        f"min = {1 / 60}\nmax = 24\ntolerance = {5 / 60}\n"
        '[pickup]\nlat = "pickup_lat"\nlon = "pickup_lon"\n'
        '[dropoff]\nlat = "dropoff_lat"\nlon = "dropoff_lon"\n'
        f"[categorical]\n{cats}\n[numeric]\n{nums}\n"
    )
    table = generate(3000, seed=12)
    hours = np.asarray(table.column("actual_minutes").to_numpy()) / 60.0
    table = table.drop_columns(["actual_minutes"]).append_column("actual_hours", [hours])
    data = tmp_path / "hours.parquet"
    pq.write_table(table, data)
    reg = ("--registry", tmp_path / "reg")
    res = cli("train", "--data", data, "--spec", spec_path, *reg, "--promote", "--json", *TRAIN)
    assert res.code == 0, res.err
    trained = res.json()["metrics"]
    assert trained["holdout"]["unit"] == "hours"
    prep = prepare(table, load_spec(spec_path), TrainSettings())
    holdout = tmp_path / "holdout.parquet"
    pq.write_table(table.take(prep.rows[prep.holdout_idx]), holdout)
    ev = cli("evaluate", "--data", holdout, *reg, "--json").json()
    for k in ("mae", "accuracy", "coverage"):  # hours, as in training (to float rounding)
        assert ev["model"][k] == pytest.approx(trained["model"][k], rel=1e-12)
    assert ev["model"]["mae"] < 1.0  # hours, not minutes
    # served and scored in minutes: 60 x the booster's hours
    out = tmp_path / "etas.parquet"
    assert cli("score", holdout, "--out", out, "--quiet", *reg).code == 0
    import lightgbm as lgb

    booster = lgb.Booster(model_file=str(tmp_path / "reg" / "versions" / "v1" / "eta.txt"))
    want = booster.predict(prep.X[prep.holdout_idx]) * 60.0
    np.testing.assert_allclose(
        pq.read_table(out).column("eta_minutes").to_numpy(), want, rtol=1e-12
    )
