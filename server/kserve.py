"""Open Inference Protocol (KServe V2) REST routes, so KServe/Triton clients can call us.

One input tensor per spec field, all of shape ``[n]``: FP32/FP64 (or INT32/INT64) for
numbers, INT64 epoch seconds or BYTES (ISO 8601) for the event time, BYTES for
categories and for the optional ``order_id``. Outputs: ``eta_minutes``, ``eta_p10``,
``eta_p90`` (FP64 ``[n]``). Errors follow the protocol's shape, ``{"error": "..."}``,
with status 400 for bad input.

Tensors come as JSON ``data`` or through the binary tensor data extension (what
``tritonclient.http`` sends by default): with an ``Inference-Header-Content-Length``
header the body is a JSON header of that many bytes followed by the raw tensors, in
input order, each input saying its size in ``parameters.binary_data_size``: little-endian
numbers, BYTES as 4-byte little-endian lengths each followed by that many UTF-8 bytes.
Outputs asked for with ``parameters.binary_data`` (or the request's
``binary_data_output``) come back the same way: the JSON header (its length in the
response's ``Inference-Header-Content-Length``), each binary output with its
``binary_data_size``, then the little-endian FP64 values. A binary tensor is decoded into
the very values JSON would carry and then takes the JSON path, so the answers (and the
logged inputs) of both forms are the same, bit for bit. NaN in a binary tensor of an
optional number (``prep_minutes``) means "missing", like ``null`` in JSON.

:class:`V2Model` is that path without a transport (tensors in, scored rows out); the
gRPC service (``server/grpc``) serves the same object, so both protocols share its
checks, experiment routing and logging.

Every answered row is logged like the other prediction routes (``recorder``): its input
is the row's tensor values as sent (JSON), its order id the ``order_id`` tensor's value,
or none when that tensor was not sent.
"""

from __future__ import annotations

import asyncio
import math
import struct
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import msgspec
import numpy as np
from litestar import Request, Response, get, post
from litestar.background_tasks import BackgroundTask
from litestar.openapi.datastructures import ResponseSpec
from litestar.params import FromPath

from kernels.spec import FeatureSpec
from server.experiments.router import INLINE_ROWS, Part, Router, features, score_rows
from server.holder import ModelHolder
from server.recorder import new_request_id

if TYPE_CHECKING:
    from server.microbatch import MicroBatcher
    from server.recorder import Recorder

__all__ = [
    "MODEL_NAME",
    "OUTPUTS",
    "Answer",
    "Tensor",
    "V2InputError",
    "V2Model",
    "decode_raw",
    "infer_request_schema",
    "kserve_routes",
]

MODEL_NAME = "eta"
JSON = "application/json"
_NUM = ("FP32", "FP64", "INT32", "INT64")
#: little-endian numpy dtypes of the numeric datatypes the inputs accept
_RAW_DTYPES = {"FP32": "<f4", "FP64": "<f8", "INT32": "<i4", "INT64": "<i8"}
_LEN = struct.Struct("<I")
_HEADER = "inference-header-content-length"


class Tensor(msgspec.Struct):
    """One input tensor: ``data`` from JSON, or filled in from binary bytes (then the
    JSON header carries ``parameters.binary_data_size`` and no ``data``)."""

    name: str
    shape: list[int]
    datatype: str
    data: list[Any] | None = None
    parameters: dict[str, Any] | None = None


class OutputSpec(msgspec.Struct):
    name: str
    parameters: dict[str, Any] | None = None


class InferRequest(msgspec.Struct):
    inputs: list[Tensor]
    id: str | None = None
    parameters: dict[str, Any] | None = None
    outputs: list[OutputSpec] | None = None


class OutTensor(msgspec.Struct):
    name: str
    datatype: str
    shape: list[int]
    data: list[float]


