"""The retraining run log as Prometheus gauges, refreshed on the monitoring timer.

``intellilog retrain`` runs outside the server (cron, a Kubernetes CronJob); the run log
(``RUN_LOG``, default ``runs.jsonl`` in the registry) is what it leaves behind. The
server reads it every ``QUALITY_INTERVAL_S`` and exports, per outcome, the end time of
the latest run and the number of runs, plus the start of the first run, so alerts can
say "the last run was refused" and "no run trained a model in 8 days"
(build/monitoring/prometheus/alerts.yml). The file is re-read only when its size or
modification time changed. While there is no run log, nothing is exported.
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

from server import metrics
from server.monitoring.timer import refresh_every
from server.runs import OUTCOMES, RunLog

__all__ = ["RetrainMonitor"]


class RetrainMonitor:
    """Publishes the run log's outcomes as gauges (see the module docstring)."""

    def __init__(self, path: Path) -> None:
        self.log = RunLog(path)
        self._seen: tuple[int, int] | None = None

    def refresh(self) -> bool:
        """Read the log if it changed and set the gauges; True when it was read."""
        try:
            st = os.stat(self.log.path)
        except FileNotFoundError:
            return False
        key = (st.st_size, st.st_mtime_ns)
        if key == self._seen:
            return False
        records = self.log.records()
        counts = dict.fromkeys(OUTCOMES, 0)
        last: dict[str, float] = {}
        for rec in records:
            outcome = rec.get("outcome")
            if outcome not in counts:
                continue
            counts[outcome] += 1
            ended = rec.get("ended_at")
            if isinstance(ended, int | float):
                last[outcome] = max(last.get(outcome, 0.0), float(ended))
        for outcome, n in counts.items():
            metrics.RETRAIN_RUNS.labels(outcome).set(n)
        for outcome, t in last.items():
            metrics.RETRAIN_LAST_RUN.labels(outcome).set(t)
        starts = [r["started_at"] for r in records if isinstance(r.get("started_at"), int | float)]
        if starts:
            metrics.RETRAIN_FIRST_RUN.set(min(starts))
        self._seen = key
        return True

    async def _refresh(self) -> None:
        # a stat and, when it changed, a read of the whole file: off the event loop
        await asyncio.to_thread(self.refresh)

    async def run(self, interval_s: float) -> None:
        """Refresh now, then every ``interval_s`` seconds, until cancelled."""
        await refresh_every(self._refresh, interval_s, "retrain run log", (OSError,))
