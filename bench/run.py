"""The engine and peer benchmark suite: every adapter in a fresh process, results to JSON.

For each model size (default ``100x31`` and ``500x63``: trees x leaves, 20 float32
features, data and training from ``bench/models.py``) the runner

1. trains the LightGBM model (cached under ``bench/.cache/models/<size>-s<seed>-r<rows>/``)
   and exports our engines with :func:`training.export.export_engines` (which proves
   parity), writes the input matrices (``bench/.cache/data/``: 20k latency rows, a
   1M-row pool for the batches, the parity matrix), and counts the node visits per row
   (:func:`bench.models.node_visits`);
2. runs ``bench/worker.py`` once per adapter (``bench/adapters/<name>.py``) in a fresh
   process under the interpreter its ``ENV`` names (``.venv/bin/python`` or the peers'
   venv made by ``bench/peers_env.py``); an adapter that cannot run there is reported
   "not installed: <reason>", one that fails "error: <message>": never dropped;
3. compares each adapter's predictions on the parity matrix with ``Booster.predict``;
4. measures the physical-limit inputs in a fresh process (``bench/limits.py``: cost of a
   dependent node visit, Python call floor, memory bandwidth) and derives each model's
   estimated limit and every adapter's distance from it;
5. writes one JSON (``--json``, default ``bench/results/suite.json``) for
   ``bench/report.py``.

Noise guards (a shared 2-core machine):

* one worker at a time, each in its own process (no state, JIT cache or allocator
  shared between adapters);
* ``--passes`` passes (default 2) over every size x adapter, the order reversed on every
  other pass (A B C, then C B A), so load from other processes does not favour the
  adapters that happen to run first; per measure the best pass is kept (lowest
  latency percentile, highest rows/s) and every pass's figures stay in the JSON;
* before each worker the runner waits (up to a few seconds) until other processes use
  under a quarter of a core, and records the CPU others used while the worker ran
  (``/proc/stat`` minus the worker's own CPU), with the worker's "cores used" per
  throughput figure (CPU s / wall s of its best round);
* the first pass starts with empty compile caches (numba's ``NUMBA_CACHE_DIR``, lleaves'
  object file, tl2cgen's library), so its load and first call are cold starts; later
  passes find them warm: both are reported (``--warm`` keeps the caches instead).

Run (``--quick``: 2,000 latency calls, 2 rounds of 0.1 s per batch, one 1M-row call; it
took 15 min on the shared 2-core machine: training the 500x63 model ~2 min, the cold
lleaves / tl2cgen compiles ~1.5 / ~1 min, the 1M-row calls; the trained models are
cached, so a second run is ~3 min shorter)::

    .venv/bin/python bench/run.py [--quick] [--sizes 100x31,500x63]
        [--adapters lightgbm,onnx,numba,hummingbird,lleaves,tl2cgen]
        [--passes 2] [--json bench/results/suite.json]
    .venv/bin/python bench/report.py bench/results/suite.json
"""

from __future__ import annotations

import argparse
import datetime as dt
import importlib.metadata
import json
import os
import platform
import resource
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import lightgbm as lgb  # noqa: E402
import numpy as np  # noqa: E402

from bench import adapters as adapters_pkg  # noqa: E402
from bench import models  # noqa: E402

BENCH = ROOT / "bench"
CACHE = BENCH / ".cache"
WORKER = BENCH / "worker.py"
LIMITS = BENCH / "limits.py"
MAIN_PYTHON = ROOT / ".venv" / "bin" / "python"
DEFAULT_SIZES = ((100, 31), (500, 63))
BATCHES = (1, 64, 1024, 100_000, 1_000_000)
THREADS = (1, 2)
PARITY_TOL = 1e-4
SCHEMA = 1
#: Main-env libraries whose versions go to the JSON.
MAIN_LIBS = (
    "numpy",
    "lightgbm",
    "onnxruntime",
    "numba",
    "llvmlite",
    "onnxmltools",
    "onnx",
    "hummingbird-ml",
    "torch",
    "matplotlib",
)


