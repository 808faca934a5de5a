"""``score --dask`` and ``train --dask`` on a real ``distributed.LocalCluster`` (2 worker
processes, started here): scores equal the single-machine ``score`` row for row and bit
for bit, with the same refused rows; a corrupted model is refused on the worker; a model
trained on the cluster passes the served check and matches single-machine quality.

The cluster is started once for the module; the CLI reaches it through its
``tcp://`` address, as it would reach a remote scheduler. Without dask installed the
tests are skipped, except with ``CI=true``, where that is a failure.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import lightgbm as lgb
import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest

from tests.conftest import TINY_TRAIN, TrainedModel

pytestmark = pytest.mark.slow

SCORE_ROWS = 20_000  # the CSVs are 2-3 MiB: a few 1 MiB blocks, one partition each
ROW_GROUP = 3_000  # seven row groups in the Parquet file


def _skip_or_fail(reason: str) -> None:
    if os.environ.get("CI", "").strip().lower() == "true":
        pytest.fail(f"{reason} (CI=true: the Dask tests may not be skipped)")
    pytest.skip(reason)


@pytest.fixture(scope="module")
def cluster(compiled_cache_dir: Path) -> Iterator[Any]:
    """A ``LocalCluster`` of 2 worker processes (1 thread each), through the product's
    own :func:`server.distributed.connect`. Started after the session's environment
    (compiled-engine cache, OMP threads) is set, which the workers inherit."""
    from server.distributed import has_dask

    if not has_dask():
        _skip_or_fail("dask and distributed are not installed: pip install 'intellilog[dask]'")
    from server.distributed import connect

    with connect("local:2") as client:
        client.wait_for_workers(2)
        yield client


@pytest.fixture(scope="module")
def address(cluster: Any) -> str:
    return str(cluster.scheduler.address)


def _dirty(table: pa.Table, with_key: bool) -> pa.Table:
    """The generated rows with a refused row every 97 (four kinds of fault)."""
    rows = table.drop_columns(["actual_minutes"]).to_pylist()
    for j, i in enumerate(range(5, len(rows), 97)):
        kind = j % 4
        if kind == 0:
            rows[i]["pickup_lat"] = 123.0  # out of range
        elif kind == 1:
            rows[i]["created_at"] = "yesterday at noon"  # not a time
        elif kind == 2:
            rows[i]["vehicle_type"] = None  # missing
        else:
            rows[i]["dropoff_lon"] = None
    out = pa.Table.from_pylist(rows)
    return out if with_key else out.drop_columns(["order_id"])


@pytest.fixture(scope="module")
def inputs(tmp_path_factory: pytest.TempPathFactory) -> dict[tuple[str, bool], Path]:
    """(kind, with_key) -> an input file with refused rows."""
    from training.synth import generate

    folder = tmp_path_factory.mktemp("dask-inputs")
    base = generate(SCORE_ROWS, seed=7)
    files: dict[tuple[str, bool], Path] = {}
    for with_key in (True, False):
        t = _dirty(base, with_key)
        name = "keyed" if with_key else "nokey"
        files["parquet", with_key] = folder / f"{name}.parquet"
        pq.write_table(t, files["parquet", with_key], row_group_size=ROW_GROUP)
        files["csv", with_key] = folder / f"{name}.csv"
        pacsv.write_csv(t, files["csv", with_key])
    return files


def _parts(folder: Path) -> pa.Table:
    """The parts of a folder, read in partition order."""
    names = sorted(folder.glob("part-*.parquet"))
    assert names, f"no parts in {folder}"
    return pa.concat_tables(pq.read_table(p) for p in names)


def _score_cli(cli: Callable[..., Any], registry: Path, src: Path, out: Path, *args: str) -> Any:
    """``intellilog score SRC --out OUT --registry REGISTRY --quiet ARGS...``"""
    return cli("score", src, "--out", out, "--registry", registry, "--quiet", *args)


def _single(cli: Callable[..., Any], registry: Path, src: Path, out: Path) -> tuple[pa.Table, Any]:
    res = _score_cli(cli, registry, src, out, "--batch-rows", "4000")
    assert res.code == 0, res.err
    rej = out.with_name(out.stem + ".rejects.csv")
    return pq.read_table(out), pacsv.read_csv(rej)


def _score_dask(cluster: Any, registry: Path, src: Path, out: Path, batch_rows: int = 4000) -> Any:
    """:func:`server.distributed.score_on_dask` of ``src`` into ``out``, without a progress bar."""
    from server.distributed import score_on_dask

    return score_on_dask(
        cluster, src, out, registry=registry, batch_rows=batch_rows, progress=False
    )


@pytest.mark.parametrize(
    ("kind", "with_key"),
    [("parquet", True), ("csv", True), ("parquet", False), ("csv", False)],
    ids=["parquet", "csv", "parquet-nokey", "csv-nokey"],
)
def test_scores_equal_single_machine_row_for_row(
    cli: Callable[..., Any],
    trained: TrainedModel,
    inputs: dict[tuple[str, bool], Path],
    address: str,
    tmp_path: Path,
    kind: str,
    with_key: bool,
) -> None:
    src = inputs[kind, with_key]
    want, want_rej = _single(cli, trained.registry, src, tmp_path / "single.parquet")
    out = tmp_path / "scored"
    res = _score_cli(
        cli, trained.registry, src, out, "--json", "--batch-rows", "4000", "--dask", address
    )
    assert res.code == 0, res.err
    report = res.json()
    assert report["dask"]["workers"] == 2
    # one partition per row group; one per 1 MiB block of whole lines (files of 2-3 MiB)
    parts = report["dask"]["partitions"]
    assert parts == 7 if kind == "parquet" else parts == -(-src.stat().st_size // (1 << 20))
    got = _parts(out)
    assert got.schema == want.schema
    assert got.column_names[0] == ("order_id" if with_key else "row")
    assert got.column(0).to_pylist() == want.column(0).to_pylist()  # same rows, same order
    for col in ("eta_minutes", "eta_p10", "eta_p90"):  # bit for bit
        a = got.column(col).to_numpy()
        b = want.column(col).to_numpy()
        assert np.array_equal(a.view(np.int64), b.view(np.int64)), col
    assert got.column("model_version").to_pylist() == want.column("model_version").to_pylist()
    # the same refused rows, with file-wide row numbers and the same reasons
    rej = _parts(out.with_name("scored.rejects"))
    assert want_rej.num_rows == len(range(5, SCORE_ROWS, 97))
    assert rej.to_pylist() == want_rej.select(rej.column_names).to_pylist()
    assert report["rows_in"] == SCORE_ROWS
    assert report["rows_rejected"] == want_rej.num_rows
    assert report["rows_scored"] == want.num_rows == SCORE_ROWS - want_rej.num_rows
    assert json.loads((out / "_SUCCESS").read_text())["rows_in"] == SCORE_ROWS


def test_a_folder_is_scored_as_its_files_one_after_another(
    cli: Callable[..., Any],
    trained: TrainedModel,
    inputs: dict[tuple[str, bool], Path],
    cluster: Any,
    tmp_path: Path,
) -> None:
    """Files in name order, a Parquet and a CSV; rows (of refused rows) count across them."""
    folder = tmp_path / "in"
    folder.mkdir()
    shutil.copy(inputs["parquet", True], folder / "a.parquet")
    shutil.copy(inputs["csv", True], folder / "b.csv")
    (folder / "notes.txt").write_text("not an input")
    a, a_rej = _single(cli, trained.registry, folder / "a.parquet", tmp_path / "a.parquet")
    b, b_rej = _single(cli, trained.registry, folder / "b.csv", tmp_path / "b.parquet")
    report = _score_dask(cluster, trained.registry, folder, tmp_path / "out")
    assert report.score.rows_in == 2 * SCORE_ROWS
    assert _parts(tmp_path / "out").equals(pa.concat_tables([a, b]))
    rej = _parts(tmp_path / "out.rejects")
    b_rows = [r + SCORE_ROWS for r in b_rej.column("row").to_pylist()]
    assert rej.column("row").to_pylist() == a_rej.column("row").to_pylist() + b_rows


def test_rerun_replaces_every_part_of_an_earlier_run(
    trained: TrainedModel,
    inputs: dict[tuple[str, bool], Path],
    cluster: Any,
    tmp_path: Path,
) -> None:
    src, out = inputs["parquet", True], tmp_path / "scored"
    first = _score_dask(cluster, trained.registry, src, out, batch_rows=1000)
    pq.write_table(  # the folder also has three row groups' worth of parts of another file
        pa.table({"x": [1]}), out / "part-00042.parquet"
    )
    (out / ".part-00001.parquet.abc.tmp").write_bytes(b"left by a killed worker")
    again = _score_dask(cluster, trained.registry, src, out, batch_rows=1000)
    assert first.partitions == again.partitions == 7
    names = sorted(p.name for p in out.iterdir())
    assert names == ["_SUCCESS"] + [f"part-{i:05d}.parquet" for i in range(7)]
    rejects = sorted(p.name for p in (tmp_path / "scored.rejects").iterdir())
    assert rejects == names[1:]  # every row group has refused rows
    assert _parts(out).num_rows == again.score.rows_scored


def test_corrupted_model_is_refused_on_the_worker(
    cli: Callable[..., Any],
    registry_copy: Path,
    inputs: dict[tuple[str, bool], Path],
    address: str,
    tmp_path: Path,
) -> None:
    manifest = json.loads((registry_copy / "versions" / "v1" / "manifest.json").read_text())
    victim = sorted(manifest["files"])[0]
    with (registry_copy / "versions" / "v1" / victim).open("ab") as f:
        f.write(b"\0")
    out = tmp_path / "scored"
    res = _score_cli(cli, registry_copy, inputs["parquet", True], out, "--dask", address)
    assert res.code == 2
    assert "Traceback" not in res.err
    last = res.err_lines[-1]
    assert last.startswith("error: on Dask worker tcp://127.0.0.1:"), last
    assert f"model v1 is corrupted: file {victim}" in last
    assert not out.exists() or not any(out.glob("part-*"))


def test_csv_with_line_breaks_in_values_across_blocks_is_refused_clearly(
    trained: TrainedModel,
    inputs: dict[tuple[str, bool], Path],
    cluster: Any,
    tmp_path: Path,
) -> None:
    """Blocks are cut at line ends; a quoted value holding a line break that crosses one
    is a one-line error that says so, never silently wrong rows."""
    from kernels.errors import DataError

    t = pq.read_table(inputs["parquet", True])
    notes = ["see\n" * 20] * t.num_rows  # most line ends are inside a quoted value
    src = tmp_path / "notes.csv"
    pacsv.write_csv(t.append_column("note", pa.array(notes)), src)
    with pytest.raises(DataError, match="a quoted value with a line break") as e:
        _score_dask(cluster, trained.registry, src, tmp_path / "out")
    assert str(e.value).startswith(f"{src}: ") and "\n" not in str(e.value)
    assert not (tmp_path / "out" / "_SUCCESS").exists()


def test_bad_addresses_are_one_line_errors(cli: Callable[..., Any], tmp_path: Path) -> None:
    for bad, why in (
        ("local:0", "local:N needs a whole number N >= 1"),
        ("127.0.0.1:8786", "use local:N"),
        ("tcp://host", "expected tcp://HOST:PORT"),
    ):
        res = cli("score", tmp_path / "in.parquet", "--out", tmp_path / "o", "--dask", bad)
        assert res.code == 2 and len(res.err_lines) == 1, res.err
        assert res.err.startswith(f"error: --dask={bad!r}: ") and why in res.err
    res = cli("train", "--data", tmp_path / "in.parquet", "--dry-run", "--dask", "local:x")
    assert res.code == 2 and "--dask='local:x': local:N needs" in res.err


def test_train_on_dask_publishes_a_served_model_of_single_machine_quality(
    cli: Callable[..., Any],
    trained: TrainedModel,
    address: str,
    tmp_path: Path,
) -> None:
    from server.models import load_model
    from training.registry import Registry

    registry = tmp_path / "registry"
    res = cli(
        "train", "--data", trained.data, "--registry", registry, "--json", *TINY_TRAIN,
        "--dask", address,
    )  # fmt: skip
    assert res.code == 0, res.err
    out = res.json()
    assert "served check on" in res.err and "Dask workers" in res.err
    reg = Registry(registry)
    manifest = reg.manifest(out["version"])
    assert manifest["trainer"] == "lightgbm.dask data-parallel on 2 workers"
    model = load_model(reg, out["version"], threads=1)
    assert model.version == out["version"]
    mae, single = out["metrics"]["model"]["mae"], trained.result["metrics"]["model"]["mae"]
    assert abs(mae - single) <= 0.05 * single, (mae, single)
    for name, best in manifest["best_iterations"].items():
        assert 1 <= best <= int(TINY_TRAIN[1]), name


@pytest.mark.parametrize(
    ("objective", "alpha"), [("huber", None), ("quantile", 0.9)], ids=["huber", "quantile"]
)
def test_best_iteration_is_what_lightgbm_early_stopping_keeps(
    objective: str, alpha: float | None
) -> None:
    from server.distributed import best_iteration
    from training.train import TrainSettings, _params

    rng = np.random.default_rng(3)
    X = rng.normal(size=(1200, 4))
    y = 10 + 3 * X[:, 0] + rng.normal(scale=4.0, size=1200)
    s = TrainSettings(learning_rate=0.3, early_stopping=5, max_rounds=200, min_data_in_leaf=5)
    params = _params(s, objective, 15, alpha, delta=4.0)
    dtrain = lgb.Dataset(X[:800], y[:800], free_raw_data=False)
    dvalid = lgb.Dataset(X[800:], y[800:], reference=dtrain)
    stopped = lgb.train(
        params, dtrain, 200, valid_sets=[dvalid], callbacks=[lgb.early_stopping(5, verbose=False)]
    )
    full = lgb.train(params, dtrain, 200)
    assert stopped.best_iteration < full.current_iteration()  # early stopping did stop
    assert best_iteration(full, X[800:], y[800:], params, 5) == stopped.best_iteration


def test_score_without_dask_installed_says_which_extra(
    cli: Callable[..., Any], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    import sys

    monkeypatch.setitem(sys.modules, "distributed", None)  # import fails as when missing
    res = cli("score", tmp_path / "in.parquet", "--out", tmp_path / "o", "--dask", "local:2")
    assert res.code == 2
    assert res.err_lines[-1].startswith("error: install `intellilog[dask]` for --dask"), res.err


def test_local_cluster_scores_and_shuts_down(
    cli: Callable[..., Any],
    trained: TrainedModel,
    inputs: dict[tuple[str, bool], Path],
    cluster: Any,
    tmp_path: Path,
) -> None:
    """``--dask local:1`` starts its own cluster (one worker process) and stops it."""
    import multiprocessing

    src = inputs["csv", False]
    want, _ = _single(cli, trained.registry, src, tmp_path / "single.parquet")
    before = {p.pid for p in multiprocessing.active_children()}
    res = _score_cli(
        cli, trained.registry, src, tmp_path / "scored", "--batch-rows", "4000", "--dask", "local:1"
    )
    assert res.code == 0, res.err
    blocks = -(-src.stat().st_size // (1 << 20))
    assert "on Dask (tcp://" in res.err and f": 1 worker, {blocks} partitions" in res.err
    assert _parts(tmp_path / "scored").equals(want)
    assert {p.pid for p in multiprocessing.active_children()} <= before
    shutil.rmtree(tmp_path / "scored")
