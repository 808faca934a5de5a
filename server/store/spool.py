"""A local append-only spool for rows the database could not take (down, or queue full).

Format: JSON lines, one record per line, ``{"p": {...}}`` for a :class:`PredictionRow`
or ``{"f": {...}}`` for a :class:`FeedbackRow` (msgspec; bytes as base64). The prediction
log's columnar chunks (:mod:`server.store.chunks`) are spooled as the rows they stand for
(:meth:`~server.store.chunks.PredictionChunk.rows`), so a replay writes exactly what the
columnar write would have.

Durability rules:

- :meth:`Spool.append` writes a whole batch, then ``fsync``\\ s it (and the folder when
  the file is new) before returning: once it returns, the rows survive a crash.
- :meth:`Spool.replay` first renames the spool to ``<name>.replaying`` (new appends go to
  a fresh file meanwhile), writes its rows to the store, and removes it ONLY after the
  store confirmed every batch. A crash or a store failure in between leaves the file,
  which the next replay sends again. That is safe because predictions are idempotent on
  ``row_id`` and feedback upserts on ``(tenant, order_id)`` (the latest ``received_at``
  wins): each row ends up in the database exactly once.
- Rows the database refuses for their content (:class:`StoreDataError`, e.g. a NUL
  character in a text) would block every later replay; :func:`write_rows` splits a
  refused batch until it finds them, and they go to ``<name>.rejected`` (same format,
  fsync'd, logged as errors) for a person to look at, while the rest is written.
- A line that is not a complete record (a crash mid-append tears the last one) is skipped
  with a warning. Before appending after such a line, a newline seals it, so the torn
  bytes never merge with the next record.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import os
import threading
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import BinaryIO, TypeVar

import msgspec

from server.store.base import FeedbackRow, PredictionRow, Store, StoreDataError
from server.store.chunks import PredictionChunk, rows_of_chunks

__all__ = ["Spool", "SpoolRow", "write_chunks", "write_rows"]

log = logging.getLogger("intellilog.store")

SpoolRow = PredictionRow | FeedbackRow
T = TypeVar("T", PredictionRow, FeedbackRow)


class _Record(msgspec.Struct, omit_defaults=True, forbid_unknown_fields=True):
    p: PredictionRow | None = None
    f: FeedbackRow | None = None


_encode = msgspec.json.Encoder().encode
_decode = msgspec.json.Decoder(_Record).decode


def _line(row: SpoolRow) -> bytes:
    rec = _Record(p=row) if isinstance(row, PredictionRow) else _Record(f=row)
    return _encode(rec) + b"\n"


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


async def _isolate(write: Callable[[list[T]], Awaitable[object]], batch: list[T]) -> list[T]:
    """``write(batch)``; when refused for its content, halves until the refused rows are
    found. Returns them."""
    try:
        await write(batch)
    except StoreDataError:
        if len(batch) == 1:
            return batch
        mid = len(batch) // 2
        first = await _isolate(write, batch[:mid])
        return first + await _isolate(write, batch[mid:])
    return []


async def write_rows(store: Store, rows: Sequence[SpoolRow]) -> list[SpoolRow]:
    """Write the predictions and feedback among ``rows`` to ``store``; returns the rows
    it refused for their content (StoreDataError), found by splitting refused batches.

    Any other StoreError (the database is down) propagates; halves already written stay
    written, which is harmless since writes are idempotent.
    """
    preds = [r for r in rows if isinstance(r, PredictionRow)]
    feedback = [r for r in rows if isinstance(r, FeedbackRow)]
    refused: list[SpoolRow] = []
    if preds:
        refused.extend(await _isolate(store.write_predictions, preds))
    if feedback:
        refused.extend(await _isolate(store.write_feedback, feedback))
    return refused


async def write_chunks(store: Store, chunks: Sequence[PredictionChunk]) -> list[SpoolRow]:
    """:func:`write_rows` for columnar chunks: one columnar write (``write_chunks``); when
    the store refuses it for its content, the chunks' rows go through :func:`write_rows`
    to find the refused ones, which are returned."""
    try:
        await store.write_chunks(chunks)
    except StoreDataError:
        return await write_rows(store, rows_of_chunks(chunks))
    return []


class _Reader:
    """Reads a spool file in chunks of records, skipping (and warning about) bad lines."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.skipped = 0
        self._fh: BinaryIO | None = open(path, "rb")  # noqa: SIM115 (closed at EOF/close)
        self._lineno = 0

    def chunk(self, n: int) -> list[SpoolRow]:
        out: list[SpoolRow] = []
        fh = self._fh
        while fh is not None and len(out) < n:
            line = fh.readline()
            if not line:
                self.close()
                break
            self._lineno += 1
            if not line.strip():
                continue
            try:
                rec = _decode(line)
            except msgspec.DecodeError as e:
                self.skipped += 1
                where = "last line" if not line.endswith(b"\n") else f"line {self._lineno}"
                why = (
                    "does not hold a valid row"
                    if isinstance(e, msgspec.ValidationError)
                    else "is not a complete record (torn by a crash while appending?)"
                )
                log.warning("spool %s: %s %s, skipped: %s", self.path, where, why, e)
                continue
            row = rec.p if rec.p is not None else rec.f
            if row is not None:
                out.append(row)
        return out

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None


