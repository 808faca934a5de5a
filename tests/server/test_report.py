"""``intellilog report``: one self-contained HTML page per model version (server/report.py).

The session's tiny models (tests/e2e/servekit.py) are reported on a generated labelled
file; the live section reads a SQLite store filled through the store API.
"""

from __future__ import annotations

import asyncio
import base64
import re
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from server.report import make_report, write_atomic
from server.store import FeedbackRow, PredictionRow, open_store, pack_features
from training.registry import Registry

_IMG = re.compile(r'<img alt="[^"]*" src="data:image/png;base64,([A-Za-z0-9+/=]+)">')
_EXTERNAL = re.compile(r"""(?:src|href)\s*=\s*["']?\s*(?:https?:)?//""", re.IGNORECASE)
_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
DATA_ROWS = 1500


@pytest.fixture(scope="module")
def later_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A labelled file of the spec's columns that no model was trained on."""
    from training.io import write_table
    from training.synth import generate

    path = tmp_path_factory.mktemp("report-data") / "later.parquet"
    write_table(generate(DATA_ROWS, seed=5), path)
    return path


def section(page: str, sid: str) -> str:
    m = re.search(rf'<section id="{re.escape(sid)}"[^>]*>(.*?)</section>', page, re.S)
    assert m, f"no section {sid!r}"
    return m.group(1)


def images(page: str) -> list[bytes]:
    """The inline PNGs of a page (every one decodes and is a PNG)."""
    out = [base64.b64decode(b, validate=True) for b in _IMG.findall(page)]
    assert all(png.startswith(_PNG_MAGIC) for png in out)
    assert len(out) == page.count("<img"), "an <img> that is not an inline PNG"
    return out


def assert_self_contained(page: str) -> None:
    assert not _EXTERNAL.search(page), _EXTERNAL.search(page)
    assert "http://" not in page and "https://" not in page
    assert "<script" not in page and "<link" not in page


def empty_store(url: str) -> None:
    async def go() -> None:
        store = await open_store(url)
        await store.close()

    asyncio.run(go())


