"""Peer adapter: Treelite + TL2cgen (LightGBM model turned into C, compiled with gcc).

Runs in the peers venv (``bench/.venvs/peers``, see ``bench/peers_env.py``).

How it is used (as the TL2cgen docs describe):

* ``treelite.frontend.load_lightgbm_model(eta.txt)`` then ``tl2cgen.export_lib(...,
  toolchain="gcc", params={"parallel_comp": ...})``: the trees are split into several
  C files compiled in parallel (``gcc -O3``). The shared library is cached under
  ``cache_dir``, written to a temporary name and renamed into place (a concurrent
  process never loads half a file); its name holds the sha256 of ``eta.txt``, the
  tl2cgen / treelite versions and the compiler parameters. Branch hints
  (``LIKELY``/``UNLIKELY``) come from the node counts in the LightGBM model itself;
  the docs' ``annotate_in`` (counts from training data) is not used: the model folder
  has no training data. ``quantize=1`` (the docs' integer-threshold optimisation) is
  on: exact, and on a 500 x 63 model here ~1.6x faster both for one row (13.5 vs
  22 us) and at 100k rows. The generated ``predict`` overwrites its input in place
  with the quantized values, so the one-row buffer is refilled on every call.
* Batches: ``tl2cgen.Predictor(lib, nthread=threads).predict(tl2cgen.DMatrix(X))``
  (OpenMP inside; ``DMatrix`` wraps the float32 array without a copy).
* One row: the generated library's own C function ``predict(union Entry*, int
  pred_margin, double* out)`` (the one TL2cgen's deployment guide calls from C), via
  ctypes on preallocated buffers: ``Predictor.predict(DMatrix(x))`` builds a native
  DMatrix, queries the output shape and allocates per call, which costs more than the
  500 trees themselves. ``Entry`` is a union of ``int missing`` (-1: missing) and
  ``double fvalue``, so a row is its float64 values with the low 32 bits of each NaN
  set to -1 (what TL2cgen's DMatrix does with NaN; little-endian only, else the
  Predictor path is used).
"""

from __future__ import annotations

import contextlib
import ctypes
import hashlib
import importlib.metadata
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

NAME = "tl2cgen"
ENV = "peers"

#: Trees per generated C file (``parallel_comp`` = ceil(trees / this)): a few files
#: keep gcc's memory and time per file moderate and use every core.
TREES_PER_FILE = 64
#: Compiler parameters besides ``parallel_comp`` (part of the cache key); see above.
PARAMS: dict[str, Any] = {"quantize": 1}


def _import_peer(name: str) -> Any:
    """Import ``tl2cgen`` / ``treelite`` even if ``bench/adapters`` is on ``sys.path``
    (where this file would shadow the ``tl2cgen`` library)."""
    import importlib

    mod = sys.modules.get(name)
    if mod is not None and getattr(mod, "__file__", None) != __file__:
        return mod
    here = Path(__file__).resolve().parent
    saved = list(sys.path)
    try:
        sys.path[:] = [p for p in sys.path if Path(p or os.curdir).resolve() != here]
        if mod is not None:
            del sys.modules[name]
        return importlib.import_module(name)
    finally:
        sys.path[:] = saved


def unavailable() -> str | None:
    """None when tl2cgen can run in this interpreter, else a one-line reason."""
    for name in ("treelite", "tl2cgen"):
        try:
            _import_peer(name)
        except Exception as exc:
            return f"{name} not importable: {type(exc).__name__}: {exc}".splitlines()[0]
    if shutil.which("gcc") is None:
        return "gcc not found on PATH (tl2cgen compiles the model with it)"
    return None


def _version(dist: str) -> str:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return "?"


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _allow_omp_threads(threads: int) -> int:
    """Let OpenMP run ``threads`` threads; return how many it now allows.

    ``Predictor(nthread=n)`` fails when n exceeds ``omp_get_max_threads()``, i.e. when
    ``OMP_NUM_THREADS`` in the environment is lower (the test suite sets it to 1). The
    treelite and tl2cgen wheels each ship a libgomp with the same soname; whichever
    was loaded first serves both, so the limit is raised in every copy in the process.
    """
    paths: set[str] = set()
    with contextlib.suppress(OSError):
        for line in Path("/proc/self/maps").read_text().splitlines():
            if "libgomp" in line and "/" in line:
                paths.add(line[line.index("/") :].strip())
    allowed = []
    for path in sorted(paths) or ["libgomp.so.1"]:
        try:
            gomp = ctypes.CDLL(path)
            if gomp.omp_get_max_threads() < threads:
                gomp.omp_set_num_threads(ctypes.c_int(threads))
            allowed.append(int(gomp.omp_get_max_threads()))
        except (OSError, AttributeError):
            continue
    return min(allowed, default=threads)


