"""End to end: the ``intellilog`` command line on generated data, in-process.

Every command is run through ``server.cli.main`` (fixture ``cli``) in an empty working
folder; one test runs the installed console script in a subprocess. The model is tiny
(3000 rows, 60 rounds, 15 leaves) and trained once per session (``trained``).
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import os
import subprocess
import sys
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest

from server.cli import main
from training.quality import WEIGHTS
from training.synth import generate

pytestmark = pytest.mark.slow

# The fixtures' types live in tests/conftest.py (not importable as a module here).
CliResult = Any  # conftest.CliResult: code, out, err, err_lines, json()
TrainedModel = Any  # conftest.TrainedModel: registry, data, log, result, manifest
Cli = Callable[..., CliResult]
#: Training settings small enough for a 2-core machine (as in tests/conftest.py).
TINY_TRAIN = ("--max-rounds", "60", "--num-leaves", "15", "--seed", "0")
OUTPUT_COLUMNS = ["order_id", "eta_minutes", "eta_p10", "eta_p90", "model_version"]
DEFAULT_SPEC = Path(__file__).resolve().parents[2] / "kernels" / "deliveries.toml"


# ---- helpers ---------------------------------------------------------------------------------


def assert_one_line_error(res: CliResult, *mentions: str) -> str:
    """Non-zero exit, stderr exactly one ``error: ...`` line mentioning every word given."""
    assert res.code != 0, res
    assert "Traceback" not in res.err
    assert len(res.err_lines) == 1, res.err
    line = res.err_lines[0]
    assert line.startswith("error: "), line
    for word in mentions:
        assert word.lower() in line.lower(), f"{word!r} not in {line!r}"
    return line


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every file below ``folder`` with its content."""
    if not folder.exists():
        return {}
    return {
        p.relative_to(folder).as_posix(): p.read_bytes() for p in folder.rglob("*") if p.is_file()
    }


def set_column(table: pa.Table, name: str, values: pa.Array | list) -> pa.Table:
    arr = values if isinstance(values, pa.Array) else pa.array(values)
    return table.set_column(table.schema.get_field_index(name), name, arr)


def score_json(cli: Cli, *args: str | Path) -> dict:
    res = cli("score", *args, "--quiet", "--json")
    assert res.code == 0, res.err
    return res.json()


