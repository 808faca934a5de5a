"""Predictions stored per written batch: what both stores share (migration 0002).

A logged prediction is not a table row of its own. Every ``write_predictions`` call stores
its rows as one table row of ``prediction_batches`` per (tenant, model version, arm,
feature width) group, at most :data:`MAX_BATCH_ROWS` rows each, with the rows' columns
packed (SQLite: a JSON array of the small columns plus two blobs; PostgreSQL: one array
per column plus a blob). Writing a batch costs one wide row and a few narrow index rows
instead of one wide row and five index entries per prediction. Two narrow tables keep the
contracts:

- ``prediction_keys (prefix, batch_id)``: which batches hold rows whose ``row_id`` starts
  with ``prefix`` (:func:`key_prefix`: the part before the first ``:``, so the rows
  ``f"{uid}:{i}"`` of one request share one key). Before a write, the batches holding the
  incoming rows' prefixes are read and their row ids compared: a row whose ``row_id`` is
  stored already is skipped, exactly as before. The server's request ids start with a
  millisecond clock (``server.recorder.new_request_id``), so new keys land at the end of
  the index instead of on random pages.
- ``prediction_orders (tenant, order_id, last_created)``: the orders that have a logged
  prediction (feedback's ``unknown`` count, live-quality totals). ``last_created`` is
  only moved forward when a newer prediction is more than :data:`ORDER_SLACK_S` later, so
  an order predicted again and again does not rewrite its index page on every batch;
  invariant: the newest prediction of the order was made in
  ``[last_created, last_created + ORDER_SLACK_S]``, which ``prune`` uses to drop exactly
  the orders whose predictions are all gone.

The ``predictions`` view of each dialect unpacks the batches into the columns of
migration 0001's ``predictions`` table, for the runbooks' SQL and ad-hoc queries.

Two ways in, one stored form: :func:`pack` takes :class:`PredictionRow` s
(``write_predictions``); :func:`pack_chunks` takes the prediction log's
:class:`~server.store.chunks.PredictionChunk` s (``write_chunks``) and builds the same
batches column by column, with no object per row (the request id and time of a chunk
are encoded once and copied into each row's JSON; the inputs blob is the chunk's inputs
as received, split where the rows' JSON elements start and end).
"""

from __future__ import annotations

import array
import itertools
import operator
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import msgspec
import numpy as np

from server.store.base import FEATURE_DTYPE, PredictionRow, StoreDataError
from server.store.chunks import PredictionChunk, float_list, utf8_text

__all__ = [
    "MAX_BATCH_ROWS",
    "ORDER_SLACK_S",
    "Batch",
    "Row",
    "chunk_keys",
    "chunk_row_ids",
    "decode_rows",
    "encode",
    "json_of",
    "key_prefix",
    "pack",
    "pack_chunks",
    "pick_recent",
    "rows_of",
    "to_json",
    "unique",
]

#: The most rows one stored batch holds (larger writes are cut into several).
MAX_BATCH_ROWS = 4096
#: ``prediction_orders.last_created`` moves forward only by more than this (seconds).
ORDER_SLACK_S = 3600.0

#: One row in a batch's ``rows`` JSON: row_id, request_id, order_id, eta, p10, p90,
#: created_at, and the offset and length (bytes) of its input in the ``inputs`` blob.
Row = tuple[Any, Any, Any, float, float, float, float, int, int]
#: JSON bytes of ``obj`` (msgspec: floats written exactly, shortest round trip).
to_json = msgspec.json.Encoder().encode
#: The rows of a batch's ``rows`` JSON (floats read back exactly).
decode_rows = msgspec.json.Decoder(list[Row]).decode


def json_of(obj: Any, where: str) -> bytes:
    """:data:`to_json`, refusing rows whose texts are not Unicode (lone surrogates)."""
    try:
        return to_json(obj)
    except (UnicodeError, TypeError) as e:  # TypeError: a value JSON cannot hold
        raise StoreDataError(f"{where}: rows refused: {e}") from e


