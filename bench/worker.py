"""One adapter, one fresh process: load, first call, latency, throughput, parity, RSS.

Started by ``bench/run.py`` as ``<python> bench/worker.py JOB.json`` under the
interpreter the adapter's ``ENV`` names, so this file imports only the standard library
and numpy. The job file gives the adapter module's path, the model folder, the cache
folder, the input ``.npy`` files, the settings and the output paths. The result JSON
(``job["out"]``) always gets written: ``status`` is ``"ok"``, ``"not installed: <reason>"``
(the adapter's ``unavailable()``) or ``"error: <message>"`` (with the traceback and
every figure measured before the error).

Order of measurements (one thread unless stated):

1. imports (``unavailable()``), input matrices loaded, ``gc.collect()``, RSS before;
2. load: ``Adapter(model_dir, 1, cache_dir)``, wall time; RSS after (the difference is
   the resident memory of the loaded model, incl. whatever the adapter imported then);
3. first call: ``predict`` on one row (JIT compile / session set-up / warm-up);
4. single-row latency: ``calls`` calls after 200 warm-up calls, call ``k`` on row ``k``
   of the latency matrix (rows with NaN included); p50 / p99 / p99.9 / mean in µs, plus
   quantiles for the distribution plot;
5. throughput at every batch size: the best of ``rounds`` rounds of ~``round_s`` s (at
   least one call; batches of ``big_from`` rows or more: ``big_rounds`` rounds of one
   call), consecutive calls on consecutive slices of the pool; CPU s / wall s of the
   best round ("cores used");
6. the same with a second instance ``Adapter(model_dir, threads, cache_dir)`` for every
   further thread count (its load's RSS increase is recorded too);
7. predictions on the parity matrix (``.npy`` for the runner to compare with LightGBM),
   and the largest difference between the 1-thread and the n-thread instance.
"""

from __future__ import annotations

import contextlib
import gc
import importlib.metadata
import importlib.util
import json
import platform
import resource
import sys
import time
import traceback
from pathlib import Path
from typing import Any

import numpy as np

#: Library versions recorded by every worker (those installed in its interpreter).
LIBS = (
    "numpy",
    "lightgbm",
    "onnxruntime",
    "numba",
    "llvmlite",
    "lleaves",
    "treelite",
    "tl2cgen",
    "hummingbird-ml",
    "torch",
)
#: Quantile levels stored for the latency distribution (dense in the tail).
QUANTILES = tuple(
    sorted({*(q / 100 for q in range(1, 100)), 0.001, 0.005, 0.995, 0.998, 0.999, 0.9995, 0.9999})
)


def _status_kb(field: str) -> float:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return float(line.split()[1])
    except OSError:
        pass
    return float("nan")


def rss_mb() -> float:
    return _status_kb("VmRSS") / 1024


def hwm_mb() -> float:
    return _status_kb("VmHWM") / 1024


def libs() -> dict[str, str]:
    out = {}
    for pkg in LIBS:
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            out[pkg] = importlib.metadata.version(pkg)
    return out


def load_module(path: Path) -> Any:
    spec = importlib.util.spec_from_file_location(f"bench_adapter_{path.stem}", path)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot load adapter module {path}")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def cpu_s() -> float:
    """CPU seconds of this process, all threads."""
    return time.process_time()


def latency(predict: Any, rows: np.ndarray, calls: int) -> dict[str, Any]:
    views = [rows[k % len(rows) : k % len(rows) + 1] for k in range(calls)]
    for v in views[:200]:
        predict(v)
    ts = np.empty(calls, dtype=np.int64)
    clock = time.perf_counter_ns
    for k in range(calls):
        x = views[k]
        t0 = clock()
        predict(x)
        ts[k] = clock() - t0
    us = ts / 1e3
    return {
        "calls": calls,
        "p50_us": float(np.percentile(us, 50)),
        "p99_us": float(np.percentile(us, 99)),
        "p999_us": float(np.percentile(us, 99.9)),
        "mean_us": float(us.mean()),
        "min_us": float(us.min()),
        "max_us": float(us.max()),
        "quantiles": [
            [q, float(v)] for q, v in zip(QUANTILES, np.quantile(us, QUANTILES), strict=True)
        ],
    }


