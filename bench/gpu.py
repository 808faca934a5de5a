"""GPU path: correctness and rows/s of the GPU engines against the CPU engines, 10k to 10M rows.

One prepared script, run as one short job (a few minutes on an H100 with 16 cores):

1. Names the GPU (``nvidia-smi``, ``torch.cuda``, onnxruntime's providers). With no CUDA
   device (neither onnxruntime's ``CUDAExecutionProvider`` nor ``torch.cuda``) it stops
   at once with exit code 2 and ``no CUDA device: ...``, unless ``--cpu-only`` (the CPU
   half only: how the script is tested on machines without a GPU).
2. Trains a LightGBM regressor (``--trees`` 500 x ``--leaves`` 63 on 20 float32
   features with NaN: the suite's data (``bench/models.py``); the two code columns
   are plain numeric features, because hummingbird-ml 0.4.12 cannot convert LightGBM's
   categorical splits, microsoft/hummingbird#245: ``--categorical`` shows that case,
   where no ``.hb.onnx`` is written and nothing runs on the GPU) and exports it with
   :func:`training.export.export_engines`: onnx, numba and, with hummingbird-ml
   installed, hummingbird's ``.hb.onnx`` (:func:`training.export.export_hummingbird`),
   each parity-checked against LightGBM; the manifest says whether hummingbird is
   restricted to rows without NaN. The model serves as eta, p10 and p90 (a
   :class:`server.engines.Predictor` needs three).
3. Correctness against ``Booster.predict`` on up to 200k rows: max abs / max rel
   difference of every engine on the rows without NaN and, separately, on the rows
   with NaN (hummingbird with its NaN guard lifted, to show how wrong it is there),
   and of the server's routed Predictor on all rows (must pass).
4. Throughput in rows/s at each ``--rows`` size (best of 3 rounds; 1 round from 5M
   rows), host -> device copies and back included (every engine takes and returns host
   arrays), on rows without NaN:
   GPU: hummingbird's ``.hb.onnx`` on onnxruntime CUDA, hummingbird's torch model on
   ``torch.cuda``, and the onnxmltools graph on CUDA if it really runs there (its
   ``TreeEnsembleRegressor`` has no CUDA kernel: reported, not timed);
   CPU: numba and onnx on all cores.
   The server's path: a Predictor (numba, batches >= ``--min-rows`` to the GPU, rows
   with NaN on numba) against the same Predictor CPU only, three models, on rows with
   NaN (about half the rows of this data hold one) and without.
5. Prints Markdown tables; ``--json`` writes every figure. Exit 0 when every GPU
   engine and the routed Predictor match LightGBM on rows without NaN, 1 otherwise
   (or when no GPU engine could run), 2 without a CUDA device.

GPU machine set-up (Linux x86-64, NVIDIA driver for CUDA 13; in the project's
virtualenv, in this order: reinstalling the project would bring the CPU onnxruntime
back over the GPU one)::

    pip install -e '.[gpu]'                            # hummingbird-ml 0.4.12 (pins onnx <= 1.16.1), torch==2.13.0
    pip uninstall -y onnxruntime                       # the CPU build (1.32.0 here): same module as the GPU build
    pip install 'onnxruntime-gpu[cuda,cudnn]==1.31.1'  # newest GPU build on PyPI (there is no 1.32.0):
                                                       # CUDA 13 + cuDNN 9, the extras bring the nvidia-* wheels
    python -c "import onnxruntime as o; print(o.get_available_providers())"  # lists CUDAExecutionProvider
    python -c "import torch; print(torch.version.cuda, torch.cuda.is_available())"  # a CUDA build, True

The torch route needs a CUDA build of torch; the onnxruntime route needs none at run
time (``server.engines`` imports torch first when it is there, so that onnxruntime can
reuse its CUDA libraries, then calls ``onnxruntime.preload_dlls()``). A machine without
package access: bring wheels of hummingbird-ml (with onnxconverter-common and dill) and
of the project's dependencies; where onnxruntime-gpu cannot be had, the torch route is
measured alone and the onnxruntime CUDA rows say why not. Run::

    python bench/gpu.py --json bench/results/gpu.json   # 10k, 1M and 10M rows
    python bench/gpu.py --cpu-only --rows 2000 --trees 20 --leaves 15 --train-rows 5000   # CPU half
"""

