"""MicroBatcher: concurrent single-row predictions share one engine call, answers unchanged."""

from __future__ import annotations

import asyncio
from typing import Any

import numpy as np
import pytest

from server.microbatch import MicroBatcher


class FakePredictor:
    """eta = x0, p10 = x0 - 1, p90 = x0 + 1; records every call's row count."""

    def __init__(self, fail: bool = False) -> None:
        self.calls: list[tuple[str, int]] = []
        self.fail = fail

    def predict_one(self, X: np.ndarray) -> tuple[float, float, float]:
        self.calls.append(("one", X.shape[0]))
        if self.fail:
            raise RuntimeError("engine down")
        v = float(X[0, 0])
        return v, v - 1, v + 1

    def predict(self, X: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        self.calls.append(("batch", X.shape[0]))
        if self.fail:
            raise RuntimeError("engine down")
        v = X[:, 0].astype(np.float64)
        return v, v - 1, v + 1


class FakeModel:
    def __init__(self, fail: bool = False) -> None:
        self.predictor = FakePredictor(fail)

    def predict(self, X: np.ndarray) -> Any:
        return self.predictor.predict(X)


def row(v: float) -> np.ndarray:
    return np.array([[v, 0.0]], dtype=np.float32)


def run(coro: Any) -> Any:
    return asyncio.run(coro)


def test_concurrent_requests_share_one_engine_call() -> None:
    model, mb = FakeModel(), MicroBatcher(64)

    async def main() -> list[Any]:
        return await asyncio.gather(*(mb.predict(model, row(i)) for i in range(10)))

    out = run(main())
    assert out == [(float(i), i - 1.0, i + 1.0) for i in range(10)]
    assert model.predictor.calls == [("batch", 10)]


def test_a_lone_request_takes_the_one_row_path() -> None:
    model, mb = FakeModel(), MicroBatcher(64)
    assert run(mb.predict(model, row(3))) == (3.0, 2.0, 4.0)
    assert model.predictor.calls == [("one", 1)]


def test_batches_are_capped_at_max_rows() -> None:
    model, mb = FakeModel(), MicroBatcher(4)

    async def main() -> list[Any]:
        return await asyncio.gather(*(mb.predict(model, row(i)) for i in range(10)))

    assert [r[0] for r in run(main())] == [float(i) for i in range(10)]
    assert model.predictor.calls == [("batch", 4), ("batch", 4), ("batch", 2)]


def test_max_rows_one_turns_it_off() -> None:
    model, mb = FakeModel(), MicroBatcher(1)

    async def main() -> list[Any]:
        return await asyncio.gather(*(mb.predict(model, row(i)) for i in range(3)))

    run(main())
    assert model.predictor.calls == [("one", 1)] * 3


def test_requests_keep_the_model_they_started_with() -> None:
    """A hot swap between two requests: each group is predicted by its own model."""
    old, new, mb = FakeModel(), FakeModel(), MicroBatcher(64)

    async def main() -> list[Any]:
        calls = [mb.predict(old if i % 2 else new, row(i)) for i in range(6)]
        return await asyncio.gather(*calls)

    assert [r[0] for r in run(main())] == [float(i) for i in range(6)]
    assert old.predictor.calls == [("batch", 3)] and new.predictor.calls == [("batch", 3)]


def test_an_engine_error_fails_its_group_only() -> None:
    bad, good, mb = FakeModel(fail=True), FakeModel(), MicroBatcher(64)

    async def main() -> list[Any]:
        calls = [mb.predict(bad, row(1)), mb.predict(bad, row(2)), mb.predict(good, row(3))]
        return await asyncio.gather(*calls, return_exceptions=True)

    a, b, c = run(main())
    assert isinstance(a, RuntimeError) and isinstance(b, RuntimeError)
    assert c == (3.0, 2.0, 4.0)


def test_a_cancelled_request_does_not_break_the_batch() -> None:
    model, mb = FakeModel(), MicroBatcher(64)

    async def main() -> Any:
        gone = asyncio.ensure_future(mb.predict(model, row(1)))
        kept = asyncio.ensure_future(mb.predict(model, row(2)))
        await asyncio.sleep(0)  # both are waiting now, the flush is scheduled
        gone.cancel()
        return await kept, gone

    res, gone = run(main())
    assert res == (2.0, 1.0, 3.0) and gone.cancelled()


@pytest.fixture
def loaded_model(models: Any) -> Any:
    from server.models import load_model
    from training.registry import Registry

    return load_model(Registry(models.registry), "production", engine="numba")


@pytest.mark.parametrize("n", [2, 33])
def test_real_model_answers_equal_one_by_one(n: int, loaded_model: Any) -> None:
    """Through a real model version: coalesced answers are bit-identical to one-row ones."""
    rng = np.random.default_rng(n)
    F = loaded_model.pipe.n_features
    rows = [rng.normal(size=(1, F)).astype(np.float32) for _ in range(n)]
    rows[0][0, 0] = np.nan
    mb = MicroBatcher(64)

    async def main() -> list[Any]:
        return await asyncio.gather(*(mb.predict(loaded_model, r) for r in rows))

    assert run(main()) == [loaded_model.predictor.predict_one(r) for r in rows]
