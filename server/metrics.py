"""Prometheus metrics (prometheus-client).

Multi-worker mode: ``intellilog serve --workers N`` (N > 1) points
``PROMETHEUS_MULTIPROC_DIR`` at a fresh folder before the workers start, so every
worker writes its samples there and ``/metrics`` aggregates all of them
(prometheus-client's multiprocess collector): totals are correct whichever worker
answers the scrape.
"""

from __future__ import annotations

import contextlib
import glob
import math
import os
from typing import Any

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
    "FEEDBACK_ROWS",
    "MICRO_BATCH_ROWS",
    "MODEL_INFO",
    "MODEL_RELOADS",
    "PREDICTION_LATENCY",
    "PREDICTION_LOG_OVERFLOW",
    "PREDICTION_LOG_QUEUE",
    "PREDICTION_LOG_ROWS",
    "RATE_LIMITED",
    "REQUESTS",
    "REQUEST_LATENCY",
    "RETRAIN_FIRST_RUN",
    "RETRAIN_LAST_RUN",
    "RETRAIN_RUNS",
    "forget",
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

# The prediction log (server.recorder): rows committed to the store, written to the spool
# while the store was down (or the queue full), replayed from the spool, lost (neither
# store nor spool could take them). Spooled and replayed also count feedback rows that
# waited in the spool; written counts predictions only.
PREDICTION_LOG_ROWS = Counter(
    "intellilog_prediction_log_rows_total",
    "prediction-log rows by outcome",
    ["outcome"],
)
for _outcome in ("written", "spooled", "replayed", "dropped"):
    PREDICTION_LOG_ROWS.labels(_outcome)
# Predictions the log writer's ring (server.store.relay) had no room for: logged by the
# worker itself instead, on its own core (the writer is behind, or gone).
PREDICTION_LOG_OVERFLOW = Counter(
    "intellilog_prediction_log_relay_overflow_rows_total",
    "predictions logged in the worker because the log writer's ring was full",
)
PREDICTION_LOG_QUEUE = Gauge(
    "intellilog_prediction_log_queue_depth",
    "predictions waiting in memory for the store",
    multiprocess_mode="livesum",
)
# Feedback rows stored: inserted (new order id) or updated (order id seen before);
# unknown counts the rows of either kind whose order id matches no logged prediction.
FEEDBACK_ROWS = Counter("intellilog_feedback_rows_total", "feedback rows stored", ["result"])
for _result in ("inserted", "updated", "unknown"):
    FEEDBACK_ROWS.labels(_result)

# Retraining (server.monitoring.retrain reads the run log, RUN_LOG, on the quality timer):
# when the latest run of each outcome ended, how many runs of each outcome it holds, and
# when its first run started ("mostrecent": every worker reads the same file).
RETRAIN_LAST_RUN = Gauge(
    "intellilog_retrain_last_run_timestamp_seconds",
    "end time of the latest retraining run, by outcome (skipped|refused|archived|candidate|failed)",
    ["outcome"],
    multiprocess_mode="mostrecent",
)
RETRAIN_RUNS = Gauge(
    "intellilog_retrain_runs",
    "retraining runs recorded in the run log, by outcome",
    ["outcome"],
    multiprocess_mode="mostrecent",
)
RETRAIN_FIRST_RUN = Gauge(
    "intellilog_retrain_first_run_timestamp_seconds",
    "start time of the first retraining run in the run log",
    multiprocess_mode="mostrecent",
)


def forget(gauge: Gauge, *labels: str) -> None:
    """Drop one series of ``gauge`` (a label set no longer measured). In multiprocess mode
    (``PROMETHEUS_MULTIPROC_DIR``) prometheus-client cannot remove a series, so it is set to
    NaN instead (with ``multiprocess_mode="mostrecent"`` the latest value wins)."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        gauge.labels(*labels).set(math.nan)
    else:
        gauge.remove(*labels)


class _WorkerFiles:
    """prometheus-client's multiprocess collector over the files that hold data.

    A worker creates its file empty and sizes it a moment later; a scrape in between (a
    worker starting or being replaced), or a file left empty by a worker killed in that
    moment, made the whole scrape fail (struct.error, a 500). An empty file holds no
    samples, so it is skipped."""

    def __init__(self, path: str) -> None:
        self.path = path

    def collect(self) -> Any:
        from prometheus_client.multiprocess import MultiProcessCollector

        files = []
        for f in glob.glob(os.path.join(self.path, "*.db")):
            with contextlib.suppress(OSError):  # removed meanwhile
                if os.path.getsize(f) >= 8:
                    files.append(f)
        return MultiProcessCollector.merge(files, accumulate=True)


def render() -> bytes:
    """The exposition text: this process's registry, or every worker's in multiprocess mode."""
    path = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if path:
        reg = CollectorRegistry()
        reg.register(_WorkerFiles(path))
        return generate_latest(reg)
    return generate_latest()
