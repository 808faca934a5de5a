"""MLflow logging of one retraining run (``MLFLOW_TRACKING_URI``, extra ``mlflow``).

The run log (``runs.jsonl``) is the record the product relies on; MLflow is a mirror of
it for teams that browse experiments there. One MLflow run per retraining run, in the
experiment ``intellilog-retrain/<tenant>``:

* params: the run's parameters (window, thresholds, experiment settings, ...);
* metrics: the new and the production version on the same holdout rows (``new.mae``,
  ``production.mae``, ...), the data-quality score, the drift score, the row counts;
* artifacts: ``run.json`` (the whole record), ``quality.json``, ``drift.json`` and the new
  version's model files under ``model/``;
* tags for lineage: ``intellilog.data_sha256``, ``intellilog.window_since`` /
  ``intellilog.window_until``, ``intellilog.registry_version`` (the new version),
  ``intellilog.production_version`` (the version it was compared against),
  ``intellilog.outcome``, ``intellilog.run_id``, ``intellilog.tenant``.

A ``sqlite:///PATH`` tracking store keeps its artifacts beside the database file
(``<folder>/mlflow-artifacts``) instead of MLflow's default ``./mlruns`` of whatever
folder the job ran in. Uses :class:`mlflow.MlflowClient` only: no global MLflow state.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from training.optional import mlflow as import_mlflow

__all__ = ["experiment_name", "log_run"]


def experiment_name(tenant: str) -> str:
    return f"intellilog-retrain/{tenant}"


def _artifact_location(uri: str) -> str | None:
    if uri.startswith("sqlite:///") and ":memory:" not in uri:
        db = Path(uri[len("sqlite:///") :])
        return (db.resolve().parent / "mlflow-artifacts").as_uri()
    return None


def _flat(prefix: str, value: Any) -> Iterator[tuple[str, Any]]:
    if isinstance(value, Mapping):
        for k, v in value.items():
            yield from _flat(f"{prefix}.{k}" if prefix else str(k), v)
    else:
        yield prefix, value


def _metrics(record: Mapping[str, Any]) -> dict[str, float]:
    out: dict[str, float] = {}
    for who in ("new", "production"):
        for k, v in (record.get("metrics", {}).get(who) or {}).items():
            if isinstance(v, int | float) and not isinstance(v, bool):
                out[f"{who}.{k}"] = float(v)
    q = record.get("quality") or {}
    if isinstance(q.get("score"), int | float):
        out["quality.score"] = float(q["score"])
    d = record.get("drift") or {}
    if isinstance(d.get("score"), int | float):
        out["drift.score"] = float(d["score"])
    for k, v in (record.get("data", {}).get("rows") or {}).items():
        if isinstance(v, int):
            out[f"rows.{k}"] = float(v)
    imp = record.get("improvement")
    if isinstance(imp, int | float):
        out["improvement"] = float(imp)
    return {k: v for k, v in out.items() if math.isfinite(v)}


def _tags(record: Mapping[str, Any]) -> dict[str, str]:
    data = record.get("data", {})
    window = data.get("window", {})
    versions = record.get("versions", {})
    tags = {
        "intellilog.run_id": record.get("run_id"),
        "intellilog.outcome": record.get("outcome"),
        "intellilog.tenant": record.get("params", {}).get("tenant"),
        "intellilog.data_sha256": data.get("sha256"),
        "intellilog.window_since": window.get("since"),
        "intellilog.window_until": window.get("until"),
        "intellilog.registry_version": versions.get("new"),
        "intellilog.production_version": versions.get("production"),
        "intellilog.experiment_id": (record.get("experiment") or {}).get("experiment_id"),
        "mlflow.note.content": record.get("reason"),
    }
    return {k: str(v) for k, v in tags.items() if v is not None}


def log_run(
    uri: str, record: Mapping[str, Any], *, model_dir: Path | None = None
) -> dict[str, str]:
    """Log ``record`` (a run-log record) as one MLflow run; return its ids.

    Raises ConfigError("install `intellilog[mlflow]` ...") when MLflow is missing; MLflow's
    own errors (an unreachable server) propagate for the caller to report."""
    mlflow = import_mlflow("MLFLOW_TRACKING_URI")
    from mlflow.entities import Metric, Param, RunTag

    client = mlflow.MlflowClient(tracking_uri=uri)
    name = experiment_name(str(record.get("params", {}).get("tenant", "default")))
    exp = client.get_experiment_by_name(name)
    exp_id = (
        exp.experiment_id
        if exp is not None
        else client.create_experiment(name, artifact_location=_artifact_location(uri))
    )
    run = client.create_run(exp_id, run_name=str(record["run_id"]))
    rid = run.info.run_id
    ok = False
    try:
        params = [
            Param(k, "" if v is None else str(v)[:6000])
            for k, v in _flat("", record.get("params", {}))
        ]
        now_ms = int(float(record.get("ended_at") or record.get("started_at") or 0) * 1000)
        metrics = [Metric(k, v, now_ms, 0) for k, v in _metrics(record).items()]
        tags = [RunTag(k, v) for k, v in _tags(record).items()]
        client.log_batch(rid, metrics=metrics, params=params, tags=tags)
        client.log_dict(rid, dict(record), "run.json")
        if record.get("quality"):
            client.log_dict(rid, record["quality"], "quality.json")
        if record.get("drift"):
            client.log_dict(rid, record["drift"], "drift.json")
        if model_dir is not None and model_dir.is_dir():
            client.log_artifacts(rid, str(model_dir), "model")
        ok = True
    finally:
        failed = not ok or record.get("outcome") == "failed"
        client.set_terminated(rid, status="FAILED" if failed else "FINISHED")
    return {"run_id": rid, "experiment_id": str(exp_id), "tracking_uri": uri}
