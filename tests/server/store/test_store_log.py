"""PredictionLog: batching off the hot path, spooling when the store is down, replay."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest

from kernels.errors import StoreError
from server.store import FeedbackResult, PredictionLog, Spool, open_store
from tests.pgserver import PgServer
from tests.server.store.storekit import T0, FlakyStore, feedback, predictions, raw_sql


async def until(cond: Callable[[], bool], what: str, timeout: float = 20.0) -> None:
    """Wait (polling) until ``cond()``; fail naming ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting until {what}")
        await asyncio.sleep(0.01)


def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'db.sqlite'}"


def run_with_log(
    tmp_path: Path,
    body: Callable[[PredictionLog, FlakyStore], Awaitable[None]],
    **options: float,
) -> None:
    """A started log over a FlakyStore-wrapped SQLite store; closed (log, store) after."""

    async def run() -> None:
        store = FlakyStore(await open_store(sqlite_url(tmp_path)))
        plog = PredictionLog(store, tmp_path / "spool.jsonl", **options)  # type: ignore[arg-type]
        await plog.start()
        try:
            await body(plog, store)
        finally:
            await plog.close()
            await store.close()

    asyncio.run(run())


def test_batches_by_size_then_flushes_on_close(tmp_path: Path) -> None:
    async def body(plog: PredictionLog, store: FlakyStore) -> None:
        plog.submit(predictions(120, seed=1))  # a full batch: written without waiting
        await until(lambda: plog.rows_written == 120, "120 rows are written")
        assert store.batches == [50, 50, 20]
        plog.submit(predictions(7, seed=2, request="late"))  # under a batch, long interval
        await asyncio.sleep(0.05)
        assert plog.rows_written == 120 and plog.queue_depth == 7
        await plog.close()  # graceful shutdown writes what is queued
        assert plog.rows_written == 127 and plog.queue_depth == 0
        assert store.batches == [50, 50, 20, 7]

    run_with_log(tmp_path, body, batch_size=50, flush_interval=60.0)
    assert raw_sql(sqlite_url(tmp_path), "SELECT count(*) FROM predictions") == [(127,)]


def test_batches_by_time(tmp_path: Path) -> None:
    async def body(plog: PredictionLog, store: FlakyStore) -> None:
        plog.submit(predictions(3, seed=3))
        plog.submit(predictions(4, seed=4, request="b"))
        await until(lambda: plog.rows_written == 7, "a partial batch is written")
        assert store.batches == [7]  # both submits in one batch after flush_interval

    run_with_log(tmp_path, body, batch_size=500, flush_interval=0.05)


def test_full_queue_spills_to_the_spool(tmp_path: Path) -> None:
    async def body(plog: PredictionLog, store: FlakyStore) -> None:
        plog.submit(predictions(25, seed=5))  # only 10 fit in the queue
        assert plog.queue_depth == 10
        await plog.flush()
        assert (plog.rows_written, plog.rows_spooled) == (10, 15)
        assert len(plog.spool.read_all()) == 15
        await plog.replay()  # or the replay task, whose first pass may run meanwhile
        await until(lambda: plog.rows_replayed == 15, "the spooled rows are replayed")
        assert plog.spool.pending_bytes() == 0

    run_with_log(
        tmp_path, body, max_queue=10, batch_size=500, flush_interval=60.0, replay_interval=60.0
    )
    got = raw_sql(sqlite_url(tmp_path), "SELECT count(*), count(DISTINCT row_id) FROM predictions")
    assert got == [(25, 25)]


def test_feedback_durable_in_db_or_spool(tmp_path: Path) -> None:
    async def body(plog: PredictionLog, store: FlakyStore) -> None:
        await store.write_predictions(predictions(3, seed=6))
        up = await plog.write_feedback_durable(feedback(["o0", "o1", "zz"]))
        assert up == FeedbackResult(inserted=3, updated=0, unknown=1)
        store.down = True
        down = await plog.write_feedback_durable(feedback(["o1", "o2"], received=T0 + 99_999))
        assert down == FeedbackResult(spooled=2)
        assert [r.order_id for r in plog.spool.read_all()] == ["o1", "o2"]  # on disk already
        assert plog.store_down and plog.write_errors == 1
        assert await plog.replay() == 0  # the store does not answer yet
        store.down = False
        assert await plog.replay() == 2
        assert not plog.store_down

    run_with_log(tmp_path, body, replay_interval=60.0)
    stored = raw_sql(sqlite_url(tmp_path), "SELECT order_id, actual_minutes FROM feedback")
    assert dict(stored) == {"o0": 30.0, "o1": 30.0, "o2": 31.0, "zz": 32.0}


def test_feedback_refused_when_db_and_spool_both_fail(tmp_path: Path) -> None:
    (tmp_path / "not-a-folder").write_text("")

    async def run() -> None:
        store = FlakyStore(await open_store(sqlite_url(tmp_path)))
        store.down = True
        plog = PredictionLog(store, Spool(tmp_path / "not-a-folder" / "spool.jsonl"))
        with pytest.raises(StoreError, match="cannot be written"):
            await plog.write_feedback_durable(feedback(["o1"]))
        plog.submit(predictions(2))  # predictions cannot be refused: counted as dropped
        await plog.close()
        assert plog.rows_dropped == 2
        await store.close()

    asyncio.run(run())


