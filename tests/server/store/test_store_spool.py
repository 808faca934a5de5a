"""The spool: durable appends, replay exactly once, torn lines tolerated."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import pytest

from server.store import Spool, Store, open_store
from tests.server.store.storekit import feedback, predictions, raw_sql


def test_append_and_read_back(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool" / "rows.jsonl")
    rows = predictions(3, seed=1)
    fb = feedback(["o1"])
    spool.append_sync(rows[:2])
    asyncio.run(spool.append([rows[2], *fb]))
    assert spool.read_all() == [*rows, *fb]
    assert spool.pending_bytes() == spool.path.stat().st_size > 0


def test_replay_writes_rows_and_removes_the_spool(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'db.sqlite'}"
    spool = Spool(tmp_path / "rows.jsonl")
    rows = predictions(25, seed=2)
    spool.append_sync(rows)
    spool.append_sync(feedback(["o3", "o4"]))

    async def run() -> int:
        async with await open_store(url) as store:
            return await spool.replay(store, batch_rows=10)

    assert asyncio.run(run()) == 27
    assert spool.pending_bytes() == 0
    assert not spool.path.exists() and not spool.replaying_path.exists()
    assert raw_sql(url, "SELECT count(*) FROM predictions") == [(25,)]
    assert raw_sql(url, "SELECT order_id FROM feedback ORDER BY order_id") == [("o3",), ("o4",)]


def test_crash_between_write_and_truncate_replays_without_duplicates(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    url = f"sqlite:///{tmp_path / 'db.sqlite'}"
    spool = Spool(tmp_path / "rows.jsonl")
    rows = predictions(12, seed=3)
    spool.append_sync(rows)
    spool.append_sync(feedback(["o1", "o2"]))

    def crash(path: Path) -> None:
        raise OSError("simulated crash before the spool was removed")

    async def replay_crashing(store: Store) -> None:
        with monkeypatch.context() as m:
            m.setattr(spool, "_finish", crash)
            with pytest.raises(OSError, match="simulated crash"):
                await spool.replay(store)

    async def run() -> int:
        async with await open_store(url) as store:
            await replay_crashing(store)  # rows are in the store; the spool still is too
            spool.append_sync(predictions(3, seed=4, request="late"))  # arrives meanwhile
            return await spool.replay(store)

    assert asyncio.run(run()) == 14 + 3  # the interrupted file again, then the new one
    assert spool.pending_bytes() == 0
    assert raw_sql(url, "SELECT count(*), count(DISTINCT row_id) FROM predictions") == [(15, 15)]
    assert raw_sql(url, "SELECT count(*), max(updates) FROM feedback") == [(2, 1)]


def test_torn_last_line_is_skipped_with_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    url = f"sqlite:///{tmp_path / 'db.sqlite'}"
    spool = Spool(tmp_path / "rows.jsonl")
    rows = predictions(4, seed=5)
    spool.append_sync(rows[:3])
    whole = spool.path.read_bytes()
    line = whole.splitlines(keepends=True)[0]
    with spool.path.open("ab") as fh:  # a crash half-way through appending one more record
        fh.write(line[: len(line) // 2])

    caplog.set_level(logging.WARNING, logger="intellilog.store")
    assert spool.read_all() == rows[:3]
    assert "last line is not a complete record" in caplog.text

    spool.append_sync(rows[3:])  # appending after the torn bytes keeps the new record whole
    assert spool.read_all() == rows

    async def run() -> int:
        async with await open_store(url) as store:
            return await spool.replay(store)

    caplog.clear()
    assert asyncio.run(run()) == 4
    assert "line 4 is not a complete record" in caplog.text
    assert spool.skipped_lines == 1
    assert raw_sql(url, "SELECT count(*) FROM predictions") == [(4,)]


def test_failed_replay_keeps_the_rows(tmp_path: Path) -> None:
    from tests.server.store.storekit import FlakyStore

    url = f"sqlite:///{tmp_path / 'db.sqlite'}"
    spool = Spool(tmp_path / "rows.jsonl")
    spool.append_sync(predictions(5, seed=6))

    async def run() -> int:
        async with FlakyStore(await open_store(url)) as store:
            store.down = True
            with pytest.raises(Exception, match="simulated outage"):
                await spool.replay(store)
            assert len(spool.read_all()) == 5
            store.down = False
            return await spool.replay(store)

    assert asyncio.run(run()) == 5
    assert raw_sql(url, "SELECT count(*) FROM predictions") == [(5,)]


def test_one_process_at_a_time_replays_a_shared_spool(tmp_path: Path) -> None:
    """The workers and the log writer share one spool: while another process replays it
    (holds ``<name>.lock``), a replay leaves every file alone; afterwards it replays."""
    import fcntl
    import os

    url = f"sqlite:///{tmp_path / 'db.sqlite'}"
    spool = Spool(tmp_path / "rows.jsonl")
    spool.append_sync(predictions(5, seed=6))
    other = os.open(spool.lock_path, os.O_RDWR | os.O_CREAT)  # "another process"
    fcntl.flock(other, fcntl.LOCK_EX)

    async def replay() -> int:
        async with await open_store(url) as store:
            return await spool.replay(store)

    try:
        assert asyncio.run(replay()) == 0
        assert spool.path.exists() and not spool.replaying_path.exists()
    finally:
        os.close(other)
    assert asyncio.run(replay()) == 5
    assert spool.pending_bytes() == 0
    assert raw_sql(url, "SELECT count(*) FROM predictions") == [(5,)]
