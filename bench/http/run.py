"""HTTP benchmark: ``intellilog serve`` against a raw-RSGI ceiling and a FastAPI baseline.

Three servers answer the same two routes with the same model and the same response shape:

* ``ours``     — ``intellilog serve`` (Litestar on granian, ASGI), one worker;
* ``ceiling``  — ``bench/http/rsgi_ceiling.py`` (the same work on raw granian RSGI);
* ``baseline`` — ``bench/http/fastapi_baseline.py`` (FastAPI + pydantic + a per-request
  pandas DataFrame + ``lightgbm.Booster.predict``, on uvicorn), in its own venv.

Steps: generate ~200k deliveries and ``intellilog train`` a model (``--max-rounds 300``;
or reuse ``--registry DIR``), then for each server in turn: start it pinned to one core
(``taskset -c 0``), wait for ``/health/ready``, check one answer, load it from the other
core (``taskset -c 1``) with h2load (wrk when h2load is missing) on ``/v1/predict`` at
concurrency 1, 32 and 256 and on ``/v1/predict/batch`` (256 rows per request, concurrency
8), stop it. Each load point gets a short warm-up run first, then ``--duration`` seconds
measured. Latency percentiles come from h2load's per-request log. Server CPU time per
request is read from ``/proc`` (the server's whole process tree), and the CPU time other
processes took on the server's core is recorded as a noise indicator.

Before each server starts, the run waits (``--quiet-wait``, default 30 s) for other
processes to go quiet. ``--servers`` also takes the probes of ``fastpath_probe.py``
(``fastpath``, ``asgi_route``, ``gc_frozen``, ``microbatch``), ``ours_nobatch``
(``intellilog serve`` with ``MICRO_BATCH_MAX=1``) and ``ours_nolog`` (``intellilog serve``
with ``PREDICTION_LOG=off``; ``ours`` logs every prediction to a SQLite file in the work
folder), which are not run by default. With both ``ours`` and ``ours_nolog``, the summary
gives the cost of the prediction log as on/off ratios (budget: single ≥ 0.90, batch ≥ 0.95),
of the medians and of every round (``log_on_over_off_rounds``: the servers run in turn
within each round, so each round's ratio compares neighbouring measurements).
``--postgres`` logs to a throwaway PostgreSQL instead (``tests/pgserver.py``: initdb and
start from the installed binaries, its processes pinned to the load generator's core,
one database for every server and round, deleted at the end); ``--database-url`` to any
other database.

Writes ``--out`` (default ``bench/http/results``) ``.json`` and ``.md``.

Run (about 2.5 minutes on a quiet 2-core machine, 45 s of it training; training took
almost 5 minutes once while other jobs shared the machine)::

    python3 -m venv /tmp/fastapi-venv
    /tmp/fastapi-venv/bin/pip install fastapi 'uvicorn[standard]' pandas lightgbm
    apt-get install -y nghttp2-client   # h2load (or wrk)
    .venv/bin/python bench/http/run.py [--registry DIR] [--duration 5] [--rounds 1]
    .venv/bin/python bench/http/run.py --servers ours,ours_nolog --rounds 3 [--postgres]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from load import free_port, tree_cpu_seconds

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(1, str(ROOT))  # tests.pgserver for --postgres
HERE = Path(__file__).resolve().parent
BIN = Path(sys.executable).parent
SERVERS = ("ours", "ceiling", "baseline")
#: Not run by default: probes of lighter paths through our app (bench/http/fastpath_probe.py).
PROBES = ("fastpath", "asgi_route", "gc_frozen", "microbatch", "ours_nobatch", "ours_nolog")
ALL = SERVERS + PROBES
SINGLE_C = (1, 32, 256)
BATCH_ROWS = 256
BATCH_C = 8
CLK = os.sysconf("SC_CLK_TCK")
RESPONSE_KEYS = {"order_id", "eta_minutes", "eta_p10", "eta_p90", "model_version", "request_id"}


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# ---- setup ------------------------------------------------------------------------------------


def run_cmd(cmd: list[str], **kw: Any) -> subprocess.CompletedProcess[str]:
    log("$ " + " ".join(cmd))
    res = subprocess.run(cmd, text=True, capture_output=True, cwd=ROOT, **kw)
    if res.returncode != 0:
        sys.exit(f"command failed ({res.returncode}): {' '.join(cmd)}\n{res.stderr[-3000:]}")
    return res


def train(work: Path, rows: int, max_rounds: int) -> Path:
    data = work / "deliveries.parquet"
    reg = work / "registry"
    exe = str(BIN / "intellilog")
    run_cmd([exe, "generate", "--rows", str(rows), "--seed", "7", "--out", str(data)])
    t0 = time.perf_counter()
    opts = ["--registry", str(reg), "--max-rounds", str(max_rounds), "--promote"]
    run_cmd([exe, "train", "--data", str(data), *opts])
    log(f"trained in {time.perf_counter() - t0:.0f} s")
    return reg


def write_bodies(work: Path) -> tuple[Path, Path]:
    """One delivery (``/v1/predict``) and 256 deliveries (``/v1/predict/batch``), from
    fresh generated rows (seed 8, not the training rows)."""
    import pyarrow.parquet as pq

    src = work / "requests.parquet"
    run_cmd(
        [str(BIN / "intellilog"), "generate", "--rows", "2000", "--seed", "8", "--out", str(src)]
    )
    rows = pq.read_table(src).drop(["actual_minutes"]).slice(1000, BATCH_ROWS).to_pylist()
    rows = [{k: v for k, v in r.items() if v is not None} for r in rows]
    one, batch = work / "one.json", work / "batch.json"
    one.write_text(json.dumps(rows[0]))
    batch.write_text(json.dumps({"deliveries": rows}))
    return one, batch


# ---- servers ----------------------------------------------------------------------------------


def server_cmd(name: str, port: int, baseline_python: str) -> list[str]:
    p = str(port)
    if name in ("ours", "ours_nobatch", "ours_nolog"):
        return [str(BIN / "intellilog"), "serve", "--host", "127.0.0.1", "--port", p]
    where = ["--host", "127.0.0.1", "--port", p]
    if name == "ceiling":
        app = str(HERE / "rsgi_ceiling.py") + ":app"
        return [str(BIN / "granian"), "--interface", "rsgi", "--workers", "1", *where, app]
    if name in PROBES:
        app = str(HERE / "fastpath_probe.py") + ":" + name
        granian = [str(BIN / "granian"), "--interface", "asgi", "--factory", "--workers", "1"]
        return [*granian, *where, app]
    # uvicorn's defaults otherwise (uvloop + httptools with uvicorn[standard]); no access log,
    # as granian (log_access=False in `intellilog serve`)
    quiet = ["--workers", "1", "--no-access-log", "--log-level", "warning"]
    app = "fastapi_baseline:app"
    return [baseline_python, "-m", "uvicorn", app, "--app-dir", str(HERE), *where, *quiet]


def pin(cmd: list[str], cpu: str | None) -> list[str]:
    return ["taskset", "-c", cpu, *cmd] if cpu is not None else cmd


class Server:
    def __init__(self, name: str, cmd: list[str], env: dict[str, str], logfile: Path) -> None:
        self.name = name
        self.logfile = logfile
        self.writer_pid: int | None = None
        self._out = logfile.open("w")
        log(f"starting {name}: {' '.join(cmd)}")
        # own session: granian's worker processes are stopped with their parent
        self.proc = subprocess.Popen(
            cmd,
            cwd=ROOT,
            env=env,
            stdout=self._out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def wait_ready(self, url: str, timeout: float) -> float:
        t0 = time.perf_counter()
        while time.perf_counter() - t0 < timeout:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited ({self.proc.returncode}): {self.tail()}")
            with (
                contextlib.suppress(OSError, urllib.error.URLError),
                urllib.request.urlopen(url + "/health/ready", timeout=2) as r,
            ):
                if r.status == 200:
                    return time.perf_counter() - t0
            time.sleep(0.2)
        raise RuntimeError(f"{self.name} not ready after {timeout:.0f} s: {self.tail()}")

    def tail(self) -> str:
        self._out.flush()
        return self.logfile.read_text(errors="replace")[-2000:]

    def cpu_seconds(self) -> float:
        """utime + stime of the server's process tree (its own and its children's
        threads), less the prediction log writer's (:meth:`writer_cpu_seconds`)."""
        return tree_cpu_seconds(self.proc.pid) - self.writer_cpu_seconds()

    def find_writer(self) -> int | None:
        """The pid of the prediction log's writer process (server.store.relay), if any."""
        self.writer_pid = next(
            (p for p in _descendants(self.proc.pid) if b"server.store.relay" in _cmdline(p)),
            None,
        )
        return self.writer_pid

    def writer_cpu_seconds(self) -> float:
        return tree_cpu_seconds(self.writer_pid) if self.writer_pid else 0.0

    def stop(self) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGINT)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)
        self._out.close()