def key_prefix(row_id: str) -> str:
    """The ``prediction_keys`` key of ``row_id``: the part before its first ``:`` (all of
    it when there is none). SQL twins: ``split_part(row_id, ':', 1)`` (PostgreSQL) and
    ``CASE WHEN instr(row_id, ':') ... substr ... END`` (SQLite)."""
    return row_id.partition(":")[0]


@dataclass(slots=True)
class Batch:
    """The rows of one stored batch, as columns (all rows share the group's key)."""

    tenant: str
    model_version: str
    arm: str
    width: int  # bytes of each row's features
    row_ids: Sequence[str]
    request_ids: Sequence[str]
    order_ids: Sequence[str | None]
    blob: bytes  # the rows' inputs as UTF-8, back to back
    sizes: Sequence[int]  # bytes of each row's input in ``blob``
    features: bytes  # the rows' features, concatenated
    eta: Sequence[float]
    p10: Sequence[float]
    p90: Sequence[float]
    created_at: Sequence[float]
    created_min: float
    created_max: float
    #: the distinct key prefixes of the row ids, when known
    keys: Sequence[str] | None = None
    #: :meth:`latest_orders`, when known
    latest: dict[str, float] | None = None

    @property
    def n(self) -> int:
        return len(self.row_ids)

    def prefixes(self) -> list[str]:
        """The distinct :func:`key_prefix` of the batch's row ids."""
        if self.keys is not None:
            return list(self.keys)
        return list({rid.partition(":")[0] for rid in self.row_ids})

    def latest_orders(self) -> dict[str, float]:
        """The time of the newest row of each order id in the batch (rows without one are
        left out)."""
        if self.latest is not None:
            return self.latest
        orders, created = self.order_ids, self.created_at
        if all(map(operator.le, created, itertools.islice(created, 1, None))):
            latest = dict(zip(orders, created, strict=True))  # in time order: last = newest
            latest.pop(None, None)
            return latest  # type: ignore[return-value]
        out: dict[str, float] = {}
        for order, t in zip(orders, created, strict=True):
            if order is not None and (order not in out or t > out[order]):
                out[order] = t
        return out


def encode(b: Batch, where: str) -> tuple[bytes, bytes]:
    """A batch as stored: its ``rows`` JSON (:data:`Row` per row) and its ``inputs`` blob
    (the rows' inputs, UTF-8, concatenated). Raises StoreDataError when an input is not
    text or an id holds a NUL character."""
    sizes = b.sizes
    offsets = list(itertools.accumulate(sizes, initial=0))
    offsets.pop()
    rows = zip(
        b.row_ids,
        b.request_ids,
        b.order_ids,
        b.eta,
        b.p10,
        b.p90,
        b.created_at,
        offsets,
        sizes,
        strict=True,
    )
    encoded = json_of(list(rows), where)
    if b"\\u0000" in encoded and any(
        isinstance(s, str) and "\x00" in s
        for col in (b.row_ids, b.request_ids, b.order_ids)
        for s in col
    ):  # SQLite's json_extract cuts such a text short, PostgreSQL cannot hold it
        raise StoreDataError(
            f"{where}: rows refused: a row id, request id or order id holds a NUL character"
        )
    return encoded, b.blob


def rows_of(
    tenant: str,
    version: str,
    arm: str,
    width: int,
    rows: str | bytes,
    inputs: bytes,
    features: bytes,
) -> list[PredictionRow]:
    """The PredictionRows of one stored batch (the inverse of :func:`encode`)."""
    return [
        PredictionRow(
            row_id=rid,
            request_id=req,
            order_id=order,
            tenant=tenant,
            model_version=version,
            arm=arm,
            inputs=inputs[off : off + size].decode(),
            features=features[i * width : (i + 1) * width],
            eta=eta,
            p10=p10,
            p90=p90,
            created_at=created,
        )
        for i, (rid, req, order, eta, p10, p90, created, off, size) in enumerate(decode_rows(rows))
    ]


