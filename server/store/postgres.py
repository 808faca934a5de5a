"""The production store: PostgreSQL through asyncpg with a connection pool.

Predictions are stored per written batch (:mod:`server.store.batches`, the layout of
SQLite's): one row of ``prediction_batches`` per batch, its small columns as one JSON
text and its inputs and features as two ``bytea``, inserted with its ``prediction_keys``
and ``prediction_orders`` rows by one statement. Lists travel as JSON text parameters
(asyncpg's array encoder checks every element against ``collections.abc`` types: several
µs per row of the server's CPU); the database unpacks them. Prediction writes and prunes
hold a transaction-scoped advisory lock, so two processes replaying the same rows at once
cannot both find them new; the ``predictions`` view unpacks the batches for SQL.

Feedback goes in with ``COPY`` (``copy_records_to_table``) into a per-connection staging
table (``ON COMMIT DELETE ROWS``), then one ``INSERT ... SELECT ... ON CONFLICT (tenant,
order_id) DO UPDATE ... WHERE`` the incoming row is at least as recent (``received_at``);
``RETURNING (xmax = 0)`` tells inserted rows from updated ones.

All database work runs on the store's own thread, with its own event loop and the pool's
connections: a write is two hops of the server's busy event loop (hand over, result)
instead of one per round trip (begin, lock, check, insert, commit), so the prediction log
keeps up under load instead of spooling. Migrations run under a transaction-scoped advisory lock, so several server processes
starting at once apply them exactly once. Connection failures, timeouts and server
errors become StoreError; the pool reconnects by itself once the server is back.
"""

from __future__ import annotations

import asyncio
import functools
import math
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Sequence
from contextlib import asynccontextmanager
from typing import Any, Concatenate, ParamSpec, TypeVar

import asyncpg

from kernels.errors import StoreError
from server.store.base import (
    EXPERIMENT_COLUMNS,
    Experiment,
    FeatureSample,
    FeedbackResult,
    FeedbackRow,
    JoinedRow,
    LabelledRow,
    PredictionRow,
    Store,
    StoreDataError,
    check_schema_version,
    experiment_of,
    experiment_params,
    group_features,
    load_migrations,
    redact_url,
)
from server.store.batches import (
    MAX_BATCH_ROWS,
    ORDER_SLACK_S,
    Batch,
    chunk_keys,
    chunk_row_ids,
    encode,
    json_of,
    pack,
    pack_chunks,
    pick_recent,
    rows_of,
    to_json,
    unique,
)
from server.store.chunks import PredictionChunk, rows_of_chunks

__all__ = ["PostgresStore"]

#: Key of the advisory lock held while migrating (any constant unique to this app).
_MIGRATION_LOCK = 0x1E7E_11_06

# Refused for the rows' content: SQLSTATE class 22 (data exception, e.g. a NUL character
# in text), class 23 (integrity, e.g. a missing value), or a value asyncpg cannot encode.
_DATA_ERRORS: tuple[type[BaseException], ...] = (
    asyncpg.DataError,
    asyncpg.IntegrityConstraintViolationError,
    asyncpg.exceptions._base.DataError,
)

_DB_ERRORS: tuple[type[BaseException], ...] = (
    asyncpg.PostgresError,
    asyncpg.InterfaceError,
    OSError,
    TimeoutError,
)

_FB_COLS = ("ord", "tenant", "order_id", "actual_minutes", "completed_at", "received_at")
_FB_STAGING = """
CREATE TEMP TABLE IF NOT EXISTS feedback_in (
    ord INTEGER NOT NULL, tenant TEXT NOT NULL, order_id TEXT NOT NULL,
    actual_minutes DOUBLE PRECISION NOT NULL, completed_at DOUBLE PRECISION NOT NULL,
    received_at DOUBLE PRECISION NOT NULL) ON COMMIT DELETE ROWS
"""
_COUNT_UNKNOWN = """
SELECT count(*) FROM feedback_in AS s
WHERE NOT EXISTS (SELECT 1 FROM prediction_orders o WHERE o.tenant = s.tenant AND o.order_id = s.order_id)
"""
# One row per key (the latest received; a tie goes to the later row of the batch):
# ON CONFLICT DO UPDATE may not touch the same row twice in one statement.
_UPSERT_FEEDBACK = """
INSERT INTO feedback AS f (tenant, order_id, actual_minutes, completed_at, received_at)
SELECT DISTINCT ON (tenant, order_id)
       tenant, order_id, actual_minutes, completed_at, received_at
FROM feedback_in ORDER BY tenant, order_id, received_at DESC, ord DESC
ON CONFLICT (tenant, order_id) DO UPDATE SET
    actual_minutes = excluded.actual_minutes, completed_at = excluded.completed_at,
    received_at = excluded.received_at, updates = f.updates + 1
WHERE excluded.received_at >= f.received_at
RETURNING (xmax = 0) AS inserted
"""