def cpu_busy(cpu: int) -> float:
    """Seconds one CPU ran processes so far (/proc/stat: user + nice + system)."""
    for line in Path("/proc/stat").read_text().splitlines():
        if line.startswith(f"cpu{cpu} "):
            v = [int(x) for x in line.split()[1:]]
            return (v[0] + v[1] + v[2]) / CLK
    return float("nan")


def machine_busy(seconds: float = 1.0) -> float:
    """Cores in use over ``seconds`` (all CPUs, /proc/stat)."""

    def busy() -> float:
        v = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
        return (v[0] + v[1] + v[2] + v[5] + v[6] + v[7]) / CLK

    b0 = busy()
    time.sleep(seconds)
    return (busy() - b0) / seconds


def wait_quiet(max_wait: float, threshold: float) -> float:
    """Wait (at most ``max_wait`` s) until other processes use under ``threshold`` cores;
    the load seen last. Called while none of our servers or load runs."""
    t0 = time.perf_counter()
    said = False
    while True:
        b = machine_busy()
        waited = time.perf_counter() - t0
        if b <= threshold:
            return b
        if waited >= max_wait:
            log(f"other processes still use {b:.1f} cores after {waited:.0f} s; going on")
            return b
        if not said:
            log(f"other processes use {b:.1f} cores; waiting up to {max_wait:.0f} s")
            said = True


