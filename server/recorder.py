"""The server's store: opened at start-up, every prediction logged off the hot path,
feedback written durably, old rows pruned, the log's counters exported as metrics.

Start-up (:meth:`Recorder.start`, from the app's lifespan) opens the store at
``DATABASE_URL`` and applies its migrations. A database migrated by a newer intellilog
stops start-up with the store's message. A database that does not answer does not: the
server starts, says so in one warning, spools predictions and feedback to ``SPOOL_PATH``
and tries to open the store again every ``reopen_interval`` seconds; once it is open, the
prediction log replays the spool into it.

Hot path: the routes hand over what they already hold, once per request: the request
id, the order ids, the body as received, the feature matrix, the answer lists, the model
version and arm that answered (:meth:`Recorder.submit_one`, or :meth:`Recorder.submit` of
a :meth:`Recorder.chunk` or :meth:`Recorder.texts_chunk`). That is one
:class:`~server.store.chunks.PredictionChunk`, queued as it is (``PredictionLog.submit``:
no await, no I/O, nothing per row); the log's writer splits the body into the rows'
inputs and packs the columns into the store's batches on the store's thread. With
``PREDICTION_LOG=off`` the routes build and submit nothing; the store still takes
feedback.

Under ``intellilog serve`` (``PREDICTION_LOG_WRITER=process``, the default) a worker does
not write the chunks itself: :meth:`submit` copies each one into the worker's ring of the
log-writer process (:mod:`server.store.relay`; a turn's single-row requests go as one
record), which writes them to the store. Cost on the serving core (bench/RESULTS.md,
"Prediction log cost", ``bench/http/log_cost.py``): ~0.7 µs per batch row and ~4 µs per
single-row request of ~16 and ~48 µs (0.96 and 0.92 of logging off); the writer spends
~4–5 µs per batch row on its own core. Without the writer (``thread``, or outside
``serve``) the chunks go to this process's :class:`~server.store.PredictionLog`, whose
store thread shares the serving core: +4.2 µs per batch row and +10 µs per single-row
request (0.79 and 0.83). A ring without room (the writer behind or gone) sends its
chunks there too (``intellilog_prediction_log_relay_overflow_rows_total``).
When the store cannot keep up, the queue fills (``PredictionLog.max_queue``) and the
excess is spooled and replayed later.
``intellilog serve --workers N`` gives every worker its own log over the same store and,
by default, the same spool file.

``row_id`` is ``f"{uid}:{i}"``: ``uid`` is the request id when the server made it, and a
fresh server-made id when the client sent ``X-Request-ID`` (client ids need not be unique,
and ``row_id`` must be: a repeated one is skipped by the store as already written).
Server-made ids come from :func:`new_request_id` (time first, so the store's key index
grows at its end).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import Sequence
from pathlib import Path
from random import getrandbits as _bits

import numpy as np

from kernels.errors import StoreError
from server import metrics
from server.config import Settings
from server.store import (
    FeedbackResult,
    FeedbackRow,
    PredictionLog,
    SchemaVersionError,
    Store,
    store_from_url,
)
from server.store.chunks import PredictionChunk
from server.store.relay import ENV as RELAY_ENV
from server.store.relay import STALL_S as RELAY_STALL_S
from server.store.relay import Ring, encode_chunk, encode_chunks, read_chunks, wake_writer
from server.store.relay import supported as relay_supported

__all__ = ["ARM", "Recorder", "new_request_id"]

log = logging.getLogger("intellilog.server")

#: The arm every prediction is logged under until A/B routing exists.
ARM = "production"
#: Seconds between attempts to open a store that was down at start-up.
REOPEN_INTERVAL_S = 5.0


def new_request_id() -> str:
    """A fresh request id: 32 hex digits, the first 12 the time in milliseconds since the
    epoch and the other 20 random (the layout of a UUIDv7, without its version bits).

    The random part comes from :mod:`random` (no system call per request: ``os.urandom``
    cost ~1–4 µs of a ~100 µs single-row request); it only has to be unique, and Python
    reseeds it from the system in every forked worker.

    Row ids start with it, and the store indexes rows by that start
    (``prediction_keys``): ids that grow with time are appended to the end of that index
    instead of dirtying a random page of it per request (SQLite writes every dirtied page
    to its WAL on commit: a 4 KiB page per request for random ids).
    """
    return f"{time.time_ns() // 1_000_000:012x}{_bits(80):020x}"


class Recorder:
    """The store, the prediction log and the background tasks around them.

    ``reopen_interval``: seconds between attempts to open a store that was down at
    start-up; ``prune_interval``: seconds between prunes (``PREDICTION_RETENTION_DAYS``);
    ``metrics_interval``: seconds between copies of the log's counters into the metrics.
    """

    def __init__(
        self,
        settings: Settings,
        *,
        reopen_interval: float | None = None,
        prune_interval: float = 3600.0,
        metrics_interval: float = 1.0,
        relay: str | Path | None = None,
    ) -> None:
        #: PREDICTION_LOG: routes submit predictions only when True
        self.enabled = settings.prediction_log
        self.tenant = settings.tenant_id
        self.url = settings.database_url
        self.spool_path: Path = settings.spool_file
        self.retention_s = settings.prediction_retention_days * 86_400.0
        self.reopen_interval = REOPEN_INTERVAL_S if reopen_interval is None else reopen_interval
        self.prune_interval = prune_interval
        self.metrics_interval = metrics_interval
        self.store: Store | None = None
        self.log: PredictionLog | None = None
        #: the start-up attempt to open the store is over (open, or spooling)
        self.ready = False
        #: the store is open (False while it was down since start-up)
        self.store_open = False
        #: the folder of the log writer's rings (server.store.relay): from ``relay``, else
        #: from ``intellilog serve`` (INTELLILOG_LOG_RELAY) with PREDICTION_LOG_WRITER=process
        if relay is None and settings.prediction_log_writer == "process":
            relay = os.environ.get(RELAY_ENV) or None
        self.relay_folder = Path(relay) if relay and self.enabled else None
        #: this worker's ring while the log writer takes its predictions, else None
        self.relay: Ring | None = None
        self._ring: Ring | None = None  # kept after a takeover (its counters, its lock)
        self._ring_stall = (0, 0.0)  # (tail, since when) while rows wait in the ring
        self._overflow_seen = 0
        self._singles: list[PredictionChunk] = []  # single-row requests of this loop turn
        self._dropped_unreadable = 0  # ring records that could not be read
        self._tasks: list[asyncio.Task[None]] = []
        self._seen = {"written": 0, "spooled": 0, "replayed": 0, "dropped": 0}
        self._feedback_written = 0  # feedback rows in the log's rows_written

    # -- life cycle ---------------------------------------------------------------------

    async def start(self) -> None:
        """Open the store (migrations), start the prediction log and the background tasks.

        Raises SchemaVersionError when the database is newer than this code; any other
        store failure is logged and the server goes on, spooling.
        """
        store = store_from_url(self.url)
        try:
            await store.open()
        except SchemaVersionError:
            raise
        except (StoreError, OSError) as e:  # OSError: a SQLite folder that cannot be made
            log.warning(
                "database unavailable at start-up, serving anyway: predictions and feedback "
                "are spooled to %s until it answers (retrying every %.0f s): %s",
                self.spool_path,
                self.reopen_interval,
                e,
                extra={"event": "store_down_at_startup"},
            )
            self._tasks.append(asyncio.create_task(self._reopen(store), name="intellilog-reopen"))
        else:
            self.store_open = True
            log.info("store %s open", store.url)
        self.store = store
        # batches of up to 8000 rows: under load, fewer writes for the same rows. Each
        # write has a fixed cost on the server's core (a commit, an fsync on SQLite, the
        # writer thread evicting the event loop's working set from the CPU caches):
        # ~1 µs per batch row less than with 2000 (bench/RESULTS.md, "Prediction log cost")
        self.log = PredictionLog(store, self.spool_path, batch_size=8000)
        await self.log.start()
        self._open_relay()
        self._tasks.append(asyncio.create_task(self._publish(), name="intellilog-log-metrics"))
        if self.retention_s > 0:
            self._tasks.append(asyncio.create_task(self._pruner(), name="intellilog-prune"))
        if not self.enabled:
            log.info("PREDICTION_LOG=off: predictions are not logged")
        self.ready = True

    async def close(self) -> None:
        """Write every queued row (store, or spool), then close the store. Safe twice."""
        self.ready = False
        tasks, self._tasks = self._tasks, []
        for t in tasks:
            t.cancel()
        for t in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await t
        self._close_relay()
        if self.log is not None:
            await self.log.close()
            self.publish()
            log.info(
                "prediction log closed: %d rows written, %d spooled, %d dropped",
                self.log.rows_written - self._feedback_written,
                self.log.rows_spooled,
                self.log.rows_dropped,
            )
        if self.store is not None:
            await self.store.close()
            self.store_open = False

    # -- the hot path -------------------------------------------------------------------

    def chunk(
        self,
        request_id: str,
        uid: str,
        order_ids: Sequence[str | None],
        inputs: bytes,
        X: np.ndarray,
        eta: Sequence[float],
        p10: Sequence[float],
        p90: Sequence[float],
        version: str,
        *,
        sizes: Sequence[int] | None = None,
        rows_at: str = "",
        arm: str = ARM,
    ) -> PredictionChunk:
        """The predicted rows of one request as one :class:`PredictionChunk` (nothing per
        row). ``inputs``: the rows' inputs as sent, laid out as the chunk says (``sizes``:
        back to back; ``rows_at``: the elements of that array of a JSON body; neither: the
        one row's body). ``arm`` and ``version`` are the ones that answered."""
        return PredictionChunk(
            request_id=request_id,
            uid=uid,
            order_ids=order_ids,
            tenant=self.tenant,
            model_version=version,
            arm=arm,
            inputs=inputs,
            features=X,
            eta=eta,
            p10=p10,
            p90=p90,
            created_at=time.time(),
            sizes=sizes,
            rows_at=rows_at,
        )

    def submit(self, chunk: PredictionChunk) -> None:
        """Queue ``chunk`` for the store: no await, no I/O. Into this worker's ring of
        the log writer when there is one and it has room, else ``PredictionLog.submit``."""
        relay = self.relay
        if relay is not None and relay.put(encode_chunk(chunk), len(chunk)):
            return
        # no ring, or no room in it; no log: a request answered outside the lifespan
        self._submit_local(chunk)

    def submit_one(
        self,
        request_id: str,
        uid: str,
        order_id: str | None,
        body: bytes,
        X: np.ndarray,
        eta: float,
        p10: float,
        p90: float,
        version: str,
        arm: str = ARM,
    ) -> None:
        """:meth:`submit` for one row: ``body`` is the request as sent, ``X`` [1, F]."""
        # positional: half the cost of the keyword call, on every single-row request
        c = PredictionChunk(
            request_id,
            uid,
            (order_id,),
            self.tenant,
            version,
            arm,
            body,
            X,
            (eta,),
            (p10,),
            (p90,),
            time.time(),
        )
        if self.relay is not None:  # gathered: one ring record per event-loop turn
            if not self._singles:
                asyncio.get_running_loop().call_soon(self._put_singles)
            self._singles.append(c)
        elif self.log is not None:
            self.log.submit(c)
        else:
            self.submit(c)

    def _put_singles(self) -> None:
        """The single-row requests gathered since the last turn, as one ring record (one
        encode, one copy); into this worker's own log when the ring has no room."""
        chunks, self._singles = self._singles, []
        if not chunks:
            return
        relay = self.relay
        if relay is not None and relay.put(encode_chunks(chunks), len(chunks)):
            return
        for c in chunks:  # no room (or the ring was taken over meanwhile)
            self._submit_local(c)

    def _submit_local(self, chunk: PredictionChunk) -> None:
        if self.log is not None:
            self.log.submit(chunk)
        else:
            metrics.PREDICTION_LOG_ROWS.labels("dropped").inc(len(chunk))

    def texts_chunk(
        self,
        request_id: str,
        uid: str,
        order_ids: Sequence[str | None],
        texts: Sequence[str],
        X: np.ndarray,
        eta: Sequence[float],
        p10: Sequence[float],
        p90: Sequence[float],
        version: str,
        arm: str = ARM,
    ) -> PredictionChunk:
        """:meth:`chunk` for rows whose inputs are texts (one JSON text per row)."""
        text = "".join(texts)
        blob = text.encode()
        sizes = (
            list(map(len, texts)) if len(blob) == len(text) else [len(t.encode()) for t in texts]
        )
        return self.chunk(
            request_id, uid, order_ids, blob, X, eta, p10, p90, version, sizes=sizes, arm=arm
        )

    async def flush_predictions(self) -> None:
        """Wait until every prediction submitted so far is in the store (or the spool):
        the log writer's share first, then this worker's queue."""
        await self._flush_relay()
        if self.log is not None and self.log.queue_depth:
            await self.log.flush()

    # -- feedback -----------------------------------------------------------------------

    async def write_feedback(
        self, items: Sequence[tuple[str, float, float]], received_at: float | None = None
    ) -> FeedbackResult:
        """Store ``(order_id, actual_minutes, completed_at)`` rows of this tenant; returns
        once they are committed in the database or fsync'd in the spool.

        Predictions still queued are written first, so feedback for an order predicted a
        moment ago is not counted unknown. Raises StoreError when neither the database nor
        the spool takes the rows.
        """
        plog = self.log
        if plog is None:
            raise StoreError("the store is not open yet (the server is starting); resend")
        now = time.time() if received_at is None else received_at
        rows = [
            FeedbackRow(
                order_id=o, tenant=self.tenant, actual_minutes=a, completed_at=c, received_at=now
            )
            for o, a, c in items
        ]
        await self.flush_predictions()
        result = await plog.write_feedback_durable(rows)
        if not result.spooled:
            self._feedback_written += len(rows)
        for name, n in (
            ("inserted", result.inserted),
            ("updated", result.updated),
            ("unknown", result.unknown),
        ):
            if n:
                metrics.FEEDBACK_ROWS.labels(name).inc(n)
        return result

    # -- background ---------------------------------------------------------------------

    def publish(self) -> None:
        """Copy the prediction log's counters and queue depth into the metrics."""
        plog = self.log
        if plog is None:
            return
        now = {
            "written": plog.rows_written - self._feedback_written,
            "spooled": plog.rows_spooled,
            "replayed": plog.rows_replayed,
            "dropped": plog.rows_dropped + self._dropped_unreadable,
        }
        queued = plog.queue_depth
        if self._ring is not None:  # the log writer's counters for this worker's rows
            ring = self._ring.counters()
            for outcome in now:
                now[outcome] += ring[outcome]
            queued += self._ring.rows_put - ring["taken"] + ring["queued"]
            refused = self._ring.rows_refused - self._overflow_seen
            if refused > 0 and self.relay is not None:  # after a takeover: not overflow
                metrics.PREDICTION_LOG_OVERFLOW.inc(refused)
            self._overflow_seen = self._ring.rows_refused
        for outcome, value in now.items():
            delta = value - self._seen[outcome]
            if delta > 0:
                metrics.PREDICTION_LOG_ROWS.labels(outcome).inc(delta)
                self._seen[outcome] = value
        metrics.PREDICTION_LOG_QUEUE.set(queued)

    async def prune(self) -> int:
        """Delete rows older than PREDICTION_RETENTION_DAYS; the rows deleted (0 when the
        store is down: the next prune tries again)."""
        if self.store is None or not self.store_open or self.retention_s <= 0:
            return 0
        try:
            n = await self.store.prune(time.time() - self.retention_s)
        except StoreError as e:
            log.warning("prune of rows older than the retention failed, retrying later: %s", e)
            return 0
        if n:
            log.info(
                "pruned %d rows older than %g days (PREDICTION_RETENTION_DAYS)",
                n,
                self.retention_s / 86_400.0,
            )
        return n

    async def _pruner(self) -> None:
        while True:
            await self.prune()
            await asyncio.sleep(self.prune_interval)

    async def _publish(self) -> None:
        while True:
            self.publish()
            self._check_relay()
            await asyncio.sleep(self.metrics_interval)

    # -- the log writer's ring (server.store.relay) ----------------------------------------

    def _open_relay(self) -> None:
        """Make this worker's ring in the log writer's folder (when there is one)."""
        if self.relay_folder is None or self.log is None:
            return
        if not relay_supported():
            log.info("PREDICTION_LOG_WRITER=process needs Linux on x86-64: logging in process")
            return
        path = self.relay_folder / f"ring-{os.getpid()}"
        try:
            self.relay = self._ring = Ring.create(path)
        except OSError as e:
            log.warning(
                "prediction log writer's ring %s cannot be made, logging in process: %s", path, e
            )

    def _check_relay(self) -> None:
        """Take the ring over when its rows have waited untaken for STALL_S (the writer
        is gone): its rows go to this worker's log, and so do later ones."""
        ring, plog = self.relay, self.log
        if ring is None or plog is None:
            return
        tail, now = ring.tail, time.monotonic()
        if ring.head == tail or tail != self._ring_stall[0]:
            self._ring_stall = (tail, now)
            return
        if now - self._ring_stall[1] < RELAY_STALL_S or not ring.lock():
            return
        ring.abandon()
        self.relay = None
        self._put_singles()  # to the log: the relay is off now
        records = self._take_ring(ring)
        log.error(
            "the prediction log writer took nothing for %.0f s: this worker logs its "
            "predictions itself from now on (%d records moved from its ring)",
            now - self._ring_stall[1],
            records,
        )

    async def _flush_relay(self, timeout: float = 10.0) -> None:
        """Wait until the log writer has written (or spooled) every prediction put in
        this worker's ring so far; give up after ``timeout`` s (the writer is gone: the
        ring is then taken over)."""
        self._put_singles()
        ring = self.relay
        if ring is None:
            return
        target = ring.head
        if ring.committed >= target:
            return
        ring.request_flush(target)
        if self.relay_folder is not None:
            wake_writer(self.relay_folder)
        deadline = time.monotonic() + timeout
        while self.relay is ring and ring.committed < target:
            if time.monotonic() > deadline:
                log.warning("the prediction log writer did not flush in %.0f s", timeout)
                return
            await asyncio.sleep(0.002)

    def _take_ring(self, ring: Ring) -> int:
        """Move what ``ring`` holds to this worker's own log; the records moved."""
        records = ring.take(read_chunks)
        for chunks in records:
            if isinstance(chunks, Exception):
                self._dropped_unreadable += 1
                log.error("a record of the prediction log's ring cannot be read: %s", chunks)
            else:
                for c in chunks:
                    self._submit_local(c)
        return len(records)

    def _close_relay(self) -> None:
        """At shutdown: the writer takes what the ring holds after this worker exits;
        without a writer holding it, this worker moves the rows to its own log."""
        self._put_singles()  # the turn's last single rows, before the ring is let go
        ring, self.relay = self._ring, None
        if ring is None:
            return
        if ring.locked or ring.lock():  # no writer: the rows are ours to write
            if not ring.abandoned:
                ring.abandon()
                self._take_ring(ring)
            with contextlib.suppress(OSError):
                ring.path.unlink()
            ring.close()
            self._ring = None

    async def _reopen(self, store: Store) -> None:
        said = ""
        while True:
            await asyncio.sleep(self.reopen_interval)
            try:
                await store.open()
            except (StoreError, OSError) as e:
                if isinstance(e, SchemaVersionError) and str(e) != said:
                    said = str(e)  # once per message: it will not fix itself
                    log.error("%s; still spooling to %s", e, self.spool_path)
                continue
            self.store_open = True
            log.info("store %s open; replaying the spool", store.url)
            if self.log is not None:
                with contextlib.suppress(Exception):  # the replay task retries
                    await self.log.replay()
            return
