"""The prediction log and feedback through the app: every answered prediction reaches the
store (each route, micro-batched requests too) with the answer it got, feedback is
stored with its counts, bad feedback is refused naming the field, ``PREDICTION_LOG=off``
logs nothing, shutdown flushes, a database down at start-up is spooled to and replayed,
and a database newer than the code stops start-up. SQLite, and PostgreSQL where the
tests can start one (tests/pgserver.py: skipped without it, failed under CI=true).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import msgspec
import numpy as np
import pytest

from server.store import Store, open_store
from tests.e2e import servekit as kit
from tests.pgserver import PgServer
from tests.server.store.storekit import raw_sql

pytestmark = pytest.mark.slow

ROW: dict[str, Any] = kit.ROW
COLS = (
    "row_id, request_id, order_id, tenant, model_version, arm, inputs, features, eta, p10, "
    "p90, created_at"
)
JSON_CT = {"content-type": "application/json"}


@pytest.fixture(params=["sqlite", "postgres"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A fresh, empty database: a SQLite file, or a new PostgreSQL database."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'db' / 'intellilog.db'}"
    server: PgServer = request.getfixturevalue("postgres")
    return server.new_database()


@pytest.fixture(scope="module")
def pipe(models: Any) -> Any:
    """The served model's feature pipeline (to check the logged feature rows)."""
    from server.models import load_model
    from training.registry import Registry

    return load_model(Registry(models.registry), "production", engine="compiled").pipe


def settings(registry: Path, url: str, tmp_path: Path, **kw: Any) -> Any:
    from server.config import Settings

    base: dict[str, Any] = {
        "model_artifact_path": str(registry),
        "reload_interval_s": 3600.0,
        "log_level": "WARNING",
        "database_url": url,
        "spool_path": str(tmp_path / "spool" / "intellilog.spool"),
        "tenant_id": "acme",
    }
    base.update(kw)
    return Settings(**base)


@contextlib.contextmanager
def serve(registry: Path, url: str, tmp_path: Path, log_to: Any = None, **kw: Any) -> Iterator[Any]:
    """A started TestClient; leaving the block shuts the app down (flushes the log).
    ``log_to``: a pytest ``caplog`` that sees the server's log records."""
    from litestar.testing import TestClient

    from server.app import create_app

    app = create_app(settings(registry, url, tmp_path, **kw))
    if log_to is not None:  # the product's logger does not propagate to the root logger
        logging.getLogger("intellilog").addHandler(log_to.handler)
    with TestClient(app, raise_server_exceptions=False) as client:
        client.recorder = app.recorder
        yield client


@contextlib.asynccontextmanager
async def lifespan(app: Any) -> AsyncIterator[None]:
    """Run the app's ASGI lifespan on the current event loop."""
    to_app: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
    from_app: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
    scope = {"type": "lifespan", "asgi": {"version": "3.0"}, "state": {}}
    task = asyncio.create_task(app(scope, to_app.get, from_app.put))
    await to_app.put({"type": "lifespan.startup"})
    msg = await from_app.get()
    assert msg["type"] == "lifespan.startup.complete", msg
    try:
        yield
    finally:
        await to_app.put({"type": "lifespan.shutdown"})
        assert (await from_app.get())["type"] == "lifespan.shutdown.complete"
        await task


def with_store(url: str, fn: Callable[[Store], Awaitable[Any]]) -> Any:
    async def run() -> Any:
        store = await open_store(url)
        try:
            return await fn(store)
        finally:
            await store.close()

    return asyncio.run(run())


def logged(url: str) -> list[dict[str, Any]]:
    """Every logged prediction, oldest first (raw SQL: the store API has no such read)."""
    names = [c.strip() for c in COLS.split(",")]
    rows = raw_sql(url, f"SELECT {COLS} FROM predictions ORDER BY created_at, row_id")
    return [dict(zip(names, r, strict=True)) for r in rows]


def post(client: Any, url: str, body: Any, **headers: str) -> Any:
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    return client.post(url, content=content, headers={**JSON_CT, **headers})


def features_of(pipe: Any, rows: list[dict[str, Any]]) -> list[bytes]:
    items = msgspec.convert(rows, list[pipe.spec.request_struct])
    X = pipe.matrix(pipe.columns(items))
    return [np.asarray(r, dtype="<f4").tobytes() for r in X]


