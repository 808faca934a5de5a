"""Soak test: a real ``intellilog serve`` under steady mixed load, watched for slow leaks.

Short benchmarks cannot see what grows by a few bytes per request: a cache without a
bound, a task or file left open per model swap, a histogram that slows as it fills. This
script keeps one server (one worker, a registry with ``v1`` in production and ``v2``)
busy for ``--minutes`` at a *fixed* request rate (open loop, so the client's CPU stays
modest on a shared machine and every window sees the same load):

* ``POST /v1/predict`` (one row, a fresh order id each time),
* ``POST /v1/predict/batch`` (``--batch-rows`` rows),
* ``POST /v2/models/eta/infer`` (KServe V2 JSON tensors, ``--v2-rows`` rows),
* ``POST /v1/feedback`` for orders answered by ``/v1/predict``,
* ``GET /metrics`` every ``--scrape-s`` seconds,
* ``POST /v1/admin/promote`` once a minute (half-way through each minute), ``v2`` and
  ``v1`` alternately, each checked to have swapped the served model.

Every ``--sample-s`` seconds it reads the server's RSS and open file descriptors from
``/proc`` (the granian process and its worker, summed), and it times every request. The
run is cut into ``--windows`` equal windows; the first one is the warm-up. It fails, with
the reasons, when

* any request fails (non-2xx, timeout, connection error) or a swap does not take;
* RSS grows more than ``--rss-growth`` (5 %): the last window's median against the
  median of the warm-up window's second half (its end);
* open fds in the last window exceed the warm-up's end by more than ``--fd-slack``;
* a route's p99 drifts up more than ``--p99-drift`` (50 %), first window against last,
  *and* by more than ``--p99-floor-ms``: on a shared 2-core machine a p99 of a few
  milliseconds doubles from one noisy second to the next, which is not a drift.

``python bench/soak.py --minutes 10 --json soak.json`` prints a report (Markdown tables)
and exits 0 when it passed, 1 when it did not. Without ``--registry`` it trains the two
small models first (tests/e2e/servekit.py, about 10 s).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import resource
import shutil
import statistics
import sys
import tempfile
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # `tests.e2e.servekit`, also when run as a script
    sys.path.insert(0, str(ROOT))

from tests.e2e import servekit as kit  # noqa: E402

__all__ = ["SoakConfig", "SoakResult", "main", "run_soak"]

ADMIN_TOKEN = "soak-admin-token"
CLK = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")
#: Fields of a V2 request sent as BYTES tensors (the rest are FP64).
V2_BYTES = ("order_id", "created_at", "vehicle_type", "weather", "zone")
#: Routes whose latency drift is checked (metrics scrapes and swaps are too few per window).
LOAD_ROUTES = ("predict", "batch", "v2_infer", "feedback")


@dataclass(frozen=True)
class SoakConfig:
    minutes: float = 10.0
    predict_rps: float = 30.0
    batch_rps: float = 1.0
    batch_rows: int = 256
    v2_rps: float = 10.0
    v2_rows: int = 8
    feedback_rps: float = 5.0
    scrape_s: float = 5.0
    sample_s: float = 2.0
    swap_s: float = 60.0
    windows: int = 5
    rss_growth: float = 0.05
    fd_slack: int = 32
    p99_drift: float = 0.50
    p99_floor_ms: float = 5.0
    timeout_s: float = 30.0


@dataclass
class SoakResult:
    seconds: float = 0.0
    # (route, start offset s, latency ms, ok)
    requests: list[tuple[str, float, float, bool]] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    # (offset s, rss bytes, open fds)
    samples: list[tuple[float, int, int]] = field(default_factory=list)
    swaps: list[tuple[float, str]] = field(default_factory=list)
    versions_seen: dict[str, int] = field(default_factory=dict)
    skipped: dict[str, int] = field(default_factory=dict)
    client_cpu_s: float = 0.0
    server_cpu_s: float = 0.0
    processes: int = 0  # in the server's tree (granian's main process and its worker)


# ---- the server's process tree ---------------------------------------------------------------


def _tree(pid: int) -> list[int]:
    """``pid`` and its descendants (granian runs the worker as a child process)."""
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        with contextlib.suppress(OSError):
            for t in os.listdir(f"/proc/{p}/task"):
                with contextlib.suppress(OSError):
                    todo += [
                        int(c) for c in Path(f"/proc/{p}/task/{t}/children").read_text().split()
                    ]
    return out


def _rss_fds_cpu(pid: int) -> tuple[int, int, float]:
    """Summed RSS (bytes), open fds and CPU seconds of the server's process tree."""
    rss = fds = 0
    cpu = 0.0
    for p in _tree(pid):
        with contextlib.suppress(OSError):
            rss += int(Path(f"/proc/{p}/statm").read_text().split()[1]) * PAGE
            fds += len(os.listdir(f"/proc/{p}/fd"))
            stat = Path(f"/proc/{p}/stat").read_text()
            parts = stat[stat.rindex(")") + 2 :].split()
            cpu += (int(parts[11]) + int(parts[12])) / CLK
    return rss, fds, cpu


