"""Where the prediction log's cost goes: the real app in process, no HTTP, CPU per request.

``bench/http/run.py --servers ours,ours_nolog`` gives the log's cost as throughput ratios,
which move by ±0.1 from run to run on a shared 2-core machine. This script calls the app's
ASGI entry directly (the same routes, micro-batcher, recorder and store; no sockets, no
load generator), so the process's CPU time per request is the whole story and the log's
share can be taken apart by switching pieces off:

- ``off``: ``PREDICTION_LOG=off``;
- ``noop``: logging on, the store's prediction writes return at once (the hot path, the
  queue and the writer task only);
- ``pack``: as ``noop``, but the store packs and encodes the batches on its thread
  (``pack_chunks`` + ``encode``) without writing them;
- ``on``: logging on, everything written by the store's thread in this process
  (``PREDICTION_LOG_WRITER=thread``);
- ``relay``: logging on, everything handed to a log-writer process through shared memory
  (``PREDICTION_LOG_WRITER=process``, :mod:`server.store.relay`), that process pinned to
  ``--writer-cpu`` (its CPU is not in the figures: only this process's).

Each mode runs in a fresh process pinned to one core (``taskset -c CPU``: the event loop
and the store's thread share it, as in ``run.py``), against a fresh SQLite file (or
``--database-url``), and reports per round: CPU µs per single-row request (6000 requests,
32 at a time) and per batch row (60 requests of 256 rows, 4 at a time), plus the share of
the store's thread. Run::

    .venv/bin/python bench/http/log_cost.py --registry DIR [--modes off,noop,pack,on]

``--registry``: a model registry (e.g. the one ``run.py --keep`` trained). The request
bodies are generated like run.py's (seed 8).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
MODES = ("off", "noop", "pack", "on", "relay")
SINGLE_N, SINGLE_C = 6000, 32
BATCH_N, BATCH_C, BATCH_ROWS = 60, 4, 256


def _patch_store(mode: str) -> None:
    """Make the SQLite and PostgreSQL stores' prediction writes cheaper per ``mode``."""
    from server.store import batches
    from server.store.batches import encode, pack
    from server.store.postgres import PostgresStore
    from server.store.sqlite import SqliteStore

    def packed(chunks: Any) -> int:
        n = 0
        for b in batches.pack_chunks(chunks, "bench"):  # type: ignore[attr-defined]
            encode(b, "bench")
            b.latest_orders()
            n += b.n
        return n

    def packed_rows(rows: Any) -> int:
        for b in pack(rows, "bench"):
            encode(b, "bench")
            b.latest_orders()
        return len(rows)

    for cls in (SqliteStore, PostgresStore):
        if mode == "noop":

            async def chunks_noop(self: Any, chunks: Any) -> int:
                return sum(map(len, chunks))

            async def rows_noop(self: Any, rows: Any) -> int:
                return len(rows)

            cls.write_chunks = chunks_noop  # type: ignore[method-assign]
            cls.write_predictions = rows_noop  # type: ignore[method-assign]
        elif mode == "pack":

            async def chunks_pack(self: Any, chunks: Any) -> int:
                return await asyncio.to_thread(packed, chunks)

            async def rows_pack(self: Any, rows: Any) -> int:
                return await asyncio.to_thread(packed_rows, rows)

            cls.write_chunks = chunks_pack  # type: ignore[method-assign]
            cls.write_predictions = rows_pack  # type: ignore[method-assign]