def v2_request(rows: list[dict[str, Any]], with_key: bool) -> dict[str, Any]:
    names = [k for k in ROW if with_key or k != "order_id"]
    inputs = []
    for k in names:
        vals = [r[k] for r in rows]
        if k in ("order_id", "created_at", "vehicle_type", "weather", "zone"):
            dt = "BYTES"
        else:
            dt = "FP64"
        inputs.append({"name": k, "shape": [len(rows)], "datatype": dt, "data": vals})
    return {"inputs": inputs}


def metric(client: Any, name: str, **labels: str) -> float:
    return kit.metric(client.get("/metrics").text, name, **labels)


# ---- every route logs every answered row -------------------------------------------------------


def test_every_route_logs_each_row_with_the_answer_it_got(
    models: Any, db_url: str, tmp_path: Path, pipe: Any
) -> None:
    rows = kit.sample_rows(6, seed=71)
    for i, r in enumerate(rows):
        r["order_id"] = f"ord-{i}"
    t0 = time.time()
    with serve(models.registry, db_url, tmp_path) as c:
        one_body = json.dumps(rows[0]).encode()
        one = post(c, "/v1/predict", one_body, **{"x-request-id": "client-1"})
        two_body = json.dumps(rows[1]).encode()
        two = post(c, "/v1/predict", two_body)
        sent = [json.dumps(r) for r in rows[2:4]]
        batch_body = ('{"deliveries": [' + ", ".join(sent) + "]}").encode()
        batch = post(c, "/v1/predict/batch", batch_body)
        v2 = post(c, "/v2/models/eta/infer", v2_request(rows[4:5], with_key=True))
        v2_nokey = post(c, "/v2/models/eta/infer", v2_request(rows[5:6], with_key=False))
        for r in (one, two, batch, v2, v2_nokey):
            assert r.status_code == 200, r.text
    t1 = time.time()
    got = logged(db_url)
    assert len(got) == 6
    by_order = {g["order_id"]: g for g in got if g["order_id"] is not None}

    # what each answer said, by order id
    answers: dict[str | None, tuple[float, float, float]] = {}
    for r in (one.json(), two.json(), *batch.json()["predictions"]):
        answers[r["order_id"]] = (r["eta_minutes"], r["eta_p10"], r["eta_p90"])
    for resp, order in ((v2, "ord-4"), (v2_nokey, None)):
        outs = {o["name"]: o["data"][0] for o in resp.json()["outputs"]}
        answers[order] = (outs["eta_minutes"], outs["eta_p10"], outs["eta_p90"])

    expected_features = features_of(pipe, rows)
    for g in got:
        assert (g["eta"], g["p10"], g["p90"]) == answers[g["order_id"]]  # exactly
        assert g["tenant"] == "acme" and g["model_version"] == "v1" and g["arm"] == "production"
        assert t0 <= g["created_at"] <= t1
        i = int(g["order_id"][4:]) if g["order_id"] else 5
        assert bytes(g["features"]) == expected_features[i]

    # ids: the client's request id is kept, the row id is unique all the same
    g = by_order["ord-0"]
    assert g["request_id"] == "client-1" and g["row_id"].endswith(":0")
    assert g["row_id"] != "client-1:0"
    g = by_order["ord-1"]
    assert g["row_id"] == f"{two.json()['request_id']}:0" == f"{g['request_id']}:0"
    rid = batch.json()["request_id"]
    assert [by_order[f"ord-{i}"]["row_id"] for i in (2, 3)] == [f"{rid}:0", f"{rid}:1"]

    # inputs: each row as sent
    assert by_order["ord-0"]["inputs"] == one_body.decode()
    assert [by_order[f"ord-{i}"]["inputs"] for i in (2, 3)] == sent
    assert json.loads(by_order["ord-4"]["inputs"]) == rows[4]
    nokey = next(g for g in got if g["order_id"] is None)
    assert json.loads(nokey["inputs"]) == {k: v for k, v in rows[5].items() if k != "order_id"}

    # and through the store API: the logged features and ETAs of version v1
    samples = with_store(db_url, lambda s: s.recent_features("acme", since=t0))
    assert [s.model_version for s in samples] == ["v1"]
    assert sorted(samples[0].eta.tolist()) == sorted(a[0] for a in answers.values())
    assert samples[0].features.shape == (6, pipe.n_features)
    assert sorted(r.astype("<f4").tobytes() for r in samples[0].features) == sorted(
        expected_features
    )