from __future__ import annotations

import argparse
import importlib.metadata
import importlib.util
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if importlib.util.find_spec("server") is None:  # run from a checkout that is not installed
    sys.path.insert(0, str(ROOT))

EXIT_NO_GPU = 2
TOL = 1e-4  # relative, as the export's parity check
CHECK_ROWS = 200_000
DEFAULT_ROWS = "10000,1000000,10000000"


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# ---- the GPU -------------------------------------------------------------------------------


def gpu_info() -> dict[str, Any]:
    """What this machine offers: nvidia-smi, onnxruntime's providers, torch.cuda."""
    info: dict[str, Any] = {"card": None, "nvidia_smi": None}
    smi = shutil.which("nvidia-smi")
    if smi:
        try:
            out = subprocess.run(
                [smi, "--query-gpu=name,memory.total,driver_version", "--format=csv,noheader"],
                capture_output=True,
                text=True,
                timeout=30,
                check=False,
            )
            info["nvidia_smi"] = (
                out.stdout.strip() or out.stderr.strip() or f"exit {out.returncode}"
            )
            if out.returncode == 0 and out.stdout.strip():
                info["card"] = out.stdout.strip().splitlines()[0].split(",")[0].strip()
        except (OSError, subprocess.SubprocessError) as exc:
            info["nvidia_smi"] = f"failed: {exc}"
    else:
        info["nvidia_smi"] = "not found"

    info["torch"] = None
    info["torch_cuda"] = False
    if importlib.util.find_spec("torch") is not None:
        try:
            import torch

            info["torch"] = f"{torch.__version__} (CUDA {torch.version.cuda})"
            info["torch_cuda"] = bool(torch.cuda.is_available())
            if info["torch_cuda"]:
                info["card"] = info["card"] or torch.cuda.get_device_name(0)
                info["torch_device"] = torch.cuda.get_device_name(0)
        except Exception as exc:  # a broken torch install
            info["torch"] = f"import failed: {exc}"

    import onnxruntime as ort

    info["onnxruntime"] = ort.__version__
    info["ort_providers"] = list(ort.get_available_providers())
    info["ort_cuda"] = "CUDAExecutionProvider" in info["ort_providers"]
    info["cuda"] = bool(info["ort_cuda"] or info["torch_cuda"])
    return info


def no_gpu_message(info: dict[str, Any]) -> str:
    torch = info["torch"] or "not installed"
    torch_cuda = "available" if info["torch_cuda"] else "not available"
    return (
        f"no CUDA device: onnxruntime {info['onnxruntime']} has no CUDAExecutionProvider "
        f"(providers {', '.join(info['ort_providers'])}); torch {torch}, torch.cuda "
        f"{torch_cuda}; nvidia-smi: {info['nvidia_smi']}. Set the machine up as this "
        "script's docstring says, or run with --cpu-only for the CPU half."
    )


# ---- data and model ------------------------------------------------------------------------