def _num_trees(model_file: Path) -> int:
    with open(model_file, "rb") as fh:
        return sum(1 for line in fh if line.startswith(b"Tree="))


class Adapter:
    """A TL2cgen-compiled shared library for ``model_dir/eta.txt`` (cached)."""

    note: str

    def __init__(self, model_dir: Path, threads: int, cache_dir: Path) -> None:
        tl2cgen = _import_peer("tl2cgen")
        model_file = Path(model_dir) / "eta.txt"
        self.threads = max(1, int(threads))
        sha = _sha256(model_file)
        params = {
            **PARAMS,
            "parallel_comp": max(1, -(-_num_trees(model_file) // TREES_PER_FILE)),
        }
        key = "|".join(
            [
                f"tl2cgen={_version('tl2cgen')}",
                f"treelite={_version('treelite')}",
                repr(sorted(params.items())),
            ]
        )
        key_hash = hashlib.sha256(key.encode()).hexdigest()[:12]
        cache_dir = Path(cache_dir)
        cache_dir.mkdir(parents=True, exist_ok=True)
        lib = cache_dir / f"tl2cgen-{sha[:24]}-{key_hash}.so"

        t0 = time.perf_counter()
        if lib.is_file():
            how = "loaded from cache in {:.2f} s (" + str(lib) + ")"
        else:
            treelite = _import_peer("treelite")
            model = treelite.frontend.load_lightgbm_model(str(model_file))
            tmp = lib.with_name(f".{lib.name}.{os.getpid()}.{time.monotonic_ns()}.tmp.so")
            try:
                tl2cgen.export_lib(
                    model,
                    toolchain="gcc",
                    libpath=str(tmp),
                    params=dict(params),
                    nthread=os.cpu_count() or 1,
                )
                os.replace(tmp, lib)
            finally:
                tmp.unlink(missing_ok=True)
            how = (
                "compiled in {:.1f} s (gcc, parallel_comp="
                + str(params["parallel_comp"])
                + f"; cached: {lib})"
            )
        omp_max = _allow_omp_threads(self.threads)
        nthread = min(self.threads, omp_max)
        self.predictor = tl2cgen.Predictor(str(lib), nthread=nthread)
        self._DMatrix = tl2cgen.DMatrix
        self.note = how.format(time.perf_counter() - t0)
        if nthread < self.threads:
            self.note += f"; OpenMP allows {omp_max} thread(s), not {self.threads}"
        self.n_features = int(self.predictor.num_feature)
        n_out = int(self.predictor.num_target) * int(max(self.predictor.num_class))

        # One-row fast path: the library's `predict` C function on fixed buffers.
        self._fn = None
        if sys.byteorder == "little" and n_out == 1:
            cdll = ctypes.CDLL(str(lib))  # the library Predictor already loaded
            fn = cdll.predict
            fn.restype = None
            fn.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_void_p]
            self._cdll, self._fn = cdll, fn
            self._entry = np.zeros(self.n_features, dtype=np.float64)
            self._missing = self._entry.view(np.int32)[0::2]  # low word = `int missing`
            self._out = np.zeros(1, dtype=np.float64)
            self._entry_p = self._entry.ctypes.data
            self._out_p = self._out.ctypes.data

    def predict(self, X: np.ndarray) -> np.ndarray:
        """X float32 [n, F] -> float64 [n]."""
        if X.shape[0] == 1 and self._fn is not None:
            row = X[0]
            np.copyto(self._entry, row, casting="same_kind")
            nan = np.isnan(row)
            if nan.any():
                self._missing[nan] = -1
            self._out[0] = 0.0
            self._fn(self._entry_p, 0, self._out_p)
            return self._out.copy()
        X = np.ascontiguousarray(X, dtype=np.float32)
        out = self.predictor.predict(self._DMatrix(X))
        return np.asarray(out, dtype=np.float64).reshape(X.shape[0])