# ---- request bodies --------------------------------------------------------------------------


def _v2_body(rows: list[dict[str, Any]]) -> bytes:
    inputs = []
    for k in kit.ROW:
        dt = "BYTES" if k in V2_BYTES else "FP64"
        inputs.append(
            {"name": k, "shape": [len(rows)], "datatype": dt, "data": [r[k] for r in rows]}
        )
    return json.dumps({"inputs": inputs}).encode()


class _Load:
    """The open-loop load: one ticker per route, each request its own task."""

    def __init__(self, cfg: SoakConfig, client: httpx.AsyncClient, res: SoakResult) -> None:
        self.cfg, self.client, self.res = cfg, client, res
        self.rows = kit.sample_rows(2048, seed=7)
        self.seq = 0
        self.answered: deque[tuple[str, float]] = deque(maxlen=10_000)
        self.t0 = time.monotonic()
        self.tasks: set[asyncio.Task[None]] = set()
        self.inflight = asyncio.Semaphore(64)

    def _next_rows(self, n: int, prefix: str) -> list[dict[str, Any]]:
        out = []
        for _ in range(n):
            r = dict(self.rows[self.seq % len(self.rows)])
            r["order_id"] = f"{prefix}-{self.seq}"
            self.seq += 1
            out.append(r)
        return out

    async def _send(self, route: str, method: str, path: str, body: bytes | None) -> Any:
        """One timed request; its JSON answer, or None when it failed (recorded)."""
        start = time.monotonic()
        ok, payload, why = False, None, ""
        try:
            if method == "GET":
                resp = await self.client.get(path)
            else:
                headers = {"content-type": "application/json"}
                if route == "promote":
                    headers["authorization"] = f"Bearer {ADMIN_TOKEN}"
                resp = await self.client.post(path, content=body, headers=headers)
            ok = 200 <= resp.status_code < 300
            if ok:
                payload = resp.text if route == "metrics" else resp.json()
            else:
                why = f"HTTP {resp.status_code}: {resp.text[:200]}"
        except (httpx.HTTPError, OSError, ValueError) as exc:
            why = f"{type(exc).__name__}: {exc}"
        end = time.monotonic()
        self.res.requests.append((route, start - self.t0, (end - start) * 1e3, ok))
        if not ok:
            self.res.failures.append(f"{route} {path} at {start - self.t0:.1f} s: {why}")
        return payload

    def _spawn(self, route: str, coro: Any) -> None:
        if self.inflight.locked():  # the server fell far behind: count it, do not pile up
            self.res.skipped[route] = self.res.skipped.get(route, 0) + 1
            coro.close()
            return

        async def run() -> None:
            async with self.inflight:
                await coro

        task = asyncio.get_running_loop().create_task(run())
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    def _seen(self, version: Any) -> None:
        v = str(version)
        self.res.versions_seen[v] = self.res.versions_seen.get(v, 0) + 1

    async def predict(self) -> None:
        row = self._next_rows(1, "p")[0]
        ans = await self._send("predict", "POST", "/v1/predict", json.dumps(row).encode())
        if ans is not None:
            self._seen(ans.get("model_version"))
            self.answered.append((row["order_id"], float(ans["eta_minutes"])))

    async def batch(self) -> None:
        body = json.dumps({"deliveries": self._next_rows(self.cfg.batch_rows, "b")}).encode()
        ans = await self._send("batch", "POST", "/v1/predict/batch", body)
        if ans is not None and len(ans.get("predictions", ())) != self.cfg.batch_rows:
            self.res.failures.append(f"batch answered {len(ans['predictions'])} rows")

    async def v2(self) -> None:
        body = _v2_body(self._next_rows(self.cfg.v2_rows, "k"))
        await self._send("v2_infer", "POST", "/v2/models/eta/infer", body)

    async def feedback(self) -> None:
        if not self.answered:
            self.res.skipped["feedback"] = self.res.skipped.get("feedback", 0) + 1
            return
        order, eta = self.answered.popleft()
        row = {
            "order_id": order,
            "actual_minutes": round(eta * 1.1, 2),
            "completed_at": int(time.time()),
        }
        await self._send("feedback", "POST", "/v1/feedback", json.dumps(row).encode())

    async def metrics(self) -> None:
        await self._send("metrics", "GET", "/metrics", None)

    async def promote(self, version: str) -> None:
        body = json.dumps({"version": version}).encode()
        ans = await self._send("promote", "POST", "/v1/admin/promote", body)
        if ans is None:
            return
        served = (ans.get("reload") or {}).get("version")
        if ans.get("version") != version or served != version:
            self.res.failures.append(f"promote {version} did not swap: {ans}")
        else:
            self.res.swaps.append((time.monotonic() - self.t0, version))

    async def ticker(self, rate: float, make: Any, route: str, end: float) -> None:
        """Start ``make()`` ``rate`` times a second until ``end`` (fixed schedule)."""
        if rate <= 0:
            return
        step = 1.0 / rate
        nxt = time.monotonic()
        while nxt < end:
            self._spawn(route, make())
            nxt += step
            await asyncio.sleep(max(0.0, nxt - time.monotonic()))

    async def swapper(self, end: float) -> None:
        k = 0
        while True:
            at = self.t0 + self.cfg.swap_s * (k + 0.5)
            if at >= end:
                return
            await asyncio.sleep(max(0.0, at - time.monotonic()))
            await self.promote("v2" if k % 2 == 0 else "v1")
            k += 1

    async def sampler(self, pid: int, end: float) -> None:
        while time.monotonic() < end:
            rss, fds, _ = _rss_fds_cpu(pid)
            self.res.samples.append((time.monotonic() - self.t0, rss, fds))
            await asyncio.sleep(self.cfg.sample_s)


