"""The embedded default store: SQLite through the standard ``sqlite3`` module.

One connection lives on one dedicated worker thread; every call runs there, so the
event loop never blocks on disk I/O and the connection is never shared between threads.
The database runs in WAL mode with ``synchronous=FULL``: a write that returned is on disk.
Each ``write_*`` call is one ``BEGIN IMMEDIATE`` ... ``COMMIT`` transaction using
``executemany``. Several processes may open the same file (writers queue on SQLite's
lock, waiting up to ``busy_timeout``).
"""

from __future__ import annotations

import asyncio
import functools
import math
import sqlite3
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

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
)

__all__ = ["SqliteStore"]

T = TypeVar("T")

# Errors caused by the rows themselves (constraint, value, parameter binding), not the
# database file; the store is only used while open, so ProgrammingError means binding.
_DATA_ERRORS = (
    sqlite3.IntegrityError,
    sqlite3.DataError,
    sqlite3.InterfaceError,
    sqlite3.ProgrammingError,
)

_INSERT_PREDICTION = """
INSERT INTO predictions (row_id, request_id, order_id, tenant, model_version, arm, inputs,
                         features, eta, p10, p90, created_at)
VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
ON CONFLICT (row_id) DO NOTHING
"""

_FEEDBACK_STAGING = """
CREATE TEMP TABLE IF NOT EXISTS feedback_in (
    ord INTEGER PRIMARY KEY, tenant TEXT NOT NULL, order_id TEXT NOT NULL,
    actual_minutes REAL NOT NULL, completed_at REAL NOT NULL, received_at REAL NOT NULL)
"""

_COUNT_NEW_KEYS = """
SELECT count(*) FROM (SELECT DISTINCT tenant, order_id FROM feedback_in) AS s
WHERE NOT EXISTS (SELECT 1 FROM feedback f WHERE f.tenant = s.tenant AND f.order_id = s.order_id)
"""

_COUNT_UNKNOWN = """
SELECT count(*) FROM feedback_in AS s
WHERE NOT EXISTS (SELECT 1 FROM predictions p WHERE p.tenant = s.tenant AND p.order_id = s.order_id)
"""

# "WHERE true" resolves SQLite's parsing ambiguity of INSERT ... SELECT ... ON CONFLICT.
_UPSERT_FEEDBACK = """
INSERT INTO feedback (tenant, order_id, actual_minutes, completed_at, received_at)
SELECT tenant, order_id, actual_minutes, completed_at, received_at FROM feedback_in
WHERE true ORDER BY ord
ON CONFLICT (tenant, order_id) DO UPDATE SET
    actual_minutes = excluded.actual_minutes, completed_at = excluded.completed_at,
    received_at = excluded.received_at, updates = feedback.updates + 1
WHERE excluded.received_at >= feedback.received_at
"""

_JOINED = """
SELECT p.model_version, p.arm, p.eta, p.p10, p.p90, f.actual_minutes, p.created_at,
       f.completed_at
FROM predictions p JOIN feedback f ON f.tenant = p.tenant AND f.order_id = p.order_id
WHERE p.tenant = ? AND p.created_at >= ? AND p.created_at < ?
ORDER BY p.created_at, p.row_id
"""

_RECENT = """
SELECT model_version, features, eta FROM predictions
WHERE tenant = ? AND created_at >= ?
ORDER BY created_at DESC, row_id DESC LIMIT ?
"""


def _statements(sql: str) -> list[str]:
    """``sql`` split into complete statements (semicolons inside strings, comments and
    trigger bodies stay where they are)."""
    out: list[str] = []
    buf = ""
    for part in sql.split(";"):
        buf += part + ";"
        if sqlite3.complete_statement(buf):
            if buf.strip(" \t\r\n;"):
                out.append(buf)
            buf = ""
    if buf.strip(" \t\r\n;"):
        out.append(buf)
    return out


