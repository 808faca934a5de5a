"""Helpers of the store tests: seeded rows, raw SQL on either backend, a failing store."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Sequence
from typing import Any

import numpy as np

from kernels.errors import StoreError
from server.store import (
    Experiment,
    FeatureSample,
    FeedbackResult,
    FeedbackRow,
    JoinedRow,
    LabelledRow,
    PredictionRow,
    Store,
    pack_features,
)
from server.store.chunks import PredictionChunk

T0 = 1_750_000_000.0  # a fixed "now" (epoch seconds)
N_FEATURES = 7


def predictions(
    n: int,
    *,
    seed: int = 0,
    request: str = "r",
    tenant: str = "t1",
    version: str = "v1",
    arm: str = "production",
    t0: float = T0,
    step: float = 1.0,
    order_prefix: str = "o",
) -> list[PredictionRow]:
    """``n`` prediction rows with seeded features and ETAs, one order id each."""
    rng = np.random.default_rng(seed)
    feats = rng.normal(size=(n, N_FEATURES)).astype(np.float32)
    blobs = pack_features(feats)
    eta = rng.uniform(10, 60, size=n)
    return [
        PredictionRow(
            row_id=f"{request}:{i}",
            request_id=request,
            order_id=f"{order_prefix}{i}",
            tenant=tenant,
            model_version=version,
            arm=arm,
            inputs=f'{{"order_id": "{order_prefix}{i}"}}',
            features=blobs[i],
            eta=float(eta[i]),
            p10=float(eta[i]) - 5.0,
            p90=float(eta[i]) + 7.0,
            created_at=t0 + i * step,
        )
        for i in range(n)
    ]


def feedback(
    order_ids: Sequence[str],
    *,
    tenant: str = "t1",
    actual: float = 30.0,
    received: float = T0 + 10_000,
) -> list[FeedbackRow]:
    return [
        FeedbackRow(
            order_id=o,
            tenant=tenant,
            actual_minutes=actual + i,
            completed_at=received - 60,
            received_at=received,
        )
        for i, o in enumerate(order_ids)
    ]


def raw_sql(url: str, sql: str, *args: Any) -> list[tuple[Any, ...]]:
    """Run one statement on the database behind ``url`` outside the store; rows back."""
    if url.startswith("sqlite:///"):
        with sqlite3.connect(url[len("sqlite:///") :], isolation_level=None) as conn:
            return [tuple(r) for r in conn.execute(sql.replace("$1", "?"), args)]

    async def run() -> list[tuple[Any, ...]]:
        import asyncpg

        conn = await asyncpg.connect(url)
        try:
            return [tuple(r) for r in await conn.fetch(sql, *args)]
        finally:
            await conn.close()

    return asyncio.run(run())


class FlakyStore(Store):
    """Wraps a store; while ``down`` is True every call fails like a database outage.

    ``batches`` records the size of every prediction batch that reached the store."""

    def __init__(self, inner: Store) -> None:
        self.inner = inner
        self.url = inner.url
        self.down = False
        self.batches: list[int] = []

    def _check(self) -> None:
        if self.down:
            raise StoreError(f"{self.url}: connection refused (simulated outage)")

    async def open(self) -> None:
        await self.inner.open()

    async def close(self) -> None:
        await self.inner.close()

    async def migrate(self) -> int:
        self._check()
        return await self.inner.migrate()

    async def schema_version(self) -> int:
        self._check()
        return await self.inner.schema_version()

    async def ping(self) -> bool:
        return not self.down and await self.inner.ping()

    async def write_predictions(self, rows: Sequence[PredictionRow]) -> int:
        self._check()
        self.batches.append(len(rows))
        return await self.inner.write_predictions(rows)

    async def write_chunks(self, chunks: Sequence[PredictionChunk]) -> int:
        self._check()
        self.batches.append(sum(map(len, chunks)))
        return await self.inner.write_chunks(chunks)

    async def write_feedback(self, rows: Sequence[FeedbackRow]) -> FeedbackResult:
        self._check()
        return await self.inner.write_feedback(rows)

    async def joined(
        self, tenant: str, since: float, until: float | None = None
    ) -> list[JoinedRow]:
        self._check()
        return await self.inner.joined(tenant, since, until)

    async def recent_features(
        self, tenant: str, since: float, limit: int = 10_000
    ) -> list[FeatureSample]:
        self._check()
        return await self.inner.recent_features(tenant, since, limit)

    async def prune(self, older_than: float) -> int:
        self._check()
        return await self.inner.prune(older_than)

    async def labelled(
        self, tenant: str, since: float, until: float, lead_s: float
    ) -> list[LabelledRow]:
        self._check()
        return await self.inner.labelled(tenant, since, until, lead_s)

    async def save_experiment(self, exp: Experiment, *, new: bool) -> None:
        self._check()
        await self.inner.save_experiment(exp, new=new)

    async def experiments(self, tenant: str, status: str | None = None) -> list[Experiment]:
        self._check()
        return await self.inner.experiments(tenant, status)
