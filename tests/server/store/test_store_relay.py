"""The prediction log's relay (server.store.relay): chunks cross the shared-memory ring
unchanged and in order, through wrap-arounds; a full, oversized or abandoned ring refuses
a put without writing anything; one consumer at a time; the writer stores what the rings
hold row for row, answers flush requests, keeps per-ring counters across a restart and
removes the rings of finished workers; a worker whose writer is gone takes its ring over
and logs in process; a put from the worker's recorder costs nothing per row."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from server import metrics
from server.config import load_settings
from server.recorder import Recorder
from server.store import open_store
from server.store import relay as relay_mod
from server.store.chunks import PredictionChunk
from server.store.relay import (
    Ring,
    RingError,
    Writer,
    decode_chunks,
    encode_chunk,
    encode_chunks,
)
from tests.server.store.storekit import T0
from tests.server.store.test_store_batches import as_tuple, view
from tests.server.store.test_store_chunks import batch_chunk, mixed, single_chunk, texts_chunk
from tests.server.store.test_store_log import until

pytestmark = pytest.mark.skipif(
    not relay_mod.supported(), reason="the relay runs on Linux x86-64 only (relay.supported())"
)


def ring_pair(folder: Path, capacity: int = 1 << 16) -> tuple[Ring, Ring]:
    """A ring as its worker made it, and the same file mapped by a consumer holding the
    lock."""
    producer = Ring.create(folder / f"ring-{os.getpid()}", capacity)
    consumer = Ring.attach(producer.path)
    assert consumer.lock()
    return producer, consumer


def rows_of(chunk: PredictionChunk) -> list[tuple[Any, ...]]:
    return [as_tuple(r) for r in chunk.rows()]


def test_chunks_of_every_layout_cross_the_wire_unchanged() -> None:
    chunks, _ = mixed()
    arrays, _ = batch_chunk("arr", 6, seed=9)
    arrays.eta, arrays.p10 = np.asarray(arrays.eta), np.asarray(arrays.p10, dtype=np.float32)
    cut = chunks[0].cut(2, 7)  # start != 0, sizes layout
    for c in [*chunks, arrays, cut]:
        (back,) = decode_chunks(encode_chunk(c))
        assert rows_of(back) == rows_of(c), c.request_id
        assert back.start == c.start and back.rows_at == c.rows_at
    together = decode_chunks(encode_chunks([*chunks, cut]))  # one record of many chunks
    assert [rows_of(c) for c in together] == [rows_of(c) for c in [*chunks, cut]]


def test_records_come_out_in_order_through_many_wraps(tmp_path: Path) -> None:
    producer, consumer = ring_pair(tmp_path, capacity=4096)
    payloads = [bytes([i % 251]) * (1 + (i * 37) % 900) for i in range(400)]
    got: list[bytes] = []
    for i, p in enumerate(payloads):
        assert producer.put(p, 1), i
        if i % 3 == 2:  # the consumer lags behind by up to three records
            got += consumer.take(bytes)
            consumer.release(consumer.taken_to)
    got += consumer.take(bytes)
    assert got == payloads
    assert producer.head == consumer.taken_to > 20 * 4096  # it went round many times
    assert producer.rows_put == 400 and producer.rows_refused == 0


def test_a_full_ring_refuses_whole_records_and_takes_them_again_once_read(tmp_path: Path) -> None:
    producer, consumer = ring_pair(tmp_path, capacity=4096)
    rec = b"x" * 1000
    fitted = 0
    while producer.put(rec, 10):
        fitted += 1
    assert fitted == 4  # 4 × 1008 bytes; a fifth does not fit
    head = producer.head
    assert not producer.put(rec, 10) and producer.head == head
    assert producer.rows_refused == 20
    assert consumer.take(bytes) == [rec] * 4
    assert not producer.put(rec, 10)  # taken, not yet written: the room is still theirs
    consumer.release(consumer.taken_to)
    assert producer.put(rec, 10)  # room again once the consumer wrote them
    assert consumer.take(bytes) == [rec]


def test_a_record_over_half_the_ring_is_refused(tmp_path: Path) -> None:
    producer, consumer = ring_pair(tmp_path, capacity=4096)
    assert not producer.put(b"y" * 2100, 7)
    assert producer.rows_refused == 7 and producer.head == 0
    assert consumer.take(bytes) == []


def test_one_consumer_at_a_time_and_an_abandoned_ring_takes_no_more(tmp_path: Path) -> None:
    producer, consumer = ring_pair(tmp_path)
    other = Ring.attach(producer.path)
    assert not other.lock()  # the lock is the consumer's
    with pytest.raises(RingError, match="without the lock"):
        other.take(bytes)
    consumer.close()  # the consumer is gone: its lock goes with it
    assert producer.lock()
    producer.abandon()
    assert not producer.put(b"z", 1)
    assert Ring.attach(producer.path).abandoned


def test_records_a_dead_consumer_took_but_did_not_release_are_taken_again(tmp_path: Path) -> None:
    producer, first = ring_pair(tmp_path)
    for p in (b"a", b"b", b"c"):
        assert producer.put(p, 1)
    assert first.take(bytes) == [b"a", b"b", b"c"]
    first.release(16)  # "a" written (8 bytes of length, 8 of data); "b", "c" only taken
    first.close()  # the consumer dies
    second = Ring.attach(producer.path)
    assert second.lock()
    assert second.take(bytes) == [b"b", b"c"]


def test_a_file_that_is_not_a_ring_is_refused(tmp_path: Path) -> None:
    bad = tmp_path / "ring-1"
    bad.write_bytes(b"\0" * 4096)
    with pytest.raises(RingError, match="not a prediction log ring"):
        Ring.attach(bad)


def test_a_corrupt_record_length_is_an_error_not_a_wild_read(tmp_path: Path) -> None:
    producer, consumer = ring_pair(tmp_path, capacity=4096)
    assert producer.put(b"abc", 1)
    with open(producer.path, "r+b") as f:  # the record's length, made absurd
        f.seek(relay_mod.HEADER)
        f.write((10**6).to_bytes(8, "little"))
    with pytest.raises(RingError, match="overruns the ring"):
        consumer.take(bytes)


def _writer(tmp_path: Path, url: str) -> Any:
    async def make() -> tuple[Any, Writer]:
        store = await open_store(url)
        return store, Writer(tmp_path / "rings", store, tmp_path / "spool")

    return make


def test_the_writer_stores_every_ring_row_for_row_and_answers_flushes(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'db.sqlite'}"
    (tmp_path / "rings").mkdir()
    chunks, rows = mixed()
    big, big_rows = texts_chunk("big", 300, seed=11)
    one = Ring.create(tmp_path / "rings" / f"ring-{os.getpid()}")
    gone = tmp_path / "rings" / "ring-gone"  # made by a worker that has exited since
    made = f"from server.store.relay import Ring; Ring.create({str(gone)!r})"
    subprocess.run([sys.executable, "-c", made], check=True)
    two = Ring.attach(gone)
    assert two.put(encode_chunk(big), len(big))  # what it left behind

    async def run() -> None:
        store, writer = await _writer(tmp_path, url)()
        try:
            await writer.scan()
            assert len(writer.held) == 2
            for c in chunks:
                assert one.put(encode_chunk(c), len(c))
            one.request_flush(one.head)
            assert await writer.pump() == len(rows) + len(big_rows)
            assert one.committed == one.head  # the flush was answered: all written
            counts = one.counters()
            assert counts["taken"] == counts["written"] == len(rows)
            deadline = time.monotonic() + 20  # its log writes on its own; pumps publish
            while two.counters()["written"] < len(big_rows):
                assert time.monotonic() < deadline, "ring two never written"
                await asyncio.sleep(0.02)
                await writer.pump()
            # the gone worker's ring, empty now, is let go and removed; the live one kept
            await writer.scan()
            assert not two.path.exists() and one.path.exists()
            assert list(writer.held) == [one.path]
            await writer.close()
            assert not one.path.exists()
        finally:
            await store.close()

    asyncio.run(run())
    want = sorted(as_tuple(r) for r in [*rows, *big_rows])
    assert sorted(view(url)) == want


def test_a_writer_started_again_goes_on_counting_where_the_last_one_stopped(
    tmp_path: Path,
) -> None:
    url = f"sqlite:///{tmp_path / 'db.sqlite'}"
    (tmp_path / "rings").mkdir()
    ring = Ring.create(tmp_path / "rings" / f"ring-{os.getpid()}")
    a, ra = batch_chunk("a", 9, seed=1)
    b, rb = batch_chunk("b", 4, seed=2)

    async def one_writer(chunk: PredictionChunk) -> None:
        store, writer = await _writer(tmp_path, url)()
        try:
            await writer.scan()
            assert ring.put(encode_chunk(chunk), len(chunk))
            ring.request_flush(ring.head)
            await writer.pump()
            h = writer.held[ring.path]
            h.ring.close()  # "crash": the lock goes, the ring stays
            await h.log.close()
            writer.held.clear()
        finally:
            await store.close()

    asyncio.run(one_writer(a))
    asyncio.run(one_writer(b))
    assert ring.counters()["taken"] == ring.counters()["written"] == len(ra) + len(rb)
    assert len(view(url)) == len(ra) + len(rb)


def _recorder(tmp_path: Path, relay: Path | None) -> Recorder:
    settings = load_settings(
        {"DATABASE_URL": f"sqlite:///{tmp_path / 'db.sqlite'}", "TENANT_ID": "t1"}, dotenv=None
    )
    return Recorder(settings, relay=relay, metrics_interval=0.05)


def test_the_recorder_puts_predictions_in_its_ring_not_its_own_log(tmp_path: Path) -> None:
    folder = tmp_path / "rings"
    folder.mkdir()
    body = b'{"order_id": "s1", "zone": "north"}'
    X = np.ones((1, 7), np.float32)

    async def run() -> None:
        rec = _recorder(tmp_path, folder)
        await rec.start()
        try:
            assert rec.relay is not None and rec.relay.path.parent == folder
            rec.submit_one("r1", "r1", "s1", body, X, 20.0, 15.0, 27.0, "v1")
            rec.submit_one("r2", "r2", "s2", body, X, 21.0, 16.0, 28.0, "v1")
            chunk, _ = batch_chunk("b", 5, seed=3)
            rec.submit(chunk)  # at once: a record of its own
            consumer = Ring.attach(rec.relay.path)
            assert consumer.lock()
            assert rec.relay.rows_put == 5
            await asyncio.sleep(0)
            assert rec.relay.rows_put == 7
            assert rec.log is not None and rec.log.queue_depth == 0  # nothing in process
            got = [c for cs in consumer.take(decode_chunks) for c in cs]
            assert [len(c) for c in got] == [5, 1, 1]
            assert rows_of(got[0]) == rows_of(chunk)
            assert got[1].rows()[0].inputs == body.decode() and got[1].eta == [20.0]
            assert got[2].rows()[0].order_id == "s2" and consumer.taken_to == rec.relay.head
            consumer.close()
        finally:
            await rec.close()

    asyncio.run(run())


def test_a_full_ring_overflows_into_the_workers_own_log_and_is_counted(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = tmp_path / "rings"
    folder.mkdir()
    monkeypatch.setattr(relay_mod, "CAPACITY", 8192)
    url = f"sqlite:///{tmp_path / 'db.sqlite'}"
    chunks = [batch_chunk(f"c{i}", 6, seed=i)[0] for i in range(12)]

    async def run() -> int:
        rec = _recorder(tmp_path, folder)
        await rec.start()
        before = metrics.PREDICTION_LOG_OVERFLOW._value.get()
        try:
            for c in chunks:
                rec.submit(c)
            assert rec.relay is not None and rec.relay.rows_refused > 0
            overflow = rec.relay.rows_refused
            rec.publish()
            assert metrics.PREDICTION_LOG_OVERFLOW._value.get() - before == overflow
            assert rec.log is not None and rec.log.queue_depth == overflow
            return overflow
        finally:
            await rec.close()  # no writer holds the ring: the worker writes its rows too

    overflow = asyncio.run(run())
    assert 0 < overflow < 72
    assert len(view(url)) == 72  # every row once: the ring's and the overflow
    assert not list(folder.iterdir())


def test_a_worker_whose_writer_is_gone_takes_its_ring_over(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = tmp_path / "rings"
    folder.mkdir()
    monkeypatch.setattr("server.recorder.RELAY_STALL_S", 0.3)
    url = f"sqlite:///{tmp_path / 'db.sqlite'}"
    a, ra = batch_chunk("a", 5, seed=1)
    b, rb = batch_chunk("b", 3, seed=2)

    async def run() -> None:
        rec = _recorder(tmp_path, folder)
        await rec.start()
        try:
            rec.submit(a)  # nobody takes it: no writer
            await until(lambda: rec.relay is None, "the worker takes its ring over", 10)
            assert rec.log is not None
            rec.submit(b)  # from now on into its own log
            await rec.flush_predictions()
        finally:
            await rec.close()

    asyncio.run(run())
    assert sorted(view(url)) == sorted(as_tuple(r) for r in [*ra, *rb])


def test_feedback_waits_for_the_writer_to_store_the_predictions_before_it(
    tmp_path: Path,
) -> None:
    """The feedback route flushes the predictions still on their way first, so an order
    predicted a moment ago is not counted unknown (the writer runs in this test's loop)."""
    folder = tmp_path / "rings"
    folder.mkdir()
    url = f"sqlite:///{tmp_path / 'db.sqlite'}"
    chunk, _ = single_chunk("u1", b'{"order_id": "s7"}', seed=7)

    async def run() -> Any:
        rec = _recorder(tmp_path, folder)
        await rec.start()
        store = await open_store(url)
        writer = Writer(folder, store, tmp_path / "writer.spool")
        stop = asyncio.Event()

        async def loop() -> None:
            while not stop.is_set():
                await writer.scan()
                await writer.pump()
                await asyncio.sleep(0.01)
            await writer.close()

        task = asyncio.create_task(loop())
        try:
            await until(lambda: writer.held, "the writer takes the ring")
            rec.submit(chunk)
            return await rec.write_feedback([("s7", 31.0, T0 + 3600)])
        finally:
            await rec.close()
            stop.set()
            await task
            await store.close()

    result = asyncio.run(run())
    assert result.unknown == 0 and result.inserted == 1


def _held_by_another(path: Path) -> bool:
    """True when another process holds the ring's consumer lock (probing takes it for a
    moment only)."""
    probe = Ring.attach(path)
    try:
        return not probe.lock()
    finally:
        probe.close()


def test_writer_process_stores_everything_and_stops_when_stdin_closes(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'db.sqlite'}"
    folder = tmp_path / "rings"
    folder.mkdir()
    chunks, rows = mixed()
    ring = Ring.create(folder / f"ring-{os.getpid()}")
    env = {**os.environ, "DATABASE_URL": url, "SPOOL_PATH": str(tmp_path / "spool")}
    proc = subprocess.Popen(
        [sys.executable, "-m", "server.store.relay", str(folder)],
        stdin=subprocess.PIPE,
        env=env,
    )
    try:
        deadline = time.monotonic() + 30
        while not _held_by_another(ring.path):
            assert time.monotonic() < deadline, "the writer never took the ring"
            time.sleep(0.05)
        for c in chunks:
            assert ring.put(encode_chunk(c), len(c))
    finally:
        assert proc.stdin is not None
        proc.stdin.close()
        assert proc.wait(60) == 0
    assert sorted(view(url)) == sorted(as_tuple(r) for r in rows)
    assert ring.counters()["written"] == len(rows)
    assert not ring.path.exists()  # removed by the writer once written


@pytest.mark.parametrize("writer", ["process", "thread"])
def test_the_setting_decides_whether_serve_s_folder_is_used(
    writer: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = tmp_path / "rings"
    folder.mkdir()
    monkeypatch.setenv(relay_mod.ENV, str(folder))
    settings = load_settings(
        {"DATABASE_URL": f"sqlite:///{tmp_path / 'db.sqlite'}", "PREDICTION_LOG_WRITER": writer},
        dotenv=None,
    )

    async def run() -> bool:
        rec = Recorder(settings)
        await rec.start()
        try:
            return rec.relay is not None
        finally:
            await rec.close()

    assert asyncio.run(run()) is (writer == "process")


def test_a_flush_request_wakes_an_idle_writer_at_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The writer's looks are 30 s apart here: only the wake-up datagram can make it
    answer a flush within seconds."""
    folder = tmp_path / "rings"
    folder.mkdir()
    url = f"sqlite:///{tmp_path / 'db.sqlite'}"
    monkeypatch.setenv("DATABASE_URL", url)
    monkeypatch.setenv("SPOOL_PATH", str(tmp_path / "spool"))
    monkeypatch.setattr(relay_mod, "POLL_S", 30.0)
    monkeypatch.setattr(relay_mod, "IDLE_POLL_S", 30.0)
    monkeypatch.setattr(relay_mod, "SCAN_S", 0.0)  # the ring is found at the first look
    ring = Ring.create(folder / f"ring-{os.getpid()}")
    chunk, rows = batch_chunk("w", 4, seed=5)

    async def run() -> float:
        stop = asyncio.Event()
        task = asyncio.create_task(relay_mod._run(folder, stop))
        await until(lambda: _held_by_another(ring.path), "the writer takes the ring")
        assert ring.put(encode_chunk(chunk), len(chunk))
        ring.request_flush(ring.head)
        t0 = time.monotonic()
        relay_mod.wake_writer(folder)
        await until(lambda: ring.committed >= ring.head, "the flush", timeout=10)
        took = time.monotonic() - t0
        stop.set()
        relay_mod.wake_writer(folder)
        await asyncio.wait_for(task, 30)
        return took

    assert asyncio.run(run()) < 10
    assert sorted(view(url)) == sorted(as_tuple(r) for r in rows)
