"""The ``intellilog`` command line.

Every command turns a product error (bad data, bad spec, missing model, ...) into one
line on stderr and a non-zero exit; ``INTELLILOG_DEBUG=1`` shows tracebacks.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import time
from collections.abc import Sequence
from typing import Any

from kernels.errors import ConfigError, IntelliLogError
from kernels.spec import FeatureSpec, load_spec
from server.experiments.cli import current_user

__all__ = ["main"]

EXIT_ERROR = 2
EXIT_QUALITY = 3


def _settings() -> Any:
    from server.config import load_settings

    return load_settings()


def _registry(args: argparse.Namespace) -> Any:
    from training.registry import Registry

    root = args.registry or _settings().model_artifact_path
    return Registry(root)


def _spec(args: argparse.Namespace) -> FeatureSpec:
    return load_spec(getattr(args, "spec", None))


def _positive_int(s: str) -> int:
    try:
        v = int(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {s!r}") from None
    if v < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {v}")
    return v


def _fraction(s: str) -> float:
    try:
        v = float(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {s!r}") from None
    return v


# ---- commands ----------------------------------------------------------------------------------


def cmd_generate(args: argparse.Namespace) -> int:
    from training.synth import generate, generate_trips, write_table

    kind = getattr(args, "kind", "deliveries")
    make = generate_trips if kind == "trips" else generate
    t0 = time.perf_counter()
    table = make(args.rows, seed=args.seed)
    write_table(table, args.out)
    print(
        f"wrote {table.num_rows} {kind} to {args.out} in {time.perf_counter() - t0:.1f}s",
        file=sys.stderr,
    )
    return 0


def cmd_validate(args: argparse.Namespace) -> int:
    from training.io import read_table
    from training.quality import assess

    spec = _spec(args)
    threshold = args.threshold if args.threshold is not None else _settings().quality_threshold
    table = read_table(args.data, spec, need_target=True)
    report = assess(table, spec, threshold=threshold, max_age_days=args.max_age_days)
    if args.json:
        print(json.dumps(report.to_dict(), indent=2))
    else:
        print(report.format())
    return 0 if report.passed else EXIT_QUALITY


def _train_settings(args: argparse.Namespace) -> Any:
    from training.train import TrainSettings

    s = _settings()
    return TrainSettings(
        # backtest has no holdout: its folds are its test periods
        holdout_fraction=getattr(args, "holdout_fraction", TrainSettings.holdout_fraction),
        accuracy_threshold=args.accuracy_threshold,
        quality_threshold=args.quality_threshold
        if args.quality_threshold is not None
        else s.quality_threshold,
        max_rounds=args.max_rounds,
        num_leaves=args.num_leaves,
        seed=args.seed,
    )


def cmd_train(args: argparse.Namespace) -> int:
    from server.models import served_check
    from training.job import train_job

    spec = _spec(args)
    settings = _train_settings(args)
    reg = _registry(args)
    with contextlib.ExitStack() as stack:
        fit = None
        if args.dask:  # checked even on a dry run; the cluster starts only to train
            from server.distributed import DaskFit, connect, parse_address, require_dask

            address = parse_address(args.dask)
            require_dask("train --dask")
            if not args.dry_run:
                fit = DaskFit(stack.enter_context(connect(address)))
        res = train_job(
            args.data,
            spec,
            reg,
            settings,
            promote=args.promote,
            dry_run=args.dry_run,
            served_check=served_check(reg),
            fit=fit,
        )
    if args.json and res.metrics is not None:
        print(json.dumps({"version": res.version, "metrics": res.metrics}, indent=2))
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from server.models import load_model
    from training.io import read_table, to_columns
    from training.metrics import BaselineModel, interval_metrics, point_metrics
    from training.train import metrics_table

    reg = _registry(args)
    model = load_model(reg, args.model, engine=args.engine or _settings().engine, threads=0)
    spec = model.pipe.spec
    table = read_table(args.data, spec, need_target=True)
    conv = to_columns(table, model.pipe, with_target=True)
    if conv.n_valid == 0:
        raise IntelliLogError(
            f"{args.data}: no valid rows to evaluate ({len(conv.reject_rows)} refused)"
        )
    X = model.pipe.matrix(conv.columns)
    # answers are in minutes; the target (and so every metric here) in the spec's unit
    eta, p10, p90 = (a / model.predictor.scale for a in model.predict(X))
    y = conv.target
    assert y is not None
    thr = spec.goal.tolerance if args.accuracy_threshold is None else args.accuracy_threshold
    if not thr > 0:
        raise ConfigError(f"--accuracy-threshold={thr!r}: must be > 0 (in the target's unit)")
    b = model.manifest.get("baselines", {})
    base = BaselineModel(b.get("median_minutes", 0.0), b.get("median_km_per_min", 0.0))
    dist = X[:, 4].astype("float64")
    t = conv.columns.utc
    from datetime import UTC, datetime

    metrics = {
        "model_version": model.version,
        "engine": model.engine_name,
        "holdout": {
            "rows": int(conv.n_valid),
            "refused_rows": len(conv.reject_rows),
            "from": datetime.fromtimestamp(int(t.min()), UTC).isoformat(),
            "to": datetime.fromtimestamp(int(t.max()), UTC).isoformat(),
            "accuracy_tolerance": thr,
            "unit": spec.goal.unit,
        },
        "model": {**point_metrics(y, eta, thr), **interval_metrics(y, p10, p90)},
        "baselines": base.evaluate(dist, y, thr),
    }
    if args.json:
        print(json.dumps(metrics, indent=2))
    else:
        print(f"model {model.version} ({model.engine_name}) on {args.data}")
        print(metrics_table(metrics))
    return 0


def cmd_backtest(args: argparse.Namespace) -> int:
    """Rolling-origin evaluation: quality gate as ``train``, then one model per fold."""
    from training.backtest import MIN_FOLDS, backtest, format_backtest
    from training.io import read_table
    from training.quality import assess, require_quality

    if args.folds < MIN_FOLDS:  # before reading a large file
        raise ConfigError(f"--folds={args.folds}: a backtest needs at least {MIN_FOLDS} folds")
    spec = _spec(args)
    settings = _train_settings(args)
    settings.validate()
    print(f"reading {args.data}", file=sys.stderr)
    table = read_table(args.data, spec, need_target=True)
    quality = assess(table, spec, threshold=settings.quality_threshold)
    require_quality(quality, args.data)
    result = backtest(table, spec, settings, folds=args.folds, out=sys.stderr)
    if args.json:
        print(json.dumps(result.to_dict(), indent=2))
    else:
        print(format_backtest(result))
    return 0


def cmd_models(args: argparse.Namespace) -> int:
    from server.models import servable_engines

    reg = _registry(args)
    if args.action == "list":
        aliases = reg.aliases()
        by_version: dict[str, list[str]] = {}
        for a, v in aliases.items():
            by_version.setdefault(v, []).append(a)
        versions = reg.versions()
        archived = reg.archived()
        if args.json:
            out = {"versions": versions, "aliases": aliases, "archived": archived}
            print(json.dumps(out, indent=2))
            return 0
        if not versions:
            print(f"no models in {reg.location}: run `intellilog train --data FILE --promote`")
            return 0
        print(f"{'version':8} {'created':20} {'MAE':>7} {'acc':>6} {'engines':33} aliases")
        for v in versions:
            m = reg.manifest(v)
            met = m.get("metrics", {}).get("model", {})
            eng = ",".join(servable_engines(m))
            print(
                f"{v:8} {m.get('created_at', '')[:19]:20} {met.get('mae', float('nan')):7.2f} "
                f"{met.get('accuracy', float('nan')) * 100:5.1f}% {eng:33} "
                f"{','.join(by_version.get(v, []) + (['archived'] if v in archived else []))}"
            )
        return 0
    if args.action == "show":
        if not args.version:
            raise ConfigError("models show needs a VERSION or alias")
        m = reg.manifest(args.version)
        if not args.full:
            m = {k: v for k, v in m.items() if k not in ("reference", "files")}
        print(json.dumps(m, indent=2))
        return 0
    if args.action == "promote":
        if not args.version:
            raise ConfigError("models promote needs a VERSION")
        prev = reg.promote(args.version, args.alias, by=current_user(), reason=args.reason)
        print(f"{args.alias}: {prev or '(none)'} -> {reg.resolve(args.version)}")
        return 0
    if args.action == "rollback":
        v = reg.rollback(args.alias, by=current_user(), reason=args.reason)
        print(f"{args.alias} rolled back to {v}")
        return 0
    if args.action == "archive":
        if not args.version or not args.reason:
            raise ConfigError("models archive needs a VERSION and --reason")
        print(f"archived {reg.archive(args.version, args.reason, by=current_user())}")
        return 0
    if args.action == "history":
        print(json.dumps(reg.history(args.alias), indent=2))
        return 0
    raise ConfigError(f"unknown models action {args.action!r}")


def cmd_score(args: argparse.Namespace) -> int:
    from server.models import load_model
    from server.score import score_file

    reg = _registry(args)
    spec = load_spec(args.spec) if args.spec else None
    settings = _settings()
    if args.dask:  # the same reading and scoring on every worker: server/distributed.py
        from server.distributed import connect, score_on_dask

        with connect(args.dask) as client:
            dreport = score_on_dask(
                client,
                args.input,
                args.out,
                registry=reg.location,
                model=args.model,
                engine=args.engine or settings.engine,
                threads=args.threads,
                spec=spec,
                rejects=args.rejects,
                batch_rows=args.batch_rows,
                progress=not args.quiet,
                allow_gpu=settings.allow_gpu,
                gpu_min_rows=settings.gpu_min_rows,
            )
        if args.json:
            print(json.dumps(dreport.to_dict(), indent=2))
        else:
            print(dreport.format(), file=sys.stderr)
        return 0
    model = load_model(
        reg,
        args.model,
        engine=args.engine or settings.engine,
        threads=args.threads,
        spec=spec,
        allow_gpu=settings.allow_gpu,
        gpu_min_rows=settings.gpu_min_rows,
    )
    report = score_file(
        args.input,
        args.out,
        model,
        rejects=args.rejects,
        batch_rows=args.batch_rows,
        progress=not args.quiet,
    )
    if args.json:
        print(json.dumps(report.to_dict(), indent=2))
    else:
        print(report.format(), file=sys.stderr)
    return 0


def cmd_quality(args: argparse.Namespace) -> int:
    """Live quality per model version and arm, from the feedback in DATABASE_URL."""
    import asyncio

    from kernels.errors import ModelLoadError
    from server.models import model_spec
    from server.monitoring.quality import (
        DEFAULT_WINDOWS,
        format_snapshot,
        lookback_for,
        parse_windows,
        quality_snapshot,
        tolerance_minutes_for,
    )
    from server.store import open_store

    windows = parse_windows(args.window or DEFAULT_WINDOWS, "--window")
    if args.tolerance is not None and not args.tolerance > 0:
        raise ConfigError(f"--tolerance={args.tolerance!r}: must be > 0 minutes")
    settings = _settings()
    reg = _registry(args)
    try:
        version = reg.resolve(args.model)
        spec = model_spec(reg.manifest(version), version)
    except ModelLoadError as e:
        if args.tolerance is None:
            raise ConfigError(
                f"no tolerance: cannot read model {args.model!r} ({e}); pass --tolerance MINUTES"
            ) from None
        spec = load_spec(None)  # the delivery spec's domain for the lookback
    tolerance = tolerance_minutes_for(spec) if args.tolerance is None else args.tolerance
    tenant = args.tenant or settings.tenant_id

    async def snapshot() -> Any:
        async with await open_store(settings.database_url) as store:
            return await quality_snapshot(
                store,
                tenant,
                tolerance_minutes=tolerance,
                windows=windows,
                lookback_s=lookback_for(spec),
            )

    snap = asyncio.run(snapshot())
    if args.json:
        print(json.dumps(snap.to_dict(), indent=2))
    else:
        print(format_snapshot(snap))
    return 0


def _check_store_schema(url: str) -> None:
    """A database migrated by a newer intellilog: one line now, not a worker's traceback.

    Opening applies pending migrations (as the app's start-up would). A database that is
    down is no reason to refuse: the server starts and spools until it answers."""
    import asyncio

    from kernels.errors import StoreError
    from server.store import SchemaVersionError, open_store

    async def check() -> None:
        store = await open_store(url)
        await store.close()

    try:
        asyncio.run(check())
    except SchemaVersionError:
        raise
    except StoreError:
        pass


def cmd_serve(args: argparse.Namespace) -> int:
    """Check a model is there, then run the app on granian (ASGI)."""
    import atexit
    import shutil
    import tempfile

    from granian import Granian
    from granian.constants import Interfaces

    settings = _settings()
    # multiprocess metrics must be configured before prometheus_client is imported
    if args.workers > 1 and not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        metrics_dir = tempfile.mkdtemp(prefix="intellilog-metrics-")
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = metrics_dir
        atexit.register(shutil.rmtree, metrics_dir, True)

    from server.holder import ModelHolder
    from training.registry import Registry

    if args.registry:
        os.environ["MODEL_ARTIFACT_PATH"] = args.registry
    grpc_port = args.grpc_port if args.grpc_port is not None else settings.grpc_port
    if grpc_port:  # the workers start it (server/grpc): the same host as HTTP
        from server.grpc import check_port, require_grpc

        require_grpc()
        if args.grpc_port is not None:
            os.environ["GRPC_PORT"] = str(args.grpc_port)
            os.environ["GRPC_HOST"] = args.host
        if grpc_port == args.port or grpc_port > 65535:
            raise ConfigError(
                f"--grpc-port {grpc_port}: a port within [1, 65535] other than the HTTP port"
            )
        check_port(args.host if args.grpc_port is not None else settings.grpc_host, grpc_port)
    reg = Registry(args.registry or settings.model_artifact_path)
    ModelHolder(reg, settings.model_alias, settings.engine)  # settings are valid
    if not reg.versions():
        raise IntelliLogError(
            f"no model in {reg.location}: train one first, e.g. `intellilog generate --rows 200000 "
            "--out data/deliveries.parquet && intellilog train --data data/deliveries.parquet --promote`"
        )
    # the alias must name a complete, intact version: one clear error now, not a traceback
    # from every worker (missing folder, missing file, checksum mismatch, spec, engine)
    from server.models import check_model

    check_model(reg, settings.model_alias, settings.engine)
    _check_store_schema(settings.database_url)
    print(
        f"serving {reg.location} ({settings.model_alias}) on http://{args.host}:{args.port} with {args.workers} worker(s)",
        file=sys.stderr,
    )
    if grpc_port:
        host = args.host if args.grpc_port is not None else settings.grpc_host
        print(f"KServe V2 gRPC on {host}:{grpc_port}", file=sys.stderr)
    server = Granian(
        "server.app:serve_app",
        factory=True,
        interface=Interfaces.ASGI,
        address=args.host,
        port=args.port,
        workers=args.workers,
        log_access=False,
        workers_kill_timeout=30,
        # a worker that dies (OOM kill, segfault) is started again; the others keep
        # serving. One that dies again within 5.5 s of its restart ends the server
        # (granian's crash-loop guard), which then exits non-zero.
        respawn_failed_workers=True,
    )
    respawn_all = server.signal_handler_reload

    def checked_reload(*a: Any, **kw: Any) -> None:
        """SIGHUP to this process replaces every worker with a fresh one that loads the
        alias anew. Check the alias first: replacing working workers with ones that
        cannot load their model would stop the server."""
        try:
            check_model(reg, settings.model_alias, settings.engine)
        except IntelliLogError as exc:
            print(f"error: SIGHUP refused, the workers keep serving: {exc}", file=sys.stderr)
            return
        respawn_all(*a, **kw)

    server.signal_handler_reload = checked_reload  # type: ignore[method-assign]
    writer = None
    if settings.prediction_log and settings.prediction_log_writer == "process":
        from server.store import relay

        if relay.supported():  # else each worker logs on a thread of its own
            writer = relay.WriterProcess()
            writer.start()
    try:
        server.serve()
    finally:
        if writer is not None:  # after the workers: every row they put is written
            writer.stop()
    return 0


def cmd_feedback(args: argparse.Namespace) -> int:
    """``feedback import FILE``: actual times of a CSV/Parquet file into DATABASE_URL."""
    import asyncio

    from tqdm import tqdm

    from server.feedback import import_feedback, row_count
    from server.store import open_store

    settings = _settings()

    async def run() -> Any:
        async with await open_store(settings.database_url) as store:
            with tqdm(
                total=row_count(args.file), unit=" rows", disable=args.quiet, file=sys.stderr
            ) as bar:
                return await import_feedback(
                    args.file,
                    store,
                    settings.tenant_id,
                    batch_rows=args.batch_rows,
                    rejects=args.rejects,
                    progress=bar.update,
                )

    report = asyncio.run(run())
    if args.json:
        print(json.dumps(report.to_dict(), indent=2))
    else:
        *refused, totals = report.format().splitlines()
        for line in refused:
            print(line, file=sys.stderr)
        print(totals)
    return EXIT_QUALITY if report.bad else 0


def cmd_drift(args: argparse.Namespace) -> int:
    """Drift of the served model's logged inputs against its training reference."""
    import asyncio

    from server.monitoring.drift import (
        drift_snapshot,
        format_snapshot,
        parse_cycles,
        promoted_at,
    )
    from server.monitoring.quality import parse_window
    from server.store import open_store

    window = parse_window(args.window, "--window")
    cycles = parse_cycles(args.cycle, "--cycle")
    settings = _settings()
    reg = _registry(args)
    version = reg.resolve(args.model)
    manifest = reg.manifest(version)
    since = promoted_at(reg, args.model, version) if args.model != version else None
    tenant = args.tenant or settings.tenant_id

    async def snapshot() -> Any:
        async with await open_store(settings.database_url) as store:
            return await drift_snapshot(
                store,
                manifest,
                tenant,
                window.seconds,
                version=version,
                serving_since=since,
                limit=args.limit,
                cycles=cycles,
            )

    snap = asyncio.run(snapshot())
    if args.json:
        print(json.dumps(snap.to_dict(), indent=2))
    else:
        print(format_snapshot(snap))
    return EXIT_QUALITY if snap.verdict == "drift" else 0


def cmd_report(args: argparse.Namespace) -> int:
    """One self-contained HTML page about a model version (server/report.py)."""
    from server.monitoring.quality import parse_window
    from server.report import make_report

    settings = _settings()
    window = parse_window(args.window or settings.drift_window, "--window")
    cycles = settings.drift_cycle_seconds
    if not args.days > 0:
        raise ConfigError(f"--days={args.days!r}: must be > 0")
    res = make_report(
        _registry(args),
        args.model,
        args.out,
        data=args.data,
        database_url=settings.database_url,
        tenant=args.tenant or settings.tenant_id,
        days=args.days,
        drift_window_s=window.seconds,
        cycles=cycles,
    )
    print(
        f"wrote {res.path} (model {res.version}, {res.images} figures, {res.bytes / 1024:.0f} KiB)",
        file=sys.stderr,
    )
    return 0


# ---- parser ------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="intellilog", description="Delivery-ETA prediction: data, training, registry, scoring."
    )
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def reg_opt(sp: argparse.ArgumentParser) -> None:
        sp.add_argument(
            "--registry", help="model registry folder (default: $MODEL_ARTIFACT_PATH or ./models)"
        )

    def training_opts(sp: argparse.ArgumentParser) -> None:
        """The model and data-gate options ``train`` and ``backtest`` share."""
        sp.add_argument(
            "--accuracy-threshold",
            type=float,
            help="tolerance of the accuracy metric (default: the spec's target.tolerance)",
        )
        sp.add_argument(
            "--quality-threshold", type=float, help="refuse data scoring below this (default 80)"
        )
        sp.add_argument("--max-rounds", type=_positive_int, default=1500)
        sp.add_argument("--num-leaves", type=_positive_int, default=63)
        sp.add_argument("--seed", type=int, default=0)

    g = sub.add_parser("generate", help="write a synthetic dataset (deliveries or long trips)")
    g.add_argument(
        "--kind",
        choices=("deliveries", "trips"),
        default="deliveries",
        help="deliveries: one city, minutes (spec: deliveries); trips: intercity freight legs "
        "across time zones, hours to days (spec: trips)",
    )
    g.add_argument("--rows", type=_positive_int, default=100_000)
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--out", required=True, help="FILE.parquet or FILE.csv")
    g.set_defaults(fn=cmd_generate)

    v = sub.add_parser("validate", help="score a dataset's quality 0-100")
    v.add_argument("--data", required=True)
    v.add_argument("--spec", help="feature spec TOML (default: the delivery spec)")
    v.add_argument("--threshold", type=float, help="pass mark (default: $QUALITY_THRESHOLD or 80)")
    v.add_argument("--max-age-days", type=float, help="also fail data whose latest event is older")
    v.add_argument("--json", action="store_true")
    v.set_defaults(fn=cmd_validate)

    t = sub.add_parser("train", help="train, check and register a model")
    t.add_argument("--data", required=True)
    t.add_argument("--spec")
    reg_opt(t)
    t.add_argument(
        "--holdout-fraction",
        type=_fraction,
        default=0.2,
        help="latest share of rows held out (default 0.2)",
    )
    training_opts(t)
    t.add_argument("--promote", action="store_true", help="make the new model the production model")
    t.add_argument(
        "--dry-run", action="store_true", help="check spec, data and settings; train nothing"
    )
    t.add_argument("--json", action="store_true", help="print the metrics as JSON on stdout")
    t.add_argument(
        "--dask",
        metavar="local:N|tcp://HOST:PORT",
        help="train with lightgbm.dask on N local worker processes or a running Dask "
        "scheduler (needs intellilog[dask]; not bit-identical to single-machine training)",
    )
    t.set_defaults(fn=cmd_train)

    e = sub.add_parser("evaluate", help="metrics of a registered model on a file")
    e.add_argument("--data", required=True)
    e.add_argument("--model", default="production", help="version or alias (default production)")
    e.add_argument(
        "--engine",
        choices=["onnx", "numba", "compiled", "lightgbm"],
        help="default: $INTELLILOG_ENGINE or compiled",
    )
    e.add_argument("--accuracy-threshold", type=float)
    reg_opt(e)
    e.add_argument("--json", action="store_true")
    e.set_defaults(fn=cmd_evaluate)

    bt = sub.add_parser(
        "backtest", help="rolling-origin evaluation: train on the past, test on what came next"
    )
    bt.add_argument("--data", required=True)
    bt.add_argument("--spec", help="feature spec TOML (default: the delivery spec)")
    bt.add_argument(
        "--folds", type=int, default=4, help="test segments (default 4; rows cut into folds+1)"
    )
    training_opts(bt)
    bt.add_argument("--json", action="store_true", help="print the results as JSON on stdout")
    bt.set_defaults(fn=cmd_backtest)

    m = sub.add_parser("models", help="list, show, promote, roll back, archive models")
    m.add_argument("action", choices=["list", "show", "promote", "rollback", "history", "archive"])
    m.add_argument("version", nargs="?")
    m.add_argument("--alias", default="production")
    m.add_argument("--reason", default="", help="promote/rollback/archive: recorded in history")
    m.add_argument("--full", action="store_true", help="show: include histograms and checksums")
    m.add_argument("--json", action="store_true")
    reg_opt(m)
    m.set_defaults(fn=cmd_models)

    s = sub.add_parser("score", help="score a file of deliveries")
    s.add_argument("input", help="IN.parquet or IN.csv")
    s.add_argument("--out", required=True, help="OUT.parquet or OUT.csv")
    s.add_argument("--model", default="production", help="version or alias (default production)")
    s.add_argument(
        "--engine",
        choices=["onnx", "numba", "compiled", "lightgbm"],
        help="default: $INTELLILOG_ENGINE or compiled",
    )
    s.add_argument("--spec", help="check the model was trained with this spec")
    s.add_argument("--rejects", help="reject file (default: OUT.rejects.csv)")
    s.add_argument("--batch-rows", type=_positive_int, default=131_072)
    s.add_argument("--threads", type=int, default=0, help="engine threads (0: all cores)")
    s.add_argument("--quiet", action="store_true", help="no progress bar")
    s.add_argument("--json", action="store_true", help="print the report as JSON on stdout")
    s.add_argument(
        "--dask",
        metavar="local:N|tcp://HOST:PORT",
        help="score on N local worker processes or a running Dask scheduler; OUT is then a "
        "folder of Parquet parts and the refused rows go to OUT.rejects/ (needs "
        "intellilog[dask])",
    )
    reg_opt(s)
    s.set_defaults(fn=cmd_score)

    v2 = sub.add_parser("serve", help="run the HTTP prediction server (granian)")
    v2.add_argument("--host", default="127.0.0.1")
    v2.add_argument("--port", type=_positive_int, default=8000)
    v2.add_argument(
        "--workers", type=_positive_int, default=1, help="worker processes (one per core)"
    )
    v2.add_argument(
        "--grpc-port",
        type=_positive_int,
        default=None,
        help="also serve the KServe V2 gRPC protocol on this port (same host; every worker "
        "shares it with SO_REUSEPORT; needs intellilog[grpc]); default: $GRPC_PORT (0 or "
        "unset: no gRPC)",
    )
    reg_opt(v2)
    v2.set_defaults(fn=cmd_serve)

    fb = sub.add_parser("feedback", help="actual delivery times: import them from a file")
    fb_sub = fb.add_subparsers(dest="feedback_command", required=True, metavar="ACTION")
    fi = fb_sub.add_parser(
        "import",
        help="store a CSV/Parquet file of order_id, actual_minutes, completed_at in DATABASE_URL",
        description="Upsert the actual times of FILE (columns order_id, actual_minutes, "
        "completed_at: ISO 8601 with an offset, or epoch seconds) into DATABASE_URL for "
        "TENANT_ID. Refused rows are listed with their row number and reason; exit status 3 "
        "when there were some (the others are stored).",
    )
    fi.add_argument("file", help="FILE.csv or FILE.parquet")
    fi.add_argument(
        "--batch-rows", type=_positive_int, default=10_000, help="rows per read and write"
    )
    fi.add_argument("--rejects", help="refused rows and why (default: FILE.rejects.csv)")
    fi.add_argument("--quiet", action="store_true", help="no progress bar")
    fi.add_argument("--json", action="store_true", help="print the report as JSON on stdout")
    fi.set_defaults(fn=cmd_feedback)

    q = sub.add_parser(
        "quality", help="live quality per model version and arm, from feedback in DATABASE_URL"
    )
    q.add_argument(
        "--window",
        action="append",
        help="trailing window on the feedback's completion time, e.g. 15m, 1h, 24h, 7d "
        "(repeat for several; default: 1h, 24h and 7d)",
    )
    q.add_argument("--tenant", help="default: $TENANT_ID")
    q.add_argument(
        "--model",
        default="production",
        help="version or alias whose spec gives the accuracy tolerance (default production)",
    )
    q.add_argument(
        "--tolerance",
        type=float,
        help="accuracy tolerance in minutes (default: the model spec's target.tolerance; "
        "needed when there is no model)",
    )
    q.add_argument("--json", action="store_true", help="print the snapshot as JSON on stdout")
    reg_opt(q)
    q.set_defaults(fn=cmd_quality)

    dr = sub.add_parser(
        "drift",
        help="drift of the logged inputs against the model's training reference",
        description="Compare the feature rows logged in DATABASE_URL for the model's version "
        "over the last WINDOW with the reference histograms of its manifest: PSI, critical "
        "value and flag per feature, the verdict (insufficient data under 500 rows, ok, "
        "drift) and the score (largest flagged PSI). Exit status 3 on drift.",
    )
    dr.add_argument("--window", default="24h", help="trailing window, e.g. 1h, 24h, 7d")
    dr.add_argument("--model", default="production", help="version or alias (default production)")
    dr.add_argument("--tenant", help="default: $TENANT_ID")
    dr.add_argument(
        "--limit",
        type=_positive_int,
        default=50_000,
        help="newest rows read at most (default 50000; a window cut short leaves the "
        "calendar features out)",
    )
    dr.add_argument(
        "--cycle",
        action="append",
        metavar="FEATURE=LENGTH",
        help="compare FEATURE only over windows of whole LENGTH cycles, like the calendar "
        "features, e.g. weather=365d (repeat for several)",
    )
    dr.add_argument("--json", action="store_true", help="print the snapshot as JSON on stdout")
    reg_opt(dr)
    dr.set_defaults(fn=cmd_drift)

    rp = sub.add_parser(
        "report",
        help="one self-contained HTML page about a model version, with plots",
        description="Write an HTML page (no external fetch: plots are inline images) with "
        "the version's header, holdout metrics against the baselines, and with --data FILE "
        "(labelled rows of the spec's columns) predicted against actual, interval "
        "calibration and the error by local hour, weekday and categorical level; with "
        "feedback in DATABASE_URL, the daily live error and drift per feature.",
    )
    rp.add_argument("--model", default="production", help="version or alias (default production)")
    rp.add_argument("--data", help="labelled CSV/Parquet file of the spec's columns")
    rp.add_argument("--out", help="the HTML file (default: report-VERSION.html)")
    rp.add_argument("--tenant", help="default: $TENANT_ID")
    rp.add_argument(
        "--days",
        type=float,
        default=30.0,
        help="live error over predictions of the last DAYS days (default 30)",
    )
    rp.add_argument("--window", help="drift window, e.g. 24h, 7d (default: $DRIFT_WINDOW or 24h)")
    reg_opt(rp)
    rp.set_defaults(fn=cmd_report)

    from server.experiments.cli import add_parser as add_ab

    add_ab(sub, reg_opt)
    from server.retrain import add_retrain_parser
    from server.runs import add_runs_parser

    add_retrain_parser(sub)
    add_runs_parser(sub)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    debug = os.environ.get("INTELLILOG_DEBUG", "") not in ("", "0")
    try:
        return int(args.fn(args))
    except IntelliLogError as exc:
        if debug:
            raise
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # a bug: still one line, with the way to see more
        if debug:
            raise
        print(
            f"internal error: {type(exc).__name__}: {exc} (set INTELLILOG_DEBUG=1 for the traceback)",
            file=sys.stderr,
        )
        return 1


if __name__ == "__main__":
    sys.exit(main())
