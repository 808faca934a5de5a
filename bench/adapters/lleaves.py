"""Peer adapter: lleaves (LightGBM model compiled to machine code with LLVM).

Runs in the peers venv (``bench/.venvs/peers``, see ``bench/peers_env.py``): lleaves
1.3.0 needs llvmlite < 0.45, our numba needs 0.50.

How it is used (as lleaves' docs advise):

* ``Model.compile(cache=...)``: the object code is cached, so only the first process
  pays the compile (60-140 s for 500 x 63 leaves on this 2-core machine). The cache file is
  written to a temporary name and renamed, so a concurrent process never loads half a
  file; its name holds the sha256 of ``eta.txt``, the lleaves / llvmlite versions, the
  compile options and the host CPU (the code is compiled for this CPU's features).
* Default compile flags (``fblocksize=34``, ``fcodemodel="large"``, ``finline=True``),
  fp64 (LightGBM's thresholds and sums are doubles: fp32 would not be exact) and the
  objective applied like ``Booster.predict`` (identity for the product's regression
  objectives, so this is the raw regression output). The docs' one-row tip,
  ``fblocksize=num_trees``, was tried on 500 x 63 leaves: its compile had not finished
  after 6 CPU minutes, so the default stays (one model serves rows and batches).
* Batches: ``Model.predict(X, n_jobs=threads)``; ``n_jobs=1`` below 1,024 rows, where a
  thread pool (lleaves makes a new one per call) costs more than it gains.
* One row: lleaves' own compiled entry point (``forest_root``, the function ``predict``
  calls, GIL released) on preallocated float64 buffers: the per-call Python work of
  ``Model.predict`` (input checks, float32 -> float64 copy, output allocation) is left
  out. Falls back to ``Model.predict(x, n_jobs=1)`` if that attribute ever goes away.
"""

from __future__ import annotations

import ctypes
import hashlib
import importlib
import importlib.metadata
import os
import sys
import time
from pathlib import Path
from types import ModuleType

import numpy as np

NAME = "lleaves"
ENV = "peers"

#: Model.compile keyword arguments (the library defaults, spelled out for the cache key).
COMPILE_OPTS: dict[str, object] = {
    "fblocksize": 34,
    "fcodemodel": "large",
    "finline": True,
    "use_fp64": True,
    "raw_score": False,
}

#: Below this many rows a batch is predicted on one thread.
MIN_ROWS_PER_POOL = 1024


def _import_lleaves() -> ModuleType:
    """``import lleaves`` without picking up this very file.

    If ``bench/adapters`` itself is on ``sys.path`` (a script run from this folder),
    a plain ``import lleaves`` would find this adapter instead of the library.
    """
    mod = sys.modules.get("lleaves")
    if mod is not None and hasattr(mod, "Model"):
        return mod
    here = Path(__file__).resolve().parent
    saved = list(sys.path)
    try:
        sys.path[:] = [p for p in sys.path if Path(p or os.curdir).resolve() != here]
        if mod is not None:  # the adapter cached under the name "lleaves"
            del sys.modules["lleaves"]
        mod = importlib.import_module("lleaves")
    finally:
        sys.path[:] = saved
    if not hasattr(mod, "Model"):
        raise ImportError(f"'lleaves' resolved to {getattr(mod, '__file__', mod)}")
    return mod


def unavailable() -> str | None:
    """None when lleaves can run in this interpreter, else a one-line reason."""
    try:
        _import_lleaves()
    except Exception as exc:
        return f"lleaves not importable: {type(exc).__name__}: {exc}"
    try:
        import llvmlite.binding as llvm

        # What Model.compile() does first; llvmlite >= 0.45 raises here.
        llvm.initialize()
        llvm.initialize_native_target()
        llvm.initialize_native_asmprinter()
    except Exception as exc:
        ver = _version("llvmlite")
        return f"lleaves cannot use llvmlite {ver}: {type(exc).__name__}: {exc}".splitlines()[0]
    return None


def _version(dist: str) -> str:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return "?"


def _host_cpu_key() -> str:
    import llvmlite.binding as llvm

    llvm.initialize_native_target()
    try:
        features = llvm.get_host_cpu_features().flatten()
    except RuntimeError:
        features = ""
    return f"{llvm.get_host_cpu_name()}:{features}"


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


class Adapter:
    """lleaves ``Model`` compiled (or loaded from the cache) for ``model_dir/eta.txt``."""

    note: str

    def __init__(self, model_dir: Path, threads: int, cache_dir: Path) -> None:
        lleaves = _import_lleaves()
        model_file = Path(model_dir) / "eta.txt"
        self.threads = max(1, int(threads))
        sha = _sha256(model_file)
        key = "|".join(
            [
                f"lleaves={_version('lleaves')}",
                f"llvmlite={_version('llvmlite')}",
                repr(sorted(COMPILE_OPTS.items())),
                _host_cpu_key(),
            ]
        )
        key_hash = hashlib.sha256(key.encode()).hexdigest()[:12]
        cache_dir = Path(cache_dir)
        cache_dir.mkdir(parents=True, exist_ok=True)
        cache = cache_dir / f"lleaves-{sha[:24]}-{key_hash}.o"

        model = lleaves.Model(model_file=str(model_file))
        t0 = time.perf_counter()
        if cache.is_file():
            model.compile(cache=str(cache), **COMPILE_OPTS)
            self.note = f"loaded from cache in {time.perf_counter() - t0:.2f} s ({cache})"
        else:
            # lleaves writes the object file to `cache` while compiling: give it a
            # private name, publish with an atomic rename.
            tmp = cache.with_name(f".{cache.name}.{os.getpid()}.{time.monotonic_ns()}.tmp")
            try:
                model.compile(cache=str(tmp), **COMPILE_OPTS)
                if tmp.is_file():
                    os.replace(tmp, cache)
            finally:
                tmp.unlink(missing_ok=True)
            self.note = f"compiled in {time.perf_counter() - t0:.1f} s (cached: {cache})"
        self.model = model
        self.n_features = int(model.num_feature())

        # One-row fast path: the compiled entry point on fixed buffers.
        self._row = np.zeros((1, self.n_features), dtype=np.float64)
        self._out = np.zeros(1, dtype=np.float64)
        self._entry = getattr(model, "_c_entry_func", None)
        if self._entry is not None and model.num_model_per_iteration() == 1:
            dptr = ctypes.POINTER(ctypes.c_double)
            self._row_p = self._row.ctypes.data_as(dptr)
            self._out_p = self._out.ctypes.data_as(dptr)
        else:
            self._entry = None

    def predict(self, X: np.ndarray) -> np.ndarray:
        """X float32 [n, F] -> float64 [n]."""
        n = X.shape[0]
        if n == 1 and self._entry is not None:
            np.copyto(self._row, X, casting="same_kind")
            self._out[0] = 0.0
            self._entry(self._row_p, self._out_p, 0, 1)
            return self._out.copy()
        n_jobs = self.threads if n >= MIN_ROWS_PER_POOL else 1
        return np.asarray(self.model.predict(X, n_jobs=n_jobs), dtype=np.float64)