async def _measure(app: Any, one: bytes, batch: bytes, rounds: int) -> dict[str, list[float]]:
    async def request(path: str, body: bytes) -> None:
        scope = {
            "type": "http",
            "method": "POST",
            "path": path,
            "raw_path": path.encode(),
            "query_string": b"",
            "headers": [(b"content-type", b"application/json")],
            "client": ("127.0.0.1", 1),
            "server": ("127.0.0.1", 80),
            "scheme": "http",
            "http_version": "1.1",
            "asgi": {"version": "3.0"},
            "root_path": "",
            "state": {},
        }
        sent = False
        status: list[int] = []

        async def receive() -> dict[str, Any]:
            nonlocal sent
            if sent:
                await asyncio.sleep(3600)
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}

        async def send(m: dict[str, Any]) -> None:
            if m["type"] == "http.response.start":
                status.append(m["status"])

        await app(scope, receive, send)
        if status != [200]:
            raise RuntimeError(f"{path} answered {status}")

    def store_seconds() -> float:
        """CPU seconds so far of the threads other than the event loop's (the store's
        thread, and the worker threads of ``pack``)."""
        total = 0.0
        for t in threading.enumerate():
            if t is threading.main_thread() or t.native_id is None:
                continue
            with contextlib.suppress(OSError):
                stat = Path(f"/proc/self/task/{t.native_id}/stat").read_text()
                fields = stat.rsplit(")", 1)[1].split()
                total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
        return total

    rec = app.recorder
    for _ in range(2000):  # warm up (numba, caches, the store)
        await request("/v1/predict", one)
    out: dict[str, list[float]] = {}
    for _ in range(rounds):
        for name, path, body, n, c, rows in (
            ("single", "/v1/predict", one, SINGLE_N, SINGLE_C, 1),
            ("batch", "/v1/predict/batch", batch, BATCH_N, BATCH_C, BATCH_ROWS),
        ):
            s0, t0 = store_seconds(), time.process_time()
            for _ in range(n // c):
                await asyncio.gather(*[request(path, body) for _ in range(c)])
            await rec.flush_predictions()
            cpu, store = time.process_time() - t0, store_seconds() - s0
            unit = "us_per_request" if rows == 1 else "us_per_row"
            out.setdefault(f"{name}_{unit}", []).append(cpu / (n * rows) * 1e6)
            out.setdefault(f"{name}_store_thread_{unit}", []).append(store / (n * rows) * 1e6)
    return out


def _pin_tree(pid: int, cpu: int) -> None:
    """Every thread of ``pid`` to core ``cpu``."""
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(ProcessLookupError, ValueError):
            os.sched_setaffinity(int(task.name), {cpu})


def child(
    mode: str, registry: str, database_url: str, rounds: int, bodies: Path, writer_cpu: str
) -> None:
    """One mode, in this process: start the app (lifespan), measure, print JSON."""
    os.environ.update(
        {
            "MODEL_ARTIFACT_PATH": registry,
            "DATABASE_URL": database_url,
            "PREDICTION_LOG": "off" if mode == "off" else "on",
            "PREDICTION_LOG_WRITER": "process" if mode == "relay" else "thread",
            "LOG_LEVEL": "WARNING",
            "OMP_NUM_THREADS": "1",
        }
    )
    sys.path.insert(0, str(ROOT))
    _patch_store(mode)
    writer = None
    if mode == "relay":
        from server.store.relay import WriterProcess

        writer = WriterProcess()
        writer.start()
        if writer_cpu and writer.proc is not None:  # off this core from its first step
            _pin_tree(writer.proc.pid, int(writer_cpu))
    from server.app import create_app
    from server.config import load_settings

    app: Any = create_app(load_settings(dotenv=None))
    one = (bodies / "one.json").read_bytes()
    batch = (bodies / "batch.json").read_bytes()

    async def main() -> dict[str, list[float]]:
        q: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        said: list[dict[str, Any]] = []

        async def receive() -> dict[str, Any]:
            return await q.get()

        async def send(m: dict[str, Any]) -> None:
            said.append(m)

        scope = {"type": "lifespan", "asgi": {"version": "3.0"}, "state": {}}
        task = asyncio.ensure_future(app(scope, receive, send))
        await q.put({"type": "lifespan.startup"})
        while not said:
            await asyncio.sleep(0.01)
        if said[0]["type"] != "lifespan.startup.complete":
            raise RuntimeError(f"start-up failed: {said[0]}")

        try:
            return await _measure(app, one, batch, rounds)
        finally:
            await q.put({"type": "lifespan.shutdown"})
            await task

    try:
        print(json.dumps(asyncio.run(main())))
    finally:
        if writer is not None:
            writer.stop()


def write_bodies(folder: Path) -> None:
    """run.py's bodies: one delivery and 256 deliveries (seed 8, not training rows)."""
    import pyarrow.parquet as pq

    src = folder / "requests.parquet"
    exe = str(Path(sys.executable).parent / "intellilog")
    subprocess.run(
        [exe, "generate", "--rows", "2000", "--seed", "8", "--out", str(src)],
        check=True,
        capture_output=True,
    )
    rows = pq.read_table(src).drop(["actual_minutes"]).slice(1000, BATCH_ROWS).to_pylist()
    rows = [{k: v for k, v in r.items() if v is not None} for r in rows]
    (folder / "one.json").write_text(json.dumps(rows[0]))
    (folder / "batch.json").write_text(json.dumps({"deliveries": rows}))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--registry", required=True, help="model registry (MODEL_ARTIFACT_PATH)")
    ap.add_argument("--modes", default=",".join(MODES), help="comma list of " + "/".join(MODES))
    ap.add_argument("--rounds", type=int, default=3, help="measurements per mode")
    ap.add_argument("--repeat", type=int, default=2, help="processes per mode, interleaved")
    ap.add_argument("--cpu", default="0", help="core to pin each process to ('' = unpinned)")
    ap.add_argument("--writer-cpu", default="1", help="core of the relay's writer process")
    ap.add_argument("--database-url", help="default: a fresh SQLite file per process")
    ap.add_argument("--json", help="write the results here")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--bodies", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        child(
            args.child,
            args.registry,
            args.database_url,
            args.rounds,
            Path(args.bodies),
            args.writer_cpu,
        )
        return 0
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    if bad := [m for m in modes if m not in MODES]:
        ap.error(f"unknown mode(s) {bad}; choose from {MODES}")
    results: dict[str, dict[str, list[float]]] = {m: {} for m in modes}
    with tempfile.TemporaryDirectory(prefix="intellilog-logcost-") as tmp:
        work = Path(tmp)
        write_bodies(work)
        for k in range(args.repeat):
            for mode in modes:
                url = args.database_url or f"sqlite:///{work / f'{mode}-{k}.db'}"
                cmd = [sys.executable, __file__, "--child", mode, "--registry", args.registry]
                cmd += ["--database-url", url, "--rounds", str(args.rounds), "--bodies", tmp]
                cmd += ["--writer-cpu", args.writer_cpu]
                if args.cpu:
                    cmd = ["taskset", "-c", args.cpu, *cmd]
                res = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
                if res.returncode != 0:
                    sys.exit(f"{mode} failed:\n{res.stderr[-3000:]}")
                got = json.loads(res.stdout.strip().splitlines()[-1])
                for key, values in got.items():
                    results[mode].setdefault(key, []).extend(values)
                print(
                    f"{mode:5} {json.dumps({k: [round(x, 2) for x in v] for k, v in got.items()})}"
                )
    print("\nmedians (µs of CPU; the log's cost is each mode minus off):")
    for mode in modes:
        med = {k: round(statistics.median(v), 2) for k, v in results[mode].items()}
        print(f"  {mode:5} {med}")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