def _make_data(n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """The suite's data (bench/models.py): 14 continuous, 2 categorical codes, 4 numerics
    with 15 % NaN each."""
    from models import make_data

    return make_data(n, rng)


def _train(
    trees: int, leaves: int, rows: int, rng: np.random.Generator, threads: int, categorical: bool
) -> Any:
    import lightgbm as lgb

    X, y = _make_data(rows, rng)
    params = {
        "num_leaves": leaves,
        "min_data_in_leaf": 10,
        "verbose": -1,
        "num_threads": threads,
        "seed": 0,
    }
    from models import CATEGORICAL

    cats = CATEGORICAL if categorical else []
    return lgb.train(params, lgb.Dataset(X, y, categorical_feature=cats), num_boost_round=trees)


def data_and_model(args: argparse.Namespace, n_max: int, threads: int) -> tuple[np.ndarray, Any]:
    rng = np.random.default_rng(0)
    t0 = time.perf_counter()
    booster = _train(args.trees, args.leaves, args.train_rows, rng, threads, args.categorical)
    log(
        f"trained {booster.num_trees()} trees x {args.leaves} leaves on {args.train_rows} rows "
        f"in {time.perf_counter() - t0:.1f}s"
        + (" (code columns as LightGBM categorical)" if args.categorical else "")
    )
    t0 = time.perf_counter()
    X = np.ascontiguousarray(_make_data(n_max, rng)[0], dtype=np.float32)
    log(f"generated {n_max:,} rows in {time.perf_counter() - t0:.1f}s")
    return X, booster


# ---- measuring -----------------------------------------------------------------------------


def _errors(ref: np.ndarray, got: np.ndarray) -> dict[str, float]:
    if len(ref) == 0:
        return {"rows": 0, "max_abs": 0.0, "max_rel": 0.0, "wrong_share": 0.0}
    with np.errstate(invalid="ignore"):
        diff = np.abs(np.asarray(got, dtype=np.float64) - ref)
    diff = np.where(np.isnan(diff), np.inf, diff)
    rel = diff / np.maximum(1.0, np.abs(ref))
    return {
        "rows": len(ref),
        "max_abs": float(diff.max()),
        "max_rel": float(rel.max()),
        "wrong_share": float((rel > TOL).mean()),
    }


def time_rows_per_s(
    fn: Callable[[np.ndarray], Any], X: np.ndarray, rounds: int
) -> dict[str, float]:
    times = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        fn(X)
        times.append(time.perf_counter() - t0)
    n = X.shape[0]
    return {
        "rows_per_s": n / min(times),
        "median_rows_per_s": n / float(np.median(times)),
        "best_s": min(times),
        "rounds": rounds,
    }


def _rounds(n: int) -> int:
    return 3 if n < 5_000_000 else 1


def fmt(v: float | None) -> str:
    if v is None or v != v:
        return "-"
    return f"{v:,.0f}"


def fmt_e(v: float | None) -> str:
    return "-" if v is None else f"{v:.2g}"


# ---- main ----------------------------------------------------------------------------------


def parse_rows(text: str) -> list[int]:
    out = []
    for part in text.split(","):
        p = part.strip().lower().replace("_", "")
        mult = 1
        if p.endswith("k"):
            p, mult = p[:-1], 1_000
        elif p.endswith("m"):
            p, mult = p[:-1], 1_000_000
        try:
            v = int(float(p) * mult)
        except ValueError:
            raise argparse.ArgumentTypeError(f"--rows: {part!r} is not a row count") from None
        if v < 1:
            raise argparse.ArgumentTypeError(f"--rows: {part!r} must be >= 1")
        out.append(v)
    return sorted(set(out))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--rows", type=parse_rows, default=parse_rows(DEFAULT_ROWS))
    ap.add_argument("--json", type=Path, help="write every figure to this file")
    ap.add_argument("--cpu-only", action="store_true", help="no GPU needed: the CPU half only")
    ap.add_argument("--trees", type=int, default=500)
    ap.add_argument("--leaves", type=int, default=63)
    ap.add_argument("--train-rows", type=int, default=50_000)
    ap.add_argument(
        "--categorical",
        action="store_true",
        help="train the code columns as LightGBM categorical features (hummingbird cannot "
        "convert those splits: no .hb.onnx, no GPU engine)",
    )
    ap.add_argument("--threads", type=int, default=0, help="CPU engine threads (0: all cores)")
    ap.add_argument(
        "--min-rows", type=int, default=4096, help="the Predictor's gpu_min_rows (default 4096)"
    )
    args = ap.parse_args(argv)
    started = time.perf_counter()

    info = gpu_info()
    if not info["cuda"] and not args.cpu_only:
        log(no_gpu_message(info))
        return EXIT_NO_GPU
    threads = args.threads or (
        len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    )
    gpu_mode = not args.cpu_only
    log(
        f"GPU: {info['card'] or 'none'} (nvidia-smi: {info['nvidia_smi']}); onnxruntime "
        f"{info['onnxruntime']} providers {info['ort_providers']}; torch {info['torch']}, "
        f"cuda {'yes' if info['torch_cuda'] else 'no'}; CPU threads {threads}"
        + ("" if gpu_mode else "; --cpu-only")
    )

    from server.engines import (
        GPU_CHUNK_ROWS,
        HummingbirdEngine,
        NumbaEngine,
        OnnxEngine,
        Predictor,
        TorchHummingbirdEngine,
    )
    from training import optional
    from training.export import ENGINE_FILES, export_engines

    n_max = max(args.rows)
    X, booster = data_and_model(args, n_max, threads)
    from models import CATEGORICAL

    categorical = CATEGORICAL if args.categorical else []
    nan_rows = np.isnan(X).any(axis=1)
    # rows without NaN for the engine timings: the NaN cells get a value of the column
    X_clean = np.where(np.isnan(X), np.float32(1.0), X)

    result: dict[str, Any] = {
        "gpu": info,
        "machine": {
            "cpu_threads": threads,
            "python": platform.python_version(),
            "libs": {
                p: _version(p)
                for p in (
                    "numpy",
                    "lightgbm",
                    "numba",
                    "onnxruntime",
                    "onnxruntime-gpu",
                    "hummingbird-ml",
                    "torch",
                )
            },
        },
        "model": {"trees": booster.num_trees(), "leaves": args.leaves, "features": X.shape[1]},
        "rows": args.rows,
        "nan_row_share": float(nan_rows.mean()),
    }
    failures: list[str] = []
    with tempfile.TemporaryDirectory(prefix="bench-gpu-") as tmp:
        d = Path(tmp)
        t0 = time.perf_counter()
        manifest = export_engines({"eta": booster}, X[:2000], d, categorical=categorical)
        for m in ("p10", "p90"):  # a Predictor needs three models: the same one thrice
            for sfx in ENGINE_FILES.values():
                if (d / f"eta{sfx}").is_file():
                    shutil.copy(d / f"eta{sfx}", d / f"{m}{sfx}")
        hb = manifest.get("hummingbird")
        nan_ok = hb is not None and hb.get("restriction") is None
        result["export"] = {
            e: f"max rel err {v['max_rel_err']:.2g}"
            + (f", restricted to {v['restriction']}" if v["restriction"] else "")
            for e, v in manifest.items()
        }
        if hb is None:
            result["export"]["hummingbird"] = (
                "not installed" if not optional.has_hummingbird() else "dropped: parity failed"
            )
        log(
            f"exported in {time.perf_counter() - t0:.1f}s: "
            + "; ".join(f"{e} {v}" for e, v in result["export"].items())
        )

        # ---- the engines
        engines: dict[str, Any] = {
            "numba (cpu)": NumbaEngine(d / "eta.forest.npz", threads=threads),
            "onnx (cpu)": OnnxEngine(d / "eta.onnx", threads=threads, allow_gpu=False),
        }
        status: dict[str, str] = {}
        if gpu_mode:
            onnx_gpu = OnnxEngine(d / "eta.onnx", allow_gpu=True)
            if onnx_gpu.device == "cuda":
                engines["onnx (cuda)"] = onnx_gpu
            else:
                status["onnx (cuda)"] = f"not timed: {onnx_gpu.provider_note}"
            if hb is None:
                status["hummingbird"] = f"no .hb.onnx: {result['export']['hummingbird']}"
            else:
                if info["ort_cuda"]:
                    try:
                        e = HummingbirdEngine(d / "eta.hb.onnx", allow_gpu=True, allow_nan=nan_ok)
                        if e.device == "cuda":
                            engines["hummingbird onnxruntime (cuda)"] = e
                        else:
                            status["hummingbird onnxruntime (cuda)"] = e.provider_note
                    except Exception as exc:
                        status["hummingbird onnxruntime (cuda)"] = f"load failed: {exc}"
                else:
                    status["hummingbird onnxruntime (cuda)"] = "no CUDAExecutionProvider"
                if info["torch_cuda"]:
                    try:
                        engines["hummingbird torch (cuda)"] = TorchHummingbirdEngine(
                            d / "eta.txt", "cuda", allow_nan=nan_ok
                        )
                    except Exception as exc:
                        status["hummingbird torch (cuda)"] = f"load failed: {exc}"
                else:
                    status["hummingbird torch (cuda)"] = "torch.cuda not available"
        gpu_names = [k for k in engines if "(cuda)" in k]
        if gpu_mode and not gpu_names:
            failures.append(
                "no GPU engine could run: " + "; ".join(f"{k}: {v}" for k, v in status.items())
            )
        for k, v in status.items():
            log(f"{k}: {v}")
        result["status"] = status

        # warm-up: JIT/caches on CPU, CUDA context, kernels and memory arena on the GPU
        warm = X_clean[: min(n_max, GPU_CHUNK_ROWS)]
        for name, e in engines.items():
            t0 = time.perf_counter()
            e.predict(warm)
            log(f"warm-up {name}: {time.perf_counter() - t0:.2f}s")

        # ---- correctness against LightGBM
        n_check = min(CHECK_ROWS, n_max)
        Xs, nan_s = X[:n_check], nan_rows[:n_check]
        ref = np.asarray(booster.predict(Xs, num_threads=threads), dtype=np.float64)
        correct: dict[str, Any] = {}
        for name, e in engines.items():
            row: dict[str, Any] = {"device": e.device}
            row["no_nan"] = _errors(ref[~nan_s], e.predict(Xs[~nan_s]))
            guard = getattr(e, "allow_nan", None)
            if guard is not None:
                e.allow_nan = True  # show what hummingbird does with NaN (the server never asks)
            try:
                row["nan"] = _errors(ref[nan_s], e.predict(Xs[nan_s]))
            finally:
                if guard is not None:
                    e.allow_nan = guard
            correct[name] = row
            if row["no_nan"]["max_rel"] > TOL:
                failures.append(
                    f"{name}: max rel err {row['no_nan']['max_rel']:.3g} on rows without NaN"
                )
            if guard is None and row["nan"]["max_rel"] > TOL:
                failures.append(f"{name}: max rel err {row['nan']['max_rel']:.3g} on rows with NaN")

        # --cpu-only on a machine with no GPU: let the Predictor say why it has no route
        routed = Predictor(
            d,
            "numba",
            threads=threads,
            allow_gpu=gpu_mode or not info["cuda"],
            gpu_min_rows=args.min_rows,
            gpu_nan_ok=nan_ok,
        )
        cpu_pred = Predictor(d, "numba", threads=threads, gpu_min_rows=0)
        cpu_pred.predict(X[: min(n_max, GPU_CHUNK_ROWS)])  # warm-up
        described = routed.describe()
        result["predictor"] = described
        log(f"Predictor: {json.dumps(described)}")
        eta = routed.predict(Xs)[0]
        correct["Predictor routed"] = {"device": "mixed", "all_rows": _errors(ref, eta)}
        if correct["Predictor routed"]["all_rows"]["max_rel"] > TOL:
            failures.append("the routed Predictor disagrees with LightGBM")
        if gpu_mode and described["large_batch"] is None:
            failures.append(f"the Predictor has no GPU route: {described['large_batch_reason']}")
        result["correctness"] = correct
        result["check_rows"] = {"rows": n_check, "with_nan": int(nan_s.sum())}

        # ---- throughput
        timings: dict[str, dict[int, Any]] = {name: {} for name in engines}
        pred_timings: dict[str, dict[int, Any]] = {}
        for n in args.rows:
            r = _rounds(n)
            for name, e in engines.items():
                timings[name][n] = time_rows_per_s(e.predict, X_clean[:n], r)
                log(f"{name:34} {n:>11,} rows: {fmt(timings[name][n]['rows_per_s'])} rows/s")
            cases: list[tuple[str, Any, np.ndarray]] = [
                ("Predictor cpu, rows with NaN", cpu_pred, X)
            ]
            if routed.large is not None:
                cases += [
                    ("Predictor routed, rows with NaN", routed, X),
                    ("Predictor routed, no NaN", routed, X_clean),
                ]
            for label, p, data in cases:
                t = time_rows_per_s(p.predict, data[:n], r)
                pred_timings.setdefault(label, {})[n] = t
                log(f"{label:34} {n:>11,} rows: {fmt(t['rows_per_s'])} rows/s (3 models)")
        result["throughput"] = timings
        result["predictor_throughput"] = pred_timings

    result["failures"] = failures
    result["seconds"] = time.perf_counter() - started
    print(report(result, args.rows))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2, default=str))
    for f in failures:
        log(f"FAIL: {f}")
    return 1 if failures else 0


