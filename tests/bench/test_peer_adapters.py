"""Peer adapters (``bench/adapters/lleaves.py``, ``bench/adapters/tl2cgen.py``).

The parity tests run each adapter in the peers venv (``bench/.venvs/peers``, built by
``bench/peers_env.py``) on a tiny LightGBM model and compare with
``lightgbm.Booster.predict``; they skip when that venv is absent (CI does not build
it). ``unavailable()`` is also checked in this interpreter (``.venv``), where lleaves
is not installed: it must answer with a reason, not raise.

Measured on this machine: lleaves differs from LightGBM by ~1e-13 at most on a 500-tree
model (it sums the trees in another order), and is exact (0.0) on the tiny model here;
tl2cgen is exact (0.0) on both.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[2]
ADAPTERS = ROOT / "bench" / "adapters"
PEERS_PY = ROOT / "bench" / ".venvs" / "peers" / "bin" / "python"
PEERS = ("lleaves", "tl2cgen")
TOL = 1e-4
N_ROWS = 2000  # above the lleaves adapter's one-thread cut-off: the thread pool runs too


def load_adapter(name: str) -> ModuleType:
    """Load ``bench/adapters/<name>.py`` by path (not through ``bench.adapters``)."""
    spec = importlib.util.spec_from_file_location(f"_peer_adapter_{name}", ADAPTERS / f"{name}.py")
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


# Run in the peers venv: python -c RUNNER <adapter.py> <model_dir> <cache_dir> <out_dir>
RUNNER = r"""
import importlib.util, json, sys, time
from pathlib import Path
import numpy as np
path, model_dir, cache_dir, out = (Path(a) for a in sys.argv[1:5])
spec = importlib.util.spec_from_file_location("peer_adapter", path)
mod = importlib.util.module_from_spec(spec)
spec.loader.exec_module(mod)
reason = mod.unavailable()
if reason is not None:
    print(json.dumps({"unavailable": reason}))
    sys.exit(0)
t0 = time.perf_counter()
a = mod.Adapter(model_dir, 2, cache_dir)
init_s = time.perf_counter() - t0
X = np.load(model_dir / "X.npy")
batch = a.predict(X)
rows = np.array([a.predict(X[i : i + 1])[0] for i in range(200)])
one = a.predict(X[:1])
np.save(out / "batch.npy", batch)
np.save(out / "rows.npy", rows)
print(json.dumps({
    "name": mod.NAME, "env": mod.ENV, "note": a.note, "init_s": init_s,
    "dtype": str(batch.dtype), "shape": list(batch.shape),
    "one_dtype": str(one.dtype), "one_shape": list(one.shape),
}))
"""


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, np.ndarray]:
    """20 trees x 15 leaves on 8 float32 features; eta.txt, X.npy and a stray file.

    Features 0-3 have NaN in training (splits with missing_type NaN), 4-7 none (missing
    type None: LightGBM reads a NaN there as 0.0); the test rows have NaN everywhere.
    """
    import lightgbm as lgb

    rng = np.random.default_rng(7)
    n, f = 3000, 8
    X = rng.normal(size=(n, f)).astype(np.float32)
    X[:, :4][rng.random((n, 4)) < 0.15] = np.nan
    y = (
        3 * np.nan_to_num(X[:, 0], nan=2.0)
        + np.nan_to_num(X[:, 1]) ** 2
        + np.sin(X[:, 4] * 2)
        + X[:, 5] * X[:, 6]
        + rng.normal(0, 0.1, n)
    )
    params = {
        "objective": "regression",
        "num_leaves": 15,
        "min_data_in_leaf": 5,
        "verbose": -1,
        "num_threads": 1,
        "seed": 0,
    }
    booster = lgb.train(params, lgb.Dataset(X, y), num_boost_round=20)
    model_dir = tmp_path_factory.mktemp("peer_model")
    booster.save_model(str(model_dir / "eta.txt"))
    (model_dir / "manifest.json").write_text("{}")  # other files in the folder are ignored

    Xt = rng.normal(size=(N_ROWS, f)).astype(np.float32)
    Xt[rng.random(Xt.shape) < 0.1] = np.nan
    Xt[:20] = X[:20]  # training rows: values sitting next to thresholds
    np.save(model_dir / "X.npy", np.ascontiguousarray(Xt))
    return model_dir, np.asarray(booster.predict(Xt), dtype=np.float64)


def run_peer(name: str, model_dir: Path, cache_dir: Path, out: Path) -> dict:
    out.mkdir(parents=True, exist_ok=True)
    proc = subprocess.run(
        [
            str(PEERS_PY),
            "-c",
            RUNNER,
            str(ADAPTERS / f"{name}.py"),
            str(model_dir),
            str(cache_dir),
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=240,
        cwd=out,
    )
    assert proc.returncode == 0, f"{name} adapter failed:\n{proc.stderr[-3000:]}"
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.slow
@pytest.mark.parametrize("name", PEERS)
def test_peer_matches_lightgbm(
    name: str, tiny_model: tuple[Path, np.ndarray], tmp_path: Path
) -> None:
    if not PEERS_PY.exists():
        pytest.skip(
            f"peers venv absent ({PEERS_PY.relative_to(ROOT)}): "
            "build it with `.venv/bin/python bench/peers_env.py`"
        )
    model_dir, ref = tiny_model
    cache = tmp_path / "cache"

    first = run_peer(name, model_dir, cache, tmp_path / "run1")
    if "unavailable" in first:
        pytest.skip(f"{name} unavailable in the peers venv: {first['unavailable']}")
    assert (first["name"], first["env"]) == (name, "peers")
    assert first["dtype"] == "float64" and first["shape"] == [N_ROWS]
    assert first["one_dtype"] == "float64" and first["one_shape"] == [1]
    assert "compiled" in first["note"], first["note"]

    batch = np.load(tmp_path / "run1" / "batch.npy")
    rows = np.load(tmp_path / "run1" / "rows.npy")
    d_batch = float(np.abs(batch - ref).max())
    d_rows = float(np.abs(rows - ref[:200]).max())
    print(f"{name}: max |adapter - Booster.predict| batch {d_batch:.3g}, one-row {d_rows:.3g}")
    assert d_batch < TOL, f"{name} batch differs from LightGBM by {d_batch:.3g}"
    assert d_rows < TOL, f"{name} one-row path differs from LightGBM by {d_rows:.3g}"

    # Exactly one published cache file, no temporary left behind.
    files = sorted(p.name for p in cache.iterdir())
    assert len(files) == 1 and not files[0].startswith("."), files

    # A second process loads the compiled model from the cache.
    second = run_peer(name, model_dir, cache, tmp_path / "run2")
    assert "loaded from cache" in second["note"], second["note"]
    again = np.load(tmp_path / "run2" / "batch.npy")
    assert np.array_equal(again, batch)


@pytest.mark.parametrize("name", PEERS)
def test_unavailable_never_raises_in_main_venv(name: str) -> None:
    mod = load_adapter(name)
    assert name == mod.NAME
    assert mod.ENV == "peers"
    reason = mod.unavailable()
    assert reason is None or (isinstance(reason, str) and "\n" not in reason)
    if name == "lleaves":
        # lleaves is not installed in .venv (it cannot share numba's llvmlite).
        assert isinstance(reason, str) and "lleaves" in reason, reason