async def _drive(cfg: SoakConfig, url: str, pid: int) -> SoakResult:
    res = SoakResult()
    limits = httpx.Limits(max_connections=32, max_keepalive_connections=32)
    async with httpx.AsyncClient(base_url=url, timeout=cfg.timeout_s, limits=limits) as client:
        load = _Load(cfg, client, res)
        end = load.t0 + cfg.minutes * 60.0
        cpu0 = _rss_fds_cpu(pid)[2]
        res.processes = len(_tree(pid))
        ru0 = resource.getrusage(resource.RUSAGE_SELF)
        await asyncio.gather(
            load.ticker(cfg.predict_rps, load.predict, "predict", end),
            load.ticker(cfg.batch_rps, load.batch, "batch", end),
            load.ticker(cfg.v2_rps, load.v2, "v2_infer", end),
            load.ticker(cfg.feedback_rps, load.feedback, "feedback", end),
            load.ticker(1.0 / cfg.scrape_s, load.metrics, "metrics", end),
            load.swapper(end),
            load.sampler(pid, end),
        )
        if load.tasks:
            await asyncio.gather(*list(load.tasks))
        ru1 = resource.getrusage(resource.RUSAGE_SELF)
        res.seconds = time.monotonic() - load.t0
        res.client_cpu_s = (ru1.ru_utime + ru1.ru_stime) - (ru0.ru_utime + ru0.ru_stime)
        res.server_cpu_s = _rss_fds_cpu(pid)[2] - cpu0
    return res


# ---- verdict and report ----------------------------------------------------------------------


def _window(t: float, total: float, n: int) -> int:
    return min(n - 1, max(0, int(t / (total / n))))