def unique(rows: Sequence[PredictionRow], where: str) -> tuple[list[PredictionRow], list[str]]:
    """``rows`` without repeated ``row_id`` (the first one stays) and their distinct key
    prefixes. Raises StoreDataError when a row id is not a string."""
    ids = [r.row_id for r in rows]
    try:
        prefixes = list({rid.partition(":")[0] for rid in ids})
    except (AttributeError, TypeError) as e:
        raise StoreDataError(f"{where}: rows refused: row_id must be a string ({e})") from e
    if len(set(ids)) == len(ids):
        return list(rows), prefixes
    seen: set[str] = set()
    out = []
    for r in rows:
        if r.row_id not in seen:
            seen.add(r.row_id)
            out.append(r)
    return out, prefixes


def _floats(name: str, values: Sequence[float], where: str) -> Sequence[float]:
    """``values`` when every one is a real number (None and strings are refused)."""
    try:
        array.array("d", values)
    except (TypeError, ValueError, OverflowError) as e:
        raise StoreDataError(f"{where}: rows refused: {name} must be numbers ({e})") from e
    return values


def _one_batch(
    key: tuple[str, str, str, int], cols: Sequence[Sequence[object]], where: str
) -> Batch:
    row_ids, request_ids, order_ids, _, _, _, inputs, features, eta, p10, p90, created = cols
    tenant, version, arm, width = key
    for name, v in (("tenant", tenant), ("model_version", version), ("arm", arm)):
        if not isinstance(v, str):
            raise StoreDataError(f"{where}: rows refused: {name} must be a string, got {v!r}")
    for name, col in (("request_id", request_ids), ("inputs", inputs)):
        if None in col:
            raise StoreDataError(f"{where}: rows refused: {name} is missing (None)")
    try:
        features_blob = b"".join(features)  # type: ignore[arg-type]
    except TypeError as e:
        raise StoreDataError(f"{where}: rows refused: features must be bytes ({e})") from e
    texts: Sequence[str] = inputs  # type: ignore[assignment]
    try:
        text = "".join(texts)
        blob = text.encode()
        sizes = list(map(len, texts)) if text.isascii() else [len(s.encode()) for s in texts]
    except (TypeError, UnicodeError) as e:
        raise StoreDataError(f"{where}: rows refused: inputs must be text ({e})") from e
    created_at = _floats("created_at", created, where)  # type: ignore[arg-type]
    return Batch(
        tenant=tenant,
        model_version=version,
        arm=arm,
        width=width,
        row_ids=row_ids,  # type: ignore[arg-type]
        request_ids=request_ids,  # type: ignore[arg-type]
        order_ids=order_ids,  # type: ignore[arg-type]
        blob=blob,
        sizes=sizes,
        features=features_blob,
        eta=_floats("eta", eta, where),  # type: ignore[arg-type]
        p10=_floats("p10", p10, where),  # type: ignore[arg-type]
        p90=_floats("p90", p90, where),  # type: ignore[arg-type]
        created_at=created_at,
        created_min=float(min(created_at)),
        created_max=float(max(created_at)),
    )


def pack(rows: Sequence[PredictionRow], where: str) -> list[Batch]:
    """``rows`` (unique row ids) as stored batches: one per (tenant, model version, arm,
    feature width), in first-seen order, cut at :data:`MAX_BATCH_ROWS` rows; row order
    is kept within each. Raises StoreDataError (naming ``where``) for a missing or
    mistyped value, which the database could not store either."""
    out: list[Batch] = []
    for start in range(0, len(rows), MAX_BATCH_ROWS):
        chunk = rows[start : start + MAX_BATCH_ROWS]
        # one list per column (comprehensions: no per-row tuple for the GC to chase)
        cols: list[list[Any]] = [
            [r.row_id for r in chunk],
            [r.request_id for r in chunk],
            [r.order_id for r in chunk],
            [r.tenant for r in chunk],
            [r.model_version for r in chunk],
            [r.arm for r in chunk],
            [r.inputs for r in chunk],
            [r.features for r in chunk],
            [r.eta for r in chunk],
            [r.p10 for r in chunk],
            [r.p90 for r in chunk],
            [r.created_at for r in chunk],
        ]
        try:
            widths = set(map(len, cols[7]))
        except TypeError as e:
            raise StoreDataError(f"{where}: rows refused: features must be bytes ({e})") from e
        tenants, versions, arms = set(cols[3]), set(cols[4]), set(cols[5])
        if len(tenants) == len(versions) == len(arms) == len(widths) == 1:
            key = (tenants.pop(), versions.pop(), arms.pop(), widths.pop())
            out.append(_one_batch(key, cols, where))
            continue
        groups: dict[tuple[str, str, str, int], list[int]] = {}
        for i, k in enumerate(zip(cols[3], cols[4], cols[5], map(len, cols[7]), strict=True)):
            groups.setdefault(k, []).append(i)
        for k, idx in groups.items():
            out.append(_one_batch(k, [[col[i] for i in idx] for col in cols], where))
    return out


