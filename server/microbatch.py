"""Micro-batching: concurrent single-row requests predicted in one engine call.

``POST /v1/predict`` builds its feature row, then awaits :meth:`MicroBatcher.predict`.
The first request to wait schedules a flush for the end of the current event-loop turn
(``call_soon``); every request that reaches the same point before it runs joins the
batch, up to ``max_rows`` (a full batch is flushed at once). One waiting request is
predicted on its own (:meth:`Predictor.predict_one`); more go through the batch kernel
together (:meth:`Predictor.predict`), which walks each tree once for the whole block
of rows instead of once per request. Results are the same either way (the row and
batch kernels are bit-identical).

Nothing waits on a timer: a request alone on the loop is answered in the same turn,
so single-request latency does not grow; under concurrency the loop is busy anyway and
the batch forms from requests already there. ``bench/RESULTS.md`` (HTTP) has the
figures with and without it.

Requests hold the model they started with: a hot swap between two requests puts them
in different groups, each predicted by its own model and answered with its version.
An engine error fails every request of its group (each gets the error table's answer);
a request whose client went away (cancelled future) is skipped.
"""

from __future__ import annotations

import asyncio
from typing import Any

import numpy as np

from server import metrics

__all__ = ["MicroBatcher"]


class MicroBatcher:
    """Coalesces ``predict(model, X[1, F])`` calls made in the same event-loop turn."""

    def __init__(self, max_rows: int = 64) -> None:
        self.max_rows = max(1, int(max_rows))
        self._waiting: list[tuple[Any, np.ndarray, asyncio.Future[tuple[float, float, float]]]] = []
        self._scheduled = False

    async def predict(self, model: Any, X: np.ndarray) -> tuple[float, float, float]:
        """``(eta, p10, p90)`` of the row ``X[1, F]`` by ``model`` (a LoadedModel)."""
        if self.max_rows == 1:
            return model.predictor.predict_one(X)
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[tuple[float, float, float]] = loop.create_future()
        self._waiting.append((model, X, fut))
        if len(self._waiting) >= self.max_rows:
            self.flush()
        elif not self._scheduled:
            self._scheduled = True
            loop.call_soon(self.flush)
        return await fut

    def flush(self) -> None:
        """Predict every waiting row now, one engine call per model."""
        self._scheduled = False
        batch, self._waiting = self._waiting, []
        groups: dict[int, list[tuple[Any, np.ndarray, asyncio.Future[Any]]]] = {}
        for entry in batch:
            groups.setdefault(id(entry[0]), []).append(entry)
        for entries in groups.values():
            model = entries[0][0]
            try:
                if len(entries) == 1:
                    results = [model.predictor.predict_one(entries[0][1])]
                else:
                    eta, p10, p90 = model.predict(np.concatenate([e[1] for e in entries]))
                    results = list(zip(eta.tolist(), p10.tolist(), p90.tolist(), strict=True))
            except Exception as exc:
                for _, _, fut in entries:
                    if not fut.done():
                        fut.set_exception(exc)
                continue
            metrics.MICRO_BATCH_ROWS.observe(len(entries))
            for (_, _, fut), res in zip(entries, results, strict=True):
                if not fut.done():
                    fut.set_result(res)
