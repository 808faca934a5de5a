"""The HTTP server: a Litestar app served by granian (``intellilog serve``).

Bodies are read raw and decoded once by msgspec against the spec's strict struct
(Litestar's own decoding is lax: it accepts ``"52.5"`` for a float and ``"NaN"``),
so every bad input gets a 4xx naming the field. Responses are pre-encoded bytes.

Routes: ``POST /v1/predict``, ``POST /v1/predict/batch``, ``POST /v1/feedback``,
``GET /v1/models``, ``GET /health/live``, ``GET /health/ready``, ``GET /metrics``, the Open
Inference Protocol (KServe V2) under ``/v2``, and ``/v1/admin/{reload,promote,rollback}``
when ``ADMIN_TOKEN`` is set.

Every answered prediction is logged off the hot path (server.recorder: one row per
predicted row, queued without I/O, written in batches; ``PREDICTION_LOG=off`` logs none).
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import hmac
import ipaddress
import logging
import math
import signal
import time
from collections.abc import Awaitable, Callable
from typing import Annotated, Any, Literal
from urllib.parse import parse_qs

import msgspec
import numpy as np
from litestar import Litestar, Request, Response, asgi, get, post
from litestar.exceptions import HTTPException
from litestar.openapi import OpenAPIConfig
from litestar.openapi.datastructures import ResponseSpec
from litestar.openapi.plugins import JsonRenderPlugin
from litestar.openapi.spec import OpenAPIMediaType, RequestBody, Schema
from litestar.openapi.spec.enums import OpenAPIType
from litestar.openapi.spec.operation import Operation
from litestar.routes import HTTPRoute
from msgspec import Meta

from kernels.errors import (
    ConfigError,
    DataError,
    InferenceError,
    IntelliLogError,
    ModelLoadError,
    SpecError,
    StoreError,
)
from server import metrics
from server.config import Settings, load_settings
from server.experiments.router import INLINE_ROWS, Part, Router, features, score_rows
from server.experiments.routes import experiment_routes
from server.experiments.service import (
    ExperimentConflict,
    ExperimentNotFound,
    UnknownCandidate,
    start_options,
)
from server.feedback import Feedback, FeedbackAccepted, accepted, batch_struct, completed_epoch
from server.holder import ModelHolder
from server.logs import configure_logging
from server.microbatch import MicroBatcher
from server.models import LoadedModel
from server.monitoring.routes import monitoring
from server.recorder import ARM, Recorder, new_request_id
from server.store import SchemaVersionError, StoreDataError
from training.registry import ALIAS_RE, MAX_REF_LEN, Registry

__all__ = ["create_app", "serve_app"]

log = logging.getLogger("intellilog.server")

JSON = "application/json"
#: the longest version or alias name an admin body may carry (training.registry's bound)
_MAX_REF = MAX_REF_LEN
#: the Allow header of a 405 from the raw POST routes (RFC 9110 section 15.5.6)
ALLOW_POST = {"allow": "POST"}
Receive = Callable[[], Awaitable[Any]]
Send = Callable[[Any], Awaitable[None]]
#: what POST /v1/predict/batch's scoring returns: order ids, ETA, p10, p90, log chunks, parts
_BatchOut = tuple[list[str], list[float], list[float], list[float], list[Any], list[Part]]

# ---- errors: one table from product errors to HTTP -------------------------------------------

STATUS: dict[type[BaseException], tuple[int, str]] = {
    msgspec.ValidationError: (422, "validation_error"),
    msgspec.DecodeError: (400, "malformed_json"),
    # msgspec's answer to JSON nested deeper than the interpreter's recursion limit (~1000)
    RecursionError: (400, "malformed_json"),
    SpecError: (422, "spec_error"),
    DataError: (422, "data_error"),
    ExperimentNotFound: (404, "not_found"),
    ExperimentConflict: (409, "conflict"),
    UnknownCandidate: (422, "validation_error"),
    ConfigError: (400, "bad_request"),
    ModelLoadError: (503, "model_unavailable"),
    # before StoreError: the rows themselves were refused (e.g. a NUL character in a text)
    StoreDataError: (422, "data_error"),
    StoreError: (503, "store_unavailable"),
    InferenceError: (500, "inference_error"),
}


def _new_rid() -> str:
    """A fresh request id: 32 hex digits, time first (:func:`server.recorder.new_request_id`)."""
    return new_request_id()


class ErrorItem(msgspec.Struct):
    path: str
    message: str


class ErrorBody(msgspec.Struct, omit_defaults=True):
    status: int
    code: str
    message: str
    errors: list[ErrorItem] = []


class ErrorResponse(msgspec.Struct):
    error: ErrorBody
    request_id: str


class _ApiError(Exception):
    def __init__(
        self, status: int, code: str, message: str, errors: list[ErrorItem] | None = None
    ) -> None:
        super().__init__(message)
        self.status, self.code, self.errors = status, code, errors or []


def _split_msgspec(text: str, base: str = "$") -> ErrorItem:
    """'Expected `float` <= 90.0 - at `$.pickup_lat`' -> (path, message), path rooted at base."""
    msg, sep, where = text.rpartition(" - at `")
    if not sep:  # top-level errors carry no location
        msg, where = text, "$`"
    path = base + where.rstrip("`")[1:]
    for marker in ("unknown field `", "missing required field `"):
        if marker in msg:
            name = msg.split(marker, 1)[1].split("`", 1)[0]
            path = f"{path}.{name}"
    return ErrorItem(path, msg)


_enc = msgspec.json.Encoder()


def _error_response(
    request_id: str,
    status: int,
    code: str,
    message: str,
    errors: list[ErrorItem] | None = None,
    headers: dict[str, str] | None = None,
) -> Response[bytes]:
    body = ErrorResponse(ErrorBody(status, code, message, errors or []), request_id)
    h = {"x-request-id": request_id}
    if headers:
        h.update(headers)
    return Response(_enc.encode(body), status_code=status, media_type=JSON, headers=h)


def _rid(request: Request[Any, Any, Any]) -> str:
    rid = request.scope.get("_rid")
    if rid is None:
        given = request.headers.get("x-request-id", "")
        rid = given if 0 < len(given) <= 128 and given.isprintable() else _new_rid()
        request.scope["_rid"] = rid  # type: ignore[typeddict-unknown-key]
    return str(rid)


def _ids(request: Request[Any, Any, Any]) -> tuple[str, str]:
    """``(request id, unique id)``: the unique id is the request id when the server made
    it, a fresh one when the client sent its own (which need not be unique)."""
    rid = _rid(request)
    return rid, (_new_rid() if rid == request.headers.get("x-request-id") else rid)


def _handle_exception(request: Request[Any, Any, Any], exc: Exception) -> Response[bytes]:
    rid = _rid(request)
    answer_headers: dict[str, str] | None = None  # headers the answer must carry (405: Allow)
    if isinstance(exc, _ApiError):
        status, code, message, errors = exc.status, exc.code, str(exc), exc.errors
    elif isinstance(exc, msgspec.ValidationError):
        item = _split_msgspec(str(exc))
        status, code, message, errors = (
            422,
            "validation_error",
            f"{item.path}: {item.message}",
            [item],
        )
    elif isinstance(exc, HTTPException):
        status, code = exc.status_code, "http_error"
        message = str(exc.detail)
        errors = (
            [
                ErrorItem(str(e.get("key", "$")), str(e.get("message", "")))
                for e in (exc.extra or [])
                if isinstance(e, dict)
            ]
            if isinstance(exc.extra, list)
            else []
        )
        if status == 413:
            code, message = "body_too_large", "request body too large; send smaller batches"
        # RFC 9110: a 405 names the methods the route allows (Litestar's router sets it)
        allow = {k.lower(): v for k, v in (exc.headers or {}).items()}.get("allow")
        if status == 405 and allow:
            code = "method_not_allowed"
            message = f"{request.method} not allowed on {request.url.path}; use {allow}"
            answer_headers = {"allow": allow}
    else:
        errors = []
        status, code = next(
            (v for k, v in STATUS.items() if isinstance(exc, k)), (500, "internal_error")
        )
        message = str(exc) if status < 500 or isinstance(exc, IntelliLogError) else "internal error"
    metrics.ERRORS.labels(code).inc()
    if status >= 500:
        log.error(
            "%s %s -> %d %s (request %s)",
            request.method,
            request.url.path,
            status,
            exc,
            rid,
            exc_info=not isinstance(exc, IntelliLogError),
            extra={"request_id": rid},
        )
    else:
        log.info(
            "%s %s -> %d %s (request %s)",
            request.method,
            request.url.path,
            status,
            message,
            rid,
            extra={"request_id": rid},
        )
    return _error_response(rid, status, code, message, errors, answer_headers)


async def _send_error(scope: Any, send: Callable[[Any], Awaitable[None]], exc: Exception) -> None:
    """The error table's answer to ``exc``, sent as raw ASGI (for :class:`_Edge`'s fast routes)."""
    resp = _handle_exception(Request(scope), exc)
    body = bytes(resp.content)
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    headers += [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in resp.headers.items()]
    await send({"type": "http.response.start", "status": resp.status_code, "headers": headers})
    await send({"type": "http.response.body", "body": body})


# ---- response shapes ---------------------------------------------------------------------------


class Contribution(msgspec.Struct):
    feature: str
    minutes: float


class Prediction(msgspec.Struct, omit_defaults=True):
    order_id: str
    eta_minutes: float
    eta_p10: float
    eta_p90: float
    model_version: str
    request_id: str
    # "production", or the experiment arm that answered: "baseline" / "candidate"
    arm: str
    explanation: list[Contribution] | None = None
    base_minutes: float | None = None


class BatchItem(msgspec.Struct):
    order_id: str
    eta_minutes: float
    eta_p10: float
    eta_p90: float
    model_version: str
    arm: str


class BatchResponse(msgspec.Struct):
    predictions: list[BatchItem]
    count: int
    model_version: str
    request_id: str


class Alive(msgspec.Struct):
    status: Literal["alive"]


class Readiness(msgspec.Struct):
    """``GET /health/ready``: 200 when ready, 503 (same body) until then. ``store``:
    ``spooling`` when the database did not answer at start-up (rows wait in SPOOL_PATH)."""

    ready: bool
    model_version: str | None
    store: Literal["open", "spooling", "starting"]


# ---- the rate limiter and request metrics: one thin ASGI layer ---------------------------------


class _Buckets:
    """Token bucket per client address: ``rate`` requests per minute, burst = rate / 6 (>= 1)."""

    def __init__(self, per_minute: float) -> None:
        self.rate = per_minute / 60.0
        self.burst = max(1.0, per_minute / 6.0)
        self.state: dict[str, tuple[float, float]] = {}

    def take(self, key: str, now: float) -> float:
        """0 when allowed, else the seconds to wait."""
        tokens, last = self.state.get(key, (self.burst, now))
        tokens = min(self.burst, tokens + (now - last) * self.rate)
        if tokens >= 1.0:
            self.state[key] = (tokens - 1.0, now)
            if len(self.state) > 100_000:  # forget idle clients
                self.state.clear()
            return 0.0
        self.state[key] = (tokens, now)
        return (1.0 - tokens) / self.rate


_UNLIMITED = ("/health/", "/metrics", "/v2/health/")
#: the longest X-Forwarded-For entry taken as a client key (an IPv6 address with a zone fits)
_MAX_ADDR = 64


def _trusted(addr: str, trusted: tuple[Any, ...]) -> bool:
    try:
        ip = ipaddress.ip_address(addr.strip())
    except ValueError:
        return False
    return any(ip in net for net in trusted)


def _client_of(scope: Any, trusted: tuple[Any, ...]) -> str:
    """The address the rate limit counts a request against.

    The TCP peer, unless the peer is a trusted proxy (``TRUSTED_PROXIES``): then the
    right-most X-Forwarded-For address that is not itself trusted. Entries to its left
    were written by the client and can be anything, so they are never used; a peer
    outside the trusted set cannot move a request to another bucket with the header."""
    peer = str((scope.get("client") or ("?", 0))[0])
    if not trusted or not _trusted(peer, trusted):
        return peer
    hops = [
        part.strip()
        for k, v in scope.get("headers", ())
        if k == b"x-forwarded-for"
        for part in v.decode("latin-1").split(",")
    ]
    for hop in reversed(hops):
        if hop and not _trusted(hop, trusted):
            return hop[:_MAX_ADDR]
    # every hop is a trusted proxy: the first one is the client; no header: the peer
    return hops[0][:_MAX_ADDR] if hops and hops[0] else peer


class _Edge:
    """Counts and times every request by route template and status; applies the rate limit.

    ``fast`` maps exact paths to raw ASGI handlers that answer ``POST`` without going
    through Litestar's router and middleware (``/v1/predict``: they cost 15 µs of a
    ~95 µs request, bench/RESULTS.md, HTTP). The route stays registered in Litestar
    (OpenAPI, other methods); an exception takes the same error table
    (:func:`_handle_exception`) as every Litestar route.
    """

    def __init__(
        self,
        app: Litestar,
        limiter: _Buckets | None,
        fast: dict[str, Callable[..., Awaitable[None]]] | None = None,
        recorder: Recorder | None = None,
        trusted: tuple[Any, ...] = (),
    ) -> None:
        self.app = app
        self.limiter = limiter
        #: TRUSTED_PROXIES: peers whose X-Forwarded-For names the client (:func:`_client_of`)
        self.trusted = trusted
        self.fast = fast or {}
        #: the store and prediction log of the app (None outside create_app)
        self.recorder = recorder
        self._children: dict[tuple[str, str, int], tuple[Any, Any]] = {}
        #: route template -> its Allow header. Litestar's OPTIONS answer lists only the
        #: methods of the first handler registered on a path (two decorators on one path:
        #: GET and POST /v1/admin/experiments), so OPTIONS answers take it from here.
        self.allow: dict[str, bytes] = {
            r.path_format: ", ".join(sorted(r.methods)).encode()
            for r in getattr(app, "routes", [])
            if isinstance(r, HTTPRoute)
        }

    async def __call__(
        self,
        scope: Any,
        receive: Callable[[], Awaitable[Any]],
        send: Callable[[Any], Awaitable[None]],
    ) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        t0 = time.perf_counter()
        status = 500
        if self.limiter is not None and not scope["path"].startswith(_UNLIMITED):
            client = _client_of(scope, self.trusted)
            wait = self.limiter.take(client, t0)
            if wait > 0:
                metrics.RATE_LIMITED.inc()
                rid = _new_rid()
                body = _enc.encode(
                    ErrorResponse(
                        ErrorBody(
                            429,
                            "rate_limited",
                            f"too many requests from {client}; retry in {math.ceil(wait)} s",
                        ),
                        rid,
                    )
                )
                await send(
                    {
                        "type": "http.response.start",
                        "status": 429,
                        "headers": [
                            (b"content-type", b"application/json"),
                            (b"retry-after", str(math.ceil(wait)).encode()),
                            (b"x-request-id", rid.encode()),
                        ],
                    }
                )
                await send({"type": "http.response.body", "body": body})
                self._observe("rate_limited", scope["method"], 429, t0)
                return

        async def send_wrap(message: Any) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                allow = self.allow.get(scope.get("path_template", "")) if status == 204 else None
                if allow is not None and scope["method"] == "OPTIONS":
                    message["headers"] = [
                        (k, allow if k.lower() == b"allow" else v) for k, v in message["headers"]
                    ]
            await send(message)

        fast = self.fast.get(scope["path"]) if scope["method"] == "POST" else None
        try:
            if fast is None:
                await self.app(scope, receive, send_wrap)
            else:
                scope["path_template"] = scope["path"]
                try:
                    await fast(scope, receive, send_wrap)
                except Exception as exc:
                    await _send_error(scope, send_wrap, exc)
        finally:
            self._observe(scope.get("path_template") or "unmatched", scope["method"], status, t0)

    def _observe(self, route: str, method: str, status: int, t0: float) -> None:
        key = (route, method, status)
        ch = self._children.get(key)
        if ch is None:
            s = str(status)
            ch = (
                metrics.REQUESTS.labels(route, method, s),
                metrics.REQUEST_LATENCY.labels(route, method, s),
            )
            self._children[key] = ch
        ch[0].inc()
        ch[1].observe(time.perf_counter() - t0)


# ---- OpenAPI: document the raw-body routes with the spec's JSON schema --------------------------


#: JSON Schema keywords kept as they are, with their name on litestar's Schema
_SCHEMA_VALUES = {
    "enum": "enum",
    "const": "const",
    "multipleOf": "multiple_of",
    "minimum": "minimum",
    "maximum": "maximum",
    "exclusiveMinimum": "exclusive_minimum",
    "exclusiveMaximum": "exclusive_maximum",
    "minLength": "min_length",
    "maxLength": "max_length",
    "pattern": "pattern",
    "minItems": "min_items",
    "maxItems": "max_items",
    "uniqueItems": "unique_items",
    "minProperties": "min_properties",
    "maxProperties": "max_properties",
    "required": "required",
    "title": "title",
    "description": "description",
    "default": "default",
    "examples": "examples",
}
#: keywords that hold one subschema, a list of them, or a name -> subschema table
_SCHEMA_ONE = {
    "items": "items",
    "not": "schema_not",
    "contains": "contains",
    "propertyNames": "property_names",
}
_SCHEMA_LIST = {
    "anyOf": "any_of",
    "oneOf": "one_of",
    "allOf": "all_of",
    "prefixItems": "prefix_items",
}
_SCHEMA_MAP = {"properties": "properties", "patternProperties": "pattern_properties"}


def _schema(js: dict[str, Any], defs: dict[str, Any]) -> Schema:
    """A JSON Schema (msgspec's output, ``$ref`` into ``defs``) as litestar's Schema, every
    keyword kept: a constraint lost here is a request the document calls valid and the
    server refuses (``additionalProperties: false``, ``pattern``, ``minItems``)."""
    from litestar.openapi.spec.enums import OpenAPIFormat

    if "$ref" in js:
        return _schema(defs[js["$ref"].rsplit("/", 1)[1]], defs)
    kw: dict[str, Any] = {dst: js[src] for src, dst in _SCHEMA_VALUES.items() if src in js}
    t = js.get("type")
    if t is not None:
        kw["type"] = [OpenAPIType(x) for x in t] if isinstance(t, list) else OpenAPIType(t)
    if js.get("format") in {f.value for f in OpenAPIFormat}:
        kw["format"] = OpenAPIFormat(js["format"])
    for src, dst in _SCHEMA_ONE.items():
        if src in js:
            kw[dst] = _schema(js[src], defs)
    for src, dst in _SCHEMA_LIST.items():
        if src in js:
            kw[dst] = [_schema(v, defs) for v in js[src]]
    for src, dst in _SCHEMA_MAP.items():
        if src in js:
            kw[dst] = {k: _schema(v, defs) for k, v in js[src].items()}
    extra = js.get("additionalProperties")
    if extra is False:
        kw["additional_properties"] = False
    elif isinstance(extra, dict):
        kw["additional_properties"] = _schema(extra, defs)
    return Schema(**kw)


# ---- the app -----------------------------------------------------------------------------------


def serve_app() -> Any:
    """granian's factory (``intellilog serve``): :func:`create_app`, with a model that
    cannot be loaded (an alias broken after the server started, then a worker restart)
    ending the worker with one log line instead of a traceback."""
    try:
        return create_app()
    except IntelliLogError as exc:
        log.critical("cannot start: %s", exc, extra={"event": "worker_start_failed"})
        raise SystemExit(3) from None


def create_app(settings: Settings | None = None, holder: ModelHolder | None = None) -> Any:
    """Build the ASGI app (granian runs it through :func:`serve_app`)."""
    settings = settings or load_settings()
    configure_logging(settings.environment, settings.log_level)
    if holder is None:
        holder = ModelHolder(
            Registry(settings.registry_path),
            settings.model_alias,
            settings.engine,
            allow_gpu=settings.allow_gpu,
            gpu_min_rows=settings.gpu_min_rows,
        )
    # the spec (and so the request struct) comes from the served model; load it now so a
    # missing model fails start-up with a clear message
    if holder.model is None:
        holder.load_initial()
    assert holder.model is not None
    spec = holder.model.pipe.spec
    Item = spec.request_struct
    max_batch = int(settings.max_batch_size)
    # the store and the prediction log: opened by the lifespan (on_startup)
    rec = Recorder(settings)
    log_on = rec.enabled
    # live quality and drift: timers over the store, gauges, /v1/monitoring/*
    mon = monitoring(settings, holder, rec)
    # experiments (ENABLE_AB_TESTING): which model answers which order; None = production
    router = Router(holder, settings.tenant_id) if settings.enable_ab_testing else None

    def open_store() -> Any:
        """The store while it is open (None while the database is down)."""
        return rec.store if rec.store_open else None

    # built with defstruct: the item type exists only at run time (it comes from the spec)
    BatchRequest = msgspec.defstruct(
        "BatchRequest",
        [("deliveries", Annotated[list[Item], Meta(min_length=1, max_length=max_batch)])],  # type: ignore[valid-type]
        forbid_unknown_fields=True,
    )
    _RawBatch = msgspec.defstruct("RawBatch", [("deliveries", list[msgspec.Raw])])

    dec_one = msgspec.json.Decoder(Item)
    dec_batch = msgspec.json.Decoder(BatchRequest)
    dec_raw = msgspec.json.Decoder(_RawBatch)
    key = spec.key
    names = list(spec.feature_names)
    explainers: dict[str, Any] = {}

    def explain(model: LoadedModel, X: np.ndarray) -> tuple[list[Contribution], float]:
        booster = explainers.get(model.version)
        if booster is None:
            import lightgbm as lgb

            booster = lgb.Booster(model_file=str(model.predictor.model_dir / "eta.txt"))
            explainers.clear()
            explainers[model.version] = booster
        contrib = booster.predict(X, pred_contrib=True)[0]
        order = np.argsort(-np.abs(contrib[:-1]))[:5]
        return [Contribution(names[i], float(contrib[i])) for i in order], float(contrib[-1])

    def batch_errors(body: bytes) -> list[ErrorItem]:
        """Every bad row with its index and field (decode row by row after a failure)."""
        try:
            raw: Any = dec_raw.decode(body)
        except msgspec.ValidationError as exc:
            return [_split_msgspec(str(exc))]
        errs: list[ErrorItem] = []
        if not raw.deliveries:
            errs.append(ErrorItem("$.deliveries", "Expected at least one delivery"))
        if len(raw.deliveries) > max_batch:
            errs.append(
                ErrorItem(
                    "$.deliveries",
                    f"Expected at most {max_batch} deliveries (MAX_BATCH_SIZE), got {len(raw.deliveries)}",
                )
            )
            return errs
        for i, r in enumerate(raw.deliveries):
            try:
                dec_one.decode(r)
            except msgspec.ValidationError as exc:
                errs.append(_split_msgspec(str(exc), f"$.deliveries[{i}]"))
        return errs

    max_body = int(settings.max_body_mb * 1024 * 1024)
    single_latency = metrics.PREDICTION_LATENCY.labels("single")
    batcher = MicroBatcher(settings.micro_batch_max)
    batch_latency = metrics.PREDICTION_LATENCY.labels("batch")

    async def read_json(scope: Any, receive: Receive) -> tuple[bytes, str, str | None]:
        """Body, request id and (when the server made the request id) that id again, of a
        JSON POST, straight from ASGI (one header pass)."""
        ct, given = b"", b""
        for k, v in scope["headers"]:
            if k == b"content-type":
                ct = v
            elif k == b"x-request-id":
                given = v
        own: str | None = None
        if 0 < len(given) <= 128:
            rid = given.decode("latin-1")
        else:
            rid = own = _new_rid()
        scope["_rid"] = rid
        if scope["method"] != "POST":
            raise HTTPException(
                status_code=405,
                detail=f"{scope['method']} not allowed; use POST",
                headers=ALLOW_POST,
            )
        if not ct.lower().startswith(b"application/json"):
            raise _ApiError(
                415,
                "unsupported_media_type",
                f"Content-Type must be {JSON}, got {ct.decode('latin-1') or 'none'!r}",
            )
        parts: list[bytes] = []  # joined once: += would copy the body for every part
        size = 0
        while True:
            msg = await receive()
            part = msg.get("body", b"")
            size += len(part)
            if size > max_body:
                raise HTTPException(status_code=413, detail="request body too large")
            parts.append(part)
            if not msg.get("more_body", False):
                return (parts[0] if len(parts) == 1 else b"".join(parts)), rid, own

    async def send_json(send: Send, payload: bytes, rid: str) -> None:
        headers = [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(payload)).encode()),
            (b"x-request-id", rid.encode("latin-1")),
        ]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": payload})

    # The two prediction routes are Litestar ASGI routes: routed, and guarded by the
    # error table and exception middleware like every route, but without Litestar's
    # Request/signature/Response layers, which cost about twice the features and the
    # model (bench/RESULTS.md, HTTP). _document() adds them to the OpenAPI document.
    # POST /v1/predict is also answered in front of Litestar by _Edge (same handler,
    # same error table): the router and middleware were 15 us of a ~95 us request.
    async def predict_one(scope: Any, receive: Receive, send: Send) -> None:
        body, rid, own = await read_json(scope, receive)
        item = dec_one.decode(body)
        model = holder.model
        assert model is not None
        order = getattr(item, key)
        route = router.route if router is not None else None
        arm = ARM
        if route is not None:  # an experiment runs: the order's arm answers
            model, arm = route.pick(model, order)
        t0 = time.perf_counter()
        X = model.pipe.row(item, np.empty((1, model.pipe.n_features), dtype=np.float32))
        eta, p10, p90 = await batcher.predict(model, X)
        single_latency.observe(time.perf_counter() - t0)
        if log_on:
            rec.submit_one(
                rid, own or _new_rid(), order, body, X, eta, p10, p90, model.version, arm
            )
        out = Prediction(order, eta, p10, p90, model.version, rid, arm)
        qs = scope.get("query_string", b"")
        if qs:
            flag = parse_qs(qs.decode("latin-1")).get("explain", [""])[-1].lower()
            if flag in ("1", "true", "yes"):
                out.explanation, out.base_minutes = explain(model, X)
        await send_json(send, _enc.encode(out), rid)
        if route is not None and route.shadow:  # after the answer is sent
            s_eta, s_p10, s_p90 = await batcher.predict(route.candidate, X)
            if log_on:
                v = route.candidate.version
                rec.submit_one(rid, _new_rid(), order, body, X, s_eta, s_p10, s_p90, v, "shadow")

    predict = asgi("/v1/predict", copy_scope=False)(predict_one)

    @asgi("/v1/predict/batch", copy_scope=False)
    async def predict_batch(scope: Any, receive: Receive, send: Send) -> None:
        body, rid, own = await read_json(scope, receive)
        try:
            batch = dec_batch.decode(body)
        except msgspec.ValidationError as exc:
            errs = batch_errors(body) or [_split_msgspec(str(exc))]
            raise _ApiError(
                422, "validation_error", f"{len(errs)} invalid deliveries; nothing was scored", errs
            ) from None
        items = batch.deliveries  # type: ignore[attr-defined]
        model = holder.model
        assert model is not None
        t0 = time.perf_counter()
        uid = (own or _new_rid()) if log_on else ""

        route = router.route if router is not None else None

        def run() -> _BatchOut:
            orders = [getattr(it, key) for it in items]
            eta, p10, p90, parts = score_rows(route, model, items, orders)
            e, lo, hi = eta.tolist(), p10.tolist(), p90.tolist()
            logged: list[Any] = []
            if log_on and len(parts) == 1:  # one chunk: inputs are split off the hot path
                p = parts[0]
                logged.append(
                    rec.chunk(
                        rid,
                        uid,
                        orders,
                        body,
                        p.X,
                        e,
                        lo,
                        hi,
                        p.model.version,
                        rows_at="deliveries",
                        arm=p.arm,
                    )
                )
            elif log_on:  # an A/B test: one chunk per arm, of its rows' inputs as sent
                sent = dec_raw.decode(body).deliveries  # type: ignore[attr-defined]
                for part in parts:
                    pick = part.rows.tolist() if part.rows is not None else []
                    inputs = [sent[i] for i in pick]
                    logged.append(
                        rec.chunk(
                            rid,
                            _new_rid(),
                            [orders[i] for i in pick],
                            b"".join(inputs),
                            part.X,
                            [e[i] for i in pick],
                            [lo[i] for i in pick],
                            [hi[i] for i in pick],
                            part.model.version,
                            sizes=[len(r) for r in inputs],
                            arm=part.arm,
                        )
                    )
            return orders, e, lo, hi, logged, parts

        # small batches inline; big ones off the event loop so other requests keep flowing
        n = len(items)
        big = n > INLINE_ROWS
        orders, eta, p10, p90, logged, parts = await asyncio.to_thread(run) if big else run()
        batch_latency.observe(time.perf_counter() - t0)
        metrics.BATCH_ROWS.observe(n)
        for chunk in logged:
            rec.submit(chunk)
        if len(parts) == 1:
            v, arm = parts[0].model.version, parts[0].arm
            preds = [
                BatchItem(o, e, lo, hi, v, arm)
                for o, e, lo, hi in zip(orders, eta, p10, p90, strict=True)
            ]
        else:
            who: list[tuple[str, str]] = [("", "")] * n
            for part in parts:
                for i in part.rows.tolist() if part.rows is not None else []:
                    who[i] = (part.model.version, part.arm)
            preds = [
                BatchItem(o, e, lo, hi, v, arm)
                for o, e, lo, hi, (v, arm) in zip(orders, eta, p10, p90, who, strict=True)
            ]
        await send_json(send, _enc.encode(BatchResponse(preds, n, model.version, rid)), rid)
        if route is not None and route.shadow:  # after the answer is sent
            await shadow_batch(route, items, orders, body, rid)

    async def shadow_batch(
        route: Any, items: list[Any], orders: list[str], body: bytes, rid: str
    ) -> None:
        """The candidate scores the batch off the response path (features by its own
        pipeline); logged with arm ``shadow``, never returned."""
        cand = route.candidate

        def run() -> Any:
            X = features(cand, items)
            e, lo, hi = (a.tolist() for a in cand.predict(X))
            if not log_on:
                return None
            v = cand.version
            return rec.chunk(
                rid, _new_rid(), orders, body, X, e, lo, hi, v, rows_at="deliveries", arm="shadow"
            )

        chunk = run() if len(orders) <= INLINE_ROWS else await asyncio.to_thread(run)
        if chunk is not None:
            rec.submit(chunk)

    @get("/health/live", tags=["health"], responses={200: ResponseSpec(Alive)})
    async def live() -> dict[str, str]:
        return {"status": "alive"}

    Batch = batch_struct(max_batch)
    dec_feedback_keys = msgspec.json.Decoder(dict[str, msgspec.Raw])
    dec_feedback_one = msgspec.json.Decoder(Feedback)
    dec_feedback_batch = msgspec.json.Decoder(Batch)
    dec_feedback_raw = msgspec.json.Decoder(list[msgspec.Raw])

    def feedback_rows(body: bytes) -> list[Feedback]:
        """The rows of a feedback body; 422 naming every bad row and field."""
        keys = dec_feedback_keys.decode(body)  # must be an object
        if "feedback" not in keys:
            return [dec_feedback_one.decode(body)]
        try:
            return list(dec_feedback_batch.decode(body).feedback)  # type: ignore[attr-defined]
        except msgspec.ValidationError as exc:
            errs: list[ErrorItem] = []
            try:
                raws = dec_feedback_raw.decode(keys["feedback"])
            except msgspec.ValidationError:
                raws = []
            if len(raws) > max_batch:
                errs.append(
                    ErrorItem(
                        "$.feedback",
                        f"Expected at most {max_batch} rows (MAX_BATCH_SIZE), got {len(raws)}",
                    )
                )
            else:
                for i, r in enumerate(raws):
                    try:
                        dec_feedback_one.decode(r)
                    except msgspec.ValidationError as e:
                        errs.append(_split_msgspec(str(e), f"$.feedback[{i}]"))
            errs = errs or [_split_msgspec(str(exc))]
            raise _ApiError(
                422, "validation_error", f"{len(errs)} invalid feedback rows; none stored", errs
            ) from None

    @post("/v1/feedback", status_code=202, tags=["feedback"], include_in_schema=False)
    async def feedback(request: Request[Any, Any, Any]) -> Response[bytes]:
        ct = request.headers.get("content-type", "")
        if not ct.lower().startswith(JSON):
            raise _ApiError(
                415,
                "unsupported_media_type",
                f"Content-Type must be {JSON}, got {ct or 'none'!r}",
            )
        rows = feedback_rows(await request.body())
        result = await rec.write_feedback(
            [(r.order_id, r.actual_minutes, completed_epoch(r.completed_at)) for r in rows]
        )
        return Response(
            _enc.encode(accepted(len(rows), result)),
            status_code=202,
            media_type=JSON,
            headers={"x-request-id": _rid(request)},
        )

    def is_ready() -> bool:
        return holder.ready and holder.model is not None and rec.ready

    @get(
        "/health/ready",
        tags=["health"],
        responses={
            200: ResponseSpec(Readiness),
            503: ResponseSpec(Readiness, description="not ready yet (model, store or warm-up)"),
        },
    )
    async def ready() -> Response[dict[str, Any]]:
        m = holder.model
        ok = is_ready()
        body = {
            "ready": ok,
            "model_version": m.version if m else None,
            # "spooling": the database did not answer at start-up; rows wait in SPOOL_PATH
            "store": "open" if rec.store_open else ("spooling" if rec.ready else "starting"),
        }
        return Response(body, status_code=200 if ok else 503)

    @get("/v1/models", tags=["models"])
    async def models() -> dict[str, Any]:
        m = holder.model
        reg = holder.registry
        d = m.describe() if m else {}
        return {
            "serving": {
                "version": m.version if m else None,
                "alias": holder.alias,
                "engine": m.engine_name if m else None,
                "device": m.device if m else None,
                # the GPU engine for batches of >= min_rows rows, or None and why not
                "large_batch": d.get("large_batch"),
                "large_batch_reason": d.get("large_batch_reason"),
                "spec": spec.name,
                "spec_hash": spec.hash,
                "metrics": (m.manifest.get("metrics", {}).get("model") if m else None),
            },
            "aliases": reg.aliases(),
            "versions": reg.versions(),
            "last_reload_error": holder.last_error,
        }

    @get("/metrics", media_type=metrics.CONTENT_TYPE, tags=["monitoring"], include_in_schema=False)
    async def prometheus() -> Response[bytes]:
        rec.publish()
        return Response(metrics.render(), media_type=metrics.CONTENT_TYPE)

    handlers: list[Any] = [predict, predict_batch, feedback, live, ready, models, prometheus]
    handlers += mon.handlers
    from server.kserve import V2Model, infer_request_schema, kserve_routes

    # the V2 protocol's model: the REST routes and the gRPC service (GRPC_PORT) serve it
    v2 = V2Model(
        holder,
        spec,
        max_batch,
        recorder=rec if log_on else None,
        ready=is_ready,
        router=router,
        batcher=batcher,
    )
    handlers += kserve_routes(v2, ids=_ids)

    if settings.admin_token:
        token = settings.admin_token

        def _auth(request: Request[Any, Any, Any]) -> None:
            got = request.headers.get("authorization", "")
            if not hmac.compare_digest(got.encode(), f"Bearer {token}".encode()):
                raise _ApiError(
                    401,
                    "unauthorized",
                    "admin endpoints need 'Authorization: Bearer <ADMIN_TOKEN>'",
                )

        AliasChange = msgspec.defstruct(
            "AliasChange",
            [
                ("version", Annotated[str, Meta(max_length=_MAX_REF)] | None, None),
                ("alias", Annotated[str, Meta(max_length=_MAX_REF)], settings.model_alias),
            ],
            forbid_unknown_fields=True,
        )

        dec_change = msgspec.json.Decoder(AliasChange)

        async def _change(request: Request[Any, Any, Any]) -> Any:
            body = await request.body()
            return dec_change.decode(body) if body.strip() else AliasChange()

        @post("/v1/admin/reload", status_code=200, tags=["admin"])
        async def admin_reload(request: Request[Any, Any, Any]) -> Response[bytes]:
            _auth(request)
            res = await holder.reload("admin reload")
            if res.get("error"):
                raise _ApiError(
                    409,
                    "reload_refused",
                    f"new model refused, still serving {res.get('version')}: {res['error']}",
                )
            return Response(_enc.encode(res), media_type=JSON)

        @post("/v1/admin/promote", status_code=200, tags=["admin"])
        async def admin_promote(request: Request[Any, Any, Any]) -> Response[bytes]:
            _auth(request)
            ch = await _change(request)
            if not ch.version:
                raise _ApiError(
                    422,
                    "validation_error",
                    "$.version: required",
                    [ErrorItem("$.version", "required")],
                )
            try:
                prev = await asyncio.to_thread(holder.registry.promote, ch.version, ch.alias)
            except ModelLoadError as exc:
                raise _ApiError(404, "not_found", str(exc)) from None
            res = await holder.reload("admin promote") if ch.alias == holder.alias else {}
            return Response(
                _enc.encode(
                    {
                        "alias": ch.alias,
                        "previous": prev,
                        "version": holder.registry.resolve(ch.alias),
                        "reload": res,
                    }
                ),
                media_type=JSON,
            )

        @post("/v1/admin/rollback", status_code=200, tags=["admin"])
        async def admin_rollback(request: Request[Any, Any, Any]) -> Response[bytes]:
            _auth(request)
            ch = await _change(request)
            try:
                v = await asyncio.to_thread(holder.registry.rollback, ch.alias)
            except ModelLoadError as exc:  # no earlier version, or it was deleted
                raise _ApiError(409, "conflict", str(exc)) from None
            res = await holder.reload("admin rollback") if ch.alias == holder.alias else {}
            return Response(
                _enc.encode({"alias": ch.alias, "version": v, "reload": res}), media_type=JSON
            )

        handlers += [admin_reload, admin_promote, admin_rollback]

        async def routing_changed() -> None:
            if router is not None and rec.store is not None:
                await router.refresh(rec.store)

        handlers += experiment_routes(
            auth=_auth,
            store_of=open_store,
            registry=holder.registry,
            tenant=settings.tenant_id,
            defaults=start_options(settings),
            changed=routing_changed,
        )

    tasks: list[asyncio.Task[None]] = []
    grpc_servers: list[Any] = []  # started by on_startup when GRPC_PORT is set

    async def _reload(reason: str) -> None:
        await holder.reload(reason)

    async def on_startup() -> None:
        # migrations now; a database newer than this code stops start-up here
        try:
            await rec.start()
        except SchemaVersionError as exc:
            log.critical("cannot start: %s", exc, extra={"event": "store_schema_newer"})
            raise
        tasks.append(asyncio.create_task(holder.watch(settings.reload_interval_s)))
        if router is not None:
            tasks.append(asyncio.create_task(router.watch(open_store, settings.reload_interval_s)))
        tasks.extend(asyncio.create_task(loop()) for loop in mon.loops)
        if settings.grpc_port:  # the V2 gRPC service in this worker (server/grpc)
            from server.grpc import start_grpc

            grpc_servers.append(
                await start_grpc(v2, settings.grpc_host, settings.grpc_port, max_body)
            )
        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
            loop = asyncio.get_running_loop()
            loop.add_signal_handler(
                signal.SIGHUP, lambda: tasks.append(asyncio.create_task(_reload("SIGHUP")))
            )

    async def on_shutdown() -> None:
        for g in grpc_servers:  # calls in flight finish (and log) before the store closes
            await g.stop(5.0)
        for t in tasks:
            t.cancel()
        await rec.close()  # every queued prediction to the store, or the spool
        log.info("shut down")

    app = Litestar(
        route_handlers=handlers,
        exception_handlers={Exception: _handle_exception},
        # server.logs configures logging; Litestar's default config would add its own
        # handler on the root logger, bound to whatever sys.stderr was at app creation
        logging_config=None,
        on_startup=[on_startup],
        on_shutdown=[on_shutdown],
        request_max_body_size=max_body,
        openapi_config=OpenAPIConfig(
            title="IntelliLog-AI",
            version="1",
            description="Delivery ETAs. Bodies are validated strictly against the feature spec.",
            render_plugins=[JsonRenderPlugin()],  # JSON only: no HTML page that needs a CDN
        ),
        debug=False,
    )
    _document(
        app,
        Item,
        BatchRequest,
        Batch,
        infer_body=infer_request_schema(spec, max_batch),
        rate_limited=settings.rate_limit_per_minute > 0,
    )
    limiter = (
        _Buckets(settings.rate_limit_per_minute) if settings.rate_limit_per_minute > 0 else None
    )
    # the start-up heap (model, numba, onnxruntime, Litestar) leaves the collector's view:
    # full collections walked it every few seconds under load (85-115 ms pauses)
    gc.collect()
    gc.freeze()
    return _Edge(
        app,
        limiter,
        fast={"/v1/predict": predict_one},
        recorder=rec,
        trusted=settings.trusted_networks,
    )


#: what each error status means, whichever route answers it (the body is ErrorResponse)
_ERRORS: dict[int, str] = {
    400: "malformed JSON, or a value the server refuses (the message says which)",
    401: "missing or wrong 'Authorization: Bearer <ADMIN_TOKEN>'",
    404: "no such version or experiment",
    409: "refused in the current state (the message says why)",
    413: "request body larger than MAX_BODY_MB; send smaller batches",
    415: "Content-Type is not application/json",
    422: "a field is missing, unknown, of the wrong type or out of bounds; errors[] names each",
    429: "RATE_LIMIT_PER_MINUTE exceeded for this client; retry after Retry-After seconds",
    503: "the store (database and spool) or the model is not available; retry",
}
#: the error statuses each operation can answer (besides 429, added when rate limiting is on)
_ANSWERS: dict[tuple[str, str], tuple[int, ...]] = {
    ("post", "/v1/predict"): (400, 413, 415, 422),
    ("post", "/v1/predict/batch"): (400, 413, 415, 422),
    ("post", "/v1/feedback"): (400, 413, 415, 422, 503),
    ("post", "/v2/models/{name}/infer"): (413,),
    ("post", "/v1/admin/reload"): (401, 409),
    ("post", "/v1/admin/promote"): (400, 401, 404, 413, 422, 503),
    ("post", "/v1/admin/rollback"): (400, 401, 409, 413, 422, 503),  # 409: nothing earlier
    ("get", "/v1/admin/experiments"): (401, 503),
    ("post", "/v1/admin/experiments"): (400, 401, 404, 409, 413, 422, 503),
    # 404: an unknown experiment id (the message lists the latest ones); 409: a rule of
    # the experiment's state (one running at a time, stop only a running one)
    ("get", "/v1/admin/experiments/{experiment_id}"): (400, 401, 404, 503),
    ("get", "/v1/admin/experiments/{experiment_id}/analysis"): (400, 401, 404, 503),
    ("post", "/v1/admin/experiments/{experiment_id}/stop"): (400, 401, 404, 409, 413, 422, 503),
    ("post", "/v1/admin/experiments/{experiment_id}/conclude"): (
        400,
        401,
        404,
        409,
        413,
        422,
        503,
    ),
}


def _document(
    app: Litestar,
    item: Any,
    batch: Any,
    feedback_batch: Any,
    *,
    infer_body: dict[str, Any],
    rate_limited: bool,
) -> None:
    """Make the generated OpenAPI document say what the server accepts and answers.

    Adds the raw-body routes (predictions, feedback: their schemas come from the spec's
    structs) and the V2 infer body; gives every operation each status it can answer
    (:data:`_ANSWERS`, 429 when ``rate_limited``) with the error body; puts the admin
    routes behind the bearer scheme; and drops litestar's generic 400 body, which this
    server never sends (its error table answers instead)."""
    from litestar._openapi.plugin import OpenAPIPlugin
    from litestar.openapi.spec import Components, Parameter, PathItem, Reference, SecurityScheme
    from litestar.openapi.spec import OpenAPIHeader as Header
    from litestar.openapi.spec import OpenAPIResponse as OAResponse

    from server.kserve import MODEL_NAME

    def schema_of(t: Any) -> Schema:
        js = msgspec.json.schema(t)
        return _schema(js, js.get("$defs", {}))

    def error(status: int) -> OAResponse:
        headers: dict[str, Header | Reference] | None = None
        if status == 429:
            headers = {
                "retry-after": Header(
                    schema=Schema(type=OpenAPIType.INTEGER, minimum=1),
                    required=True,
                    description="seconds until the next request is allowed",
                )
            }
        return OAResponse(
            description=_ERRORS[status],
            content={JSON: OpenAPIMediaType(schema=schema_of(ErrorResponse))},
            headers=headers,
        )

    def op(body: Any, out: Any, summary: str, op_id: str, explain: bool = False) -> Operation:
        params = [
            Parameter(
                name="explain",
                param_in="query",
                required=False,
                # any value is accepted: these three turn it on, anything else leaves it off
                schema=Schema(type=OpenAPIType.STRING),
                description="1, true or yes (any case): add the top feature contributions",
            )
        ]
        return Operation(
            operation_id=op_id,
            summary=summary,
            tags=["predict"],
            parameters=params if explain else None,  # type: ignore[arg-type]
            request_body=RequestBody(
                content={JSON: OpenAPIMediaType(schema=schema_of(body))}, required=True
            ),
            responses={
                "200": OAResponse(
                    description="ETAs", content={JSON: OpenAPIMediaType(schema=schema_of(out))}
                ),
            },
        )

    doc = app.plugins.get(OpenAPIPlugin).provide_openapi()
    paths = dict(doc.paths or {})
    paths["/v1/predict"] = PathItem(
        post=op(item, Prediction, "ETA for one delivery", "V1Predict", explain=True)
    )
    paths["/v1/predict/batch"] = PathItem(
        post=op(batch, BatchResponse, "ETAs for many deliveries, in order", "V1PredictBatch")
    )
    fb = op(Feedback, FeedbackAccepted, "Actual delivery times", "V1Feedback")
    fb.tags = ["feedback"]
    fb.description = (
        'One row, or {"feedback": [rows]} (up to MAX_BATCH_SIZE). Answered 202 once every '
        "row is durable: committed in the database, or in the spool while it is down."
    )
    fb.request_body = RequestBody(
        content={
            JSON: OpenAPIMediaType(
                schema=Schema(any_of=[schema_of(Feedback), schema_of(feedback_batch)])
            )
        },
        required=True,
    )
    fb.responses = {
        "202": OAResponse(
            description="stored",
            content={JSON: OpenAPIMediaType(schema=schema_of(FeedbackAccepted))},
        ),
    }
    paths["/v1/feedback"] = PathItem(post=fb)

    # the admin alias bodies: promote needs a version; the alias defaults to MODEL_ALIAS
    alias = Schema(type=OpenAPIType.STRING, pattern=f"^{ALIAS_RE.pattern}$", max_length=_MAX_REF)
    for path, needs_version in (("/v1/admin/promote", True), ("/v1/admin/rollback", False)):
        admin_op = paths[path].post if path in paths else None
        if admin_op is not None:
            props = {"alias": alias}
            if needs_version:
                props["version"] = Schema(
                    type=OpenAPIType.STRING, min_length=1, max_length=_MAX_REF
                )
            admin_op.request_body = RequestBody(
                content={
                    JSON: OpenAPIMediaType(
                        schema=Schema(
                            type=OpenAPIType.OBJECT,
                            properties=props,  # type: ignore[arg-type]
                            required=["version"] if needs_version else None,
                            additional_properties=False,
                        )
                    )
                },
                required=needs_version,
            )
    quality = paths["/v1/monitoring/quality"].get if "/v1/monitoring/quality" in paths else None
    if quality is not None and quality.responses is not None:
        quality.responses["503"] = OAResponse(
            description="no quality snapshot yet: the first refresh has not finished",
            content={
                JSON: OpenAPIMediaType(
                    schema=Schema(
                        type=OpenAPIType.OBJECT,
                        properties={
                            "status": Schema(const="pending"),
                            "detail": Schema(type=OpenAPIType.STRING),
                        },
                        required=["status", "detail"],
                    )
                )
            },
        )
    infer = paths["/v2/models/{name}/infer"].post
    assert infer is not None
    infer.request_body = RequestBody(
        content={JSON: OpenAPIMediaType(schema=_schema(infer_body, {}))}, required=True
    )
    admin = False
    for path, item_ in paths.items():
        for method in ("get", "post"):
            operation: Operation | None = getattr(item_, method)
            if operation is None:
                continue
            responses = dict(operation.responses or {})
            for code, resp in list(responses.items()):
                media = (resp.content or {}).get(JSON) if isinstance(resp, OAResponse) else None
                sch = media.schema if media is not None else None
                if isinstance(sch, Schema) and {"status_code", "detail"} <= set(
                    sch.properties or {}
                ):
                    del responses[code]  # litestar's own 400 body: never sent here
                elif isinstance(sch, Schema) and code.startswith("2") and sch.type == "string":
                    media.schema = Schema(type=OpenAPIType.OBJECT)  # type: ignore[union-attr]
            codes = set(_ANSWERS.get((method, path), ()))
            if rate_limited and not path.startswith(_UNLIMITED):
                codes.add(429)
            for code_ in sorted(codes):
                responses.setdefault(str(code_), error(code_))
            operation.responses = responses
            if path.startswith("/v1/admin"):
                admin = True
                operation.security = [{"bearer": []}]
            for prm in operation.parameters or []:
                if (
                    isinstance(prm, Parameter)
                    and path.startswith("/v2/models/")
                    and prm.name == "name"
                ):
                    prm.schema = Schema(type=OpenAPIType.STRING, enum=[MODEL_NAME])
                    prm.description = f"the model's name: {MODEL_NAME!r} (any other: 404)"
    doc.paths = paths
    if admin:
        doc.components = doc.components or Components()
        doc.components.security_schemes = {
            "bearer": SecurityScheme(
                type="http", scheme="bearer", description="Authorization: Bearer <ADMIN_TOKEN>"
            )
        }