@pytest.fixture(autouse=True)
def _no_debug(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("INTELLILOG_DEBUG", raising=False)


@pytest.fixture(scope="module")
def new_orders() -> pa.Table:
    """500 orders from another seed than the training data (same city)."""
    return generate(500, seed=3)


# ---- generate --------------------------------------------------------------------------------


def test_generate_writes_parquet_and_csv_deterministically(cli: Cli, tmp_path: Path) -> None:
    a, b, c = tmp_path / "a.parquet", tmp_path / "b.parquet", tmp_path / "c.parquet"
    text = tmp_path / "a.csv"
    for path, seed in ((a, 5), (b, 5), (c, 6), (text, 5)):
        res = cli("generate", "--rows", "300", "--seed", str(seed), "--out", path)
        assert res.code == 0, res.err
        assert "wrote 300 deliveries" in res.err
    ta, tb, tc = pq.read_table(a), pq.read_table(b), pq.read_table(c)
    assert ta.num_rows == 300
    assert ta.equals(tb)  # same seed, same table
    assert not ta.equals(tc)  # another seed, other orders
    as_text = pacsv.ConvertOptions(column_types={"created_at": pa.string()})
    tcsv = pacsv.read_csv(text, convert_options=as_text)
    assert tcsv.column_names == ta.column_names
    assert tcsv.column("order_id").to_pylist() == ta.column("order_id").to_pylist()
    assert tcsv.column("created_at").to_pylist() == ta.column("created_at").to_pylist()
    np.testing.assert_array_equal(
        tcsv.column("actual_minutes").to_numpy(), ta.column("actual_minutes").to_numpy()
    )
    np.testing.assert_array_equal(
        tcsv.column("pickup_lat").to_numpy(), ta.column("pickup_lat").to_numpy()
    )


def test_generate_refuses_an_unsupported_extension(cli: Cli, tmp_path: Path) -> None:
    res = cli("generate", "--rows", "10", "--out", tmp_path / "x.json")
    assert_one_line_error(res, "unsupported file type")
    assert not (tmp_path / "x.json").exists()


# ---- validate --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def corrupted_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """3000 generated rows, 40 % of them with a negative duration."""
    t = generate(3000, seed=2)
    y = t.column("actual_minutes").to_numpy().copy()
    bad = np.random.default_rng(0).random(len(y)) < 0.4
    y[bad] = -y[bad]
    path = tmp_path_factory.mktemp("corrupted") / "corrupted.parquet"
    pq.write_table(set_column(t, "actual_minutes", pa.array(y)), path)
    return path


def test_validate_prints_every_check_and_passes_good_data(cli: Cli, train_data: Path) -> None:
    res = cli("validate", "--data", train_data)
    assert res.code == 0, res.err
    lines = res.out.splitlines()
    for name in WEIGHTS:
        assert any(line.startswith(name) for line in lines), f"check {name} not printed"
    assert lines[-1].startswith("total")
    assert "PASS" in lines[-1]


def test_validate_json_parses(cli: Cli, train_data: Path) -> None:
    res = cli("validate", "--data", train_data, "--json")
    assert res.code == 0, res.err
    report = res.json()
    assert report["passed"] is True
    assert report["rows"] == 3000
    assert report["score"] >= report["threshold"] == 80
    assert [c["name"] for c in report["checks"]] == list(WEIGHTS)


def test_validate_exits_3_on_heavily_corrupted_data(cli: Cli, corrupted_data: Path) -> None:
    res = cli("validate", "--data", corrupted_data)
    assert res.code == 3, res.err
    assert "FAIL" in res.out
    impossible = next(line for line in res.out.splitlines() if line.startswith("impossible"))
    assert "FAIL" in impossible
    res = cli("validate", "--data", corrupted_data, "--json")
    assert res.code == 3
    report = res.json()
    assert report["passed"] is False
    failing = {c["name"] for c in report["checks"] if not c["passed"]}
    assert "impossible_durations" in failing


# ---- train -----------------------------------------------------------------------------------


def test_train_prints_metrics_table_and_beats_baselines(trained: TrainedModel) -> None:
    log = trained.log
    assert "holdout: 600 rows" in log  # the latest 20 % of 3000 rows
    table = log[log.index("holdout:") :].splitlines()
    assert "MAE" in table[1] and "RMSE" in table[1] and "cover" in table[1]
    assert [line.split()[0] for line in table[2:5]] == ["model", "median", "distance_speed"]
    assert "registered model v1" in log and "promoted v1 to production" in log
    assert trained.result["version"] == "v1"

    metrics = trained.manifest["metrics"]
    assert metrics == trained.result["metrics"]
    mae = metrics["model"]["mae"]
    assert mae < metrics["baselines"]["median"]["mae"]
    assert mae < metrics["baselines"]["distance_speed"]["mae"]
    assert 0.0 <= metrics["model"]["coverage"] <= 1.0
    assert set(trained.manifest["engines"]) == {"onnx", "numba", "lightgbm"}


def test_train_dry_run_trains_nothing(cli: Cli, registry_copy: Path, train_data: Path) -> None:
    before = snapshot(registry_copy)
    res = cli("train", "--data", train_data, "--registry", registry_copy, "--dry-run", *TINY_TRAIN)
    assert res.code == 0, res.err
    assert "dry run" in res.err
    assert "holdout:" not in res.err  # no metrics: nothing was trained
    assert snapshot(registry_copy) == before


def test_train_dry_run_on_an_empty_registry_creates_nothing(
    cli: Cli, tmp_path: Path, train_data: Path
) -> None:
    registry = tmp_path / "fresh"
    res = cli("train", "--data", train_data, "--registry", registry, "--dry-run")
    assert res.code == 0, res.err
    assert not registry.exists()


def test_train_refuses_bad_quality_data(cli: Cli, tmp_path: Path, corrupted_data: Path) -> None:
    registry = tmp_path / "registry"
    res = cli("train", "--data", corrupted_data, "--registry", registry, *TINY_TRAIN)
    assert res.code == 2
    assert "Traceback" not in res.err
    errors = [line for line in res.err_lines if line.startswith("error:")]
    assert errors == [res.err_lines[-1]]
    assert "quality" in errors[0] and "impossible_durations" in errors[0]
    assert snapshot(registry) == {}


def test_train_refuses_a_holdout_fraction_out_of_range(
    cli: Cli, tmp_path: Path, train_data: Path
) -> None:
    res = cli(
        "train", "--data", train_data, "--registry", tmp_path / "r", "--holdout-fraction", "0.9"
    )
    line = assert_one_line_error(res, "0.9")
    assert "holdout_fraction" in line or "holdout-fraction" in line
    assert not (tmp_path / "r").exists()


def test_train_output_follows_current_stderr(tmp_path: Path, train_data: Path) -> None:
    """Two in-process runs with stderr redirected each time: each run's progress goes to
    the stderr of that run."""
    for i in range(2):
        buf = io.StringIO()
        with contextlib.redirect_stderr(buf):
            code = main(
                ["train", "--data", str(train_data), "--registry", str(tmp_path / "r"), "--dry-run"]
            )
        assert code == 0, buf.getvalue()
        assert "dry run" in buf.getvalue(), f"run {i}: train output went elsewhere"
        buf.close()


# ---- evaluate --------------------------------------------------------------------------------


def test_evaluate_json_on_another_file(cli: Cli, trained: TrainedModel, tmp_path: Path) -> None:
    other = tmp_path / "other.csv"
    assert cli("generate", "--rows", "800", "--seed", "2", "--out", other).code == 0
    res = cli("evaluate", "--data", other, "--registry", trained.registry, "--json")
    assert res.code == 0, res.err
    m = res.json()
    assert m["model_version"] == "v1"
    assert m["engine"] == "compiled"  # the one default engine
    assert m["holdout"]["rows"] == 800
    assert m["holdout"]["refused_rows"] == 0
    for key in ("mae", "rmse", "p90_ae", "accuracy", "coverage"):
        assert np.isfinite(m["model"][key])
    assert set(m["baselines"]) == {"median", "distance_speed"}
    assert m["model"]["mae"] < m["baselines"]["median"]["mae"]


def test_evaluate_prints_a_table(cli: Cli, trained: TrainedModel) -> None:
    res = cli("evaluate", "--data", trained.data, "--registry", trained.registry)
    assert res.code == 0, res.err
    assert res.out.startswith("model v1 (compiled)")
    assert "distance_speed" in res.out


# ---- models ----------------------------------------------------------------------------------


def test_models_list_show_promote_rollback_history(
    cli: Cli, registry_copy: Path, train_data: Path
) -> None:
    reg = ("--registry", registry_copy)
    listing = cli("models", "list", "--json", *reg).json()
    assert listing == {"versions": ["v1"], "aliases": {"production": "v1"}, "archived": {}}

    # a second version, registered but not promoted
    res = cli("train", "--data", train_data, *reg, *TINY_TRAIN, "--seed", "1", "--json")
    assert res.code == 0, res.err
    assert res.json()["version"] == "v2"
    assert "promoted" not in res.err
    assert cli("models", "list", "--json", *reg).json() == {
        "versions": ["v1", "v2"],
        "aliases": {"production": "v1"},
        "archived": {},
    }

    table = cli("models", "list", *reg)
    assert table.code == 0
    rows = {line.split()[0]: line for line in table.out.splitlines()[1:]}
    assert set(rows) == {"v1", "v2"}
    assert rows["v1"].endswith("production") and not rows["v2"].endswith("production")

    shown = cli("models", "show", "v2", *reg)
    assert shown.code == 0
    manifest = shown.json()
    assert manifest["version"] == "v2"
    assert "files" not in manifest and "reference" not in manifest  # only with --full
    assert "files" in cli("models", "show", "v2", "--full", *reg).json()

    res = cli("models", "promote", "v2", *reg)
    assert res.code == 0, res.err
    assert res.out.strip() == "production: v1 -> v2"
    assert cli("models", "show", "production", *reg).json()["version"] == "v2"

    res = cli("models", "promote", "v1", "--alias", "candidate", *reg)
    assert res.out.strip() == "candidate: (none) -> v1"

    res = cli("models", "rollback", *reg)
    assert res.code == 0, res.err
    assert res.out.strip() == "production rolled back to v1"
    assert cli("models", "list", "--json", *reg).json()["aliases"] == {
        "production": "v1",
        "candidate": "v1",
    }

    history = cli("models", "history", *reg).json()
    assert [(h["action"], h["version"], h["previous"]) for h in history] == [
        ("promote", "v1", None),
        ("promote", "v2", "v1"),
        ("rollback", "v1", "v2"),
    ]

    # a second rollback toggles back
    assert cli("models", "rollback", *reg).out.strip() == "production rolled back to v2"
    # candidate was only ever set once: nothing to roll back to
    assert_one_line_error(cli("models", "rollback", "--alias", "candidate", *reg), "candidate")


def test_models_errors_are_one_line(cli: Cli, registry_copy: Path, tmp_path: Path) -> None:
    reg = ("--registry", registry_copy)
    assert_one_line_error(cli("models", "show", "v9", *reg), "v9")
    assert_one_line_error(cli("models", "show", *reg), "version")
    assert_one_line_error(cli("models", "promote", *reg), "version")
    assert_one_line_error(cli("models", "promote", "v1", "--alias", "Bad Alias", *reg), "alias")
    empty = cli("models", "list", "--registry", tmp_path / "none")
    assert empty.code == 0 and "no models" in empty.out


@pytest.mark.parametrize("command", ["score", "evaluate"])
def test_tampered_model_file_refuses_to_load(
    cli: Cli, registry_copy: Path, train_data: Path, tmp_path: Path, command: str
) -> None:
    with (registry_copy / "versions" / "v1" / "eta.onnx").open("ab") as f:
        f.write(b"\0")
    if command == "score":
        res = cli("score", train_data, "--out", tmp_path / "out.csv", "--registry", registry_copy)
    else:
        res = cli("evaluate", "--data", train_data, "--registry", registry_copy)
    line = assert_one_line_error(res, "v1", "eta.onnx")
    assert res.code == 2
    assert "corrupted" in line and "checksum" in line
    assert not (tmp_path / "out.csv").exists()


# ---- score -----------------------------------------------------------------------------------


def check_scored(out: pa.Table, keys: list[str], version: str = "v1") -> None:
    assert out.column_names == OUTPUT_COLUMNS
    assert out.column("order_id").cast(pa.string()).to_pylist() == keys  # input order
    eta = out.column("eta_minutes").to_numpy()
    p10 = out.column("eta_p10").to_numpy()
    p90 = out.column("eta_p90").to_numpy()
    assert np.isfinite(eta).all() and (eta > 0).all()
    assert (p10 <= eta).all() and (eta <= p90).all()
    assert set(out.column("model_version").to_pylist()) == {version}


def test_score_csv_to_parquet(
    cli: Cli, trained: TrainedModel, new_orders: pa.Table, tmp_path: Path
) -> None:
    src, dst = tmp_path / "orders.csv", tmp_path / "etas.parquet"
    pacsv.write_csv(new_orders.drop_columns(["actual_minutes"]), src)
    report = score_json(cli, src, "--out", dst, "--registry", trained.registry)
    assert report["rows_in"] == report["rows_scored"] == 500
    assert report["rows_rejected"] == 0 and report["rejects"] is None
    assert report["model_version"] == "v1" and report["engine"] == "compiled"  # the default
    check_scored(pq.read_table(dst), new_orders.column("order_id").to_pylist())
    assert not (tmp_path / "etas.rejects.csv").exists()


def test_score_parquet_to_csv_in_batches(
    cli: Cli, trained: TrainedModel, new_orders: pa.Table, tmp_path: Path
) -> None:
    src, dst = tmp_path / "orders.parquet", tmp_path / "etas.csv"
    pq.write_table(new_orders, src, row_group_size=100)
    report = score_json(
        cli, src, "--out", dst, "--registry", trained.registry, "--batch-rows", "64"
    )
    assert report["rows_scored"] == 500
    check_scored(pacsv.read_csv(dst), new_orders.column("order_id").to_pylist())


def test_score_without_key_column_numbers_the_rows(
    cli: Cli, trained: TrainedModel, new_orders: pa.Table, tmp_path: Path
) -> None:
    src, dst = tmp_path / "orders.parquet", tmp_path / "etas.parquet"
    pq.write_table(new_orders.drop_columns(["order_id"]), src)
    score_json(cli, src, "--out", dst, "--registry", trained.registry)
    out = pq.read_table(dst)
    assert out.column_names[0] == "row"
    assert out.column("row").to_pylist() == list(range(500))


def test_score_engines_agree(
    cli: Cli, trained: TrainedModel, new_orders: pa.Table, tmp_path: Path
) -> None:
    src = tmp_path / "orders.parquet"
    pq.write_table(new_orders, src)
    etas = {}
    for engine in ("onnx", "numba", "compiled", "lightgbm"):
        dst = tmp_path / f"{engine}.parquet"
        report = score_json(
            cli, src, "--out", dst, "--registry", trained.registry, "--engine", engine
        )
        assert report["engine"] == engine
        out = pq.read_table(dst)
        check_scored(out, new_orders.column("order_id").to_pylist())
        etas[engine] = np.stack(
            [out.column(c).to_numpy() for c in ("eta_minutes", "eta_p10", "eta_p90")]
        )
    np.testing.assert_allclose(etas["onnx"], etas["lightgbm"], rtol=1e-4)
    for engine in ("numba", "compiled"):  # bit-exact with LightGBM
        np.testing.assert_array_equal(etas[engine], etas["lightgbm"], err_msg=engine)


def test_score_rejects_bad_rows_and_scores_the_rest(
    cli: Cli, trained: TrainedModel, new_orders: pa.Table, tmp_path: Path
) -> None:
    src, dst = tmp_path / "dirty.csv", tmp_path / "etas.parquet"
    text = io.BytesIO()
    pacsv.write_csv(new_orders, text)
    rows = list(csv.DictReader(io.StringIO(text.getvalue().decode())))
    bad = {
        3: ("pickup_lat", "95.5", "pickup_lat"),  # out-of-range latitude
        10: ("created_at", "yesterday noon", "created_at"),  # unparsable time
        11: ("dropoff_lon", "", "dropoff_lon"),  # missing required field
        42: ("vehicle_type", "", "vehicle_type"),  # missing categorical
        77: ("items_count", "three", "items_count"),  # text in a numeric column
        78: ("pickup_lon", "east", "pickup_lon"),
        499: ("dropoff_lat", "-90.5", "dropoff_lat"),
    }
    for i, (column, value, _) in bad.items():
        rows[i][column] = value
    rows[5]["weather"] = "hail"  # unknown level: mapped to 'unknown', still scored
    rows[6]["prep_minutes"] = ""  # optional numeric: may be absent
    with src.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)

    report = score_json(cli, src, "--out", dst, "--registry", trained.registry)
    assert report["rows_in"] == 500
    assert report["rows_rejected"] == len(bad)
    assert report["rows_scored"] + report["rows_rejected"] == report["rows_in"]
    rejects_path = tmp_path / "etas.rejects.csv"
    assert report["rejects"] == str(rejects_path)

    rejects = pacsv.read_csv(
        rejects_path,
        convert_options=pacsv.ConvertOptions(
            column_types={"order_id": pa.string(), "reason": pa.string()}
        ),
    )
    assert rejects.column_names == ["row", "order_id", "reason"]
    assert rejects.column("row").to_pylist() == sorted(bad)  # 0-based data row numbers
    ids = new_orders.column("order_id").to_pylist()
    assert rejects.column("order_id").to_pylist() == [ids[i] for i in sorted(bad)]
    for i, reason in zip(sorted(bad), rejects.column("reason").to_pylist(), strict=True):
        assert reason.startswith(bad[i][2] + ":"), reason
    reasons = dict(
        zip(rejects.column("row").to_pylist(), rejects.column("reason").to_pylist(), strict=True)
    )
    assert "not a number" in reasons[77] and "'three'" in reasons[77]
    assert "outside" in reasons[3] and "missing" in reasons[11]

    check_scored(pq.read_table(dst), [k for i, k in enumerate(ids) if i not in bad])