def post(url: str, body: bytes) -> dict[str, Any]:
    req = urllib.request.Request(
        url, data=body, headers={"content-type": "application/json"}, method="POST"
    )
    with urllib.request.urlopen(req, timeout=10) as r:
        out: dict[str, Any] = json.loads(r.read())
        out["_x_request_id"] = r.headers.get("x-request-id")
        return out


# ---- load -------------------------------------------------------------------------------------


def pct(lat_us: np.ndarray) -> dict[str, float]:
    if lat_us.size == 0:
        return {"p50_ms": float("nan"), "p99_ms": float("nan"), "p999_ms": float("nan")}
    p50, p99, p999 = np.percentile(lat_us, [50, 99, 99.9]) / 1e3
    return {"p50_ms": float(p50), "p99_ms": float(p99), "p999_ms": float(p999)}


def h2load(
    url: str, body: Path, c: int, duration: float, work: Path, cpu: str | None
) -> dict[str, Any]:
    logf = work / f"h2load-{os.getpid()}.log"
    logf.unlink(missing_ok=True)
    opts = ["--h1", "-c", str(c), "-m", "1", "-t", "1", "-D", f"{round(duration * 1000)}ms"]
    post_ = ["-d", str(body), "-H", "content-type: application/json"]
    cmd = pin(["h2load", *opts, *post_, "--log-file", str(logf), url], cpu)
    res = subprocess.run(cmd, text=True, capture_output=True, timeout=duration + 30)
    if res.returncode != 0 and not logf.exists():
        raise RuntimeError(f"h2load failed: {res.stdout[-1000:]} {res.stderr[-1000:]}")
    rows = np.loadtxt(logf, dtype=np.int64, ndmin=2) if logf.stat().st_size else np.empty((0, 3))
    ok = rows[(rows[:, 1] >= 200) & (rows[:, 1] < 300)] if rows.size else rows
    m = re.search(r"requests: (\d+) total.*?(\d+) failed, (\d+) errored, (\d+) timeout", res.stdout)
    failed = sum(int(x) for x in m.groups()[1:]) if m else 0
    return {
        "requests": len(ok),
        "non_2xx": int(len(rows) - len(ok)),
        "failed": failed,
        "rps": len(ok) / duration,
        **pct(ok[:, 2].astype(np.float64) if len(ok) else np.empty(0)),
    }


_WRK_LUA = """
wrk.method = "POST"
wrk.headers["content-type"] = "application/json"
local f = io.open(os.getenv("BENCH_BODY"), "rb"); wrk.body = f:read("*a"); f:close()
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format('WRKJSON {"requests": %d, "non_2xx": %d, "failed": %d, ' ..
    '"p50": %d, "p99": %d, "p999": %d}\\n', summary.requests, e.status,
    e.connect + e.read + e.write + e.timeout, latency:percentile(50),
    latency:percentile(99), latency:percentile(99.9)))
end
"""


def wrk(
    url: str, body: Path, c: int, duration: float, work: Path, cpu: str | None
) -> dict[str, Any]:
    script = work / "post.lua"
    script.write_text(_WRK_LUA)
    d = max(1, round(duration))
    cmd = pin(["wrk", "-t1", f"-c{c}", f"-d{d}s", "-s", str(script), url], cpu)
    env = {**os.environ, "BENCH_BODY": str(body)}
    res = subprocess.run(cmd, text=True, capture_output=True, timeout=d + 30, env=env)
    m = re.search(r"WRKJSON (\{.*\})", res.stdout)
    if not m:
        raise RuntimeError(f"wrk failed: {res.stdout[-1000:]} {res.stderr[-1000:]}")
    w = json.loads(m.group(1))
    good = w["requests"] - w["non_2xx"]
    return {
        "requests": good,
        "non_2xx": w["non_2xx"],
        "failed": w["failed"],
        "rps": good / d,
        "p50_ms": w["p50"] / 1e3,
        "p99_ms": w["p99"] / 1e3,
        "p999_ms": w["p999"] / 1e3,
    }


