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
"""

from __future__ import annotations

import array
import itertools
import operator
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import msgspec

from server.store.base import PredictionRow, StoreDataError

__all__ = [
    "MAX_BATCH_ROWS",
    "ORDER_SLACK_S",
    "Batch",
    "Row",
    "decode_rows",
    "encode",
    "json_of",
    "key_prefix",
    "pack",
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
    except UnicodeError as e:
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
    inputs: Sequence[str]
    features: bytes  # the rows' features, concatenated
    eta: Sequence[float]
    p10: Sequence[float]
    p90: Sequence[float]
    created_at: Sequence[float]
    created_min: float
    created_max: float

    @property
    def n(self) -> int:
        return len(self.row_ids)

    def prefixes(self) -> list[str]:
        """The distinct :func:`key_prefix` of the batch's row ids."""
        return list({rid.partition(":")[0] for rid in self.row_ids})

    def latest_orders(self) -> dict[str, float]:
        """The time of the newest row of each order id in the batch (rows without one are
        left out)."""
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
    inputs = b.inputs
    try:
        text = "".join(inputs)
        blob = text.encode()
        sizes = list(map(len, inputs)) if text.isascii() else [len(s.encode()) for s in inputs]
    except (TypeError, UnicodeError) as e:
        raise StoreDataError(f"{where}: rows refused: inputs must be text ({e})") from e
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
    return encoded, blob


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
        blob = b"".join(features)  # type: ignore[arg-type]
    except TypeError as e:
        raise StoreDataError(f"{where}: rows refused: features must be bytes ({e})") from e
    created_at = _floats("created_at", created, where)  # type: ignore[arg-type]
    return Batch(
        tenant=tenant,
        model_version=version,
        arm=arm,
        width=width,
        row_ids=row_ids,  # type: ignore[arg-type]
        request_ids=request_ids,  # type: ignore[arg-type]
        order_ids=order_ids,  # type: ignore[arg-type]
        inputs=inputs,  # type: ignore[arg-type]
        features=blob,
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
