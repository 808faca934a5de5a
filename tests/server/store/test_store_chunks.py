"""The columnar path of the prediction log (server.store.chunks): a chunk stores, row for
row, what its rows store through ``write_predictions``, on both backends; it is
idempotent on ``row_id``; it is cut by the log and by the batch limit without losing a
row; it is spooled and replayed exactly once; rows refused for their content are set
aside while the rest is written."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import msgspec
import numpy as np
import pytest

from server.config import load_settings
from server.recorder import Recorder
from server.store import PredictionLog, PredictionRow, Store, StoreDataError, open_store
from server.store.batches import MAX_BATCH_ROWS
from server.store.chunks import PredictionChunk
from tests.pgserver import PgServer
from tests.server.store.storekit import T0, FlakyStore, raw_sql
from tests.server.store.test_store_batches import as_tuple, view, with_store
from tests.server.store.test_store_log import until

F = 7  # features per row


def delivery(i: int, zone: str = "north") -> dict[str, Any]:
    return {"order_id": f"o{i}", "zone": zone, "distance_km": 1.5 + i, "n": i}


def answers(n: int, seed: int) -> tuple[np.ndarray, list[float], list[float], list[float]]:
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, F)).astype(np.float32)
    eta = rng.uniform(10, 60, size=n)
    return X, eta.tolist(), (eta - 5).tolist(), (eta + 7).tolist()


def batch_chunk(
    uid: str, n: int, *, seed: int = 0, version: str = "v1", arm: str = "production"
) -> tuple[PredictionChunk, list[PredictionRow]]:
    """A batch request body as sent (odd spacing, a non-ASCII zone) as one chunk, and the
    rows the routes logged for it before chunks existed (built here independently)."""
    items = [delivery(i, "Köpenick ☃" if i % 3 == 0 else "north") for i in range(n)]
    sent = [
        json.dumps(it, ensure_ascii=False, indent=None if i % 2 else 1)
        for i, it in enumerate(items)
    ]
    body = ('{ "deliveries" :\n [' + " ,\n".join(sent) + "] }").encode()
    X, eta, p10, p90 = answers(n, seed)
    orders: list[str | None] = [it["order_id"] for it in items]
    orders[1 % n] = None
    chunk = PredictionChunk(
        f"req-{uid}",
        uid,
        orders,
        "t1",
        version,
        arm,
        body,
        X,
        eta,
        p10,
        p90,
        T0 + seed,
        rows_at="deliveries",
    )
    rows = [
        PredictionRow(
            row_id=f"{uid}:{i}",
            request_id=f"req-{uid}",
            order_id=orders[i],
            tenant="t1",
            model_version=version,
            arm=arm,
            inputs=sent[i],
            features=X[i].astype("<f4").tobytes(),
            eta=eta[i],
            p10=p10[i],
            p90=p90[i],
            created_at=T0 + seed,
        )
        for i in range(n)
    ]
    return chunk, rows


def single_chunk(
    uid: str, body: bytes, *, seed: int, arm: str = "production"
) -> tuple[PredictionChunk, PredictionRow]:
    X, eta, p10, p90 = answers(1, seed)
    chunk = PredictionChunk(
        uid,
        uid,
        (f"s{seed}",),
        "t1",
        "v1",
        arm,
        body,
        X,
        (eta[0],),
        (p10[0],),
        (p90[0],),
        T0 + seed,
    )
    row = PredictionRow(
        row_id=f"{uid}:0",
        request_id=uid,
        order_id=f"s{seed}",
        tenant="t1",
        model_version="v1",
        arm=arm,
        inputs=body.decode("utf-8", "replace"),
        features=X[0].tobytes(),
        eta=eta[0],
        p10=p10[0],
        p90=p90[0],
        created_at=T0 + seed,
    )
    return chunk, row


def texts_chunk(uid: str, n: int, seed: int) -> tuple[PredictionChunk, list[PredictionRow]]:
    texts = [json.dumps(delivery(i, "Zürich"), ensure_ascii=False) for i in range(n)]
    encoded = [t.encode() for t in texts]
    X, eta, p10, p90 = answers(n, seed)
    chunk = PredictionChunk(
        uid,
        uid,
        [None] * n,
        "t1",
        "v2",
        "candidate",
        b"".join(encoded),
        X,
        eta,
        p10,
        p90,
        T0 + seed,
        sizes=list(map(len, encoded)),
    )
    rows = [
        PredictionRow(
            row_id=f"{uid}:{i}",
            request_id=uid,
            order_id=None,
            tenant="t1",
            model_version="v2",
            arm="candidate",
            inputs=texts[i],
            features=X[i].tobytes(),
            eta=eta[i],
            p10=p10[i],
            p90=p90[i],
            created_at=T0 + seed,
        )
        for i in range(n)
    ]
    return chunk, rows


def mixed() -> tuple[list[PredictionChunk], list[PredictionRow]]:
    """Chunks of every layout (batch body, texts, single bodies, one not UTF-8), two model
    versions and arms, and the rows they stand for."""
    a, ra = batch_chunk("a", 9, seed=1)
    b, rb = texts_chunk("b", 4, seed=2)
    c, rc = single_chunk("c", json.dumps(delivery(0)).encode(), seed=3)
    d, rd = single_chunk("d", b'{"order_id": "s4", "zone": "caf\xe9"}', seed=4, arm="shadow")
    e, re_ = batch_chunk("e", 5, seed=5, version="v2", arm="candidate")
    return [a, b, c, d, e], [*ra, *rb, rc, rd, *re_]


@pytest.fixture
def other_url(backend: str, request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A second fresh database of the same backend."""
    if backend == "sqlite":
        return f"sqlite:///{tmp_path / 'other' / 'intellilog.db'}"
    server: PgServer = request.getfixturevalue("postgres")
    return server.new_database()