def test_micro_batched_requests_are_each_logged(models: Any, tmp_path: Path, pipe: Any) -> None:
    """Concurrent /v1/predict requests share an engine call; each is logged on its own."""
    import httpx

    from server.app import create_app

    url = f"sqlite:///{tmp_path / 'intellilog.db'}"
    app = create_app(settings(models.registry, url, tmp_path))
    rows = kit.sample_rows(16, seed=73)
    for i, r in enumerate(rows):
        r["order_id"] = f"mb-{i}"

    async def together() -> tuple[list[Any], str]:
        async with lifespan(app):
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://t") as c:
                answers = await asyncio.gather(*(c.post("/v1/predict", json=r) for r in rows))
                text = (await c.get("/metrics")).text
        return answers, text

    from server import metrics

    calls0 = kit.metric(metrics.render().decode(), "intellilog_micro_batch_rows_count")
    answers, text = asyncio.run(together())
    assert kit.metric(text, "intellilog_micro_batch_rows_count") - calls0 < len(rows)
    got = {g["order_id"]: g for g in logged(url)}
    assert len(got) == len(rows)
    feats = features_of(pipe, rows)
    for i, a in enumerate(answers):
        body = a.json()
        g = got[body["order_id"]]
        assert (g["eta"], g["p10"], g["p90"]) == (
            body["eta_minutes"],
            body["eta_p10"],
            body["eta_p90"],
        )
        assert g["row_id"] == f"{body['request_id']}:0"
        assert bytes(g["features"]) == feats[i]


def test_large_batches_are_logged_from_the_worker_thread(models: Any, tmp_path: Path) -> None:
    """Batches of more than 256 rows are predicted (and their log rows built) off the loop."""
    url = f"sqlite:///{tmp_path / 'intellilog.db'}"
    rows = kit.sample_rows(300, seed=74)
    with serve(models.registry, url, tmp_path) as c:
        r = post(c, "/v1/predict/batch", {"deliveries": rows})
        assert r.status_code == 200, r.text
    got = logged(url)
    rid = r.json()["request_id"]
    assert [g["row_id"] for g in sorted(got, key=lambda g: int(g["row_id"].split(":")[1]))] == [
        f"{rid}:{i}" for i in range(300)
    ]
    etas = {g["row_id"]: g["eta"] for g in got}
    assert [etas[f"{rid}:{i}"] for i in range(300)] == [
        p["eta_minutes"] for p in r.json()["predictions"]
    ]


# ---- feedback ------------------------------------------------------------------------------------


def test_feedback_is_stored_with_its_counts(models: Any, db_url: str, tmp_path: Path) -> None:
    with serve(models.registry, db_url, tmp_path) as c:
        p1 = post(c, "/v1/predict", {**ROW, "order_id": "f-1"}).json()
        p2 = post(c, "/v1/predict", {**ROW, "order_id": "f-2", "items_count": 9}).json()
        r = post(
            c,
            "/v1/feedback",
            {"order_id": "f-1", "actual_minutes": 30.5, "completed_at": "2025-06-03T13:05:00Z"},
        )
        assert r.status_code == 202, r.text
        assert r.json() == {
            "accepted": 1,
            "inserted": 1,
            "updated": 0,
            "unknown_order_ids": 0,
            "spooled": 0,
        }
        assert r.headers["x-request-id"]
        before = {
            k: metric(c, "intellilog_feedback_rows_total", result=k)
            for k in ("inserted", "updated", "unknown")
        }
        r = post(
            c,
            "/v1/feedback",
            {
                "feedback": [
                    {"order_id": "f-1", "actual_minutes": 33.0, "completed_at": 1748948800},
                    {"order_id": "f-2", "actual_minutes": 41.25, "completed_at": 1748948900.5},
                    {"order_id": "nobody", "actual_minutes": 12, "completed_at": 1748948900},
                ]
            },
        )
        assert r.status_code == 202, r.text
        assert r.json() == {
            "accepted": 3,
            "inserted": 2,
            "updated": 1,
            "unknown_order_ids": 1,
            "spooled": 0,
        }
        after = {k: metric(c, "intellilog_feedback_rows_total", result=k) for k in before}
        assert {k: after[k] - before[k] for k in before} == {
            "inserted": 2,
            "updated": 1,
            "unknown": 1,
        }
    joined = with_store(db_url, lambda s: s.joined("acme", since=0))
    got = {
        (j.eta, j.p10, j.p90): (j.actual, j.completed_at, j.model_version, j.arm) for j in joined
    }
    assert got == {
        (p1["eta_minutes"], p1["eta_p10"], p1["eta_p90"]): (33.0, 1748948800.0, "v1", "production"),
        (p2["eta_minutes"], p2["eta_p10"], p2["eta_p90"]): (
            41.25,
            1748948900.5,
            "v1",
            "production",
        ),
    }
    tenants = raw_sql(db_url, "SELECT DISTINCT tenant FROM feedback")
    assert tenants == [("acme",)]


