"""The benchmark harness: runner (``bench/run.py``), worker, adapters and report.

One tiny suite run (10 trees x 7 leaves, quick mode, one pass, small pool, no peers
setup, no physical-limit runs) feeds the runner tests: the ``lightgbm`` and ``numba``
adapters in fresh worker processes, plus two throwaway adapters, one whose
``unavailable()`` gives a reason and one whose ``Adapter`` raises. The report tests use
a small hand-made JSON document.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from bench import report
from bench import run as suite

BATCHES = (1, 64, 1024)
THREADS = (1, 2)

UNAVAILABLE = """
NAME = "fakelib"
ENV = "main"


def unavailable():
    return "libfake is not installed\\n(second line)"


class Adapter:
    note = ""

    def __init__(self, model_dir, threads, cache_dir):
        raise AssertionError("must not be constructed")

    def predict(self, X):
        raise AssertionError("must not be called")
"""

BROKEN = """
NAME = "broken"
ENV = "main"


def unavailable():
    return None


class Adapter:
    note = "raises on load"

    def __init__(self, model_dir, threads, cache_dir):
        raise RuntimeError("boom while loading")

    def predict(self, X):
        raise AssertionError("must not be called")
"""


@pytest.fixture(scope="module")
def suite_doc(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    tmp = tmp_path_factory.mktemp("suite")
    (tmp / "fakelib.py").write_text(UNAVAILABLE)
    (tmp / "broken.py").write_text(BROKEN)
    out = tmp / "suite.json"
    suite.run_suite(
        [(10, 7)],
        ["lightgbm", "numba", str(tmp / "fakelib.py"), str(tmp / "broken.py")],
        quick=True,
        passes=1,
        train_rows=2_000,
        pool_rows=4_096,
        batches=BATCHES,
        threads=THREADS,
        cache=tmp / "cache",
        cold=False,
        limits=False,
        setup_peers=False,
        quiet_wait_s=0.0,
        worker_timeout=300,
        out=out,
    )
    doc: dict[str, Any] = json.loads(out.read_text())  # what the report reads: the file
    return doc


def test_runner_measures_everything_and_parity_holds(suite_doc: dict[str, Any]) -> None:
    (model,) = suite_doc["models"]
    assert model["shape"]["trees"] == 10
    assert model["visits_timed"]["mean"] > 0
    for name in ("lightgbm", "numba"):
        r = model["results"][name]
        assert r["status"] == "ok", r
        for key in ("load_s_warm", "first_call_ms_warm", "rss_model_mb", "peak_rss_mb"):
            assert r[key] is not None, (name, key)
        for q in ("p50_us", "p99_us", "p999_us"):
            assert r[q] > 0, (name, q)
        assert r["p50_us"] <= r["p99_us"] <= r["p999_us"]
        assert len(r["latency_quantiles"]) > 50
        assert set(r["rows_per_s"]) == {f"{b}@{t}" for b in BATCHES for t in THREADS}
        assert all(v > 0 for v in r["rows_per_s"].values())
        assert r["parity"]["ok"], r["parity"]
        assert r["parity"]["max_rel"] <= 1e-4
        assert r["parity"]["rows"] == suite_doc["settings"]["parity_rows"]
        assert r["thread_max_abs_diff"] <= 1e-9
    assert model["results"]["lightgbm"]["speedup_p50_vs_lightgbm"] == pytest.approx(1.0)
    assert model["results"]["numba"]["rows_ratio_vs_lightgbm"]
    assert suite_doc["machine"]["cores"] >= 1
    assert suite_doc["envs"]["main"]["libs"]["lightgbm"] != "not installed"


def test_unavailable_and_failing_adapters_are_reported(suite_doc: dict[str, Any]) -> None:
    res = suite_doc["models"][0]["results"]
    assert res["fakelib"]["status"] == "not installed: libfake is not installed (second line)"
    assert res["broken"]["status"].startswith("error: RuntimeError: boom while loading")
    md = report.render(suite_doc)
    assert "| fakelib | not installed: libfake is not installed (second line) |" in md
    assert "| broken | error: RuntimeError: boom while loading" in md


def test_missing_adapter_module_is_reported(tmp_path: Path) -> None:
    (entry,) = suite.resolve_adapters([str(tmp_path / "nothere.py")])
    assert entry["name"] == "nothere"
    assert "is missing" in entry["missing"]


def fixture_doc() -> dict[str, Any]:
    quantiles = [[q / 100, 10.0 + q / 10] for q in range(1, 100)] + [[0.999, 40.0]]

    def ok(p50: float, rows: float) -> dict[str, Any]:
        keys = [f"{b}@{t}" for b in (1, 64, 1024, 100_000, 1_000_000) for t in (1, 2)]
        return {
            "status": "ok",
            "note": "a note",
            "passes": 2,
            "passes_ok": 2,
            "load_s_cold": 1.5,
            "load_s_warm": 0.1,
            "first_call_ms_cold": 900.0,
            "first_call_ms_warm": 20.0,
            "rss_model_mb": 12.0,
            "rss_first_call_mb": 30.0,
            "p50_us": p50,
            "p99_us": 2 * p50,
            "p999_us": 4 * p50,
            "latency_quantiles": [[q, v * p50 / 10] for q, v in quantiles],
            "rows_per_s": dict.fromkeys(keys, rows),
            "cores_used": dict.fromkeys(keys, 1.0),
            "parity": {"ok": True, "max_rel": 0.0, "rows_off": 0},
        }

    models = []
    for trees, leaves in ((100, 31), (500, 63)):
        model: dict[str, Any] = {
            "trees": trees,
            "leaves": leaves,
            "shape": {
                "trees": trees,
                "mean_leaves": float(leaves),
                "internal_nodes": trees * (leaves - 1),
                "features": 20,
            },
            "visits_timed": {"mean": trees * 6.0, "max_tree_depth": 12},
            "visits_parity": {"mean": trees * 6.1},
            "model_bytes": {"eta.txt": 1_000_000},
            "bound": {
                "one_row_us": 1.0,
                "one_row_serial_us": 9.0,
                "visits_per_row": trees * 6.0,
                "rows_per_s": 1e6,
                "rows_per_s_compute": 1e6,
                "rows_per_s_membw": 3e8,
            },
            "results": {
                "lightgbm": ok(50.0, 50_000.0),
                "numba": ok(15.0, 100_000.0),
                "lleaves": {"status": "not installed: lleaves not importable: ImportError: x"},
            },
        }
        suite.compare(model)
        models.append(model)
    return {
        "command": ".venv/bin/python bench/run.py --quick",
        "started": "2026-11-26T00:00:00+00:00",
        "quick": True,
        "passes": 2,
        "cold_first_pass": True,
        "wall_s": 12.0,
        "settings": {"calls": 2000, "rounds": 2, "round_s": 0.1, "big_rounds": 1, "parity_rows": 3000,
                     "batches": [1, 64, 1024, 100_000, 1_000_000], "threads": [1, 2]},
        "machine": {"cpu": "Test CPU", "cores": 2, "caches": [{"level": 2, "type": "Unified", "size": "1024K", "shared_by_cpus": 1}]},
        "envs": {"main": {"python": "3.11", "libs": {"numpy": "2"}}, "peers": {"python": None, "error": "peers venv missing", "libs": {}}},
        "limits": {"ghz": 2.6, "reps": 3, "chains": 16, "chase_ns": {"L1_16KiB": 2.0},
                   "visit_latency_ns": {"3000": 12.0}, "visit_throughput_ns": {"3000": 2.0},
                   "call_floor_ns": 150.0, "copy_gbs": 20.0, "read_gbs": 30.0},
        "models": models,
    }  # fmt: skip


def test_report_renders_tables_and_png(tmp_path: Path) -> None:
    doc = fixture_doc()
    md = tmp_path / "RESULTS.md"
    md.write_text(
        "# Results\n\n## Summary\n\n| a | b |\n|---|---|\n| 1 | 2 |\n\n## Other\n\nkept\n"
    )
    png = tmp_path / "results" / "latency.png"
    report.write(doc, md, png)
    assert png.read_bytes()[:8] == report.PNG_SIGNATURE
    assert png.stat().st_size > 5_000
    text = md.read_text()
    for needle in (
        "### 100 trees × 31 leaves",
        "### 500 trees × 63 leaves",
        "| engine | status | load s cold / warm |",
        "| numba | ok | 1.50 / 0.10 | 900.0 / 20.0 |",
        "| lleaves | not installed: lleaves not importable: ImportError: x |",
        "3.33×",  # numba p50 speed-up vs lightgbm
        "| numba | 2 | 100k | 100k | 100k | 100k | 100k | 2.00× | 2.00× |",
        ".venv/bin/python bench/run.py --quick",
        "### Physical limit",
        "![single-row latency](results/latency.png)",
        "Test CPU",
    ):
        assert needle in text, needle
    assert text.index(report.BEGIN) > text.index("| 1 | 2 |")
    assert text.index(report.END) < text.index("## Other")
    assert text.endswith("## Other\n\nkept\n")


def test_marker_rewrite_leaves_the_rest_unchanged() -> None:
    before = "# T\n\nintro\n\n## Summary\n\n| x |\n|---|\n\ntext after table\n\n"
    after = "## Machine\n\nmachine text\n<!-- not a marker -->\n"
    page = before + after
    once = report.replace_block(page, "## Suite\n\nfirst\n")
    assert once.startswith(before) and once.endswith(after)
    assert "first" in once
    i, j = once.index(report.BEGIN), once.index(report.END) + len(report.END)
    assert once[:i] + once[j:].lstrip("\n") == page  # removing the block gives the page back
    twice = report.replace_block(once, "## Suite\n\nsecond\n")
    assert "first" not in twice and "second" in twice
    assert twice[:i] == once[:i]
    assert twice[twice.index(report.END) :] == once[once.index(report.END) :]
    assert report.replace_block(twice, "## Suite\n\nsecond\n") == twice