def test_chunks_store_row_for_row_what_their_rows_store(db_url: str, other_url: str) -> None:
    chunks, rows = mixed()
    assert [as_tuple(r) for c in chunks for r in c.rows()] == [as_tuple(r) for r in rows]

    async def columnar(store: Store) -> int:
        return await store.write_chunks(chunks)

    async def by_rows(store: Store) -> int:
        return await store.write_predictions(rows)

    assert with_store(db_url, columnar) == len(rows) == 20
    assert with_store(other_url, by_rows) == len(rows)
    got = view(db_url)
    assert got == view(other_url)
    assert got == sorted(as_tuple(r) for r in rows)
    assert "caf\ufffd" in dict((r[0], r[6]) for r in got)["d:0"]  # not UTF-8: replaced
    # one stored batch per (tenant, version, arm, width), as the row path packs them
    batches = raw_sql(
        db_url, "SELECT model_version, arm, n FROM prediction_batches ORDER BY 1, 2, 3"
    )
    assert batches == raw_sql(
        other_url, "SELECT model_version, arm, n FROM prediction_batches ORDER BY 1, 2, 3"
    )


def test_single_row_chunks_store_row_for_row_what_their_rows_store(
    db_url: str, other_url: str
) -> None:
    """Only one-row chunks in a write (the single-row route under load): packed column
    by column across the chunks."""
    pairs = [
        single_chunk(f"u{i}", json.dumps(delivery(i, "Köln" if i % 2 else "x")).encode(), seed=i)
        for i in range(6)
    ]
    pairs.append(single_chunk("bad", b'{"zone": "\xff\xfe"}', seed=9, arm="shadow"))
    chunks = [c for c, _ in pairs]
    rows = [r for _, r in pairs]

    async def columnar(store: Store) -> int:
        return await store.write_chunks(chunks)

    async def by_rows(store: Store) -> int:
        return await store.write_predictions(rows)

    assert with_store(db_url, columnar) == with_store(other_url, by_rows) == 7
    got = view(db_url)
    assert got == view(other_url) == sorted(as_tuple(r) for r in rows)
    assert dict((r[0], r[6]) for r in got)["bad:0"] == '{"zone": "\ufffd\ufffd"}'