def measure(
    tool: str,
    server: Server,
    url: str,
    body: Path,
    c: int,
    args: argparse.Namespace,
    work: Path,
) -> dict[str, Any]:
    fn = h2load if tool == "h2load" else wrk
    if args.warmup > 0:
        fn(url, body, c, args.warmup, work, args.load_cpu)
    cpu0, busy0 = server.cpu_seconds(), cpu_busy(int(args.server_cpu or 0))
    w0 = server.writer_cpu_seconds()
    r = fn(url, body, c, args.duration, work, args.load_cpu)
    cpu1, busy1 = server.cpu_seconds(), cpu_busy(int(args.server_cpu or 0))
    own = cpu1 - cpu0
    r["server_cpu_us_per_req"] = own / max(r["requests"], 1) * 1e6
    if server.writer_pid:  # the log writer's CPU, on its own core
        r["writer_cpu_us_per_req"] = (
            (server.writer_cpu_seconds() - w0) / max(r["requests"], 1) * 1e6
        )
    r["server_cpu_util"] = own / args.duration
    r["foreign_cpu_on_server_core"] = max(0.0, (busy1 - busy0) - own) / args.duration
    r["concurrency"] = c
    return r


# ---- the run ----------------------------------------------------------------------------------


def bench_server(
    name: str, args: argparse.Namespace, work: Path, env: dict[str, str], bodies: tuple[Path, Path]
) -> dict[str, Any]:
    busy = wait_quiet(args.quiet_wait, args.quiet_threshold)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    if name == "ours_nobatch":  # the product with micro-batching off
        env = {**env, "MICRO_BATCH_MAX": "1"}
    if name == "ours_nolog":  # the product with the prediction log off
        env = {**env, "PREDICTION_LOG": "off"}
    # every server's own database and spool, in the work folder (not the repository)
    db = args.database_url or f"sqlite:///{work / name / 'intellilog.db'}"
    env = {**env, "DATABASE_URL": db, "SPOOL_PATH": str(work / name / "intellilog.spool")}
    srv = Server(
        name,
        pin(server_cmd(name, port, args.baseline_python), args.server_cpu),
        env,
        work / f"{name}.log",
    )
    out: dict[str, Any] = {"other_load_before_cores": busy}
    try:
        out["startup_s"] = srv.wait_ready(url, args.ready_timeout)
        if name.startswith("ours") and (wpid := srv.find_writer()) is not None:
            # the log writer process off the server's core (--writer-cpu), as the
            # PostgreSQL of --postgres: the figure is the serving core's throughput; its
            # own CPU is reported apart (writer_cpu_us_per_req)
            cpu = args.writer_cpu
            if cpu is not None:  # every thread: sched_setaffinity(pid) moves only one
                for p in [wpid, *_descendants(wpid)]:
                    for task in Path(f"/proc/{p}/task").iterdir():
                        with contextlib.suppress(ProcessLookupError, ValueError):
                            os.sched_setaffinity(int(task.name), {int(cpu)})
            out["log_writer"] = {"pid": wpid, "cpu": cpu}
        one, batch = bodies
        out["sample"] = post(url + "/v1/predict", one.read_bytes())
        b = post(url + "/v1/predict/batch", batch.read_bytes())
        out["sample_batch_first"] = b["predictions"][0]
        out["sample_batch_count"] = b["count"]
        if name != "baseline":  # the engine the server says it runs
            with urllib.request.urlopen(url + "/v1/models", timeout=5) as r:
                out["engine"] = json.loads(r.read())["serving"]["engine"]
        else:
            out["engine"] = "lightgbm.Booster"
        missing = RESPONSE_KEYS - set(out["sample"])
        if missing or b["count"] != BATCH_ROWS:
            raise RuntimeError(f"{name}: bad answer (missing {missing}, count {b['count']})")
        for c in SINGLE_C:
            r = measure(args.tool, srv, url + "/v1/predict", one, c, args, work)
            log(
                f"{name:8} predict c={c:<3} {r['rps']:8.0f} req/s  p50 {r['p50_ms']:.2f} "
                f"p99 {r['p99_ms']:.2f} p99.9 {r['p999_ms']:.2f} ms  cpu {r['server_cpu_us_per_req']:.0f} µs/req"
            )
            out[f"single_c{c}"] = r
        r = measure(args.tool, srv, url + "/v1/predict/batch", batch, BATCH_C, args, work)
        r["rows_per_s"] = r["rps"] * BATCH_ROWS
        log(
            f"{name:8} batch   c={BATCH_C:<3} {r['rows_per_s']:8.0f} rows/s  p50 {r['p50_ms']:.2f} "
            f"p99 {r['p99_ms']:.2f} ms"
        )
        out[f"batch{BATCH_ROWS}_c{BATCH_C}"] = r
        if name.startswith("ours"):  # where the logged rows went (the log writer kept up?)
            with urllib.request.urlopen(url + "/metrics", timeout=5) as m:
                text = m.read().decode()
            out["prediction_log"] = {
                k: v
                for k, v in _metric_values(text).items()
                if k.startswith("intellilog_prediction_log")
            }
    finally:
        srv.stop()
    return out