def log(msg: str) -> None:
    print(f"[suite {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def settings_for(quick: bool) -> dict[str, Any]:
    """Measurement settings of the worker (see ``bench/worker.py``)."""
    if quick:
        return {"calls": 2_000, "rounds": 2, "round_s": 0.1, "big_rounds": 1}
    return {"calls": 20_000, "rounds": 5, "round_s": 0.2, "big_rounds": 2}


def parse_sizes(text: str) -> list[tuple[int, int]]:
    out = []
    for part in text.split(","):
        if part.strip():
            t, _, leaves = part.strip().lower().partition("x")
            out.append((int(t), int(leaves)))
    return out


def size_key(size: tuple[int, int]) -> str:
    return f"{size[0]}x{size[1]}"


# ---- machine -------------------------------------------------------------------------------


def _read(path: str | Path) -> str:
    try:
        return Path(path).read_text().strip()
    except OSError:
        return ""


def caches() -> list[dict[str, Any]]:
    """CPU caches from ``/sys`` (cpu0's, with how many CPUs share each)."""
    out = []
    base = Path("/sys/devices/system/cpu/cpu0/cache")
    for idx in sorted(base.glob("index*")):
        shared = _read(idx / "shared_cpu_list")
        n = 0
        for part in shared.split(","):
            if "-" in part:
                a, b = part.split("-")
                n += int(b) - int(a) + 1
            elif part:
                n += 1
        out.append(
            {
                "level": int(_read(idx / "level") or 0),
                "type": _read(idx / "type"),
                "size": _read(idx / "size"),
                "shared_by_cpus": n,
            }
        )
    return out


def machine_info() -> dict[str, Any]:
    cpu, mhz, flags = platform.processor() or platform.machine(), float("nan"), ""
    for line in _read("/proc/cpuinfo").splitlines():
        if line.startswith("model name") and cpu in ("", platform.machine(), platform.processor()):
            cpu = line.split(":", 1)[1].strip()
        elif line.startswith("cpu MHz") and mhz != mhz:
            mhz = float(line.split(":", 1)[1])
        elif line.startswith("flags") and not flags:
            flags = line.split(":", 1)[1]
    mem_kb = 0.0
    for line in _read("/proc/meminfo").splitlines():
        if line.startswith("MemTotal:"):
            mem_kb = float(line.split()[1])
    hv = _read("/sys/hypervisor/type") or ("yes" if " hypervisor" in flags else "no")
    try:
        lscpu = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
        for line in lscpu.splitlines():
            if line.startswith("Hypervisor vendor:"):
                hv = line.split(":", 1)[1].strip()
    except (OSError, subprocess.SubprocessError):
        pass
    simd = [f for f in ("avx2", "avx512f", "fma") if f" {f}" in f" {flags} "]
    return {
        "cpu": cpu,
        "mhz": mhz,
        "cores": os.cpu_count(),
        "affinity": len(os.sched_getaffinity(0)),
        "caches": caches(),
        "simd": simd,
        "ram_gib": round(mem_kb / 2**20, 1),
        "hypervisor": hv,
        "kernel": platform.release(),
        "python": platform.python_version(),
        "loadavg_start": list(os.getloadavg()),
    }


def main_libs() -> dict[str, str]:
    out = {}
    for pkg in MAIN_LIBS:
        try:
            out[pkg] = importlib.metadata.version(pkg)
        except importlib.metadata.PackageNotFoundError:
            out[pkg] = "not installed"
    return out


def _cpu_ticks() -> tuple[float, float]:
    """(busy, total) jiffies of all CPUs from ``/proc/stat`` (steal counts as busy)."""
    parts = _read("/proc/stat").splitlines()[0].split()[1:]
    vals = [float(v) for v in parts]
    idle = vals[3] + (vals[4] if len(vals) > 4 else 0.0)
    return sum(vals[:8]) - idle, sum(vals[:8])


def busy_cores(window_s: float) -> float:
    """Cores busy over ``window_s`` seconds (this process sleeps meanwhile)."""
    b0, _ = _cpu_ticks()
    time.sleep(window_s)
    b1, _ = _cpu_ticks()
    return (b1 - b0) / os.sysconf("SC_CLK_TCK") / window_s


def wait_quiet(max_wait_s: float, threshold: float = 0.25) -> float:
    """Wait until others use under ``threshold`` cores (or ``max_wait_s`` passed); the
    last reading."""
    if max_wait_s <= 0:
        return busy_cores(0.1)
    t_end = time.monotonic() + max_wait_s
    while True:
        busy = busy_cores(0.5)
        if busy < threshold or time.monotonic() >= t_end:
            return busy


# ---- models and data -----------------------------------------------------------------------


def prepare_data(cache: Path, seed: int, pool_rows: int, lat_rows: int) -> dict[str, Any]:
    """The input matrices as ``.npy`` (cached): latency rows, batch pool, parity matrix."""
    from training.export import parity_rows

    d = cache / "data" / f"s{seed}-p{pool_rows}-l{lat_rows}"
    paths = {k: d / f"{k}.npy" for k in ("lat", "pool", "parity")}
    if not all(p.is_file() for p in paths.values()):
        d.mkdir(parents=True, exist_ok=True)
        lat, _ = models.make_data(lat_rows, np.random.default_rng(seed + 101))
        pool, _ = models.make_data(pool_rows, np.random.default_rng(seed + 102))
        base, _ = models.make_data(2048, np.random.default_rng(seed + 103))
        edge = parity_rows(base, np.random.default_rng(seed + 104), models.CATEGORICAL)
        parity = np.ascontiguousarray(np.concatenate([base, edge]), dtype=np.float32)
        for k, arr in (("lat", lat), ("pool", pool), ("parity", parity)):
            tmp = d / f".{k}.{os.getpid()}.npy"
            np.save(tmp, np.ascontiguousarray(arr, dtype=np.float32))
            os.replace(tmp, paths[k])
    return {k: str(p) for k, p in paths.items()}


def prepare_model(
    size: tuple[int, int], seed: int, train_rows: int, cache: Path, data: dict[str, Any]
) -> dict[str, Any]:
    """Train (or reuse) the model of ``size``, export every engine, count node visits."""
    from training import optional
    from training.export import export_engines

    trees, leaves = size
    d = cache / "models" / f"{size_key(size)}-s{seed}-r{train_rows}"
    meta_path = d / "model.json"
    meta: dict[str, Any] | None = None
    if meta_path.is_file():
        meta = json.loads(meta_path.read_text())
        files = [d / f for eng in meta["manifest"].values() for f in eng.get("files", [])]
        stale = not all(f.is_file() for f in files) or (
            optional.has_hummingbird() and "hummingbird" not in meta["manifest"]
        )
        if stale:
            meta = None
    if meta is None:
        t0 = time.perf_counter()
        log(f"training {size_key(size)} on {train_rows:,} rows")
        booster = models.train(trees, leaves, train_rows, np.random.default_rng(seed))
        train_s = time.perf_counter() - t0
        check = np.load(data["parity"])[:2048]
        shutil.rmtree(d, ignore_errors=True)
        manifest = export_engines({"eta": booster}, check, d, categorical=models.CATEGORICAL)
        manifest = {
            k: {**v, "files": [Path(f).name for f in v.get("files", [])]}
            for k, v in manifest.items()
        }
        meta = {
            "size": size_key(size),
            "seed": seed,
            "train_rows": train_rows,
            "train_s": train_s,
            "shape": models.model_shape(booster),
            "manifest": manifest,
        }
        meta_path.write_text(json.dumps(meta, indent=1, default=str))
    booster = lgb.Booster(model_file=str(d / "eta.txt"))
    parity = np.load(data["parity"])
    meta["visits_parity"] = models.node_visits(booster, parity)
    meta["visits_timed"] = models.node_visits(booster, np.load(data["lat"])[:4096])
    meta["model_dir"] = str(d)
    meta["model_bytes"] = {
        f.name: f.stat().st_size for f in sorted(d.iterdir()) if f.name.startswith("eta.")
    }
    meta["reference"] = np.asarray(booster.predict(parity), dtype=np.float64)
    return meta


# ---- workers -------------------------------------------------------------------------------


def resolve_adapters(names: Sequence[str | Path]) -> list[dict[str, Any]]:
    """``[{name, path, env, missing}]`` for adapter names (``bench/adapters/<name>.py``)
    or module paths; reads only ``NAME`` / ``ENV`` (module top level: stdlib + numpy)."""
    out = []
    for item in names:
        p = Path(item) if str(item).endswith(".py") else adapters_pkg.path_of(str(item))
        name = p.stem
        entry: dict[str, Any] = {"name": name, "path": str(p), "env": "main", "missing": None}
        if not p.is_file():
            entry["missing"] = (
                f"adapter module {p.relative_to(ROOT) if p.is_relative_to(ROOT) else p} is missing"
            )
        else:
            try:
                mod = adapters_pkg.load(p)
                entry["name"] = str(getattr(mod, "NAME", name))
                entry["env"] = str(getattr(mod, "ENV", "main"))
            except Exception as exc:
                entry["missing"] = f"adapter module does not import: {type(exc).__name__}: {exc}"
        out.append(entry)
    return out


def peers_environment(setup: bool) -> dict[str, Any]:
    """Status of the peers' venv: ``{"python": path | None, "error": str | None,
    "status": <ensure_peers_env's dict>}``."""
    env: dict[str, Any] = {"python": None, "error": None, "status": {}}
    script = BENCH / "peers_env.py"
    if not script.is_file():
        env["error"] = "bench/peers_env.py is missing"
        return env
    try:
        mod = adapters_pkg.load(script)
        if setup:
            log("checking the peers' venv (bench/peers_env.py)")
            status = mod.ensure_peers_env(ROOT)
        else:
            status = json.loads((mod.venv_dir(ROOT) / "status.json").read_text())
        env["status"] = status
        env["module"] = mod
        py = Path(status.get("python") or mod.venv_python(ROOT))
        if py.exists():
            env["python"] = str(py)
        else:
            env["error"] = f"peers venv interpreter {py} does not exist"
    except Exception as exc:
        env["error"] = f"peers venv unavailable: {type(exc).__name__}: {exc}"
    return env


def run_worker(
    python: str, job: dict[str, Any], env: dict[str, str], timeout: float
) -> dict[str, Any]:
    """One fresh worker process; its JSON (an ``error`` record when it wrote none)."""
    job_path = Path(job["out"]).with_suffix(".job.json")
    job_path.write_text(json.dumps(job))
    r0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    b0, _ = _cpu_ticks()
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(
            [python, str(WORKER), str(job_path)],
            capture_output=True,
            text=True,
            timeout=timeout,
            env=env,
            cwd=str(ROOT),
        )
        rc, stderr = proc.returncode, proc.stderr
    except subprocess.TimeoutExpired as exc:
        rc, stderr = -9, f"timed out after {timeout:.0f} s\n{exc.stderr or ''}"
    except OSError as exc:
        rc, stderr = -1, f"{type(exc).__name__}: {exc}"
    wall = time.perf_counter() - t0
    b1, _ = _cpu_ticks()
    r1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    own = (r1.ru_utime + r1.ru_stime) - (r0.ru_utime + r0.ru_stime)
    total = (b1 - b0) / os.sysconf("SC_CLK_TCK")
    try:
        res: dict[str, Any] = json.loads(Path(job["out"]).read_text())
    except (OSError, ValueError):
        tail = " | ".join(str(stderr).strip().splitlines()[-3:])
        res = {"adapter": job["name"], "status": f"error: worker exit {rc}: {tail[:300]}"}
        res["stderr"] = str(stderr)[-4000:]
    res["process_wall_s"] = wall
    res["others_cores"] = max(0.0, (total - own) / wall) if wall > 0 else None
    return res


def parity(pred: np.ndarray, ref: np.ndarray, X: np.ndarray) -> dict[str, Any]:
    if pred.shape != ref.shape:
        return {"ok": False, "error": f"{pred.shape[0]} predictions for {ref.shape[0]} rows"}
    diff = np.abs(pred - ref)
    rel = diff / np.maximum(1.0, np.abs(ref))
    bad = ~(rel <= PARITY_TOL)  # NaN predictions count as bad
    clean = ~np.isnan(X).any(axis=1)
    return {
        "rows": len(ref),
        "max_abs": float(np.nanmax(diff)) if np.isfinite(diff).any() else float("inf"),
        "max_rel": float(np.nanmax(rel)) if np.isfinite(rel).any() else float("inf"),
        "rows_off": int(bad.sum()),
        "rows_off_nan_free": int((bad & clean).sum()),
        "tol_rel": PARITY_TOL,
        "ok": bool(not bad.any()),
    }


# ---- merging passes, bounds ------------------------------------------------------------------


def _pick(vals: list[float | None], best: str) -> float | None:
    vs = [v for v in vals if v is not None and v == v]
    if not vs:
        return None
    return min(vs) if best == "min" else max(vs)


def merge(runs: list[dict[str, Any]], cold: bool) -> dict[str, Any]:
    """One adapter, one size: the best pass per measure (see the module doc)."""
    ok = [r for r in runs if r.get("status") == "ok"]
    first = runs[0]
    out: dict[str, Any] = {
        "status": "ok" if ok else first.get("status", "error: no result"),
        "note": next((r.get("note") for r in runs if r.get("note")), ""),
        "passes": len(runs),
        "passes_ok": len(ok),
        "pass_status": [r.get("status") for r in runs],
        "others_cores": [r.get("others_cores") for r in runs],
        "libs": first.get("libs", {}),
        "python": first.get("python"),
    }
    if not ok:
        if "traceback" in first:
            out["traceback"] = first["traceback"]
        return out
    ms = [r["measures"] for r in ok]

    def get(m: dict[str, Any], *path: str) -> Any:
        for p in path:
            if not isinstance(m, dict) or p not in m:
                return None
            m = m[p]
        return m

    # load and first call: the cold pass (the first, when it ran) and the warm ones
    cold_runs = [ms[0]] if cold and runs[0].get("status") == "ok" else []
    warm_runs = ms[1:] if cold_runs else ms
    for key in ("load_s", "first_call_ms"):
        out[f"{key}_cold"] = cold_runs[0].get(key) if cold_runs else None
        out[f"{key}_warm"] = _pick([m.get(key) for m in warm_runs], "min")
    out["rss_model_mb"] = _pick([m.get("rss_model_mb") for m in ms], "min")
    out["rss_first_call_mb"] = _pick(
        [m.get("rss_after_first_call_mb", 0) - m.get("rss_before_mb", 0) for m in ms], "min"
    )
    out["rss_second_model_mb"] = _pick(
        [v for m in ms for k, v in m.items() if k.startswith("rss_model_mb@")], "min"
    )
    out["peak_rss_mb"] = _pick([m.get("peak_rss_mb") for m in ms], "min")
    for q in ("p50_us", "p99_us", "p999_us", "mean_us"):
        out[q] = _pick([get(m, "latency", q) for m in ms], "min")
    best_lat = min(ms, key=lambda m: get(m, "latency", "p50_us") or float("inf"))
    out["latency_quantiles"] = get(best_lat, "latency", "quantiles") or []
    out["latency_calls"] = get(best_lat, "latency", "calls")
    rows: dict[str, float] = {}
    cores: dict[str, float] = {}
    for key in sorted({k for m in ms for k in (m.get("throughput") or {})}):
        cands = [
            (m["throughput"][key]["rows_per_s"], m["throughput"][key])
            for m in ms
            if key in (m.get("throughput") or {})
        ]
        v, rec = max(cands, key=lambda c: c[0])
        rows[key], cores[key] = v, rec.get("cores_used")
    out["rows_per_s"] = rows
    out["cores_used"] = cores
    out["thread_max_abs_diff"] = _pick([m.get("thread_max_abs_diff") for m in ms], "max")
    pars = [r.get("parity") for r in ok if r.get("parity")]
    if pars:
        worst = max(pars, key=lambda p: (not p.get("ok", False), p.get("max_rel") or 0.0))
        out["parity"] = worst
    return out


def bounds(meta: dict[str, Any], limits: dict[str, Any], features: int) -> dict[str, Any]:
    """The estimated limit per model: one row (µs, from Python) and rows/s per core
    (``bench/limits.py`` explains the inputs)."""
    if not limits or "visit_throughput_ns" not in limits:
        return {}
    nodes = str(meta["shape"]["internal_nodes"])
    c_thr = limits["visit_throughput_ns"].get(nodes)
    c_lat = limits["visit_latency_ns"].get(nodes)
    if c_thr is None or c_lat is None:
        return {}
    v = meta["visits_timed"]["mean"]
    depth = meta["visits_timed"]["max_tree_depth"]
    floor = limits.get("call_floor_ns", 0.0)
    compute_ns = max(v * c_thr, depth * c_lat)
    bytes_per_row = features * 4 + 8
    compute_rps = 1e9 / (v * c_thr)
    bw_rps = limits["copy_gbs"] * 1e9 / bytes_per_row
    return {
        "visits_per_row": v,
        "max_tree_depth": depth,
        "visit_throughput_ns": c_thr,
        "visit_latency_ns": c_lat,
        "call_floor_ns": floor,
        "one_row_us": (floor + compute_ns) / 1e3,
        "one_row_serial_us": (floor + v * c_lat) / 1e3,
        "bytes_per_row": bytes_per_row,
        "rows_per_s_compute": compute_rps,
        "rows_per_s_membw": bw_rps,
        "rows_per_s": min(compute_rps, bw_rps),
    }


def compare(model: dict[str, Any]) -> None:
    """Ratios to lightgbm and distances from the bound, in place."""
    res = model["results"]
    ref = res.get("lightgbm") if res.get("lightgbm", {}).get("status") == "ok" else None
    b = model.get("bound") or {}
    for r in res.values():
        if r.get("status") != "ok":
            continue
        if ref:
            r["speedup_p50_vs_lightgbm"] = (
                ref["p50_us"] / r["p50_us"] if ref.get("p50_us") and r.get("p50_us") else None
            )
            r["rows_ratio_vs_lightgbm"] = {
                k: v / ref["rows_per_s"][k]
                for k, v in r.get("rows_per_s", {}).items()
                if ref.get("rows_per_s", {}).get(k)
            }
        if b:
            dist: dict[str, float] = {}
            if r.get("p50_us"):
                dist["one_row"] = r["p50_us"] / b["one_row_us"]
            for k, v in r.get("rows_per_s", {}).items():
                batch, _, threads = k.partition("@")
                if int(batch) >= 100_000 and v:
                    dist[k] = b["rows_per_s"] * int(threads) / v
            r["distance_from_bound"] = dist


def physical_limits(node_counts: list[int], quick: bool, timeout: float = 600) -> dict[str, Any]:
    cmd = [str(MAIN_PYTHON if MAIN_PYTHON.exists() else sys.executable), str(LIMITS)]
    cmd += ["--nodes", ",".join(str(n) for n in node_counts)] + (["--quick"] if quick else [])
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=str(ROOT))
        return dict(json.loads(proc.stdout))
    except (OSError, ValueError, subprocess.SubprocessError) as exc:
        return {"error": f"{type(exc).__name__}: {exc}"}