def test_outage_every_row_lands_exactly_once(
    backend: str, db_url: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    """A stream of submits and feedback across a database outage (for PostgreSQL a
    real ``pg_ctl stop -m fast`` and start): afterwards every submitted prediction and
    every acknowledged feedback row is in the database exactly once."""
    pg: PgServer | None = request.getfixturevalue("postgres") if backend == "postgres" else None
    submitted: list[str] = []
    acked: list[str] = []

    async def run() -> PredictionLog:
        inner = await open_store(db_url, connect_timeout=2.0)
        store = inner if pg is not None else FlakyStore(inner)

        async def outage(down: bool) -> None:
            if pg is None:
                assert isinstance(store, FlakyStore)
                store.down = down
            elif down:
                await asyncio.to_thread(pg.stop, "fast")
            else:
                await asyncio.to_thread(pg.start)

        plog = PredictionLog(
            store,
            tmp_path / "spool.jsonl",
            batch_size=40,
            flush_interval=0.02,
            replay_interval=0.05,
        )
        await plog.start()
        stop = asyncio.Event()

        async def produce() -> None:
            i = 0
            while not stop.is_set():
                rows = predictions(15, seed=i, request=f"q{i}", order_prefix=f"o{i}_")
                plog.submit(rows)
                submitted.extend(r.row_id for r in rows)
                if i % 4 == 0:
                    res = await plog.write_feedback_durable(feedback([f"o{i}_0"], received=T0 + i))
                    assert res.inserted + res.updated + res.spooled == 1
                    acked.append(f"o{i}_0")
                i += 1
                await asyncio.sleep(0.003)

        producer = asyncio.create_task(produce())
        try:
            await until(lambda: plog.rows_written > 100, "rows are written before the outage")
            await outage(True)
            await until(lambda: plog.rows_spooled > 50, "rows are spooled during the outage")
            res = await plog.write_feedback_durable(feedback(["during-outage"], received=T0))
            assert res == FeedbackResult(spooled=1)
            acked.append("during-outage")
            await outage(False)
            await until(lambda: plog.rows_replayed > 50, "the spool is replayed")
            await until(lambda: not plog.store_down, "the log writes to the store again")
            await asyncio.sleep(0.1)
        finally:
            stop.set()
            await producer
            if pg is not None:
                pg.ensure_running()
        await plog.close()
        await plog.replay()  # whatever close() had to spool
        await store.close()
        return plog

    plog = asyncio.run(run())
    assert plog.write_errors >= 1 and plog.rows_dropped == 0
    assert plog.spool.pending_bytes() == 0
    assert plog.rows_written + plog.rows_spooled == len(submitted) + len(acked)
    ids = [r[0] for r in raw_sql(db_url, "SELECT row_id FROM predictions")]
    assert len(ids) == len(set(ids)) == len(submitted)
    assert set(ids) == set(submitted)
    orders = [r[0] for r in raw_sql(db_url, "SELECT order_id FROM feedback")]
    assert sorted(orders) == sorted(acked)


def test_refused_rows_are_set_aside_not_retried(
    backend: str, db_url: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A row the database refuses for its content (a missing ETA; for PostgreSQL also a
    NUL character in a text) must not block the log nor the spool: the rest is written,
    the refused rows go to the spool's ``.rejected`` file."""
    import msgspec

    rows = predictions(10, seed=9)
    rows[3] = msgspec.structs.replace(rows[3], eta=None)  # type: ignore[arg-type]
    spooled = predictions(6, seed=10, request="s")
    if backend == "postgres":
        spooled[2] = msgspec.structs.replace(spooled[2], order_id="o\x00nul")
    spool = Spool(tmp_path / "spool.jsonl")
    spool.append_sync(spooled)

    async def run() -> PredictionLog:
        async with await open_store(db_url) as store:
            plog = PredictionLog(store, spool, flush_interval=0.01, replay_interval=60.0)
            await plog.start()
            plog.submit(rows)
            await until(lambda: plog.rows_written == 9, "the 9 good rows are written")
            good = 5 if backend == "postgres" else 6  # the spool is replayed at start
            await until(lambda: plog.rows_replayed == good, "the spool is replayed")
            await plog.close()
            return plog

    plog = asyncio.run(run())
    assert not plog.store_down and plog.write_errors == 0
    bad = [rows[3]] + ([spooled[2]] if backend == "postgres" else [])
    assert plog.rows_rejected == len(bad)
    lines = spool.rejected_path.read_bytes().splitlines()
    assert sorted(json.loads(line)["p"]["row_id"] for line in lines) == sorted(
        r.row_id for r in bad
    )
    assert spool.pending_bytes() == 0
    want = {r.row_id for r in rows + spooled} - {r.row_id for r in bad}
    assert {r[0] for r in raw_sql(db_url, "SELECT row_id FROM predictions")} == want
    assert "refused by the database" in caplog.text


def test_a_submit_stays_in_one_batch_when_it_fits(tmp_path: Path) -> None:
    """Batches take whole submits (one request's rows: one key in the store) while they
    fit; only a submit larger than a batch is cut."""

    async def body(plog: PredictionLog, store: FlakyStore) -> None:
        for i in range(3):
            plog.submit(predictions(30, seed=i, request=f"q{i}"))
        plog.submit(predictions(120, seed=9, request="big"))
        plog.submit(predictions(5, seed=10, request="small"))
        assert plog.queue_depth == 215
        await plog.flush()
        assert store.batches == [30, 30, 30, 50, 50, 20 + 5]
        assert plog.rows_written == 215 and plog.queue_depth == 0

    run_with_log(tmp_path, body, batch_size=50, flush_interval=60.0)
