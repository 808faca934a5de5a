"""Our ``onnx`` engine: ``server.engines.OnnxEngine`` (onnxruntime, TreeEnsemble graph)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

NAME = "onnx"
ENV = "main"


def unavailable() -> str | None:
    try:
        import onnxruntime  # noqa: F401

        import server.engines  # noqa: F401
    except Exception as exc:
        return f"{type(exc).__name__}: {exc}"
    return None


class Adapter:
    """``load_engine(model_dir, "eta", "onnx", threads)``; the engine's ``warmup()`` runs
    inside the first ``predict`` call (so it counts as first-call time, not load)."""

    note = "server.engines.OnnxEngine (onnxruntime CPU, row blocks on n threads)"

    def __init__(self, model_dir: Path, threads: int, cache_dir: Path) -> None:
        from server.engines import load_engine

        self.engine: Any = load_engine(Path(model_dir), "eta", NAME, int(threads), allow_gpu=False)
        self.note += f"; provider {self.engine.provider}"

    def predict(self, X: np.ndarray) -> np.ndarray:
        self.engine.warmup()
        self.predict = self.engine.predict  # type: ignore[method-assign]  # later calls: bare
        return self.engine.predict(X)  # type: ignore[no-any-return]
