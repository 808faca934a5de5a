"""Experiments and labelled rows (what retraining reads), on both backends."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import msgspec
import pytest

from server.store import Experiment, Store, StoreDataError, open_store
from tests.server.store.storekit import T0, feedback, predictions

T = TypeVar("T")


def with_store(url: str, body: Callable[[Store], Awaitable[T]]) -> T:
    async def run() -> T:
        async with await open_store(url) as store:
            return await body(store)

    return asyncio.run(run())


def _exp(eid: str, tenant: str = "t1", status: str = "running", started: float = T0) -> Experiment:
    return Experiment(
        experiment_id=eid,
        tenant=tenant,
        mode="ab",
        baseline_version="v1",
        candidate_version="v2",
        split=0.5,
        status=status,
        started_at=started,
        planned_hours=48.0,
        updated_at=started,
        options={"mde": 0.05, "started_by": "ops"},
    )


def test_experiments_round_trip_and_one_running_per_tenant(db_url: str) -> None:
    async def body(store: Store) -> tuple[list[Experiment], list[Experiment], list[Experiment]]:
        a = _exp("e1")
        await store.save_experiment(a, new=True)
        # a second running experiment of the same tenant is refused by the database
        with pytest.raises(StoreDataError):
            await store.save_experiment(_exp("e2", started=T0 + 1), new=True)
        # ... but another tenant may run one
        await store.save_experiment(_exp("e3", tenant="t2"), new=True)
        ended = msgspec.structs.replace(
            a, status="concluded", ended_at=T0 + 50, decision="promote_to_production", reason="r"
        )
        await store.save_experiment(ended, new=False)
        await store.save_experiment(_exp("e2", started=T0 + 1), new=True)  # e1 ended: allowed
        with pytest.raises(StoreDataError, match="no experiment"):
            await store.save_experiment(_exp("nope"), new=False)
        return (
            await store.experiments("t1"),
            await store.experiments("t1", "running"),
            await store.experiments("t2"),
        )

    every, running, t2 = with_store(db_url, body)
    assert [e.experiment_id for e in every] == ["e2", "e1"]  # newest first
    assert every[1].status == "concluded" and every[1].ended_at == T0 + 50
    assert every[1].decision == "promote_to_production" and every[1].reason == "r"
    assert every[1].options == {"mde": 0.05, "started_by": "ops"}
    assert [e.experiment_id for e in running] == ["e2"]
    assert [e.experiment_id for e in t2] == ["e3"]


def test_labelled_rows_are_the_latest_non_shadow_prediction_per_order(db_url: str) -> None:
    first = predictions(4, seed=1, request="a", step=10.0)  # o0..o3 at T0 .. T0+30
    again = predictions(2, seed=2, request="b", t0=T0 + 100, version="v2")  # o0, o1 later
    shadow = predictions(4, seed=3, request="s", t0=T0 + 200, arm="shadow", version="v3")
    other = predictions(2, seed=4, request="c", tenant="t2")

    async def body(store: Store) -> tuple[list[Any], list[Any], list[Any]]:
        await store.write_predictions(first + again + shadow + other)
        # o0..o2 completed at T0+10_000-60; o3 has no feedback
        await store.write_feedback(feedback(["o0", "o1", "o2"], actual=30.0))
        window = await store.labelled("t1", T0, T0 + 20_000, lead_s=0.0)
        before = await store.labelled("t1", T0, T0 + 5_000, lead_s=0.0)
        # predictions made before the window are found only within lead_s
        late = await store.labelled("t1", T0 + 9_000, T0 + 20_000, lead_s=8_950.0)
        return window, before, late

    window, before, late = with_store(db_url, body)
    assert [(r.order_id, r.model_version, r.arm) for r in window] == [
        ("o0", "v2", "production"),
        ("o1", "v2", "production"),
        ("o2", "v1", "production"),
    ]
    assert [r.actual for r in window] == [30.0, 31.0, 32.0]
    assert window[0].inputs == '{"order_id": "o0"}' and window[0].eta == again[0].eta
    assert window[2].created_at == T0 + 20.0
    assert before == []  # nothing completed yet
    # only the later predictions (T0+100, T0+101) are within 8950 s of T0+9000
    assert [(r.order_id, r.model_version) for r in late] == [("o0", "v2"), ("o1", "v2")]