def _version(pkg: str) -> str:
    try:
        return importlib.metadata.version(pkg)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def report(r: dict[str, Any], rows: list[int]) -> str:
    g = r["gpu"]
    out = [
        f"## GPU path: {g['card'] or 'no GPU (--cpu-only)'}",
        "",
        f"nvidia-smi: {g['nvidia_smi']}; onnxruntime {g['onnxruntime']} "
        f"({', '.join(g['ort_providers'])}); torch {g['torch']}; CPU threads "
        f"{r['machine']['cpu_threads']}. Model: {r['model']['trees']} trees x "
        f"{r['model']['leaves']} leaves, {r['model']['features']} float32 features; "
        f"{r['nan_row_share']:.0%} of rows hold a NaN. Export: "
        + "; ".join(f"{e}: {v}" for e, v in r["export"].items())
        + f". {r['seconds']:.0f}s in all.",
        "",
        f"Correctness vs Booster.predict on {r['check_rows']['rows']:,} rows "
        f"({r['check_rows']['with_nan']:,} with NaN):",
        "",
        "| engine | device | rows without NaN: max abs | max rel | rows with NaN: max abs | share wrong |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for name, c in r["correctness"].items():
        if "all_rows" in c:
            a = c["all_rows"]
            out.append(
                f"| {name} (all rows) | {c['device']} | {fmt_e(a['max_abs'])} | {fmt_e(a['max_rel'])} | | |"
            )
            continue
        a, b = c["no_nan"], c["nan"]
        out.append(
            f"| {name} | {c['device']} | {fmt_e(a['max_abs'])} | {fmt_e(a['max_rel'])} | "
            f"{fmt_e(b['max_abs'])} | {b['wrong_share']:.1%} |"
        )
    head = " | ".join(f"{n:,}" for n in rows)
    out += [
        "",
        "Rows/s, one engine (the eta model), rows without NaN, host<->device copies included "
        "(best of 3 rounds; 1 from 5M rows):",
        "",
        f"| engine | {head} |",
        "|---|" + "---:|" * len(rows),
    ]
    for name, t in r["throughput"].items():
        out.append(f"| {name} | " + " | ".join(fmt(t[n]["rows_per_s"]) for n in rows) + " |")
    for name, why in r["status"].items():
        out.append(f"| {name} | {why} |" + " |" * (len(rows) - 1))
    p = r["predictor"]
    lb = p["large_batch"]
    route = (
        f"batches >= {lb['min_rows']} rows on {lb['engine']} {lb['device']} ({lb['runtime']}), "
        f"NaN rows on {lb['nan_rows']}"
        if lb
        else f"no GPU route: {p['large_batch_reason']}"
    )
    out += [
        "",
        f"Rows/s, the server's Predictor (eta, p10, p90; {route}):",
        "",
        f"| predictor | {head} |",
        "|---|" + "---:|" * len(rows),
    ]
    for name, t in r["predictor_throughput"].items():
        out.append(f"| {name} | " + " | ".join(fmt(t[n]["rows_per_s"]) for n in rows) + " |")
    out.append("")
    out.append("verdict: " + ("pass" if not r["failures"] else "FAIL: " + "; ".join(r["failures"])))
    return "\n".join(out)


if __name__ == "__main__":
    sys.exit(main())