def test_score_with_explicit_rejects_path(
    cli: Cli, trained: TrainedModel, new_orders: pa.Table, tmp_path: Path
) -> None:
    t = set_column(
        new_orders, "pickup_lat", [None, *new_orders.column("pickup_lat").to_pylist()[1:]]
    )
    src = tmp_path / "in.parquet"
    pq.write_table(t, src)
    rejects = tmp_path / "sub" / "refused.csv"
    report = score_json(
        cli, src, "--out", tmp_path / "o.csv", "--rejects", rejects, "--registry", trained.registry
    )
    assert report["rows_rejected"] == 1
    assert pacsv.read_csv(rejects).column("reason").to_pylist() == ["pickup_lat: missing"]


def test_score_refuses_to_overwrite_its_input(
    cli: Cli, trained: TrainedModel, train_data: Path
) -> None:
    before = train_data.read_bytes()
    res = cli("score", train_data, "--out", train_data, "--registry", trained.registry)
    assert_one_line_error(res, "overwrite")
    assert train_data.read_bytes() == before


def test_score_into_an_unwritable_place_is_one_line_error(
    cli: Cli, trained: TrainedModel, new_orders: pa.Table, tmp_path: Path
) -> None:
    """The output is written on a thread while the next batch is predicted: a failure
    there still ends the command with one line naming the path."""
    src = tmp_path / "orders.parquet"
    pq.write_table(new_orders, src, row_group_size=100)
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    res = cli("score", src, "--out", blocker / "etas.parquet", "--registry", trained.registry,
              "--batch-rows", "64", "--quiet")  # fmt: skip
    assert_one_line_error(res, "cannot write", str(blocker / "etas.parquet"))


