"""Benchmark adapters: one module per engine and peer, all with the same small interface.

Each ``bench/adapters/<name>.py`` imports only the standard library and numpy at module
top level (``bench/run.py`` reads ``NAME`` and ``ENV`` from it in the main interpreter,
``bench/worker.py`` runs it in the interpreter ``ENV`` names) and defines::

    NAME: str   # "lightgbm" | "onnx" | "numba" | "compiled" | "hummingbird" | "lleaves" | "tl2cgen"
    ENV: str    # "main": runs under .venv/bin/python; "peers": bench/.venvs/peers/bin/python
    def unavailable() -> str | None: ...   # None when runnable here, else a one-line reason
    class Adapter:
        note: str
        def __init__(self, model_dir: Path, threads: int, cache_dir: Path) -> None: ...
        def predict(self, X: np.ndarray) -> np.ndarray: ...  # float32 [n, F] -> float64 [n]

``model_dir`` holds the exported model (``eta.txt``, ``eta.onnx``, ``eta.forest.npz``,
``eta.hb.onnx``); ``cache_dir`` is a folder the adapter may keep compiled artifacts in
(the runner empties it before the first pass, so that pass measures a cold start).
``unavailable()`` should import what the adapter needs, so that library imports are
not counted in the adapter's load time and resident memory.

This package file is stdlib-only too: the worker does not import it.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

HERE = Path(__file__).resolve().parent

#: Every engine and peer the suite reports, in table order (a missing module is reported).
ALL: tuple[str, ...] = (
    "lightgbm",
    "onnx",
    "numba",
    "compiled",
    "hummingbird",
    "lleaves",
    "tl2cgen",
)


def path_of(name: str) -> Path:
    return HERE / f"{name}.py"


def load(path: str | Path) -> ModuleType:
    """Import an adapter module from its file (no package import needed)."""
    path = Path(path)
    spec = importlib.util.spec_from_file_location(f"bench_adapter_{path.stem}", path)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot load adapter module {path}")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
