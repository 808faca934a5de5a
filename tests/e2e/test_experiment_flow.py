"""The MLOps loop end to end, on one served app and one SQLite store.

Production (v1) is trained on eight weeks of generated deliveries. From the ninth week on
traffic is slower (every actual 1.5 x longer: a shift the generator's data is given in
this test). The server answers that week and its feedback comes back; ``retrain`` trains
on it, finds the new model better and starts a shadow test; the shadow test's traffic and
feedback make ``analyze`` recommend promotion; it is stopped and the same candidate runs
as an A/B test, where each order's arm answers; ``conclude`` promotes it and the server
switches without a restart; the stale v1, tried again as a candidate, is archived; and
``models rollback`` restores the previous production.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pytest

from tests.conftest import TINY_TRAIN, run_main

DAY = 86_400.0
SLOWER = 1.5
ADMIN = {"Authorization": "Bearer tok"}


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    from training.synth import generate, write_table

    root = tmp_path_factory.mktemp("flow")
    now = time.time()
    start = datetime.fromtimestamp(now - 10 * 7 * DAY, UTC).date()
    table = generate(30_000, seed=11, start=start.isoformat(), weeks=10)
    t = np.array(
        [datetime.fromisoformat(s).timestamp() for s in table.column("created_at").to_pylist()]
    )
    train = root / "train.parquet"
    write_table(table.filter(pa.array(t < now - 15 * DAY)), train)
    cwd = os.getcwd()
    try:
        os.chdir(root)
        assert (
            run_main(
                "train", "--data", train, "--registry", root / "registry", "--promote", *TINY_TRAIN
            )
            == 0
        )
    finally:
        os.chdir(cwd)
    week = table.filter(pa.array((t >= now - 7 * DAY) & (t < now - DAY))).to_pylist()
    later = table.filter(pa.array((t >= now - 15 * DAY) & (t < now - 7 * DAY))).to_pylist()
    return {"registry": root / "registry", "week": week, "later": later, "now": now}


@pytest.fixture
def app(world: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    import shutil

    from litestar.testing import TestClient

    from server.app import create_app
    from server.config import Settings

    reg = tmp_path / "registry"
    shutil.copytree(world["registry"], reg)
    url = f"sqlite:///{tmp_path / 'intellilog.db'}"
    for var, val in {
        "MODEL_ARTIFACT_PATH": str(reg),
        "DATABASE_URL": url,
        "ENABLE_AB_TESTING": "true",
        "AB_MODE": "shadow",
        "AB_SEQUENTIAL": "true",
    }.items():
        monkeypatch.setenv(var, val)
    (tmp_path / "cwd").mkdir()
    monkeypatch.chdir(tmp_path / "cwd")
    settings = Settings(
        model_artifact_path=str(reg),
        database_url=url,
        enable_ab_testing=True,
        admin_token="tok",
        reload_interval_s=0.1,
        log_level="WARNING",
        quality_interval_s=3600,
        drift_interval_s=3600,
    )
    with TestClient(create_app(settings), raise_server_exceptions=False) as client:
        client.registry = reg
        yield client


def _serve(client: Any, rows: list[dict[str, Any]], prefix: str) -> list[dict[str, Any]]:
    """Ask for every row's ETA in batches; return the answers in row order."""
    out: list[dict[str, Any]] = []
    for a in range(0, len(rows), 500):
        part = []
        for i, r in enumerate(rows[a : a + 500], a):
            r = {k: v for k, v in r.items() if k != "actual_minutes"}
            r["order_id"] = f"{prefix}{i}"
            part.append(r)
        res = client.post("/v1/predict/batch", json={"deliveries": part})
        assert res.status_code == 200, res.text
        out.extend(res.json()["predictions"])
    return out


def _feedback(client: Any, rows: list[dict[str, Any]], prefix: str) -> None:
    fb = []
    for i, r in enumerate(rows):
        actual = float(r["actual_minutes"]) * SLOWER
        created = datetime.fromisoformat(r["created_at"]).timestamp()
        done = min(created + actual * 60.0, time.time() - 1)
        fb.append({"order_id": f"{prefix}{i}", "actual_minutes": actual, "completed_at": done})
    for a in range(0, len(fb), 1000):
        res = client.post("/v1/feedback", json={"feedback": fb[a : a + 1000]})
        assert res.status_code == 202, res.text


def _wait(check: Any, what: str, timeout: float = 10.0) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if check():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def _one(client: Any, row: dict[str, Any], order: str) -> dict[str, Any]:
    r = {k: v for k, v in row.items() if k != "actual_minutes"} | {"order_id": order}
    res = client.post("/v1/predict", json=r)
    assert res.status_code == 200, res.text
    return dict(res.json())


def _written(client: Any) -> float:
    from tests.e2e.servekit import metric

    text = client.get("/metrics").text
    return metric(text, "intellilog_prediction_log_rows_total", outcome="written")


