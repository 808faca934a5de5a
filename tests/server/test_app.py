"""The HTTP app in-process (Litestar TestClient over ``create_app``): routes, the strict
input contract, error bodies, metrics, OpenAPI, rate limit, admin and hot swap.

Every error answer must have the shape
``{"error": {"status", "code", "message", "errors": [{"path", "message"}]}, "request_id"}``
(``errors`` may be left out when empty) and no bad input may ever give a 500.
"""

from __future__ import annotations

import asyncio
import json
import math
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import msgspec
import numpy as np
import pytest

from tests.e2e import servekit as kit

pytestmark = pytest.mark.slow

ROW: dict[str, Any] = kit.ROW
PREDICT_KEYS = {
    "order_id",
    "eta_minutes",
    "eta_p10",
    "eta_p90",
    "model_version",
    "request_id",
    "arm",
}


def assert_error(r: Any, status: int, path: str | None = None) -> dict[str, Any]:
    """``r`` is an error answer with the documented JSON shape; returns ``body["error"]``."""
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith("application/json"), r.headers
    body = r.json()
    assert set(body) == {"error", "request_id"}, body
    err = body["error"]
    assert err["status"] == status
    assert isinstance(err["code"], str) and err["code"]
    assert isinstance(err["message"], str) and err["message"]
    assert set(err) <= {"status", "code", "message", "errors"}, err
    items = err.get("errors", [])
    assert isinstance(items, list)
    for it in items:
        assert set(it) == {"path", "message"}, it
        assert it["path"].startswith("$"), it
    if path is not None:
        assert path in [it["path"] for it in items], err
    assert isinstance(body["request_id"], str) and body["request_id"]
    assert r.headers["x-request-id"] == body["request_id"]
    return err


def post_json(client: Any, url: str, body: Any, **headers: str) -> Any:
    return client.post(
        url,
        content=json.dumps(body).encode(),
        headers={"content-type": "application/json", **headers},
    )


def scrape(client: Any) -> str:
    r = client.get("/metrics")
    assert r.status_code == 200
    return str(r.text)