def analyse(cfg: SoakConfig, res: SoakResult) -> dict[str, Any]:
    """Per-window figures and the list of reasons the run fails (empty: it passed)."""
    total, n = cfg.minutes * 60.0, cfg.windows
    reasons: list[str] = []
    if res.failures:
        reasons.append(f"{len(res.failures)} failed request(s)/swap(s); first: {res.failures[0]}")

    lat: dict[str, list[list[float]]] = {}
    for route, t, ms, _ in res.requests:
        lat.setdefault(route, [[] for _ in range(n)])[_window(t, total, n)].append(ms)
    routes: dict[str, Any] = {}
    for route, per in sorted(lat.items()):
        wins: list[dict[str, Any]] = [
            {
                "n": len(v),
                "p50_ms": float(np.percentile(v, 50)) if v else None,
                "p99_ms": float(np.percentile(v, 99)) if v else None,
            }
            for v in per
        ]
        routes[route] = {"requests": sum(len(v) for v in per), "windows": wins}
        w_first, w_last = wins[0], wins[-1]
        if route in LOAD_ROUTES and w_first["n"] >= 20 and w_last["n"] >= 20:
            p_first, p_last = float(w_first["p99_ms"] or 0), float(w_last["p99_ms"] or 0)
            if p_last > p_first * (1 + cfg.p99_drift) and p_last - p_first > cfg.p99_floor_ms:
                reasons.append(
                    f"{route} p99 drifted from {p_first:.2f} ms (first window) to "
                    f"{p_last:.2f} ms (last window), over +{cfg.p99_drift:.0%}"
                )

    warm_end = total / n
    warm = [s for s in res.samples if warm_end / 2 <= s[0] < warm_end]
    last = [s for s in res.samples if _window(s[0], total, n) == n - 1]
    mem: dict[str, Any] = {"samples": len(res.samples), "processes": res.processes}
    if warm and last:
        rss_warm = statistics.median(s[1] for s in warm)
        rss_last = statistics.median(s[1] for s in last)
        fd_warm, fd_last = max(s[2] for s in warm), max(s[2] for s in last)
        growth = rss_last / rss_warm - 1.0
        mem.update(
            rss_start_mib=res.samples[0][1] / 2**20,
            rss_warm_mib=rss_warm / 2**20,
            rss_last_mib=rss_last / 2**20,
            rss_max_mib=max(s[1] for s in res.samples) / 2**20,
            rss_growth=growth,
            fds_start=res.samples[0][2],
            fds_warm=fd_warm,
            fds_last=fd_last,
            fds_max=max(s[2] for s in res.samples),
        )
        if growth > cfg.rss_growth:
            reasons.append(
                f"RSS grew {growth:+.1%} after warm-up ({rss_warm / 2**20:.1f} MiB at its end, "
                f"{rss_last / 2**20:.1f} MiB median of the last window), over {cfg.rss_growth:.0%}"
            )
        if fd_last > fd_warm + cfg.fd_slack:
            reasons.append(f"open fds grew from {fd_warm} to {fd_last} (slack {cfg.fd_slack})")
    else:
        reasons.append("too few RSS samples to compare warm-up and last window")
    want_swaps = sum(1 for k in range(10_000) if cfg.swap_s * (k + 0.5) < total)
    if len(res.swaps) != want_swaps:
        reasons.append(f"{len(res.swaps)} model swaps took, {want_swaps} were due")
    return {
        "passed": not reasons,
        "reasons": reasons,
        "config": cfg.__dict__,
        "seconds": res.seconds,
        "routes": routes,
        "memory": mem,
        "swaps": [{"at_s": round(t, 1), "version": v} for t, v in res.swaps],
        "versions_seen": res.versions_seen,
        "skipped": res.skipped,
        "failures": res.failures[:50],
        "client_cpu_pct": 100 * res.client_cpu_s / res.seconds if res.seconds else 0.0,
        "server_cpu_pct": 100 * res.server_cpu_s / res.seconds if res.seconds else 0.0,
        "rss_series": [(round(t, 1), r, f) for t, r, f in res.samples],
    }


def report(a: dict[str, Any]) -> str:
    cfg, mem = a["config"], a["memory"]
    n = cfg["windows"]
    win_s = cfg["minutes"] * 60 / n
    lines = [
        f"soak: {a['seconds']:.0f} s, {n} windows of {win_s:.0f} s (the first is the warm-up)",
        f"rate: predict {cfg['predict_rps']}/s, batch {cfg['batch_rps']}/s x {cfg['batch_rows']} rows, "
        f"v2 {cfg['v2_rps']}/s x {cfg['v2_rows']} rows, feedback {cfg['feedback_rps']}/s, "
        f"/metrics every {cfg['scrape_s']} s, a swap every {cfg['swap_s']} s",
        f"CPU: server {a['server_cpu_pct']:.0f} % of a core, client {a['client_cpu_pct']:.0f} %",
        "",
        "| route | requests | " + " | ".join(f"w{i + 1} p50 / p99 ms" for i in range(n)) + " |",
        "| --- | ---: | " + " | ".join("---:" for _ in range(n)) + " |",
    ]
    for route, r in a["routes"].items():
        cells = [f"{w['p50_ms']:.2f} / {w['p99_ms']:.2f}" if w["n"] else "-" for w in r["windows"]]
        lines.append(f"| {route} | {r['requests']} | " + " | ".join(cells) + " |")
    if "rss_warm_mib" in mem:
        lines += [
            "",
            f"RSS MiB ({mem['processes']} processes summed): start {mem['rss_start_mib']:.1f}, warm-up end {mem['rss_warm_mib']:.1f}, "
            f"last window {mem['rss_last_mib']:.1f} ({mem['rss_growth']:+.2%}), max {mem['rss_max_mib']:.1f}",
            f"open fds: start {mem['fds_start']}, warm-up end {mem['fds_warm']}, "
            f"last window {mem['fds_last']}, max {mem['fds_max']}",
        ]
    lines.append(
        f"swaps: {len(a['swaps'])} ({', '.join(s['version'] for s in a['swaps'])}); "
        f"versions answered by /v1/predict: {a['versions_seen']}"
    )
    if a["skipped"]:
        lines.append(f"skipped (server behind or nothing to send): {a['skipped']}")
    lines.append("PASSED" if a["passed"] else "FAILED:\n  " + "\n  ".join(a["reasons"]))
    return "\n".join(lines)