#: Key of the advisory lock held by prediction writes and prunes.
_PREDICTION_LOCK = 0x1E7E_11_07

# LATERAL: one index lookup per prefix (a semi-join may hash the whole table instead).
_CANDIDATES = """
SELECT DISTINCT k.batch_id
FROM json_array_elements_text($1::json) AS p (prefix)
CROSS JOIN LATERAL (SELECT batch_id FROM prediction_keys WHERE prefix = p.prefix) AS k
"""

_STORED_IDS = """
SELECT r.value ->> 0 FROM prediction_batches AS b, json_array_elements(b.rows) AS r (value)
WHERE b.batch_id = ANY($1::bigint[])
  AND (r.value ->> 0) IN (SELECT json_array_elements_text($2::json))
"""

# One statement per batch: the batch, its keys, and its orders ([[order_id, newest], ...]);
# last_created moves forward only past the slack.
_INSERT_BATCH = f"""
WITH b AS (
    INSERT INTO prediction_batches (tenant, model_version, arm, n, width, created_min,
                                    created_max, rows, inputs, features)
    VALUES ($1, $2, $3, $4, $5, $6, $7, $8::json, $9, $10)
    RETURNING batch_id
), k AS (
    INSERT INTO prediction_keys (prefix, batch_id)
    SELECT p, b.batch_id FROM b, json_array_elements_text($11::json) AS p
    ON CONFLICT DO NOTHING
)
INSERT INTO prediction_orders AS o (tenant, order_id, last_created)
SELECT $1, e.value ->> 0, (e.value ->> 1)::double precision
FROM json_array_elements($12::json) AS e (value)
ON CONFLICT (tenant, order_id) DO UPDATE SET last_created = excluded.last_created
WHERE excluded.last_created > o.last_created + {ORDER_SLACK_S!r}
"""

_JOINED = """
SELECT b.model_version, b.arm, (r.value ->> 3)::double precision AS eta,
       (r.value ->> 4)::double precision, (r.value ->> 5)::double precision,
       f.actual_minutes, (r.value ->> 6)::double precision AS created_at, f.completed_at,
       f.order_id
FROM prediction_batches AS b
CROSS JOIN LATERAL json_array_elements(b.rows) AS r (value)
JOIN feedback AS f ON f.tenant = b.tenant AND f.order_id = r.value ->> 2
WHERE b.tenant = $1 AND b.created_max >= $2 AND b.created_min < $3
  AND (r.value ->> 6)::double precision >= $2 AND (r.value ->> 6)::double precision < $3
ORDER BY created_at, r.value ->> 0
"""

# The latest non-shadow prediction of each order with feedback completed in [$2, $3),
# made in [$4, $3).
_LABELLED = """
WITH fb AS (
    SELECT order_id, actual_minutes, completed_at FROM feedback
    WHERE tenant = $1 AND completed_at >= $2 AND completed_at < $3
)
SELECT DISTINCT ON (fb.order_id) fb.order_id, b.model_version, b.arm,
       convert_from(substring(b.inputs FROM (r.value ->> 7)::integer + 1
                              FOR (r.value ->> 8)::integer), 'UTF8'),
       (r.value ->> 3)::double precision, fb.actual_minutes,
       (r.value ->> 6)::double precision AS created_at, fb.completed_at
FROM prediction_batches AS b
CROSS JOIN LATERAL json_array_elements(b.rows) AS r (value)
JOIN fb ON fb.order_id = r.value ->> 2
WHERE b.tenant = $1 AND b.created_max >= $4 AND b.created_min < $3 AND b.arm <> 'shadow'
  AND (r.value ->> 6)::double precision >= $4 AND (r.value ->> 6)::double precision < $3
ORDER BY fb.order_id, created_at DESC
"""