def test_feedback_for_a_prediction_still_queued_is_not_unknown(
    models: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import server.recorder as recorder

    _slow_log(monkeypatch, recorder)
    url = f"sqlite:///{tmp_path / 'intellilog.db'}"
    with serve(models.registry, url, tmp_path) as c:
        assert post(c, "/v1/predict", {**ROW, "order_id": "q-1"}).status_code == 200
        assert c.recorder.log.queue_depth == 1  # not written yet
        r = post(c, "/v1/feedback", {"order_id": "q-1", "actual_minutes": 9, "completed_at": 1})
        assert r.json()["unknown_order_ids"] == 0


def _slow_log(monkeypatch: pytest.MonkeyPatch, recorder: Any) -> None:
    """Prediction logs that write only when told (flush) or closed."""
    from server.store import PredictionLog

    class Slow(PredictionLog):
        def __init__(self, store: Any, spool: Any, **kw: Any) -> None:
            super().__init__(store, spool, batch_size=1_000_000, flush_interval=3600.0)

    monkeypatch.setattr(recorder, "PredictionLog", Slow)


@pytest.mark.parametrize(
    ("body", "path"),
    [
        ({"order_id": "x", "actual_minutes": 0, "completed_at": 1}, "$.actual_minutes"),
        ({"order_id": "x", "actual_minutes": 100001, "completed_at": 1}, "$.actual_minutes"),
        ({"order_id": "", "actual_minutes": 5, "completed_at": 1}, "$.order_id"),
        ({"order_id": "x" * 129, "actual_minutes": 5, "completed_at": 1}, "$.order_id"),
        (
            {"order_id": "x", "actual_minutes": 5, "completed_at": "2025-06-03T13:05:00"},
            "$.completed_at",
        ),
        ({"order_id": "x", "actual_minutes": 5, "completed_at": "yesterday"}, "$.completed_at"),
        ({"order_id": "x", "actual_minutes": 5, "completed_at": -1}, "$.completed_at"),
        ({"order_id": "x", "actual_minutes": "5", "completed_at": 1}, "$.actual_minutes"),
        ({"order_id": "x", "actual_minutes": 5}, "$.completed_at"),
        ({"order_id": "x", "actual_minutes": 5, "completed_at": 1, "eta": 3}, "$.eta"),
        ([{"order_id": "x", "actual_minutes": 5, "completed_at": 1}], "$"),
        ({"feedback": []}, "$.feedback"),
        ({"feedback": "x"}, "$.feedback"),
        (
            {"feedback": [{"order_id": "x", "actual_minutes": 5, "completed_at": 1}] * 51},
            "$.feedback",
        ),
    ],
)
def test_bad_feedback_is_422_naming_the_field(
    models: Any, make_client: Callable[..., Any], body: Any, path: str
) -> None:
    from tests.server.test_app import assert_error

    c = _client(models, make_client)
    assert_error(post(c, "/v1/feedback", body), 422, path)


def _client(models: Any, make_client: Callable[..., Any]) -> Any:
    return make_client(models.registry, max_batch_size=50, tenant_id="acme")


def test_bad_rows_of_a_feedback_batch_are_all_named_and_none_stored(
    models: Any, make_client: Callable[..., Any], tmp_path: Path
) -> None:
    from tests.server.test_app import assert_error

    url = f"sqlite:///{tmp_path / 'intellilog.db'}"
    c = make_client(models.registry, database_url=url, max_batch_size=50)
    good = {"order_id": "g", "actual_minutes": 5.0, "completed_at": 1748948800}
    rows = [good, {**good, "order_id": ""}, good, {**good, "actual_minutes": -2}, good]
    err = assert_error(post(c, "/v1/feedback", {"feedback": rows}), 422)
    assert [e["path"] for e in err["errors"]] == [
        "$.feedback[1].order_id",
        "$.feedback[3].actual_minutes",
    ]
    assert "none stored" in err["message"]
    assert raw_sql(url, "SELECT count(*) FROM feedback") == [(0,)]


def test_feedback_refuses_other_content_types_and_bad_json(
    models: Any, make_client: Callable[..., Any]
) -> None:
    from tests.server.test_app import assert_error

    c = _client(models, make_client)
    ok = json.dumps({"order_id": "x", "actual_minutes": 5, "completed_at": 1})
    assert_error(c.post("/v1/feedback", content=ok, headers={"content-type": "text/csv"}), 415)
    assert_error(post(c, "/v1/feedback", b"{nope"), 400)
    assert post(c, "/v1/feedback", ok.encode()).status_code == 202


def test_openapi_documents_feedback(models: Any, make_client: Callable[..., Any]) -> None:
    c = _client(models, make_client)
    doc = c.get("/schema/openapi.json").json()
    op = doc["paths"]["/v1/feedback"]["post"]
    assert set(op["responses"]) >= {"202", "400", "413", "415", "422", "503"}
    one, batch = op["requestBody"]["content"]["application/json"]["schema"]["anyOf"]
    assert one["required"] == ["order_id", "actual_minutes", "completed_at"]
    assert one["properties"]["actual_minutes"]["exclusiveMinimum"] == 0
    assert one["properties"]["order_id"]["maxLength"] == 128
    assert batch["properties"]["feedback"]["maxItems"] == 50
    out = op["responses"]["202"]["content"]["application/json"]["schema"]
    assert set(out["properties"]) == {
        "accepted",
        "inserted",
        "updated",
        "unknown_order_ids",
        "spooled",
    }


# ---- settings: off, shutdown, retention, outage, newer database -----------------------------------


def test_prediction_log_off_logs_nothing(models: Any, tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'db' / 'intellilog.db'}"
    with serve(models.registry, url, tmp_path, prediction_log=False) as c:
        assert post(c, "/v1/predict", ROW).status_code == 200
        assert post(c, "/v1/predict/batch", {"deliveries": [ROW, ROW]}).status_code == 200
        assert post(c, "/v2/models/eta/infer", v2_request([ROW], True)).status_code == 200
        assert c.recorder.log.queue_depth == 0
        # feedback is still taken
        r = post(c, "/v1/feedback", {"order_id": "o-1", "actual_minutes": 5, "completed_at": 1})
        assert r.status_code == 202 and r.json()["unknown_order_ids"] == 1
    assert raw_sql(url, "SELECT count(*) FROM predictions") == [(0,)]
    assert raw_sql(url, "SELECT count(*) FROM feedback") == [(1,)]
    assert not (tmp_path / "spool").exists()


def test_shutdown_writes_every_queued_prediction(
    models: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import server.recorder as recorder

    _slow_log(monkeypatch, recorder)
    url = f"sqlite:///{tmp_path / 'intellilog.db'}"
    with serve(models.registry, url, tmp_path) as c:
        for i in range(20):
            assert post(c, "/v1/predict", {**ROW, "order_id": f"s-{i}"}).status_code == 200
        assert post(c, "/v1/predict/batch", {"deliveries": [ROW] * 5}).status_code == 200
        assert c.recorder.log.queue_depth == 25
        assert raw_sql(url, "SELECT count(*) FROM predictions") == [(0,)]
        written0 = metric(c, "intellilog_prediction_log_rows_total", outcome="written")
        depth = metric(c, "intellilog_prediction_log_queue_depth")
        assert depth == 25
    assert raw_sql(url, "SELECT count(*) FROM predictions") == [(25,)]
    from server import metrics

    text = metrics.render().decode()
    assert kit.metric(text, "intellilog_prediction_log_rows_total", outcome="written") == (
        written0 + 25
    )
    assert kit.metric(text, "intellilog_prediction_log_queue_depth") == 0


def test_metrics_count_written_rows(models: Any, make_client: Callable[..., Any]) -> None:
    c = make_client(models.registry)
    w0 = metric(c, "intellilog_prediction_log_rows_total", outcome="written")
    assert post(c, "/v1/predict/batch", {"deliveries": [ROW] * 7}).status_code == 200
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if metric(c, "intellilog_prediction_log_rows_total", outcome="written") - w0 == 7:
            break
        time.sleep(0.05)
    text = c.get("/metrics").text
    assert kit.metric(text, "intellilog_prediction_log_rows_total", outcome="written") - w0 == 7
    for outcome in ("spooled", "replayed", "dropped"):
        assert f'intellilog_prediction_log_rows_total{{outcome="{outcome}"}}' in text
    assert "intellilog_prediction_log_queue_depth" in text


def test_retention_prunes_old_rows(models: Any, tmp_path: Path) -> None:
    from tests.server.store.storekit import feedback, predictions

    url = f"sqlite:///{tmp_path / 'intellilog.db'}"
    now = time.time()
    old = predictions(3, tenant="acme", t0=now - 3 * 86_400, request="old")
    recent = predictions(2, tenant="acme", t0=now - 3600, request="new", order_prefix="n")

    async def seed(s: Store) -> None:
        await s.write_predictions(old + recent)
        await s.write_feedback(feedback(["o0"], tenant="acme", received=now - 3 * 86_400))

    with_store(url, seed)
    with serve(models.registry, url, tmp_path, prediction_retention_days=2) as c:
        deadline = time.monotonic() + 10  # the first prune runs at start-up
        while time.monotonic() < deadline:
            if raw_sql(url, "SELECT count(*) FROM predictions") == [(2,)]:
                break
            time.sleep(0.05)
        assert c.get("/health/ready").status_code == 200
    kept = raw_sql(url, "SELECT row_id FROM predictions ORDER BY row_id")
    assert kept == [("new:0",), ("new:1",)]
    assert raw_sql(url, "SELECT count(*) FROM feedback") == [(0,)]


def test_retention_zero_keeps_everything(models: Any, tmp_path: Path) -> None:
    from tests.server.store.storekit import predictions

    url = f"sqlite:///{tmp_path / 'intellilog.db'}"
    with_store(url, lambda s: s.write_predictions(predictions(2, tenant="acme", t0=1.0)))
    with serve(models.registry, url, tmp_path, prediction_retention_days=0) as c:
        assert post(c, "/v1/predict", ROW).status_code == 200
    assert raw_sql(url, "SELECT count(*) FROM predictions") == [(3,)]


def test_database_down_at_startup_spools_then_replays(
    models: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """The server starts and answers; rows wait in the spool; once the database can be
    opened they are replayed into it."""
    import server.recorder as recorder

    monkeypatch.setattr(recorder, "REOPEN_INTERVAL_S", 0.1)
    blocked = tmp_path / "db"
    blocked.write_text("not a folder")  # the SQLite file's folder cannot be made
    url = f"sqlite:///{blocked / 'intellilog.db'}"
    spool = tmp_path / "spool" / "intellilog.spool"
    cm = serve(models.registry, url, tmp_path, log_to=caplog)
    c = cm.__enter__()
    try:
        assert "database unavailable at start-up" in caplog.text and str(spool) in caplog.text
        ready = c.get("/health/ready")
        assert ready.status_code == 200 and ready.json()["store"] == "spooling"
        p = post(c, "/v1/predict", {**ROW, "order_id": "d-1"})
        assert p.status_code == 200
        fb = post(c, "/v1/feedback", {"order_id": "d-1", "actual_minutes": 7, "completed_at": 1})
        assert fb.status_code == 202 and fb.json()["spooled"] == 1
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and not spool.exists():
            time.sleep(0.05)
        assert spool.exists()
        blocked.unlink()  # the database can be opened now
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            if c.recorder.store_open and c.recorder.log.spool.pending_bytes() == 0:
                break
            time.sleep(0.05)
        assert c.get("/health/ready").json()["store"] == "open"
    finally:
        cm.__exit__(None, None, None)
    got = logged(url)
    assert [(g["order_id"], g["eta"]) for g in got] == [("d-1", p.json()["eta_minutes"])]
    assert raw_sql(url, "SELECT order_id, actual_minutes FROM feedback") == [("d-1", 7.0)]


def test_postgres_down_at_startup_spools_then_replays(
    models: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, postgres: PgServer
) -> None:
    import server.recorder as recorder

    monkeypatch.setattr(recorder, "REOPEN_INTERVAL_S", 0.1)
    url = postgres.new_database()
    postgres.stop()
    try:
        with serve(models.registry, url, tmp_path) as c:
            assert c.get("/health/ready").json()["store"] == "spooling"
            p = post(c, "/v1/predict/batch", {"deliveries": [ROW, {**ROW, "order_id": "o-2"}]})
            assert p.status_code == 200
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline and not c.recorder.log.spool.pending_bytes():
                time.sleep(0.05)
            assert c.recorder.log.spool.pending_bytes()
            postgres.start()
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline:
                if c.recorder.store_open and not c.recorder.log.spool.pending_bytes():
                    break
                time.sleep(0.05)
            assert c.recorder.store_open
    finally:
        postgres.ensure_running()
    got = logged(url)
    etas = [q["eta_minutes"] for q in p.json()["predictions"]]
    assert [g["eta"] for g in sorted(got, key=lambda g: g["row_id"])] == etas


def test_a_database_newer_than_the_code_stops_startup(
    models: Any, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from server.store import SchemaVersionError

    url = f"sqlite:///{tmp_path / 'intellilog.db'}"
    with_store(url, lambda s: s.schema_version())
    raw_sql(url, "INSERT INTO schema_migrations (version, name, applied_at) VALUES (99, 'x', 0)")
    with pytest.raises(BaseException) as exc, serve(models.registry, url, tmp_path, log_to=caplog):
        pass
    causes: list[BaseException] = [exc.value]
    while causes and not isinstance(causes[-1], SchemaVersionError):
        e = causes.pop()
        causes += list(getattr(e, "exceptions", ())) + [c for c in (e.__cause__,) if c]
    assert causes, exc.value
    assert "cannot start: database schema version 99 is newer than this intellilog" in caplog.text


def test_serve_refuses_a_newer_database_in_one_line(
    models: Any, tmp_path: Path, cli: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Before granian starts a worker: one `error:` line, exit 2, no traceback."""
    url = f"sqlite:///{tmp_path / 'intellilog.db'}"
    with_store(url, lambda s: s.schema_version())
    raw_sql(url, "INSERT INTO schema_migrations (version, name, applied_at) VALUES (99, 'x', 0)")
    monkeypatch.setenv("DATABASE_URL", url)
    res = cli("serve", "--registry", models.registry, "--port", "1")
    assert res.code == 2
    lines = res.err.strip().splitlines()
    assert lines[-1].startswith("error: ") and "schema version 99 is newer" in lines[-1]
    assert "Traceback" not in res.err


# ---- intellilog feedback import ---------------------------------------------------------------


def _import(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, url: str, *args: str) -> int:
    from server.cli import main

    monkeypatch.chdir(tmp_path)  # no .env from the repository
    monkeypatch.setenv("DATABASE_URL", url)
    monkeypatch.setenv("TENANT_ID", "acme")
    return main(["feedback", "import", *args, "--quiet"])


def test_import_csv_stores_good_rows_and_lists_bad_ones(
    db_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from tests.server.store.storekit import predictions

    with_store(db_url, lambda s: s.write_predictions(predictions(2, tenant="acme")))  # o0, o1
    f = tmp_path / "actuals.csv"
    f.write_text(
        "order_id,actual_minutes,completed_at,driver\n"
        "o0,31.5,2025-06-03T13:05:00+02:00,ann\n"  # row 1
        "00123,12,1748948800,bo\n"  # row 2: the id stays 00123; epoch seconds
        "o1,0,1748948800,cy\n"  # row 3: actual_minutes not > 0
        ",5,1748948800,di\n"  # row 4: no order id
        "o1,7.25,2025-06-03 13:05:00,ed\n"  # row 5: no offset
        "o1,abc,1748948800,fa\n"  # row 6: not a number
        "o0,33,1748948900.5,gu\n"  # row 7: o0 again, later in the file: wins
    )
    code = _import(monkeypatch, tmp_path, db_url, str(f), "--batch-rows", "3")
    out, err = capsys.readouterr()
    assert code == 3
    assert out.strip().startswith("7 rows read, 3 stored (2 new, 1 updated, 1 for orders")
    assert "4 refused" in out
    for n, why in (
        (3, "actual_minutes: Expected `float` > 0.0"),
        (4, "order_id: missing value"),
        (5, "completed_at: Expected `datetime` with a timezone component"),
        (6, "actual_minutes:"),
    ):
        assert f"row {n}: {why}" in err, err
    rejects = (tmp_path / "actuals.csv.rejects.csv").read_text().splitlines()
    assert rejects[0] == "row,reason,order_id,actual_minutes,completed_at"
    assert [r.split(",")[0] for r in rejects[1:]] == ["3", "4", "5", "6"]
    got = raw_sql(
        db_url, "SELECT tenant, order_id, actual_minutes, completed_at FROM feedback ORDER BY 2"
    )
    assert got == [("acme", "00123", 12.0, 1748948800.0), ("acme", "o0", 33.0, 1748948900.5)]


def test_import_parquet_with_timestamps_and_integer_ids(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import datetime as dt

    import pyarrow as pa
    import pyarrow.parquet as pq

    url = f"sqlite:///{tmp_path / 'intellilog.db'}"
    f = tmp_path / "actuals.parquet"
    t = dt.datetime(2025, 6, 3, 11, 5, tzinfo=dt.UTC)
    pq.write_table(
        pa.table(
            {
                "order_id": pa.array([101, 102, 103], pa.int64()),
                "actual_minutes": [20.0, 25.5, None],
                "completed_at": pa.array([t, t, t], pa.timestamp("ns", tz="UTC")),
            }
        ),
        f,
    )
    code = _import(monkeypatch, tmp_path, url, str(f), "--json")
    report = json.loads(capsys.readouterr().out)
    assert code == 3 and report["stored"] == 2 and report["unknown"] == 2
    assert report["examples"] == [[3, "actual_minutes: missing value"]]
    got = raw_sql(url, "SELECT order_id, actual_minutes, completed_at FROM feedback ORDER BY 1")
    assert got == [("101", 20.0, t.timestamp()), ("102", 25.5, t.timestamp())]


def test_import_refuses_a_file_without_the_columns(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    url = f"sqlite:///{tmp_path / 'intellilog.db'}"
    f = tmp_path / "actuals.csv"
    f.write_text("order,minutes\no1,3\n")
    code = _import(monkeypatch, tmp_path, url, str(f))
    err = capsys.readouterr().err
    assert code == 2
    assert "missing columns order_id, actual_minutes, completed_at" in err
    code = _import(monkeypatch, tmp_path, url, str(tmp_path / "none.csv"))
    assert code == 2 and "no such file" in capsys.readouterr().err


def test_server_request_ids_start_with_the_time(monkeypatch: pytest.MonkeyPatch) -> None:
    """32 hex digits whose order is the order of their milliseconds: the store's key index
    (prediction_keys) grows at its end."""
    import re

    from server.recorder import new_request_id

    ids = []
    for ms in (1_700_000_000_000, 1_700_000_000_001, 1_800_000_000_000, 1_800_000_000_000):
        monkeypatch.setattr(time, "time_ns", lambda ms=ms: ms * 1_000_000 + 999_999)
        ids.append(new_request_id())
    assert all(re.fullmatch(r"[0-9a-f]{32}", i) for i in ids)
    assert ids[:3] == sorted(ids[:3]) and len(set(ids)) == 4
    assert ids[0].startswith(f"{1_700_000_000_000:012x}")