def test_score_without_a_model(cli: Cli, tmp_path: Path, train_data: Path) -> None:
    res = cli("score", train_data, "--out", tmp_path / "o.csv", "--registry", tmp_path / "empty")
    assert_one_line_error(res, "no model", "intellilog train")


# ---- bad input: one line, never a traceback ---------------------------------------------------


@pytest.fixture(scope="module")
def small_table() -> pa.Table:
    return generate(300, seed=4)


def _missing_column(d: Path, t: pa.Table) -> Path:
    pq.write_table(t.drop_columns(["pickup_lat"]), p := d / "missing.parquet")
    return p


def _list_column(d: Path, t: pa.Table) -> Path:
    lists = pa.array([[v] for v in t.column("pickup_lat").to_pylist()])
    pq.write_table(set_column(t, "pickup_lat", lists), p := d / "list.parquet")
    return p


def _struct_column(d: Path, t: pa.Table) -> Path:
    structs = pa.array([{"deg": v} for v in t.column("pickup_lat").to_pylist()])
    pq.write_table(set_column(t, "pickup_lat", structs), p := d / "struct.parquet")
    return p


def _categorical_list_column(d: Path, t: pa.Table) -> Path:
    lists = pa.array([[v] for v in t.column("zone").to_pylist()])
    pq.write_table(set_column(t, "zone", lists), p := d / "zone_list.parquet")
    return p