_INSERT_EXPERIMENT = f"""
INSERT INTO experiments ({EXPERIMENT_COLUMNS})
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14)
"""
_UPDATE_EXPERIMENT = """
UPDATE experiments SET tenant = $2, mode = $3, baseline_version = $4, candidate_version = $5,
    split = $6, status = $7, started_at = $8, planned_hours = $9, ended_at = $10,
    decision = $11, reason = $12, options = $13, updated_at = $14
WHERE experiment_id = $1
"""
_SELECT_EXPERIMENTS = f"""
SELECT {EXPERIMENT_COLUMNS} FROM experiments
WHERE tenant = $1 AND ($2::text IS NULL OR status = $2)
ORDER BY started_at DESC, experiment_id DESC
"""

_RECENT_META = """
SELECT batch_id, created_min, created_max, n FROM prediction_batches
WHERE tenant = $1 AND created_max >= $2
ORDER BY created_max DESC
"""

_RECENT = """
SELECT b.model_version,
       substring(b.features FROM ((r.pos - 1) * b.width + 1)::integer FOR b.width),
       (r.value ->> 3)::double precision
FROM prediction_batches AS b
CROSS JOIN LATERAL json_array_elements(b.rows) WITH ORDINALITY AS r (value, pos)
WHERE b.batch_id = ANY($1::bigint[]) AND (r.value ->> 6)::double precision >= $2
ORDER BY (r.value ->> 6)::double precision DESC, r.value ->> 0 DESC LIMIT $3
"""

_BATCH_ROWS = """
SELECT tenant, model_version, arm, width, rows::text, inputs, features
FROM prediction_batches WHERE batch_id = ANY($1::bigint[])
"""

# The keys of the rows of the batches that prune deletes (key_prefix in SQL).
_DELETE_KEYS = """
DELETE FROM prediction_keys AS k
USING (SELECT DISTINCT split_part(r.value ->> 0, ':', 1) AS prefix, b.batch_id
       FROM prediction_batches AS b, json_array_elements(b.rows) AS r (value)
       WHERE b.batch_id = ANY($1::bigint[])) AS d
WHERE k.prefix = d.prefix AND k.batch_id = d.batch_id
"""

# After a prune: orders whose last_created is before the cut either have no prediction
# left, or (by the slack invariant) only ones made before cut + slack; those set it anew.
_REFRESH_ORDERS = f"""
UPDATE prediction_orders AS o SET last_created = live.last
FROM (SELECT b.tenant, r.value ->> 2 AS order_id,
             max((r.value ->> 6)::double precision) AS last
      FROM prediction_batches AS b, json_array_elements(b.rows) AS r (value)
      WHERE b.created_min < $1 + {ORDER_SLACK_S!r} AND r.value ->> 2 IS NOT NULL
      GROUP BY 1, 2) AS live
WHERE o.tenant = live.tenant AND o.order_id = live.order_id AND o.last_created < $1
"""


T = TypeVar("T")
P = ParamSpec("P")


def _on_store_thread(
    method: Callable[Concatenate[PostgresStore, P], Coroutine[Any, Any, T]],
) -> Callable[Concatenate[PostgresStore, P], Coroutine[Any, Any, T]]:
    """Run the method on the store's thread (its event loop owns the connections)."""

    @functools.wraps(method)
    async def run(self: PostgresStore, *args: P.args, **kwargs: P.kwargs) -> T:
        return await self._hop(method(self, *args, **kwargs))

    return run


def _count(status: str) -> int:
    """Rows affected, from a command status such as ``INSERT 0 12`` or ``DELETE 3``."""
    return int(status.rsplit(" ", 1)[-1])


