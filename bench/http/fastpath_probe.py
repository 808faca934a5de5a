"""Probes (not product code): what ``/v1/predict`` costs on lighter paths through our app.

Both factories build the product app with ``server.app.create_app`` (same model, settings,
metrics, ``_Edge`` layer) and answer ``POST /v1/predict`` another way:

* ``fastpath`` — the route is answered in front of Litestar, in raw ASGI: read the body
  from ``receive``, decode with the spec's struct, ``Pipeline.row``, predict, send the
  same JSON and ``x-request-id``, and record the same metrics (``PREDICTION_LATENCY`` and
  ``_Edge._observe``). Everything else (errors included) goes to the product app.
* ``asgi_route`` — the same raw-ASGI handler mounted as a Litestar ``@asgi`` route, so
  Litestar's router and exception middleware stay in the path but its ``Request``,
  signature parsing and ``Response`` conversion do not.
* ``microbatch`` — ``fastpath`` with micro-batching: each request builds its feature row,
  then waits; once per event-loop turn the rows of every request waiting are predicted
  as one batch (tree-major batch kernel) and each request gets its own answer. The
  difference to ``fastpath`` is what coalescing concurrent single requests is worth.
* ``gc_frozen`` — the product app unchanged, with ``gc.collect(); gc.freeze()`` once the
  model is loaded: the start-up heap (model, numba, onnxruntime, Litestar) leaves the
  collector's view, so the full (generation 2) collections that Litestar's per-request
  garbage triggers no longer walk it (they took 85–115 ms each here).

Run with ``bench/http/run.py --servers ours,fastpath,asgi_route,ceiling`` or by hand::

    MODEL_ARTIFACT_PATH=models .venv/bin/granian --interface asgi --factory --workers 1 \\
        --port 8003 bench/http/fastpath_probe.py:fastpath

Only valid bodies take the probe's path: a malformed one gets a bare 4xx here.
"""

from __future__ import annotations

import asyncio
import gc
import os
import time
from collections.abc import Awaitable, Callable
from typing import Any

import msgspec
import numpy as np
from litestar import Litestar
from litestar.handlers import asgi

from server import metrics
from server.app import Prediction, _Edge, create_app
from server.config import load_settings
from server.holder import ModelHolder
from training.registry import Registry

__all__ = ["asgi_route", "fastpath", "gc_frozen", "microbatch"]

Receive = Callable[[], Awaitable[Any]]
Send = Callable[[Any], Awaitable[None]]


def _build(coalesce: bool = False) -> tuple[Any, Callable[[Any, Receive, Send], Awaitable[int]]]:
    settings = load_settings()
    holder = ModelHolder(Registry(settings.registry_path), settings.model_alias, settings.engine)
    holder.load_initial()
    edge = create_app(settings, holder)
    assert holder.model is not None
    spec = holder.model.pipe.spec
    dec = msgspec.json.Decoder(spec.request_struct)
    enc = msgspec.json.Encoder()
    key = spec.key
    latency = metrics.PREDICTION_LATENCY.labels("single")
    max_body = int(settings.max_body_mb * 1024 * 1024)
    waiting: list[tuple[np.ndarray, asyncio.Future[tuple[float, float, float]]]] = []
    sizes: list[int] = []

    def flush() -> None:
        batch = waiting[:]
        waiting.clear()
        sizes.append(len(batch))
        model = holder.model
        assert model is not None
        if len(batch) == 1:
            batch[0][1].set_result(model.predictor.predict_one(batch[0][0]))
            return
        eta, p10, p90 = model.predict(np.concatenate([x for x, _ in batch]))
        for (_, fut), r in zip(
            batch, zip(eta.tolist(), p10.tolist(), p90.tolist(), strict=True), strict=True
        ):
            fut.set_result(r)

    async def predict_one(model: Any, X: np.ndarray) -> tuple[float, float, float]:
        if not coalesce:
            return model.predictor.predict_one(X)  # type: ignore[no-any-return]
        fut = asyncio.get_running_loop().create_future()
        waiting.append((X, fut))
        if len(waiting) == 1:
            asyncio.get_running_loop().call_soon(flush)
        return await fut

    async def answer(scope: Any, receive: Receive, send: Send) -> int:
        ct, given = b"", b""
        for k, v in scope["headers"]:
            if k == b"content-type":
                ct = v
            elif k == b"x-request-id":
                given = v
        body = b""
        while True:
            msg = await receive()
            body += msg.get("body", b"")
            if len(body) > max_body:
                return await _bare(send, 413)
            if not msg.get("more_body", False):
                break
        if not ct.lower().startswith(b"application/json"):
            return await _bare(send, 415)
        try:
            item = dec.decode(body)
        except msgspec.ValidationError:
            return await _bare(send, 422)
        except msgspec.DecodeError:
            return await _bare(send, 400)
        model = holder.model
        assert model is not None
        t0 = time.perf_counter()
        X = model.pipe.row(item, np.empty((1, model.pipe.n_features), dtype=np.float32))
        eta, p10, p90 = await predict_one(model, X)
        latency.observe(time.perf_counter() - t0)
        rid = given.decode() if 0 < len(given) <= 128 else os.urandom(16).hex()
        out = enc.encode(
            Prediction(getattr(item, key), eta, p10, p90, model.version, rid, "production")
        )
        headers = [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(out)).encode()),
            (b"x-request-id", rid.encode()),
        ]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": out})
        return 200

    return edge, answer


async def _bare(send: Send, status: int) -> int:
    await send({"type": "http.response.start", "status": status, "headers": []})
    await send({"type": "http.response.body", "body": b""})
    return status


def fastpath(coalesce: bool = False) -> Any:
    """The product app with ``POST /v1/predict`` (no query string) answered in front of it."""
    edge, answer = _build(coalesce)

    async def app(scope: Any, receive: Receive, send: Send) -> None:
        if (
            scope["type"] == "http"
            and scope["method"] == "POST"
            and scope["path"] == "/v1/predict"
            and not scope["query_string"]
        ):
            t0 = time.perf_counter()
            status = await answer(scope, receive, send)
            edge._observe("/v1/predict", "POST", status, t0)
            return
        await edge(scope, receive, send)

    return app


def microbatch() -> Any:
    """``fastpath`` with concurrent single requests predicted together, once per loop turn."""
    return fastpath(coalesce=True)


def asgi_route() -> Any:
    """``POST /v1/predict`` as a Litestar ``@asgi`` route behind an ``_Edge`` layer; every
    other request goes to the product app."""
    edge, answer = _build()

    @asgi("/v1/predict", copy_scope=False)
    async def predict(scope: Any, receive: Receive, send: Send) -> None:
        await answer(scope, receive, send)

    routed = _Edge(Litestar(route_handlers=[predict], debug=False), None)

    async def app(scope: Any, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "POST" and scope["path"] == "/v1/predict":
            await routed(scope, receive, send)
            return
        await edge(scope, receive, send)

    return app


def gc_frozen() -> Any:
    """The product app, with the start-up heap frozen out of the garbage collector."""
    app = create_app()
    gc.collect()
    gc.freeze()
    return app
