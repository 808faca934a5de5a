"""The embedded default store: SQLite through the standard ``sqlite3`` module.

One connection lives on one dedicated worker thread; every call runs there, so the
event loop never blocks on disk I/O and the connection is never shared between threads.
The database runs in WAL mode with ``synchronous=FULL``: a write that returned is on disk.
Each ``write_*`` call is one ``BEGIN IMMEDIATE`` ... ``COMMIT`` transaction. Several
processes may open the same file (writers queue on SQLite's lock, waiting up to
``busy_timeout``).

Predictions are stored per written batch (:mod:`server.store.batches`): a batch is one
row of ``prediction_batches`` holding a JSON array of the rows' small columns (msgspec
writes floats exactly; ``json_extract`` reads them back for the ``predictions`` view) and
two blobs (inputs, features). The store's own reads decode the JSON with msgspec.
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
)
from server.store.batches import (
    MAX_BATCH_ROWS,
    ORDER_SLACK_S,
    Batch,
    chunk_keys,
    chunk_row_ids,
    decode_rows,
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
WHERE NOT EXISTS (SELECT 1 FROM prediction_orders o WHERE o.tenant = s.tenant AND o.order_id = s.order_id)
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

# -- predictions, stored per batch (server/store/batches.py, migration 0002) ------------

_INSERT_BATCH = """
INSERT INTO prediction_batches (tenant, model_version, arm, n, width, created_min, created_max,
                                rows, inputs, features)
VALUES (?, ?, ?, ?, ?, ?, ?, CAST(? AS TEXT), ?, ?)
"""

_INSERT_KEYS = """
INSERT INTO prediction_keys (prefix, batch_id)
SELECT value, ?1 FROM json_each(CAST(?2 AS TEXT)) WHERE true ON CONFLICT DO NOTHING
"""

# The newest prediction of each order in a batch: [[order_id, created_at], ...].
_UPSERT_ORDERS = f"""
INSERT INTO prediction_orders (tenant, order_id, last_created)
SELECT ?1, json_extract(value, '$[0]'), json_extract(value, '$[1]')
FROM json_each(CAST(?2 AS TEXT)) WHERE true
ON CONFLICT (tenant, order_id) DO UPDATE SET last_created = excluded.last_created
WHERE excluded.last_created > prediction_orders.last_created + {ORDER_SLACK_S!r}
"""

_CANDIDATES = """
SELECT DISTINCT batch_id FROM prediction_keys
WHERE prefix IN (SELECT value FROM json_each(CAST(? AS TEXT)))
"""

_LAST_KEY = "SELECT max(prefix) FROM prediction_keys"

_STORED_IDS = """
SELECT json_extract(r.value, '$[0]') FROM prediction_batches AS b, json_each(b.rows) AS r
WHERE b.batch_id IN (SELECT value FROM json_each(CAST(?1 AS TEXT)))
  AND json_extract(r.value, '$[0]') IN (SELECT value FROM json_each(CAST(?2 AS TEXT)))
"""

_BATCH_COLS = "batch_id, tenant, model_version, arm, width, rows, inputs, features"

_JOINED_BATCHES = """
SELECT model_version, arm, rows FROM prediction_batches
WHERE tenant = ? AND created_max >= ? AND created_min < ?
ORDER BY batch_id
"""

_FEEDBACK_OF = """
SELECT order_id, actual_minutes, completed_at FROM feedback
WHERE tenant = ? AND order_id IN (SELECT value FROM json_each(CAST(? AS TEXT)))
"""

_FEEDBACK_COMPLETED = """
SELECT order_id, actual_minutes, completed_at FROM feedback
WHERE tenant = ? AND completed_at >= ? AND completed_at < ?
"""

_LABELLED_BATCHES = """
SELECT model_version, arm, rows, inputs FROM prediction_batches
WHERE tenant = ? AND created_max >= ? AND created_min < ?
ORDER BY batch_id
"""

_INSERT_EXPERIMENT = (
    f"INSERT INTO experiments ({EXPERIMENT_COLUMNS}) VALUES ({', '.join('?' * 14)})"
)
_UPDATE_EXPERIMENT = """
UPDATE experiments SET tenant = ?, mode = ?, baseline_version = ?, candidate_version = ?,
    split = ?, status = ?, started_at = ?, planned_hours = ?, ended_at = ?, decision = ?,
    reason = ?, options = ?, updated_at = ?