def median_of(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    """Per load point, the median of every number over the rounds."""
    if len(rounds) == 1:
        return rounds[0]
    merged: dict[str, Any] = dict(rounds[0])
    for k, v in rounds[0].items():
        if isinstance(v, dict) and k.startswith(("single", "batch")):
            merged[k] = {
                f: statistics.median(r[k][f] for r in rounds) if isinstance(x, int | float) else x
                for f, x in v.items()
            }
    return merged


def machine() -> dict[str, Any]:
    cpu = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "loadavg_at_start": Path("/proc/loadavg").read_text().split()[:3],
    }


def versions(baseline_python: str) -> dict[str, str]:
    from importlib.metadata import version

    out = {p: version(p) for p in ("granian", "litestar", "msgspec", "numba", "onnxruntime")}
    code = (
        "import json, importlib.metadata as m; print(json.dumps({p: m.version(p) for p in "
        "('fastapi', 'pydantic', 'uvicorn', 'uvloop', 'httptools', 'pandas', 'lightgbm')}))"
    )
    with contextlib.suppress(OSError, subprocess.SubprocessError, ValueError):
        res = subprocess.run([baseline_python, "-c", code], capture_output=True, text=True)
        out.update({f"baseline:{k}": v for k, v in json.loads(res.stdout).items()})
    tool = shutil.which("h2load")
    if tool:
        res = subprocess.run([tool, "--version"], capture_output=True, text=True)
        out["h2load"] = res.stdout.strip()
    return out


def served_engine(env: dict[str, str]) -> str:
    """The engine ``load_settings`` picks under ``env`` (INTELLILOG_ENGINE or the default)."""
    from server.config import load_settings

    return load_settings(env, dotenv=ROOT / ".env").engine


def _redact(url: str) -> str:
    return re.sub(r"^([a-z]+://[^:/@]*):[^@/]*@", r"\1:***@", url)


def ratio(a: float, b: float) -> float:
    return a / b if b else float("nan")


def log_rounds(rounds: dict[str, list[dict[str, Any]]]) -> dict[str, list[float]]:
    """The prediction log's on/off ratios of every round (``ours`` against the
    ``ours_nolog`` run of the same round)."""
    on, off = rounds.get("ours", []), rounds.get("ours_nolog", [])

    def peak(r: dict[str, Any]) -> float:
        return max(r[f"single_c{c}"]["rps"] for c in SINGLE_C)

    def rows(r: dict[str, Any]) -> float:
        return float(r[f"batch{BATCH_ROWS}_c{BATCH_C}"]["rows_per_s"])

    pairs = list(zip(on, off, strict=False))
    return {
        "single_peak": [round(ratio(peak(a), peak(b)), 3) for a, b in pairs],
        "batch_rows": [round(ratio(rows(a), rows(b)), 3) for a, b in pairs],
    }


def launch_postgres(cpu: str | None) -> Any:
    """A throwaway PostgreSQL (tests/pgserver.py), its processes pinned to ``cpu``."""
    from tests.pgserver import PgServer

    pg = PgServer.launch()
    if cpu is not None:
        # the postmaster (backends forked later inherit its core) and the processes it
        # has started already (checkpointer, WAL writer, ...)
        pid = int((pg.data / "postmaster.pid").read_text().split()[0])
        for proc in [pid, *_children(pid)]:
            with contextlib.suppress(ProcessLookupError):
                os.sched_setaffinity(proc, {int(cpu)})
    return pg


def _metric_values(text: str) -> dict[str, float]:
    """``name{labels}`` → value of the samples of a Prometheus exposition text."""
    out = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            key, _, value = line.rpartition(" ")
            with contextlib.suppress(ValueError):
                out[key] = float(value)
    return out


def _cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""


def _descendants(pid: int) -> list[int]:
    out, todo = [], [pid]
    while todo:
        kids = _children(todo.pop())
        out += kids
        todo += kids
    return out


