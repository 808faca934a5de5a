"""A stand-in for the GPU engines, so the large-batch routing runs on a machine
without one: :func:`server.engines.load_gpu_engines` is replaced by a loader that
returns, per model, the numba engine of the same folder dressed as hummingbird on
CUDA, recording every matrix it is given (its results are the CPU engine's, so a
routed prediction must equal an unrouted one exactly)."""

from __future__ import annotations

import hashlib
import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from server import engines as engines_mod
from server.engines import MODEL_NAMES, Engine, NumbaEngine
from training.export import HB_RESTRICTION


class FakeGpuEngine:
    name = "hummingbird"
    device = "cuda"

    def __init__(self, inner: Engine, model: str, fake: FakeGpu) -> None:
        self.inner, self.model, self.fake = inner, model, fake
        self.n_features = getattr(inner, "n_features", None)

    def predict(self, X: np.ndarray) -> np.ndarray:
        self.fake.calls.append((self.model, X.copy()))
        return self.inner.predict(X) + self.fake.shift


@dataclass
class FakeGpu:
    """What the fake GPU was given; ``shift`` makes it wrong, ``fail`` makes loading raise."""

    calls: list[tuple[str, np.ndarray]] = field(default_factory=list)
    shift: float = 0.0
    fail: BaseException | None = None
    loads: int = 0

    def rows(self, model: str = "eta") -> list[int]:
        """Row counts of the calls for ``model``, in order."""
        return [len(X) for m, X in self.calls if m == model]

    def saw_nan(self) -> bool:
        return any(bool(np.isnan(X).any()) for _, X in self.calls)

    def install(self, monkeypatch: Any) -> FakeGpu:
        def load(model_dir: Path, allow_nan: bool = False) -> tuple[dict[str, Engine], str]:
            self.loads += 1
            if self.fail is not None:
                raise self.fail
            return {
                m: FakeGpuEngine(NumbaEngine(Path(model_dir) / f"{m}.forest.npz"), m, self)
                for m in MODEL_NAMES
            }, "fake CUDA"

        monkeypatch.setattr(engines_mod, "load_gpu_engines", load)
        return self


def add_hb_files(folder: Path) -> None:
    """Give a model folder ``<name>.hb.onnx`` files (copies of the ONNX graphs: the
    files only have to exist; the fake loader never reads them)."""
    for m in MODEL_NAMES:
        shutil.copy(folder / f"{m}.onnx", folder / f"{m}.hb.onnx")


def add_hb_export(version_dir: Path, restriction: str | None = HB_RESTRICTION) -> None:
    """Make a registry version look exported with the ``gpu`` extra: ``.hb.onnx``
    files listed with their checksums in the manifest and a hummingbird engine block."""
    add_hb_files(version_dir)
    path = version_dir / "manifest.json"
    manifest = json.loads(path.read_text())
    names = [f"{m}.hb.onnx" for m in MODEL_NAMES]
    for name in names:
        manifest["files"][name] = hashlib.sha256((version_dir / name).read_bytes()).hexdigest()
    manifest["engines"]["hummingbird"] = {
        "files": names,
        "max_rel_err": 1e-6,
        "rows_checked": 100,
        "restriction": restriction,
        "per_model": dict.fromkeys(MODEL_NAMES, 1e-6),
    }
    path.write_text(json.dumps(manifest, indent=2))