@pytest.fixture(scope="module")
def client(models: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """One app over the session registry (read-only: the watcher polls hourly)."""
    from litestar.testing import TestClient

    from server.app import create_app
    from server.config import Settings

    app = create_app(
        Settings(
            model_artifact_path=str(models.registry),
            reload_interval_s=3600.0,
            log_level="WARNING",
            max_batch_size=50,
            database_url=f"sqlite:///{tmp_path_factory.mktemp('db') / 'intellilog.db'}",
        )
    )
    with TestClient(app, raise_server_exceptions=False) as c:
        yield c


# ---- /v1/predict ----------------------------------------------------------------------------


def test_predict_answers_eta_with_interval_and_echoes_request_id(client: Any) -> None:
    r = post_json(client, "/v1/predict", ROW, **{"X-Request-ID": "req-42"})
    assert r.status_code == 200, r.text
    body = r.json()
    assert set(body) == PREDICT_KEYS
    assert body["order_id"] == "o-1"
    assert body["model_version"] == "v1" and body["arm"] == "production"
    assert body["request_id"] == "req-42" == r.headers["x-request-id"]
    assert all(math.isfinite(body[k]) for k in ("eta_minutes", "eta_p10", "eta_p90"))
    assert 0 < body["eta_p10"] <= body["eta_minutes"] <= body["eta_p90"]


def test_predict_makes_a_request_id_when_none_is_given(client: Any) -> None:
    a = post_json(client, "/v1/predict", ROW).json()["request_id"]
    b = post_json(client, "/v1/predict", ROW).json()["request_id"]
    assert a and b and a != b


def test_predict_interval_holds_for_many_rows(client: Any) -> None:
    rows = kit.sample_rows(30, seed=31)
    for row in rows:
        b = post_json(client, "/v1/predict", row).json()
        assert b["eta_p10"] <= b["eta_minutes"] <= b["eta_p90"], (row, b)


@pytest.mark.parametrize(
    ("content", "ctype"),
    [
        (json.dumps(ROW).encode(), "application/json"),
        (json.dumps({**ROW, "pickup_lat": 91}).encode(), "application/json"),
        (json.dumps({**ROW, "surprise": 1}).encode(), "application/json"),
        (b"{not json", "application/json"),
        (json.dumps(ROW).encode(), "text/plain"),
        (b"[]", "application/json"),
    ],
)
def test_fast_route_answers_exactly_as_the_litestar_route(
    models: Any, content: bytes, ctype: str, tmp_path: Path
) -> None:
    """POST /v1/predict is answered in front of Litestar (server.app._Edge); the same
    request through Litestar's own route gets the same status, body and headers."""
    from litestar.testing import TestClient

    from server.app import create_app
    from server.config import Settings

    edge = create_app(
        Settings(
            model_artifact_path=str(models.registry),
            reload_interval_s=3600.0,
            database_url=f"sqlite:///{tmp_path / 'intellilog.db'}",
        )
    )
    assert "/v1/predict" in edge.fast
    headers = {"content-type": ctype, "x-request-id": "same-id"}
    answers = []
    for app in (edge, edge.app):  # the fast path, then Litestar's route
        with TestClient(app, raise_server_exceptions=False) as c:
            r = c.post("/v1/predict", content=content, headers=headers)
        answers.append(
            (r.status_code, r.json(), r.headers["content-type"], r.headers["x-request-id"])
        )
    assert answers[0] == answers[1]
    assert answers[0][0] < 500


def test_concurrent_predictions_are_micro_batched_with_unchanged_answers(
    client: Any, models: Any
) -> None:
    """Requests in flight together share one engine call (the micro-batch metric counts
    them) and every answer equals the one the same row gets alone."""
    import httpx

    from server.app import create_app
    from server.config import Settings

    rows = kit.sample_rows(24, seed=41)
    alone = [post_json(client, "/v1/predict", r).json() for r in rows]
    app = create_app(
        Settings(
            model_artifact_path=str(models.registry),
            reload_interval_s=3600.0,
            prediction_log=False,  # no lifespan here (httpx's ASGITransport): no store
        )
    )

    async def together() -> list[Any]:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as c:
            return await asyncio.gather(*(c.post("/v1/predict", json=r) for r in rows))

    def batched() -> tuple[float, float]:
        text = scrape(client)
        return (
            kit.metric(text, "intellilog_micro_batch_rows_sum"),
            kit.metric(text, "intellilog_micro_batch_rows_count"),
        )

    rows0, calls0 = batched()
    answers = [r.json() for r in asyncio.run(together())]
    drop = ("request_id",)
    assert [{k: v for k, v in a.items() if k not in drop} for a in answers] == [
        {k: v for k, v in a.items() if k not in drop} for a in alone
    ]
    rows1, calls1 = batched()
    assert rows1 - rows0 == len(rows)  # every request predicted once
    assert calls1 - calls0 < len(rows)  # in fewer engine calls than requests


def test_explain_adds_top5_contributions_that_add_up_to_lightgbm(client: Any, models: Any) -> None:
    import lightgbm as lgb

    from server.models import load_model
    from training.registry import Registry

    r = post_json(client, "/v1/predict?explain=true", ROW)
    assert r.status_code == 200, r.text
    body = r.json()
    expl = body["explanation"]
    assert len(expl) == 5
    assert all(set(e) == {"feature", "minutes"} and math.isfinite(e["minutes"]) for e in expl)
    mags = [abs(e["minutes"]) for e in expl]
    assert mags == sorted(mags, reverse=True)

    # the same row through the model's own pipeline and the LightGBM reference
    model = load_model(Registry(models.registry), "v1", engine="lightgbm")
    item = msgspec.json.decode(json.dumps(ROW).encode(), type=model.pipe.spec.request_struct)
    X = model.pipe.row(item, np.empty((1, model.pipe.n_features), dtype=np.float32))
    booster = lgb.Booster(model_file=str(models.registry / "versions" / "v1" / "eta.txt"))
    contrib = booster.predict(X, pred_contrib=True)[0]
    eta_ref = float(booster.predict(X)[0])
    names = list(model.pipe.spec.feature_names)
    top = np.argsort(-np.abs(contrib[:-1]))[:5]
    assert [e["feature"] for e in expl] == [names[i] for i in top]
    assert [e["minutes"] for e in expl] == pytest.approx([contrib[i] for i in top], abs=1e-9)
    assert body["base_minutes"] == pytest.approx(contrib[-1], abs=1e-9)
    # base + every contribution (not only the top 5) is the LightGBM ETA ...
    assert body["base_minutes"] + float(contrib[:-1].sum()) == pytest.approx(eta_ref, abs=1e-6)
    # ... which the served (ONNX, float32) ETA matches
    assert body["eta_minutes"] == pytest.approx(eta_ref, rel=1e-5)


def test_explain_is_off_by_default(client: Any) -> None:
    body = post_json(client, "/v1/predict?explain=false", ROW).json()
    assert "explanation" not in body and "base_minutes" not in body


def test_unknown_category_is_mapped_when_the_spec_maps(client: Any) -> None:
    """'sleet' is no known weather: the default spec maps it to 'unknown' (200)."""
    sleet = post_json(client, "/v1/predict", {**ROW, "weather": "sleet"})
    hail = post_json(client, "/v1/predict", {**ROW, "weather": "hail"})
    assert sleet.status_code == 200 and hail.status_code == 200, sleet.text
    # both are the unknown level: the same features, the same ETA
    assert sleet.json()["eta_minutes"] == hail.json()["eta_minutes"]


def test_unknown_category_is_refused_when_the_spec_rejects(
    models: Any, make_client: Callable[..., Any]
) -> None:
    c = make_client(models.reject_registry)
    ok = post_json(c, "/v1/predict", ROW)
    assert ok.status_code == 200, ok.text
    bad = post_json(c, "/v1/predict", {**ROW, "vehicle_type": "hovercraft"})
    assert_error(bad, 422, "$.vehicle_type")
    # other categoricals of that spec still map
    assert post_json(c, "/v1/predict", {**ROW, "weather": "sleet"}).status_code == 200


# ---- /v1/predict/batch --------------------------------------------------------------------------


def test_batch_answers_in_order_and_equals_single_predictions(client: Any) -> None:
    rows = kit.sample_rows(25, seed=32)
    r = post_json(client, "/v1/predict/batch", {"deliveries": rows})
    assert r.status_code == 200, r.text
    body = r.json()
    assert set(body) == {"predictions", "count", "model_version", "request_id"}
    assert body["count"] == 25 and body["model_version"] == "v1"
    preds = body["predictions"]
    assert [p["order_id"] for p in preds] == [row["order_id"] for row in rows]
    for row, p in zip(rows, preds, strict=True):
        one = post_json(client, "/v1/predict", row).json()
        for k in ("eta_minutes", "eta_p10", "eta_p90"):
            assert p[k] == pytest.approx(one[k], rel=1e-9), (row, k)
        assert p["eta_p10"] <= p["eta_minutes"] <= p["eta_p90"]


def test_batch_lists_every_bad_row_and_scores_nothing(client: Any) -> None:
    rows = kit.sample_rows(5, seed=33)
    rows[1]["pickup_lat"] = "52.5"
    rows[3]["created_at"] = "2026-02-30T10:00:00Z"
    before = kit.metric(scrape(client), "intellilog_batch_rows_count")
    r = post_json(client, "/v1/predict/batch", {"deliveries": rows})
    err = assert_error(r, 422)
    assert [e["path"] for e in err["errors"]] == [
        "$.deliveries[1].pickup_lat",
        "$.deliveries[3].created_at",
    ]
    assert "predictions" not in r.text
    assert kit.metric(scrape(client), "intellilog_batch_rows_count") == before


def test_batch_over_max_batch_size_is_refused(client: Any) -> None:
    rows = [{**ROW, "order_id": f"o{i}"} for i in range(51)]  # the module client allows 50
    err = assert_error(post_json(client, "/v1/predict/batch", {"deliveries": rows}), 422)
    assert err["errors"][0]["path"] == "$.deliveries"
    assert "50" in err["errors"][0]["message"]
    ok = post_json(client, "/v1/predict/batch", {"deliveries": rows[:50]})
    assert ok.status_code == 200 and ok.json()["count"] == 50


@pytest.mark.parametrize(
    ("body", "path"),
    [
        ({"deliveries": []}, "$.deliveries"),
        ({}, None),
        ([ROW], "$"),
        ({"deliveries": [ROW], "extra": 1}, None),
    ],
    ids=["empty-list", "no-deliveries", "array-body", "unknown-top-field"],
)
def test_batch_bad_envelope(client: Any, body: Any, path: str | None) -> None:
    assert_error(post_json(client, "/v1/predict/batch", body), 422, path)


def test_batch_missing_field_names_row_and_field(client: Any) -> None:
    rows = kit.sample_rows(3, seed=34)
    del rows[2]["zone"]
    err = assert_error(post_json(client, "/v1/predict/batch", {"deliveries": rows}), 422)
    assert [e["path"] for e in err["errors"]] == ["$.deliveries[2].zone"]


# ---- the bad-input table: one row per case --------------------------------------------------


def _with(**changes: Any) -> bytes:
    return json.dumps({**ROW, **changes}).encode()


def _without(name: str) -> bytes:
    return json.dumps({k: v for k, v in ROW.items() if k != name}).encode()


def _raw_number(literal: str) -> bytes:
    """ROW with pickup_lat as a raw JSON token (NaN, Infinity, 1e999 are not in json.dumps)."""
    return _with(pickup_lat=123456.0).replace(b"123456.0", literal.encode())


JSON_CT = {"content-type": "application/json"}

# (id, body, headers, expected status, expected error path or None)
BAD_INPUTS = [
    pytest.param(b'{"pickup_lat": 52.5,', JSON_CT, 400, None, id="malformed-json"),
    pytest.param(b"", JSON_CT, 400, None, id="empty-body"),
    pytest.param(b"[1, 2]", JSON_CT, 422, "$", id="body-not-object"),
    pytest.param(b'"hello"', JSON_CT, 422, "$", id="body-is-string"),
    pytest.param(_with(pickup_lat="52.5"), JSON_CT, 422, "$.pickup_lat", id="string-for-float"),
    pytest.param(_with(pickup_lat=None), JSON_CT, 422, "$.pickup_lat", id="null-for-float"),
    pytest.param(_with(vehicle_type=True), JSON_CT, 422, "$.vehicle_type", id="bool-for-string"),
    pytest.param(_with(zone=1), JSON_CT, 422, "$.zone", id="int-for-string"),
    pytest.param(_with(items_count=True), JSON_CT, 422, "$.items_count", id="bool-for-number"),
    pytest.param(_with(pickup_lat=90.5), JSON_CT, 422, "$.pickup_lat", id="lat-above-90"),
    pytest.param(_with(dropoff_lat=-90.5), JSON_CT, 422, "$.dropoff_lat", id="lat-below-minus-90"),
    pytest.param(_with(pickup_lon=-180.5), JSON_CT, 422, "$.pickup_lon", id="lon-below-minus-180"),
    pytest.param(_with(dropoff_lon=180.5), JSON_CT, 422, "$.dropoff_lon", id="lon-above-180"),
    # NaN / Infinity are not JSON: refused by the parser, so 400 malformed_json
    pytest.param(_raw_number("NaN"), JSON_CT, 400, None, id="nan-literal"),
    pytest.param(_raw_number("Infinity"), JSON_CT, 400, None, id="infinity-literal"),
    pytest.param(_raw_number("-Infinity"), JSON_CT, 400, None, id="minus-infinity"),
    # 1e999 is valid JSON but overflows a float: 422 on the field
    pytest.param(_raw_number("1e999"), JSON_CT, 422, "$.pickup_lat", id="1e999"),
    pytest.param(_with(foo=1), JSON_CT, 422, "$.foo", id="unknown-field"),
    pytest.param(_without("zone"), JSON_CT, 422, "$.zone", id="missing-required"),
    pytest.param(_with(created_at=-1), JSON_CT, 422, "$.created_at", id="negative-epoch"),
    pytest.param(
        _with(created_at=4_102_444_801), JSON_CT, 422, "$.created_at", id="epoch-after-2100"
    ),
    # epoch seconds may carry a fraction (JSON Schema's integer includes 1.0); bounds hold
    pytest.param(
        _with(created_at=4.2e9 + 0.5), JSON_CT, 422, "$.created_at", id="float-epoch-after-2100"
    ),
    pytest.param(
        _with(created_at="2026-02-30T10:00:00Z"), JSON_CT, 422, "$.created_at", id="impossible-date"
    ),
    pytest.param(_with(created_at="yesterday"), JSON_CT, 422, "$.created_at", id="not-a-date"),
    pytest.param(_with(items_count=0), JSON_CT, 422, "$.items_count", id="items-count-0"),
    pytest.param(_with(items_count=501), JSON_CT, 422, "$.items_count", id="items-count-501"),
    pytest.param(_with(prep_minutes=-1), JSON_CT, 422, "$.prep_minutes", id="negative-prep"),
    pytest.param(_with(order_id=""), JSON_CT, 422, "$.order_id", id="empty-order-id"),
    pytest.param(_with(order_id="x" * 129), JSON_CT, 422, "$.order_id", id="long-order-id"),
    pytest.param(_with(weather=""), JSON_CT, 422, "$.weather", id="empty-category"),
    pytest.param(_with(), {"content-type": "text/plain"}, 415, None, id="text-plain"),
    pytest.param(_with(), {}, 415, None, id="no-content-type"),
    pytest.param(
        _with(), {"content-type": "application/x-www-form-urlencoded"}, 415, None, id="form"
    ),
]


@pytest.mark.parametrize(("body", "headers", "status", "path"), BAD_INPUTS)
def test_bad_input(
    client: Any, body: bytes, headers: dict[str, str], status: int, path: str | None
) -> None:
    rid = "bad-input-case"
    r = client.post("/v1/predict", content=body, headers={**headers, "x-request-id": rid})
    assert r.status_code != 500, "a bad input must never be a server error"
    err = assert_error(r, status, path)
    assert r.json()["request_id"] == rid
    if status == 400:
        assert err["code"] == "malformed_json"
    if status == 422:
        assert err["code"] == "validation_error"


@pytest.mark.parametrize(
    "changes",
    [
        {"created_at": 1_748_946_600},  # epoch seconds
        {"created_at": "2025-06-03T10:30:00Z"},
        {"created_at": "2025-06-03T10:30:00"},  # no offset: the spec's time zone
        {"prep_minutes": None},  # optional
        {"pickup_lat": 90.0, "pickup_lon": -180.0},  # bounds are inclusive
        {"items_count": 500},
    ],
)
def test_good_input_edges(client: Any, changes: dict[str, Any]) -> None:
    r = post_json(client, "/v1/predict", {**ROW, **changes})
    assert r.status_code == 200, r.text


def test_optional_field_may_be_left_out(client: Any) -> None:
    r = client.post("/v1/predict", content=_without("prep_minutes"), headers=JSON_CT)
    assert r.status_code == 200, r.text


def test_json_with_charset_is_accepted(client: Any) -> None:
    r = client.post(
        "/v1/predict", content=_with(), headers={"content-type": "application/json; charset=utf-8"}
    )
    assert r.status_code == 200, r.text


def test_get_on_post_route_is_405(client: Any) -> None:
    assert_error(client.get("/v1/predict"), 405)
    assert_error(client.get("/v1/predict/batch"), 405)


def test_unknown_route_is_404(client: Any) -> None:
    assert_error(client.get("/v1/nope"), 404)


def test_oversized_body_is_413(models: Any, make_client: Callable[..., Any]) -> None:
    c = make_client(models.registry, max_body_mb=0.01)  # 10 KiB
    rows = [{**ROW, "order_id": f"o{i}"} for i in range(100)]  # ~25 KiB
    err = assert_error(post_json(c, "/v1/predict/batch", {"deliveries": rows}), 413)
    assert err["code"] == "body_too_large"
    assert post_json(c, "/v1/predict", ROW).status_code == 200


# ---- health, models, metrics, OpenAPI -------------------------------------------------------


def test_health(client: Any) -> None:
    r = client.get("/health/live")
    assert r.status_code == 200 and r.json() == {"status": "alive"}
    r = client.get("/health/ready")
    assert r.status_code == 200
    assert r.json() == {"ready": True, "model_version": "v1", "store": "open"}


def test_models_describes_what_is_served(client: Any) -> None:
    r = client.get("/v1/models")
    assert r.status_code == 200
    body = r.json()
    s = body["serving"]
    assert s["version"] == "v1"
    assert s["alias"] == "production"
    assert s["engine"] == "compiled"  # the default
    assert s["device"] == "cpu"
    # the session models were exported without the gpu extra: no GPU engine, and why
    assert s["large_batch"] is None
    assert s["large_batch_reason"].startswith("no hummingbird export: eta.hb.onnx")
    assert s["spec"] == "deliveries" and len(s["spec_hash"]) == 16
    assert body["aliases"] == {"production": "v1"}
    assert body["versions"] == ["v1", "v2"]
    assert body["last_reload_error"] is None


def test_large_batches_go_to_a_gpu_engine_and_models_says_so(
    registry: Path, make_client: Callable[..., Any], fake_gpu: Any
) -> None:
    """A version exported with the gpu extra, on a (simulated) GPU: batches of >= 4 rows
    go to it, smaller ones and single rows stay on the CPU engine; /v1/models shows it."""
    from tests.server.fakegpu import add_hb_export

    add_hb_export(registry / "versions" / "v1")
    c = make_client(registry, gpu_min_rows=4)
    s = c.get("/v1/models").json()["serving"]
    assert s["engine"] == "compiled" and s["device"] == "cpu"
    assert s["large_batch"] == {
        "engine": "hummingbird",
        "device": "cuda",
        "runtime": "fake CUDA",
        "min_rows": 4,
        "nan_rows": "compiled",
    }
    assert s["large_batch_reason"] is None
    fake_gpu.calls.clear()  # the load-time check
    rows = [{k: (ROW[k] if v is None else v) for k, v in r.items()} for r in kit.sample_rows(7, 41)]
    del rows[6]["prep_minutes"]  # a missing value: that row stays on the CPU engine
    one = [post_json(c, "/v1/predict", row).json()["eta_minutes"] for row in rows]
    small = post_json(c, "/v1/predict/batch", {"deliveries": rows[:3]}).json()["predictions"]
    assert fake_gpu.calls == []
    big = post_json(c, "/v1/predict/batch", {"deliveries": rows}).json()["predictions"]
    assert fake_gpu.rows() == [6] and not fake_gpu.saw_nan()
    assert [p["eta_minutes"] for p in big] == pytest.approx(one, rel=1e-9)
    assert [p["eta_minutes"] for p in small] == pytest.approx(one[:3], rel=1e-9)


def test_models_says_why_there_is_no_gpu_engine(
    registry: Path, make_client: Callable[..., Any], fake_gpu: Any
) -> None:
    from tests.server.fakegpu import add_hb_export

    add_hb_export(registry / "versions" / "v1")
    fake_gpu.fail = RuntimeError("no CUDA-capable device is detected")
    s = make_client(registry, gpu_min_rows=4).get("/v1/models").json()["serving"]
    assert s["large_batch"] is None
    assert s["large_batch_reason"] == (
        "GPU engine failed to load: RuntimeError: no CUDA-capable device is detected"
    )
    s = make_client(registry, allow_gpu=False).get("/v1/models").json()["serving"]
    assert s["large_batch"] is None and "not allowed" in s["large_batch_reason"]


def test_metrics_count_requests_errors_and_model(client: Any) -> None:
    post_json(client, "/v1/predict", ROW)
    r = client.get("/metrics")
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/plain")
    text = r.text
    n200 = kit.metric(
        text, "intellilog_http_requests_total", route="/v1/predict", method="POST", status="200"
    )
    assert n200 >= 1
    assert kit.metric(text, "intellilog_model_info", version="v1", engine="compiled") == 1
    assert 'intellilog_model_info{device="cpu",engine="compiled",version="v1"} 1.0' in text

    v_before = kit.metric(text, "intellilog_errors_total", kind="validation_error")
    r422_before = kit.metric(
        text, "intellilog_http_requests_total", route="/v1/predict", status="422"
    )
    assert post_json(client, "/v1/predict", {**ROW, "pickup_lat": 91}).status_code == 422
    text = scrape(client)
    assert kit.metric(text, "intellilog_errors_total", kind="validation_error") == v_before + 1
    assert (
        kit.metric(text, "intellilog_http_requests_total", route="/v1/predict", status="422")
        == r422_before + 1
    )
    # latency histograms are there too
    assert kit.metric(text, "intellilog_prediction_duration_seconds_count", kind="single") >= 1


def test_openapi_documents_the_strict_request_body(client: Any) -> None:
    r = client.get("/schema/openapi.json")
    assert r.status_code == 200
    doc = json.loads(r.text)
    assert doc["openapi"].startswith("3.")
    post = doc["paths"]["/v1/predict"]["post"]
    schema = post["requestBody"]["content"]["application/json"]["schema"]
    props = schema["properties"]
    assert props["pickup_lat"]["maximum"] == 90
    assert props["pickup_lat"]["minimum"] == -90
    assert props["pickup_lon"]["maximum"] == 180
    assert props["items_count"]["minimum"] == 1
    assert "zone" in schema["required"] and "prep_minutes" not in schema["required"]
    batch = doc["paths"]["/v1/predict/batch"]["post"]["requestBody"]["content"]
    dl = batch["application/json"]["schema"]["properties"]["deliveries"]
    assert dl["type"] == "array" and dl["maxItems"] == 50
    assert "/v2/models/{name}/infer" in doc["paths"]
    assert not any(p.startswith("/v1/admin") for p in doc["paths"])  # no ADMIN_TOKEN here


# ---- one clock: the same instant in any encoding, on every route -----------------------------


def test_one_instant_one_eta_on_every_route(client: Any) -> None:
    """The model's spec zone is Europe/Berlin: 12:30+01:00, 11:30Z, 06:30-05:00, the
    naive Berlin wall clock 12:30 and epoch 1795692600 are one instant and one ETA on
    /v1/predict, /v1/predict/batch and V2 (BYTES strings and INT64 epoch seconds)."""
    encodings: list[Any] = [
        "2026-11-26T12:30:00+01:00",
        "2026-11-26T11:30:00Z",
        "2026-11-26T06:30:00-05:00",
        "2026-11-26T12:30:00",
        1795692600,
    ]
    rows = [{**ROW, "created_at": e} for e in encodings]
    single = [post_json(client, "/v1/predict", r).json()["eta_minutes"] for r in rows]
    batch = post_json(client, "/v1/predict/batch", {"deliveries": rows}).json()
    etas = [p["eta_minutes"] for p in batch["predictions"]]

    def tensor(name: str, dt: str, data: list[Any]) -> dict[str, Any]:
        return {"name": name, "shape": [len(data)], "datatype": dt, "data": data}

    def v2(times: list[Any], dt: str) -> list[float]:
        inputs = [
            tensor(k, "BYTES" if isinstance(v, str) else "FP64", [v] * len(times))
            for k, v in ROW.items()
            if k != "created_at"
        ] + [tensor("created_at", dt, times)]
        r = post_json(client, "/v2/models/eta/infer", {"inputs": inputs})
        assert r.status_code == 200, r.text
        return next(o["data"] for o in r.json()["outputs"] if o["name"] == "eta_minutes")

    v2_text = v2(encodings[:4], "BYTES")
    v2_epoch = v2([encodings[4]], "INT64")
    assert len(set(single + etas + v2_text + v2_epoch)) == 1, (single, etas, v2_text, v2_epoch)
    # and another instant really is another ETA (the hour moved by 5 h)
    later = post_json(client, "/v1/predict", {**ROW, "created_at": "2026-11-26T17:30:00+01:00"})
    assert later.json()["eta_minutes"] != single[0]


def test_categorical_values_are_trimmed_over_http_as_in_files(client: Any) -> None:
    a = post_json(client, "/v1/predict", {**ROW, "vehicle_type": "bike"}).json()
    b = post_json(client, "/v1/predict", {**ROW, "vehicle_type": "  bike "}).json()
    assert a["eta_minutes"] == b["eta_minutes"]
    r = post_json(client, "/v1/predict", {**ROW, "vehicle_type": "   "})
    assert r.status_code == 422 and "vehicle_type" in r.text


# ---- KServe V2 error paths (the happy path runs against a real server in tests/e2e) --------


def test_kserve_routes_in_process(client: Any) -> None:
    assert client.get("/v2/health/ready").json() == {"ready": True}
    meta = client.get("/v2/models/eta").json()
    assert meta["name"] == "eta" and meta["versions"] == ["v1"]
    assert {i["name"] for i in meta["inputs"]} == set(ROW)
    r = client.get("/v2/models/nope")
    assert r.status_code == 404 and "nope" in r.json()["error"]

    def tensor(name: str, dt: str, data: list[Any]) -> dict[str, Any]:
        return {"name": name, "shape": [len(data)], "datatype": dt, "data": data}

    inputs = [
        tensor(k, "BYTES" if isinstance(v, str) else "FP64", [v])
        for k, v in ROW.items()
        if k != "created_at"
    ] + [tensor("created_at", "BYTES", [ROW["created_at"]])]
    r = post_json(client, "/v2/models/eta/infer", {"inputs": inputs})
    assert r.status_code == 200, r.text
    out = {o["name"]: o["data"][0] for o in r.json()["outputs"]}
    one = post_json(client, "/v1/predict", ROW).json()
    assert out["eta_minutes"] == pytest.approx(one["eta_minutes"], rel=1e-9)

    missing = [t for t in inputs if t["name"] != "zone"]
    r = post_json(client, "/v2/models/eta/infer", {"inputs": missing})
    assert r.status_code == 400 and "zone" in r.json()["error"]
    bad = [t if t["name"] != "pickup_lat" else tensor("pickup_lat", "FP64", [95.0]) for t in inputs]
    r = post_json(client, "/v2/models/eta/infer", {"inputs": bad})
    assert r.status_code == 400 and "pickup_lat" in r.json()["error"]
    r = client.post(
        "/v2/models/eta/infer",
        content=json.dumps({"inputs": inputs}).encode(),
        headers={**JSON_CT, "inference-header-content-length": "10"},
    )
    assert r.status_code == 400 and "binary" in r.json()["error"]


# ---- rate limit -----------------------------------------------------------------------------


def test_rate_limit_answers_429_with_retry_after(
    models: Any, make_client: Callable[..., Any]
) -> None:
    c = make_client(models.registry, rate_limit_per_minute=60)  # burst 10, then 1 per second
    limited_before = kit.metric(scrape(c), "intellilog_rate_limited_total")
    t0 = time.monotonic()
    answers = [post_json(c, "/v1/predict", ROW) for _ in range(20)]
    elapsed = time.monotonic() - t0
    ok = [r for r in answers if r.status_code == 200]
    limited = [r for r in answers if r.status_code == 429]
    assert len(ok) + len(limited) == 20, [r.status_code for r in answers]
    assert answers[0].status_code == 200
    assert 10 <= len(ok) <= 10 + math.ceil(elapsed) + 1, (len(ok), elapsed)
    assert limited
    for r in limited:
        err = assert_error(r, 429)
        assert err["code"] == "rate_limited"
        assert int(r.headers["retry-after"]) >= 1
    # health and metrics are never limited
    assert all(c.get("/health/live").status_code == 200 for _ in range(15))
    assert all(c.get("/health/ready").status_code == 200 for _ in range(3))
    text = scrape(c)
    assert kit.metric(text, "intellilog_rate_limited_total") == limited_before + len(limited)
    assert kit.metric(
        text, "intellilog_http_requests_total", route="rate_limited", status="429"
    ) >= len(limited)


# ---- admin: reload, promote, rollback -------------------------------------------------------


def test_admin_routes_absent_without_token(client: Any) -> None:
    for path in ("/v1/admin/reload", "/v1/admin/promote", "/v1/admin/rollback"):
        r = client.post(path, headers={"authorization": "Bearer x"})
        assert r.status_code in (404, 405)
        assert_error(r, r.status_code)


def test_admin_needs_the_token(registry: Path, make_client: Callable[..., Any]) -> None:
    c = make_client(registry, admin_token="s3cret")
    assert_error(c.post("/v1/admin/reload"), 401)
    assert_error(c.post("/v1/admin/reload", headers={"authorization": "Bearer wrong"}), 401)
    assert_error(c.post("/v1/admin/reload", headers={"authorization": "s3cret"}), 401)
    r = c.post("/v1/admin/reload", headers={"authorization": "Bearer s3cret"})
    assert r.status_code == 200, r.text
    assert r.json() == {"changed": False, "version": "v1"}


def test_admin_promote_and_rollback_swap_the_served_model(
    registry: Path, make_client: Callable[..., Any]
) -> None:
    c = make_client(registry, admin_token="s3cret")
    auth = {"authorization": "Bearer s3cret"}
    v1 = post_json(c, "/v1/predict", ROW).json()
    assert v1["model_version"] == "v1"

    r = post_json(c, "/v1/admin/promote", {"version": "v2"}, **auth)
    assert r.status_code == 200, r.text
    assert r.json()["previous"] == "v1" and r.json()["version"] == "v2"
    assert r.json()["reload"]["changed"] is True
    v2 = post_json(c, "/v1/predict", ROW).json()
    assert v2["model_version"] == "v2"
    assert v2["eta_minutes"] != v1["eta_minutes"]  # really another model
    models_v2 = c.get("/v1/models").json()
    assert models_v2["serving"]["version"] == "v2"
    assert models_v2["aliases"] == {"production": "v2"}
    text = scrape(c)
    assert kit.metric(text, "intellilog_model_info", version="v2", engine="compiled") == 1
    assert kit.metric(text, "intellilog_model_info", version="v1", engine="compiled") == 0

    r = post_json(c, "/v1/admin/rollback", {}, **auth)
    assert r.status_code == 200, r.text
    assert r.json()["version"] == "v1"
    back = post_json(c, "/v1/predict", ROW).json()
    assert back["model_version"] == "v1"
    assert back["eta_minutes"] == v1["eta_minutes"]

    # no body is allowed for rollback/reload; promote needs a version
    assert_error(post_json(c, "/v1/admin/promote", {}, **auth), 422, "$.version")
    assert_error(post_json(c, "/v1/admin/promote", {"version": "v2", "x": 1}, **auth), 422)


def test_admin_promote_unknown_version_is_a_clean_error(
    registry: Path, make_client: Callable[..., Any]
) -> None:
    c = make_client(registry, admin_token="s3cret")
    r = post_json(c, "/v1/admin/promote", {"version": "v9"}, authorization="Bearer s3cret")
    assert r.status_code != 500
    err = assert_error(r, r.status_code)
    assert "v9" in err["message"]
    assert post_json(c, "/v1/predict", ROW).json()["model_version"] == "v1"


# ---- a broken new version is refused, the old one keeps serving ----------------------------


def _point_alias(registry: Path, version: str) -> None:
    """Move production by editing aliases.json (bypassing Registry's verification)."""
    p = registry / "aliases.json"
    state = json.loads(p.read_text())
    state["aliases"]["production"] = version
    p.write_text(json.dumps(state))


def test_broken_version_is_refused_and_old_one_keeps_serving(
    registry: Path, make_client: Callable[..., Any]
) -> None:
    c = make_client(registry, reload_interval_s=0.05)
    before = scrape(c)
    failed0 = kit.metric(before, "intellilog_model_reloads_total", result="failed")
    ok0 = kit.metric(before, "intellilog_model_reloads_total", result="ok")

    with open(registry / "versions" / "v2" / "eta.onnx", "ab") as f:
        f.write(b"tampered")
    _point_alias(registry, "v2")

    deadline = time.monotonic() + 20
    info: dict[str, Any] = {}
    while time.monotonic() < deadline:
        info = c.get("/v1/models").json()
        if info["last_reload_error"]:
            break
        time.sleep(0.05)
    err = info["last_reload_error"]
    assert err, "the watcher never tried the new alias"
    assert "v2" in err and "checksum" in err
    assert info["serving"]["version"] == "v1"
    assert info["aliases"] == {"production": "v2"}
    r = post_json(c, "/v1/predict", ROW)
    assert r.status_code == 200 and r.json()["model_version"] == "v1"
    ready = c.get("/health/ready").json()
    assert ready == {"ready": True, "model_version": "v1", "store": "open"}
    text = scrape(c)
    assert kit.metric(text, "intellilog_model_reloads_total", result="failed") == failed0 + 1
    assert kit.metric(text, "intellilog_model_reloads_total", result="ok") == ok0
    assert kit.metric(text, "intellilog_model_info", version="v1", engine="compiled") == 1


def test_admin_reload_of_a_broken_version_is_409(
    registry: Path, make_client: Callable[..., Any]
) -> None:
    c = make_client(registry, admin_token="t")
    (registry / "versions" / "v2" / "p90.txt").unlink()
    _point_alias(registry, "v2")
    r = c.post("/v1/admin/reload", headers={"authorization": "Bearer t"})
    err = assert_error(r, 409)
    assert err["code"] == "reload_refused"
    assert "still serving v1" in err["message"]
    assert post_json(c, "/v1/predict", ROW).json()["model_version"] == "v1"


def test_swap_to_a_version_with_another_spec_is_refused_or_enforced(
    registry: Path, models: Any, make_client: Callable[..., Any]
) -> None:
    """v3 = the reject-spec model published into this registry; promoting it must not
    leave the server answering with v3 under the old spec's (laxer) rules."""
    import shutil

    from training.registry import Registry

    reg = Registry(registry)
    src = models.reject_registry / "versions" / "v1"
    staging = reg.stage()
    for f in src.iterdir():
        if f.name != "manifest.json":
            shutil.copy(f, staging / f.name)
    manifest = json.loads((src / "manifest.json").read_text())
    for k in ("files", "version", "created_at"):
        manifest.pop(k)
    assert reg.publish(staging, manifest) == "v3"

    c = make_client(registry, admin_token="t")
    post_json(c, "/v1/admin/promote", {"version": "v3"}, authorization="Bearer t")
    served = c.get("/v1/models").json()["serving"]
    r = post_json(c, "/v1/predict", {**ROW, "vehicle_type": "hovercraft"})
    if served["version"] == "v3":  # swapped: v3's spec must be the one in force
        assert served["spec_hash"] == manifest["spec_hash"]
        assert_error(r, 422, "$.vehicle_type")
    else:  # refused: still v1, with the reason
        assert served["version"] == "v1"
        assert "spec" in (c.get("/v1/models").json()["last_reload_error"] or "")
