"""``intellilog retrain``: the weekly retraining job, with its gates and its record.

One run:

1. **Schedule.** A plain run is skipped when a run of the same tenant trained a model
   (outcome ``archived`` or ``candidate``) less than ``RETRAIN_LOOKBACK_DAYS`` minus one
   hour ago (the hour absorbs cron's start jitter). So cron may call ``retrain`` daily:
   it trains once per lookback window, and a run that was skipped, refused or failed is
   retried the next day. ``--emergency`` ignores this guard (and only this guard).
2. **Data.** The labelled rows of the window ``[now - lookback, now)``: orders whose
   feedback completed in the window, with their latest served prediction's raw input
   (made up to the spec's ``target.max`` before the window). Inputs are decoded by the
   served spec's request struct (:mod:`training.labelled`); those that no longer decode
   are counted and reported. ``--data FILE`` appends a previous training file.
3. **Minimum.** Fewer decodable window rows than ``--min-samples``
   (``RETRAIN_MIN_SAMPLES``): a warning, outcome ``skipped``, exit status 0.
4. **Quality gate.** :func:`training.quality.assess` under ``--min-quality``
   (``QUALITY_THRESHOLD``): outcome ``refused``, exit status 3, the failing checks named.
5. **Train** with the production version's own training settings (its manifest), so the
   comparison isolates the data; the rows as used are written to
   ``retrain-data/RUN_ID.parquet`` beside the run log (the new manifest's data path).
6. **Compare** the new and the production version on the same time-ordered holdout
   rows, each loaded as served (``INTELLILOG_ENGINE``), and judge **drift** of the
   window's features against production's reference histograms.
7. **Decide.** New MAE lower than production's by more than ``RETRAIN_MIN_IMPROVEMENT``
   (relative): start an experiment (``AB_MODE``, ``AB_SPLIT``, ``AB_DURATION_HOURS``,
   ``AB_MDE``, ``AB_POWER``, ``AB_ALPHA``, ``AB_SEQUENTIAL``) with the new version as
   ``candidate`` (outcome ``candidate``). Otherwise archive the new version with the
   reason (outcome ``archived``). When an experiment is already running, no second one
   is started: the new version is archived with that reason (``intellilog models
   promote VERSION --alias candidate`` or ``ab start`` can still pick it up later).

Every run is appended to the run log (:mod:`server.runs`) and, with
``MLFLOW_TRACKING_URI``, logged to MLflow (:mod:`training.tracking`).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import sys
import time
import traceback
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any, TextIO

import numpy as np
import pyarrow as pa

from kernels.errors import ConfigError, IntelliLogError
from kernels.spec import FeatureSpec
from server.config import Settings
from server.runs import RunLog, iso, run_log_path
from training.registry import Registry

__all__ = [
    "EXIT_REFUSED",
    "SCHEDULE_SLACK_S",
    "RetrainOptions",
    "add_retrain_parser",
    "retrain",
]

#: Exit status of a refused run (the data-quality gate), as ``validate`` uses.
EXIT_REFUSED = 3
#: A plain run trains when the last training run is at least lookback minus this old.
SCHEDULE_SLACK_S = 3600.0
BY = "retrain"


@dataclass(frozen=True)
class RetrainOptions:
    """One run's parameters (the CLI's flags over the settings)."""

    lookback_days: float
    min_samples: int
    min_quality: float
    min_improvement: float
    data: Path | None = None
    emergency: bool = False

    @classmethod
    def from_settings(cls, s: Settings, **over: Any) -> RetrainOptions:
        base = cls(
            lookback_days=s.retrain_lookback_days,
            min_samples=s.retrain_min_samples,
            min_quality=s.quality_threshold,
            min_improvement=s.retrain_min_improvement,
        )
        opts = cls(**{f.name: over.get(f.name, getattr(base, f.name)) for f in fields(cls)})
        opts.check()
        return opts

    def check(self) -> None:
        if not 0 < self.lookback_days <= 3650:
            raise ConfigError(f"--lookback-days={self.lookback_days!r}: days within (0, 3650]")
        if self.min_samples < 1:
            raise ConfigError(f"--min-samples={self.min_samples!r}: at least 1")
        if not 0 <= self.min_quality <= 100:
            raise ConfigError(f"--min-quality={self.min_quality!r}: within [0, 100]")


class _Finished(Exception):
    """A run ended early with an outcome (skipped, refused)."""

    def __init__(self, outcome: str, reason: str) -> None:
        super().__init__(reason)
        self.outcome = outcome
        self.reason = reason


def _new_run_id(now: float) -> str:
    return time.strftime("run-%Y%m%d-%H%M%S", time.gmtime(now)) + f"-{os.urandom(2).hex()}"


def _redact(url: str) -> str:
    from server.store.base import redact_url

    return redact_url(url)


def _train_settings(manifest: dict[str, Any], min_quality: float) -> Any:
    """Production's training settings (its manifest), with the run's quality threshold."""
    from training.train import settings_from_dict

    s = replace(
        settings_from_dict(manifest.get("settings") or {}), quality_threshold=float(min_quality)
    )
    s.validate()
    return s


# ---- evaluation on the same rows -------------------------------------------------------------


def compare_on_holdout(
    registry: Registry, versions: dict[str, str], holdout: pa.Table, engine: str, tolerance: float
) -> dict[str, dict[str, float]]:
    """Metrics of each version (``{"new": "v3", "production": "v1"}``) on the same rows of
    ``holdout`` (raw columns), each loaded as served; rows either refuses are left out
    of both, so the figures compare like with like."""
    from server.models import load_model
    from training.io import to_columns
    from training.metrics import interval_metrics, point_metrics

    preds: dict[str, tuple[np.ndarray, tuple[np.ndarray, ...], np.ndarray]] = {}
    for who, ref in versions.items():
        model = load_model(registry, ref, engine=engine, threads=0, allow_gpu=False)
        conv = to_columns(holdout, model.pipe, with_target=True)
        assert conv.target is not None
        answers = model.predict(model.pipe.matrix(conv.columns))
        full = tuple(np.full(holdout.num_rows, np.nan) for _ in range(3))
        for dst, a in zip(full, answers, strict=True):
            dst[conv.valid] = np.asarray(a, dtype=np.float64) / model.predictor.scale
        y = np.full(holdout.num_rows, np.nan)
        y[conv.valid] = conv.target
        preds[who] = (conv.valid, full, y)
    both = np.logical_and.reduce([v[0] for v in preds.values()])
    out: dict[str, dict[str, float]] = {}
    for who, (_, (eta, p10, p90), y) in preds.items():
        out[who] = {
            **point_metrics(y[both], eta[both], tolerance),
            **interval_metrics(y[both], p10[both], p90[both]),
        }
    return out


def window_drift(
    manifest: dict[str, Any], spec: FeatureSpec, table: pa.Table, cycles: dict[str, float]
) -> dict[str, Any]:
    """Drift of the window's features against production's reference histograms (the
    rule the server's drift monitor applies; calendar features only over whole cycles)."""
    from kernels.features import Pipeline
    from training.drift import calendar_skips, drift_rule
    from training.io import to_columns

    reference = manifest.get("reference")
    if not reference:
        return {"verdict": "no reference", "score": 0.0, "drifted": [], "n_rows": 0}
    pipe = Pipeline(spec, manifest.get("levels"))
    conv = to_columns(table, pipe)
    X = pipe.matrix(conv.columns)
    names = list(spec.feature_names)
    utc = conv.columns.utc
    covered = float(utc.max() - utc.min()) if len(utc) else 0.0
    skip = calendar_skips(names, covered, cycles=cycles)
    return drift_rule(reference, X, names, skip=skip)


# ---- the run ---------------------------------------------------------------------------------


@dataclass
class _Ctx:
    settings: Settings
    registry: Registry
    opts: RetrainOptions
    log: RunLog
    out: TextIO
    record: dict[str, Any]
    now: float
    model_dir: Path | None = None

    def say(self, text: str) -> None:
        self.out.write(text + "\n")
        self.out.flush()


def _params(s: Settings, registry: Registry, opts: RetrainOptions, log: RunLog) -> dict[str, Any]:
    return {
        "tenant": s.tenant_id,
        "lookback_days": opts.lookback_days,
        "min_samples": opts.min_samples,
        "min_quality": opts.min_quality,
        "min_improvement": opts.min_improvement,
        "emergency": opts.emergency,
        "extra_data": None if opts.data is None else str(opts.data),
        "engine": s.engine,
        "registry": registry.location,
        "database": _redact(s.database_url),
        "run_log": str(log.path),
        "ab": {
            "mode": s.ab_mode,
            "split": s.ab_split,
            "hours": s.ab_duration_hours,
            "mde": s.ab_mde,
            "power": s.ab_power,
            "alpha": s.ab_alpha,
            "sequential": s.ab_sequential,
        },
    }


def _schedule_guard(ctx: _Ctx) -> None:
    if ctx.opts.emergency:
        return
    last = ctx.log.last_trained(ctx.settings.tenant_id)
    if last is None:
        return
    age = ctx.now - float(last.get("started_at", 0.0))
    interval = ctx.opts.lookback_days * 86400.0
    if age < interval - SCHEDULE_SLACK_S:
        raise _Finished(
            "skipped",
            f"schedule: run {last['run_id']} trained {age / 86400:.1f} days ago, less than "
            f"the {ctx.opts.lookback_days:g}-day lookback (RETRAIN_LOOKBACK_DAYS); pass "
            "--emergency to retrain now",
        )


async def _fetch(ctx: _Ctx, store: Any, spec: FeatureSpec) -> tuple[pa.Table, pa.Table]:
    """(window rows, rows as used: the window plus ``--data``), both canonical."""
    from training.io import read_table
    from training.labelled import canonical_table, from_inputs

    until = ctx.now
    since = until - ctx.opts.lookback_days * 86400.0
    lead_s = spec.goal.max * spec.goal.minutes * 60.0
    rows = await store.labelled(ctx.settings.tenant_id, since, until, lead_s)
    lab = from_inputs(
        [r.inputs for r in rows], [r.actual for r in rows], [r.order_id for r in rows], spec
    )
    data: dict[str, Any] = ctx.record["data"]
    data["window"] = {"since": iso(since), "until": iso(until), "lead_s": lead_s}
    counts = data["rows"]
    counts.update(labelled=len(rows), undecodable=lab.refused, window=lab.table.num_rows)
    if lab.refused:
        data["undecodable_examples"] = lab.examples
        ctx.say(
            f"warning: {lab.refused} of {len(rows)} logged inputs no longer decode with the "
            f"served spec and are left out (first: {lab.examples[0]['where']}: "
            f"{lab.examples[0]['reason']})"
        )
    table = lab.table
    if ctx.opts.data is not None:
        extra = canonical_table(read_table(ctx.opts.data, spec), spec, str(ctx.opts.data))
        counts.update(extra=extra.table.num_rows, extra_refused=extra.refused)
        if extra.refused:
            data["extra_refused_examples"] = extra.examples
        table = pa.concat_tables([table, extra.table])
    ctx.say(
        f"window {iso(since)} .. {iso(until)}: {len(rows)} labelled rows, "
        f"{lab.table.num_rows} decodable"
        + (f", plus {counts['extra']} from {ctx.opts.data}" if ctx.opts.data else "")
    )
    return lab.table, table


async def _run(ctx: _Ctx) -> None:
    from server.experiments.service import StartOptions, running, start
    from server.models import model_spec, served_check
    from server.store import open_store
    from training.io import read_table, write_table
    from training.job import train_job
    from training.labelled import rows_digest
    from training.quality import assess

    s, reg, rec = ctx.settings, ctx.registry, ctx.record
    _schedule_guard(ctx)
    prod = reg.resolve("production")
    rec["versions"]["production"] = prod
    manifest = reg.manifest(prod)
    spec = model_spec(manifest, prod)
    async with await open_store(s.database_url) as store:
        window, table = await _fetch(ctx, store, spec)
        if window.num_rows < ctx.opts.min_samples:
            raise _Finished(
                "skipped",
                f"{window.num_rows} usable labelled rows in the window, fewer than the "
                f"minimum {ctx.opts.min_samples} (--min-samples / RETRAIN_MIN_SAMPLES)",
            )
        rec["data"]["sha256"] = rows_digest(table)
        rec["data"]["rows"]["used"] = table.num_rows
        quality = assess(table, spec, threshold=ctx.opts.min_quality)
        rec["quality"] = quality.to_dict()
        ctx.say(quality.format())
        refusal = quality.refusal()
        if refusal is not None:
            raise _Finished("refused", refusal)
        snapshot = ctx.log.path.parent / "retrain-data" / f"{rec['run_id']}.parquet"
        write_table(table, snapshot)
        rec["data"]["path"] = str(snapshot)
        settings = _train_settings(manifest, ctx.opts.min_quality)
        rec["train_settings"] = {
            k: getattr(settings, k) for k in ("max_rounds", "num_leaves", "seed")
        }
        res = train_job(snapshot, spec, reg, settings, out=ctx.out, served_check=served_check(reg))
        new = res.version
        assert new is not None
        rec["versions"]["new"] = new
        ctx.model_dir = reg.path(new)
        assert res.holdout_rows is not None
        holdout = read_table(snapshot, spec).take(pa.array(res.holdout_rows))
        rec["data"]["rows"]["holdout"] = holdout.num_rows
        metrics = compare_on_holdout(
            reg, {"new": new, "production": prod}, holdout, s.engine, spec.goal.tolerance
        )
        rec["metrics"] = metrics
        cycles = s.drift_cycle_seconds
        rec["drift"] = window_drift(manifest, spec, window, cycles)
        new_mae, prod_mae = metrics["new"]["mae"], metrics["production"]["mae"]
        improvement = (prod_mae - new_mae) / prod_mae if prod_mae > 0 else 0.0
        rec["improvement"] = improvement
        ctx.say(
            f"holdout ({metrics['new']['rows']} rows): new {new} MAE {new_mae:.3f}, production "
            f"{prod} MAE {prod_mae:.3f} ({improvement * 100:+.1f}%); drift "
            f"{rec['drift']['verdict']}"
        )
        wins = improvement > ctx.opts.min_improvement
        versus = (
            f"MAE {new_mae:.3f} vs production {prod} {prod_mae:.3f} on {metrics['new']['rows']} "
            f"holdout rows ({improvement * 100:+.1f}%, needs more than "
            f"{ctx.opts.min_improvement * 100:g}%)"
        )
        current = await running(store, s.tenant_id) if wins else None
        if wins and current is None:
            try:
                exp = await start(
                    store,
                    reg,
                    s.tenant_id,
                    StartOptions(
                        candidate=new,
                        mode=s.ab_mode,
                        split=s.ab_split,
                        hours=s.ab_duration_hours,
                        mde=s.ab_mde,
                        power=s.ab_power,
                        alpha=s.ab_alpha,
                        sequential=s.ab_sequential,
                        reason=f"retrain {rec['run_id']}: {versus}",
                    ),
                    by=BY,
                )
            except ConfigError as exc:  # an experiment started meanwhile
                current_msg = str(exc)
                reg.archive(
                    new, f"retrain {rec['run_id']}: better ({versus}) but {current_msg}", by=BY
                )
                raise _Finished("archived", f"better ({versus}) but {current_msg}") from None
            rec["versions"]["candidate"] = new
            rec["experiment"] = {
                "experiment_id": exp.experiment_id,
                "mode": exp.mode,
                "split": exp.split,
                "hours": exp.planned_hours,
            }
            if not s.enable_ab_testing:
                ctx.say(
                    "warning: ENABLE_AB_TESTING is off: servers will not route the experiment "
                    "until it is on"
                )
            raise _Finished(
                "candidate", f"{new} wins: {versus}; experiment {exp.experiment_id} started"
            )
        if wins and current is not None:
            why = (
                f"better ({versus}) but experiment {current.experiment_id} is running "
                f"({current.candidate_version} vs {current.baseline_version}); not starting a second"
            )
        else:
            why = f"not better: {versus}"
        reg.archive(new, f"retrain {rec['run_id']}: {why}", by=BY)
        raise _Finished("archived", why)


def _finish(ctx: _Ctx, outcome: str, reason: str) -> None:
    rec = ctx.record
    rec["outcome"] = outcome
    rec["reason"] = reason
    rec["ended_at"] = time.time()
    rec["ended"] = iso(rec["ended_at"])
    uri = ctx.settings.mlflow_tracking_uri
    if uri:
        from training.tracking import log_run

        try:
            ids = log_run(
                uri, rec, model_dir=ctx.model_dir if outcome in ("archived", "candidate") else None
            )
            rec["mlflow"] = {
                "run_id": ids["run_id"],
                "experiment_id": ids["experiment_id"],
                "tracking_uri": _redact(uri),
            }
        except IntelliLogError:
            raise
        except Exception as exc:  # the tracking server is down: the run log still records
            rec["mlflow"] = {"error": f"{type(exc).__name__}: {exc}", "tracking_uri": _redact(uri)}
            ctx.say(f"warning: MLflow logging failed ({type(exc).__name__}: {exc})")
    ctx.log.append(rec)


def retrain(
    settings: Settings,
    registry: Registry,
    opts: RetrainOptions,
    *,
    out: TextIO | None = None,
    now: float | None = None,
) -> dict[str, Any]:
    """Run the job once; return the run record (already appended to the run log).

    Raises what failed (after recording the run as ``failed``)."""
    out = out or sys.stderr
    if settings.mlflow_tracking_uri:
        from training.optional import mlflow

        mlflow("MLFLOW_TRACKING_URI")  # fail now, not after training
    log = RunLog(run_log_path(settings.run_log, registry.root))
    t = time.time() if now is None else now
    rec: dict[str, Any] = {
        "run_id": _new_run_id(t),
        "started_at": t,
        "started": iso(t),
        "params": _params(settings, registry, opts, log),
        "data": {"rows": {}},
        "versions": {},
        "metrics": {},
    }
    ctx = _Ctx(settings, registry, opts, log, out, rec, t)
    with log.exclusive():
        try:
            asyncio.run(_run(ctx))
        except _Finished as f:
            _finish(ctx, f.outcome, f.reason)
        except BaseException as exc:
            new = rec["versions"].get("new")
            why = (
                f"{type(exc).__name__}: {exc}" if not isinstance(exc, IntelliLogError) else str(exc)
            )
            rec["error"] = why
            if not isinstance(exc, IntelliLogError):
                rec["traceback"] = traceback.format_exc(limit=8)
            if new is not None and new not in registry.aliases().values():
                with contextlib.suppress(IntelliLogError):
                    registry.archive(new, f"retrain {rec['run_id']} failed: {why}", by=BY)
            _finish(ctx, "failed", why)
            raise
    return rec


# ---- the command -----------------------------------------------------------------------------


def cmd_retrain(args: argparse.Namespace) -> int:
    from server.config import load_settings

    s = load_settings()
    reg = Registry(args.registry or s.model_artifact_path)
    over: dict[str, Any] = {"emergency": args.emergency}
    for name in ("lookback_days", "min_samples", "min_quality"):
        if getattr(args, name) is not None:
            over[name] = getattr(args, name)
    if args.data is not None:
        over["data"] = Path(args.data)
    opts = RetrainOptions.from_settings(s, **over)
    rec = retrain(s, reg, opts)
    if args.json:
        print(json.dumps(rec, indent=2))
    else:
        print(f"{rec['outcome']}: {rec['reason']} (run {rec['run_id']})")
    if rec["outcome"] == "skipped":
        print(f"warning: retraining skipped: {rec['reason']}", file=sys.stderr)
    if rec["outcome"] == "refused":
        print(f"error: retraining refused: {rec['reason']}", file=sys.stderr)
        return EXIT_REFUSED
    return 0


def add_retrain_parser(sub: Any) -> None:
    """``intellilog retrain``."""
    r = sub.add_parser(
        "retrain",
        help="retrain on recent feedback; start an experiment when the new model wins",
        description="Train a new version on the labelled rows of the last LOOKBACK days "
        "(logged inputs with their fed-back actual), gate it on data quality, compare it "
        "with production on the same holdout, then start an experiment (candidate) or "
        "archive it. Every run is appended to RUN_LOG. Exit status 0 (trained, archived "
        "or skipped), 3 (refused by the quality gate), 2 (failed).",
    )
    r.add_argument(
        "--lookback-days",
        type=float,
        help="feedback window in days (default: $RETRAIN_LOOKBACK_DAYS or 7); also the "
        "least time between two training runs unless --emergency",
    )
    r.add_argument(
        "--min-samples",
        type=int,
        help="skip with fewer usable labelled rows (default: $RETRAIN_MIN_SAMPLES or 100)",
    )
    r.add_argument(
        "--min-quality",
        type=float,
        help="refuse data scoring below this 0-100 (default: $QUALITY_THRESHOLD or 80)",
    )
    r.add_argument("--data", metavar="EXTRA_FILE", help="append a previous training file")
    r.add_argument(
        "--emergency",
        action="store_true",
        help="run now even if a run trained less than the lookback ago",
    )
    r.add_argument("--json", action="store_true", help="print the run record as JSON")
    r.add_argument("--registry", help="model registry folder (default: $MODEL_ARTIFACT_PATH)")
    r.set_defaults(fn=cmd_retrain)