def throughput(
    predict: Any,
    pool: np.ndarray,
    batch: int,
    rounds: int,
    round_s: float,
    big_rounds: int,
    big_from: int,
) -> dict[str, Any]:
    """rows/s of ``predict`` on ``batch`` rows: best and median of the rounds."""
    batch = min(batch, len(pool))
    views = [pool[i : i + batch] for i in range(0, len(pool) - batch + 1, batch)][:4096]
    clock = time.perf_counter
    c0, t0 = cpu_s(), clock()
    predict(views[0])
    one = max(clock() - t0, 1e-7)
    rps, cores = [], []
    if batch >= big_from:  # one call per round; the sizing call counts as the first round
        calls = 1
        rps.append(batch / one)
        cores.append((cpu_s() - c0) / one)
        rounds = big_rounds - 1
    else:
        if one < 0.05:  # warm-up for small batches
            for v in views[:50]:
                predict(v)
        calls = max(1, int(round_s / one))
    for _ in range(rounds):
        c0, t0 = cpu_s(), clock()
        for k in range(calls):
            predict(views[k % len(views)])
        wall = clock() - t0
        rps.append(calls * batch / wall)
        cores.append((cpu_s() - c0) / wall)
    best = int(np.argmax(rps))
    return {
        "rows_per_s": float(rps[best]),
        "rows_per_s_median": float(np.median(rps)),
        "cores_used": float(cores[best]),
        "rounds": len(rps),
        "all_rows_per_s": [float(v) for v in rps],
        "calls_per_round": calls,
    }


def run(job: dict[str, Any]) -> dict[str, Any]:
    res: dict[str, Any] = {
        "adapter": job["name"],
        "status": "running",
        "python": platform.python_version(),
        "executable": sys.executable,
        "libs": libs(),
        "measures": {},
    }
    m = res["measures"]
    try:
        t_import = time.perf_counter()
        mod = load_module(Path(job["adapter_path"]))
        res["adapter"] = getattr(mod, "NAME", job["name"])
        reason = mod.unavailable()
        res["import_s"] = time.perf_counter() - t_import
        if reason:
            res["status"] = f"not installed: {' '.join(str(reason).split())}"
            return res
        lat_rows = np.load(job["lat_rows"])
        pool = np.load(job["pool"])
        parity = np.load(job["parity"])
        model_dir, cache_dir = Path(job["model_dir"]), Path(job["cache_dir"])
        cache_dir.mkdir(parents=True, exist_ok=True)
        threads: list[int] = list(job["threads"])
        gc.collect()
        m["rss_before_mb"] = rss_mb()
        t0 = time.perf_counter()
        first = mod.Adapter(model_dir, threads[0], cache_dir)
        m["load_s"] = time.perf_counter() - t0
        res["note"] = str(getattr(first, "note", ""))
        gc.collect()
        m["rss_after_load_mb"] = rss_mb()
        m["rss_model_mb"] = m["rss_after_load_mb"] - m["rss_before_mb"]

        t0 = time.perf_counter()
        first.predict(lat_rows[:1])
        m["first_call_ms"] = (time.perf_counter() - t0) * 1e3
        m["rss_after_first_call_mb"] = rss_mb()

        m["latency"] = latency(first.predict, lat_rows, int(job["calls"]))
        tp: dict[str, Any] = {}
        m["throughput"] = tp
        args = (job["rounds"], job["round_s"], job["big_rounds"], job["big_from"])
        instances = {threads[0]: first}
        for n in threads:
            if n not in instances:
                gc.collect()
                r0 = rss_mb()
                t0 = time.perf_counter()
                inst = mod.Adapter(model_dir, n, cache_dir)
                m[f"load_s@{n}"] = time.perf_counter() - t0
                gc.collect()
                m[f"rss_model_mb@{n}"] = rss_mb() - r0
                t0 = time.perf_counter()
                inst.predict(lat_rows[:1])
                m[f"first_call_ms@{n}"] = (time.perf_counter() - t0) * 1e3
                instances[n] = inst
            for b in job["batches"]:
                tp[f"{b}@{n}"] = throughput(instances[n].predict, pool, int(b), *args)

        pred = np.asarray(first.predict(parity), dtype=np.float64).reshape(-1)
        np.save(job["parity_out"], pred)
        spread = 0.0
        for inst in instances.values():
            if inst is not first:
                other = np.asarray(inst.predict(parity), dtype=np.float64).reshape(-1)
                spread = max(spread, float(np.nanmax(np.abs(other - pred))))
        m["thread_max_abs_diff"] = spread
        m["peak_rss_mb"] = hwm_mb()
        res["status"] = "ok"
    except Exception as exc:
        msg = " ".join(f"{type(exc).__name__}: {exc}".split())
        res["status"] = f"error: {msg[:300]}"
        res["traceback"] = traceback.format_exc()[-4000:]
    finally:
        res["cpu_s"] = resource.getrusage(resource.RUSAGE_SELF).ru_utime
    return res


def _finite(x: Any) -> Any:
    if isinstance(x, dict):
        return {k: _finite(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [_finite(v) for v in x]
    if isinstance(x, float) and x != x:
        return None
    return x


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        print("usage: worker.py JOB.json", file=sys.stderr)
        return 2
    job = json.loads(Path(argv[0]).read_text())
    t0 = time.perf_counter()
    res = run(job)
    res["wall_s"] = time.perf_counter() - t0
    Path(job["out"]).write_text(json.dumps(_finite(res), indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
