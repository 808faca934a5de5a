"""Open Inference Protocol (KServe V2) REST routes, so KServe/Triton clients can call us.

One input tensor per spec field, all of shape ``[n]``: FP32/FP64 (or INT32/INT64) for
numbers, INT64 epoch seconds or BYTES (ISO 8601) for the event time, BYTES for
categories and for the optional ``order_id``. Outputs: ``eta_minutes``, ``eta_p10``,
``eta_p90`` (FP64 ``[n]``). JSON tensors only: the binary tensor extension is refused
with a clear message (tritonclient: ``binary_data=False``). Errors follow the
protocol's shape, ``{"error": "..."}``, with status 400 for bad input.

Every answered row is logged like the other prediction routes (``recorder``): its input
is the row's tensor values as sent (JSON), its order id the ``order_id`` tensor's value,
or none when that tensor was not sent.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import msgspec
from litestar import Request, Response, get, post
from litestar.background_tasks import BackgroundTask
from litestar.openapi.datastructures import ResponseSpec
from litestar.params import FromPath

from kernels.spec import FeatureSpec
from server.experiments.router import Part, Router, features, score_rows
from server.holder import ModelHolder
from server.recorder import new_request_id

if TYPE_CHECKING:
    from server.recorder import Recorder

__all__ = ["MODEL_NAME", "infer_request_schema", "kserve_routes"]

MODEL_NAME = "eta"
JSON = "application/json"
_NUM = ("FP32", "FP64", "INT32", "INT64")


class Tensor(msgspec.Struct):
    name: str
    shape: list[int]
    datatype: str
    data: list[Any]
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


_OUTPUTS = ("eta_minutes", "eta_p10", "eta_p90")
_UNKNOWN_MODEL = ResponseSpec(
    V2Error, description=f"no such model; this server serves {MODEL_NAME!r}"
)
_NOT_READY = "not ready: the model is loading or the store is not open"


_enc = msgspec.json.Encoder()
_dec = msgspec.json.Decoder(InferRequest)


class _V2Error(Exception):
    pass


def _err(status: int, message: str) -> Response[bytes]:
    return Response(_enc.encode(V2Error(message)), status_code=status, media_type=JSON)


def _flatten(data: list[Any]) -> list[Any]:
    if data and isinstance(data[0], list):
        if not all(isinstance(row, list) for row in data):
            raise _V2Error("tensor data mixes rows (lists) and values; send [n] or [n, 1] data")
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
                                "name": {"enum": list(_OUTPUTS)},
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
    holder: ModelHolder,
    spec: FeatureSpec,
    max_batch: int,
    *,
    recorder: Recorder | None = None,
    ids: Callable[[Request[Any, Any, Any]], tuple[str, str]] | None = None,
    ready: Callable[[], bool] | None = None,
    router: Router | None = None,
) -> list[Any]:
    """The V2 routes over ``holder``. ``recorder``: log every answered row (None: log
    nothing); ``ids(request)``: its ``(request id, unique id)``; ``ready()``: readiness
    (default: the model is loaded)."""
    Item = spec.request_struct

    def is_ready() -> bool:
        return ready() if ready is not None else holder.ready and holder.model is not None

    kinds = _kinds(spec)
    required = [c for c in spec.required_columns]
    optional = {n.name for n in spec.numeric if n.optional} | {spec.key}

    def metadata() -> dict[str, Any]:
        m = holder.model
        return {
            "name": MODEL_NAME,
            "versions": [m.version] if m else [],
            "platform": "lightgbm",
            "inputs": [
                {
                    "name": name,
                    "datatype": "FP64" if dt == _NUM else dt[0],
                    "shape": [-1],
                    "optional": name in optional,
                }
                for name, dt in kinds.items()
            ],
            "outputs": [
                {"name": o, "datatype": "FP64", "shape": [-1]}
                for o in ("eta_minutes", "eta_p10", "eta_p90")
            ],
        }

    def check_name(name: str) -> Response[bytes] | None:
        if name != MODEL_NAME:
            return _err(404, f"unknown model {name!r}; this server serves {MODEL_NAME!r}")
        return None

    def rows(req: InferRequest, sent: list[str] | None = None) -> list[Any]:
        """The request's rows as request structs; with ``sent``, each row's tensor values
        as sent (JSON) are appended to it."""
        seen: dict[str, list[Any]] = {}
        n: int | None = None
        for t in req.inputs:
            if t.name not in kinds:
                raise _V2Error(f"unknown input {t.name!r}; inputs are {', '.join(kinds)}")
            if t.datatype not in kinds[t.name]:
                raise _V2Error(
                    f"input {t.name!r}: datatype {t.datatype} not accepted (use {' or '.join(kinds[t.name])})"
                )
            data = _flatten(t.data)
            if (
                math.prod(t.shape) != len(data)
                or len(t.shape) not in (1, 2)
                or (len(t.shape) == 2 and t.shape[1] != 1)
            ):
                raise _V2Error(
                    f"input {t.name!r}: shape {t.shape} does not match {len(data)} values (use [n] or [n, 1])"
                )
            if n is not None and len(data) != n:
                raise _V2Error(f"input {t.name!r} has {len(data)} values, other inputs have {n}")
            n = len(data)
            if t.datatype.startswith("INT") and t.name in kinds and kinds[t.name] == _NUM:
                data = [
                    float(x) if isinstance(x, int) and not isinstance(x, bool) else x for x in data
                ]
            seen[t.name] = data
        missing = [c for c in required if c not in seen]
        if missing:
            raise _V2Error(f"missing input{'s' if len(missing) > 1 else ''} {', '.join(missing)}")
        if not n:
            raise _V2Error("inputs are empty")
        if n > max_batch:
            raise _V2Error(f"{n} rows exceed MAX_BATCH_SIZE={max_batch}")
        names = list(seen)
        cols = [seen[k] for k in names]
        dicts = [dict(zip(names, vals, strict=True)) for vals in zip(*cols, strict=True)]
        if sent is not None:
            sent.extend(_enc.encode(d).decode() for d in dicts)
        if spec.key not in seen:
            for i, d in enumerate(dicts):
                d[spec.key] = str(i)
        try:
            return msgspec.convert(dicts, list[Item])  # type: ignore[valid-type]
        except msgspec.ValidationError as exc:
            msg, _, where = str(exc).rpartition(" - at `$[")
            if not _:
                raise _V2Error(str(exc)) from None
            idx, _, field = where.rstrip("`").partition("].")
            raise _V2Error(f"input {field!r}[{idx}]: {msg}") from None

    @get("/v2", tags=["kserve-v2"], responses={200: ResponseSpec(ServerMetadata)})
    async def server_meta() -> dict[str, Any]:
        from training import __version__

        return {"name": "intellilog", "version": __version__, "extensions": []}

    @get("/v2/health/live", tags=["kserve-v2"], responses={200: ResponseSpec(Live)})
    async def v2_live() -> dict[str, bool]:
        return {"live": True}

    @get(
        "/v2/health/ready",
        tags=["kserve-v2"],
        responses={200: ResponseSpec(Ready), 503: ResponseSpec(Ready, description=_NOT_READY)},
    )
    async def v2_ready() -> Response[dict[str, bool]]:
        ok = is_ready()
        return Response({"ready": ok}, status_code=200 if ok else 503)

    @get(
        "/v2/models/{name:str}",
        tags=["kserve-v2"],
        responses={200: ResponseSpec(ModelMetadata), 404: _UNKNOWN_MODEL},
    )
    async def model_meta(name: FromPath[str]) -> Response[Any]:
        return check_name(name) or Response(metadata())

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
        ok = is_ready()
        return Response({"name": name, "ready": ok}, status_code=200 if ok else 503)

    @post(
        "/v2/models/{name:str}/infer",
        status_code=200,
        tags=["kserve-v2"],
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
        if "inference-header-content-length" in request.headers:
            return _err(
                400,
                "binary tensor data is not supported; send JSON tensors (tritonclient: binary_data=False)",
            )
        body = await request.body()
        sent: list[str] | None = [] if recorder is not None else None
        try:
            req = _dec.decode(body)
            items = rows(req, sent)
        except (_V2Error, msgspec.ValidationError, msgspec.DecodeError) as exc:
            return _err(400, str(exc))
        outs_known = ("eta_minutes", "eta_p10", "eta_p90")
        wanted = [o.name for o in req.outputs] if req.outputs else list(outs_known)
        unknown = [w for w in wanted if w not in outs_known]
        if unknown:
            return _err(400, f"unknown output {unknown[0]!r}; outputs are {', '.join(outs_known)}")
        model = holder.model
        assert model is not None
        has_key = any(t.name == spec.key for t in req.inputs)
        if ids is not None:
            rid, uid = ids(request)
        else:
            rid = uid = new_request_id()

        route = router.route if router is not None else None

        def run() -> tuple[dict[str, list[float]], list[Any], list[Part], list[Any]]:
            orders = [getattr(it, spec.key) for it in items] if has_key else [None] * len(items)
            eta, p10, p90, parts = score_rows(route, model, items, orders)
            outs = {"eta_minutes": eta.tolist(), "eta_p10": p10.tolist(), "eta_p90": p90.tolist()}
            logged: list[Any] = []
            if recorder is not None and sent is not None:
                e, lo, hi = outs["eta_minutes"], outs["eta_p10"], outs["eta_p90"]
                for i, part in enumerate(parts):
                    pick = part.rows.tolist() if part.rows is not None else range(len(items))
                    logged.append(
                        recorder.texts_chunk(
                            rid,
                            uid if i == 0 else new_request_id(),
                            [orders[j] for j in pick],
                            [sent[j] for j in pick],
                            part.X,
                            [e[j] for j in pick],
                            [lo[j] for j in pick],
                            [hi[j] for j in pick],
                            part.model.version,
                            part.arm,
                        )
                    )
            return outs, logged, parts, orders

        outs, logged, parts, orders = run() if len(items) <= 256 else await asyncio.to_thread(run)
        if recorder is not None:
            for chunk in logged:
                recorder.submit(chunk)
        n = len(items)
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
        resp = InferResponse(
            MODEL_NAME,
            version,
            [OutTensor(w, "FP64", [n], outs[w]) for w in wanted],
            req.id,
            params,
        )
        answer = Response(_enc.encode(resp), media_type=JSON)
        if route is not None and route.shadow:  # scored off the response path

            async def shadow() -> None:
                cand_model = route.candidate
                X = features(cand_model, items)
                e, lo, hi = (a.tolist() for a in cand_model.predict(X))
                if recorder is not None and sent is not None:
                    recorder.submit(
                        recorder.texts_chunk(
                            rid,
                            new_request_id(),
                            orders,
                            sent,
                            X,
                            e,
                            lo,
                            hi,
                            cand_model.version,
                            "shadow",
                        )
                    )

            answer.background = BackgroundTask(shadow)
        return answer

    return [server_meta, v2_live, v2_ready, model_meta, model_ready, infer]
