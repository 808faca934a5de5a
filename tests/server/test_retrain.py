"""``intellilog retrain`` and ``intellilog runs``: gates, decisions, the run log, MLflow,
the run-log gauges, and the schedule files (cron line, dvc.yaml).

The production model is trained once per module on eight weeks of generated deliveries;
the week after them (ending a day ago) is logged into a store as served predictions with
their feedback, as the server would have: unchanged (no shift), with every actual 1.5 ×
longer (slower traffic from that week on: a shift), or with impossible durations.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pytest

from tests.conftest import TINY_TRAIN, CliResult, run_main

DAY = 86_400.0
WEEKS = 9  # eight weeks to train production, the last one logged as served
ROWS = 24_000


@dataclass
class World:
    registry: Path  # production v1 trained on the first eight weeks
    window: list[dict[str, Any]]  # the last week's deliveries (with actual_minutes)
    now: float


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> World:
    from training.synth import generate, write_table

    root = tmp_path_factory.mktemp("retrain")
    now = time.time()
    start = datetime.fromtimestamp(now - (WEEKS * 7 + 1) * DAY, UTC).date()
    table = generate(ROWS, seed=5, start=start.isoformat(), weeks=WEEKS)
    t = np.array(
        [datetime.fromisoformat(s).timestamp() for s in table.column("created_at").to_pylist()]
    )
    cut = now - 8 * DAY
    train_file = root / "train.parquet"
    write_table(table.filter(pa.array(t < cut)), train_file)
    window = table.filter(pa.array(t >= cut)).to_pylist()
    registry = root / "registry"
    cwd = os.getcwd()
    try:
        os.chdir(root)
        code = run_main(
            "train", "--data", train_file, "--registry", registry, "--promote", *TINY_TRAIN
        )
    finally:
        os.chdir(cwd)
    assert code == 0
    return World(registry, window, now)


def _log(
    url: str,
    rows: list[dict[str, Any]],
    now: float,
    *,
    slower: float = 1.0,
    impossible_every: int = 0,
    bad_inputs: int = 0,
) -> int:
    """Log ``rows`` as served predictions with feedback; return how many feedback rows
    completed in the default 7-day window (the labelled rows ``retrain`` will see)."""
    from server.store import FeedbackRow, PredictionRow, open_store

    preds, fb = [], []
    for i, r in enumerate(rows):
        r = dict(r)
        actual = float(r.pop("actual_minutes")) * slower
        if impossible_every and i % impossible_every == 0:
            actual = 0.5  # under the spec's 1-minute minimum
        order = f"o{i}"
        r["order_id"] = order
        created = datetime.fromisoformat(r["created_at"]).timestamp()
        if i >= len(rows) - bad_inputs - 200 and i < len(rows) - 200:
            r["pickup_lat"] = 999.0  # no longer a valid delivery
        preds.append(
            PredictionRow(
                row_id=f"{order}:0",
                request_id=f"req-{i}",
                order_id=order,
                tenant="default",
                model_version="v1",
                arm="production",
                inputs=json.dumps(r),
                features=b"\x00\x00\x80\x3f",
                eta=30.0,
                p10=20.0,
                p90=40.0,
                created_at=created,
            )
        )
        done = created + actual * 60.0
        if done < now:
            fb.append(
                FeedbackRow(
                    order_id=order,
                    tenant="default",
                    actual_minutes=actual,
                    completed_at=done,
                    received_at=done + 30.0,
                )
            )

    async def write() -> None:
        async with await open_store(url) as store:
            await store.write_predictions(preds)
            await store.write_feedback(fb)

    asyncio.run(write())
    return sum(f.completed_at >= now - 7 * DAY for f in fb)


@pytest.fixture
def env(
    cli: Callable[..., CliResult], world: World, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> dict[str, Any]:
    """A private registry copy and SQLite database, set as the CLI's settings."""
    reg = tmp_path / "registry"
    shutil.copytree(world.registry, reg)
    url = f"sqlite:///{tmp_path / 'intellilog.db'}"
    monkeypatch.setenv("MODEL_ARTIFACT_PATH", str(reg))
    monkeypatch.setenv("DATABASE_URL", url)
    return {"registry": reg, "url": url, "run_log": reg / "runs.jsonl"}