class InferResponse(msgspec.Struct, omit_defaults=True):
    model_name: str
    model_version: str
    outputs: list[OutTensor]
    id: str | None = None
    # {"arm": production | baseline | candidate}, or in an A/B test whose rows went to both
    # arms {"arm": "mixed", "candidate_version": ..., "candidate_rows": "0,3,7"}
    parameters: dict[str, str] | None = None


# ---- the other answers, as documented (the handlers build them as dicts) --------------------


class V2Error(msgspec.Struct):
    """The protocol's error body (every 400 and 404 of these routes)."""

    error: str


class ServerMetadata(msgspec.Struct):
    name: str
    version: str
    extensions: list[str]


class Live(msgspec.Struct):
    live: bool


class Ready(msgspec.Struct):
    ready: bool


class ModelReady(msgspec.Struct):
    name: str
    ready: bool


class TensorMetadata(msgspec.Struct):
    name: str
    datatype: str
    shape: list[int]
    optional: bool = False


class OutputMetadata(msgspec.Struct):
    name: str
    datatype: str
    shape: list[int]


class ModelMetadata(msgspec.Struct):
    name: str
    versions: list[str]
    platform: str
    inputs: list[TensorMetadata]
    outputs: list[OutputMetadata]


OUTPUTS = ("eta_minutes", "eta_p10", "eta_p90")
_UNKNOWN_MODEL = ResponseSpec(
    V2Error, description=f"no such model; this server serves {MODEL_NAME!r}"
)
_NOT_READY = "not ready: the model is loading or the store is not open"


_enc = msgspec.json.Encoder()
_dec = msgspec.json.Decoder(InferRequest)


class V2InputError(Exception):
    """A request the V2 protocol refuses (HTTP 400, gRPC INVALID_ARGUMENT); the message
    names the input or output and says what to send instead."""


def _err(status: int, message: str) -> Response[bytes]:
    return Response(_enc.encode(V2Error(message)), status_code=status, media_type=JSON)


def _flatten(data: list[Any]) -> list[Any]:
    if data and isinstance(data[0], list):
        if not all(isinstance(row, list) for row in data):
            raise V2InputError("tensor data mixes rows (lists) and values; send [n] or [n, 1] data")
        return [x for row in data for x in _flatten(row)]
    return data


def _kinds(spec: FeatureSpec) -> dict[str, tuple[str, ...]]:
    """Input tensor name -> the datatypes it accepts, in the spec's order."""
    kinds: dict[str, tuple[str, ...]] = {
        spec.pickup_lat: _NUM,
        spec.pickup_lon: _NUM,
        spec.dropoff_lat: _NUM,
        spec.dropoff_lon: _NUM,
        spec.event_time: ("INT64", "INT32", "BYTES"),
        spec.key: ("BYTES",),
    }
    for c in spec.categorical:
        kinds[c.name] = ("BYTES",)
    for n in spec.numeric:
        kinds[n.name] = _NUM
    return kinds


# ---- raw tensor bytes (the binary extension over HTTP, raw_input_contents over gRPC) ---------