def test_chunks_are_idempotent_on_row_id(db_url: str) -> None:
    chunks, rows = mixed()

    async def body(store: Store) -> list[int]:
        first = await store.write_predictions(rows[:5])  # part of request "a" by the row path
        again = await store.write_chunks(chunks)  # the rest of "a" and the other chunks
        twice = await store.write_chunks(chunks)  # a replay: nothing new
        dup = await store.write_chunks([chunks[0], chunks[0].cut(2, 4)])  # repeated ids
        return [first, again, twice, dup]

    assert with_store(db_url, body) == [5, len(rows) - 5, 0, 0]
    assert view(db_url) == sorted(as_tuple(r) for r in rows)


def test_chunks_repeated_within_one_write_are_stored_once(db_url: str) -> None:
    a, ra = batch_chunk("a", 6, seed=1)

    async def body(store: Store) -> int:
        return await store.write_chunks([a.cut(0, 4), a.cut(2), a])

    assert with_store(db_url, body) == 6
    assert view(db_url) == sorted(as_tuple(r) for r in ra)


def test_a_chunk_above_the_batch_limit_is_cut_into_stored_batches(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'db.sqlite'}"
    n = MAX_BATCH_ROWS + 10
    X, eta, p10, p90 = answers(n, 7)
    texts = [b'{"n": %d}' % i for i in range(n)]
    big = PredictionChunk(
        "big",
        "big",
        [f"o{i}" for i in range(n)],
        "t1",
        "v1",
        "production",
        b"".join(texts),
        X,
        eta,
        p10,
        p90,
        T0,
        sizes=list(map(len, texts)),
    )

    async def body(store: Store) -> int:
        return await store.write_chunks([big])

    assert with_store(url, body) == n
    assert raw_sql(url, "SELECT n FROM prediction_batches ORDER BY batch_id") == [
        (MAX_BATCH_ROWS,),
        (10,),
    ]
    assert view(url) == sorted(as_tuple(r) for r in big.rows())
    last = raw_sql(
        url, "SELECT inputs, features FROM predictions WHERE row_id = $1", f"big:{n - 1}"
    )
    assert last == [(f'{{"n": {n - 1}}}', X[n - 1].tobytes())]


def run_log(tmp_path: Path, body: Any, **options: float) -> str:
    url = f"sqlite:///{tmp_path / 'db.sqlite'}"

    async def run() -> None:
        store = FlakyStore(await open_store(url))
        plog = PredictionLog(store, tmp_path / "spool.jsonl", **options)  # type: ignore[arg-type]
        await plog.start()
        try:
            await body(plog, store)
        finally:
            await plog.close()
            await store.close()

    asyncio.run(run())
    return url


def test_the_log_cuts_a_large_chunk_into_batches(tmp_path: Path) -> None:
    a, ra = batch_chunk("a", 250, seed=1)
    b, rb = single_chunk("b", b'{"order_id": "x"}', seed=2)

    async def body(plog: PredictionLog, store: FlakyStore) -> None:
        plog.submit(a)
        plog.submit(b)
        await plog.flush()
        assert store.batches == [100, 100, 51]  # the last batch: the rest of a, then b
        assert plog.rows_written == 251 and plog.queue_depth == 0

    url = run_log(tmp_path, body, batch_size=100, flush_interval=60.0)
    assert view(url) == sorted(as_tuple(r) for r in [*ra, rb])