# -- the columnar path (server.store.chunks) ------------------------------------------------

_SUFFIXES: list[str] = []


def _suffixes(a: int, b: int) -> list[str]:
    """``[":a", ..., ":b-1"]`` (cached: row ids are made by one C-level concatenation)."""
    if b > len(_SUFFIXES):
        _SUFFIXES.extend(f":{i}" for i in range(len(_SUFFIXES), max(b, 2 * len(_SUFFIXES))))
    return _SUFFIXES[a:b]


def chunk_keys(chunks: Sequence[PredictionChunk], where: str) -> tuple[list[str], bool]:
    """The distinct key prefixes of the chunks' rows, and whether their row ids are all
    distinct (``f"{uid}:{i}"``: distinct uids give distinct row ids; one uid in several
    chunks, only when their row ranges do not overlap). Raises StoreDataError when a uid
    is not a string."""
    uids = [c.uid for c in chunks]
    try:
        prefixes = list({u.partition(":")[0] for u in uids})
    except (AttributeError, TypeError) as e:
        raise StoreDataError(f"{where}: rows refused: row_id must be a string ({e})") from e
    if len(set(uids)) == len(uids):
        return prefixes, True
    ranges = sorted((c.uid, c.start, c.start + len(c)) for c in chunks)
    overlap = any(u == v and b > c for (u, _, b), (v, c, _) in itertools.pairwise(ranges))
    return prefixes, not overlap


def chunk_row_ids(chunks: Sequence[PredictionChunk]) -> list[str]:
    """The row ids of the chunks' rows, in order."""
    out: list[str] = []
    for c in chunks:
        out += map(c.uid.__add__, _suffixes(c.start, c.start + len(c)))
    return out


def _latest(chunks: Sequence[PredictionChunk], times: Sequence[float]) -> dict[str, float]:
    """The newest time of each order id of the chunks' rows (a chunk's rows share one)."""
    latest: dict[Any, float] = {}
    if all(map(operator.le, times, itertools.islice(times, 1, None))):  # in time order
        for c, t in zip(chunks, times, strict=True):
            latest.update(zip(c.order_ids, itertools.repeat(t)))
    else:
        for c, t in zip(chunks, times, strict=True):
            for order in c.order_ids:
                if order not in latest or t > latest[order]:
                    latest[order] = t
    latest.pop(None, None)
    return latest


def _stack(mats: list[np.ndarray], n: int, where: str) -> bytes:
    """The feature rows of ``mats`` ([k, F] each) as one float32 little-endian blob."""
    try:
        m = mats[0] if len(mats) == 1 else np.concatenate(mats)
        m = np.ascontiguousarray(m, dtype=FEATURE_DTYPE)
    except (ValueError, TypeError) as e:
        raise StoreDataError(f"{where}: rows refused: features must be float rows ({e})") from e
    if m.ndim != 2 or len(m) != n:
        raise StoreDataError(f"{where}: rows refused: {len(m)} feature rows for {n} rows")
    return m.tobytes()


def _batch(
    key: tuple[str, str, str, int],
    cols: tuple[Sequence[Any], ...],
    blob: bytes,
    sizes: Sequence[int],
    features: bytes,
    keys: set[str],
    times: Sequence[float],
    latest: dict[str, float] | None = None,
) -> Batch:
    row_ids, request_ids, order_ids, eta, p10, p90, created = cols
    tenant, version, arm, width = key
    return Batch(
        tenant=tenant,
        model_version=version,
        arm=arm,
        width=width,
        row_ids=row_ids,
        request_ids=request_ids,
        order_ids=order_ids,
        blob=blob,
        sizes=sizes,
        features=features,
        eta=eta,
        p10=p10,
        p90=p90,
        created_at=created,
        created_min=float(min(times)),
        created_max=float(max(times)),
        keys=list(keys),
        latest=latest,
    )