WHERE experiment_id = ?
"""
_SELECT_EXPERIMENTS = f"""
SELECT {EXPERIMENT_COLUMNS} FROM experiments
WHERE tenant = ? AND (? IS NULL OR status = ?)
ORDER BY started_at DESC, experiment_id DESC
"""

_RECENT_META = """
SELECT batch_id, created_min, created_max, n FROM prediction_batches
WHERE tenant = ? AND created_max >= ?
ORDER BY created_max DESC
"""

_RECENT_BATCHES = """
SELECT model_version, width, rows, features FROM prediction_batches
WHERE batch_id IN (SELECT value FROM json_each(CAST(? AS TEXT)))
"""

# The keys of the rows of the batches that prune deletes (key_prefix in SQL).
_DELETE_KEYS = """
DELETE FROM prediction_keys WHERE (prefix, batch_id) IN (
    SELECT DISTINCT CASE WHEN instr(json_extract(r.value, '$[0]'), ':') > 0
                         THEN substr(json_extract(r.value, '$[0]'), 1,
                                     instr(json_extract(r.value, '$[0]'), ':') - 1)
                         ELSE json_extract(r.value, '$[0]') END,
           b.batch_id
    FROM prediction_batches AS b, json_each(b.rows) AS r
    WHERE b.batch_id IN (SELECT value FROM json_each(CAST(? AS TEXT))))
"""

# After a prune: orders whose last_created is before the cut either have no prediction
# left, or (by the slack invariant) only ones made before cut + slack; those set it anew.
_REFRESH_ORDERS = f"""
UPDATE prediction_orders SET last_created = live.last
FROM (SELECT b.tenant AS tenant, json_extract(r.value, '$[2]') AS order_id,
             max(json_extract(r.value, '$[6]')) AS last
      FROM prediction_batches AS b, json_each(b.rows) AS r
      WHERE b.created_min < ?1 + {ORDER_SLACK_S!r} AND json_extract(r.value, '$[2]') IS NOT NULL
      GROUP BY 1, 2) AS live
