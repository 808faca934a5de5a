"""The prediction log's writer process (server.store.relay) under ``intellilog serve``:
two workers hand it every answered prediction; feedback sent right after a prediction
finds it; the writer killed under load is started again and the workers go on; at
SIGTERM every answered prediction is in the database exactly once (what the killed
writer had taken and not yet written stayed in the rings), and the rings' folder is
gone. ``PREDICTION_LOG_WRITER=thread`` starts no writer."""

from __future__ import annotations

import os
import signal
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from server.store import relay
from tests.e2e import servekit as kit

pytestmark = pytest.mark.skipif(
    not relay.supported() or not Path("/proc/self/task").is_dir(),
    reason="the log writer runs on Linux x86-64 (relay.supported()); /proc finds it",
)


def writer_pid(main: int) -> int | None:
    """The log writer among the descendants of ``main`` (None when there is none)."""
    todo, seen = [main], set()
    while todo:
        pid = todo.pop()
        if pid in seen:
            continue
        seen.add(pid)
        try:
            if pid != main and b"server.store.relay" in Path(f"/proc/{pid}/cmdline").read_bytes():
                return pid
            for task in Path(f"/proc/{pid}/task").iterdir():
                todo += [int(k) for k in (task / "children").read_text().split()]
        except OSError:
            continue
    return None


def wait_for(cond: Any, timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if got := cond():
            return got
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def stored_orders(db: Path) -> list[str]:
    with sqlite3.connect(db) as conn:
        return [o for (o,) in conn.execute("SELECT order_id FROM predictions")]


def test_writer_process_logs_for_every_worker_survives_a_kill_and_flushes_at_sigterm(
    models: Any, tmp_path: Path
) -> None:
    rows = kit.sample_rows(60, seed=91)
    s = kit.ServerProcess(models.registry, tmp_path / "srv", workers=2)
    answered: list[str] = []
    failures: list[str] = []
    stop = threading.Event()
    lock = threading.Lock()

    def load(k: int) -> None:
        with httpx.Client(base_url=s.url, timeout=30.0) as c:
            i = 0
            while not stop.is_set():
                part = [{**r, "order_id": f"w{k}-{i}-{j}"} for j, r in enumerate(rows[:20])]
                res = c.post("/v1/predict/batch", json={"deliveries": part})
                one = c.post("/v1/predict", json={**rows[20], "order_id": f"w{k}-{i}-s"})
                if res.status_code != 200 or one.status_code != 200:
                    failures.append(f"{res.status_code} {one.status_code}: {res.text[:200]}")
                    return
                with lock:
                    answered.extend(p["order_id"] for p in res.json()["predictions"])
                    answered.append(one.json()["order_id"])
                i += 1

    try:
        s.wait_ready(60)
        first = wait_for(lambda: writer_pid(s.proc.pid), 30, "the log writer")
        # the rings' folder: the writer's one argument (python -m server.store.relay DIR)
        folder = Path(Path(f"/proc/{first}/cmdline").read_bytes().split(b"\0")[3].decode())
        assert folder.name.startswith("intellilog-log-"), folder
        # feedback right after its prediction: the writer flushes it first, so it is known
        with httpx.Client(base_url=s.url, timeout=30.0) as c:
            assert c.post("/v1/predict", json={**rows[0], "order_id": "fb-1"}).status_code == 200
            fb = c.post(
                "/v1/feedback",
                json={"order_id": "fb-1", "actual_minutes": 31.5, "completed_at": 1.75e9},
            )
        assert fb.status_code == 202 and fb.json()["unknown_order_ids"] == 0, fb.text
        threads = [threading.Thread(target=load, args=(k,)) for k in range(2)]
        for t in threads:
            t.start()
        wait_for(lambda: len(answered) >= 400, 60, "load before the kill")
        os.kill(first, signal.SIGKILL)
        killed_at = len(answered)
        second = wait_for(
            lambda: (p := writer_pid(s.proc.pid)) not in (None, first) and p, 30, "a new writer"
        )
        wait_for(lambda: len(answered) >= killed_at + 400, 60, "load after the restart")
        stop.set()
        for t in threads:
            t.join(60)
        assert failures == [], failures[:3]
        rings = sorted(p.name for p in folder.glob("ring-*"))
        assert len(rings) == 2, rings  # one per worker: both went on with the new writer
        assert s.terminate(60) == 0, s.log[-3000:]
    finally:
        stop.set()
        s.stop()
    assert second != first
    assert not folder.exists()  # removed at shutdown
    stored = stored_orders(tmp_path / "srv" / "intellilog.db")
    assert len(stored) == len(set(stored))  # none twice
    # nothing lost: what the killed writer had taken and not yet written stayed in the
    # rings and the new writer wrote it
    assert sorted(stored) == sorted([*answered, "fb-1"]), (len(stored), len(answered))
    assert "prediction log writer exited" in s.log


def test_thread_writer_setting_starts_no_writer_process(models: Any, tmp_path: Path) -> None:
    s = kit.ServerProcess(
        models.registry, tmp_path / "srv", env={"PREDICTION_LOG_WRITER": "thread"}
    )
    try:
        s.wait_ready(60)
        with httpx.Client(base_url=s.url, timeout=30.0) as c:
            assert c.post("/v1/predict", json=kit.sample_rows(1, seed=3)[0]).status_code == 200
        time.sleep(0.5)
        assert writer_pid(s.proc.pid) is None
        assert s.terminate(60) == 0
    finally:
        s.stop()
    assert len(stored_orders(tmp_path / "srv" / "intellilog.db")) == 1