def _folder(d: Path, t: pa.Table) -> Path:
    (p := d / "folder.parquet").mkdir()
    return p


def _not_parquet(d: Path, t: pa.Table) -> Path:
    (p := d / "text.parquet").write_text("order_id,created_at\no1,2025-01-01T00:00:00Z\n")
    return p


def _empty_csv(d: Path, t: pa.Table) -> Path:
    (p := d / "empty.csv").write_bytes(b"")
    return p


def _empty_parquet(d: Path, t: pa.Table) -> Path:
    (p := d / "empty.parquet").write_bytes(b"")
    return p


def _header_only_csv(d: Path, t: pa.Table) -> Path:
    (p := d / "header.csv").write_text(",".join(t.column_names) + "\n")
    return p


def _no_rows_parquet(d: Path, t: pa.Table) -> Path:
    pq.write_table(t.slice(0, 0), p := d / "no_rows.parquet")
    return p


def _nonexistent(d: Path, t: pa.Table) -> Path:
    return d / "nope.parquet"


def _unsupported(d: Path, t: pa.Table) -> Path:
    (p := d / "orders.json").write_text("[]")
    return p


BAD_FILES: dict[str, tuple[Callable[[Path, pa.Table], Path], tuple[str, ...]]] = {
    "missing_column": (_missing_column, ("missing column", "pickup_lat")),
    "list_column": (_list_column, ("pickup_lat", "list")),
    "struct_column": (_struct_column, ("pickup_lat", "struct")),
    "categorical_list_column": (_categorical_list_column, ("zone",)),
    "folder": (_folder, ("folder",)),
    "not_parquet": (_not_parquet, ("text.parquet", "parquet")),
    "empty_csv": (_empty_csv, ("empty",)),
    "empty_parquet": (_empty_parquet, ("empty",)),
    "header_only_csv": (_header_only_csv, ("no rows",)),
    "no_rows_parquet": (_no_rows_parquet, ("no rows",)),
    "nonexistent": (_nonexistent, ("nope.parquet", "no such file")),
    "unsupported_extension": (_unsupported, ("unsupported file type",)),
}
COMMANDS = ("validate", "evaluate", "score", "train")