def _children(pid: int) -> list[int]:
    out = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError, IndexError, ValueError):
                stat = (entry / "stat").read_text()
                if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                    out.append(int(entry.name))
    return out


def summarise(res: dict[str, dict[str, Any]]) -> dict[str, Any]:
    s: dict[str, Any] = {}
    have = [n for n in ALL if n in res]

    def peak(n: str) -> float:
        return max(res[n][f"single_c{c}"]["rps"] for c in SINGLE_C)

    def rows(n: str) -> float:
        return float(res[n][f"batch{BATCH_ROWS}_c{BATCH_C}"]["rows_per_s"])

    if "ours" in have:
        s["ours_p99_ms_c32"] = res["ours"]["single_c32"]["p99_ms"]
        s["target_p99_c32_lt_5ms"] = s["ours_p99_ms_c32"] < 5.0
        for other, key in (("ceiling", "ceiling"), ("baseline", "baseline")):
            if other in have:
                s[f"single_peak_ours_over_{key}"] = ratio(peak("ours"), peak(other))
                for c in SINGLE_C:
                    s[f"single_c{c}_ours_over_{key}"] = ratio(
                        res["ours"][f"single_c{c}"]["rps"], res[other][f"single_c{c}"]["rps"]
                    )
                s[f"batch_rows_ours_over_{key}"] = ratio(rows("ours"), rows(other))
        if "ceiling" in have:
            s["target_single_ge_60pct_ceiling"] = s["single_peak_ours_over_ceiling"] >= 0.6
            s["target_batch_ge_80pct_ceiling"] = s["batch_rows_ours_over_ceiling"] >= 0.8
        if "baseline" in have:
            s["target_single_ge_3x_baseline"] = s["single_peak_ours_over_baseline"] >= 3.0
    if "ours" in have and "ours_nolog" in have:  # the prediction log's cost: on / off
        s["log_on_over_off_single_peak"] = ratio(peak("ours"), peak("ours_nolog"))
        for c in SINGLE_C:
            s[f"log_on_over_off_single_c{c}"] = ratio(
                res["ours"][f"single_c{c}"]["rps"], res["ours_nolog"][f"single_c{c}"]["rps"]
            )
        s["log_on_over_off_batch_rows"] = ratio(rows("ours"), rows("ours_nolog"))
        s["target_log_single_ge_090"] = s["log_on_over_off_single_peak"] >= 0.90
        s["target_log_batch_ge_095"] = s["log_on_over_off_batch_rows"] >= 0.95
        bkey = f"batch{BATCH_ROWS}_c{BATCH_C}"
        on, off = res["ours"][bkey], res["ours_nolog"][bkey]
        s["log_server_cpu_us_per_batch_row_on_minus_off"] = (
            on["server_cpu_us_per_req"] - off["server_cpu_us_per_req"]
        ) / BATCH_ROWS
        if "writer_cpu_us_per_req" in on:  # the log writer process, on its own core
            s["log_writer_cpu_us_per_batch_row"] = on["writer_cpu_us_per_req"] / BATCH_ROWS
            s["log_writer_cpu_us_per_single_req_peak"] = max(
                res["ours"][f"single_c{c}"].get("writer_cpu_us_per_req", 0.0) for c in SINGLE_C
            )
    if "ceiling" in have:
        for probe in PROBES:
            if probe in res:
                s[f"single_peak_{probe}_over_ceiling"] = ratio(peak(probe), peak("ceiling"))
                s[f"{probe}_p99_ms_c32"] = res[probe]["single_c32"]["p99_ms"]
    return s


