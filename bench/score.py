"""Batch-scoring benchmark: engine-only vs end-to-end rows/s, and bounded memory.

In a work folder (a temporary one unless ``--workdir``):

1. ``generate`` ``--rows`` deliveries (default 1,000,000, seed 1) to Parquet, and a
   separate ``--train-rows`` file (default 200,000, seed 0);
2. train a model with the product's :func:`training.job.train_job`
   (``TrainSettings`` defaults; ``--max-rounds`` bounds the time) into a registry in
   the work folder and promote it;
3. in this process, with one :func:`server.models.load_model` (``--engine``,
   ``--threads``; 0 = every core):

   a. **engine-only**: the feature matrix of all rows built once (``read_table`` +
      ``to_columns`` + ``Pipeline.matrix``), then ``model.predict`` (eta, p10, p90)
      timed over it in slices of ``--batch-rows`` (default 131,072, the scoring
      batch);
   b. **end-to-end**: :func:`server.score.score_file` Parquet in -> Parquet out on
      the same rows, same model object, same batch size;
   c. **stage split**: one sequential pass over the file timing read, validate +
      convert, features, output table + Parquet write (no prediction; the prediction
      figure is (a)) to show where the non-engine time goes;

4. peak RSS of *separate* scoring processes (``server.cli.main`` = ``intellilog score
   IN --out OUT.parquet --json``) on ``--rss-rows`` files (default 10,000 and 200,000
   rows) and on the full file, plus one that only loads the model, to show whether
   memory grows with rows. The peak is the child's own ``VmHWM``
   (``/proc/self/status``); the report's ``peak_rss_mb`` is shown next to it but is
   ``ru_maxrss``, which on Linux also carries the parent's high-water mark.

Prints Markdown tables; targets: end-to-end >= 70 % of engine-only rows/s, bounded
peak RSS. "cores used" (process CPU s / wall s) tells whether a pass got its cores on a
shared machine; ``--passes N`` alternates the two passes N times and keeps the best of
each. ``--json PATH`` writes the raw figures.

Run (about 75 s on 2 idle cores with the defaults; several minutes on a busy machine)::

    .venv/bin/python bench/score.py [--rows 1000000] [--engine compiled|numba|onnx|lightgbm]
        [--threads 0] [--batch-rows 131072] [--max-rounds N] [--passes 1]
        [--rss-rows 10000,200000] [--workdir DIR] [--json out/score.json]
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.metadata
import itertools
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from kernels.errors import ModelLoadError
from kernels.spec import FeatureSpec, load_spec
from server.models import LoadedModel, load_model, served_check
from server.score import score_file
from training.io import iter_batches, read_table, to_columns
from training.job import train_job
from training.registry import Registry
from training.synth import generate, write_table
from training.train import TrainSettings

TARGET_RATIO = 0.70
REPO = Path(__file__).resolve().parent.parent


# ---- set-up --------------------------------------------------------------------------------


def make_file(path: Path, rows: int, seed: int) -> float:
    """Generate ``rows`` deliveries into ``path`` unless it exists; seconds spent."""
    if path.is_file() and pq.ParquetFile(path).metadata.num_rows == rows:
        return 0.0
    t0 = time.perf_counter()
    write_table(generate(rows, seed=seed), path)
    return time.perf_counter() - t0


def ensure_model(
    work: Path, spec: FeatureSpec, train_rows: int, max_rounds: int | None, retrain: bool
) -> tuple[Registry, str, float]:
    """The promoted model of the work folder's registry, trained if missing."""
    reg = Registry(work / "registry")
    if not retrain:
        with contextlib.suppress(ModelLoadError):
            return reg, reg.resolve("production"), 0.0
    data = work / f"train_{train_rows}.parquet"
    make_file(data, train_rows, seed=0)
    settings = TrainSettings() if max_rounds is None else TrainSettings(max_rounds=max_rounds)
    res = train_job(
        data, spec, reg, settings, promote=True, out=sys.stderr, served_check=served_check(reg)
    )
    assert res.version is not None
    return reg, res.version, res.seconds


# ---- measurements --------------------------------------------------------------------------


def feature_matrix(model: LoadedModel, path: Path) -> tuple[np.ndarray, float]:
    """The matrix of every row of ``path`` (read_table + to_columns + Pipeline.matrix)."""
    t0 = time.perf_counter()
    table = read_table(path, model.pipe.spec, need_target=False)
    conv = to_columns(table, model.pipe)
    X = model.pipe.matrix(conv.columns)
    return X, time.perf_counter() - t0


