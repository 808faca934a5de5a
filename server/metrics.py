"""Prometheus metrics (prometheus-client).

Multi-worker mode: ``intellilog serve --workers N`` (N > 1) points
``PROMETHEUS_MULTIPROC_DIR`` at a fresh folder before the workers start, so every
worker writes its samples there and ``/metrics`` aggregates all of them
(prometheus-client's multiprocess collector): totals are correct whichever worker
answers the scrape.
"""

from __future__ import annotations

import os

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

__all__ = [
    "BATCH_ROWS",
    "CONTENT_TYPE",
    "ERRORS",
    "MICRO_BATCH_ROWS",
    "MODEL_INFO",
    "MODEL_RELOADS",
    "PREDICTION_LATENCY",
    "RATE_LIMITED",
    "REQUESTS",
    "REQUEST_LATENCY",
    "render",
]

CONTENT_TYPE = CONTENT_TYPE_LATEST
_LAT = (0.0002, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)

REQUESTS = Counter("intellilog_http_requests_total", "HTTP requests", ["route", "method", "status"])
REQUEST_LATENCY = Histogram(
    "intellilog_http_request_duration_seconds",
    "HTTP request latency",
    ["route", "method", "status"],
    buckets=_LAT,
)
PREDICTION_LATENCY = Histogram(
    "intellilog_prediction_duration_seconds",
    "features + engine time per prediction call",
    ["kind"],
    buckets=_LAT,
)
BATCH_ROWS = Histogram(
    "intellilog_batch_rows",
    "rows per batch request",
    buckets=(1, 8, 64, 256, 1024, 4096, 10000, 100000),
)
MICRO_BATCH_ROWS = Histogram(
    "intellilog_micro_batch_rows",
    "single-row requests predicted together in one engine call",
    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256),
)
ERRORS = Counter("intellilog_errors_total", "errors by kind", ["kind"])
RATE_LIMITED = Counter("intellilog_rate_limited_total", "requests refused by the rate limit")
MODEL_RELOADS = Counter("intellilog_model_reloads_total", "model swaps", ["result"])
MODEL_INFO = Gauge(
    "intellilog_model_info",
    "the model being served (value 1)",
    ["version", "engine", "device"],
    multiprocess_mode="liveall",
)


def render() -> bytes:
    """The exposition text: this process's registry, or every worker's in multiprocess mode."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        from prometheus_client import multiprocess

        reg = CollectorRegistry()
        multiprocess.MultiProcessCollector(reg)
        return generate_latest(reg)
    return generate_latest()