def test_report_with_a_data_file_and_an_empty_store(
    models: Any, later_data: Path, cli: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    url = f"sqlite:///{tmp_path / 'db' / 'intellilog.db'}"
    (tmp_path / "db").mkdir()
    empty_store(url)
    monkeypatch.setenv("DATABASE_URL", url)
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    out = out_dir / "report.html"

    r = cli("report", "--registry", models.registry, "--model", "v1", "--data", later_data,
            "--out", out)  # fmt: skip
    assert r.code == 0, r.err
    assert r.err_lines == [
        f"wrote {out} (model v1, 7 figures, {out.stat().st_size / 1024:.0f} KiB)"
    ]
    assert [p.name for p in out_dir.iterdir()] == ["report.html"]  # no temporary file left
    page = out.read_text(encoding="utf-8")
    assert_self_contained(page)

    manifest = Registry(models.registry).manifest("v1")
    n_cats = len(manifest["spec"]["categorical"])
    # scatter, calibration, hour, weekday, one per categorical; nothing live
    assert len(images(page)) == 4 + n_cats == 7

    head = section(page, "header")
    assert manifest["created_at"] in head and manifest["spec_hash"] in head
    assert "compiled" in head and "onnx" in head  # engines it can serve
    holdout = section(page, "holdout")
    met = manifest["metrics"]
    assert f"{met['model']['mae']:.2f}" in holdout
    assert f"{met['baselines']['median']['mae']:.2f}" in holdout
    assert f"{DATA_ROWS} valid rows" in section(page, "data")

    by_hour = section(page, "by-hour")
    assert "<img" in by_hour
    hour_rows = re.findall(r"<tr><td>(\d\d)</td><td>(\d+)</td>", by_hour)
    assert 20 <= len(hour_rows) <= 24 and sum(int(n) for _, n in hour_rows) == DATA_ROWS
    weekday_rows = re.findall(r"<tr><td>(Mon|Tue|Wed|Thu|Fri|Sat|Sun)</td>", page)
    assert len(weekday_rows) == 7
    for name in ("vehicle_type", "weather", "zone"):
        assert "<img" in section(page, f"by-{name}")
    assert "coverage" in section(page, "calibration")

    live = section(page, "live")
    assert "no feedback yet for model v1" in live and "<img" not in live
    assert "no logged predictions for model v1" in section(page, "drift")


def _fill(url: str, model: Any, data: Path, now: float) -> tuple[int, int]:
    """120 logged v1 predictions over the last 3 days (real feature rows), 100 with
    feedback; v2 predictions with feedback and feedback of unknown orders around them.
    Returns (v1 rows with feedback, v1 rows logged in the last 24 h)."""
    from training.io import read_table, to_columns

    table = read_table(data, model.pipe.spec).slice(0, 150)
    conv = to_columns(table, model.pipe, with_target=True)
    X = model.pipe.matrix(conv.columns)
    eta, p10, p90 = model.predict(X)
    assert conv.target is not None
    blobs = pack_features(X)
    preds, fb = [], []
    created = now - np.linspace(3 * 86_400, 600, 150)
    for i in range(150):
        version = "v1" if i < 120 else "v2"
        preds.append(
            PredictionRow(
                row_id=f"r{i}", request_id=f"q{i}", order_id=f"o{i}", tenant="default",
                model_version=version, inputs="{}", features=blobs[i], eta=float(eta[i]),
                p10=float(p10[i]), p90=float(p90[i]), created_at=float(created[i]),
            )
        )  # fmt: skip
        if i % 6 != 5 or i >= 120:  # 20 of the v1 predictions wait for their feedback
            done = float(created[i] + conv.target[i] * 60)
            fb.append(FeedbackRow(order_id=f"o{i}", tenant="default",
                                  actual_minutes=float(conv.target[i]), completed_at=done,
                                  received_at=done + 30))  # fmt: skip
    fb.append(FeedbackRow(order_id="nobody", tenant="default", actual_minutes=10.0,
                          completed_at=now - 60, received_at=now - 30))  # fmt: skip

    async def go() -> None:
        store = await open_store(url)
        try:
            await store.write_predictions(preds)
            await store.write_feedback(fb)
        finally:
            await store.close()

    asyncio.run(go())
    return 100, int(np.sum(created[:120] >= now - 86_400))


def test_live_error_and_drift_with_feedback(models: Any, later_data: Path, tmp_path: Path) -> None:
    from server.models import load_model

    reg = Registry(models.registry)
    now = time.time()
    url = f"sqlite:///{tmp_path / 'intellilog.db'}"
    with_feedback, last_day = _fill(url, load_model(reg, "v1", threads=1), later_data, now)
    out = tmp_path / "r.html"

    res = make_report(reg, "production", out, database_url=url, now=now)
    assert (res.version, res.live_rows, res.drift_rows) == ("v1", with_feedback, last_day)
    page = out.read_text(encoding="utf-8")
    assert res.bytes == len(page.encode()) and res.data_rows is None
    assert_self_contained(page)
    assert len(images(page)) == res.images == 2  # daily live error, PSI bars

    live = section(page, "live")
    assert f'<span class="live-count">{with_feedback}</span> predictions with feedback' in live
    assert "no feedback yet" not in page
    days = re.findall(r"<tr><td>(\d{4}-\d\d-\d\d)</td><td>(\d+)</td>", live)
    assert len(days) >= 3 and sum(int(n) for _, n in days) == with_feedback
    drift = section(page, "drift")
    assert f"{last_day} logged rows for model v1" in drift
    assert "insufficient data" in drift  # under 500 rows: bars, no verdict
    assert "distance_km" in drift and "<img" in drift
    assert "no data file given" in section(page, "data")

    # v2 has feedback of its own, counted for v2 only
    res2 = make_report(reg, "v2", tmp_path / "r2.html", database_url=url, now=now)
    assert res2.live_rows == 30


def test_no_store_file_is_not_created_and_bad_model_is_one_line(
    models: Any, cli: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    db = tmp_path / "none" / "intellilog.db"
    monkeypatch.setenv("DATABASE_URL", f"sqlite:///{db}")
    out = tmp_path / "r.html"
    r = cli("report", "--registry", models.registry, "--out", out)
    assert r.code == 0, r.err
    page = out.read_text(encoding="utf-8")
    assert "no feedback yet for model v1" in page and f"{db} does not exist" in page
    assert not db.exists() and not db.parent.exists()
    assert len(images(page)) == 0

    bad = tmp_path / "bad.html"
    r = cli("report", "--registry", models.registry, "--model", "v99", "--out", bad)
    assert r.code == 2
    assert len(r.err_lines) == 1 and r.err_lines[0].startswith("error: ")
    assert "v99" in r.err_lines[0]
    assert not bad.exists()

    r = cli("report", "--registry", models.registry, "--out", tmp_path / "no" / "r.html")
    assert r.code == 2 and len(r.err_lines) == 1 and "does not exist" in r.err


def test_write_atomic_replaces_the_whole_file(tmp_path: Path) -> None:
    path = tmp_path / "r.html"
    path.write_text("old")
    write_atomic(path, "new page")
    assert path.read_text() == "new page"
    assert [p.name for p in tmp_path.iterdir()] == ["r.html"]