def decode_raw(name: str, datatype: str, raw: bytes | memoryview) -> list[Any]:
    """The values of one input tensor sent as raw bytes, as JSON would carry them: Python
    floats or ints from little-endian numbers, str from BYTES (4-byte little-endian
    length, then that many UTF-8 bytes, per element)."""
    dt = _RAW_DTYPES.get(datatype)
    if dt is not None:
        size = np.dtype(dt).itemsize
        if len(raw) % size:
            raise V2InputError(
                f"input {name!r}: {len(raw)} bytes of {datatype} data is not a whole number "
                f"of {size}-byte values"
            )
        values: list[Any] = np.frombuffer(raw, dtype=dt).tolist()
        return values
    if datatype != "BYTES":
        raise V2InputError(
            f"input {name!r}: datatype {datatype} cannot be sent as binary data "
            f"(use {', '.join(_RAW_DTYPES)} or BYTES)"
        )
    data = bytes(raw)
    # ASCII data (the usual case: ids, levels, ISO times) is sliced out of one str decoded
    # at once; other data is decoded element by element, refusing bad UTF-8
    text = data.decode("latin-1") if data.isascii() else None
    out: list[Any] = []
    append, unpack = out.append, _LEN.unpack_from
    pos, end = 0, len(data)
    while pos < end:
        if end - pos < 4:
            raise V2InputError(
                f"input {name!r}: BYTES element {len(out)} is cut short (its 4-byte length is "
                f"incomplete: {end - pos} bytes left)"
            )
        n = unpack(data, pos)[0]
        pos += 4
        if n > end - pos:
            raise V2InputError(
                f"input {name!r}: BYTES element {len(out)} says {n} bytes, only {end - pos} "
                "are left in its data"
            )
        if text is not None:
            append(text[pos : pos + n])
        else:
            try:
                append(data[pos : pos + n].decode("utf-8"))
            except UnicodeDecodeError:
                raise V2InputError(
                    f"input {name!r}: BYTES element {len(out)} is not UTF-8"
                ) from None
        pos += n
    return out