def _argv(command: str, path: Path, registry: Path, tmp_path: Path) -> list[str | Path]:
    if command == "validate":
        return ["validate", "--data", path]
    if command == "evaluate":
        return ["evaluate", "--data", path, "--registry", registry]
    if command == "score":
        return ["score", path, "--out", tmp_path / "out.csv", "--registry", registry, "--quiet"]
    return ["train", "--data", path, "--registry", tmp_path / "reg", "--dry-run"]


def _check_error(res: CliResult, command: str, mentions: tuple[str, ...]) -> None:
    if command == "train":  # train reports progress first; the error is its last line
        assert res.code == 2, res
        assert "Traceback" not in res.err
        errors = [line for line in res.err_lines if "error" in line]
        assert errors == [res.err_lines[-1]]
        line = errors[0]
        assert line.startswith("error: "), line
        for word in mentions:
            assert word.lower() in line.lower(), f"{word!r} not in {line!r}"
    else:
        assert_one_line_error(res, *mentions)
        assert res.code == 2


@pytest.mark.parametrize(
    ("case", "command"),
    [
        pytest.param(case, command, id=f"{case}-{command}")
        for case in BAD_FILES
        for command in COMMANDS
    ],
)
def test_bad_input_file_gives_one_line_error(
    cli: Cli,
    trained: TrainedModel,
    small_table: pa.Table,
    tmp_path: Path,
    case: str,
    command: str,
) -> None:
    make, mentions = BAD_FILES[case]
    folder = tmp_path / "in"
    folder.mkdir()
    path = make(folder, small_table)
    res = cli(*_argv(command, path, trained.registry, tmp_path))
    _check_error(res, command, mentions)
    assert not (tmp_path / "out.csv").exists()
    assert not (tmp_path / "reg").exists()


