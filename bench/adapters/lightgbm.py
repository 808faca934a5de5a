"""The reference a user would write: ``lightgbm.Booster(model_file=eta.txt).predict``."""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np

NAME = "lightgbm"
ENV = "main"


def unavailable() -> str | None:
    try:
        import lightgbm  # noqa: F401
    except Exception as exc:  # ImportError, or a broken binary wheel
        return f"lightgbm does not import: {type(exc).__name__}: {exc}"
    return None


class Adapter:
    note = "Booster(model_file).predict(X, num_threads=n): the reference"

    def __init__(self, model_dir: Path, threads: int, cache_dir: Path) -> None:
        import lightgbm as lgb

        self.booster = lgb.Booster(model_file=str(Path(model_dir) / "eta.txt"))
        self.threads = int(threads)
        # the bare call, no wrapper frame in the timings
        self.predict = functools.partial(self.booster.predict, num_threads=self.threads)  # type: ignore[method-assign]

    def predict(self, X: np.ndarray) -> np.ndarray:
        return self.booster.predict(X, num_threads=self.threads)  # type: ignore[no-any-return]