WHERE prediction_orders.tenant = live.tenant AND prediction_orders.order_id = live.order_id
  AND prediction_orders.last_created < ?1
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
                if m.version == 2:  # 0002 renamed 0001's table; its rows move into batches
                    self._move_v1_rows(conn)
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
        return await self._call(self._tx, functools.partial(self._write_rows, rows=rows))

    async def write_chunks(self, chunks: Sequence[PredictionChunk]) -> int:
        if not chunks:
            return 0
        return await self._call(self._tx, functools.partial(self._write_chunks, chunks=chunks))

    @staticmethod
    def _candidates(conn: sqlite3.Connection, keys: bytes, prefixes: list[str]) -> list[int]:
        """The batches holding rows whose key prefix is among ``prefixes`` (``keys``:
        their JSON). None can when every prefix sorts after the last stored one (keys
        start with the clock; TEXT compares as Python's ``str`` does): one index probe
        then instead of one per prefix (a single-row request has a prefix of its own)."""
        (last,) = conn.execute(_LAST_KEY).fetchone()
        if last is None or (prefixes and min(prefixes) > last):
            return []
        return [b for (b,) in conn.execute(_CANDIDATES, (keys,)).fetchall()]

    def _write_chunks(self, conn: sqlite3.Connection, chunks: Sequence[PredictionChunk]) -> int:
        """:meth:`_write_rows` from columns; the row path when a row id repeats or is
        stored already (a replay, a request split across writes)."""
        prefixes, distinct = chunk_keys(chunks, self.url)
        if not distinct:
            return self._write_rows(conn, rows_of_chunks(chunks))
        keys = json_of(prefixes, self.url)
        candidates = self._candidates(conn, keys, prefixes)
        if candidates:
            ids = json_of(chunk_row_ids(chunks), self.url)
            if conn.execute(_STORED_IDS, (to_json(candidates), ids)).fetchone() is not None:
                return self._write_rows(conn, rows_of_chunks(chunks))
        batches = pack_chunks(chunks, self.url)
        for b in batches:
            bkeys = keys if len(batches) == 1 else json_of(b.prefixes(), self.url)
            self._insert_batch(conn, b, bkeys)
        return sum(b.n for b in batches)

    def _write_rows(self, conn: sqlite3.Connection, rows: Sequence[PredictionRow]) -> int:
        """Store the rows not stored yet as batches (inside the caller's transaction)."""
        new, prefixes = unique(rows, self.url)
        keys = json_of(prefixes, self.url)
        candidates = self._candidates(conn, keys, prefixes)
        if candidates:  # a replay, or a request split across two writes: compare row ids
            ids = json_of([r.row_id for r in new], self.url)
            stored = {i for (i,) in conn.execute(_STORED_IDS, (to_json(candidates), ids))}
            if stored:
                new = [r for r in new if r.row_id not in stored]
        batches = pack(new, self.url)
        for b in batches:
            if len(batches) > 1 or len(new) < len(rows):
                keys = json_of(b.prefixes(), self.url)
            self._insert_batch(conn, b, keys)
        return len(new)

    def _insert_batch(self, conn: sqlite3.Connection, b: Batch, keys: bytes) -> None:
        """One stored batch with its keys (``keys``: JSON of its row ids' prefixes) and
        the newest prediction of each of its orders."""
        rows, inputs = encode(b, self.url)
        cur = conn.execute(
            _INSERT_BATCH,
            (
                b.tenant,
                b.model_version,
                b.arm,
                b.n,
                b.width,
                b.created_min,
                b.created_max,
                rows,
                inputs,
                b.features,
            ),
        )
        conn.execute(_INSERT_KEYS, (cur.lastrowid, keys))
        latest = b.latest_orders()
        if latest:
            conn.execute(_UPSERT_ORDERS, (b.tenant, json_of(list(latest.items()), self.url)))

    def _move_v1_rows(self, conn: sqlite3.Connection) -> None:
        """Migration 0002: the rows of 0001's table (renamed predictions_v1) into batches,
        oldest first per tenant, model version and arm; then drop that table."""
        cur = conn.execute(
            "SELECT row_id, request_id, order_id, tenant, model_version, arm, inputs, features,"
            " eta, p10, p90, created_at FROM predictions_v1"
            " ORDER BY tenant, model_version, arm, created_at, row_id"
        )
        names = PredictionRow.__struct_fields__
        while chunk := cur.fetchmany(MAX_BATCH_ROWS):
            self._write_rows(
                conn, [PredictionRow(**dict(zip(names, r, strict=True))) for r in chunk]
            )
        conn.execute("DROP TABLE predictions_v1")

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
            gone = straddle = 0
            old = conn.execute(
                "SELECT batch_id, n, created_max FROM prediction_batches WHERE created_min < ?",
                (older_than,),
            ).fetchall()
            whole = [bid for bid, _, cmax in old if cmax < older_than]
            part = [bid for bid, _, cmax in old if cmax >= older_than]
            gone = sum(n for _, n, cmax in old if cmax < older_than)
            kept: list[PredictionRow] = []
            if part:  # batches with rows on both sides of the cut: rewritten with the rest
                cur = conn.execute(
                    f"SELECT {_BATCH_COLS} FROM prediction_batches"
                    " WHERE batch_id IN (SELECT value FROM json_each(CAST(? AS TEXT)))",
                    (to_json(part),),
                )
                for _, tenant, version, arm, width, rows, inputs, features in cur.fetchall():
                    decoded = rows_of(tenant, version, arm, width, rows, inputs, features)
                    left = [r for r in decoded if r.created_at >= older_than]
                    straddle += len(decoded) - len(left)
                    kept.extend(left)
            doomed = to_json(whole + part)
            conn.execute(_DELETE_KEYS, (doomed,))
            conn.execute(
                "DELETE FROM prediction_batches"
                " WHERE batch_id IN (SELECT value FROM json_each(CAST(? AS TEXT)))",
                (doomed,),
            )
            if kept:
                self._write_rows(conn, kept)
            conn.execute(_REFRESH_ORDERS, (older_than,))
            conn.execute("DELETE FROM prediction_orders WHERE last_created < ?", (older_than,))
            m = conn.execute("DELETE FROM feedback WHERE received_at < ?", (older_than,))
            return gone + straddle + m.rowcount

        return await self._call(self._tx, delete)

    # -- reads ----------------------------------------------------------------------

    async def joined(
        self, tenant: str, since: float, until: float | None = None
    ) -> list[JoinedRow]:
        end = math.inf if until is None else until

        def read() -> list[JoinedRow]:
            db = self._db
            found: list[tuple[float, str, str, str, str, float, float, float]] = []
            for version, arm, rows in db.execute(_JOINED_BATCHES, (tenant, since, end)):
                found.extend(
                    (created, rid, order, version, arm, eta, p10, p90)
                    for rid, _, order, eta, p10, p90, created, _, _ in decode_rows(rows)
                    if order is not None and since <= created < end
                )
            if not found:
                return []
            orders = to_json(list({f[2] for f in found}))
            actual = {o: (a, c) for o, a, c in db.execute(_FEEDBACK_OF, (tenant, orders))}
            found = [f for f in found if f[2] in actual]
            found.sort(key=lambda f: (f[0], f[1]))
            return [
                JoinedRow(
                    model_version=version,
                    arm=arm,
                    eta=eta,
                    p10=p10,
                    p90=p90,
                    actual=actual[order][0],
                    created_at=created,
                    completed_at=actual[order][1],
                    order_id=order,
                )
                for created, _, order, version, arm, eta, p10, p90 in found
            ]

        return await self._call(read)

    async def labelled(
        self, tenant: str, since: float, until: float, lead_s: float
    ) -> list[LabelledRow]:
        def read() -> list[LabelledRow]:
            db = self._db
            actual = {
                o: (a, c) for o, a, c in db.execute(_FEEDBACK_COMPLETED, (tenant, since, until))
            }
            if not actual:
                return []
            latest: dict[str, LabelledRow] = {}
            start = since - lead_s
            for version, arm, rows, inputs in db.execute(_LABELLED_BATCHES, (tenant, start, until)):
                if arm == "shadow":
                    continue
                for _, _, order, eta, _, _, created, off, size in decode_rows(rows):
                    got = actual.get(order) if order is not None else None
                    if got is None or not start <= created < until:
                        continue
                    seen = latest.get(order)
                    if seen is None or created >= seen.created_at:
                        latest[order] = LabelledRow(
                            order_id=order,
                            model_version=version,
                            arm=arm,
                            inputs=bytes(inputs[off : off + size]).decode(),
                            eta=eta,
                            actual=got[0],
                            created_at=created,
                            completed_at=got[1],
                        )
            return sorted(latest.values(), key=lambda r: (r.completed_at, r.order_id))

        return await self._call(read)

    # -- experiments ----------------------------------------------------------------

    async def save_experiment(self, exp: Experiment, *, new: bool) -> None:
        params = experiment_params(exp)

        def write(conn: sqlite3.Connection) -> None:
            if new:
                conn.execute(_INSERT_EXPERIMENT, params)
            else:
                cur = conn.execute(_UPDATE_EXPERIMENT, params[1:] + params[:1])
                if cur.rowcount != 1:
                    raise StoreDataError(f"no experiment {exp.experiment_id!r} to update")

        await self._call(self._tx, write)

    async def experiments(self, tenant: str, status: str | None = None) -> list[Experiment]:
        def read() -> list[Experiment]:
            cur = self._db.execute(_SELECT_EXPERIMENTS, (tenant, status, status))
            return [experiment_of(r) for r in cur.fetchall()]

        return await self._call(read)

    async def recent_features(
        self, tenant: str, since: float, limit: int = 10_000
    ) -> list[FeatureSample]:
        def read() -> list[tuple[str, bytes, float]]:
            db = self._db
            chosen = pick_recent(db.execute(_RECENT_META, (tenant, since)), since, limit)
            if not chosen:
                return []
            found: list[tuple[float, str, str, bytes, float]] = []
            for version, width, rows, features in db.execute(_RECENT_BATCHES, (to_json(chosen),)):
                found.extend(
                    (created, rid, version, features[i * width : (i + 1) * width], eta)
                    for i, (rid, _, _, eta, _, _, created, _, _) in enumerate(decode_rows(rows))
                    if created >= since
                )
            found.sort(key=lambda f: (f[0], f[1]), reverse=True)
            return [(version, blob, eta) for _, _, version, blob, eta in found[:limit]]

        return group_features(await self._call(read))
