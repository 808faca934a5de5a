"""The server's side of experiments: which model answers which order.

With ``ENABLE_AB_TESTING=true`` the server reads the tenant's running experiment from the
store every ``RELOAD_INTERVAL_S`` (like the registry aliases), so every worker and
replica follows ``intellilog ab start/stop/conclude`` without a restart. When an
experiment starts, the candidate version is loaded, verified and warmed up off the event
loop (:meth:`ModelHolder`'s rules), and only then does routing switch to it; until then,
and whenever loading fails, every order is answered by production (logged arm
``production``), so a broken candidate never takes traffic.

Routes read :attr:`Router.route` once per request: ``None`` (no experiment: arm
``production``) or a :class:`Route` with the experiment and its loaded candidate.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from kernels.errors import IntelliLogError
from server.experiments.assign import assign, assign_many
from server.experiments.service import running
from server.holder import ModelHolder
from server.models import LoadedModel
from server.store import Experiment, Store

__all__ = ["INLINE_ROWS", "Part", "Route", "Router", "features", "score_rows"]

log = logging.getLogger("intellilog.server")

#: batches of up to this many rows are scored on the event loop; larger ones in a thread,
#: so other requests keep flowing
INLINE_ROWS = 256


@dataclass(frozen=True, eq=False)
class Route:
    """A running experiment and its candidate model, as the routes use them."""

    experiment: Experiment
    candidate: LoadedModel

    @property
    def shadow(self) -> bool:
        return self.experiment.mode == "shadow"

    def pick(self, production: LoadedModel, order_id: str | None) -> tuple[LoadedModel, str]:
        """The model that answers ``order_id`` and its arm (shadow: production answers)."""
        e = self.experiment
        if e.mode == "ab" and assign(e.experiment_id, order_id, e.split):
            return self.candidate, "candidate"
        return production, "baseline"


@dataclass(frozen=True, eq=False)
class Part:
    """Rows of a batch one model answered: ``rows`` their indices (None: every row) and
    ``X`` their feature rows as that model's own pipeline built them (C-contiguous)."""

    model: LoadedModel
    arm: str
    rows: np.ndarray | None
    X: np.ndarray


def features(model: LoadedModel, items: Sequence[Any]) -> np.ndarray:
    """The feature matrix of ``items`` by ``model``'s own pipeline: two versions of one
    spec may have learned different category levels, so a matrix is never shared."""
    return model.pipe.matrix(model.pipe.columns(items))


def score_rows(
    route: Route | None,
    production: LoadedModel,
    items: Sequence[Any],
    order_ids: Sequence[str | None],
) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[Part]]:
    """ETA, p10 and p90 of every item and who answered which rows: production (no
    experiment: arm ``production``; shadow: ``baseline``, the candidate scores later) or,
    in an A/B test, each row's arm. One feature build and engine call per model."""
    if route is None or route.shadow:
        X = features(production, items)
        eta, p10, p90 = production.predict(X)
        arm = "production" if route is None else "baseline"
        return eta, p10, p90, [Part(production, arm, None, X)]
    e = route.experiment
    cand = assign_many(e.experiment_id, order_ids, e.split)  # the candidate's rows
    eta, p10, p90 = (np.empty(len(order_ids)) for _ in range(3))
    parts: list[Part] = []
    for model, arm, chosen in (
        (production, "baseline", ~cand),
        (route.candidate, "candidate", cand),
    ):
        idx = np.flatnonzero(chosen)
        if len(idx) == len(order_ids):
            X = features(model, items)
            eta[:], p10[:], p90[:] = model.predict(X)
            return eta, p10, p90, [Part(model, arm, None, X)]
        if len(idx):
            Xa = features(model, [items[i] for i in idx.tolist()])
            eta[idx], p10[idx], p90[idx] = model.predict(Xa)
            parts.append(Part(model, arm, idx, Xa))
    return eta, p10, p90, parts


class Router:
    """Follows the running experiment of ``tenant`` and holds its candidate, warm."""

    def __init__(self, holder: ModelHolder, tenant: str) -> None:
        self.holder = holder
        self.tenant = tenant
        self.route: Route | None = None
        self.last_error: str | None = None
        self._candidates = ModelHolder(
            holder.registry,
            "candidate",
            holder.engine,
            threads=holder.threads,
            allow_gpu=holder.allow_gpu,
            gpu_min_rows=holder.gpu_min_rows,
        )
        self._failed: tuple[str, str] | None = None  # (experiment, version) that failed

    async def refresh(self, store: Store) -> None:
        """Read the running experiment; load its candidate when it changed."""
        exp = await running(store, self.tenant)
        current = self.route
        if exp is None:
            if current is not None:
                log.info(
                    "experiment %s ended: all orders to production",
                    current.experiment.experiment_id,
                )
            self.route = None
            return
        if current is not None and current.experiment.experiment_id == exp.experiment_id:
            if current.experiment != exp:  # options or status changed: keep the model
                self.route = Route(exp, current.candidate)
            return
        key = (exp.experiment_id, exp.candidate_version)
        if self._failed == key:
            return  # refused once; not retried until the experiment changes
        result = await self._candidates.reload("experiment", ref=exp.candidate_version)
        model = self._candidates.model
        serving = self.holder.model
        if "error" in result or model is None or model.version != exp.candidate_version:
            self._refuse(key, str(result.get("error", "candidate did not load")))
            return
        if serving is not None and model.pipe.spec.hash != serving.pipe.spec.hash:
            self._refuse(key, f"candidate {model.version} has another spec than production")
            return
        self.route = Route(exp, model)
        self.last_error = None
        log.info(
            "experiment %s (%s): %s vs %s",
            exp.experiment_id,
            exp.mode,
            exp.candidate_version,
            exp.baseline_version,
            extra={"event": "experiment_route"},
        )

    def _refuse(self, key: tuple[str, str], message: str) -> None:
        self._failed = key
        self.route = None
        self.last_error = message
        log.error(
            "experiment %s: candidate %s not served (%s); all orders to production",
            key[0],
            key[1],
            message,
            extra={"event": "experiment_refused"},
        )

    async def watch(self, store_of: Callable[[], Store | None], interval: float) -> None:
        """Refresh every ``interval`` seconds while the store is open; errors are logged
        and routing stays as it was."""
        while True:
            store = store_of()
            if store is not None:
                try:
                    await self.refresh(store)
                except IntelliLogError as exc:
                    log.warning("experiment refresh failed: %s", exc)
            await asyncio.sleep(interval)
