"""Our ``numba`` engine: ``server.engines.NumbaEngine`` (``kernels.forest``).

numba compiles the kernels on first use, or loads them from its on-disk cache
(``NUMBA_CACHE_DIR``; the runner points it at this adapter's cache folder, empty
before the first pass, so that pass's first call is a cold compile).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

NAME = "numba"
ENV = "main"


def unavailable() -> str | None:
    try:
        import numba  # noqa: F401

        import server.engines  # noqa: F401
    except Exception as exc:
        return f"{type(exc).__name__}: {exc}"
    return None


class Adapter:
    """``load_engine(model_dir, "eta", "numba", threads)``; the engine's ``warmup()``
    (compiling or cache-loading all kernels) runs inside the first ``predict`` call."""

    note = "server.engines.NumbaEngine (kernels.forest: row path, blocked batch, prange)"

    def __init__(self, model_dir: Path, threads: int, cache_dir: Path) -> None:
        from server.engines import load_engine

        self.engine: Any = load_engine(Path(model_dir), "eta", NAME, int(threads))
        where = os.environ.get("NUMBA_CACHE_DIR")
        self.note += f"; numba cache {'in the cache folder' if where else 'default'}"

    def predict(self, X: np.ndarray) -> np.ndarray:
        self.engine.warmup()
        self.predict = self.engine.predict  # type: ignore[method-assign]  # later calls: bare
        return self.engine.predict(X)  # type: ignore[no-any-return]