# ---- the suite -----------------------------------------------------------------------------


def run_suite(
    sizes: Sequence[tuple[int, int]] = DEFAULT_SIZES,
    adapters: Sequence[str | Path] = adapters_pkg.ALL,
    *,
    quick: bool = False,
    passes: int = 2,
    seed: int = 0,
    train_rows: int = 50_000,
    pool_rows: int = 1_000_000,
    batches: Sequence[int] = BATCHES,
    threads: Sequence[int] = THREADS,
    cache: Path = CACHE,
    cold: bool = True,
    limits: bool = True,
    setup_peers: bool = True,
    quiet_wait_s: float | None = None,
    worker_timeout: float | None = None,
    command: str | None = None,
    out: Path | None = None,
) -> dict[str, Any]:
    """Run the suite; returns (and with ``out`` writes) the JSON document."""
    t_start = time.perf_counter()
    started = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
    cfg = {
        **settings_for(quick),
        "batches": [int(b) for b in batches],
        "threads": [int(t) for t in threads],
        "big_from": 1_000_000,
    }
    quiet_wait_s = (3.0 if quick else 15.0) if quiet_wait_s is None else quiet_wait_s
    worker_timeout = (900.0 if quick else 3600.0) if worker_timeout is None else worker_timeout
    lat_rows = max(cfg["calls"], 2_000)
    info = machine_info()
    log(f"data: {pool_rows:,}-row pool, {lat_rows:,} latency rows")
    data = prepare_data(Path(cache), seed, pool_rows, lat_rows)
    parity_X = np.load(data["parity"])
    metas = {size_key(s): prepare_model(s, seed, train_rows, Path(cache), data) for s in sizes}

    todo = resolve_adapters(adapters)
    peers = (
        peers_environment(setup_peers)
        if any(a["env"] == "peers" and not a["missing"] for a in todo)
        else None
    )
    main_py = str(MAIN_PYTHON if MAIN_PYTHON.exists() else sys.executable)
    base_env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS",)}
    main_env = {
        **base_env,
        "PYTHONPATH": os.pathsep.join([str(ROOT), base_env.get("PYTHONPATH", "")]).rstrip(
            os.pathsep
        ),
    }
    peers_env = {k: v for k, v in base_env.items() if k != "PYTHONPATH"}

    compiled = Path(cache) / "compiled"
    if cold:
        for s in metas:
            for a in todo:
                shutil.rmtree(compiled / s / a["name"], ignore_errors=True)

    plan = [(s, a) for s in metas for a in todo]
    runs: list[dict[str, Any]] = []
    per: dict[tuple[str, str], list[dict[str, Any]]] = {}
    with tempfile.TemporaryDirectory(prefix="bench-suite-") as tmp:
        for p in range(passes):
            order = plan if p % 2 == 0 else plan[::-1]
            for s, a in order:
                meta, name = metas[s], a["name"]
                rec: dict[str, Any]
                skip = a["missing"]
                if not skip and a["env"] == "peers":
                    if peers is None or peers["python"] is None:
                        skip = (peers or {}).get("error") or "peers venv missing"
                    else:
                        err = None
                        mod = peers.get("module")
                        if mod is not None and hasattr(mod, "peer_error"):
                            err = mod.peer_error(peers["status"], name)
                        if err and not str(err).startswith(f"{name} is not a known peer"):
                            skip = str(err).removeprefix("not installed: ")
                if skip:
                    rec = {"adapter": name, "status": f"not installed: {skip}"}
                else:
                    cache_dir = compiled / s / name
                    job = {
                        **cfg,
                        "name": name,
                        "adapter_path": a["path"],
                        "model_dir": meta["model_dir"],
                        "cache_dir": str(cache_dir),
                        "lat_rows": data["lat"],
                        "pool": data["pool"],
                        "parity": data["parity"],
                        "out": str(Path(tmp) / f"{s}-{name}-p{p}.json"),
                        "parity_out": str(Path(tmp) / f"{s}-{name}-p{p}.parity.npy"),
                    }
                    env = dict(main_env if a["env"] == "main" else peers_env)
                    if cold:
                        env["NUMBA_CACHE_DIR"] = str(cache_dir / "numba")
                    python = main_py if a["env"] == "main" else str(peers["python"])  # type: ignore[index]
                    before = wait_quiet(quiet_wait_s)
                    log(
                        f"pass {p + 1}/{passes}: {s} {name} ({a['env']} env; others {before:.2f} cores)"
                    )
                    rec = run_worker(python, job, env, worker_timeout)
                    rec["others_cores_before"] = before
                    if rec.get("status") == "ok":
                        try:
                            pred = np.load(job["parity_out"])
                            rec["parity"] = parity(pred, meta["reference"], parity_X)
                        except (OSError, ValueError) as exc:
                            rec["parity"] = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
                    log(
                        f"  -> {rec.get('status')}"
                        + (
                            f"; p50 {rec['measures']['latency']['p50_us']:.1f} µs"
                            if rec.get("status") == "ok"
                            else ""
                        )
                    )
                rec.update({"pass": p, "size": s, "env": a["env"]})
                runs.append(rec)
                per.setdefault((s, name), []).append(rec)

    lim: dict[str, Any] = {}
    if limits:
        nodes = sorted({int(m["shape"]["internal_nodes"]) for m in metas.values()})
        log(f"physical-limit micro-benchmarks (node graphs of {nodes})")
        wait_quiet(quiet_wait_s)
        lim = physical_limits(nodes, quick)

    out_models = []
    for s, meta in metas.items():
        model = {k: v for k, v in meta.items() if k not in ("reference",)}
        model["trees"], model["leaves"] = (int(x) for x in s.split("x"))
        model["bound"] = bounds(meta, lim, models.F)
        model["results"] = {a["name"]: merge(per[(s, a["name"])], cold) for a in todo}
        compare(model)
        out_models.append(model)

    peer_libs: dict[str, str] = {}
    for r in runs:
        if r.get("env") == "peers":
            peer_libs.update(r.get("libs") or {})
    info["loadavg_end"] = list(os.getloadavg())
    doc: dict[str, Any] = {
        "schema": SCHEMA,
        "command": command or "",
        "started": started,
        "wall_s": time.perf_counter() - t_start,
        "quick": quick,
        "passes": passes,
        "cold_first_pass": cold,
        "settings": {
            **cfg,
            "seed": seed,
            "train_rows": train_rows,
            "pool_rows": pool_rows,
            "lat_rows": lat_rows,
            "parity_rows": len(parity_X),
            "features": models.F,
            "parity_tol_rel": PARITY_TOL,
        },
        "machine": info,
        "envs": {
            "main": {"python": platform.python_version(), "libs": main_libs()},
            "peers": {
                "python": (peers or {}).get("python"),
                "error": (peers or {}).get("error"),
                "peers": {
                    k: {"version": v.get("version"), "error": v.get("error")}
                    for k, v in ((peers or {}).get("status") or {}).get("peers", {}).items()
                },
                "libs": peer_libs,
            },
        },
        "limits": lim,
        "models": out_models,
        "runs": [
            {k: v for k, v in r.items() if k != "measures"} | {"measures": _slim(r.get("measures"))}
            for r in runs
        ],
    }
    doc = _finite(doc)
    if out is not None:
        out = Path(out)
        doc["json_path"] = (
            os.path.relpath(out.resolve(), ROOT) if out.resolve().is_relative_to(ROOT) else str(out)
        )
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(doc, indent=1, default=str))
        log(f"wrote {out} ({doc['wall_s']:.0f} s)")
    return doc


