"""Engine benchmark: single-row latency and batch throughput of every engine vs LightGBM.

One process, one model: a LightGBM regressor of ``--trees`` trees x ``--leaves`` leaves
(default 500 x 63) trained on 20 synthetic float32 features (14 continuous, 2
categorical codes, 4 numerics with ~15 % NaN), exported with
:func:`training.export.export_engines` (so every engine passed the parity gate on
this very model) and loaded through :func:`server.engines.load_engine`.

For the reference ``lightgbm`` (``Booster.predict(X, num_threads=1)`` on the
exported text model) and each engine (``onnx``, ``numba``, ``hummingbird`` when
installed, else reported "not installed") it measures

* single-row latency p50 / p99 in µs: ``--calls`` calls, each on a different row
  (rows with NaN included), after a warm-up, one thread;
* batch throughput in rows/s at 1, 64, 1,024 and 100,000 rows on one thread, and at
  100,000 rows on ``--threads`` threads (default 2): the best of 5 rounds of ~0.2 s
  (at least one call) each, 2 with ``--quick`` (other processes only ever slow a
  round down; the median goes to the JSON too); consecutive calls on different rows;
  the engines take turns round by round so that outside load hits them alike;
* the ratios to the reference measured in the same run: one-row speed-up
  (reference p50 / engine p50) and throughput ratio at 100k rows (engine rows/s /
  reference rows/s, same thread count);
* "cores used" (process CPU s / wall s) of the best 100k rounds, a warning when the
  multi-thread rounds did not get their cores (a busy machine);
* where the time goes: ``engine.predict`` vs the bare compiled call it wraps (numba
  kernel, ``InferenceSession.run``) for one row and for 100k rows;

and prints Markdown tables plus a verdict against the targets (fastest engine
>= 3x Booster.predict for one row and >= 2x its throughput at 100k rows).

Run (about 70 s on 2 cores; ``--quick`` about 40 s)::

    .venv/bin/python bench/engines.py [--trees 500] [--leaves 63] [--threads 2]
                                      [--quick] [--json out/engines.json]
"""

from __future__ import annotations

import argparse
import functools
import importlib.metadata
import json
import os
import platform
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import lightgbm as lgb
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository root: bench.*

from bench.models import CATEGORICAL, F, make_data, model_shape, train
from kernels.forest import predict_forest, predict_forest_row
from server.engines import Engine, load_engine
from training import optional
from training.export import ENGINE_FILES, export_engines

BATCHES = (1, 64, 1024, 100_000)
BIG = BATCHES[-1]
ENGINES = ("onnx", "numba", "hummingbird")
TARGET_ONE_ROW = 3.0
TARGET_100K = 2.0


# ---- the reference (data and model: bench/models.py) ---------------------------------------


class BoosterRef:
    """The reference: ``Booster.predict(X, num_threads=threads)``, nothing around it."""

    name = "lightgbm"
    device = "cpu"

    def __init__(self, path: Path, threads: int) -> None:
        self.booster = lgb.Booster(model_file=str(path))
        self.threads = threads

    def predict(self, X: np.ndarray) -> np.ndarray:
        return np.asarray(self.booster.predict(X, num_threads=self.threads))


# ---- measurements --------------------------------------------------------------------------


@dataclass
class Result:
    engine: str
    status: str = "ok"
    note: str = ""
    load_s: float = 0.0
    p50_us: float = float("nan")
    p99_us: float = float("nan")
    mean_us: float = float("nan")
    rows_per_s: dict[str, float] = field(default_factory=dict)  # "1", "64", ..., "100000@2"
    rows_per_s_median: dict[str, float] = field(default_factory=dict)
    # process CPU seconds / wall seconds of each round: ~threads when the engine got
    # its cores, less when other processes took them
    cores_used: dict[str, list[float]] = field(default_factory=dict)
    best_round_cores: dict[str, float] = field(default_factory=dict)
    rounds: dict[str, list[float]] = field(default_factory=dict)
    one_row_speedup: float = float("nan")
    ratio_100k: float = float("nan")
    ratio_100k_mt: float = float("nan")


