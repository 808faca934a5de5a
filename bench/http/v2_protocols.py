"""KServe V2 by protocol: JSON tensors, the binary tensor extension, and gRPC, one server.

One ``intellilog serve --grpc-port`` (one worker, pinned to ``--server-cpu``; prediction
log on, to a SQLite file in the work folder, as a default deployment runs) answers the
same rows three ways:

* ``json``   — ``POST /v2/models/eta/infer`` with JSON ``data`` in and out;
* ``binary`` — the same route with the binary tensor data extension in and out (what
  ``tritonclient.http`` sends at its defaults);
* ``grpc``   — ``ModelInfer`` with ``raw_input_contents`` (what ``tritonclient.grpc``
  sends), raw outputs.

Per request: 1, 256 and 4096 rows (concurrency 16, 4 and 2). Bodies and messages are
encoded once before the run, so the load generator (this process, pinned to
``--client-cpu``: a minimal asyncio HTTP/1.1 keep-alive client and ``grpc.aio``) spends
its time sending and reading. Each point runs ``--seconds`` after a short warm-up; the
three protocols take turns within each size and round, and the figures are the medians
of ``--rounds`` rounds: rows/s, and the server's CPU time per row (its whole process
tree, from ``/proc``), which does not depend on how fast the client is. Then the same
rows end to end as an application sends them: one ``tritonclient`` (``http`` at
``binary_data=False``, ``http`` at its binary defaults, ``grpc``), one request at a time,
converting its numpy columns and reading the outputs back as numpy each time, so the
client's own encoding and decoding count. Before measuring, each protocol's answer is
checked equal to the JSON answer, bit for bit. Request bytes per row are reported too.

Run (about 1.5 minutes a round with ``--registry``, more while it waits for a quiet
machine; training adds about one)::

    .venv/bin/python bench/http/v2_protocols.py [--registry DIR] [--rounds 3] [--seconds 3]

Needs ``intellilog[grpc]`` and ``tritonclient[grpc]`` (the dev extra). Writes
``--out`` (default ``bench/results/v2_protocols.json``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
sys.path.insert(0, str(HERE))
sys.path.insert(1, str(ROOT))
from load import free_port, tree_cpu_seconds  # noqa: E402
from run import cpu_busy, log, machine, train, wait_quiet  # noqa: E402

BIN = Path(sys.executable).parent
PROTOCOLS = ("json", "binary", "grpc")
SIZES = {1: 16, 256: 4, 4096: 2}  # rows per request -> concurrent requests
OUTPUTS = ("eta_minutes", "eta_p10", "eta_p90")


# ---- request bodies ---------------------------------------------------------------------------


def columns(n: int) -> dict[str, tuple[np.ndarray, str]]:
    """``n`` generated deliveries (seed 8, not the training rows) as V2 tensors."""
    from datetime import datetime

    from training.synth import generate

    rows = generate(n, seed=8).drop_columns(["actual_minutes"]).to_pylist()
    cols: dict[str, tuple[np.ndarray, str]] = {}
    for f in ("pickup_lat", "pickup_lon", "dropoff_lat", "dropoff_lon"):
        cols[f] = (np.array([r[f] for r in rows], dtype=np.float64), "FP64")
    prep = [r["prep_minutes"] if r["prep_minutes"] is not None else 10.0 for r in rows]
    cols["prep_minutes"] = (np.array(prep, dtype=np.float64), "FP64")
    cols["items_count"] = (np.array([r["items_count"] for r in rows], dtype=np.int64), "INT64")
    epoch = [int(datetime.fromisoformat(r["created_at"]).timestamp()) for r in rows]
    cols["created_at"] = (np.array(epoch, dtype=np.int64), "INT64")
    for f in ("vehicle_type", "weather", "zone"):
        cols[f] = (np.array([r[f].encode() for r in rows], dtype=np.object_), "BYTES")
    cols["order_id"] = (np.array([f"o-{i}".encode() for i in range(n)], dtype=np.object_), "BYTES")
    return cols


def _raw(values: np.ndarray, dt: str) -> bytes:
    from tritonclient.utils import serialize_byte_tensor

    if dt == "BYTES":
        return bytes(serialize_byte_tensor(values).item())
    return values.astype("<f8" if dt == "FP64" else "<i8").tobytes()


def json_body(cols: dict[str, tuple[np.ndarray, str]]) -> bytes:
    inputs = [
        {
            "name": k,
            "shape": [len(v)],
            "datatype": dt,
            "data": [x.decode() for x in v] if dt == "BYTES" else v.tolist(),
        }
        for k, (v, dt) in cols.items()
    ]
    return json.dumps({"inputs": inputs}).encode()


def binary_body(cols: dict[str, tuple[np.ndarray, str]]) -> tuple[bytes, int]:
    blobs = [_raw(v, dt) for v, dt in cols.values()]
    inputs = [
        {"name": k, "shape": [len(v)], "datatype": dt, "parameters": {"binary_data_size": len(b)}}
        for (k, (v, dt)), b in zip(cols.items(), blobs, strict=True)
    ]
    head = json.dumps({"inputs": inputs, "parameters": {"binary_data_output": True}}).encode()
    return head + b"".join(blobs), len(head)


def grpc_request(cols: dict[str, tuple[np.ndarray, str]]) -> Any:
    from tritonclient.grpc import service_pb2 as pb

    req = pb.ModelInferRequest(model_name="eta")
    for k, (v, dt) in cols.items():
        req.inputs.add(name=k, datatype=dt, shape=[len(v)])
        req.raw_input_contents.append(_raw(v, dt))
    return req


# ---- clients ----------------------------------------------------------------------------------


class Http:
    """One keep-alive HTTP/1.1 connection: send a prepared request, read the answer."""

    def __init__(self, port: int) -> None:
        self.port = port

    async def open(self) -> None:
        self.r, self.w = await asyncio.open_connection("127.0.0.1", self.port)

    async def post(self, request: bytes) -> tuple[dict[str, str], bytes]:
        self.w.write(request)
        head = await self.r.readuntil(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        status = lines[0].split(" ", 2)[1]
        headers = {}
        for line in lines[1:]:
            if ":" in line:
                k, _, v = line.partition(":")
                headers[k.strip().lower()] = v.strip()
        body = await self.r.readexactly(int(headers["content-length"]))
        if status != "200":
            raise RuntimeError(f"HTTP {status}: {body[:300]!r}")
        return headers, body

    def close(self) -> None:
        self.w.close()


def http_request(port: int, body: bytes, header_len: int | None) -> bytes:
    extra = (
        f"Inference-Header-Content-Length: {header_len}\r\n"
        "Content-Type: application/octet-stream\r\n"
        if header_len is not None
        else "Content-Type: application/json\r\n"
    )
    head = (
        f"POST /v2/models/eta/infer HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n{extra}"
        f"Content-Length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body


def decode_http(headers: dict[str, str], body: bytes) -> dict[str, np.ndarray]:
    n = headers.get("inference-header-content-length")
    if n is None:
        doc = json.loads(body)
        return {o["name"]: np.array(o["data"], dtype=np.float64) for o in doc["outputs"]}
    doc = json.loads(body[: int(n)])
    out, pos = {}, int(n)
    for o in doc["outputs"]:
        size = o["parameters"]["binary_data_size"]
        out[o["name"]] = np.frombuffer(body[pos : pos + size], dtype="<f8")
        pos += size
    return out


def decode_grpc(resp: Any) -> dict[str, np.ndarray]:
    return {
        o.name: np.frombuffer(raw, dtype="<f8")
        for o, raw in zip(resp.outputs, resp.raw_output_contents, strict=True)
    }


async def point(
    protocol: str, payload: Any, http_port: int, stub: Any, conc: int, seconds: float
) -> int:
    """Requests answered in ``seconds`` by ``conc`` concurrent senders."""
    done = 0
    stop = time.perf_counter() + seconds

    async def http_sender() -> None:
        nonlocal done
        c = Http(http_port)
        await c.open()
        try:
            while time.perf_counter() < stop:
                await c.post(payload)
                done += 1
        finally:
            c.close()

    async def grpc_sender() -> None:
        nonlocal done
        while time.perf_counter() < stop:
            await stub.ModelInfer(payload, timeout=60)
            done += 1

    sender = grpc_sender if protocol == "grpc" else http_sender
    await asyncio.gather(*(sender() for _ in range(conc)))
    return done


def client_point(protocol: str, client: Any, cols: dict[str, Any], seconds: float) -> int:
    """Requests answered in ``seconds`` by one ``tritonclient`` at its defaults (``json``:
    ``binary_data=False`` in and out), each one converting its numpy columns, sending,
    and reading every output back as numpy, as an application does."""
    import tritonclient.grpc as tg
    import tritonclient.http as th

    done = 0
    stop = time.perf_counter() + seconds
    while time.perf_counter() < stop:
        if protocol == "grpc":
            inputs = []
            for k, (v, dt) in cols.items():
                t = tg.InferInput(k, [len(v)], dt)
                t.set_data_from_numpy(v)
                inputs.append(t)
            res = client.infer("eta", inputs)
        else:
            inputs = []
            for k, (v, dt) in cols.items():
                t = th.InferInput(k, [len(v)], dt)
                if protocol == "json":
                    t.set_data_from_numpy(v, binary_data=False)
                else:
                    t.set_data_from_numpy(v)
                inputs.append(t)
            outputs = (
                [th.InferRequestedOutput(o, binary_data=False) for o in OUTPUTS]
                if protocol == "json"
                else None
            )
            res = client.infer("eta", inputs, outputs=outputs)
        for o in OUTPUTS:
            res.as_numpy(o)
        done += 1
    return done


# ---- main -------------------------------------------------------------------------------------


def wait_ready(url: str, proc: subprocess.Popen[bytes], timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            sys.exit(f"server exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(url + "/health/ready", timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.2)
    sys.exit("server not ready")


async def run(args: argparse.Namespace, reg: Path, work: Path) -> dict[str, Any]:
    import grpc
    from tritonclient.grpc import service_pb2_grpc

    port, gport = free_port(), free_port()
    env = {k: v for k, v in os.environ.items() if k not in ("GRPC_PORT", "DATABASE_URL")}
    env.update(
        OMP_NUM_THREADS="1",
        LOG_LEVEL="WARNING",
        DATABASE_URL=f"sqlite:///{work / 'bench.db'}",
        RELOAD_INTERVAL_S="3600",
    )
    cmd = [str(BIN / "intellilog"), "serve", "--port", str(port), "--grpc-port", str(gport)]
    cmd += ["--registry", str(reg)]
    if args.server_cpu is not None:
        cmd = ["taskset", "-c", args.server_cpu, *cmd]
        os.sched_setaffinity(0, {int(c) for c in args.client_cpu.split(",")})
    logf = (work / "server.log").open("wb")
    proc = subprocess.Popen(cmd, env=env, cwd=work, stdout=logf, stderr=subprocess.STDOUT)
    results: dict[str, dict[str, list[dict[str, float]]]] = {
        p: {str(n): [] for n in SIZES} for p in PROTOCOLS
    }
    wire: dict[str, dict[str, float]] = {p: {} for p in PROTOCOLS}
    try:
        wait_ready(f"http://127.0.0.1:{port}", proc)
        channel = grpc.aio.insecure_channel(
            f"127.0.0.1:{gport}", options=[("grpc.max_receive_message_length", 64 << 20)]
        )
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        import tritonclient.grpc as tg
        import tritonclient.http as th

        clients = {
            "json": th.InferenceServerClient(f"127.0.0.1:{port}", network_timeout=120),
            "binary": th.InferenceServerClient(f"127.0.0.1:{port}", network_timeout=120),
            "grpc": tg.InferenceServerClient(f"127.0.0.1:{gport}"),
        }
        payloads: dict[tuple[str, int], Any] = {}
        all_cols = {}
        for n in SIZES:
            cols = all_cols[n] = columns(n)
            body, hl = binary_body(cols)
            jbody = json_body(cols)
            payloads["json", n] = http_request(port, jbody, None)
            payloads["binary", n] = http_request(port, body, hl)
            payloads["grpc", n] = grpc_request(cols)
            wire["json"][str(n)] = len(jbody) / n
            wire["binary"][str(n)] = len(body) / n
            wire["grpc"][str(n)] = payloads["grpc", n].ByteSize() / n
            c = Http(port)
            await c.open()
            ref = decode_http(*await c.post(payloads["json", n]))
            got = decode_http(*await c.post(payloads["binary", n]))
            c.close()
            g = decode_grpc(await stub.ModelInfer(payloads["grpc", n], timeout=60))
            for name in OUTPUTS:
                assert ref[name].tobytes() == got[name].tobytes() == g[name].tobytes(), name
            log(f"{n} rows: json, binary and grpc answers are equal bit for bit")
        core = int(args.server_cpu) if args.server_cpu is not None else None
        for r in range(args.rounds):
            for n, conc in SIZES.items():
                wait_quiet(args.quiet_wait, 0.3)
                order = PROTOCOLS if r % 2 == 0 else PROTOCOLS[::-1]  # alternate who goes first
                for p in order:
                    await point(p, payloads[p, n], port, stub, conc, args.seconds / 4)
                    cpu0, t0 = tree_cpu_seconds(proc.pid), time.perf_counter()
                    core0 = cpu_busy(core) if core is not None else 0.0
                    reqs = await point(p, payloads[p, n], port, stub, conc, args.seconds)
                    wall = time.perf_counter() - t0
                    cpu = tree_cpu_seconds(proc.pid) - cpu0
                    other = (cpu_busy(core) - core0 - cpu) / wall if core is not None else 0.0
                    rows = reqs * n
                    results[p][str(n)].append(
                        {
                            "rows_per_s": rows / wall,
                            "requests_per_s": reqs / wall,
                            "server_cpu_us_per_row": cpu / rows * 1e6,
                            # CPU other processes took on the server's core: noise
                            "other_cpu_on_server_core": max(0.0, other),
                        }
                    )
                    log(f"round {r + 1} {p:6} {n:5} rows c={conc}: {rows / wall:,.0f} rows/s")
                for p in order:  # one real client, one request at a time, end to end
                    client_point(p, clients[p], all_cols[n], args.seconds / 4)
                    t0 = time.perf_counter()
                    reqs = client_point(p, clients[p], all_cols[n], args.seconds)
                    results[p][str(n)][-1]["tritonclient_rows_per_s"] = (
                        reqs * n / (time.perf_counter() - t0)
                    )
                    log(
                        f"round {r + 1} {p:6} {n:5} rows tritonclient c=1: "
                        f"{results[p][str(n)][-1]['tritonclient_rows_per_s']:,.0f} rows/s"
                    )
        await channel.close()
        for c in clients.values():
            c.close()
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
        logf.close()
    med = {
        p: {
            n: {k: statistics.median(x[k] for x in rounds) for k in rounds[0]}
            for n, rounds in sizes.items()
        }
        for p, sizes in results.items()
    }
    return {"rounds": results, "median": med, "request_bytes_per_row": wire}


def markdown(report: dict[str, Any]) -> str:
    med, wire = report["median"], report["request_bytes_per_row"]
    lines = [
        "| rows/request | | JSON | binary | gRPC | binary / JSON | gRPC / JSON |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for n, conc in SIZES.items():
        j, b, g = (med[p][str(n)] for p in PROTOCOLS)
        for key, label, fmt in (
            ("rows_per_s", f"server rows/s (prepared bodies, c={conc})", "{:,.0f}"),
            ("server_cpu_us_per_row", "server CPU µs/row", "{:.1f}"),
            ("tritonclient_rows_per_s", "tritonclient rows/s (c=1, end to end)", "{:,.0f}"),
        ):
            lines.append(
                f"| {n} | {label} | {fmt.format(j[key])} | {fmt.format(b[key])} | "
                f"{fmt.format(g[key])} | {b[key] / j[key]:.2f} | {g[key] / j[key]:.2f} |"
            )
        w = [wire[p][str(n)] for p in PROTOCOLS]
        lines.append(
            f"| {n} | request bytes/row | {w[0]:,.0f} | {w[1]:,.0f} | {w[2]:,.0f} | "
            f"{w[1] / w[0]:.2f} | {w[2] / w[0]:.2f} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--registry", type=Path, help="a model registry (default: train one)")
    ap.add_argument("--train-rows", type=int, default=200_000)
    ap.add_argument("--max-rounds", type=int, default=300)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--seconds", type=float, default=3.0)
    ap.add_argument("--server-cpu", default="0" if (os.cpu_count() or 1) > 1 else None)
    ap.add_argument("--client-cpu", default="1")
    ap.add_argument(
        "--quiet-wait",
        type=float,
        default=30.0,
        help="seconds to wait for other processes to go quiet before each size of a round",
    )
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "v2_protocols.json")
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="v2-protocols-") as tmp:
        work = Path(tmp)
        reg = args.registry or train(work, args.train_rows, args.max_rounds)
        report = asyncio.run(run(args, reg, work))
    report["machine"] = machine()
    report["command"] = " ".join([Path(sys.argv[0]).name, *(argv or sys.argv[1:])])
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))
    print(markdown(report))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
