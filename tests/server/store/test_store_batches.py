"""Predictions stored per written batch (migration 0002), on both backends: the
``predictions`` view, row-id idempotency across batches and processes, the order index
after prunes, the newest-rows read, and the move of 0001's rows."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import msgspec
import numpy as np
import pytest

from server.store import FeedbackResult, PredictionRow, Store, StoreDataError, open_store
from server.store.base import load_migrations
from server.store.batches import MAX_BATCH_ROWS, ORDER_SLACK_S, key_prefix
from tests.server.store.storekit import T0, feedback, predictions, raw_sql

T = TypeVar("T")

COLS = (
    "row_id, request_id, order_id, tenant, model_version, arm, inputs, features, eta, p10, "
    "p90, created_at"
)


def with_store(url: str, body: Callable[[Store], Awaitable[T]]) -> T:
    async def run() -> T:
        async with await open_store(url) as store:
            return await body(store)

    return asyncio.run(run())


def as_tuple(r: PredictionRow) -> tuple[Any, ...]:
    return tuple(msgspec.structs.astuple(r))


def view(url: str) -> list[tuple[Any, ...]]:
    """Every row of the ``predictions`` view, by row id."""
    got = raw_sql(url, f"SELECT {COLS} FROM predictions ORDER BY row_id")
    return [(*r[:7], bytes(r[7]), *r[8:]) for r in got]


def mixed_rows() -> list[PredictionRow]:
    """Rows of two tenants, two versions, two arms and two feature widths, some without
    an order id, some with non-ASCII inputs, in one list."""
    a = predictions(5, seed=1, request="a")
    b = predictions(3, seed=2, request="b", version="v2", arm="candidate")
    c = predictions(4, seed=3, request="c", tenant="t2", order_prefix="x")
    d = predictions(2, seed=4, request="d")
    d = [msgspec.structs.replace(r, features=r.features[:8]) for r in d]  # another width
    e = [
        msgspec.structs.replace(r, order_id=None, inputs='{"zone": "Köpenick ☃", "n": 1}')
        for r in predictions(3, seed=5, request="e")
    ]
    rows = [a[0], b[0], *c[:2], a[1], *d, *e, *a[2:], *b[1:], *c[2:]]
    return rows


def test_view_has_every_column_of_every_row(db_url: str) -> None:
    rows = mixed_rows()
    assert with_store(db_url, lambda s: s.write_predictions(rows)) == len(rows)
    assert view(db_url) == sorted(as_tuple(r) for r in rows)
    groups = raw_sql(db_url, "SELECT tenant, model_version, arm, width FROM prediction_batches")
    assert len(groups) == 4  # one stored batch per tenant, version, arm and feature width


def test_nul_characters(db_url: str, backend: str) -> None:
    """A NUL character in an id is refused (PostgreSQL text cannot hold one, SQLite's JSON
    functions cut it short); in an input SQLite keeps it, as it always did."""
    rows = predictions(3)

    async def body(store: Store) -> None:
        for bad in ({"order_id": "o\x00"}, {"row_id": "r:\x00"}, {"request_id": "\x00"}):
            with pytest.raises(StoreDataError, match="NUL"):
                await store.write_predictions([msgspec.structs.replace(rows[0], **bad)])
        nul = nul_input(rows[1])
        if backend == "postgres":
            with pytest.raises(StoreDataError, match="NUL"):
                await store.write_predictions([nul])
        else:
            assert await store.write_predictions([nul]) == 1
        assert await store.write_predictions([rows[2]]) == 1

    with_store(db_url, body)
    kept = [rows[2]] if backend == "postgres" else [nul_input(rows[1]), rows[2]]
    assert view(db_url) == [as_tuple(r) for r in kept]


def nul_input(row: PredictionRow) -> PredictionRow:
    return msgspec.structs.replace(row, inputs='{"a": "x\x00y"}')


def test_a_request_split_across_writes_and_replays(db_url: str) -> None:
    """Rows of one request (one key prefix) in two batches, then replays that overlap
    both, and rows whose ids have no ':' at all."""
    rows = predictions(12, seed=6, request="req")
    plain = [msgspec.structs.replace(r, row_id=f"plain{i}") for i, r in enumerate(rows[:3])]

    async def body(store: Store) -> list[int]:
        return [
            await store.write_predictions(rows[:5]),
            await store.write_predictions(rows[5:9]),
            await store.write_predictions(rows[3:7] + plain),  # nothing new but plain
            await store.write_predictions(rows + plain),  # the last three are new
            await store.write_predictions(rows[::-1] + plain),
        ]

    assert with_store(db_url, body) == [5, 4, 3, 3, 0]
    got = [r[0] for r in view(db_url)]
    assert sorted(got) == sorted([r.row_id for r in rows] + [r.row_id for r in plain])
    keys = raw_sql(db_url, "SELECT prefix FROM prediction_keys ORDER BY prefix")
    assert {k for (k,) in keys} == {"req", "plain0", "plain1", "plain2"}
    assert key_prefix("a:b:3") == "a" and key_prefix("abc") == "abc"


def test_concurrent_writers_store_each_row_once(db_url: str) -> None:
    """Two stores (two processes' connections) replaying the same rows at the same time:
    each row is stored once (SQLite: BEGIN IMMEDIATE; PostgreSQL: the advisory lock)."""
    rows = predictions(300, seed=7, request="same")
    others = [predictions(40, seed=8 + i, request=f"o{i}") for i in range(6)]

    async def run() -> list[int]:
        a, b = await open_store(db_url), await open_store(db_url)
        try:
            writes = []
            for i in range(6):
                writes.append(a.write_predictions(rows[i * 40 : i * 40 + 60] + others[i]))
                writes.append(b.write_predictions(rows[::-1] + others[5 - i]))
            return list(await asyncio.gather(*writes))
        finally:
            await a.close()
            await b.close()

    counts = asyncio.run(run())
    assert sum(counts) == 300 + 6 * 40
    ids = [r[0] for r in raw_sql(db_url, "SELECT row_id FROM predictions")]
    assert len(ids) == len(set(ids)) == 300 + 6 * 40


def test_write_larger_than_a_stored_batch(db_url: str) -> None:
    rows = predictions(MAX_BATCH_ROWS + 10, seed=9, step=0.01)

    async def body(store: Store) -> tuple[int, int]:
        return await store.write_predictions(rows), await store.write_predictions(rows)

    assert with_store(db_url, body) == (len(rows), 0)
    sizes = raw_sql(db_url, "SELECT n FROM prediction_batches ORDER BY batch_id")
    assert sizes == [(MAX_BATCH_ROWS,), (10,)]
    assert raw_sql(db_url, "SELECT count(*) FROM predictions") == [(len(rows),)]


@pytest.mark.parametrize(
    "bad",
    [
        {"eta": None},
        {"created_at": None},
        {"p90": "high"},
        {"inputs": None},
        {"features": None},
        {"request_id": None},
        {"row_id": None},
        {"tenant": None},
    ],
    ids=lambda d: next(iter(d)),
)
def test_rows_with_missing_values_are_refused(db_url: str, bad: dict[str, Any]) -> None:
    rows = predictions(4, seed=10)
    rows[2] = msgspec.structs.replace(rows[2], **bad)

    async def body(store: Store) -> None:
        with pytest.raises(StoreDataError, match="rows refused"):
            await store.write_predictions(rows)
        assert await store.write_predictions(rows[:2] + rows[3:]) == 3

    with_store(db_url, body)


def test_prune_cuts_through_a_batch_and_keeps_the_order_index_exact(db_url: str) -> None:
    """One batch spanning the cut is rewritten with its newer rows; an order is unknown
    to feedback once all its predictions are pruned, whatever the index's slack."""
    slack = ORDER_SLACK_S
    spans = predictions(10, seed=11, step=10.0, order_prefix="span")  # T0 .. T0+90
    again = [  # orders predicted before the cut and again after it
        *predictions(1, seed=12, request="near", order_prefix="near", t0=T0 + 1),
        *predictions(1, seed=13, request="near2", order_prefix="near", t0=T0 + 100),
        *predictions(1, seed=14, request="far", order_prefix="far", t0=T0 + 2),
        *predictions(1, seed=15, request="far2", order_prefix="far", t0=T0 + 2 * slack),
        *predictions(1, seed=16, request="gone", order_prefix="gone", t0=T0 + 3),
        *predictions(1, seed=17, request="gone2", order_prefix="gone", t0=T0 + 4),
    ]

    async def body(store: Store) -> tuple[int, FeedbackResult, list[Any], list[Any]]:
        await store.write_predictions(spans)
        for r in again:  # one write each: the order index sees them one after the other
            await store.write_predictions([r])
        pruned = await store.prune(older_than=T0 + 50)
        fb = await store.write_feedback(
            feedback(["span2", "span7", "near0", "far0", "gone0"], received=T0 + 3 * slack)
        )
        return (
            pruned,
            fb,
            await store.joined("t1", since=0.0),
            await store.recent_features("t1", since=0.0),
        )

    pruned, fb, joined, recent = with_store(db_url, body)
    assert pruned == 5 + 4  # span0..span4; near at T0+1, far at T0+2, gone at T0+3 and +4
    assert fb == FeedbackResult(inserted=5, updated=0, unknown=2)  # span2, gone0
    left = sorted(r[0] for r in view(db_url))
    assert left == sorted([f"r:{i}" for i in range(5, 10)] + ["near2:0", "far2:0"])
    assert [(j.created_at, j.actual) for j in joined] == [
        (T0 + 70, 31.0),
        (T0 + 100, 32.0),
        (T0 + 2 * slack, 33.0),
    ]
    assert [len(s.eta) for s in recent] == [7]
    orders = dict(raw_sql(db_url, "SELECT order_id, last_created FROM prediction_orders"))
    assert orders == {
        **{f"span{i}": T0 + 10 * i for i in range(5, 10)},
        "near0": T0 + 100,
        "far0": T0 + 2 * slack,
    }


def test_recent_features_match_a_full_sort(db_url: str) -> None:
    """Many small batches whose times interleave: the newest rows by (created_at, row_id)
    are the ones a sort of every row gives, for several windows and limits."""
    rng = np.random.default_rng(18)
    rows: list[PredictionRow] = []
    for i in range(40):
        t0 = T0 + float(rng.uniform(0, 500))
        step = float(rng.uniform(0, 3))
        n = int(rng.integers(1, 30))
        rows += predictions(n, seed=100 + i, request=f"q{i}", t0=t0, step=step, version=f"v{i % 3}")
    rows += predictions(5, seed=99, request="tie", t0=T0 + 250, step=0.0)
    cases = [(0.0, 10), (T0 + 200, 50), (T0 + 100, 10_000), (T0, 1), (0.0, 0)]

    async def body(store: Store) -> list[list[Any]]:
        for i in range(0, len(rows), 37):
            await store.write_predictions(rows[i : i + 37])
        return [await store.recent_features("t1", since=s, limit=n) for s, n in cases]

    for (since, limit), got in zip(cases, with_store(db_url, body), strict=True):
        newest = sorted(
            (r for r in rows if r.created_at >= since),
            key=lambda r: (r.created_at, r.row_id),
            reverse=True,
        )[:limit]
        want: dict[str, list[PredictionRow]] = {}
        for r in reversed(newest):  # oldest first, versions in order of their oldest row
            want.setdefault(r.model_version, []).append(r)
        assert [s.model_version for s in got] == list(want)
        for s in got:
            np.testing.assert_array_equal(s.eta, [r.eta for r in want[s.model_version]])
            flat = b"".join(r.features for r in want[s.model_version])
            np.testing.assert_array_equal(s.features.ravel(), np.frombuffer(flat, "<f4"))


# ---- migration 0002: the rows of 0001's table ---------------------------------------------


def v1_database(url: str, rows: list[PredictionRow]) -> None:
    """A database migrated to version 1 (0001's ``predictions`` table) holding ``rows``."""
    dialect = "sqlite" if url.startswith("sqlite") else "postgres"
    init = load_migrations(dialect)[0]
    marks = (
        ", ".join(["?"] * 12) if dialect == "sqlite" else ", ".join(f"${i}" for i in range(1, 13))
    )
    insert = f"INSERT INTO predictions ({COLS}) VALUES ({marks})"
    record = "INSERT INTO schema_migrations (version, name, applied_at) VALUES (1, 'init', 0)"
    create = (
        "CREATE TABLE schema_migrations (version INTEGER PRIMARY KEY, name TEXT NOT NULL, "
        "applied_at DOUBLE PRECISION NOT NULL)"
    )
    if dialect == "sqlite":
        path = url[len("sqlite:///") :]
        from pathlib import Path

        Path(path).parent.mkdir(parents=True, exist_ok=True)
        with sqlite3.connect(path) as conn:
            conn.execute(create)
            conn.executescript(init.sql)
            conn.executemany(insert, [as_tuple(r) for r in rows])
            conn.execute(record)
        return

    async def load() -> None:
        import asyncpg

        conn = await asyncpg.connect(url)
        try:
            async with conn.transaction():
                await conn.execute(create)
                await conn.execute(init.sql)
                await conn.executemany(insert, [as_tuple(r) for r in rows])
                await conn.execute(record)
        finally:
            await conn.close()

    asyncio.run(load())


def test_migration_moves_0001_rows_into_batches(db_url: str) -> None:
    rows = mixed_rows() + predictions(
        MAX_BATCH_ROWS + 3, seed=19, request="big", t0=T0 - 10_000, step=0.5
    )
    v1_database(db_url, rows)

    async def body(store: Store) -> tuple[int, int, FeedbackResult, int, list[Any]]:
        return (
            await store.schema_version(),
            await store.write_predictions(rows[::-1]),  # all stored already
            await store.write_feedback(feedback(["o1", "x2", "nope"], received=T0 + 5)),
            len(await store.joined("t1", since=0.0)),
            await store.recent_features("t2", since=0.0),
        )

    version, again, fb, joined, recent = with_store(db_url, body)
    assert (version, again) == (len(load_migrations("sqlite")), 0)
    assert view(db_url) == sorted(as_tuple(r) for r in rows)
    assert fb == FeedbackResult(inserted=3, updated=0, unknown=2)  # x2 is tenant t2's
    assert joined == 4  # order o1 in requests a, b, d and big
    assert [(s.model_version, len(s.eta)) for s in recent] == [("v1", 4)]
    gone = (
        "SELECT count(*) FROM sqlite_master WHERE name = 'predictions_v1'"
        if db_url.startswith("sqlite")
        else "SELECT count(*) FROM pg_class WHERE relname = 'predictions_v1'"
    )
    assert raw_sql(db_url, gone) == [(0,)]


def test_texts_that_are_not_unicode_are_refused(db_url: str) -> None:
    rows = predictions(3)

    async def body(store: Store) -> None:
        for bad in ({"row_id": "r:\ud800"}, {"order_id": "o\udfff"}, {"inputs": "{\ud800}"}):
            with pytest.raises(StoreDataError, match="rows refused"):
                await store.write_predictions([msgspec.structs.replace(rows[0], **bad)])
        assert await store.write_predictions(rows) == 3

    with_store(db_url, body)