def _records(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


# ---- the rows: decoded as the server decodes them -------------------------------------------


def test_logged_inputs_become_the_servers_features(world: World) -> None:
    """Rows built from logged JSON give, through training's reader, exactly the feature
    matrix the server computes from the same request structs."""
    import msgspec

    from kernels.features import Pipeline
    from server.models import load_model
    from training.io import to_columns
    from training.labelled import from_inputs
    from training.registry import Registry

    model = load_model(Registry(world.registry), "production", engine="lightgbm")
    spec = model.pipe.spec
    rows = [dict(r) for r in world.window[:300]]
    for i, r in enumerate(rows):
        if i % 3 == 0:  # naive local time, padded and upper-case categories
            r["created_at"] = r["created_at"][:19]
            r["vehicle_type"] = f"  {r['vehicle_type'].upper()} "
        if i % 5 == 0:
            r["prep_minutes"] = None
    texts = [json.dumps({k: v for k, v in r.items() if k != "actual_minutes"}) for r in rows]
    texts.append('{"order_id": "bad", "pickup_lat": 500}')
    lab = from_inputs(
        texts, [r["actual_minutes"] for r in rows] + [10.0], [f"o{i}" for i in range(301)], spec
    )
    assert lab.refused == 1 and lab.examples[0]["where"] == "o300"
    assert "pickup_lat" in lab.examples[0]["reason"] or "required" in lab.examples[0]["reason"]
    conv = to_columns(lab.table, model.pipe, with_target=True)
    assert conv.n_valid == 300
    served = Pipeline(spec, model.pipe.levels)
    dec = msgspec.json.Decoder(spec.request_struct)
    items = [dec.decode(t) for t in texts[:300]]
    np.testing.assert_array_equal(
        model.pipe.matrix(conv.columns), served.matrix(served.columns(items))
    )
    np.testing.assert_allclose(conv.target, [r["actual_minutes"] for r in rows])


def test_rows_digest_depends_on_the_rows_only(world: World, tmp_path: Path) -> None:
    from kernels.spec import default_spec
    from training.io import read_table
    from training.labelled import canonical_table, rows_digest
    from training.synth import write_table

    spec = default_spec()
    t = pa.Table.from_pylist(world.window[:200])
    a, b = tmp_path / "a.parquet", tmp_path / "b.csv"
    write_table(t, a)
    write_table(t, b)
    da = rows_digest(canonical_table(read_table(a, spec), spec, "a").table)
    db = rows_digest(canonical_table(read_table(b, spec), spec, "b").table)
    assert da == db
    changed = t.set_column(
        t.column_names.index("actual_minutes"),
        "actual_minutes",
        pa.array([x + 0.01 for x in t.column("actual_minutes").to_pylist()]),
    )
    write_table(changed, a)
    assert rows_digest(canonical_table(read_table(a, spec), spec, "a").table) != da


# ---- the gates -------------------------------------------------------------------------------


def test_under_min_samples_is_skipped(
    cli: Callable[..., CliResult], env: dict, world: World
) -> None:
    n = _log(env["url"], world.window[-400:], world.now)
    res = cli("retrain", "--min-samples", "100000")
    assert res.code == 0, res.err
    assert "warning: retraining skipped" in res.err and "100000" in res.err
    (rec,) = _records(env["run_log"])
    assert rec["outcome"] == "skipped"
    assert rec["data"]["rows"]["labelled"] == n
    assert rec["params"]["min_samples"] == 100000
    assert sorted(os.listdir(env["registry"] / "versions")) == ["v1"]  # nothing trained
    listed = cli("runs", "list", "--json")
    assert [r["run_id"] for r in listed.json()] == [rec["run_id"]]


def test_bad_data_is_refused(cli: Callable[..., CliResult], env: dict, world: World) -> None:
    _log(env["url"], world.window, world.now, impossible_every=3)
    res = cli("retrain")
    assert res.code == 3, res.err
    assert "retraining refused" in res.err and "impossible_durations" in res.err
    (rec,) = _records(env["run_log"])
    assert rec["outcome"] == "refused"
    assert rec["quality"]["passed"] is False
    assert rec["quality"]["threshold"] == 80.0
    bad = {c["name"] for c in rec["quality"]["checks"] if not c["passed"]}
    assert "impossible_durations" in bad
    assert sorted(os.listdir(env["registry"] / "versions")) == ["v1"]
    shown = cli("runs", "show", rec["run_id"])
    assert shown.code == 0 and "refused" in shown.out and "quality:" in shown.out
    # the server's gauges read the same record: the monitor over the real run log
    from prometheus_client import REGISTRY

    from server.monitoring.retrain import RetrainMonitor

    assert RetrainMonitor(env["run_log"]).refresh() is True
    runs = REGISTRY.get_sample_value("intellilog_retrain_runs", {"outcome": "refused"})
    last = REGISTRY.get_sample_value(
        "intellilog_retrain_last_run_timestamp_seconds", {"outcome": "refused"}
    )
    assert (runs, last) == (1.0, rec["ended_at"])


def test_quality_threshold_setting_is_the_gate(
    cli: Callable[..., CliResult], env: dict, world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The same bad data passes a gate set to 0 (QUALITY_THRESHOLD) and is then trained."""
    _log(env["url"], world.window, world.now, impossible_every=3)
    monkeypatch.setenv("QUALITY_THRESHOLD", "0")
    res = cli("retrain", "--min-samples", "50", "--lookback-days", "7")
    assert res.code == 0, res.err
    (rec,) = _records(env["run_log"])
    assert rec["quality"]["threshold"] == 0.0 and rec["outcome"] in ("archived", "candidate")


def test_no_shift_is_archived_then_scheduled(
    cli: Callable[..., CliResult], env: dict, world: World, tmp_path: Path
) -> None:
    from training.registry import Registry

    _log(env["url"], world.window, world.now, bad_inputs=7)
    extra = tmp_path / "extra.parquet"
    from training.synth import write_table

    write_table(pa.Table.from_pylist(world.window[:500]), extra)
    res = cli("retrain", "--json", "--data", extra)
    assert res.code == 0, res.err
    rec = res.json()
    assert rec["outcome"] == "archived", rec["reason"]
    assert rec["reason"].startswith("not better")
    rows = rec["data"]["rows"]
    assert rows["undecodable"] == 7 and "no longer decode" in res.err
    assert rows["extra"] == 500
    assert rows["used"] == rows["window"] + 500 == rows["labelled"] - 7 + 500
    new, prod = rec["versions"]["new"], rec["versions"]["production"]
    assert (new, prod) == ("v2", "v1")
    m = rec["metrics"]
    assert m["new"]["rows"] == m["production"]["rows"] == rows["holdout"] > 0
    assert m["new"]["mae"] >= m["production"]["mae"] * (1 - 0.05)
    assert rec["drift"]["verdict"] in ("ok", "drift", "insufficient data")
    reg = Registry(env["registry"])
    assert new in reg.archived() and "not better" in reg.archived()[new]["reason"]
    assert "candidate" not in reg.aliases()
    # the data as used is kept, and its digest is the one recorded
    from kernels.spec import default_spec
    from training.io import read_table
    from training.labelled import rows_digest

    used = read_table(rec["data"]["path"], default_spec())
    assert used.num_rows == rows["used"] and rows_digest(used) == rec["data"]["sha256"]
    assert reg.manifest(new)["data"]["path"] == rec["data"]["path"]

    # a plain run within the lookback is skipped by the schedule; --emergency is not
    again = cli("retrain")
    assert again.code == 0
    assert _records(env["run_log"])[-1]["outcome"] == "skipped"
    assert "schedule" in _records(env["run_log"])[-1]["reason"]
    urgent = cli("retrain", "--emergency")
    assert urgent.code == 0, urgent.err
    last = _records(env["run_log"])[-1]
    assert last["outcome"] == "archived" and last["params"]["emergency"] is True
    assert last["versions"]["new"] == "v3"
    listed = cli("runs", "list")
    assert [ln.split()[2] for ln in listed.out.splitlines()[1:]] == [
        "archived",
        "skipped",
        "archived",
    ]


def test_no_production_model_is_a_failed_run(
    cli: Callable[..., CliResult], env: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    empty = tmp_path / "empty-registry"
    res = cli("retrain", "--registry", empty)
    assert res.code == 2
    assert res.err.startswith("error: ") and len(res.err.strip().splitlines()) == 1
    (rec,) = _records(empty / "runs.jsonl")
    assert rec["outcome"] == "failed" and rec["error"]
    monkeypatch.setenv("RUN_LOG", str(tmp_path / "elsewhere" / "log.jsonl"))
    cli("retrain", "--registry", empty)
    assert _records(tmp_path / "elsewhere" / "log.jsonl")[0]["outcome"] == "failed"


def test_bad_flag_is_one_line(cli: Callable[..., CliResult], env: dict) -> None:
    res = cli("retrain", "--lookback-days", "0")
    assert res.code == 2 and res.err.strip() == (
        "error: --lookback-days=0.0: days within (0, 3650]"
    )
    missing = cli("runs", "show", "run-nope")
    assert missing.code == 2 and "no run 'run-nope'" in missing.err


# ---- a shift: the new model wins (PostgreSQL), an experiment starts, MLflow logs it ----------


def _mlflow_or_skip() -> Any:
    try:
        import mlflow
    except ImportError:
        from tests.pgserver import skip_or_fail

        skip_or_fail("mlflow is not installed: pip install 'intellilog[mlflow]'")
    return mlflow


def test_shift_starts_an_experiment(
    cli: Callable[..., CliResult],
    env: dict,
    world: World,
    postgres: Any,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from server.store import open_store
    from training.registry import Registry

    mlflow = _mlflow_or_skip()
    url = postgres.new_database()
    monkeypatch.setenv("DATABASE_URL", url)
    tracking = f"sqlite:///{tmp_path / 'mlflow' / 'mlflow.db'}"
    (tmp_path / "mlflow").mkdir()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", tracking)
    monkeypatch.setenv("AB_MODE", "ab")
    monkeypatch.setenv("AB_SPLIT", "0.2")
    monkeypatch.setenv("AB_DURATION_HOURS", "72")
    _log(url, world.window, world.now, slower=1.5)
    res = cli("retrain", "--json")
    assert res.code == 0, res.err
    rec = res.json()
    assert rec["outcome"] == "candidate", rec["reason"]
    new = rec["versions"]["new"]
    assert rec["versions"]["candidate"] == new
    m = rec["metrics"]
    assert m["new"]["mae"] < m["production"]["mae"] * (1 - 0.05)
    assert rec["improvement"] > 0.05
    reg = Registry(env["registry"])
    assert reg.aliases() == {"production": "v1", "candidate": new}

    async def experiments() -> list[Any]:
        async with await open_store(url) as store:
            return await store.experiments("default")

    (exp,) = asyncio.run(experiments())
    assert exp.status == "running" and exp.candidate_version == new
    assert (exp.mode, exp.split, exp.planned_hours) == ("ab", 0.2, 72.0)
    assert exp.experiment_id == rec["experiment"]["experiment_id"]
    assert exp.options["started_by"] == "retrain" and rec["run_id"] in exp.options["reason"]

    # MLflow: params, metrics, lineage tags, reports and the model files
    client = mlflow.MlflowClient(tracking_uri=tracking)
    run = client.get_run(rec["mlflow"]["run_id"])
    assert run.data.tags["intellilog.data_sha256"] == rec["data"]["sha256"]
    assert run.data.tags["intellilog.registry_version"] == new
    assert run.data.tags["intellilog.production_version"] == "v1"
    assert run.data.tags["intellilog.window_since"] == rec["data"]["window"]["since"]
    assert run.data.params["min_samples"] == "100" and run.data.params["ab.mode"] == "ab"
    assert run.data.metrics["new.mae"] == pytest.approx(m["new"]["mae"])
    assert run.data.metrics["production.mae"] == pytest.approx(m["production"]["mae"])
    arts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"run.json", "quality.json", "drift.json", "model"} <= arts
    model_files = {a.path for a in client.list_artifacts(run.info.run_id, "model")}
    assert "model/manifest.json" in model_files
    exp_mlflow = client.get_experiment_by_name("intellilog-retrain/default")
    found = client.search_runs([exp_mlflow.experiment_id])
    assert [r.info.run_id for r in found] == [run.info.run_id]
    assert (tmp_path / "mlflow" / "mlflow-artifacts").is_dir()

    # a second winner while the experiment runs: archived, no second experiment
    again = cli("retrain", "--emergency", "--json")
    assert again.code == 0, again.err
    rec2 = again.json()
    assert rec2["outcome"] == "archived" and exp.experiment_id in rec2["reason"]
    assert rec2["versions"]["new"] in reg.archived()
    assert len(asyncio.run(experiments())) == 1
    assert reg.aliases()["candidate"] == new


# ---- the run log as gauges -------------------------------------------------------------------


def test_run_log_gauges(tmp_path: Path) -> None:
    from prometheus_client import generate_latest

    from server.monitoring.retrain import RetrainMonitor
    from server.runs import RunLog

    path = tmp_path / "runs.jsonl"
    mon = RetrainMonitor(path)
    assert mon.refresh() is False  # no log: nothing read, nothing exported
    log = RunLog(path)
    for i, outcome in enumerate(("archived", "refused", "refused", "skipped")):
        log.append(
            {
                "run_id": f"r{i}",
                "outcome": outcome,
                "started_at": 1000.0 + i * 100,
                "ended_at": 1050.0 + i * 100,
            }
        )
    with path.open("a") as f:
        f.write("{half a line\n")
    assert mon.refresh() is True
    assert mon.refresh() is False  # unchanged file: not read again
    text = generate_latest().decode()
    assert 'intellilog_retrain_runs{outcome="refused"} 2.0' in text
    assert 'intellilog_retrain_runs{outcome="failed"} 0.0' in text
    assert 'intellilog_retrain_last_run_timestamp_seconds{outcome="refused"} 1250.0' in text
    assert 'intellilog_retrain_last_run_timestamp_seconds{outcome="archived"} 1050.0' in text
    assert "intellilog_retrain_first_run_timestamp_seconds 1000.0" in text


def test_run_log_of_a_bucket_registry_is_one_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``retrain`` (the registry's local root), ``runs`` and the server's monitor (the
    MODEL_ARTIFACT_PATH setting) name the same run log for a registry in a bucket."""
    from server.runs import run_log_path
    from training.registry import Registry

    monkeypatch.setenv("INTELLILOG_REGISTRY_CACHE", str(tmp_path / "cache"))
    url = "memory://retrain-runs/models"
    expected = Registry(url).root / "runs.jsonl"
    assert run_log_path("", url) == run_log_path("", url + "/") == expected
    assert run_log_path("", Registry(url).root) == expected
    assert run_log_path(str(tmp_path / "r.jsonl"), url) == tmp_path / "r.jsonl"


# ---- the schedule files ----------------------------------------------------------------------


def test_cron_line_runs_retrain() -> None:
    import shlex

    from server.cli import build_parser
    from tests.conftest import ROOT

    text = (ROOT / "docs" / "runbooks" / "retraining.md").read_text()
    block = text.split("```crontab", 1)[1].split("```", 1)[0]
    (line,) = [ln for ln in block.splitlines() if ln.strip() and not ln.startswith("#")]
    fields = line.split(None, 5)
    assert fields[:5] == ["15", "3", "*", "*", "*"]  # daily; trains once per lookback
    argv = shlex.split(fields[5].split("&&", 1)[1].split(">>", 1)[0])
    assert argv[0].endswith("intellilog")
    assert build_parser().parse_args(argv[1:]).command == "retrain"


def test_dvc_pipeline_dry_run(tmp_path: Path) -> None:
    """dvc.yaml's stages run the real CLI commands in order (``dvc repro --dry --force``:
    every stage, inputs or not), and
    every command parses with the real command line."""
    import shlex

    import yaml

    from server.cli import build_parser
    from tests.conftest import ROOT

    dvc = shutil.which("dvc") or str(Path(os.sys.executable).parent / "dvc")
    if not Path(dvc).is_file():
        from tests.pgserver import skip_or_fail

        skip_or_fail("dvc is not installed: pip install 'intellilog[dev]'")
    doc = yaml.safe_load((ROOT / "dvc.yaml").read_text())
    assert list(doc["stages"]) == ["generate", "validate", "train", "evaluate"]
    for name, stage in doc["stages"].items():
        parts = [shlex.split(c.split(">", 1)[0]) for c in stage["cmd"].split("&&")]
        ours = [p for p in parts if p[0] == "intellilog"]
        assert ours, f"stage {name} runs no intellilog command"
        for argv in ours:
            assert build_parser().parse_args(argv[1:]).command == name or name == "evaluate"
    work = tmp_path / "repo"
    work.mkdir()
    shutil.copy(ROOT / "dvc.yaml", work / "dvc.yaml")
    env = {**os.environ, "DVC_NO_ANALYTICS": "1", "HOME": str(tmp_path)}
    subprocess.run([dvc, "init", "--no-scm", "-q"], cwd=work, check=True, env=env, timeout=120)
    out = subprocess.run(
        [dvc, "repro", "--dry", "--force"],
        cwd=work,
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    order = [out.stdout.find(f"Running stage '{s}'") for s in doc["stages"]]
    assert all(i >= 0 for i in order) and order == sorted(order), out.stdout
    assert "intellilog generate" in out.stdout and "intellilog evaluate" in out.stdout
