"""A small closed-loop HTTP/1.1 load generator in pure Python (asyncio, keep-alive).

For the CI gate (``bench/test_gates.py``), where h2load is not installed: ``c``
connections each send the same POST again as soon as the previous answer is in, for
``seconds``. It is slower than h2load (about 30 µs of client CPU per request), so the
gate compares the *servers' CPU time per request* (read from ``/proc``), which does
not depend on how fast the client is, next to the request rates.
"""

from __future__ import annotations

import asyncio
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

CLK = os.sysconf("SC_CLK_TCK")


@dataclass
class LoadResult:
    requests: int
    errors: int
    seconds: float
    latency_us: np.ndarray

    @property
    def req_per_s(self) -> float:
        return self.requests / self.seconds if self.seconds > 0 else 0.0

    def pct(self, q: float) -> float:
        return float(np.percentile(self.latency_us, q)) if self.latency_us.size else float("nan")


def request_bytes(host: str, port: int, path: str, body: bytes) -> bytes:
    head = (
        f"POST {path} HTTP/1.1\r\nhost: {host}:{port}\r\ncontent-type: application/json\r\n"
        f"content-length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body


async def _connection(
    host: str, port: int, req: bytes, deadline: float, lat: list[int], errors: list[int]
) -> None:
    reader, writer = await asyncio.open_connection(host, port)
    clock = time.perf_counter_ns
    try:
        while time.perf_counter() < deadline:
            t0 = clock()
            writer.write(req)
            head = await reader.readuntil(b"\r\n\r\n")
            length = 0
            for line in head.split(b"\r\n"):
                if line[:15].lower() == b"content-length:":
                    length = int(line[15:])
            await reader.readexactly(length)
            lat.append(clock() - t0)
            if not head.startswith(b"HTTP/1.1 200"):
                errors.append(1)
    finally:
        writer.close()


async def _run(host: str, port: int, req: bytes, conns: int, seconds: float) -> LoadResult:
    lat: list[int] = []
    errors: list[int] = []
    t0 = time.perf_counter()
    await asyncio.gather(
        *(_connection(host, port, req, t0 + seconds, lat, errors) for _ in range(conns))
    )
    wall = time.perf_counter() - t0
    return LoadResult(len(lat), len(errors), wall, np.array(lat, dtype=np.float64) / 1e3)


def load(
    host: str, port: int, path: str, body: bytes, conns: int = 16, seconds: float = 2.0
) -> LoadResult:
    """``conns`` keep-alive connections POSTing ``body`` to ``path`` for ``seconds``."""
    return asyncio.run(_run(host, port, request_bytes(host, port, path, body), conns, seconds))


def tree_cpu_seconds(pid: int) -> float:
    """utime + stime of process ``pid`` and all its descendants, in seconds."""
    total, todo, seen = 0, [pid], set()
    while todo:
        p = todo.pop()
        if p in seen:
            continue
        seen.add(p)
        try:
            stat = Path(f"/proc/{p}/stat").read_text()
            fields = stat[stat.rindex(")") + 2 :].split()
            total += int(fields[11]) + int(fields[12])
            for task in Path(f"/proc/{p}/task").iterdir():
                todo.extend(int(k) for k in (task / "children").read_text().split())
        except (OSError, ValueError):
            continue
    return total / CLK


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])