def test_score_key_column_of_lists_gives_one_line_error(
    cli: Cli, trained: TrainedModel, small_table: pa.Table, tmp_path: Path
) -> None:
    keys = pa.array([[k] for k in small_table.column("order_id").to_pylist()])
    src = tmp_path / "keys.parquet"
    pq.write_table(set_column(small_table, "order_id", keys), src)
    res = cli("score", src, "--out", tmp_path / "o.csv", "--registry", trained.registry, "--quiet")
    assert_one_line_error(res, "order_id")


BAD_SPECS: dict[str, tuple[str | None, tuple[str, ...]]] = {
    "not_toml": ('name = "x"\n[[[pickup\n', ("not valid toml",)),
    "missing_field": (
        'name = "x"\ntarget = "y"\n[pickup]\nlat = "a"\nlon = "b"\n'
        '[dropoff]\nlat = "c"\nlon = "d"\n',
        ("event_time",),
    ),
    "unknown_timezone": (
        DEFAULT_SPEC.read_text().replace('timezone = "Europe/Berlin"', 'timezone = "Mars/Olympus"'),
        ("time zone", "Mars/Olympus"),
    ),
    "unknown_field": ('colour = "red"\n' + DEFAULT_SPEC.read_text(), ("unknown field", "colour")),
    "nonexistent": (None, ("cannot read spec file",)),
}


@pytest.mark.parametrize("command", ["validate", "train", "score"])
@pytest.mark.parametrize("case", list(BAD_SPECS))
def test_bad_spec_gives_one_line_error(
    cli: Cli, trained: TrainedModel, tmp_path: Path, case: str, command: str
) -> None:
    text, mentions = BAD_SPECS[case]
    spec = tmp_path / "spec.toml"
    if text is not None:
        spec.write_text(text)
    argv: list[str | Path]
    if command == "score":
        argv = ["score", trained.data, "--out", tmp_path / "o.csv", "--registry", trained.registry]
    else:
        argv = [command, "--data", trained.data]
        if command == "train":
            argv += ["--registry", tmp_path / "reg", "--dry-run"]
    res = cli(*argv, "--spec", spec)
    assert_one_line_error(res, "spec.toml", *mentions)
    assert res.code == 2


# ---- the installed console script -----------------------------------------------------------


