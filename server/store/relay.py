"""The prediction log's relay: server workers hand their predictions to one log-writer
process through shared memory, so the store's work leaves the serving cores.

Why: written from the serving process, a logged batch row cost that process ~2.8 µs of
its core (splitting the body into inputs, encoding the columns, SQLite's or asyncpg's
writes), against ~12 µs of serving: batch throughput fell to ~0.75 of logging off
(bench/RESULTS.md, "Prediction log cost"). Through the relay the worker only encodes the
chunk it already built (msgpack; the inputs, features and answers as raw bytes, nothing
per row) and copies it into memory it shares with the writer: no syscall, no I/O, no
store thread competing for its core.

Shape:

- ``intellilog serve`` (PREDICTION_LOG on, ``PREDICTION_LOG_WRITER=process``, the
  default) makes a folder for the rings (in ``/dev/shm`` when it exists), starts the
  writer (``python -m server.store.relay``, the same settings) and names the folder to
  its workers in ``INTELLILOG_LOG_RELAY``.
- Each worker's :class:`~server.recorder.Recorder` makes its :class:`Ring` there,
  ``ring-<pid>``: a file of :data:`HEADER` + capacity bytes, mapped into memory, with one
  producer (the worker) and one consumer (whoever holds the file's ``flock``: the writer).
- ``Recorder.submit`` puts :func:`encode_chunk` of the request's chunk into the ring
  (single-row requests are gathered and put once per event-loop turn,
  :func:`encode_chunks`).
  When the ring has no room (the writer is behind, or gone) the chunk goes to the
  worker's own :class:`~server.store.PredictionLog`, as without the relay: nothing waits
  and nothing is lost.
- The writer polls the rings every :data:`POLL_S`, decodes the chunks and submits them to
  one PredictionLog per ring (batches, spool, replay, refused rows: as in process), and
  keeps each ring's counters (rows taken, written, spooled, replayed, dropped, queued) in
  its header; the worker adds them to its metrics.
- Feedback (``Recorder.write_feedback``) first writes the predictions still queued: the
  worker asks for a flush up to its ring's head (``flush_req``), wakes the writer (a
  datagram to its socket :data:`WAKE`) and waits until the writer says everything before
  it is in the store or the spool (``committed``).
- A ring's records keep their room until the writer has written them (it flushes each
  ring's log at least every :data:`FLUSH_S`, then releases what it took). The writer
  gone (crashed, killed): the kernel drops its lock and nothing is lost; ``serve`` starts
  a new writer, which takes the unreleased records again (the store skips the rows it
  holds already; the counters may count them twice). A worker whose ring holds rows that
  nobody takes for :data:`STALL_S` takes the lock itself, moves the ring's rows to its
  own log, and logs in process from then on. A worker gone: its ring stays; the writer
  takes what it holds, then removes it.
- Shutdown: ``serve`` closes the writer's stdin once granian's workers have exited; the
  writer takes every ring's rows, closes its logs (each row in the store, or the spool)
  and removes the folder.

The ring's counters are plain 8-byte stores into shared memory, data first, then the head:
that order is what the consumer sees on x86-64 (stores are not reordered with other
stores there). :func:`supported` says whether this machine is one; elsewhere the server
logs in process.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import mmap
import os
import platform
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

import msgspec
import numpy as np

from server.store.base import FEATURE_DTYPE, Store
from server.store.chunks import PredictionChunk
from server.store.log import PredictionLog

__all__ = [
    "ENV",
    "Ring",
    "WriterProcess",
    "decode_chunks",
    "encode_chunk",
    "encode_chunks",
    "read_chunks",
    "supported",
    "wake_writer",
]

log = logging.getLogger("intellilog.store")
T = TypeVar("T")

#: The environment variable naming the rings' folder to the workers (set by ``serve``).
ENV = "INTELLILOG_LOG_RELAY"
#: Bytes of each worker's ring (a 256-row chunk is ~100 kB; the writer takes them every
#: POLL_S). Reserved in full when the ring is made, so a full /dev/shm is an error then,
#: never a SIGBUS later.
CAPACITY = 16 << 20
#: Seconds between the writer's looks at the rings while rows arrive; idle, the pause
#: doubles up to IDLE_POLL_S (an idle writer wakes ~20 times a second, not 200).
POLL_S = 0.005
IDLE_POLL_S = 0.05
#: Seconds at most between the writer's flushes of a ring's rows; a ring's records keep
#: their room until flushed (a writer killed loses nothing: the next one takes them
#: again), and a quarter of the ring unflushed also makes a flush.
FLUSH_S = 0.2
#: The writer's socket in the rings' folder: a datagram to it wakes the writer at once
#: (a worker waiting for a flush, :func:`wake_writer`) instead of at its next look.
WAKE = "wake.sock"
#: Seconds between the writer's scans of the folder for new and finished rings.
SCAN_S = 0.25
#: Seconds a ring's rows may wait untaken before its worker takes them over.
STALL_S = 3.0

HEADER = 128
_MAGIC = 0x494C_5245_4C41_5931  # "ILRELAY1"
_WRAP = (1 << 64) - 1
# the header: 16 native uint64 words, the producer's in the first 64-byte cache line and
# the consumer's in the second, so a put reads no line the writer keeps changing
_MAGIC_AT, _CAPACITY, _PID = 0, 1, 2  # set once
_HEAD = 3  # bytes put, ever (the producer)
_FLUSH_REQ = 4  # the producer asks: write everything before this offset
_ABANDONED = 5  # the producer took the ring over: no writer may consume it
_TAIL = 8  # bytes taken, ever (the consumer)
_COMMITTED = 9  # the consumer says: everything before this offset is written or spooled
_TAKEN = 10  # rows taken by the consumer; then its PredictionLog's counters for this ring
_WRITTEN, _SPOOLED, _REPLAYED, _DROPPED, _QUEUED = 11, 12, 13, 14, 15
_U64 = struct.Struct("<Q")


def supported() -> bool:
    """True where the relay may run: Linux on x86-64 (see the module's note on memory
    order)."""
    return sys.platform == "linux" and platform.machine() in ("x86_64", "AMD64")


class RingError(Exception):
    """A ring file that is not one, or holds a record that cannot be."""


class Ring:
    """One worker's ring: :meth:`create` (the worker, producer) or :meth:`attach` (the
    consumer). One producer thread; one consumer at a time (:meth:`lock`)."""

    def __init__(self, path: Path, fd: int, mm: mmap.mmap) -> None:
        self.path = path
        self._fd = fd
        self._mm = mm
        # native 8-byte words: little-endian on every machine supported() allows
        self._ctr = memoryview(mm).cast("B")[:HEADER].cast("Q")
        self.capacity = self._ctr[_CAPACITY]
        problem = (
            "not a prediction log ring"
            if self._ctr[_MAGIC_AT] != _MAGIC
            else f"capacity {self.capacity} does not match its size"
            if self.capacity % 8 or HEADER + self.capacity != len(mm)
            else ""
        )
        if problem:
            self._ctr.release()  # else the caller cannot unmap
            raise RingError(f"{path}: {problem}")
        self._head = self._ctr[_HEAD]
        self._read = self._ctr[_TAIL]  # the consumer's cursor: taken up to here
        self._tail_seen = self._read  # the consumer's tail as last read by the producer
        self._abandoned = bool(self._ctr[_ABANDONED])
        self.locked = False
        #: rows put by this producer (its own count; the header has what was taken)
        self.rows_put = 0
        #: rows of the puts refused for want of room
        self.rows_refused = 0

    @classmethod
    def create(cls, path: str | Path, capacity: int | None = None) -> Ring:
        """Make the ring file (it must not exist) with ``capacity`` bytes reserved
        (default :data:`CAPACITY`).

        Raises OSError when it cannot (a full /dev/shm: ENOSPC)."""
        capacity = CAPACITY if capacity is None else capacity
        capacity -= capacity % 8
        path = Path(path)
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.posix_fallocate(fd, 0, HEADER + capacity)
            mm = mmap.mmap(fd, HEADER + capacity)
            ctr = memoryview(mm).cast("B")[:HEADER].cast("Q")
            ctr[_CAPACITY] = capacity
            ctr[_PID] = os.getpid()
            ctr[_MAGIC_AT] = _MAGIC
            ctr.release()
        except BaseException:
            os.close(fd)
            with contextlib.suppress(OSError):
                path.unlink()
            raise
        return cls(path, fd, mm)

    @classmethod
    def attach(cls, path: str | Path) -> Ring:
        """Map an existing ring. Raises OSError or RingError."""
        path = Path(path)
        fd = os.open(path, os.O_RDWR)
        try:
            size = os.fstat(fd).st_size
            if size <= HEADER:
                raise RingError(f"{path}: {size} bytes is no ring")
            mm = mmap.mmap(fd, size)
            try:
                return cls(path, fd, mm)
            except BaseException:
                mm.close()
                raise
        except BaseException:
            os.close(fd)
            raise

    def close(self) -> None:
        """Unmap and close (the lock, if held, goes with the descriptor)."""
        if self._fd < 0:
            return
        self._ctr.release()
        self._mm.close()
        os.close(self._fd)
        self._fd = -1

    # -- the producer -------------------------------------------------------------------

    def put(self, payload: bytes, rows: int) -> bool:
        """Copy one record of ``rows`` rows in; False (nothing written) when there is no
        room, it is larger than half the ring, or the ring was abandoned. From one thread
        only (the worker's event loop)."""
        n = len(payload)
        need = 8 + ((n + 7) & ~7)
        cap, head = self.capacity, self._head
        pos = head % cap
        skip = cap - pos if pos + need > cap else 0
        end = head + skip + need
        if need > cap // 2 or self._abandoned:
            self.rows_refused += rows
            return False
        if end - self._tail_seen > cap:  # the consumer's tail only when room seems short
            self._tail_seen = self._ctr[_TAIL]
            if end - self._tail_seen > cap:
                self.rows_refused += rows
                return False
        mm = self._mm
        if skip:
            _U64.pack_into(mm, HEADER + pos, _WRAP)
            pos = 0
        at = HEADER + pos
        _U64.pack_into(mm, at, n)
        mm[at + 8 : at + 8 + n] = payload
        self._head = end
        self.rows_put += rows
        self._ctr[_HEAD] = end  # last: the consumer reads up to here
        return True

    @property
    def head(self) -> int:
        return self._ctr[_HEAD]

    @property
    def tail(self) -> int:
        return self._ctr[_TAIL]

    @property
    def committed(self) -> int:
        return self._ctr[_COMMITTED]

    def request_flush(self, offset: int) -> None:
        """Ask the consumer to write everything before ``offset``."""
        if offset > self._ctr[_FLUSH_REQ]:
            self._ctr[_FLUSH_REQ] = offset

    def counters(self) -> dict[str, int]:
        """The consumer's counters for this ring: rows ``taken``, ``written``, ``spooled``,
        ``replayed``, ``dropped``, and ``queued`` (in its log, not yet written)."""
        c = self._ctr
        return {
            "taken": c[_TAKEN],
            "written": c[_WRITTEN],
            "spooled": c[_SPOOLED],
            "replayed": c[_REPLAYED],
            "dropped": c[_DROPPED],
            "queued": c[_QUEUED],
        }

    @property
    def pid(self) -> int:
        """The producer's process id."""
        return self._ctr[_PID]

    @property
    def abandoned(self) -> bool:
        return bool(self._ctr[_ABANDONED])

    # -- the consumer -------------------------------------------------------------------

    def lock(self) -> bool:
        """Become the ring's one consumer (an exclusive ``flock``); False when another
        process is."""
        if self.locked:
            return True
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        self.locked = True
        self._read = self._ctr[_TAIL]  # from the last release: a record may come twice
        return True

    def abandon(self) -> None:
        """The producer takes its ring over: refuse further puts and writers."""
        self._abandoned = True
        self._ctr[_ABANDONED] = 1

    def take(self, read: Callable[[memoryview], T]) -> list[T]:
        """``read`` of every record put and not yet taken, in order. ``read`` gets a view
        into the ring, valid only during the call (copy what it keeps). The records keep
        their room until :meth:`release`: a consumer that dies before has them taken again
        by the next one (the store skips rows it holds already).

        Raises RingError on a record that cannot be (a corrupt ring)."""
        if not self.locked:
            raise RingError(f"{self.path}: take() without the lock")
        ctr, cap = self._ctr, self.capacity
        head, tail = ctr[_HEAD], self._read
        out: list[T] = []
        with memoryview(self._mm) as view:
            while tail < head:
                pos = tail % cap
                (n,) = _U64.unpack_from(view, HEADER + pos)
                if n == _WRAP:
                    tail += cap - pos
                    continue
                if pos + 8 + n > cap:
                    raise RingError(f"{self.path}: record of {n} bytes at {pos} overruns the ring")
                at = HEADER + pos + 8
                with view[at : at + n] as record:
                    out.append(read(record))
                tail += 8 + ((n + 7) & ~7)
        self._read = tail
        return out

    @property
    def taken_to(self) -> int:
        """The consumer's cursor: every record before this offset is taken."""
        return self._read

    def release(self, offset: int) -> None:
        """Everything before ``offset`` is written (or spooled): its room is the
        producer's again, and a flush asked up to it is answered."""
        self._ctr[_TAIL] = offset
        self._ctr[_COMMITTED] = offset

    def set_counters(self, taken: int, plog: PredictionLog) -> None:
        c = self._ctr
        c[_TAKEN] = taken
        c[_WRITTEN] = plog.rows_written
        c[_SPOOLED] = plog.rows_spooled
        c[_REPLAYED] = plog.rows_replayed
        c[_DROPPED] = plog.rows_dropped
        c[_QUEUED] = plog.queue_depth

    def flush_wanted(self) -> bool:
        """True when the producer waits for a flush not answered yet."""
        return self._ctr[_FLUSH_REQ] > self._ctr[_COMMITTED]


def wake_writer(folder: Path) -> None:
    """Wake the writer of ``folder`` now (nothing happens when there is none)."""
    with contextlib.suppress(OSError), socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
        s.setblocking(False)
        s.sendto(b"!", str(folder / WAKE))


# -- chunks on the wire ------------------------------------------------------------------


class _Wire(msgspec.Struct, array_like=True, gc=False):
    request_id: str
    uid: str
    order_ids: list[str | None]
    tenant: str
    model_version: str
    arm: str
    inputs: bytes
    width: int
    features: bytes
    eta: list[float] | bytes
    p10: list[float] | bytes
    p90: list[float] | bytes
    created_at: float
    sizes: list[int] | None
    rows_at: str
    start: int


_encode = msgspec.msgpack.Encoder().encode
_decode = msgspec.msgpack.Decoder(list[_Wire]).decode
_F8 = np.dtype("<f8")


def _floats(v: object) -> object:
    """An array of answers as its float64 bytes (a list or tuple goes as it is)."""
    if isinstance(v, np.ndarray):
        return np.ascontiguousarray(v, dtype=_F8).data
    return v


def wire(c: PredictionChunk) -> tuple[object, ...]:
    """``c`` as :class:`_Wire`'s fields, in order (the arrays as buffers)."""
    m = c.matrix()
    return (
        c.request_id,
        c.uid,
        c.order_ids,
        c.tenant,
        c.model_version,
        c.arm,
        c.inputs,
        m.shape[1],
        m.data,
        _floats(c.eta),
        _floats(c.p10),
        _floats(c.p90),
        c.created_at,
        c.sizes,
        c.rows_at,
        c.start,
    )


def encode_chunks(chunks: Sequence[PredictionChunk]) -> bytes:
    """One ring record of ``chunks``: a msgpack array of their :func:`wire` forms (the
    single-row requests of one event-loop turn go as one record)."""
    return _encode([wire(c) for c in chunks])


def encode_chunk(c: PredictionChunk) -> bytes:
    """One ring record of the one chunk ``c``."""
    return _encode([wire(c)])


def _answers(v: list[float] | bytes) -> Sequence[float]:
    """Answers as sent: float64 bytes back to an array (a read-only view), lists as
    they are."""
    if isinstance(v, bytes):
        return np.frombuffer(v, dtype=_F8)  # type: ignore[return-value]  # an array is one
    return v


def read_chunks(data: bytes | memoryview) -> list[PredictionChunk] | Exception:
    """:func:`decode_chunks`, or the error that says why ``data`` is not a record."""
    try:
        return decode_chunks(data)
    except (msgspec.DecodeError, RingError) as e:
        return e


def decode_chunks(data: bytes | memoryview) -> list[PredictionChunk]:
    """The chunks :func:`encode_chunks` gave ``data`` for."""
    out = []
    for w in _decode(data):
        if w.width <= 0 or len(w.features) % (w.width * FEATURE_DTYPE.itemsize):
            raise RingError(
                f"chunk {w.request_id!r}: {len(w.features)} feature bytes, width {w.width}"
            )
        out.append(
            PredictionChunk(
                request_id=w.request_id,
                uid=w.uid,
                order_ids=w.order_ids,
                tenant=w.tenant,
                model_version=w.model_version,
                arm=w.arm,
                inputs=w.inputs,
                features=np.frombuffer(w.features, dtype=FEATURE_DTYPE).reshape(-1, w.width),
                eta=_answers(w.eta),
                p10=_answers(w.p10),
                p90=_answers(w.p90),
                created_at=w.created_at,
                sizes=w.sizes,
                rows_at=w.rows_at,
                start=w.start,
            )
        )
    return out


# -- the writer process ------------------------------------------------------------------


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@dataclass
class _Held:
    ring: Ring
    log: PredictionLog
    taken: int = 0
    flushed_at: float = 0.0


@dataclass
class Writer:
    """The consumer of every ring in ``folder``: run by :func:`main` in its own process."""

    folder: Path
    store: Store
    spool: Path
    batch_size: int = 8000
    held: dict[Path, _Held] = field(default_factory=dict)
    refused: set[Path] = field(default_factory=set)  # rings not to try again

    async def scan(self) -> None:
        """Take on new rings; let go of the ones whose worker is gone and that are empty."""
        for path in sorted(self.folder.glob("ring-*")):
            if path in self.held or path in self.refused:
                continue
            try:
                ring = Ring.attach(path)
            except (OSError, RingError) as e:
                log.warning("prediction log writer: %s skipped: %s", path, e)
                self.refused.add(path)
                continue
            if ring.abandoned:  # its worker logs in process
                ring.close()
                self.refused.add(path)
                continue
            if not ring.lock():  # held for a moment (a worker closing), or by another writer
                ring.close()
                continue
            plog = PredictionLog(self.store, self.spool, batch_size=self.batch_size)
            was = ring.counters()  # a writer before this one counted these
            plog.rows_written, plog.rows_spooled = was["written"], was["spooled"]
            plog.rows_replayed, plog.rows_dropped = was["replayed"], was["dropped"]
            await plog.start()
            self.held[path] = _Held(ring, plog, was["taken"])
        for path, h in list(self.held.items()):
            if not _alive(h.ring.pid) and h.ring.tail == h.ring.head and not h.log.queue_depth:
                await self._release(path, h, remove=True)

    async def pump(self) -> int:
        """Move every ring's records into its log; answer flush requests. Returns the rows
        moved."""
        moved = 0
        for path, h in list(self.held.items()):
            try:
                records = h.ring.take(read_chunks)
            except RingError as e:
                log.error("prediction log writer: %s dropped: %s", path, e)
                await self._release(path, h, remove=False)
                self.refused.add(path)
                continue
            for chunks in records:
                if isinstance(chunks, Exception):
                    h.log.rows_dropped += 1
                    log.error(
                        "prediction log writer: a record of %s cannot be read: %s", path, chunks
                    )
                    continue
                for chunk in chunks:
                    h.log.submit(chunk)
                    h.taken += len(chunk)
                    moved += len(chunk)
            unwritten = h.ring.taken_to - h.ring.tail
            if unwritten and (
                h.ring.flush_wanted()
                or unwritten > h.ring.capacity // 4
                or time.monotonic() - h.flushed_at >= FLUSH_S
            ):
                upto = h.ring.taken_to
                await h.log.flush()  # every row taken so far: in the store, or the spool
                h.ring.release(upto)
                h.flushed_at = time.monotonic()
            h.ring.set_counters(h.taken, h.log)
        return moved

    async def close(self) -> None:
        """Take what is left, write it (store or spool), let every ring go."""
        await self.pump()
        for path, h in list(self.held.items()):
            await self._release(path, h, remove=True)

    async def _release(self, path: Path, h: _Held, *, remove: bool) -> None:
        await h.log.close()
        h.ring.set_counters(h.taken, h.log)
        h.ring.release(h.ring.taken_to)
        h.ring.close()
        if remove:
            with contextlib.suppress(OSError):
                path.unlink()
        del self.held[path]


async def _run(folder: Path, stop: asyncio.Event) -> None:
    from server.config import load_settings
    from server.store import store_from_url

    settings = load_settings()
    store = store_from_url(settings.database_url)
    writer = Writer(folder, store, settings.spool_file)
    tried = asyncio.Event()
    opened = asyncio.create_task(_open(store, tried))
    # the first attempt before any write (a write to an unopened store spools); a store
    # that does not answer is tried again every 5 s while the logs spool
    await tried.wait()
    loop = asyncio.get_running_loop()
    wake = asyncio.Event()  # a worker waits for a flush (wake_writer)
    sock: socket.socket | None = _wake_socket(folder)

    def woken() -> None:
        assert sock is not None
        with contextlib.suppress(OSError):
            while sock.recv(64):
                pass
        wake.set()

    if sock is not None:
        loop.add_reader(sock.fileno(), woken)
    try:
        next_scan, pause = 0.0, POLL_S
        while not stop.is_set():
            now = time.monotonic()
            if now >= next_scan:
                await writer.scan()
                next_scan = now + SCAN_S
            moved = await writer.pump()
            pause = POLL_S if moved else min(pause * 2, IDLE_POLL_S)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(wake.wait(), pause)
            if wake.is_set():
                wake.clear()
                pause = POLL_S
        await writer.scan()  # rings made since the last scan
        await writer.close()
    finally:
        if sock is not None:
            loop.remove_reader(sock.fileno())
            sock.close()
        opened.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await opened
        await store.close()


def _wake_socket(folder: Path) -> socket.socket | None:
    """The writer's wake-up socket, bound at ``folder / WAKE`` (None when it cannot be:
    a folder path too long for a socket; flushes then wait for the writer's next look)."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    try:
        sock.bind(str(folder / WAKE))
        sock.setblocking(False)
    except OSError as e:
        log.warning("prediction log writer: no wake-up socket in %s: %s", folder, e)
        sock.close()
        return None
    return sock


async def _open(store: Store, tried: asyncio.Event) -> None:
    """Open the store, again every 5 s while it does not answer (the logs spool
    meanwhile and replay once a ping answers); ``tried`` is set after the first attempt."""
    while True:
        try:
            await store.open()
        except Exception as e:
            log.warning("prediction log writer: store unavailable, spooling: %s", e)
            tried.set()
            await asyncio.sleep(5.0)
        else:
            tried.set()
            return


def main(argv: list[str] | None = None) -> int:
    """``python -m server.store.relay FOLDER``: the writer; stops when stdin closes (or on
    SIGTERM), after writing everything."""
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m server.store.relay FOLDER", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the group: serve decides

    async def go() -> None:
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        loop.add_signal_handler(signal.SIGTERM, stop.set)

        def watch_stdin() -> None:
            with contextlib.suppress(OSError):
                while sys.stdin.buffer.read(4096):
                    pass
            loop.call_soon_threadsafe(stop.set)

        threading.Thread(target=watch_stdin, daemon=True).start()
        await _run(Path(args[0]), stop)

    asyncio.run(go())
    return 0


# -- started by `intellilog serve` -------------------------------------------------------


class WriterProcess:
    """The writer beside granian: :meth:`start` before the workers, :meth:`stop` after.
    A writer that exits on its own is started again (after ``restart_s``); workers whose
    ring it left behind meanwhile take their rows over (:data:`STALL_S`)."""

    def __init__(self, restart_s: float = 1.0) -> None:
        self.folder: Path | None = None
        self.proc: subprocess.Popen[bytes] | None = None
        self.restart_s = restart_s
        #: times the writer was started again after exiting on its own
        self.restarts = 0
        self._stopping = threading.Event()
        self._lock = threading.Lock()
        self._watch: threading.Thread | None = None

    def _spawn(self, stdin: int = subprocess.PIPE) -> subprocess.Popen[bytes]:
        assert self.folder is not None
        return subprocess.Popen(
            [sys.executable, "-m", "server.store.relay", str(self.folder)], stdin=stdin
        )

    def start(self) -> Path:
        """Make the rings' folder, start the writer, and name the folder in ``ENV`` for
        the workers (they inherit the environment)."""
        shm = Path("/dev/shm")
        base = shm if shm.is_dir() and os.access(shm, os.W_OK) else None
        self.folder = Path(tempfile.mkdtemp(prefix="intellilog-log-", dir=base))
        self.proc = self._spawn()
        os.environ[ENV] = str(self.folder)
        self._watch = threading.Thread(target=self._watchdog, name="log-writer-watch", daemon=True)
        self._watch.start()
        return self.folder

    def _watchdog(self) -> None:
        while not self._stopping.is_set():
            with self._lock:
                proc = self.proc
            if proc is None:
                return
            code = proc.wait()
            if self._stopping.wait(self.restart_s):
                return
            with self._lock:
                if self._stopping.is_set():
                    return
                log.error("prediction log writer exited (%s): starting it again", code)
                self.proc = self._spawn()
                self.restarts += 1

    def stop(self, timeout: float = 60.0) -> int | None:
        """Let the writer finish (it writes every ring's rows), then remove the folder.
        Returns its exit code (None if it had to be killed)."""
        self._stopping.set()
        with self._lock:
            proc, self.proc = self.proc, None
        code = self._finish(proc, timeout) if proc is not None else None
        if self.folder is not None and any(self.folder.glob("ring-*")):
            # rows a dead writer left: one more writer takes them (stdin closed: at once)
            self._finish(self._spawn(subprocess.DEVNULL), timeout)
        os.environ.pop(ENV, None)
        if self.folder is not None:
            shutil.rmtree(self.folder, ignore_errors=True)
            self.folder = None
        return code

    @staticmethod
    def _finish(proc: subprocess.Popen[bytes], timeout: float) -> int | None:
        if proc.stdin is not None:
            with contextlib.suppress(OSError):
                proc.stdin.close()
        try:
            return proc.wait(timeout)
        except subprocess.TimeoutExpired:
            log.error("prediction log writer did not finish in %.0f s: killed", timeout)
            proc.kill()
            proc.wait()
            return None


if __name__ == "__main__":
    raise SystemExit(main())