@dataclass
class Subject:
    """One engine under test: a one-thread and a multi-thread instance, its rows."""

    result: Result
    one: Engine
    multi: Engine
    lat_rows: np.ndarray  # one distinct row per latency call
    pool: np.ndarray  # rows for the batches


def load_subject(
    name: str, make: Callable[[int], Engine], lat_rows: np.ndarray, pool: np.ndarray, threads: int
) -> Subject:
    t0 = time.perf_counter()
    one, multi = make(1), make(threads)
    for e in (one, multi):
        warm = getattr(e, "warmup", None)
        if callable(warm):
            warm()
    return Subject(Result(name, load_s=time.perf_counter() - t0), one, multi, lat_rows, pool)


def measure_latency(subjects: list[Subject], calls: int, rounds: int) -> None:
    """p50, p99, mean of one-row ``predict`` in µs; call ``k`` gets row ``k``. The
    engines take turns (``rounds`` turns each) so that load from other processes
    hits them alike."""
    for s in subjects:
        for i in range(min(300, len(s.lat_rows))):
            s.one.predict(s.lat_rows[i : i + 1])
    per = max(1, calls // rounds)
    ts = {id(s): np.empty(per * rounds) for s in subjects}
    clock = time.perf_counter_ns
    for r in range(rounds):
        for s in subjects:
            predict, rows, out = s.one.predict, s.lat_rows, ts[id(s)]
            for k in range(r * per, (r + 1) * per):
                x = rows[k % len(rows) : k % len(rows) + 1]
                t0 = clock()
                predict(x)
                out[k] = clock() - t0
    for s in subjects:
        us = ts[id(s)] / 1e3
        s.result.p50_us = float(np.percentile(us, 50))
        s.result.p99_us = float(np.percentile(us, 99))
        s.result.mean_us = float(us.mean())


def measure_throughput(
    subjects: list[Subject], batch: int, multi: bool, key: str, rounds: int, round_s: float
) -> None:
    """rows/s of ``predict`` on ``batch`` rows: the best (and the median) of ``rounds``
    rounds of about ``round_s`` seconds (at least one call); engines take turns round
    by round; consecutive calls take consecutive (different) slices of the pool."""
    plan = []
    for s in subjects:
        engine = s.multi if multi else s.one
        n = len(s.pool)
        views = [s.pool[i : i + batch] for i in range(0, n - batch + 1, batch)][:4096]
        t0 = time.perf_counter()
        engine.predict(views[0])
        one = max(time.perf_counter() - t0, 1e-7)
        if one < 0.05:  # warm-up for small batches
            for v in views[:50]:
                engine.predict(v)
        plan.append((s, engine.predict, views, max(1, int(round_s / one))))
    clock, cpu = time.perf_counter, time.process_time
    for _ in range(rounds):
        for s, predict, views, calls in plan:
            c0, t0 = cpu(), clock()
            for k in range(calls):
                predict(views[k % len(views)])
            wall = clock() - t0
            s.result.rounds.setdefault(key, []).append(calls * batch / wall)
            s.result.cores_used.setdefault(key, []).append((cpu() - c0) / wall)
    for s in subjects:
        r = s.result
        best = int(np.argmax(r.rounds[key]))
        r.rows_per_s[key] = float(r.rounds[key][best])
        r.rows_per_s_median[key] = float(np.median(r.rounds[key]))
        r.best_round_cores[key] = float(r.cores_used[key][best])


def _forest_row(x: np.ndarray, fargs: tuple[Any, ...]) -> Any:
    kernel: Any = predict_forest_row
    return kernel(x, *fargs)


def _forest(X: np.ndarray, fargs: tuple[Any, ...], out: np.ndarray) -> Any:
    kernel: Any = predict_forest
    return kernel(X, *fargs, out)


def _ort_run(X: np.ndarray, run: Any, names: list[str], feed: str) -> Any:
    return run(names, {feed: X})


def bare_calls(subjects: list[Subject], reps: int = 2) -> dict[str, dict[str, float]]:
    """Where an engine call's time goes: ``engine.predict`` vs the bare compiled call it
    wraps (numba: the :mod:`kernels.forest` kernel; onnx: ``InferenceSession.run``), one
    thread: p50 of one-row calls (the two alternate, each call on its own row) and the
    best of ``reps`` calls on 100k rows."""
    out: dict[str, dict[str, float]] = {}
    for s in subjects:
        e: Any = s.one
        big = s.pool[:BIG]
        bare_row: Callable[[np.ndarray], Any]
        bare_big: Callable[[np.ndarray], Any]
        if s.result.engine == "numba" and hasattr(e, "forest"):
            fargs = tuple(e.forest.args())
            bare_row = functools.partial(_forest_row, fargs=fargs)
            bare_big = functools.partial(_forest, fargs=fargs, out=np.empty(BIG))
        elif s.result.engine in ("onnx", "hummingbird") and hasattr(e, "_session"):
            run, names, feed = e._session.run, e._outputs, e._input
            bare_row = bare_big = functools.partial(_ort_run, run=run, names=names, feed=feed)
        else:
            continue
        clock = time.perf_counter_ns
        n = min(2000, len(s.lat_rows) // 2)
        te, tb = np.empty(n), np.empty(n)
        for k in range(n):
            xe, xb = s.lat_rows[2 * k : 2 * k + 1], s.lat_rows[2 * k + 1 : 2 * k + 2]
            t0 = clock()
            e.predict(xe)
            t1 = clock()
            bare_row(xb)
            tb[k], te[k] = clock() - t1, t1 - t0
        be, bb = [], []
        for _ in range(reps):
            t0 = clock()
            e.predict(big)
            t1 = clock()
            bare_big(big)
            bb.append(clock() - t1)
            be.append(t1 - t0)
        out[s.result.engine] = {
            "row_predict_p50_us": float(np.median(te)) / 1e3,
            "row_bare_p50_us": float(np.median(tb)) / 1e3,
            "big_predict_ms": min(be) / 1e6,
            "big_bare_ms": min(bb) / 1e6,
        }
    return out


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
    for pkg in ("numpy", "lightgbm", "onnxruntime", "numba", "onnxmltools", "pyarrow"):
        try:
            libs[pkg] = importlib.metadata.version(pkg)
        except importlib.metadata.PackageNotFoundError:
            libs[pkg] = "not installed"
    for pkg in ("hummingbird-ml", "torch"):
        try:
            libs[pkg] = importlib.metadata.version(pkg)
        except importlib.metadata.PackageNotFoundError:
            libs[pkg] = "not installed"
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "affinity": len(os.sched_getaffinity(0)),
        "python": platform.python_version(),
        "libs": libs,
        "loadavg_start": list(os.getloadavg()),
    }


def fmt_rps(v: float) -> str:
    return "-" if v != v else f"{v:,.0f}"


def fmt_x(v: float) -> str:
    return "-" if v != v else f"{v:.2f}x"


def table(results: list[Result], threads: int) -> str:
    mt = f"{BIG}@{threads}"
    head = (
        "| engine | p50 µs | p99 µs | rows/s @1 | @64 | @1,024 | @100k | "
        f"@100k {threads} thr | 1-row speed-up | 100k ratio | 100k ratio {threads} thr |"
    )
    lines = [head, "|" + "---|" * 11]
    for r in results:
        if r.status != "ok":
            lines.append(f"| {r.engine} | {r.status} |" + " |" * 9)
            continue
        cells = [
            r.engine,
            f"{r.p50_us:.1f}",
            f"{r.p99_us:.1f}",
            *(fmt_rps(r.rows_per_s[str(b)]) for b in BATCHES),
            fmt_rps(r.rows_per_s[mt]),
            fmt_x(r.one_row_speedup),
            fmt_x(r.ratio_100k),
            fmt_x(r.ratio_100k_mt),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def verdict(results: list[Result]) -> dict[str, Any]:
    ok = [r for r in results if r.status == "ok" and r.engine != "lightgbm"]
    if not ok:
        return {}
    fast1 = max(ok, key=lambda r: r.one_row_speedup)
    fast100 = max(ok, key=lambda r: r.ratio_100k)
    fast100mt = max(ok, key=lambda r: r.ratio_100k_mt)
    return {
        "one_row": {
            "engine": fast1.engine,
            "speedup": fast1.one_row_speedup,
            "target": TARGET_ONE_ROW,
            "met": fast1.one_row_speedup >= TARGET_ONE_ROW,
        },
        "rows_100k_1_thread": {
            "engine": fast100.engine,
            "ratio": fast100.ratio_100k,
            "target": TARGET_100K,
            "met": fast100.ratio_100k >= TARGET_100K,
        },
        "rows_100k_n_threads": {
            "engine": fast100mt.engine,
            "ratio": fast100mt.ratio_100k_mt,
            "target": TARGET_100K,
            "met": fast100mt.ratio_100k_mt >= TARGET_100K,
        },
    }


def _finite(x: Any) -> Any:
    """JSON-safe copy: NaN -> None."""
    if isinstance(x, dict):
        return {k: _finite(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [_finite(v) for v in x]
    if isinstance(x, float) and x != x:
        return None
    return x


# ---- main ----------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--trees", type=int, default=500, help="boosting rounds (default 500)")
    ap.add_argument("--leaves", type=int, default=63, help="num_leaves (default 63)")
    ap.add_argument("--threads", type=int, default=2, help="threads for the 100k multi-thread run")
    ap.add_argument("--train-rows", type=int, default=50_000)
    ap.add_argument("--calls", type=int, default=5_000, help="single-row calls (default 5000)")
    ap.add_argument("--quick", action="store_true", help="fewer calls and rounds, smaller training")
    ap.add_argument("--json", type=Path, help="write the raw figures to this file")
    args = ap.parse_args(argv)
    args.rounds, args.round_s = 5, 0.2
    if args.quick:
        args.train_rows = min(args.train_rows, 20_000)
        args.calls = min(args.calls, 1_500)
        args.rounds, args.round_s = 2, 0.1

    info = machine_info()
    rng = np.random.default_rng(0)
    t0 = time.perf_counter()
    booster = train(args.trees, args.leaves, args.train_rows, rng)
    shape = model_shape(booster)
    print(
        f"trained {shape['trees']} trees x {shape['mean_leaves']:.1f} leaves (mean; min "
        f"{shape['min_leaves']}) on {F} features in {time.perf_counter() - t0:.1f}s",
        file=sys.stderr,
    )
    pool, _ = make_data(2 * BIG, rng)  # batch rows: 15 % NaN per numeric column
    lat_rows = pool[: args.calls]  # every latency call gets its own row
    nan_free = pool[~np.isnan(pool).any(axis=1)]

    results: list[Result] = []
    with tempfile.TemporaryDirectory(prefix="bench-engines-") as tmp:
        d = Path(tmp)
        t0 = time.perf_counter()
        manifest = export_engines({"eta": booster}, pool[:2000], d, categorical=CATEGORICAL)
        print(
            f"exported + parity-checked in {time.perf_counter() - t0:.1f}s: "
            + ", ".join(f"{e} {m['max_rel_err']:.1e}" for e, m in manifest.items()),
            file=sys.stderr,
        )
        ref_path = d / f"eta{ENGINE_FILES['lightgbm']}"

        def make_ref(threads: int) -> Engine:
            return BoosterRef(ref_path, threads)

        print("loading engines", file=sys.stderr)
        subjects = [load_subject("lightgbm", make_ref, lat_rows, pool, args.threads)]
        subjects[0].result.note = "Booster.predict(num_threads=n), the reference"
        for kind in ENGINES:
            if kind == "hummingbird" and not optional.has_hummingbird():
                results.append(Result(kind, status="not installed"))
                continue
            if kind not in manifest:
                results.append(Result(kind, status="not exported (parity failed)"))
                continue
            restricted = manifest[kind].get("restriction")

            def make(threads: int, kind: str = kind) -> Engine:
                return load_engine(d, "eta", kind, threads=threads, allow_gpu=False)

            if restricted:  # hummingbird refuses rows with NaN: NaN-free rows only
                nf_pool = np.resize(nan_free, (2 * BIG, F))
                s = load_subject(kind, make, nf_pool[: args.calls], nf_pool, args.threads)
                s.result.note = f"restricted to {restricted}: measured on NaN-free rows"
            else:
                s = load_subject(kind, make, lat_rows, pool, args.threads)
            subjects.append(s)

        print(f"single-row latency ({args.calls} calls each)", file=sys.stderr)
        measure_latency(subjects, args.calls, args.rounds)
        for b in BATCHES:
            print(f"throughput at {b} rows, 1 thread", file=sys.stderr)
            measure_throughput(subjects, b, False, str(b), args.rounds, args.round_s)
        print(f"throughput at {BIG} rows, {args.threads} threads", file=sys.stderr)
        measure_throughput(subjects, BIG, True, f"{BIG}@{args.threads}", args.rounds, args.round_s)
        print("engine wrapper vs bare compiled call", file=sys.stderr)
        bare = bare_calls(subjects, reps=1 if args.quick else 2)
        ref = subjects[0].result
        results = [s.result for s in subjects] + results

    mt = f"{BIG}@{args.threads}"
    for r in results:
        if r.status == "ok":
            r.one_row_speedup = ref.p50_us / r.p50_us
            r.ratio_100k = r.rows_per_s[str(BIG)] / ref.rows_per_s[str(BIG)]
            r.ratio_100k_mt = r.rows_per_s[mt] / ref.rows_per_s[mt]
    info["loadavg_end"] = list(os.getloadavg())
    try:
        import numba

        info["numba_threading_layer"] = numba.threading_layer()
    except (ImportError, ValueError):
        info["numba_threading_layer"] = "n/a"
    v = verdict(results)

    print()
    print(
        f"Model: {shape['trees']} trees x {shape['mean_leaves']:.1f} leaves, {F} float32 features; "
        f"{info['cpu']}, {info['cores']} cores, Python {info['python']}, "
        + ", ".join(f"{k} {val}" for k, val in info["libs"].items())
    )
    print(
        f"Latency: {args.calls} one-row calls (different rows), one thread. Throughput: best "
        f"of {args.rounds} rounds; ratios vs Booster.predict at the same thread count. "
        f"Load average {info['loadavg_start'][0]:.2f} -> {info['loadavg_end'][0]:.2f}."
    )
    print()
    print(table(results, args.threads))
    for r in results:
        if r.note and r.engine != "lightgbm":
            print(f"\n* {r.engine}: {r.note}")
    ok = [r for r in results if r.status == "ok"]
    print(
        f"\nCores used (process CPU s / wall s) in the best round at 100k rows, "
        f"{args.threads} threads: "
        + ", ".join(f"{r.engine} {r.best_round_cores[mt]:.2f}" for r in ok)
        + "; 1 thread: "
        + ", ".join(f"{r.engine} {r.best_round_cores[str(BIG)]:.2f}" for r in ok)
        + "."
    )
    if any(r.best_round_cores[mt] < 0.8 * args.threads for r in ok):
        print(
            f"  WARNING: under {0.8 * args.threads:.1f} cores at {args.threads} threads: other "
            "processes held cores, the multi-thread figures are low (rerun on a quiet machine)."
        )
    if bare:
        print()
        print("Where the time goes (one thread): engine.predict vs the bare call it wraps.")
        print()
        print("| engine | 1 row predict µs | bare µs | 100k predict ms | bare ms |")
        print("|---|---|---|---|---|")
        for name, bc in bare.items():
            print(
                f"| {name} | {bc['row_predict_p50_us']:.1f} | {bc['row_bare_p50_us']:.1f} | "
                f"{bc['big_predict_ms']:.0f} | {bc['big_bare_ms']:.0f} |"
            )
    if v:
        print()
        for key, label in (
            ("one_row", "one row"),
            ("rows_100k_1_thread", "100k rows, 1 thread"),
            ("rows_100k_n_threads", f"100k rows, {args.threads} threads"),
        ):
            x = v[key]
            val = x.get("speedup", x.get("ratio"))
            print(
                f"- target {label}: best {x['engine']} {val:.2f}x vs >= {x['target']:.0f}x: "
                + ("met" if x["met"] else f"MISSED by {x['target'] / val:.2f}x")
            )
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        out = {
            "machine": info,
            "model": shape,
            "settings": {
                k: (str(val) if isinstance(val, Path) else val) for k, val in vars(args).items()
            },
            "results": [r.__dict__ for r in results],
            "targets": v,
            "bare_calls": bare,
        }
        args.json.write_text(json.dumps(_finite(out), indent=2))
        print(f"\nraw figures -> {args.json}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