# ---- entry point -----------------------------------------------------------------------------


def run_soak(cfg: SoakConfig, registry: Path | None, workdir: Path) -> dict[str, Any]:
    """Start the server over a copy of ``registry`` (trained when None), load it, judge."""
    if registry is None:
        registry = kit.models(workdir).registry
    reg = kit.copy_registry(registry, workdir / "soak-registry")
    server = kit.ServerProcess(reg, workdir / "serve", env={"ADMIN_TOKEN": ADMIN_TOKEN})
    try:
        server.wait_ready(120.0)
        res = asyncio.run(_drive(cfg, server.url, server.proc.pid))
        if server.proc.poll() is not None:
            res.failures.append(f"server exited with {server.proc.returncode}")
    finally:
        server.stop()
    a = analyse(cfg, res)
    if not a["passed"]:
        a["server_log_tail"] = server.log[-4000:]
    return a


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    d = SoakConfig()
    p.add_argument("--minutes", type=float, default=d.minutes)
    p.add_argument("--predict-rps", type=float, default=d.predict_rps)
    p.add_argument("--batch-rps", type=float, default=d.batch_rps)
    p.add_argument("--batch-rows", type=int, default=d.batch_rows)
    p.add_argument("--v2-rps", type=float, default=d.v2_rps)
    p.add_argument("--v2-rows", type=int, default=d.v2_rows)
    p.add_argument("--feedback-rps", type=float, default=d.feedback_rps)
    p.add_argument("--scrape-s", type=float, default=d.scrape_s)
    p.add_argument("--sample-s", type=float, default=d.sample_s)
    p.add_argument("--swap-s", type=float, default=d.swap_s)
    p.add_argument("--windows", type=int, default=d.windows)
    p.add_argument("--rss-growth", type=float, default=d.rss_growth)
    p.add_argument("--fd-slack", type=int, default=d.fd_slack)
    p.add_argument("--p99-drift", type=float, default=d.p99_drift)
    p.add_argument("--p99-floor-ms", type=float, default=d.p99_floor_ms)
    p.add_argument("--registry", type=Path, help="a registry with v1 and v2 (copied)")
    p.add_argument("--workdir", type=Path, help="kept after the run (default: a temporary one)")
    p.add_argument("--json", type=Path, help="write the full result here")
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    cfg = SoakConfig(
        **{k: getattr(args, k) for k in SoakConfig.__dataclass_fields__ if k != "timeout_s"}
    )
    if cfg.minutes <= 0 or cfg.windows < 2 or cfg.batch_rows < 1 or cfg.v2_rows < 1:
        print("error: --minutes must be > 0, --windows >= 2, row counts >= 1", file=sys.stderr)
        return 2
    if args.registry is not None and not (args.registry / "versions" / "v2").is_dir():
        print(f"error: --registry {args.registry}: no version v2 there", file=sys.stderr)
        return 2
    tmp = None
    if args.workdir is None:
        tmp = tempfile.mkdtemp(prefix="intellilog-soak-")
        workdir = Path(tmp)
    else:
        workdir = args.workdir
        workdir.mkdir(parents=True, exist_ok=True)
    try:
        a = run_soak(cfg, args.registry, workdir)
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
    print(report(a))
    if not a["passed"] and "server_log_tail" in a:
        print("server log (tail):\n" + a["server_log_tail"], file=sys.stderr)
    if args.json is not None:
        args.json.write_text(json.dumps(a, indent=1))
    return 0 if a["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