def markdown(report: dict[str, Any]) -> str:
    res = report["results"]
    lines = [
        "| server | load | req/s | rows/s | p50 ms | p99 ms | p99.9 ms | server CPU µs/req | other CPU on server core | errors |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for name in ALL:
        if name not in res:
            continue
        points = [(f"single_c{c}", f"/v1/predict c={c}") for c in SINGLE_C]
        points.append((f"batch{BATCH_ROWS}_c{BATCH_C}", f"batch {BATCH_ROWS} rows c={BATCH_C}"))
        for key, label in points:
            r = res[name][key]
            rows = r.get("rows_per_s", r["rps"])
            errs = int(r["non_2xx"] + r["failed"])
            lines.append(
                f"| {name} | {label} | {r['rps']:,.0f} | {rows:,.0f} | {r['p50_ms']:.2f} | "
                f"{r['p99_ms']:.2f} | {r['p999_ms']:.2f} | {r['server_cpu_us_per_req']:,.0f} | "
                f"{r['foreign_cpu_on_server_core'] * 100:.0f}% | {errs} |"
            )
    lines.append("")
    lines.append(
        "Server CPU µs/req: CPU time of the server's process tree per answered request. "
        "Other CPU: time other processes ran on the server's core during the load "
        "(noise; 0% on a quiet machine). Other load before each start: "
        + ", ".join(
            f"{n} {res[n].get('other_load_before_cores', float('nan')):.2f} cores"
            for n in ALL
            if n in res
        )
        + ". Engines: "
        + ", ".join(f"{n} {res[n].get('engine', '?')}" for n in ALL if n in res)
        + "."
    )
    s = report["summary"]
    lines += ["", "| measure | value | target | met |", "| --- | ---: | --- | --- |"]

    def row(label: str, key: str, fmt: str, target: str, flag: str | None) -> None:
        if key in s:
            met = "" if flag is None else ("yes" if s.get(flag) else "**no**")
            lines.append(f"| {label} | {format(s[key], fmt)} | {target} | {met} |")

    row(
        "single-row peak req/s, ours / ceiling",
        "single_peak_ours_over_ceiling",
        ".2f",
        "≥ 0.60",
        "target_single_ge_60pct_ceiling",
    )
    row(
        "single-row peak req/s, ours / baseline",
        "single_peak_ours_over_baseline",
        ".2f",
        "≥ 3.0",
        "target_single_ge_3x_baseline",
    )
    for c in SINGLE_C:
        row(f"req/s at c={c}, ours / ceiling", f"single_c{c}_ours_over_ceiling", ".2f", "", None)
        row(f"req/s at c={c}, ours / baseline", f"single_c{c}_ours_over_baseline", ".2f", "", None)
    row(
        "batch rows/s, ours / ceiling",
        "batch_rows_ours_over_ceiling",
        ".2f",
        "≥ 0.80",
        "target_batch_ge_80pct_ceiling",
    )
    row("batch rows/s, ours / baseline", "batch_rows_ours_over_baseline", ".2f", "", None)
    row("p99 at c=32, ours (ms)", "ours_p99_ms_c32", ".2f", "< 5", "target_p99_c32_lt_5ms")
    row(
        "prediction log on / off: single-row peak req/s",
        "log_on_over_off_single_peak",
        ".2f",
        "≥ 0.90",
        "target_log_single_ge_090",
    )
    for c in SINGLE_C:
        row(
            f"prediction log on / off: req/s at c={c}",
            f"log_on_over_off_single_c{c}",
            ".2f",
            "",
            None,
        )
    row(
        "prediction log on / off: batch rows/s",
        "log_on_over_off_batch_rows",
        ".2f",
        "≥ 0.95",
        "target_log_batch_ge_095",
    )
    for probe in PROBES:
        row(
            f"probe {probe}: single-row peak req/s / ceiling",
            f"single_peak_{probe}_over_ceiling",
            ".2f",
            "",
            None,
        )
        row(f"probe {probe}: p99 at c=32 (ms)", f"{probe}_p99_ms_c32", ".2f", "", None)
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "--registry", help="reuse this model registry (skip data generation and training)"
    )
    ap.add_argument("--rows", type=int, default=200_000, help="training rows (default 200000)")
    ap.add_argument("--max-rounds", type=int, default=300, help="boosting rounds (default 300)")
    ap.add_argument("--duration", type=float, default=5.0, help="seconds per load point, ≤ 10")
    ap.add_argument("--warmup", type=float, default=1.0, help="warm-up seconds per load point")
    ap.add_argument("--rounds", type=int, default=1, help="repeat all servers; medians reported")
    ap.add_argument("--servers", default=",".join(SERVERS), help="comma list of " + "/".join(ALL))
    ap.add_argument("--baseline-python", default="/tmp/fastapi-venv/bin/python")
    ap.add_argument(
        "--engine", help="INTELLILOG_ENGINE for ours and the ceiling (default: the product's)"
    )
    ap.add_argument(
        "--database-url",
        help="DATABASE_URL of our servers (default: a SQLite file per server in the work folder)",
    )
    ap.add_argument(
        "--postgres",
        action="store_true",
        help="log to a throwaway PostgreSQL (tests/pgserver.py) pinned to the load core",
    )
    ap.add_argument("--server-cpu", default="0", help="core for the server ('' = unpinned)")
    ap.add_argument("--load-cpu", default="1", help="core for the load generator ('' = unpinned)")
    ap.add_argument(
        "--writer-cpu",
        help="core for the prediction log's writer process (default: the load core)",
    )
    ap.add_argument("--tool", choices=["h2load", "wrk"], help="default: h2load, else wrk")
    ap.add_argument("--ready-timeout", type=float, default=120.0)
    ap.add_argument(
        "--quiet-wait",
        type=float,
        default=30.0,
        help="before each server, wait up to this many seconds for other load to drop",
    )
    ap.add_argument("--quiet-threshold", type=float, default=0.25, help="cores (default 0.25)")
    ap.add_argument("--out", default=str(HERE / "results"), help="output path without suffix")
    ap.add_argument("--keep", action="store_true", help="keep the work folder (logs, model)")
    args = ap.parse_args(argv)

    if not 0 < args.duration <= 10:
        ap.error("--duration must be within (0, 10] seconds")
    names = [n.strip() for n in args.servers.split(",") if n.strip()]
    if bad := [n for n in names if n not in ALL]:
        ap.error(f"unknown server(s) {bad}; choose from {ALL}")
    if "baseline" in names and not Path(args.baseline_python).exists():
        ap.error(f"{args.baseline_python} missing: create the FastAPI venv (see --help)")
    args.tool = args.tool or ("h2load" if shutil.which("h2load") else "wrk")
    if not shutil.which(args.tool):
        sys.exit("neither h2load (apt: nghttp2-client) nor wrk is installed")
    has_taskset = shutil.which("taskset") is not None and (os.cpu_count() or 1) >= 2
    args.server_cpu = (args.server_cpu or None) if has_taskset else None
    args.load_cpu = (args.load_cpu or None) if has_taskset else None
    if args.writer_cpu is None:
        args.writer_cpu = args.load_cpu
    args.writer_cpu = (args.writer_cpu or None) if has_taskset else None
    if not has_taskset:
        log("warning: no taskset or one core: server and load generator share the CPUs")
    if args.postgres and args.database_url:
        ap.error("--postgres and --database-url exclude each other")

    t_start = time.perf_counter()
    work = Path(tempfile.mkdtemp(prefix="intellilog-http-"))
    pg = None
    try:
        if args.postgres:
            pg = launch_postgres(args.load_cpu)
            args.database_url = pg.new_database()
            log(f"PostgreSQL at {pg.root}, pinned to core {args.load_cpu}")
        reg = (
            Path(args.registry).resolve()
            if args.registry
            else train(work, args.rows, args.max_rounds)
        )
        bodies = write_bodies(work)
        env = {
            **os.environ,
            "MODEL_ARTIFACT_PATH": str(reg),
            "PYTHONPATH": str(ROOT),
            # one core per server: no OpenMP thread pool fighting itself (LightGBM)
            "OMP_NUM_THREADS": "1",
            "LOG_LEVEL": "WARNING",
        }
        if args.engine:
            env["INTELLILOG_ENGINE"] = args.engine
        env.pop("PROMETHEUS_MULTIPROC_DIR", None)
        rounds: dict[str, list[dict[str, Any]]] = {n: [] for n in names}
        for k in range(args.rounds):
            for n in names:
                log(f"round {k + 1}/{args.rounds}: {n}")
                rounds[n].append(bench_server(n, args, work, env, bodies))
        results = {n: median_of(rs) for n, rs in rounds.items()}
        report = {
            "command": " ".join([Path(sys.executable).name, *sys.argv]),
            "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "machine": machine(),
            "versions": versions(args.baseline_python),
            "settings": {
                "tool": args.tool,
                "duration_s": args.duration,
                "warmup_s": args.warmup,
                "rounds": args.rounds,
                "server_cpu": args.server_cpu,
                "load_cpu": args.load_cpu,
                "engine": served_engine(env),
                "batch_rows": BATCH_ROWS,
                "batch_concurrency": BATCH_C,
                "registry": str(reg),
                "trained_here": not args.registry,
                "train_rows": None if args.registry else args.rows,
                "max_rounds": None if args.registry else args.max_rounds,
                "database": (
                    "postgresql (--postgres)"
                    if args.postgres
                    else _redact(args.database_url)
                    if args.database_url
                    else "sqlite file"
                ),
            },
            "results": results,
            "rounds": rounds if args.rounds > 1 else None,
            "summary": {**summarise(results), "log_on_over_off_rounds": log_rounds(rounds)},
            "elapsed_s": time.perf_counter() - t_start,
        }
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.with_suffix(".json").write_text(json.dumps(report, indent=2) + "\n")
        md = markdown(report)
        out.with_suffix(".md").write_text(md)
        print(md)
        if report["summary"]["log_on_over_off_rounds"]["batch_rows"]:
            log(f"prediction log on/off per round: {report['summary']['log_on_over_off_rounds']}")
        log(f"wrote {out}.json and {out}.md in {report['elapsed_s']:.0f} s")
    finally:
        if pg is not None:
            pg.destroy()
        if args.keep:
            log(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
