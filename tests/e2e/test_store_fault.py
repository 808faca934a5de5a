"""PostgreSQL stopped under load and started again, with a real ``intellilog serve``:
every prediction the server answered and every feedback row it acknowledged is in the
database afterwards, none twice."""

from __future__ import annotations

import asyncio
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from server.store import open_store
from tests.e2e import servekit as kit
from tests.pgserver import PgServer
from tests.pgserver import postgres as postgres

pytestmark = pytest.mark.slow


def test_postgres_outage_under_load_loses_and_repeats_nothing(
    models: Any,
    postgres: PgServer,
    tmp_path: Path,
) -> None:
    url = postgres.new_database()
    server = kit.ServerProcess(
        models.registry,
        tmp_path / "srv",
        env={"DATABASE_URL": url, "SPOOL_PATH": str(tmp_path / "srv" / "log.spool")},
    )
    answered: list[str] = []  # order ids the server answered
    acked: list[str] = []  # order ids whose feedback got 202
    errors: list[str] = []
    rows = kit.sample_rows(400, seed=71)
    stop_at, start_at = 120, 260  # the database goes away and comes back mid-stream

    def drive(part: list[dict[str, Any]], offset: int) -> None:
        with httpx.Client(base_url=server.url, timeout=30.0) as c:
            for i, r in enumerate(part):
                oid = f"fault-{offset + i}"
                res = c.post("/v1/predict", json={**r, "order_id": oid})
                if res.status_code != 200:
                    errors.append(f"predict {oid}: {res.status_code} {res.text[:200]}")
                    continue
                answered.append(oid)
                eta = res.json()["eta_minutes"]
                fb = {"order_id": oid, "actual_minutes": eta + 1.0, "completed_at": time.time()}
                res = c.post("/v1/feedback", json=fb)
                if res.status_code == 202:
                    acked.append(oid)
                else:
                    errors.append(f"feedback {oid}: {res.status_code} {res.text[:200]}")

    try:
        server.wait_ready()
        first = threading.Thread(target=drive, args=(rows[:stop_at], 0))
        first.start()
        first.join()
        postgres.stop()
        try:
            outage = threading.Thread(target=drive, args=(rows[stop_at:start_at], stop_at))
            outage.start()
            outage.join()
        finally:
            postgres.start()
        drive(rows[start_at:], start_at)
        # the spool is replayed once the store answers again (on the log's replay timer)
        deadline = time.monotonic() + 60
        spooled = replayed = 0.0
        while time.monotonic() < deadline:
            text = httpx.get(f"{server.url}/metrics").text
            spooled = kit.metric(text, "intellilog_prediction_log_rows_total", outcome="spooled")
            replayed = kit.metric(text, "intellilog_prediction_log_rows_total", outcome="replayed")
            if spooled and replayed >= spooled:
                break
            time.sleep(0.5)
        assert spooled > 0 and replayed == spooled, (spooled, replayed)
        # graceful stop: the queue is flushed
        assert server.terminate(60.0) == 0, server.log
    finally:
        server.stop()
        postgres.ensure_running()

    assert errors == [], errors[:5]
    assert len(answered) == len(rows) and len(acked) == len(rows)

    async def read() -> list[Any]:
        store = await open_store(url)
        try:
            return await store.joined("default", 0.0)
        finally:
            await store.close()

    # each order was predicted once and got one feedback row: one joined row per answered
    # prediction means none was lost and none stored twice (feedback is keyed by order)
    joined = asyncio.run(read())
    assert len(joined) == len(rows), server.log[-2000:]