class Spool:
    """The spool file at ``path`` (its folder is created when needed).

    Thread-safe; the async methods do their file I/O on a worker thread.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.replaying_path = self.path.with_name(self.path.name + ".replaying")
        self.rejected_path = self.path.with_name(self.path.name + ".rejected")
        self.lock_path = self.path.with_name(self.path.name + ".lock")
        #: lines skipped by replays because they were not complete records
        self.skipped_lines = 0
        #: rows set aside in ``rejected_path`` because the database refused them
        self.rows_rejected = 0
        self._lock = threading.Lock()
        self._replay_lock = asyncio.Lock()

    def append_sync(self, rows: Sequence[SpoolRow]) -> None:
        """Append ``rows`` and fsync; blocking (use :meth:`append` on the event loop).

        Raises OSError when the spool cannot be written (disk full, permissions)."""
        self._append(self.path, rows)

    def _append(self, path: Path, rows: Sequence[SpoolRow]) -> None:
        if not rows:
            return
        data = b"".join(_line(r) for r in rows)
        with self._lock:
            path.parent.mkdir(parents=True, exist_ok=True)
            created = not path.exists()
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o600)
            try:
                size = os.fstat(fd).st_size
                if size and os.pread(fd, 1, size - 1) != b"\n":
                    data = b"\n" + data  # seal a torn last line so it stays one bad line
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view) :]
                os.fsync(fd)
            finally:
                os.close(fd)
            if created:
                _fsync_dir(path.parent)

    async def reject(self, rows: Sequence[SpoolRow]) -> None:
        """Set ``rows`` aside in ``rejected_path`` (fsync'd; never replayed) and log them."""
        if not rows:
            return
        await asyncio.to_thread(self._append, self.rejected_path, list(rows))
        self.rows_rejected += len(rows)
        log.error(
            "%d rows refused by the database for their content were set aside in %s (first: %r)",
            len(rows),
            self.rejected_path,
            rows[0],
        )

    async def append(self, rows: Sequence[SpoolRow]) -> None:
        """:meth:`append_sync` on a worker thread: returns once the rows are on disk."""
        if rows:
            await asyncio.to_thread(self.append_sync, list(rows))

    def pending_bytes(self) -> int:
        """Bytes waiting to be replayed (both the spool and an interrupted replay)."""
        total = 0
        for p in (self.path, self.replaying_path):
            with contextlib.suppress(FileNotFoundError):
                total += p.stat().st_size
        return total

    def read_all(self) -> list[SpoolRow]:
        """Every readable row waiting (interrupted replay first), for inspection and tests."""
        out: list[SpoolRow] = []
        for p in (self.replaying_path, self.path):
            if p.exists():
                reader = _Reader(p)
                while chunk := reader.chunk(10_000):
                    out.extend(chunk)
        return out

    def _take(self) -> Path | None:
        """The file to replay next: an interrupted replay, else the spool renamed."""
        with self._lock:
            if self.replaying_path.exists():
                return self.replaying_path
            try:
                size = self.path.stat().st_size
            except FileNotFoundError:
                return None
            if size == 0:
                self.path.unlink()
                return None
            os.replace(self.path, self.replaying_path)
            _fsync_dir(self.path.parent)
            return self.replaying_path

    def _finish(self, path: Path) -> None:
        with self._lock:
            path.unlink()
            _fsync_dir(path.parent)

    async def replay(self, store: Store, *, batch_rows: int = 1000) -> int:
        """Write every spooled row to ``store``, then remove what was replayed.

        Returns the rows written. Rows the database refuses for their content are set
        aside (:meth:`reject`). Raises what the store raises otherwise (StoreError); the
        rows then stay in the spool for the next replay. Concurrent calls run one at a time.
        """
        async with self._replay_lock:
            held = await asyncio.to_thread(self._lock_replays)
            if held is None:  # another process replays this spool right now
                return 0
            try:
                return await self._replay(store, batch_rows)
            finally:
                os.close(held)  # the lock goes with the descriptor

    def _lock_replays(self) -> int | None:
        """An exclusive ``flock`` on ``<name>.lock``: the workers and the log writer share
        one spool, and two processes replaying it at once could each remove the
        ``.replaying`` file the other just made. None when another process holds it."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return None
        return fd

    async def _replay(self, store: Store, batch_rows: int) -> int:
        total = 0
        for _ in range(1000):  # new rows may keep arriving; stop eventually
            path = await asyncio.to_thread(self._take)
            if path is None:
                break
            reader = await asyncio.to_thread(_Reader, path)
            try:
                while rows := await asyncio.to_thread(reader.chunk, batch_rows):
                    refused = await write_rows(store, rows)
                    await self.reject(refused)
                    total += len(rows) - len(refused)
            finally:
                reader.close()
                self.skipped_lines += reader.skipped
            await asyncio.to_thread(self._finish, path)
        return total
