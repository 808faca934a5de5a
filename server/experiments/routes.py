"""``/v1/admin/experiments``: the ``intellilog ab`` verbs over HTTP, behind the admin token.

- ``GET  /v1/admin/experiments``                    every experiment, newest first
- ``POST /v1/admin/experiments``                    start one (body: :class:`StartOptions`)
- ``GET  /v1/admin/experiments/{id}``               one experiment
- ``GET  /v1/admin/experiments/{id}/analysis``      per-arm quality, test, recommendation
- ``POST /v1/admin/experiments/{id}/stop``          end it without a decision
- ``POST /v1/admin/experiments/{id}/conclude``      apply the recommendation (or a decision
  with a reason: body ``{"decision": ..., "reason": ...}``)

The store's errors and bad input go through the server's error table (400 for a rule
broken, 422 naming the field, 503 when the store is down). After a change the server
refreshes its routing at once; other workers follow within ``RELOAD_INTERVAL_S``.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Annotated, Any

import msgspec
from litestar import Request, Response, get, post
from litestar.params import FromPath
from msgspec import Meta

from kernels.errors import StoreError
from server.experiments import service
from server.experiments.cli import experiment_dict
from server.store import Store
from training.registry import Registry

__all__ = ["ConcludeBody", "StopBody", "experiment_routes"]

_JSON = "application/json"
_enc = msgspec.json.Encoder()


_Reason = Annotated[str, Meta(max_length=service.MAX_REASON)]


class StopBody(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    reason: _Reason = ""


class ConcludeBody(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    decision: Annotated[str, Meta(max_length=32)] | None = None
    reason: _Reason = ""


def experiment_routes(
    *,
    auth: Callable[[Request[Any, Any, Any]], None],
    store_of: Callable[[], Store | None],
    registry: Registry,
    tenant: str,
    defaults: service.StartOptions,
    changed: Callable[[], Awaitable[None]],
) -> list[Any]:
    """The admin experiment handlers. ``defaults`` fills what a start body leaves out
    (the AB_* settings); ``changed`` refreshes this worker's routing."""

    def store() -> Store:
        s = store_of()
        if s is None:
            raise StoreError("the store is not open (DATABASE_URL unreachable); try again")
        return s

    dec_start = msgspec.json.Decoder(dict[str, Any])

    def body_of(raw: bytes, t: type[Any]) -> Any:
        return msgspec.json.decode(raw, type=t) if raw.strip() else t()

    def reply(payload: Any, status: int = 200) -> Response[bytes]:
        return Response(_enc.encode(payload), status_code=status, media_type=_JSON)

    def by(request: Request[Any, Any, Any]) -> str:
        client = request.client.host if request.client else "unknown"
        return f"admin api ({client})"

    @get("/v1/admin/experiments", tags=["admin"])
    async def list_experiments(request: Request[Any, Any, Any]) -> Response[bytes]:
        auth(request)
        every = await store().experiments(tenant)
        return reply({"experiments": [experiment_dict(e) for e in every]})

    @post("/v1/admin/experiments", tags=["admin"], status_code=201)
    async def start_experiment(request: Request[Any, Any, Any]) -> Response[bytes]:
        auth(request)
        given = dec_start.decode(await request.body() or b"{}")
        fields = msgspec.structs.asdict(defaults) | {"reason": ""} | given
        opts = msgspec.convert(fields, service.StartOptions)
        exp = await service.start(store(), registry, tenant, opts, by=by(request))
        await changed()
        return reply(experiment_dict(exp), 201)

    @get("/v1/admin/experiments/{experiment_id:str}", tags=["admin"])
    async def show_experiment(
        request: Request[Any, Any, Any], experiment_id: FromPath[str]
    ) -> Response[bytes]:
        auth(request)
        return reply(experiment_dict(await service.find(store(), tenant, experiment_id)))

    @get("/v1/admin/experiments/{experiment_id:str}/analysis", tags=["admin"])
    async def analyze_experiment(
        request: Request[Any, Any, Any], experiment_id: FromPath[str]
    ) -> Response[bytes]:
        auth(request)
        exp = await service.find(store(), tenant, experiment_id)
        result = await service.analyze(store(), registry, exp)
        return reply({"experiment": experiment_dict(exp), "analysis": result.to_dict()})

    @post("/v1/admin/experiments/{experiment_id:str}/stop", tags=["admin"], status_code=200)
    async def stop_experiment(
        request: Request[Any, Any, Any], experiment_id: FromPath[str]
    ) -> Response[bytes]:
        auth(request)
        body = body_of(await request.body(), StopBody)
        exp = await service.stop(
            store(), registry, tenant, experiment_id, by=by(request), reason=body.reason
        )
        await changed()
        return reply(experiment_dict(exp))

    @post("/v1/admin/experiments/{experiment_id:str}/conclude", tags=["admin"], status_code=200)
    async def conclude_experiment(
        request: Request[Any, Any, Any], experiment_id: FromPath[str]
    ) -> Response[bytes]:
        auth(request)
        body = body_of(await request.body(), ConcludeBody)
        exp, result = await service.conclude(
            store(),
            registry,
            tenant,
            experiment_id,
            by=by(request),
            decision=body.decision,
            reason=body.reason,
        )
        await changed()
        return reply({"experiment": experiment_dict(exp), "analysis": result.to_dict()})

    return [
        list_experiments,
        start_experiment,
        show_experiment,
        analyze_experiment,
        stop_experiment,
        conclude_experiment,
    ]
