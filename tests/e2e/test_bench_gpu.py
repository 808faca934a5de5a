"""bench/gpu.py, the prepared GPU benchmark, on a machine without a GPU: it refuses
clearly (exit 2) unless ``--cpu-only``, which runs the CPU half end to end."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "bench" / "gpu.py"


def _has_cuda() -> bool:
    import onnxruntime as ort

    if "CUDAExecutionProvider" in ort.get_available_providers():
        return True
    if importlib.util.find_spec("torch") is None:
        return False
    import torch

    return bool(torch.cuda.is_available())


def _run(*args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("INTELLILOG_")}
    env.setdefault("OMP_NUM_THREADS", "1")
    return subprocess.run(
        [sys.executable, str(SCRIPT), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=ROOT,
        env=env,
        check=False,
    )


@pytest.mark.skipif(_has_cuda(), reason="this machine has a CUDA device")
def test_without_a_gpu_it_stops_at_once_with_exit_2() -> None:
    res = _run(timeout=60)
    assert res.returncode == 2, res.stderr
    assert res.stderr.startswith("no CUDA device: onnxruntime "), res.stderr
    assert "--cpu-only" in res.stderr and res.stdout == ""


@pytest.mark.slow
def test_cpu_only_runs_the_cpu_half(tmp_path: Path) -> None:
    out = tmp_path / "gpu.json"
    res = _run(
        "--cpu-only",
        "--rows",
        "2000",
        "--trees",
        "20",
        "--leaves",
        "15",
        "--train-rows",
        "5000",
        "--json",
        str(out),
    )
    assert res.returncode == 0, res.stderr
    assert "verdict: pass" in res.stdout
    r = json.loads(out.read_text())
    assert r["failures"] == [] and r["rows"] == [2000]
    assert set(r["throughput"]) == {"numba (cpu)", "onnx (cpu)"}
    assert all(t["2000"]["rows_per_s"] > 0 for t in r["throughput"].values())
    assert r["correctness"]["numba (cpu)"]["no_nan"]["max_rel"] == 0.0
    assert r["correctness"]["Predictor routed"]["all_rows"]["max_rel"] <= 1e-4
    assert r["predictor"]["large_batch"] is None and r["predictor"]["large_batch_reason"]
    assert "Predictor cpu, rows with NaN" in r["predictor_throughput"]