def test_chunks_spooled_while_down_are_replayed_exactly_once(tmp_path: Path) -> None:
    chunks, rows = mixed()

    async def body(plog: PredictionLog, store: FlakyStore) -> None:
        await store.write_chunks(chunks[:1])  # already stored before the outage
        store.down = True
        for c in chunks:
            plog.submit(c)
        await plog.flush()
        assert plog.rows_spooled == len(rows) and plog.rows_written == 0
        assert [as_tuple(r) for r in plog.spool.read_all()] == [as_tuple(r) for r in rows]
        store.down = False
        await plog.replay()  # or the replay task, whose first pass may run meanwhile
        await until(lambda: plog.rows_replayed == len(rows), "the spooled rows are replayed")
        assert await plog.replay() == 0 and plog.spool.pending_bytes() == 0

    url = run_log(tmp_path, body, flush_interval=60.0, replay_interval=60.0)
    assert view(url) == sorted(as_tuple(r) for r in rows)


def test_a_full_queue_spools_the_chunk_rows_that_do_not_fit(tmp_path: Path) -> None:
    a, ra = batch_chunk("a", 25, seed=1)

    async def body(plog: PredictionLog, store: FlakyStore) -> None:
        plog.submit(a)  # only 10 fit in the queue
        assert plog.queue_depth == 10
        await plog.flush()
        assert (plog.rows_written, plog.rows_spooled) == (10, 15)
        assert [r.row_id for r in plog.spool.read_all()] == [f"a:{i}" for i in range(10, 25)]
        await plog.replay()  # or the replay task, whose first pass may run meanwhile
        await until(lambda: plog.rows_replayed == 15, "the spooled rows are replayed")

    url = run_log(tmp_path, body, max_queue=10, flush_interval=60.0, replay_interval=60.0)
    assert view(url) == sorted(as_tuple(r) for r in ra)


def test_refused_chunk_rows_are_set_aside_and_the_rest_written(tmp_path: Path) -> None:
    good, rg = batch_chunk("g", 4, seed=1)
    bad, _ = batch_chunk("b", 3, seed=2)
    bad.order_ids = ["ok", "bad\x00id", None]  # a NUL character: no database can hold it

    async def body(plog: PredictionLog, store: FlakyStore) -> None:
        plog.submit(good)
        plog.submit(bad)
        await plog.flush()
        assert plog.rows_written == 6 and plog.rows_rejected == 1 and not plog.store_down

    url = run_log(tmp_path, body, flush_interval=60.0)
    stored = {r[0] for r in view(url)}
    assert stored == {r.row_id for r in rg} | {"b:0", "b:2"}
    rejected = (tmp_path / "spool.jsonl.rejected").read_bytes().splitlines()
    assert [json.loads(line)["p"]["row_id"] for line in rejected] == ["b:1"]


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"inputs": b"not json"}, "inputs are not JSON"),
        ({"eta": [1.0]}, "1 eta for 3 rows"),
        ({"rows_at": "", "sizes": [1, 2]}, "2 inputs for 3 rows"),
        ({"features": np.zeros((2, F), np.float32)}, "2 features for 3 rows"),
        ({"arm": None}, "arm must be a string"),
    ],
)
def test_inconsistent_chunks_are_refused_naming_the_column(
    tmp_path: Path, change: dict[str, Any], message: str
) -> None:
    chunk, _ = batch_chunk("a", 3, seed=1)
    for k, v in change.items():
        setattr(chunk, k, v)

    async def body(store: Store) -> None:
        with pytest.raises(StoreDataError, match=message):
            await store.write_chunks([chunk])

    with_store(f"sqlite:///{tmp_path / 'db.sqlite'}", body)


def test_rows_of_a_cut_chunk_are_the_rows_of_the_whole(tmp_path: Path) -> None:
    a, ra = batch_chunk("a", 7, seed=3)
    parts = [a.cut(0, 3), a.cut(3, 3), a.cut(3)]
    assert [len(p) for p in parts] == [3, 0, 4]
    got = [as_tuple(r) for p in parts for r in p.rows()]
    assert got == [as_tuple(r) for r in ra]
    assert msgspec.structs.asdict(parts[2].rows()[0])["row_id"] == "a:3"


