"""The ceiling: the work of ``/v1/predict`` and ``/v1/predict/batch`` on raw granian RSGI.

No framework, no middleware, no metrics: read the body, decode it once with msgspec
into the spec's strict request struct, build the features with the same kernels
(``Pipeline.row`` / ``Pipeline.columns`` + ``Pipeline.matrix``), predict with the same
engine, and answer the same JSON shape and ``x-request-id`` header. Whatever
``intellilog serve`` spends beyond this is framework and middleware cost.

The model is the one the server would serve: ``load_model`` on the registry in
``MODEL_ARTIFACT_PATH`` (alias ``MODEL_ALIAS``, engine ``INTELLILOG_ENGINE``, as read by
``server.config.load_settings``), warmed up with ``server.holder.warm_up``.

Run (from the repository root)::

    MODEL_ARTIFACT_PATH=models .venv/bin/granian --interface rsgi --workers 1 \\
        --host 127.0.0.1 --port 8001 bench/http/rsgi_ceiling.py:app

Bad input gets a short 4xx (enough for a benchmark; the product's error bodies are richer).
"""

from __future__ import annotations

import os
from typing import Annotated, Any

import msgspec
import numpy as np
from msgspec import Meta

from server.app import BatchItem, BatchResponse, Prediction  # the product's response shapes
from server.config import load_settings
from server.holder import warm_up
from server.models import load_model
from training.registry import Registry

__all__ = ["app"]

_settings = load_settings()
_model = load_model(
    Registry(_settings.registry_path), _settings.model_alias, engine=_settings.engine, threads=1
)
warm_up(_model)
_pipe = _model.pipe
_spec = _pipe.spec
_Item = _spec.request_struct
_KEY = _spec.key
_VERSION = _model.version
_MAX_BATCH = int(_settings.max_batch_size)


_BatchRequest = msgspec.defstruct(
    "BatchRequest",
    [("deliveries", Annotated[list[_Item], Meta(min_length=1, max_length=_MAX_BATCH)])],  # type: ignore[valid-type]
    forbid_unknown_fields=True,
)
_dec_one = msgspec.json.Decoder(_Item)
_dec_batch = msgspec.json.Decoder(_BatchRequest)
_enc = msgspec.json.Encoder()
_row_out = np.empty((1, _pipe.n_features), dtype=np.float32)
_READY = _enc.encode({"ready": True, "model_version": _VERSION})
_MODELS = _enc.encode(
    {"serving": {"version": _VERSION, "engine": _model.engine_name, "device": _model.device}}
)


def _rid(scope: Any) -> str:
    given = scope.headers.get("x-request-id", "")
    return given if 0 < len(given) <= 128 and given.isprintable() else os.urandom(16).hex()


def _json(protocol: Any, status: int, body: bytes, rid: str | None = None) -> None:
    headers = [("content-type", "application/json")]
    if rid is not None:
        headers.append(("x-request-id", rid))
    protocol.response_bytes(status, headers, body)


def _predict_one(body: bytes, rid: str) -> bytes:
    item = _dec_one.decode(body)
    X = _pipe.row(item, _row_out)
    eta, p10, p90 = _model.predictor.predict_one(X)
    out = Prediction(getattr(item, _KEY), eta, p10, p90, _VERSION, rid, "production")
    return _enc.encode(out)


def _predict_batch(body: bytes, rid: str) -> bytes:
    items = _dec_batch.decode(body).deliveries  # type: ignore[attr-defined]
    eta, p10, p90 = _model.predict(_pipe.matrix(_pipe.columns(items)))
    preds = [
        BatchItem(getattr(it, _KEY), e, lo, hi, _VERSION, "production")
        for it, e, lo, hi in zip(items, eta.tolist(), p10.tolist(), p90.tolist(), strict=True)
    ]
    return _enc.encode(BatchResponse(preds, len(preds), _VERSION, rid))


_ROUTES = {"/v1/predict": _predict_one, "/v1/predict/batch": _predict_batch}


async def app(scope: Any, protocol: Any) -> None:
    """The RSGI entry point (HTTP only)."""
    path = scope.path
    if scope.method == "POST" and path in _ROUTES:
        ct = scope.headers.get("content-type", "")
        if not ct.lower().startswith("application/json"):
            _json(protocol, 415, b'{"error":"unsupported_media_type"}')
            return
        body = await protocol()
        rid = _rid(scope)
        try:
            out = _ROUTES[path](body, rid)
        except msgspec.ValidationError as exc:
            _json(protocol, 422, _enc.encode({"error": str(exc)}), rid)
            return
        except msgspec.DecodeError as exc:
            _json(protocol, 400, _enc.encode({"error": str(exc)}), rid)
            return
        _json(protocol, 200, out, rid)
        return
    if scope.method == "GET" and path in ("/health/ready", "/v1/models"):
        _json(protocol, 200, _READY if path == "/health/ready" else _MODELS)
        return
    _json(protocol, 404, b'{"error":"not_found"}')
