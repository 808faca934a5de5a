"""Columnar predictions: what a route hands the prediction log, one object per request.

Building one :class:`~server.store.PredictionRow` per predicted row cost ~1 µs per row on
the event loop, more than the 5 % of a batch row's serving time the log may take. A
:class:`PredictionChunk` instead holds what the route already has, once per request: the
ids, the order ids, the request body as received (or the rows' inputs back to back), the
feature matrix and the answers. The prediction log's writer turns chunks into stored
batches column by column (:func:`server.store.batches.pack_chunks`) on the store's
thread; nothing on the hot path runs per row.

A chunk stands for exactly the rows :meth:`PredictionChunk.rows` gives: row ``i`` has
``row_id`` ``f"{uid}:{start + i}"``, the chunk's request id, tenant, model version, arm
and time, and as ``inputs`` the ``i``-th input as sent (UTF-8 text; bytes that are not
UTF-8 are replaced by U+FFFD, as the routes always did). The spool, the refused-row
isolation and any store without a columnar path use those rows.
"""

from __future__ import annotations

import functools
import itertools
from collections.abc import Sequence
from typing import Any

import msgspec
import numpy as np

from server.store.base import FEATURE_DTYPE, PredictionRow, StoreDataError

__all__ = ["PredictionChunk", "float_list", "rows_of_chunks", "utf8_text"]


@functools.cache
def _elements(key: str) -> msgspec.json.Decoder[Any]:
    """A decoder of ``{key: [element, ...], ...}`` keeping each element's bytes as sent
    (other keys are skipped)."""
    struct = msgspec.defstruct("Elements", [("rows", list[msgspec.Raw])], rename={"rows": key})
    return msgspec.json.Decoder(struct)


def utf8_text(blob: bytes, sizes: Sequence[int]) -> tuple[bytes, Sequence[int]]:
    """``(blob, sizes)`` (inputs back to back) with every input valid UTF-8: invalid bytes
    are replaced by U+FFFD, as decoding each input with ``errors="replace"`` would."""
    if blob.isascii():
        return blob, sizes
    offs = np.cumsum(np.asarray([0, *sizes[:-1]], dtype=np.int64))
    inner = offs[(offs > 0) & (offs < len(blob))]
    cut = bool(len(inner)) and bool(
        ((np.frombuffer(blob, np.uint8)[inner] & 0xC0) == 0x80).any()
    )  # an input starting inside a character
    if not cut:
        try:
            blob.decode()
        except UnicodeDecodeError:
            pass
        else:
            return blob, sizes
    parts = [
        blob[a : a + n].decode("utf-8", "replace").encode()
        for a, n in zip(offs.tolist(), sizes, strict=True)
    ]
    return b"".join(parts), list(map(len, parts))