class SqliteStore(Store):
    """SQLite at ``path`` (a file, created with its folder if missing, or ``":memory:"``)."""

    def __init__(self, path: Path | str) -> None:
        self.path = path
        self.url = f"sqlite:///{path}"
        self._executor: ThreadPoolExecutor | None = None
        self._conn: sqlite3.Connection | None = None  # used on the worker thread only

    # -- plumbing -------------------------------------------------------------------

    async def _call(self, fn: Callable[..., T], *args: Any) -> T:
        """Run ``fn(*args)`` on the worker thread; sqlite3 errors become StoreError."""
        if self._executor is None:
            raise StoreError(f"{self.url}: the store is not open (call open() first)")
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(self._executor, functools.partial(fn, *args))
        except _DATA_ERRORS as e:
            raise StoreDataError(f"{self.url}: rows refused: {type(e).__name__}: {e}") from e
        except sqlite3.Error as e:
            raise StoreError(f"{self.url}: {type(e).__name__}: {e}") from e

    @property
    def _db(self) -> sqlite3.Connection:
        if self._conn is None:
            raise StoreError(f"{self.url}: the store is not open (call open() first)")
        return self._conn

    def _tx(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """``fn(conn)`` inside BEGIN IMMEDIATE ... COMMIT; rolled back if it raises."""
        conn = self._db
        conn.execute("BEGIN IMMEDIATE")
        try:
            out = fn(conn)
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")
        return out

    def _connect(self) -> None:
        if isinstance(self.path, Path):
            self.path.parent.mkdir(parents=True, exist_ok=True)
        # isolation_level=None: no implicit transactions, _tx() opens them explicitly
        conn = sqlite3.connect(str(self.path), isolation_level=None, timeout=30.0)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=FULL")
        conn.execute(_FEEDBACK_STAGING)
        self._conn = conn

    # -- lifecycle ------------------------------------------------------------------

    async def open(self) -> None:
        if self._executor is not None:
            return
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="intellilog-sqlite")
        try:
            await self._call(self._connect)
            await self.migrate()
        except BaseException:
            await self.close()
            raise

    async def close(self) -> None:
        executor, self._executor = self._executor, None
        if executor is None:
            return
        conn, self._conn = self._conn, None
        if conn is not None:
            await asyncio.get_running_loop().run_in_executor(executor, conn.close)
        executor.shutdown(wait=False)

    async def migrate(self) -> int:
        migrations = load_migrations("sqlite")

        def apply(conn: sqlite3.Connection) -> int:
            conn.execute(
                "CREATE TABLE IF NOT EXISTS schema_migrations ("
                "version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_at REAL NOT NULL)"
            )
            found = conn.execute("SELECT coalesce(max(version), 0) FROM schema_migrations")
            current = int(found.fetchone()[0])
            check_schema_version(current, len(migrations))
            pending = [m for m in migrations if m.version > current]
            for m in pending:
                for stmt in _statements(m.sql):
                    conn.execute(stmt)
                conn.execute(
                    "INSERT INTO schema_migrations (version, name, applied_at) VALUES (?, ?, ?)",
                    (m.version, m.name, time.time()),
                )
            return len(pending)

        return await self._call(self._tx, apply)

    async def schema_version(self) -> int:
        def read() -> int:
            exists = self._db.execute(
                "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'schema_migrations'"
            ).fetchone()
            if not exists:
                return 0
            row = self._db.execute("SELECT coalesce(max(version), 0) FROM schema_migrations")
            return int(row.fetchone()[0])

        return await self._call(read)

    async def ping(self) -> bool:
        try:
            await self._call(lambda: self._db.execute("SELECT 1").fetchone())
        except Exception:
            return False
        return True

    # -- writes ---------------------------------------------------------------------

    async def write_predictions(self, rows: Sequence[PredictionRow]) -> int:
        if not rows:
            return 0
        params = [
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

        def write(conn: sqlite3.Connection) -> int:
            before = conn.total_changes
            conn.executemany(_INSERT_PREDICTION, params)
            return conn.total_changes - before

        return await self._call(self._tx, write)

    async def write_feedback(self, rows: Sequence[FeedbackRow]) -> FeedbackResult:
        if not rows:
            return FeedbackResult()
        params = [
            (i, r.tenant, r.order_id, r.actual_minutes, r.completed_at, r.received_at)
            for i, r in enumerate(rows)
        ]

        def write(conn: sqlite3.Connection) -> FeedbackResult:
            conn.execute("DELETE FROM feedback_in")
            conn.executemany("INSERT INTO feedback_in VALUES (?, ?, ?, ?, ?, ?)", params)
            inserted = int(conn.execute(_COUNT_NEW_KEYS).fetchone()[0])
            unknown = int(conn.execute(_COUNT_UNKNOWN).fetchone()[0])
            conn.execute(_UPSERT_FEEDBACK)
            conn.execute("DELETE FROM feedback_in")
            return FeedbackResult(inserted=inserted, updated=len(rows) - inserted, unknown=unknown)

        return await self._call(self._tx, write)

    async def prune(self, older_than: float) -> int:
        def delete(conn: sqlite3.Connection) -> int:
            n = conn.execute("DELETE FROM predictions WHERE created_at < ?", (older_than,))
            m = conn.execute("DELETE FROM feedback WHERE received_at < ?", (older_than,))
            return n.rowcount + m.rowcount

        return await self._call(self._tx, delete)

    # -- reads ----------------------------------------------------------------------

    async def joined(
        self, tenant: str, since: float, until: float | None = None
    ) -> list[JoinedRow]:
        end = math.inf if until is None else until

        def read() -> list[JoinedRow]:
            cur = self._db.execute(_JOINED, (tenant, since, end))
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
                for r in cur
            ]

        return await self._call(read)

    async def recent_features(
        self, tenant: str, since: float, limit: int = 10_000
    ) -> list[FeatureSample]:
        def read() -> list[tuple[str, bytes, float]]:
            return list(self._db.execute(_RECENT, (tenant, since, limit)))

        return group_features(await self._call(read))