def _slim(measures: Any) -> Any:
    """A pass's measures without the latency quantiles (the merged result keeps the best)."""
    if not isinstance(measures, dict):
        return measures
    m = dict(measures)
    if isinstance(m.get("latency"), dict):
        m["latency"] = {k: v for k, v in m["latency"].items() if k != "quantiles"}
    return m


def _finite(x: Any) -> Any:
    """JSON-safe: NaN/inf -> None, numpy scalars -> Python."""
    if isinstance(x, dict):
        return {str(k): _finite(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [_finite(v) for v in x]
    if isinstance(x, np.generic):
        x = x.item()
    if isinstance(x, float) and (x != x or x in (float("inf"), float("-inf"))):
        return None
    return x


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="fewer calls and rounds")
    ap.add_argument("--sizes", default=",".join(size_key(s) for s in DEFAULT_SIZES))
    ap.add_argument("--adapters", default=",".join(adapters_pkg.ALL), help="names or .py paths")
    ap.add_argument("--passes", type=int, default=2, help="passes, alternating order (default 2)")
    ap.add_argument("--json", type=Path, default=BENCH / "results" / "suite.json")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--train-rows", type=int, default=50_000)
    ap.add_argument("--warm", action="store_true", help="keep compile caches (no cold pass)")
    ap.add_argument("--no-limits", action="store_true", help="skip the physical-limit runs")
    ap.add_argument("--no-peers-setup", action="store_true", help="use the peers venv as it is")
    args = ap.parse_args(argv)
    command = shlex.join([".venv/bin/python", "bench/run.py", *argv])
    run_suite(
        parse_sizes(args.sizes),
        [a.strip() for a in args.adapters.split(",") if a.strip()],
        quick=args.quick,
        passes=max(1, args.passes),
        seed=args.seed,
        train_rows=args.train_rows,
        cold=not args.warm,
        limits=not args.no_limits,
        setup_peers=not args.no_peers_setup,
        command=command,
        out=args.json,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
