"""Our ``compiled`` engine: ``server.engines.CompiledEngine`` (``kernels.compiled``).

The flattened forest (``eta.forest.npz``, the numba engine's file) compiled to machine
code with LLVM at load, or its object code loaded from the cache: here the adapter's
cache folder (empty before the runner's first pass, so that pass measures a cold
compile; later passes a cached load). The numba wrappers that call the compiled code
are compiled by numba on first use or loaded from numba's cache (``NUMBA_CACHE_DIR``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

NAME = "compiled"
ENV = "main"


def unavailable() -> str | None:
    try:
        import llvmlite.binding  # noqa: F401
        import numba  # noqa: F401

        import kernels.compiled  # noqa: F401
        import server.engines  # noqa: F401
    except Exception as exc:
        return f"{type(exc).__name__}: {exc}"
    return None


class Adapter:
    """``CompiledEngine(model_dir / "eta.forest.npz", threads, cache_dir)`` (its load-time
    check against the numba kernels included); the engine's ``warmup()`` runs inside
    the first ``predict`` call."""

    note = "server.engines.CompiledEngine (kernels.compiled: LLVM -O3 for this CPU)"

    def __init__(self, model_dir: Path, threads: int, cache_dir: Path) -> None:
        from server.engines import CompiledEngine

        self.engine: Any = CompiledEngine(
            Path(model_dir) / "eta.forest.npz", int(threads), cache_dir=Path(cache_dir)
        )
        self.note += f"; {self.engine.load_note}"

    def predict(self, X: np.ndarray) -> np.ndarray:
        self.engine.warmup()
        self.predict = self.engine.predict  # type: ignore[method-assign]  # later calls: bare
        return self.engine.predict(X)  # type: ignore[no-any-return]