def test_console_script_entry_point(tmp_path: Path) -> None:
    script = Path(sys.executable).with_name("intellilog")
    assert script.is_file(), f"console script not installed next to {sys.executable}"
    env = {k: v for k, v in os.environ.items() if k != "INTELLILOG_DEBUG"}
    run = subprocess.run(
        [script, "--help"], capture_output=True, text=True, cwd=tmp_path, env=env, timeout=120
    )
    assert run.returncode == 0, run.stderr
    for command in ("generate", "validate", "train", "evaluate", "models", "score"):
        assert command in run.stdout
    run = subprocess.run(
        [script, "validate", "--data", "missing.csv"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=env,
        timeout=120,
    )
    assert run.returncode == 2
    assert run.stdout == ""
    assert run.stderr.splitlines() == ["error: missing.csv: no such file"]


# ---- a user spec with other column names -----------------------------------------------------


USER_SPEC = """\
name = "couriers"
key = "trip_id"
target = "duration_min"
event_time = "started"            # epoch seconds
timezone = "America/New_York"

[pickup]
lat = "from_lat"
lon = "from_lon"

[dropoff]
lat = "to_lat"
lon = "to_lon"

[categorical]
courier_team = []                 # learned from the data

[numeric]
parcels = { min = 1, max = 100 }
"""


def to_user_table(t: pa.Table, with_target: bool = True) -> pa.Table:
    """The generated deliveries under the user spec's names and types."""
    started = [
        int(datetime.fromisoformat(s).timestamp()) for s in t.column("created_at").to_pylist()
    ]
    cols = {
        "trip_id": t.column("order_id"),
        "started": pa.array(started, pa.int64()),
        "from_lat": t.column("pickup_lat"),
        "from_lon": t.column("pickup_lon"),
        "to_lat": t.column("dropoff_lat"),
        "to_lon": t.column("dropoff_lon"),
        "courier_team": pc.binary_join_element_wise("team-", t.column("zone"), ""),
        "parcels": t.column("items_count"),
    }
    if with_target:
        cols["duration_min"] = t.column("actual_minutes")
    return pa.table(cols)


def test_user_spec_train_and_score_end_to_end(cli: Cli, tmp_path: Path) -> None:
    spec = tmp_path / "couriers.toml"
    spec.write_text(USER_SPEC)
    train = to_user_table(generate(3000, seed=1))
    data = tmp_path / "trips.parquet"
    pq.write_table(train, data)
    registry = tmp_path / "registry"
    reg = ("--registry", registry)

    assert cli("validate", "--data", data, "--spec", spec).code == 0
    # the default spec does not fit these columns
    assert_one_line_error(cli("validate", "--data", data), "missing column")

    res = cli("train", "--data", data, "--spec", spec, *reg, "--promote", "--json", *TINY_TRAIN)
    assert res.code == 0, res.err
    assert res.json()["version"] == "v1"

    manifest = json.loads((registry / "versions" / "v1" / "manifest.json").read_text())
    assert manifest["spec"]["key"] == "trip_id"
    assert manifest["spec"]["timezone"] == "America/New_York"
    assert manifest["spec"]["categorical"] == [
        {"name": "courier_team", "levels": [], "unknown": "map"}
    ]
    counts = pc.value_counts(train.column("courier_team")).to_pylist()
    expected = {c["values"] for c in counts if c["counts"] >= 5}
    learned = manifest["levels"]["courier_team"]
    assert set(learned) == expected and len(learned) == len(expected)
    assert "parcels" in manifest["feature_names"]
    # epoch seconds are UTC instants: the holdout ends at the latest one
    latest = datetime.fromtimestamp(max(train.column("started").to_pylist()), UTC)
    assert manifest["metrics"]["holdout"]["to"] == latest.isoformat()

    # new trips, some with courier teams never seen in training
    new = to_user_table(generate(200, seed=5), with_target=False)
    teams = new.column("courier_team").to_pylist()
    teams[0], teams[1] = "team-Atlantis", "team-Nowhere"
    new = set_column(new, "courier_team", teams)
    twin = new.slice(0, 1)  # row 0 again with another unseen team
    twin = set_column(twin, "courier_team", ["team-Elsewhere"])
    twin = set_column(twin, "trip_id", ["twin"])
    src = tmp_path / "new_trips.csv"
    pacsv.write_csv(pa.concat_tables([new, twin]), src)
    dst = tmp_path / "etas.parquet"
    report = score_json(cli, src, "--out", dst, "--spec", spec, *reg)
    assert report["rows_in"] == report["rows_scored"] == 201
    assert report["rows_rejected"] == 0
    out = pq.read_table(dst)
    assert out.column_names == ["trip_id", "eta_minutes", "eta_p10", "eta_p90", "model_version"]
    assert out.column("trip_id").to_pylist() == [*new.column("trip_id").to_pylist(), "twin"]
    eta = out.column("eta_minutes").to_numpy()
    assert np.isfinite(eta).all()
    assert eta[0] == eta[-1]  # two unseen teams: the same 'unknown' level

    # scoring with the default spec against this model: refused, naming the spec hashes
    res = cli("score", src, "--out", tmp_path / "x.parquet", "--spec", DEFAULT_SPEC, *reg)
    line = assert_one_line_error(res, "spec", "hash", "couriers", "deliveries")
    assert manifest["spec_hash"] in line
    assert res.code == 2
    assert not (tmp_path / "x.parquet").exists()

    # the default delivery file does not fit the model's spec either
    orders = tmp_path / "orders.parquet"
    pq.write_table(generate(50, seed=6), orders)
    res = cli("score", orders, "--out", tmp_path / "y.parquet", "--quiet", *reg)
    assert_one_line_error(res, "missing column", "from_lat")
