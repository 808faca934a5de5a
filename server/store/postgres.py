"""The production store: PostgreSQL through asyncpg with a connection pool.

Batches go in with ``COPY`` (``copy_records_to_table``) into a per-connection staging
table (``ON COMMIT DELETE ROWS``), then one ``INSERT ... SELECT ... ON CONFLICT`` moves
them into place, all in one transaction:

- predictions: ``ON CONFLICT (row_id) DO NOTHING``, so replays are idempotent;
- feedback: ``ON CONFLICT (tenant, order_id) DO UPDATE ... WHERE`` the incoming row is at
  least as recent (``received_at``); ``RETURNING (xmax = 0)`` tells inserted rows from
  updated ones.

Migrations run under a transaction-scoped advisory lock, so several server processes
starting at once apply them exactly once. Connection failures, timeouts and server
errors become StoreError; the pool reconnects by itself once the server is back.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any

import asyncpg

from kernels.errors import StoreError
from server.store.base import (
    FeatureSample,
    FeedbackResult,
    FeedbackRow,
    JoinedRow,
    PredictionRow,
    Store,
    StoreDataError,
    check_schema_version,
    group_features,
    load_migrations,
    redact_url,
)

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

_PRED_COLS = (
    "row_id",
    "request_id",
    "order_id",
    "tenant",
    "model_version",
    "arm",
    "inputs",
    "features",
    "eta",
    "p10",
    "p90",
    "created_at",
)
_PRED_LIST = ", ".join(_PRED_COLS)

_PRED_STAGING = (
    "CREATE TEMP TABLE IF NOT EXISTS predictions_in "
    "(LIKE predictions INCLUDING DEFAULTS) ON COMMIT DELETE ROWS"
)
_INSERT_PREDICTIONS = (
    f"INSERT INTO predictions ({_PRED_LIST}) SELECT {_PRED_LIST} FROM predictions_in "
    "ON CONFLICT (row_id) DO NOTHING"
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
WHERE NOT EXISTS (SELECT 1 FROM predictions p WHERE p.tenant = s.tenant AND p.order_id = s.order_id)
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

_JOINED = """
SELECT p.model_version, p.arm, p.eta, p.p10, p.p90, f.actual_minutes, p.created_at,
       f.completed_at
FROM predictions p JOIN feedback f ON f.tenant = p.tenant AND f.order_id = p.order_id
WHERE p.tenant = $1 AND p.created_at >= $2 AND p.created_at < $3
ORDER BY p.created_at, p.row_id
"""

_RECENT = """
SELECT model_version, features, eta FROM predictions
WHERE tenant = $1 AND created_at >= $2
ORDER BY created_at DESC, row_id DESC LIMIT $3
"""


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
        self._pool: Any = None  # asyncpg.Pool once open

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
        if self._pool is not None:
            return
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
        try:
            await self.migrate()
        except BaseException:
            await self.close()
            raise

    async def close(self) -> None:
        pool, self._pool = self._pool, None
        if pool is None:
            return
        try:
            await asyncio.wait_for(pool.close(), timeout=10.0)
        except Exception:  # a connection stuck or already broken: drop them all
            pool.terminate()

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
                await conn.execute(
                    "INSERT INTO schema_migrations (version, name, applied_at) VALUES ($1, $2, $3)",
                    m.version,
                    m.name,
                    time.time(),
                )
        return len(pending)

    async def schema_version(self) -> int:
        async with self._connection() as conn:
            if await conn.fetchval("SELECT to_regclass('schema_migrations')") is None:
                return 0
            return int(
                await conn.fetchval("SELECT coalesce(max(version), 0) FROM schema_migrations")
            )

    async def ping(self) -> bool:
        try:
            async with self._connection() as conn:
                await conn.fetchval("SELECT 1", timeout=self._connect_timeout)
        except Exception:
            return False
        return True

    # -- writes ---------------------------------------------------------------------

    async def write_predictions(self, rows: Sequence[PredictionRow]) -> int:
        if not rows:
            return 0
        records = [
            (
                r.row_id,
                r.request_id,
                r.order_id,
                r.tenant,
                r.model_version,
                r.arm,
                r.inputs,
                r.features,
                r.eta,
                r.p10,
                r.p90,
                r.created_at,
            )
            for r in rows
        ]
        async with self._connection() as conn, conn.transaction():
            await conn.execute(_PRED_STAGING)
            await conn.copy_records_to_table("predictions_in", records=records, columns=_PRED_COLS)
            return _count(await conn.execute(_INSERT_PREDICTIONS))

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

    async def prune(self, older_than: float) -> int:
        async with self._connection() as conn, conn.transaction():
            n = await conn.execute("DELETE FROM predictions WHERE created_at < $1", older_than)
            m = await conn.execute("DELETE FROM feedback WHERE received_at < $1", older_than)
        return _count(n) + _count(m)

    # -- reads ----------------------------------------------------------------------

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
            )
            for r in recs
        ]

    async def recent_features(
        self, tenant: str, since: float, limit: int = 10_000
    ) -> list[FeatureSample]:
        async with self._connection() as conn:
            recs = await conn.fetch(_RECENT, tenant, since, limit)
        return group_features([(r[0], r[1], r[2]) for r in recs])
