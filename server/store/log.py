"""The prediction log: predictions reach the store off the hot path, never lost.

``PredictionLog.submit(rows)`` is what the hot path calls: it appends to an in-memory
queue and returns at once (no await, no I/O). ``rows`` is a list of
:class:`~server.store.PredictionRow` or, from the server's routes, one
:class:`~server.store.chunks.PredictionChunk` per request (the request's rows as columns:
no Python object per row on the hot path; the store packs the columns, see
``Store.write_chunks``). A background task writes the queue to the
store in batches (``batch_size`` rows, or whatever is queued after ``flush_interval``
seconds). A batch takes whole submits while they fit, so the rows of one request reach
the store in one write (one ``prediction_keys`` entry); a submit larger than
``batch_size`` is cut. Rows go to the :class:`~server.store.spool.Spool` instead when

- the store raised on a batch (the log then treats the store as down and spools every
  batch until a ping answers again), or
- the queue is full (``max_queue`` rows): the rows that do not fit are spooled.

A second task pings the store every ``replay_interval`` seconds while rows wait in the
spool, and replays them once it answers. :meth:`PredictionLog.close` writes everything
still queued to the store or, failing that, to the spool. Rows reach the database exactly
once in the end because inserts are idempotent on ``row_id``.

``write_feedback_durable`` serves the feedback API: it returns only once the rows are
committed in the database, or fsync'd in the spool when the database is down
(``FeedbackResult.spooled``). Only if both fail does it raise StoreError.

Rows the database refuses for their content (``StoreDataError``) are not an outage:
they are found by splitting the batch and set aside in the spool's ``.rejected`` file,
and the rest of the batch is written (see :func:`~server.store.spool.write_rows`).

Counters (plain attributes, for metrics): ``rows_written``, ``rows_spooled``,
``rows_replayed``, ``rows_dropped``, ``write_errors``, and the properties
``rows_rejected`` and ``queue_depth``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import Sequence
from pathlib import Path

from kernels.errors import StoreError
from server.store.base import FeedbackResult, FeedbackRow, PredictionRow, Store, StoreDataError
from server.store.chunks import PredictionChunk, rows_of_chunks
from server.store.spool import Spool, SpoolRow, write_chunks, write_rows

__all__ = ["PredictionLog"]

log = logging.getLogger("intellilog.store")

#: What one submit queues: rows, or one request's rows as columns.
Part = Sequence[PredictionRow] | PredictionChunk


def _cut(part: Part, a: int, b: int | None = None) -> Part:
    return part.cut(a, b) if isinstance(part, PredictionChunk) else part[a:b]


class PredictionLog:
    """Batches predictions into ``store``, spooling to ``spool`` when it cannot.

    Call :meth:`start` on the running event loop, :meth:`submit` from that loop's
    thread, and :meth:`close` at shutdown. The store and spool are not closed by it.
    """

    def __init__(
        self,
        store: Store,
        spool: Spool | str | Path,
        *,
        max_queue: int = 100_000,
        batch_size: int = 500,
        flush_interval: float = 0.2,
        replay_interval: float = 5.0,
    ) -> None:
        self.store = store
        self.spool = spool if isinstance(spool, Spool) else Spool(spool)
        self.max_queue = max_queue
        self.batch_size = batch_size
        self.flush_interval = flush_interval
        self.replay_interval = replay_interval
        #: rows committed to the store by this log (predictions and feedback)
        self.rows_written = 0
        #: rows written to the spool (database down or queue full)
        self.rows_spooled = 0
        #: rows replayed from the spool into the store
        self.rows_replayed = 0
        #: rows lost because neither the store nor the spool could take them
        self.rows_dropped = 0
        #: store writes that failed
        self.write_errors = 0
        self._queue: deque[Part] = deque()  # one entry per submit
        self._queued = 0  # rows in _queue
        self._wake = asyncio.Event()  # rows are queued
        self._full = asyncio.Event()  # a whole batch is queued
        self._store_down = False
        self._closing = False
        self._closed = False
        self._tasks: list[asyncio.Task[None]] = []
        self._spilling: set[asyncio.Task[None]] = set()
        # one drain at a time: flush() waits for a batch the writer task is writing
        self._draining = asyncio.Lock()

    @property
    def queue_depth(self) -> int:
        """Rows waiting in memory."""
        return self._queued

    @property
    def rows_rejected(self) -> int:
        """Rows the database refused for their content, set aside in the spool's
        ``.rejected`` file (by this log's writes and by replays)."""
        return self.spool.rows_rejected

    @property
    def store_down(self) -> bool:
        """True from a failed store write until a ping answers again."""
        return self._store_down

    async def start(self) -> None:
        """Start the writer and the replay task (the first replay runs at once)."""
        if self._tasks:
            return
        self._tasks = [
            asyncio.create_task(self._writer(), name="intellilog-prediction-log"),
            asyncio.create_task(self._replayer(), name="intellilog-spool-replay"),
        ]

    def submit(self, rows: Part) -> None:
        """Queue ``rows`` (rows, or a chunk) for the store; never blocks, never raises on
        database trouble.

        ``rows`` is queued as it is, not copied: do not change it afterwards.

        Rows beyond ``max_queue`` are spooled by a background task. After :meth:`close`
        rows are spooled synchronously (a blocking fsync; shutdown only).
        """
        n = len(rows)
        if not n:
            return
        if self._closed:
            self._spool_sync(rows_of_chunks([rows]))
            return
        room = self.max_queue - self._queued
        if room >= n:
            self._queue.append(rows)
            self._queued += n
        else:
            if room > 0:
                self._queue.append(_cut(rows, 0, room))
                self._queued += room
            rest = rows_of_chunks([_cut(rows, max(room, 0))])
            task = asyncio.ensure_future(self._spool_rows(rest))
            self._spilling.add(task)
            task.add_done_callback(self._spilling.discard)
        if self._queued >= self.batch_size:
            self._full.set()
        if self._queued:
            self._wake.set()

    async def write_feedback_durable(self, rows: Sequence[FeedbackRow]) -> FeedbackResult:
        """Store feedback ``rows``; returns once they are committed in the database, or
        fsync'd in the spool when the database is down (then ``spooled=len(rows)``).

        Raises StoreDataError when the database refuses the rows for their content, and
        StoreError when neither the database nor the spool takes them.
        """
        if not rows:
            return FeedbackResult()
        if not self._store_down:
            try:
                result = await self.store.write_feedback(rows)
            except StoreDataError:
                raise  # the rows themselves are refused: the caller must hear it
            except Exception as e:
                self._mark_down(e)
            else:
                self.rows_written += len(rows)
                return result
        try:
            await self.spool.append(rows)
        except OSError as e:
            raise StoreError(
                f"feedback not stored: the database is down and the spool {self.spool.path} "
                f"cannot be written ({e}); fix the database or the spool's disk, then resend"
            ) from e
        self.rows_spooled += len(rows)
        return FeedbackResult(spooled=len(rows))

    async def replay(self) -> int:
        """Replay the spool into the store if it holds rows and the store answers a
        ping; returns the rows replayed (0 when there was nothing or the store is down)."""
        pending = await asyncio.to_thread(self.spool.pending_bytes)
        if not pending and not self._store_down:
            return 0
        if not await self.store.ping():
            self._store_down = True
            return 0
        self._store_down = False
        if not pending:
            return 0
        try:
            n = await self.spool.replay(self.store)
        except Exception as e:
            self._mark_down(e)
            return 0
        self.rows_replayed += n
        if n:
            log.info("replayed %d spooled rows into %s", n, self.store.url)
        return n

    async def flush(self) -> None:
        """Write everything queued now (to the store, or the spool) and wait for it."""
        await self._drain()
        if self._spilling:
            await asyncio.gather(*self._spilling, return_exceptions=True)

    async def close(self) -> None:
        """Stop the tasks after writing every queued row to the store or the spool."""
        if self._closed:
            return
        self._closing = True
        writer = self._tasks[0] if self._tasks else None
        for task in self._tasks[1:]:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if writer is not None:
            self._wake.set()
            self._full.set()
            await writer
        await self.flush()
        self._closed = True
        self._tasks = []

    # -- internals ------------------------------------------------------------------

    def _mark_down(self, e: Exception) -> None:
        self.write_errors += 1
        if not self._store_down:
            log.warning("store %s failed, spooling until it answers: %s", self.store.url, e)
        self._store_down = True

    async def _writer(self) -> None:
        while True:
            await self._wake.wait()
            if not self._closing and self._queued < self.batch_size:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._full.wait(), self.flush_interval)
            await self._drain()
            if self._closing and not self._queued:
                return

    def _take(self) -> list[Part]:
        """The next batch: whole submits while they fit in ``batch_size`` rows (the first
        one cut when it alone is larger)."""
        queue, size = self._queue, self.batch_size
        first = queue.popleft()
        if len(first) > size:
            queue.appendleft(_cut(first, size))
            first = _cut(first, 0, size)
        batch = [first]
        n = len(first)
        while queue and n + len(queue[0]) <= size:
            part = queue.popleft()
            batch.append(part)
            n += len(part)
        self._queued -= n
        return batch

    async def _drain(self) -> None:
        async with self._draining:
            while self._queue:
                batch = self._take()
                try:
                    await self._write(batch)
                except asyncio.CancelledError:
                    # cancelled mid-write: the batch may or may not be committed; spooling
                    # it (and the rest) is safe, a replay skips what the store already holds
                    self._spool_sync(rows_of_chunks([*batch, *self._queue]))
                    self._queue.clear()
                    self._queued = 0
                    raise
            self._wake.clear()
            self._full.clear()

    async def _write(self, batch: list[Part]) -> None:
        if not self._store_down:
            try:
                refused = await self._write_parts(batch)
            except Exception as e:
                self._mark_down(e)
            else:
                self.rows_written += sum(map(len, batch)) - len(refused)
                await self._reject(refused)
                return
        await self._spool_rows(rows_of_chunks(batch))

    async def _write_parts(self, batch: list[Part]) -> list[SpoolRow]:
        """Write the rows and chunks of ``batch``; the rows refused for their content."""
        chunks = [p for p in batch if isinstance(p, PredictionChunk)]
        refused: list[SpoolRow] = []
        if len(chunks) < len(batch):
            rows = [r for p in batch if not isinstance(p, PredictionChunk) for r in p]
            refused += await write_rows(self.store, rows)
        if chunks:
            refused += await write_chunks(self.store, chunks)
        return refused

    async def _reject(self, rows: Sequence[SpoolRow]) -> None:
        if not rows:
            return
        try:
            await self.spool.reject(rows)
        except Exception as e:
            log.error(
                "%d refused rows lost: %s cannot be written: %s",
                len(rows),
                self.spool.rejected_path,
                e,
            )
            self.rows_dropped += len(rows)

    async def _spool_rows(self, rows: Sequence[SpoolRow]) -> None:
        try:
            await self.spool.append(rows)
        except Exception as e:  # disk full, permissions, a row that cannot be encoded
            self.rows_dropped += len(rows)
            log.error(
                "%d rows lost: the spool %s cannot be written: %s", len(rows), self.spool.path, e
            )
        else:
            self.rows_spooled += len(rows)

    def _spool_sync(self, rows: Sequence[SpoolRow]) -> None:
        try:
            self.spool.append_sync(rows)
        except Exception as e:
            self.rows_dropped += len(rows)
            log.error(
                "%d rows lost: the spool %s cannot be written: %s", len(rows), self.spool.path, e
            )
        else:
            self.rows_spooled += len(rows)

    async def _replayer(self) -> None:
        while True:
            try:
                await self.replay()
            except Exception:  # never let the task die; the next tick retries
                log.exception("spool replay failed")
            await asyncio.sleep(self.replay_interval)