def _column(chunks: Sequence[PredictionChunk], name: str) -> list[Any]:
    """Attribute ``name`` of every chunk (C-level iteration: no bytecode per chunk)."""
    return list(map(operator.attrgetter(name), chunks))


def _firsts(chunks: Sequence[PredictionChunk], name: str, where: str) -> list[Any]:
    """The one value of column ``name`` of every one-row chunk."""
    values = _column(chunks, name)
    try:
        if set(map(len, values)) != {1}:
            raise StoreDataError(f"{where}: rows refused: a one-row request has no single {name}")
    except TypeError as e:
        raise StoreDataError(f"{where}: rows refused: {name} must be a sequence ({e})") from e
    return list(itertools.chain.from_iterable(values))


def _singles_batch(
    key: tuple[str, str, str, int], chunks: Sequence[PredictionChunk], where: str
) -> Batch:
    """:func:`_chunk_batch` for chunks of one row whose input is their whole ``inputs``
    (single-row requests): one C-level pass per column, no bytecode per chunk."""
    uids = _column(chunks, "uid")
    if set(_column(chunks, "start")) == {0}:
        row_ids = list(map(str.__add__, uids, itertools.repeat(":0")))
    else:
        row_ids = [f"{c.uid}:{c.start}" for c in chunks]
    request_ids = _column(chunks, "request_id")
    if None in set(request_ids):
        raise StoreDataError(f"{where}: rows refused: request_id is missing (None)")
    times = _floats("created_at", _column(chunks, "created_at"), where)
    cols = (
        row_ids,
        request_ids,
        _firsts(chunks, "order_ids", where),
        _floats("eta", _firsts(chunks, "eta", where), where),
        _floats("p10", _firsts(chunks, "p10", where), where),
        _floats("p90", _firsts(chunks, "p90", where), where),
        times,
    )
    inputs = _column(chunks, "inputs")
    try:
        blob = b"".join(inputs)
    except TypeError as e:
        raise StoreDataError(f"{where}: rows refused: inputs must be bytes ({e})") from e
    sizes: Sequence[int] = list(map(len, inputs))
    if not blob.isascii():
        blob, sizes = utf8_text(blob, sizes)
    feats = _stack(_column(chunks, "features"), len(chunks), where)
    keys = {u.partition(":")[0] for u in uids} if ":" in "".join(uids) else set(uids)
    return _batch(key, cols, blob, sizes, feats, keys, times)


def _chunk_batch(
    key: tuple[str, str, str, int], chunks: Sequence[PredictionChunk], where: str
) -> Batch:
    """One stored batch of ``chunks`` (all of group ``key``), built column by column."""
    if (
        not any(_column(chunks, "rows_at"))
        and not any(x is not None for x in _column(chunks, "sizes"))
        and set(map(len, _column(chunks, "order_ids"))) == {1}
    ):
        return _singles_batch(key, chunks, where)
    times = _floats("created_at", [c.created_at for c in chunks], where)
    row_ids: list[str] = []
    request_ids: list[str] = []
    order_ids: list[str | None] = []
    eta: list[float] = []
    p10: list[float] = []
    p90: list[float] = []
    created: list[Any] = []
    blobs: list[bytes] = []
    sizes: list[int] = []
    feats: list[np.ndarray] = []
    keys: set[str] = set()
    for c in chunks:
        n = len(c)
        blob, sz = c.texts(where)
        if c.request_id is None:
            raise StoreDataError(f"{where}: rows refused: request_id is missing (None)")
        row_ids += map(c.uid.__add__, _suffixes(c.start, c.start + n))
        request_ids += itertools.repeat(c.request_id, n)
        order_ids += c.order_ids
        eta += float_list(c.eta)
        p10 += float_list(c.p10)
        p90 += float_list(c.p90)
        # the chunk's time, written once and copied into every row's JSON
        created += itertools.repeat(msgspec.Raw(to_json(float(c.created_at))), n)
        blobs.append(blob)
        sizes += sz
        feats.append(c.features)
        keys.add(c.uid.partition(":")[0])
    for name, col in (("eta", eta), ("p10", p10), ("p90", p90)):
        _floats(name, col, where)
    cols = (row_ids, request_ids, order_ids, eta, p10, p90, created)
    features = _stack(feats, len(row_ids), where)
    latest = _latest(chunks, times)
    return _batch(key, cols, b"".join(blobs), sizes, features, keys, times, latest)