class PostgresStore(Store):
    """PostgreSQL at ``dsn`` (asyncpg syntax; ``postgres://`` or ``postgresql://``).

    ``connect_timeout`` bounds connecting and acquiring a pooled connection,
    ``command_timeout`` each statement; ``pool_size`` is the most connections held.
    """

    def __init__(
        self,
        dsn: str,
        *,
        connect_timeout: float = 5.0,
        command_timeout: float = 30.0,
        pool_size: int = 4,
    ) -> None:
        self._dsn = dsn
        self.url = redact_url(dsn)
        self._connect_timeout = connect_timeout
        self._command_timeout = command_timeout
        self._pool_size = pool_size
        self._pool: Any = None  # asyncpg.Pool once open (used on the store's thread only)
        self._loop: asyncio.AbstractEventLoop | None = None  # the store thread's loop
        self._thread: threading.Thread | None = None

    async def _hop(self, coro: Coroutine[Any, Any, T]) -> T:
        """Await ``coro`` on the store's thread (directly when already there)."""
        loop = self._loop
        if loop is None:
            coro.close()
            raise StoreError(f"{self.url}: the store is not open (call open() first)")
        if asyncio.get_running_loop() is loop:
            return await coro
        return await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(coro, loop))

    async def _with_connection(self, fn: Callable[[Any], Awaitable[T]]) -> T:
        """``fn(conn)`` with a pooled connection on the store's thread, errors as for the
        store's own queries (for read-only helpers outside the Store protocol)."""

        async def run() -> T:
            async with self._connection() as conn:
                return await fn(conn)

        return await self._hop(run())

    @asynccontextmanager
    async def _connection(self) -> AsyncIterator[Any]:
        """A pooled connection; driver and network errors become StoreError."""
        if self._pool is None:
            raise StoreError(f"{self.url}: the store is not open (call open() first)")
        try:
            async with self._pool.acquire(timeout=self._connect_timeout) as conn:
                yield conn
        except _DATA_ERRORS as e:
            raise StoreDataError(f"{self.url}: rows refused: {type(e).__name__}: {e}") from e
        except _DB_ERRORS as e:
            raise StoreError(f"{self.url}: {type(e).__name__}: {e}") from e

    # -- lifecycle ------------------------------------------------------------------

    async def open(self) -> None:
        if self._loop is not None:
            return
        loop = asyncio.new_event_loop()
        thread = threading.Thread(target=loop.run_forever, name="intellilog-postgres", daemon=True)
        thread.start()
        self._loop, self._thread = loop, thread
        try:
            await self._hop(self._open())
        except BaseException:
            await self.close()
            raise

    async def _open(self) -> None:
        try:
            self._pool = await asyncpg.create_pool(
                self._dsn,
                min_size=1,
                max_size=self._pool_size,
                timeout=self._connect_timeout,
                command_timeout=self._command_timeout,
            )
        except _DB_ERRORS as e:
            raise StoreError(
                f"cannot connect to DATABASE_URL={self.url!r}: {type(e).__name__}: {e}"
            ) from e
        await self.migrate()

    async def close(self) -> None:
        loop, thread = self._loop, self._thread
        if loop is None or thread is None:
            return
        try:
            await self._hop(self._close_pool())
        finally:
            self._loop = self._thread = None
            loop.call_soon_threadsafe(loop.stop)
            await asyncio.to_thread(thread.join)
            loop.close()

    async def _close_pool(self) -> None:
        pool, self._pool = self._pool, None
        if pool is None:
            return
        try:
            await asyncio.wait_for(pool.close(), timeout=10.0)
        except Exception:  # a connection stuck or already broken: drop them all
            pool.terminate()

    @_on_store_thread
    async def migrate(self) -> int:
        migrations = load_migrations("postgres")
        async with self._connection() as conn, conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock($1)", _MIGRATION_LOCK)
            await conn.execute(
                "CREATE TABLE IF NOT EXISTS schema_migrations (version INTEGER PRIMARY KEY, "
                "name TEXT NOT NULL, applied_at DOUBLE PRECISION NOT NULL)"
            )
            current = await conn.fetchval("SELECT coalesce(max(version), 0) FROM schema_migrations")
            check_schema_version(int(current), len(migrations))
            pending = [m for m in migrations if m.version > current]
            for m in pending:
                await conn.execute(m.sql)
                if m.version == 2:  # 0002 renamed 0001's table; its rows move into batches
                    await self._move_v1_rows(conn)
                await conn.execute(
                    "INSERT INTO schema_migrations (version, name, applied_at) VALUES ($1, $2, $3)",
                    m.version,
                    m.name,
                    time.time(),
                )
        return len(pending)

    @_on_store_thread
    async def schema_version(self) -> int:
        async with self._connection() as conn:
            if await conn.fetchval("SELECT to_regclass('schema_migrations')") is None:
                return 0
            return int(
                await conn.fetchval("SELECT coalesce(max(version), 0) FROM schema_migrations")
            )

    async def ping(self) -> bool:
        async def probe(conn: Any) -> None:
            await conn.fetchval("SELECT 1", timeout=self._connect_timeout)

        try:
            await self._with_connection(probe)
        except Exception:
            return False
        return True

    # -- writes ---------------------------------------------------------------------

    @_on_store_thread
    async def write_predictions(self, rows: Sequence[PredictionRow]) -> int:
        if not rows:
            return 0
        async with self._connection() as conn, conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock($1)", _PREDICTION_LOCK)
            return await self._write_rows(conn, rows)

    @_on_store_thread
    async def write_chunks(self, chunks: Sequence[PredictionChunk]) -> int:
        if not chunks:
            return 0
        async with self._connection() as conn, conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock($1)", _PREDICTION_LOCK)
            return await self._write_chunks(conn, chunks)

    async def _write_chunks(self, conn: Any, chunks: Sequence[PredictionChunk]) -> int:
        """:meth:`_write_rows` from columns; the row path when a row id repeats or is
        stored already (a replay, a request split across writes)."""
        prefixes, distinct = chunk_keys(chunks, self.url)
        if not distinct:
            return await self._write_rows(conn, rows_of_chunks(chunks))
        keys = json_of(prefixes, self.url).decode()
        candidates = [r[0] for r in await conn.fetch(_CANDIDATES, keys)]
        if candidates:
            ids = json_of(chunk_row_ids(chunks), self.url).decode()
            if await conn.fetch(_STORED_IDS, candidates, ids):
                return await self._write_rows(conn, rows_of_chunks(chunks))
        batches = pack_chunks(chunks, self.url)
        for b in batches:
            bkeys = keys if len(batches) == 1 else json_of(b.prefixes(), self.url).decode()
            await self._insert_batch(conn, b, bkeys)
        return sum(b.n for b in batches)

    async def _write_rows(self, conn: Any, rows: Sequence[PredictionRow]) -> int:
        """Store the rows not stored yet as batches (in the caller's transaction, which
        holds the prediction lock)."""
        new, prefixes = unique(rows, self.url)
        keys = json_of(prefixes, self.url).decode()
        candidates = [r[0] for r in await conn.fetch(_CANDIDATES, keys)]
        if candidates:  # a replay, or a request split across two writes: compare row ids
            ids = json_of([r.row_id for r in new], self.url).decode()
            stored = {r[0] for r in await conn.fetch(_STORED_IDS, candidates, ids)}
            if stored:
                new = [r for r in new if r.row_id not in stored]
        batches = pack(new, self.url)
        for b in batches:
            if len(batches) > 1 or len(new) < len(rows):
                keys = json_of(b.prefixes(), self.url).decode()
            await self._insert_batch(conn, b, keys)
        return len(new)

    async def _insert_batch(self, conn: Any, b: Batch, keys: str) -> None:
        rows, inputs = encode(b, self.url)
        if b"\x00" in inputs:  # PostgreSQL text cannot hold it: the view could not read it
            raise StoreDataError(f"{self.url}: rows refused: an input holds a NUL character")
        await conn.execute(
            _INSERT_BATCH,
            b.tenant,
            b.model_version,
            b.arm,
            b.n,
            b.width,
            b.created_min,
            b.created_max,
            rows.decode(),
            inputs,
            b.features,
            keys,
            to_json(list(b.latest_orders().items())).decode(),
        )

    async def _move_v1_rows(self, conn: Any) -> None:
        """Migration 0002: the rows of 0001's table (renamed predictions_v1) into batches,
        oldest first per tenant, model version and arm; then drop that table."""
        await conn.execute(
            "DECLARE v1_rows NO SCROLL CURSOR FOR"
            " SELECT row_id, request_id, order_id, tenant, model_version, arm, inputs, features,"
            " eta, p10, p90, created_at FROM predictions_v1"
            " ORDER BY tenant, model_version, arm, created_at, row_id"
        )
        names = PredictionRow.__struct_fields__
        while chunk := await conn.fetch(f"FETCH {MAX_BATCH_ROWS} FROM v1_rows"):
            await self._write_rows(
                conn, [PredictionRow(**dict(zip(names, r, strict=True))) for r in chunk]
            )
        await conn.execute("CLOSE v1_rows")
        await conn.execute("DROP TABLE predictions_v1")

    @_on_store_thread
    async def write_feedback(self, rows: Sequence[FeedbackRow]) -> FeedbackResult:
        if not rows:
            return FeedbackResult()
        records = [
            (i, r.tenant, r.order_id, r.actual_minutes, r.completed_at, r.received_at)
            for i, r in enumerate(rows)
        ]
        async with self._connection() as conn, conn.transaction():
            await conn.execute(_FB_STAGING)
            await conn.copy_records_to_table("feedback_in", records=records, columns=_FB_COLS)
            unknown = int(await conn.fetchval(_COUNT_UNKNOWN))
            flags = await conn.fetch(_UPSERT_FEEDBACK)
        inserted = sum(1 for f in flags if f["inserted"])
        return FeedbackResult(inserted=inserted, updated=len(rows) - inserted, unknown=unknown)

    @_on_store_thread
    async def prune(self, older_than: float) -> int:
        async with self._connection() as conn, conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock($1)", _PREDICTION_LOCK)
            old = await conn.fetch(
                "SELECT batch_id, n, created_max FROM prediction_batches WHERE created_min < $1",
                older_than,
            )
            doomed = [r["batch_id"] for r in old]
            gone = sum(r["n"] for r in old if r["created_max"] < older_than)
            part = [r["batch_id"] for r in old if r["created_max"] >= older_than]
            kept: list[PredictionRow] = []
            if part:  # batches with rows on both sides of the cut: rewritten with the rest
                for rec in await conn.fetch(_BATCH_ROWS, part):
                    decoded = rows_of(*rec)
                    left = [r for r in decoded if r.created_at >= older_than]
                    gone += len(decoded) - len(left)
                    kept.extend(left)
            if doomed:
                await conn.execute(_DELETE_KEYS, doomed)
                await conn.execute(
                    "DELETE FROM prediction_batches WHERE batch_id = ANY($1::bigint[])", doomed
                )
            if kept:
                await self._write_rows(conn, kept)
            await conn.execute(_REFRESH_ORDERS, older_than)
            await conn.execute("DELETE FROM prediction_orders WHERE last_created < $1", older_than)
            m = await conn.execute("DELETE FROM feedback WHERE received_at < $1", older_than)
        return gone + _count(m)

    # -- reads ----------------------------------------------------------------------

    @_on_store_thread
    async def joined(
        self, tenant: str, since: float, until: float | None = None
    ) -> list[JoinedRow]:
        end = math.inf if until is None else until
        async with self._connection() as conn:
            recs = await conn.fetch(_JOINED, tenant, since, end)
        return [
            JoinedRow(
                model_version=r[0],
                arm=r[1],
                eta=r[2],
                p10=r[3],
                p90=r[4],
                actual=r[5],
                created_at=r[6],
                completed_at=r[7],
                order_id=r[8],
            )
            for r in recs
        ]

    @_on_store_thread
    async def labelled(
        self, tenant: str, since: float, until: float, lead_s: float
    ) -> list[LabelledRow]:
        async with self._connection() as conn:
            recs = await conn.fetch(_LABELLED, tenant, since, until, since - lead_s)
        rows = [
            LabelledRow(
                order_id=r[0],
                model_version=r[1],
                arm=r[2],
                inputs=r[3],
                eta=r[4],
                actual=r[5],
                created_at=r[6],
                completed_at=r[7],
            )
            for r in recs
        ]
        rows.sort(key=lambda r: (r.completed_at, r.order_id))
        return rows

    # -- experiments ----------------------------------------------------------------

    @_on_store_thread
    async def save_experiment(self, exp: Experiment, *, new: bool) -> None:
        params = experiment_params(exp)
        async with self._connection() as conn:
            if new:
                await conn.execute(_INSERT_EXPERIMENT, *params)
            elif _count(await conn.execute(_UPDATE_EXPERIMENT, *params)) != 1:
                raise StoreDataError(f"no experiment {exp.experiment_id!r} to update")

    @_on_store_thread
    async def experiments(self, tenant: str, status: str | None = None) -> list[Experiment]:
        async with self._connection() as conn:
            recs = await conn.fetch(_SELECT_EXPERIMENTS, tenant, status)
        return [experiment_of(tuple(r)) for r in recs]

    @_on_store_thread
    async def recent_features(
        self, tenant: str, since: float, limit: int = 10_000
    ) -> list[FeatureSample]:
        async with self._connection() as conn:
            meta = await conn.fetch(_RECENT_META, tenant, since)
            chosen = pick_recent((tuple(m) for m in meta), since, limit)
            if not chosen:
                return []
            recs = await conn.fetch(_RECENT, chosen, since, limit)
        return group_features([(r[0], r[1], r[2]) for r in recs])
