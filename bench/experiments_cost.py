"""What an experiment costs the hot path: A/B routing and shadow scoring against none.

Three ``intellilog serve`` processes (one worker each) over copies of one registry
(production v1, candidate v2): no experiment (``ENABLE_AB_TESTING=false``), an A/B test
and a shadow test (``ENABLE_AB_TESTING=true``, the experiment started in each one's own
SQLite store). In every round each is measured in turn (the order rotates), so the
ratios compare figures taken minutes apart on the same machine:

- single row, saturated: 16 keep-alive connections POSTing one row to /v1/predict for
  ``--seconds`` (bench/http/load.py; req/s);
- single row, unloaded: one connection, one request at a time (p50 and p99 latency: the
  answer's own path, which shadow scoring must not lengthen);
- batch: 4 connections POSTing 256 rows to /v1/predict/batch (rows/s).

The figures and their ratios to "none" are printed and written as JSON (``--json``).
Run: ``.venv/bin/python bench/experiments_cost.py --rounds 3 --json bench/results/experiments_cost.json``
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.http import load as http_load  # noqa: E402
from tests.e2e import servekit as kit  # noqa: E402

CONFIGS = ("none", "ab", "shadow")


def _start_experiment(registry: Path, url: str, mode: str) -> None:
    from server.experiments import service
    from server.store import open_store
    from training.registry import Registry

    async def go() -> None:
        async with await open_store(url) as store:
            opts = service.StartOptions(candidate="v2", mode=mode, split=0.5)
            await service.start(store, Registry(registry), "default", opts, by="bench")

    asyncio.run(go())


def _measure(port: int, one: bytes, batch: bytes, seconds: float) -> dict[str, float]:
    http_load.load("127.0.0.1", port, "/v1/predict", one, conns=16, seconds=0.3)  # warm
    sat = http_load.load("127.0.0.1", port, "/v1/predict", one, conns=16, seconds=seconds)
    solo = http_load.load("127.0.0.1", port, "/v1/predict", one, conns=1, seconds=seconds)
    many = http_load.load("127.0.0.1", port, "/v1/predict/batch", batch, conns=4, seconds=seconds)
    for r in (sat, solo, many):
        assert r.errors == 0 and r.requests > 0, f"{r.errors} errors of {r.requests}"
    return {
        "single_req_per_s": sat.req_per_s,
        "unloaded_p50_ms": solo.pct(50) / 1e3,
        "unloaded_p99_ms": solo.pct(99) / 1e3,
        "batch_rows_per_s": many.req_per_s * 256,
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--seconds", type=float, default=2.0)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args(argv)

    work = Path(tempfile.mkdtemp(prefix="intellilog-exp-cost-"))
    models = kit.models(work)
    rows = kit.sample_rows(256, seed=3)
    for i, r in enumerate(rows):
        r["order_id"] = f"b-{i}"
    one = json.dumps(rows[0]).encode()
    batch = json.dumps({"deliveries": rows}).encode()
    servers: dict[str, kit.ServerProcess] = {}
    try:
        for name in CONFIGS:
            reg = Path(shutil.copytree(models.registry, work / name / "registry"))
            url = f"sqlite:///{work / name / 'intellilog.db'}"
            if name != "none":
                _start_experiment(reg, url, name)
            servers[name] = kit.ServerProcess(
                reg,
                work / name,
                env={
                    "DATABASE_URL": url,
                    "ENABLE_AB_TESTING": "true" if name != "none" else "false",
                    "LOG_LEVEL": "WARNING",
                },
            )
        for s in servers.values():
            s.wait_ready(120)
        results: dict[str, list[dict[str, float]]] = {n: [] for n in CONFIGS}
        for r in range(args.rounds):
            order = CONFIGS[r % 3 :] + CONFIGS[: r % 3]
            for name in order:
                results[name].append(_measure(servers[name].port, one, batch, args.seconds))
    finally:
        for s in servers.values():
            s.stop()
        shutil.rmtree(work, ignore_errors=True)

    med = {n: {k: statistics.median(x[k] for x in rs) for k in rs[0]} for n, rs in results.items()}
    out: dict[str, Any] = {"median": med, "rounds": results, "ratio_to_none": {}}
    print(f"{'config':8} {'single req/s':>13} {'p50 ms':>8} {'p99 ms':>8} {'batch rows/s':>13}")
    for name in CONFIGS:
        m = med[name]
        print(
            f"{name:8} {m['single_req_per_s']:13,.0f} {m['unloaded_p50_ms']:8.3f} "
            f"{m['unloaded_p99_ms']:8.3f} {m['batch_rows_per_s']:13,.0f}"
        )
        if name != "none":
            out["ratio_to_none"][name] = {k: m[k] / med["none"][k] for k in m}
    for name, ratios in out["ratio_to_none"].items():
        print(f"{name} / none: " + ", ".join(f"{k} {v:.2f}" for k, v in ratios.items()))
    if args.json:
        args.json.write_text(json.dumps(out, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