def pack_chunks(chunks: Sequence[PredictionChunk], where: str) -> list[Batch]:
    """:func:`pack` for chunks (row ids distinct: :func:`chunk_keys`): one batch per
    (tenant, model version, arm, feature width), in first-seen order, cut at
    :data:`MAX_BATCH_ROWS` rows. The rows stored are exactly those of :func:`pack` on the
    chunks' :meth:`~server.store.chunks.PredictionChunk.rows`."""
    if 0 in set(map(len, _column(chunks, "order_ids"))):
        chunks = [c for c in chunks if len(c.order_ids)]
    if not chunks:
        return []
    try:
        shapes = set(_column(chunks, "features.shape"))
        widths = {shape[-1] * FEATURE_DTYPE.itemsize for shape in shapes}
    except (AttributeError, IndexError) as e:
        raise StoreDataError(f"{where}: rows refused: features must be a matrix ({e})") from e
    tenants = set(_column(chunks, "tenant"))
    versions = set(_column(chunks, "model_version"))
    arms = set(_column(chunks, "arm"))
    for name, vals in (("tenant", tenants), ("model_version", versions), ("arm", arms)):
        for v in vals:
            if not isinstance(v, str):
                raise StoreDataError(f"{where}: rows refused: {name} must be a string, got {v!r}")
    groups: Mapping[tuple[str, str, str, int], Sequence[PredictionChunk]]
    if len(tenants) == len(versions) == len(arms) == len(widths) == 1:
        groups = {(tenants.pop(), versions.pop(), arms.pop(), widths.pop()): chunks}
    else:
        found: dict[tuple[str, str, str, int], list[PredictionChunk]] = {}
        for c in chunks:
            k = (c.tenant, c.model_version, c.arm, c.features.shape[-1] * FEATURE_DTYPE.itemsize)
            found.setdefault(k, []).append(c)
        groups = found
    out: list[Batch] = []
    for key, members in groups.items():
        if sum(map(len, _column(members, "order_ids"))) <= MAX_BATCH_ROWS:
            out.append(_chunk_batch(key, members, where))  # the log's batches: no cut
            continue
        piece: list[PredictionChunk] = []
        room = MAX_BATCH_ROWS
        for c in members:
            while len(c) > room:
                if room:
                    piece.append(c.cut(0, room))
                    c = c.cut(room)
                out.append(_chunk_batch(key, piece, where))
                piece, room = [], MAX_BATCH_ROWS
            piece.append(c)
            room -= len(c)
        if piece:
            out.append(_chunk_batch(key, piece, where))
    return out


def pick_recent(
    meta: Iterable[tuple[int, float, float, int]], since: float, limit: int
) -> list[int]:
    """The ids of the batches that can hold the newest ``limit`` rows made at or after
    ``since``, from ``(batch_id, created_min, created_max, n)`` in ``created_max``
    descending order (read lazily: stops early).

    Once batches made entirely at or after ``since`` hold ``limit`` rows, the newest
    ``limit`` rows are all at or after the earliest of them, so batches whose newest row
    is older cannot contribute.
    """
    if limit <= 0:
        return []
    chosen: list[int] = []
    counted = 0
    floor = -float("inf")
    earliest = float("inf")
    for batch_id, cmin, cmax, n in meta:
        if cmax < floor:
            break
        chosen.append(batch_id)
        if counted < limit and cmin >= since:
            counted += n
            earliest = min(earliest, cmin)
            if counted >= limit:
                floor = earliest
    return chosen