def _size(value: Any, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise V2InputError(f"{where}: expected a whole number of bytes >= 0, got {value!r}")
    return value


def _split_binary(body: bytes, header: str, check: Callable[[Tensor], None]) -> InferRequest:
    """The request of a binary-extension body: its JSON header (``header`` bytes long),
    each input with ``binary_data_size`` filled in from the bytes that follow, in order
    (``check``: refuses an input's name or datatype before its bytes are read)."""
    try:
        n = int(header)
    except ValueError:
        n = -1
    if not 0 < n <= len(body):
        raise V2InputError(
            f"binary tensor data: Inference-Header-Content-Length={header!r} must be the "
            f"length in bytes of the JSON header at the start of the body (1 to {len(body)})"
        )
    try:
        req = _dec.decode(body[:n])
    except (msgspec.ValidationError, msgspec.DecodeError) as exc:
        raise V2InputError(
            f"binary tensor data: the JSON header (the first {n} bytes, "
            f"Inference-Header-Content-Length) is not a valid infer request: {exc}"
        ) from None
    view = memoryview(body)
    pos = n
    for t in req.inputs:
        size = (t.parameters or {}).get("binary_data_size")
        if size is None:
            continue
        size = _size(size, f"input {t.name!r}: parameters.binary_data_size")
        check(t)
        if t.data is not None:
            raise V2InputError(
                f"input {t.name!r}: has both data and binary_data_size; send one of them"
            )
        if size > len(body) - pos:
            raise V2InputError(
                f"input {t.name!r}: binary_data_size={size} but only {len(body) - pos} bytes "
                "of the body are left (truncated body, or a wrong size)"
            )
        t.data = decode_raw(t.name, t.datatype, view[pos : pos + size])
        pos += size
    if pos != len(body):
        raise V2InputError(
            f"binary tensor data: {len(body) - pos} bytes after the last binary input; the "
            "binary_data_size of the inputs must add up to the body after the JSON header"
        )
    return req


def _flag(params: dict[str, Any] | None, key: str, where: str, default: bool) -> bool:
    value = (params or {}).get(key, default)
    if not isinstance(value, bool):
        raise V2InputError(f"{where}.{key}: expected true or false, got {value!r}")
    return value


# ---- the model as V2 sees it, whatever the transport -----------------------------------------


@dataclass(frozen=True, eq=False)
class Answer:
    """The scored rows of one request: the outputs (float64 arrays), who answered them
    (``version`` and ``parameters``: the arm, or "mixed" with the candidate's rows), and
    the shadow scoring to run after the answer is sent (None: none)."""

    outputs: dict[str, np.ndarray]
    version: str
    parameters: dict[str, str]
    shadow: Callable[[], Coroutine[Any, Any, None]] | None


@dataclass(frozen=True, eq=False)
class _Rows:
    items: list[Any]
    sent: list[bytes] | None  # each row's tensor values as JSON (None: nothing is logged)
    has_key: bool


class V2Model:
    """The served model behind the V2 protocol: tensors in, checked rows, scored rows
    out (experiment routing through :func:`score_rows`, logging through ``recorder``).

    Reads ``holder.model`` once per request, so a hot swap takes effect on the next
    request and requests in flight finish on the model they started with. ``ready()``:
    readiness (default: the model is loaded). ``batcher``: one-row requests (no A/B
    split) are predicted through it, with the other one-row requests of the same
    event-loop turn (None: each on its own)."""

    def __init__(
        self,
        holder: ModelHolder,
        spec: FeatureSpec,
        max_batch: int,
        *,
        recorder: Recorder | None = None,
        ready: Callable[[], bool] | None = None,
        router: Router | None = None,
        batcher: MicroBatcher | None = None,
    ) -> None:
        self.holder = holder
        self.spec = spec
        self.max_batch = max_batch
        self.recorder = recorder
        self.router = router
        self.batcher = batcher
        self._ready = ready
        self.kinds = _kinds(spec)
        self.required = list(spec.required_columns)
        self.optional = {n.name for n in spec.numeric if n.optional} | {spec.key}
        #: optional numeric inputs: NaN in their binary data means missing (JSON null)
        self._nan_missing = {n.name for n in spec.numeric if n.optional}
        #: the type msgspec.convert makes the rows into (built once)
        self._items: Any = list[spec.request_struct]  # type: ignore[name-defined]

    def is_ready(self) -> bool:
        if self._ready is not None:
            return self._ready()
        return self.holder.ready and self.holder.model is not None

    def metadata(self) -> dict[str, Any]:
        """The model's metadata document (the REST form; gRPC builds its message from it)."""
        m = self.holder.model
        return {
            "name": MODEL_NAME,
            "versions": [m.version] if m else [],
            "platform": "lightgbm",
            "inputs": [
                {
                    "name": name,
                    "datatype": "FP64" if dt == _NUM else dt[0],
                    "shape": [-1],
                    "optional": name in self.optional,
                }
                for name, dt in self.kinds.items()
            ],
            "outputs": [{"name": o, "datatype": "FP64", "shape": [-1]} for o in OUTPUTS],
        }

    def check_datatype(self, t: Tensor) -> None:
        if t.name not in self.kinds:
            raise V2InputError(f"unknown input {t.name!r}; inputs are {', '.join(self.kinds)}")
        if t.datatype not in self.kinds[t.name]:
            raise V2InputError(
                f"input {t.name!r}: datatype {t.datatype} not accepted (use {' or '.join(self.kinds[t.name])})"
            )

    @staticmethod
    def outputs(requested: Sequence[tuple[str, bool]]) -> list[str]:
        """The names of the outputs asked for (empty: all three), checked; ``requested``:
        each output's name and whether its parameters ask for classification."""
        wanted = [name for name, _ in requested] or list(OUTPUTS)
        unknown = [w for w in wanted if w not in OUTPUTS]
        if unknown:
            raise V2InputError(f"unknown output {unknown[0]!r}; outputs are {', '.join(OUTPUTS)}")
        for i, (_, classification) in enumerate(requested):
            if classification:
                raise V2InputError(
                    f"outputs[{i}].parameters.classification: not supported; the outputs "
                    "are regression values"
                )
        return wanted

    def rows(self, inputs: Sequence[Tensor]) -> _Rows:
        """The request's rows as request structs; with a recorder, each row's tensor
        values as sent (JSON) too."""
        seen: dict[str, list[Any]] = {}
        n: int | None = None
        for t in inputs:
            self.check_datatype(t)
            if t.data is None:
                raise V2InputError(
                    f"input {t.name!r}: no data; send data, or parameters.binary_data_size "
                    "with the binary tensor data extension"
                )
            data = _flatten(t.data)
            if (
                math.prod(t.shape) != len(data)
                or len(t.shape) not in (1, 2)
                or (len(t.shape) == 2 and t.shape[1] != 1)
            ):
                raise V2InputError(
                    f"input {t.name!r}: shape {t.shape} does not match {len(data)} values (use [n] or [n, 1])"
                )
            if n is not None and len(data) != n:
                raise V2InputError(
                    f"input {t.name!r} has {len(data)} values, other inputs have {n}"
                )
            n = len(data)
            if t.datatype.startswith("INT") and self.kinds[t.name] == _NUM:
                data = [
                    float(x) if isinstance(x, int) and not isinstance(x, bool) else x for x in data
                ]
            elif t.name in self._nan_missing and t.datatype.startswith("FP"):
                data = [None if isinstance(x, float) and x != x else x for x in data]
            seen[t.name] = data
        missing = [c for c in self.required if c not in seen]
        if missing:
            raise V2InputError(
                f"missing input{'s' if len(missing) > 1 else ''} {', '.join(missing)}"
            )
        if not n:
            raise V2InputError("inputs are empty")
        if n > self.max_batch:
            raise V2InputError(f"{n} rows exceed MAX_BATCH_SIZE={self.max_batch}")
        names = list(seen)
        cols = [seen[k] for k in names]
        dicts = [dict(zip(names, vals, strict=True)) for vals in zip(*cols, strict=True)]
        sent = [_enc.encode(d) for d in dicts] if self.recorder is not None else None
        key = self.spec.key
        has_key = key in seen
        if not has_key:
            for i, d in enumerate(dicts):
                d[key] = str(i)
        try:
            items = msgspec.convert(dicts, self._items)
        except msgspec.ValidationError as exc:
            msg, _, where = str(exc).rpartition(" - at `$[")
            if not _:
                raise V2InputError(str(exc)) from None
            idx, _, field = where.rstrip("`").partition("].")
            raise V2InputError(f"input {field!r}[{idx}]: {msg}") from None
        return _Rows(items, sent, has_key)

    async def score(self, batch: _Rows, rid: str, uid: str) -> Answer:
        """Score the rows of :meth:`rows`, log them, and say who answered."""
        model = self.holder.model
        if model is None:
            raise V2InputError(_NOT_READY)
        items, sent, recorder = batch.items, batch.sent, self.recorder
        key = self.spec.key
        orders = [getattr(it, key) for it in items] if batch.has_key else [None] * len(items)
        route = self.router.route if self.router is not None else None

        def log_chunk(
            uid: str,
            pick: Sequence[int] | None,
            X: np.ndarray,
            e: list[float],
            lo: list[float],
            hi: list[float],
            version: str,
            arm: str,
        ) -> Any:
            """The log chunk of the rows ``pick`` (None: every row) of this request."""
            assert recorder is not None and sent is not None
            if pick is None:
                inputs, order_ids = sent, orders
            else:
                inputs, order_ids = [sent[j] for j in pick], [orders[j] for j in pick]
                e, lo, hi = [e[j] for j in pick], [lo[j] for j in pick], [hi[j] for j in pick]
            return recorder.chunk(
                rid,
                uid,
                order_ids,
                b"".join(inputs),
                X,
                e,
                lo,
                hi,
                version,
                sizes=[len(r) for r in inputs],
                arm=arm,
            )

        def log(parts: list[Part], e: list[float], lo: list[float], hi: list[float]) -> list[Any]:
            if recorder is None or sent is None:
                return []
            return [
                log_chunk(
                    uid if i == 0 else new_request_id(),
                    part.rows.tolist() if part.rows is not None else None,
                    part.X,
                    e,
                    lo,
                    hi,
                    part.model.version,
                    part.arm,
                )
                for i, part in enumerate(parts)
            ]

        def run() -> tuple[np.ndarray, np.ndarray, np.ndarray, list[Part], list[Any]]:
            eta, p10, p90, parts = score_rows(route, model, items, orders)
            logged = log(parts, eta.tolist(), p10.tolist(), p90.tolist()) if recorder else []
            return eta, p10, p90, parts, logged

        if self.batcher is not None and len(items) == 1 and (route is None or route.shadow):
            X = features(model, items)
            one = await self.batcher.predict(model, X)
            eta, p10, p90 = (np.array([v], dtype=np.float64) for v in one)
            parts = [Part(model, "production" if route is None else "baseline", None, X)]
            logged = log(parts, [one[0]], [one[1]], [one[2]]) if recorder else []
        elif len(items) <= INLINE_ROWS:
            eta, p10, p90, parts, logged = run()
        else:
            eta, p10, p90, parts, logged = await asyncio.to_thread(run)
        if recorder is not None:
            for chunk in logged:
                recorder.submit(chunk)
        if len(parts) == 1:
            version, params = parts[0].model.version, {"arm": parts[0].arm}
        else:
            cand = next(p for p in parts if p.arm == "candidate")
            rows_of = cand.rows.tolist() if cand.rows is not None else []
            version = model.version
            params = {
                "arm": "mixed",
                "candidate_version": cand.model.version,
                "candidate_rows": ",".join(map(str, rows_of)),
            }
        shadow = None
        if route is not None and route.shadow:  # scored off the response path
            cand_model = route.candidate

            def score_shadow() -> Any:
                X = features(cand_model, items)
                e, lo, hi = (a.tolist() for a in cand_model.predict(X))
                if recorder is None or sent is None:
                    return None
                return log_chunk(new_request_id(), None, X, e, lo, hi, cand_model.version, "shadow")

            async def shadow() -> None:
                big = len(items) > INLINE_ROWS
                logged = await asyncio.to_thread(score_shadow) if big else score_shadow()
                if logged is not None and recorder is not None:
                    recorder.submit(logged)

        outs = {"eta_minutes": eta, "eta_p10": p10, "eta_p90": p90}
        return Answer(outs, version, params, shadow)


_INFER_DESCRIPTION = (
    "Tensors as JSON (the request body below), or with the binary tensor data extension: "
    "an `Inference-Header-Content-Length: N` header, a body of N bytes of JSON header (this "
    "request, each binary input with `parameters.binary_data_size` instead of `data`) "
    "followed by those inputs' raw bytes in input order: little-endian FP32/FP64/INT32/INT64 "
    "values; BYTES as a 4-byte little-endian length then that many UTF-8 bytes per element. "
    "NaN in a binary optional number means missing. Outputs with `parameters.binary_data: "
    "true` (or the request's `parameters.binary_data_output: true`) come back binary: the "
    "response's `Inference-Header-Content-Length` says how long its JSON header is, each "
    "such output carries `parameters.binary_data_size` and its little-endian FP64 values "
    "follow the header in output order (Content-Type application/octet-stream)."
)


def infer_request_schema(spec: FeatureSpec, max_batch: int) -> dict[str, Any]:
    """The JSON Schema of an infer body for ``spec``: one tensor per input, its datatypes,
    its values bounded like the request struct's fields, every required input present.

    What JSON Schema cannot say is in the description: every tensor has the same number of
    values, and its ``shape`` multiplies out to that number."""
    item = msgspec.json.schema(spec.request_struct)
    fields = item["$defs"][item["$ref"].rsplit("/", 1)[1]]["properties"]
    kinds = _kinds(spec)
    optional = {n.name for n in spec.numeric if n.optional} | {spec.key}
    n_rows = {"type": "integer", "minimum": 1, "maximum": max_batch}
    obj_or_null = {"anyOf": [{"type": "object"}, {"type": "null"}]}
    tensors = []
    for name, datatypes in kinds.items():
        value = {k: v for k, v in fields[name].items() if k != "default"}
        tensors.append(
            {
                "type": "object",
                "title": name,
                "properties": {
                    "name": {"const": name},
                    "shape": {
                        "anyOf": [
                            {
                                "type": "array",
                                "prefixItems": [n_rows],
                                "minItems": 1,
                                "maxItems": 1,
                            },
                            {
                                "type": "array",
                                "prefixItems": [n_rows, {"const": 1}],
                                "minItems": 2,
                                "maxItems": 2,
                            },
                        ],
                        "description": "[n] or [n, 1]: n values, one per row",
                    },
                    "datatype": {"enum": list(datatypes)},
                    "data": {
                        "anyOf": [
                            {"type": "array", "items": value, "minItems": 1, "maxItems": max_batch},
                            {
                                "type": "array",
                                "items": {
                                    "type": "array",
                                    "items": value,
                                    "minItems": 1,
                                    "maxItems": 1,
                                },
                                "minItems": 1,
                                "maxItems": max_batch,
                            },
                        ]
                    },
                    "parameters": obj_or_null,
                },
                "required": ["name", "shape", "datatype", "data"],
            }
        )
    required = [name for name in kinds if name not in optional]
    return {
        "type": "object",
        "title": "InferRequest",
        "description": (
            f"One tensor per input (required: {', '.join(required)}); every tensor has the "
            f"same number of values n (1 to {max_batch}, MAX_BATCH_SIZE), and its shape is "
            "[n] or [n, 1]. Without an order_id tensor the rows are numbered from 0."
        ),
        "properties": {
            "inputs": {
                "type": "array",
                "items": {"oneOf": tensors},
                "minItems": len(required),
                "allOf": [
                    {
                        "contains": {
                            "type": "object",
                            "properties": {"name": {"const": r}},
                            "required": ["name"],
                        }
                    }
                    for r in required
                ],
            },
            "outputs": {
                "anyOf": [
                    {
                        "type": "array",
                        "items": {
                            "type": "object",
                            "properties": {
                                "name": {"enum": list(OUTPUTS)},
                                "parameters": obj_or_null,
                            },
                            "required": ["name"],
                        },
                    },
                    {"type": "null"},
                ],
            },
            "id": {"anyOf": [{"type": "string"}, {"type": "null"}]},
            "parameters": obj_or_null,
        },
        "required": ["inputs"],
    }


def kserve_routes(
    core: V2Model,
    *,
    ids: Callable[[Request[Any, Any, Any]], tuple[str, str]] | None = None,
) -> list[Any]:
    """The V2 REST routes over ``core`` (the gRPC service serves the same object).
    ``ids(request)``: its ``(request id, unique id)`` (default: a fresh id for both)."""

    def check_name(name: str) -> Response[bytes] | None:
        if name != MODEL_NAME:
            return _err(404, f"unknown model {name!r}; this server serves {MODEL_NAME!r}")
        return None

    @get("/v2", tags=["kserve-v2"], responses={200: ResponseSpec(ServerMetadata)})
    async def server_meta() -> dict[str, Any]:
        from training import __version__

        return {"name": "intellilog", "version": __version__, "extensions": ["binary_tensor_data"]}

    @get("/v2/health/live", tags=["kserve-v2"], responses={200: ResponseSpec(Live)})
    async def v2_live() -> dict[str, bool]:
        return {"live": True}

    @get(
        "/v2/health/ready",
        tags=["kserve-v2"],
        responses={200: ResponseSpec(Ready), 503: ResponseSpec(Ready, description=_NOT_READY)},
    )
    async def v2_ready() -> Response[dict[str, bool]]:
        ok = core.is_ready()
        return Response({"ready": ok}, status_code=200 if ok else 503)

    @get(
        "/v2/models/{name:str}",
        tags=["kserve-v2"],
        responses={200: ResponseSpec(ModelMetadata), 404: _UNKNOWN_MODEL},
    )
    async def model_meta(name: FromPath[str]) -> Response[Any]:
        return check_name(name) or Response(core.metadata())

    @get(
        "/v2/models/{name:str}/ready",
        tags=["kserve-v2"],
        responses={
            200: ResponseSpec(ModelReady),
            404: _UNKNOWN_MODEL,
            503: ResponseSpec(ModelReady, description=_NOT_READY),
        },
    )
    async def model_ready(name: FromPath[str]) -> Response[Any]:
        bad = check_name(name)
        if bad:
            return bad
        ok = core.is_ready()
        return Response({"name": name, "ready": ok}, status_code=200 if ok else 503)

    @post(
        "/v2/models/{name:str}/infer",
        status_code=200,
        tags=["kserve-v2"],
        description=_INFER_DESCRIPTION,
        responses={
            200: ResponseSpec(
                InferResponse, description="the outputs asked for (default: all three)"
            ),
            400: ResponseSpec(V2Error, description="bad tensors; the message names the input"),
            404: _UNKNOWN_MODEL,
        },
    )
    async def infer(name: FromPath[str], request: Request[Any, Any, Any]) -> Response[bytes]:
        bad = check_name(name)
        if bad:
            return bad
        body = await request.body()
        header = request.headers.get(_HEADER)
        try:
            if header is not None:
                req = _split_binary(body, header, core.check_datatype)
            else:
                req = _dec.decode(body)
                sized = next(
                    (t.name for t in req.inputs if "binary_data_size" in (t.parameters or {})),
                    None,
                )
                if sized is not None:
                    raise V2InputError(
                        f"input {sized!r}: parameters.binary_data_size needs the binary "
                        "tensor data extension (an Inference-Header-Content-Length header)"
                    )
            batch = core.rows(req.inputs)
            wanted = core.outputs(
                [
                    (o.name, (o.parameters or {}).get("classification") is not None)
                    for o in req.outputs or []
                ]
            )
            default_binary = _flag(req.parameters, "binary_data_output", "parameters", False)
            binary = [
                _flag(o.parameters, "binary_data", f"outputs[{i}].parameters", default_binary)
                for i, o in enumerate(req.outputs or [])
            ] or [default_binary] * len(wanted)
        except (V2InputError, msgspec.ValidationError, msgspec.DecodeError) as exc:
            return _err(400, str(exc))
        if ids is not None:
            rid, uid = ids(request)
        else:
            rid = uid = new_request_id()
        ans = await core.score(batch, rid, uid)
        n = len(batch.items)
        if any(binary):
            tensors: list[dict[str, Any]] = []
            blobs: list[bytes] = []
            for w, as_bytes in zip(wanted, binary, strict=True):
                t: dict[str, Any] = {"name": w, "datatype": "FP64", "shape": [n]}
                values = ans.outputs[w]
                if as_bytes:
                    blob = values.astype("<f8", copy=False).tobytes()
                    t["parameters"] = {"binary_data_size": len(blob)}
                    blobs.append(blob)
                else:
                    t["data"] = values.tolist()
                tensors.append(t)
            head: dict[str, Any] = {
                "model_name": MODEL_NAME,
                "model_version": ans.version,
                "outputs": tensors,
            }
            if req.id is not None:
                head["id"] = req.id
            head["parameters"] = ans.parameters
            json_head = _enc.encode(head)
            answer = Response(
                b"".join([json_head, *blobs]),
                media_type="application/octet-stream",
                headers={"Inference-Header-Content-Length": str(len(json_head))},
            )
        else:
            resp = InferResponse(
                MODEL_NAME,
                ans.version,
                [OutTensor(w, "FP64", [n], ans.outputs[w].tolist()) for w in wanted],
                req.id,
                ans.parameters,
            )
            answer = Response(_enc.encode(resp), media_type=JSON)
        if ans.shadow is not None:
            answer.background = BackgroundTask(ans.shadow)
        return answer

    return [server_meta, v2_live, v2_ready, model_meta, model_ready, infer]
