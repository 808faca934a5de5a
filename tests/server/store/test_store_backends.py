"""The storage contract, run against both backends (SQLite file, real PostgreSQL)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import numpy as np
import pytest

from kernels.errors import ConfigError, StoreError
from server.store import FeedbackResult, Store, open_store, pack_features, store_from_url
from server.store.base import load_migrations
from tests.server.store.storekit import N_FEATURES, T0, feedback, predictions, raw_sql

T = TypeVar("T")


def with_store(url: str, body: Callable[[Store], Awaitable[T]]) -> T:
    """Open the store at ``url``, run ``body(store)``, close it."""

    async def run() -> T:
        async with await open_store(url) as store:
            return await body(store)

    return asyncio.run(run())


def test_migrations_applied_once_and_idempotent(db_url: str) -> None:
    known = len(load_migrations("sqlite"))
    assert known == len(load_migrations("postgres")) >= 1

    async def body(store: Store) -> tuple[int, int]:
        return await store.schema_version(), await store.migrate()

    assert with_store(db_url, body) == (known, 0)
    assert with_store(db_url, body) == (known, 0)  # reopening applies nothing
    recorded = raw_sql(db_url, "SELECT version, name FROM schema_migrations ORDER BY version")
    assert [v for v, _ in recorded] == list(range(1, known + 1))
    assert recorded[0][1] == "init"


def test_newer_database_refuses_to_open(db_url: str) -> None:
    known = with_store(db_url, lambda s: s.schema_version())
    raw_sql(
        db_url,
        "INSERT INTO schema_migrations (version, name, applied_at) VALUES ($1, 'future', 0)",
        known + 5,
    )
    with pytest.raises(StoreError) as e:
        with_store(db_url, lambda s: s.ping())
    assert str(e.value) == (
        f"database schema version {known + 5} is newer than this intellilog (knows up to "
        f"{known}): upgrade intellilog or point DATABASE_URL elsewhere"
    )


def test_predictions_written_once_per_row_id(db_url: str) -> None:
    rows = predictions(10, seed=1)

    async def body(store: Store) -> list[int]:
        first = await store.write_predictions(rows[:6])
        # overlapping replay, with a duplicate inside the batch too
        again = await store.write_predictions([*rows[4:], rows[9]])
        return [first, again, await store.write_predictions(rows)]

    assert with_store(db_url, body) == [6, 4, 0]
    got = raw_sql(db_url, "SELECT row_id, order_id, eta, features, inputs FROM predictions")
    assert sorted(r[0] for r in got) == sorted(r.row_id for r in rows)
    by_id = {r.row_id: r for r in rows}
    for row_id, order_id, eta, blob, inputs in got:
        src = by_id[row_id]
        assert (order_id, eta, bytes(blob), inputs) == (
            src.order_id,
            src.eta,
            src.features,
            src.inputs,
        )


def test_feedback_insert_update_unknown(db_url: str) -> None:
    rows = predictions(5, seed=2)  # orders o0..o4

    async def body(store: Store) -> list[FeedbackResult]:
        await store.write_predictions(rows)
        first = await store.write_feedback(feedback(["o0", "o1", "x9"], actual=20))
        # o1 again (newer), o2 new, x9 again (still unknown), o3 twice in one batch
        second = await store.write_feedback(
            [
                *feedback(["o1", "o2", "x9"], actual=40, received=T0 + 20_000),
                *feedback(["o3", "o3"], actual=50, received=T0 + 20_000),
            ]
        )
        # older feedback for o1 (a late replay) is counted but does not win
        stale = await store.write_feedback(feedback(["o1"], actual=99, received=T0))
        return [first, second, stale]

    first, second, stale = with_store(db_url, body)
    assert first == FeedbackResult(inserted=3, updated=0, unknown=1)
    assert second == FeedbackResult(inserted=2, updated=3, unknown=1)
    assert stale == FeedbackResult(inserted=0, updated=1, unknown=0)
    stored = dict(raw_sql(db_url, "SELECT order_id, actual_minutes FROM feedback"))
    # feedback(...) gives actual + index; o3's second row (index 1) wins the tie
    assert stored == {"o0": 20.0, "o1": 40.0, "o2": 41.0, "x9": 42.0, "o3": 51.0}


def test_joined_pairs_predictions_with_feedback(db_url: str) -> None:
    rows = predictions(6, seed=3, step=100.0)  # created at T0, T0+100, ...
    other = predictions(2, seed=4, request="q", tenant="t2", version="v2", arm="candidate")

    async def body(store: Store) -> tuple[list[Any], list[Any], list[Any]]:
        await store.write_predictions(rows + other)
        await store.write_feedback(feedback(["o1", "o2", "o4", "nope"], actual=33.0))
        await store.write_feedback(feedback(["o1"], tenant="t2", actual=10.0))
        everything = await store.joined("t1", since=0.0)
        window = await store.joined("t1", since=T0 + 100, until=T0 + 400)
        return everything, window, await store.joined("t2", since=0.0)

    everything, window, t2 = with_store(db_url, body)
    assert [(j.eta, j.actual, j.created_at) for j in everything] == [
        (rows[1].eta, 33.0, T0 + 100),
        (rows[2].eta, 34.0, T0 + 200),
        (rows[4].eta, 35.0, T0 + 400),
    ]
    assert everything[0].model_version == "v1" and everything[0].arm == "production"
    assert (everything[0].p10, everything[0].p90) == (rows[1].p10, rows[1].p90)
    assert everything[0].completed_at == T0 + 10_000 - 60
    assert [j.created_at for j in window] == [T0 + 100, T0 + 200]  # until is exclusive
    assert [(j.model_version, j.arm, j.eta, j.actual) for j in t2] == [
        ("v2", "candidate", other[1].eta, 10.0)
    ]


def test_recent_features_rebuild_the_matrix(db_url: str) -> None:
    v1 = predictions(8, seed=5, version="v1")
    v2 = predictions(4, seed=6, version="v2", request="s", t0=T0 + 100)

    async def body(store: Store) -> tuple[Any, Any, Any]:
        await store.write_predictions(v1 + v2)
        return (
            await store.recent_features("t1", since=0.0, limit=1000),
            await store.recent_features("t1", since=T0 + 5, limit=5),
            await store.recent_features("nobody", since=0.0),
        )

    full, latest, none = with_store(db_url, body)
    assert [s.model_version for s in full] == ["v1", "v2"]
    want = np.frombuffer(b"".join(r.features for r in v1), dtype="<f4").reshape(8, N_FEATURES)
    assert full[0].features.dtype == np.float32
    np.testing.assert_array_equal(full[0].features, want)
    np.testing.assert_array_equal(full[0].eta, [r.eta for r in v1])
    # the 5 latest rows at or after T0+5: all four of v2 (T0+100..), v1's last (T0+7)
    assert [(s.model_version, len(s.eta)) for s in latest] == [("v1", 1), ("v2", 4)]
    np.testing.assert_array_equal(latest[0].features, want[7:])
    assert none == []


def test_prune_by_retention(db_url: str) -> None:
    rows = predictions(10, seed=7, step=10.0)  # T0 .. T0+90

    async def body(store: Store) -> tuple[int, int]:
        await store.write_predictions(rows)
        await store.write_feedback(feedback(["o1"], received=T0 + 5))
        await store.write_feedback(feedback(["o8"], received=T0 + 500))
        return await store.prune(older_than=T0 + 50), await store.prune(older_than=T0 + 50)

    assert with_store(db_url, body) == (5 + 1, 0)
    left = raw_sql(db_url, "SELECT row_id FROM predictions ORDER BY created_at")
    assert [r[0] for r in left] == [f"r:{i}" for i in range(5, 10)]
    assert raw_sql(db_url, "SELECT order_id FROM feedback") == [("o8",)]


def test_ping_and_closed_store(db_url: str) -> None:
    async def run() -> None:
        store = await open_store(db_url)
        assert await store.ping()
        await store.close()
        await store.close()  # twice is fine
        assert not await store.ping()
        with pytest.raises(StoreError, match="not open"):
            await store.write_predictions(predictions(1))

    asyncio.run(run())


def test_pack_features_round_trip() -> None:
    m = np.random.default_rng(8).normal(size=(3, 4))
    blobs = pack_features(m)
    assert [len(b) for b in blobs] == [16, 16, 16]
    from server.store import unpack_features

    np.testing.assert_array_equal(unpack_features(blobs), m.astype(np.float32))
    with pytest.raises(StoreError, match="different lengths"):
        unpack_features([blobs[0], blobs[1][:8]])


@pytest.mark.parametrize("url", ["mysql://x/y", "sqlite://", "sqlite:///", "", "./x.db"])
def test_bad_database_url_is_a_config_error(url: str) -> None:
    with pytest.raises(ConfigError, match=r"^DATABASE_URL=") as e:
        store_from_url(url)
    assert repr(url) in str(e.value)


def test_password_is_not_shown() -> None:
    with pytest.raises(ConfigError) as e:
        store_from_url("mysql://me:s3cret@db/x")
    assert "s3cret" not in str(e.value)
    assert store_from_url("postgresql://me:s3cret@db/x").url == "postgresql://me:***@db/x"


def test_sqlite_memory_and_relative_paths(tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)

    async def run() -> None:
        async with await open_store("sqlite:///:memory:") as mem:
            assert await mem.write_predictions(predictions(3)) == 3
        async with await open_store("sqlite:///./data/rel.db") as rel:
            assert await rel.write_predictions(predictions(2)) == 2

    asyncio.run(run())
    assert (tmp_path / "data" / "rel.db").is_file()


def test_unreachable_postgres_is_a_store_error(tmp_path: Any) -> None:
    url = f"postgresql://postgres@/x?host={tmp_path}&port=1"  # no server on that socket
    with pytest.raises(StoreError, match="cannot connect to DATABASE_URL"):
        asyncio.run(open_store(url, connect_timeout=2.0))
