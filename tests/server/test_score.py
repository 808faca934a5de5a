"""``intellilog score``'s report says which engine scored the large batches: the GPU
engine (simulated here, tests/server/fakegpu.py) or why there is none."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq
import pytest

from tests.server.fakegpu import add_hb_export

pytestmark = pytest.mark.slow


def _score(cli: Callable[..., Any], registry: Path, out: Path, data: Path, *extra: str) -> Any:
    res = cli("score", data, "--out", out, "--registry", registry, "--quiet", *extra)
    assert res.code == 0, res.err
    return res


def test_report_says_why_large_batches_stay_on_cpu(
    cli: Callable[..., Any], models: Any, tmp_path: Path
) -> None:
    report = _score(cli, models.registry, tmp_path / "a.parquet", models.data, "--json").json()
    assert report["engine"] == "compiled" and report["device"] == "cpu"
    assert report["large_batch"] is None and report["rows_gpu"] == 0
    assert report["large_batch_reason"].startswith("no hummingbird export: eta.hb.onnx")
    text = _score(cli, models.registry, tmp_path / "b.parquet", models.data).err
    assert "large batches: compiled on cpu; no GPU engine: no hummingbird export: eta" in text


def test_large_batches_are_scored_on_the_gpu_and_the_report_says_so(
    cli: Callable[..., Any],
    registry: Path,
    models: Any,
    fake_gpu: Any,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    add_hb_export(registry / "versions" / "v1")
    monkeypatch.setenv("INTELLILOG_GPU_MIN_ROWS", "0")
    _score(cli, registry, tmp_path / "cpu.parquet", models.data, "--batch-rows", "1000")
    assert fake_gpu.loads == 0
    monkeypatch.setenv("INTELLILOG_GPU_MIN_ROWS", "500")
    report = _score(
        cli, registry, tmp_path / "gpu.parquet", models.data, "--batch-rows", "1000", "--json"
    ).json()
    assert report["large_batch"] == {
        "engine": "hummingbird",
        "device": "cuda",
        "runtime": "fake CUDA",
        "min_rows": 500,
        "nan_rows": "compiled",
    }
    assert report["large_batch_reason"] is None
    gpu_rows = sum(fake_gpu.rows()[1:])  # the first call is the load-time check
    assert 0 < report["rows_gpu"] == gpu_rows <= report["rows_scored"]
    assert not fake_gpu.saw_nan()
    cpu, gpu = pq.read_table(tmp_path / "cpu.parquet"), pq.read_table(tmp_path / "gpu.parquet")
    for col in ("eta_minutes", "eta_p10", "eta_p90"):
        np.testing.assert_array_equal(gpu.column(col).to_numpy(), cpu.column(col).to_numpy())
    text = _score(cli, registry, tmp_path / "c.parquet", models.data, "--batch-rows", "1000").err
    assert "large batches (>= 500 rows): hummingbird on cuda (fake CUDA)" in text
    assert "rows with NaN on compiled" in text
