"""``GET /v1/monitoring/quality`` and ``GET /v1/monitoring/drift`` over the two monitors,
and the monitors' timers (started by the app's lifespan).

Both monitors read the store on their own timer (``QUALITY_INTERVAL_S``,
``DRIFT_INTERVAL_S``) and set their gauges; the routes answer the latest snapshot and
never touch the database. Drift runs only with ``ENABLE_DRIFT_DETECTION``; without it
the drift route answers 404 and nothing is computed.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from litestar import Response, get

from server.config import Settings
from server.holder import ModelHolder
from server.monitoring.drift import DriftMonitor, drift_route_payload, promoted_at
from server.monitoring.quality import (
    QualityMonitor,
    lookback_for,
    quality_route_payload,
    tolerance_minutes_for,
)
from server.monitoring.retrain import RetrainMonitor
from server.recorder import Recorder
from server.runs import run_log_path

__all__ = ["Monitoring", "monitoring"]


@dataclass
class Monitoring:
    """The monitoring routes and the coroutines the lifespan runs as tasks."""

    handlers: list[Any]
    loops: list[Callable[[], Any]] = field(default_factory=list)


def monitoring(settings: Settings, holder: ModelHolder, rec: Recorder) -> Monitoring:
    def store() -> Any:
        return rec.store if rec.store_open else None

    def spec() -> Any:
        m = holder.model
        return m.pipe.spec if m is not None else None

    quality = QualityMonitor(
        store,
        settings.tenant_id,
        tolerance_minutes=lambda: tolerance_minutes_for(spec()),
        windows=settings.quality_window_list,
        lookback_s=lambda: lookback_for(spec()),
    )

    @get("/v1/monitoring/quality", tags=["monitoring"])
    async def quality_route() -> Response[dict[str, Any]]:
        body = quality_route_payload(quality.snapshot)
        return Response(body, status_code=200 if body["status"] == "ok" else 503)

    out = Monitoring([quality_route], [lambda: quality.run(settings.quality_interval_s)])
    # the retraining run log (RUN_LOG) as gauges, on the same timer as live quality
    runs = RetrainMonitor(run_log_path(settings.run_log, settings.model_artifact_path))
    out.loops.append(lambda: runs.run(settings.quality_interval_s))
    if not settings.enable_drift_detection:
        return out

    drift = DriftMonitor(
        store,
        lambda: holder.model,
        settings.tenant_id,
        window_s=settings.drift_window_s,
        serving_since=lambda v: promoted_at(holder.registry, holder.alias, v),
        cycles=settings.drift_cycle_seconds,
    )

    @get("/v1/monitoring/drift", tags=["monitoring"])
    async def drift_route() -> dict[str, Any]:
        return drift_route_payload(drift.snapshot)

    out.handlers.append(drift_route)
    out.loops.append(lambda: drift.run(settings.drift_interval_s))
    return out