class PredictionChunk(msgspec.Struct, eq=False, gc=False):
    """The predicted rows of one request (or a cut of them), as columns.

    ``inputs`` holds the rows' inputs as sent, in one of three layouts:

    - ``sizes`` given: the inputs back to back, ``sizes[i]`` bytes each;
    - ``rows_at`` given: a JSON object whose ``rows_at`` member is the array of the rows'
      inputs (a request body such as ``{"deliveries": [...]}``), split by the writer;
    - neither: ``inputs`` is the one row's input (a single-row request body).

    ``features`` is the [n, F] float32 matrix the model was fed; ``eta``, ``p10``,
    ``p90`` the answers (lists or arrays). The chunk is queued as it is, not copied: the
    caller must not change these afterwards.

    ``gc=False``, as :class:`~server.store.PredictionRow`: the garbage collector does not
    track chunks (they hold no reference cycles), so the thousands a busy log queues are
    not promoted through its generations and scanned by every full collection.
    """

    request_id: str
    uid: str
    order_ids: Sequence[str | None]
    tenant: str
    model_version: str
    arm: str
    inputs: bytes
    features: np.ndarray
    eta: Sequence[float]
    p10: Sequence[float]
    p90: Sequence[float]
    created_at: float
    sizes: Sequence[int] | None = None
    rows_at: str = ""
    start: int = 0  # row i's row_id is f"{uid}:{start + i}"

    def __len__(self) -> int:
        return len(self.order_ids)

    def texts(self, where: str = "prediction log") -> tuple[bytes, Sequence[int]]:
        """The rows' inputs as valid UTF-8 bytes back to back, and each one's size.

        Raises StoreDataError when ``inputs`` does not hold one input per row."""
        n = len(self)
        if self.sizes is not None:
            blob, sizes = self.inputs, self.sizes
        elif self.rows_at:
            try:
                raws = _elements(self.rows_at).decode(self.inputs).rows
            except (msgspec.DecodeError, UnicodeError) as e:
                raise StoreDataError(f"{where}: rows refused: inputs are not JSON ({e})") from e
            blob, sizes = b"".join(raws), list(map(len, raws))
        else:
            blob, sizes = self.inputs, (len(self.inputs),)
        lengths = {
            "inputs": len(sizes),
            "features": len(self.features),
            "eta": len(self.eta),
            "p10": len(self.p10),
            "p90": len(self.p90),
        }
        for name, k in lengths.items():
            if k != n:
                raise StoreDataError(
                    f"{where}: rows refused: {k} {name} for {n} rows of request {self.request_id!r}"
                )
        return utf8_text(blob, sizes)

    def matrix(self) -> np.ndarray:
        """``features`` as a C-contiguous float32 little-endian [n, F] matrix."""
        m = self.features
        if not (m.dtype == FEATURE_DTYPE and m.ndim == 2 and m.flags.c_contiguous):
            m = np.ascontiguousarray(np.atleast_2d(m), dtype=FEATURE_DTYPE)
        return m

    def cut(self, a: int, b: int | None = None) -> PredictionChunk:
        """Rows ``a`` to ``b`` (exclusive; None: to the end) as a chunk of their own."""
        n = len(self)
        a, b, _ = slice(a, b).indices(n)
        blob, sizes = self.texts()
        offs = list(itertools.accumulate(sizes, initial=0))
        return msgspec.structs.replace(
            self,
            order_ids=self.order_ids[a:b],
            inputs=blob[offs[a] : offs[max(a, b)]],
            sizes=list(sizes[a:b]),
            rows_at="",
            features=self.matrix()[a:b],
            eta=self.eta[a:b],
            p10=self.p10[a:b],
            p90=self.p90[a:b],
            start=self.start + a,
        )

    def row_ids(self) -> list[str]:
        """The rows' ``row_id``: ``f"{uid}:{start + i}"``."""
        return [f"{self.uid}:{i}" for i in range(self.start, self.start + len(self))]

    def rows(self) -> list[PredictionRow]:
        """The chunk as one PredictionRow per row (the spool's and the row path's form)."""
        blob, sizes = self.texts()
        offs = itertools.accumulate(sizes, initial=0)  # n + 1 values: zip stops at n
        m = self.matrix()
        width = m.shape[1] * FEATURE_DTYPE.itemsize
        feats = m.tobytes()
        return [
            PredictionRow(
                row_id=rid,
                request_id=self.request_id,
                order_id=order,
                tenant=self.tenant,
                model_version=self.model_version,
                arm=self.arm,
                inputs=blob[off : off + size].decode(),
                features=feats[i * width : (i + 1) * width],
                eta=e,
                p10=lo,
                p90=hi,
                created_at=self.created_at,
            )
            for i, (rid, order, off, size, e, lo, hi) in enumerate(
                zip(
                    self.row_ids(),
                    self.order_ids,
                    offs,
                    sizes,
                    float_list(self.eta),
                    float_list(self.p10),
                    float_list(self.p90),
                    strict=False,
                )
            )
        ]


def float_list(values: Sequence[float]) -> Sequence[float]:
    """``values`` as Python floats (an array's ``tolist()``; other sequences as they are)."""
    return values.tolist() if isinstance(values, np.ndarray) else values


def rows_of_chunks(
    parts: Sequence[PredictionChunk | Sequence[PredictionRow]],
) -> list[PredictionRow]:
    """The rows of chunks (and of row lists among them), in order."""
    out: list[PredictionRow] = []
    for p in parts:
        out.extend(p.rows() if isinstance(p, PredictionChunk) else p)
    return out