def engine_only(model: LoadedModel, X: np.ndarray, batch: int) -> dict[str, float]:
    """``model.predict`` (eta, p10, p90 and their ordering) over ``X`` in slices of
    ``batch`` rows, as score_file calls it."""
    model.predict(X[: min(len(X), 4096)])  # warm-up
    c0, t0 = time.process_time(), time.perf_counter()
    for i in range(0, len(X), batch):
        model.predict(X[i : i + batch])
    s = time.perf_counter() - t0
    cores = (time.process_time() - c0) / s
    return {"rows": len(X), "seconds": s, "rows_per_s": len(X) / s, "cores_used": cores}


def stage_split(model: LoadedModel, path: Path, out: Path, batch: int) -> dict[str, float]:
    """One sequential pass, no prediction: seconds of each non-engine stage."""
    spec = model.pipe.spec
    t: dict[str, float] = {"read": 0.0, "convert": 0.0, "features": 0.0, "write": 0.0}
    clock = time.perf_counter
    writer: pq.ParquetWriter | None = None
    batches: Iterator[pa.Table] = iter_batches(path, spec, batch_rows=batch)
    rows = 0
    try:
        while True:
            t0 = clock()
            table = next(batches, None)
            t["read"] += clock() - t0
            if table is None:
                break
            t0 = clock()
            conv = to_columns(table, model.pipe)
            t["convert"] += clock() - t0
            t0 = clock()
            X = model.pipe.matrix(conv.columns)
            t["features"] += clock() - t0
            t0 = clock()
            # the output score_file writes, with stand-in predictions
            fake = X[:, 4].astype(np.float64)
            idx = np.flatnonzero(conv.valid)
            cols = {
                spec.key: table.column(spec.key).take(pa.array(idx)),
                "eta_minutes": pa.array(fake, pa.float64()),
                "eta_p10": pa.array(fake, pa.float64()),
                "eta_p90": pa.array(fake, pa.float64()),
                "model_version": pa.array([model.version] * len(idx), pa.string()),
            }
            tab = pa.table(cols)
            if writer is None:
                writer = pq.ParquetWriter(out, tab.schema)
            writer.write_table(tab)
            t["write"] += clock() - t0
            rows += table.num_rows
    finally:
        if writer is not None:
            writer.close()
    t["rows"] = rows
    return t


# Runs the product's CLI entry point in the child, then prints the child's own peak RSS:
# VmHWM is per address space and starts afresh at exec, whereas ru_maxrss (what the
# report's peak_rss_mb uses) also carries the high-water mark of the parent process.
_CHILD = """import sys
from server.cli import main
rc = main(sys.argv[1:])
for line in open("/proc/self/status"):
    if line.startswith("VmHWM:"):
        print("VmHWM_kB", line.split()[1], file=sys.stderr)
sys.exit(rc)
"""

_LOAD_ONLY = """import sys
from server.models import load_model
from training.registry import Registry
m = load_model(Registry(sys.argv[1]), "production", engine=sys.argv[2], threads=int(sys.argv[3]))
m.predictor.warmup()
for line in open("/proc/self/status"):
    if line.startswith("VmHWM:"):
        print("VmHWM_kB", line.split()[1], file=sys.stderr)
"""


def _vmhwm_mb(stderr: str) -> float:
    for line in reversed(stderr.splitlines()):
        if line.startswith("VmHWM_kB"):
            return int(line.split()[1]) / 1024.0
    return float("nan")


def separate_process(
    reg: Registry, src: Path, out: Path, engine: str, threads: int, batch: int
) -> dict[str, Any]:
    """``intellilog score SRC --json`` (``server.cli.main``) in a child process: its
    JSON report plus ``vmhwm_mb``, the child's own peak RSS."""
    cmd = [
        sys.executable,
        "-c",
        _CHILD,
        "score",
        str(src),
        "--out",
        str(out),
        "--registry",
        str(reg.root),
        "--engine",
        engine,
        "--threads",
        str(threads),
        "--batch-rows",
        str(batch),
        "--json",
        "--quiet",
    ]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, check=False)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"scoring process failed ({proc.returncode}): {proc.stderr.strip()}")
    report: dict[str, Any] = json.loads(proc.stdout)
    report["process_wall_s"] = wall
    report["vmhwm_mb"] = _vmhwm_mb(proc.stderr)
    return report


def load_only_process(reg: Registry, engine: str, threads: int) -> float:
    """Peak RSS (MB) of a child that only imports, loads and warms up the model."""
    cmd = [sys.executable, "-c", _LOAD_ONLY, str(reg.root), engine, str(threads)]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, check=False)
    if proc.returncode != 0:
        raise SystemExit(f"model-load process failed: {proc.stderr.strip()}")
    return _vmhwm_mb(proc.stderr)