def _drain(client: Any, since: float, rows: int) -> None:
    """Wait until the prediction log has written ``rows`` more rows than ``since`` (the
    analysis reads them from the store)."""
    _wait(lambda: _written(client) >= since + rows, f"{rows} logged rows")


@pytest.mark.slow
def test_retrain_shadow_ab_promote_archive_rollback(world: dict[str, Any], app: Any) -> None:
    from tests.conftest import run_main as cli

    week = world["week"]
    logged = _written(app)
    answers = _serve(app, week, "w")
    assert {a["arm"] for a in answers} == {"production"}
    _feedback(app, week, "w")
    _drain(app, logged, len(week))

    # retrain finds the slower traffic and starts a shadow test of the new version
    assert cli("retrain", "--min-samples", "100") == 0
    exps = app.get("/v1/admin/experiments", headers=ADMIN).json()["experiments"]
    assert len(exps) == 1 and exps[0]["mode"] == "shadow" and exps[0]["status"] == "running"
    new = exps[0]["candidate_version"]
    assert new != "v1"
    _wait(lambda: _one(app, week[0], "probe-1")["arm"] == "baseline", "shadow routing")

    # shadow: production answers, the candidate scores the same orders off the path
    later = world["later"][:1500]
    logged = _written(app)
    shadow_answers = _serve(app, later, "s")
    assert {(a["arm"], a["model_version"]) for a in shadow_answers} == {("baseline", "v1")}
    _feedback(app, later, "s")
    _drain(app, logged, 2 * len(later))  # both versions' answers
    eid = exps[0]["experiment_id"]
    analysis = app.get(f"/v1/admin/experiments/{eid}/analysis", headers=ADMIN).json()["analysis"]
    assert analysis["mode"] == "shadow"
    assert analysis["baseline"]["n"] == analysis["candidate"]["n"] >= 1000
    assert analysis["recommendation"] == "promote_to_production", analysis["reason"]

    # the same candidate as an A/B test: each order's arm answers it (a 10 % minimum
    # detectable effect: A/B needs ~4x the rows of the paired shadow test at 5 %)
    stop = app.post(f"/v1/admin/experiments/{eid}/stop", headers=ADMIN, json={"reason": "to ab"})
    assert stop.status_code == 200 and stop.json()["status"] == "stopped"
    start = app.post(
        "/v1/admin/experiments",
        headers=ADMIN,
        json={"candidate": new, "mode": "ab", "split": 0.5, "mde": 0.1},
    )
    assert start.status_code == 201, start.text
    ab_id = start.json()["experiment_id"]
    _wait(lambda: _one(app, week[1], "probe-2")["arm"] in ("baseline", "candidate"), "ab routing")
    ab_rows = world["later"][1500:] + week
    logged = _written(app)
    ab_answers = _serve(app, ab_rows, "a")
    arms = [(a["arm"], a["model_version"]) for a in ab_answers]
    assert set(arms) == {("baseline", "v1"), ("candidate", new)}
    assert abs(sum(a == "candidate" for a, _ in arms) / len(arms) - 0.5) < 0.05
    again = _serve(app, ab_rows[:300], "a")  # sticky: the same orders, the same arms
    assert [a["arm"] for a in again] == [a for a, _ in arms[:300]]
    _feedback(app, ab_rows, "a")
    _drain(app, logged, len(ab_rows) + 300)
    res = app.post(f"/v1/admin/experiments/{ab_id}/conclude", headers=ADMIN, json={})
    assert res.status_code == 200, res.text
    assert res.json()["experiment"]["decision"] == "promote_to_production"
    _wait(lambda: _one(app, week[2], "probe-3")["model_version"] == new, "the promotion")
    assert _one(app, week[2], "probe-4")["arm"] == "production"

    # the stale v1 as a candidate against the new production: archived
    from training.registry import Registry

    reg = Registry(app.registry)
    start = app.post(
        "/v1/admin/experiments",
        headers=ADMIN,
        json={"candidate": "v1", "mode": "shadow", "mde": 0.1},
    )
    assert start.status_code == 201, start.text
    stale_id = start.json()["experiment_id"]
    _wait(lambda: _one(app, week[3], "probe-5")["arm"] == "baseline", "shadow routing")
    logged = _written(app)
    _serve(app, later, "z")
    _feedback(app, later, "z")
    _drain(app, logged, 2 * len(later))
    res = app.post(f"/v1/admin/experiments/{stale_id}/conclude", headers=ADMIN, json={})
    assert res.status_code == 200, res.text
    assert res.json()["experiment"]["decision"] == "archive_candidate"
    assert "v1" in reg.archived() and reg.aliases() == {"production": new}

    # one command restores the previous production; the server follows
    assert cli("models", "rollback", "--registry", app.registry) == 0
    _wait(lambda: _one(app, week[4], "probe-6")["model_version"] == "v1", "the rollback")