def test_the_recorder_logs_each_request_under_its_own_arm_and_version(tmp_path: Path) -> None:
    """What the routes hand over (a single-row body, a batch body, V2 texts) is logged
    as sent, each request under the model version and arm that answered it."""
    url = f"sqlite:///{tmp_path / 'db.sqlite'}"
    settings = load_settings({"DATABASE_URL": url, "TENANT_ID": "acme"}, dotenv=None)
    one = b'{"order_id": "o1", "zone": "Wedding"}'
    items = [delivery(i, "Mitte") for i in range(3)]
    batch = json.dumps({"deliveries": items}).encode()
    texts = ['{"zone": "x"}', '{"zone": "Ä"}']

    async def run() -> None:
        rec = Recorder(settings)
        await rec.start()
        X, eta, p10, p90 = answers(3, 1)
        rec.submit_one("r1", "u1", "o1", one, X[:1], eta[0], p10[0], p90[0], "v1")
        rec.submit_one("r2", "u2", None, one, X[1:2], eta[1], p10[1], p90[1], "v2", "candidate")
        rec.submit(
            rec.chunk(
                "r3",
                "u3",
                ["o0", "o1", "o2"],
                batch,
                X,
                eta,
                p10,
                p90,
                "v2",
                rows_at="deliveries",
                arm="shadow",
            )
        )
        rec.submit(
            rec.texts_chunk("r4", "u4", [None, None], texts, X[:2], eta[:2], p10[:2], p90[:2], "v1")
        )
        await rec.close()

    asyncio.run(run())
    got = raw_sql(
        url,
        "SELECT row_id, request_id, order_id, tenant, model_version, arm, inputs FROM predictions ORDER BY row_id",
    )
    assert got == [
        ("u1:0", "r1", "o1", "acme", "v1", "production", one.decode()),
        ("u2:0", "r2", None, "acme", "v2", "candidate", one.decode()),
        *[
            (f"u3:{i}", "r3", f"o{i}", "acme", "v2", "shadow", json.dumps(it))
            for i, it in enumerate(items)
        ],
        ("u4:0", "r4", None, "acme", "v1", "production", texts[0]),
        ("u4:1", "r4", None, "acme", "v1", "production", texts[1]),
    ]


def test_a_spool_left_by_a_stopped_server_is_replayed_by_the_next(tmp_path: Path) -> None:
    """The spool is a file between processes: what one server spooled while its database
    was down (chunks of every layout, feedback) the next server started on the same spool
    writes into the database, row for row."""
    blocked = tmp_path / "db"
    blocked.write_text("not a folder")  # the SQLite file's folder cannot be made
    url = f"sqlite:///{blocked / 'intellilog.db'}"
    env = {
        "DATABASE_URL": url,
        "TENANT_ID": "t1",
        "SPOOL_PATH": str(tmp_path / "spool" / "intellilog.spool"),
        "PREDICTION_RETENTION_DAYS": "0",  # the rows are dated T0: keep them
    }
    settings = load_settings(env, dotenv=None)
    chunks, rows = mixed()

    async def first() -> None:
        rec = Recorder(settings, reopen_interval=3600.0)
        await rec.start()
        assert not rec.store_open
        for c in chunks:
            rec.submit(c)
        fb = await rec.write_feedback([("o0", 12.5, T0 + 100)], received_at=T0 + 200)
        assert fb.spooled == 1
        await rec.close()

    async def second() -> None:
        rec = Recorder(settings)
        await rec.start()
        assert rec.store_open and rec.log is not None
        spool = rec.log.spool
        await until(lambda: spool.pending_bytes() == 0, "the spool is replayed")
        await rec.close()

    asyncio.run(first())
    assert (tmp_path / "spool" / "intellilog.spool").stat().st_size > 0
    blocked.unlink()  # the database can be opened now
    asyncio.run(second())
    assert view(url) == sorted(as_tuple(r) for r in rows)
    assert raw_sql(
        url, "SELECT tenant, order_id, actual_minutes, completed_at, received_at FROM feedback"
    ) == [("t1", "o0", 12.5, T0 + 100, T0 + 200)]