# ---- report --------------------------------------------------------------------------------


def machine_info() -> dict[str, Any]:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    libs = {}
    for pkg in ("numpy", "pyarrow", "lightgbm", "onnxruntime", "numba"):
        try:
            libs[pkg] = importlib.metadata.version(pkg)
        except importlib.metadata.PackageNotFoundError:
            libs[pkg] = "not installed"
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "libs": libs,
        "loadavg_start": list(os.getloadavg()),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--rows", type=int, default=1_000_000, help="rows to score (default 1M)")
    ap.add_argument("--train-rows", type=int, default=200_000)
    ap.add_argument(
        "--max-rounds", type=int, help="bound boosting rounds (default: TrainSettings, 1500)"
    )
    ap.add_argument(
        "--engine", default="compiled", choices=["compiled", "numba", "onnx", "lightgbm"]
    )
    ap.add_argument("--threads", type=int, default=0, help="engine threads (0: every core)")
    ap.add_argument("--batch-rows", type=int, default=131_072)
    ap.add_argument(
        "--rss-rows",
        default="10000,200000",
        help="comma-separated file sizes also scored in a separate process for peak RSS "
        "(the --rows file always is); empty: no separate processes (default 10000,200000)",
    )
    ap.add_argument(
        "--passes",
        type=int,
        default=1,
        help="alternate engine-only and end-to-end passes this many times; the best of "
        "each is reported (default 1)",
    )
    ap.add_argument("--workdir", type=Path, help="keep data and model here and reuse them")
    ap.add_argument("--retrain", action="store_true", help="with --workdir: train again")
    ap.add_argument("--json", type=Path, help="write the raw figures to this file")
    args = ap.parse_args(argv)

    info = machine_info()
    spec = load_spec(None)
    with contextlib.ExitStack() as stack:
        if args.workdir is None:
            work = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="bench-score-")))
        else:
            work = args.workdir
            work.mkdir(parents=True, exist_ok=True)
        src = work / f"score_{args.rows}.parquet"
        gen_s = make_file(src, args.rows, seed=1)
        print(f"{src.name}: {args.rows:,} rows (generated in {gen_s:.1f}s)", file=sys.stderr)
        reg, version, train_s = ensure_model(
            work, spec, args.train_rows, args.max_rounds, args.retrain or args.workdir is None
        )
        manifest = reg.manifest(version)
        print(
            f"model {version}: best iterations {manifest.get('best_iterations')} "
            f"(trained in {train_s:.0f}s)",
            file=sys.stderr,
        )

        model = load_model(reg, "production", engine=args.engine, threads=args.threads)
        model.predictor.warmup()
        threads = args.threads if args.threads > 0 else (os.cpu_count() or 1)
        X, matrix_s = feature_matrix(model, src)
        print(f"feature matrix {X.shape} built in {matrix_s:.1f}s", file=sys.stderr)

        eo_passes: list[dict[str, float]] = []
        e2e_passes: list[dict[str, Any]] = []
        for p in range(args.passes):
            print(f"pass {p + 1}/{args.passes}: engine-only", file=sys.stderr)
            eo_passes.append(engine_only(model, X, args.batch_rows))
            print(f"pass {p + 1}/{args.passes}: end-to-end (score_file)", file=sys.stderr)
            c0 = time.process_time()
            rep = score_file(
                src, work / "scored.parquet", model, batch_rows=args.batch_rows, progress=False
            )
            e2e_passes.append(
                {**rep.to_dict(), "cores_used": (time.process_time() - c0) / rep.seconds}
            )
        del X
        print("stage split pass", file=sys.stderr)
        split = stage_split(model, src, work / "split.parquet", args.batch_rows)

        procs: list[dict[str, Any]] = []
        load_only_mb: float | None = None
        sizes = [int(s) for s in args.rss_rows.split(",") if s.strip()]
        if sizes:
            print("separate process: load the model only", file=sys.stderr)
            load_only_mb = load_only_process(reg, args.engine, args.threads)
            for n in sorted({*sizes, args.rows}):
                f = src if n == args.rows else work / f"rss_{n}.parquet"
                make_file(f, n, seed=2)
                print(f"separate scoring process on {n:,} rows", file=sys.stderr)
                r = separate_process(
                    reg,
                    f,
                    work / f"rss_{n}.out.parquet",
                    args.engine,
                    args.threads,
                    args.batch_rows,
                )
                r["rows"] = n
                procs.append(r)
    info["loadavg_end"] = list(os.getloadavg())

    # best pass of each (other processes only ever slow a pass down)
    eo = max(eo_passes, key=lambda d: d["rows_per_s"])
    e2e = max(e2e_passes, key=lambda d: d["rows_per_s"])
    ratio = e2e["rows_per_s"] / eo["rows_per_s"]
    engine_share = e2e["engine_seconds"] / e2e["seconds"]
    best = f"best of {args.passes} passes" if args.passes > 1 else "one pass"
    print()
    print(
        f"{args.rows:,} rows, model {version} (trees eta/p10/p90: "
        + "/".join(str(v) for v in (manifest.get("best_iterations") or {}).values())
        + f"), engine {args.engine}, {threads} threads, batch {args.batch_rows:,}; "
        f"{info['cpu']}, {info['cores']} cores, Python {info['python']}, "
        + ", ".join(f"{k} {v}" for k, v in info["libs"].items())
        + f"; load average {info['loadavg_start'][0]:.2f} -> {info['loadavg_end'][0]:.2f}"
    )
    print()
    print(f"| figure ({best}) | seconds | rows/s | cores used |")
    print("|---|---|---|---|")
    print(
        f"| engine-only: model.predict over the matrix | {eo['seconds']:.2f} "
        f"| {eo['rows_per_s']:,.0f} | {eo['cores_used']:.2f} |"
    )
    print(
        f"| end-to-end: score_file Parquet -> Parquet | {e2e['seconds']:.2f} "
        f"| {e2e['rows_per_s']:,.0f} | {e2e['cores_used']:.2f} |"
    )
    print(
        f"| engine time inside that score_file | {e2e['engine_seconds']:.2f} "
        f"| {e2e['engine_rows_per_s']:,.0f} | - |"
    )
    print()
    print(
        f"(cores used = process CPU s / wall s; up to {threads} when the engine gets its "
        "threads' cores, lower when other processes hold them)"
    )
    print()
    verdict = "met" if ratio >= TARGET_RATIO else f"MISSED by {TARGET_RATIO - ratio:.2f}"
    print(f"- end-to-end / engine-only = **{ratio:.2f}** (target >= {TARGET_RATIO:.2f}: {verdict})")
    print(
        f"- engine share of score_file wall time (same pass, insensitive to other load): "
        f"{engine_share:.0%}"
    )
    print()
    print("Stage split: one sequential pass without prediction; predict = engine-only.")
    print()
    stages = ("read", "convert", "features", "write")
    total = sum(split[k] for k in stages) + eo["seconds"]
    print("| stage | seconds | share |")
    print("|---|---|---|")
    for k in stages:
        print(f"| {k} | {split[k]:.2f} | {split[k] / total:.1%} |")
    print(f"| predict | {eo['seconds']:.2f} | {eo['seconds'] / total:.1%} |")
    print(f"| sum, no overlap | {total:.2f} | ({args.rows / total:,.0f} rows/s) |")
    if procs:
        print()
        print(
            "Separate scoring processes (`intellilog score IN --out OUT.parquet --json`); "
            "peak RSS = the child's VmHWM; `peak_rss_mb` = what its report says:"
        )
        print()
        print("| rows | rows/s end-to-end | engine rows/s | peak RSS MB | peak_rss_mb | wall s |")
        print("|---|---|---|---|---|---|")
        print(f"| 0 (load model only) | - | - | {load_only_mb:.0f} | - | - |")
        for r in procs:
            print(
                f"| {r['rows']:,} | {r['rows_per_s']:,.0f} | {r['engine_rows_per_s']:,.0f} | "
                f"{r['vmhwm_mb']:.0f} | {r['peak_rss_mb']:.0f} | {r['process_wall_s']:.1f} |"
            )
        print()
        for small, big in itertools.pairwise(procs):
            print(
                f"- {small['rows']:,} -> {big['rows']:,} rows "
                f"(x{big['rows'] / small['rows']:.1f}): peak RSS {small['vmhwm_mb']:.0f} -> "
                f"{big['vmhwm_mb']:.0f} MB (x{big['vmhwm_mb'] / small['vmhwm_mb']:.2f})"
            )

    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        out = {
            "machine": info,
            "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
            "model": {
                "version": version,
                "best_iterations": manifest.get("best_iterations"),
                "train_seconds": train_s,
            },
            "matrix_build_s": matrix_s,
            "engine_only": eo,
            "end_to_end": e2e,
            "engine_only_passes": eo_passes,
            "end_to_end_passes": e2e_passes,
            "load_only_vmhwm_mb": load_only_mb,
            "ratio_e2e_over_engine_only": ratio,
            "target_ratio": TARGET_RATIO,
            "engine_share_of_score_file": engine_share,
            "stage_split": split,
            "separate_processes": procs,
        }
        args.json.write_text(json.dumps(out, indent=2))
        print(f"\nraw figures -> {args.json}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
