"""Our ``hummingbird`` engine: ``server.engines.HummingbirdEngine`` (tensorised trees
``eta.hb.onnx`` on onnxruntime); needs the optional ``gpu`` extra (hummingbird-ml,
torch) at export time and a model folder that has ``eta.hb.onnx``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

NAME = "hummingbird"
ENV = "main"


def unavailable() -> str | None:
    try:
        import onnxruntime  # noqa: F401

        import server.engines  # noqa: F401
        from training import optional
    except Exception as exc:
        return f"{type(exc).__name__}: {exc}"
    if not optional.has_hummingbird():
        return "hummingbird-ml and torch are missing (install intellilog[gpu])"
    return None


class Adapter:
    """``load_engine(model_dir, "eta", "hummingbird", threads)`` with the engine's NaN
    guard lifted (``allow_nan``) so that it is timed on the same rows as every other
    engine; its export may restrict it to rows without NaN, which the parity check then
    shows. ``warmup()`` runs inside the first ``predict`` call."""

    note = "server.engines.HummingbirdEngine (onnxruntime), NaN guard lifted for timing"

    def __init__(self, model_dir: Path, threads: int, cache_dir: Path) -> None:
        from server.engines import load_engine

        path = Path(model_dir) / "eta.hb.onnx"
        if not path.is_file():
            raise FileNotFoundError(f"{path} was not exported (hummingbird export failed?)")
        self.engine: Any = load_engine(Path(model_dir), "eta", NAME, int(threads))
        self.engine.allow_nan = True
        self.note += f"; provider {self.engine.provider}"

    def predict(self, X: np.ndarray) -> np.ndarray:
        self.engine.warmup()
        self.predict = self.engine.predict  # type: ignore[method-assign]  # later calls: bare
        return self.engine.predict(X)  # type: ignore[no-any-return]
