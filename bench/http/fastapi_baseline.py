"""The baseline: what a user would otherwise write to serve the same model.

FastAPI + a pydantic model of the delivery fields on uvicorn; per request a pandas
DataFrame is built from the validated body, the features are computed in pandas/numpy
(the same formulas as ``kernels.geo`` / ``kernels.timefeat``, written out here), and
the three LightGBM boosters (``eta.txt``, ``p10.txt``, ``p90.txt``) predict on it.

It does not import the repository: it needs only fastapi, uvicorn, pandas, numpy and
lightgbm, and reads the model folder of the ``production`` alias (``MODEL_ALIAS``) from
the registry in ``MODEL_ARTIFACT_PATH`` (``aliases.json`` and
``versions/<v>/manifest.json`` for the learned categorical levels).

Run (its own virtual environment)::

    python3 -m venv /tmp/fastapi-venv
    /tmp/fastapi-venv/bin/pip install fastapi 'uvicorn[standard]' pandas lightgbm
    MODEL_ARTIFACT_PATH=models /tmp/fastapi-venv/bin/uvicorn fastapi_baseline:app \\
        --app-dir bench/http --port 8002 --no-access-log
"""

from __future__ import annotations

import json
import math
import os
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated
from zoneinfo import ZoneInfo

import lightgbm as lgb
import numpy as np
import pandas as pd
from fastapi import FastAPI, Response
from pydantic import BaseModel, ConfigDict, Field

EARTH_RADIUS_KM = 6371.0088
RAD = math.pi / 180.0

_root = Path(os.environ.get("MODEL_ARTIFACT_PATH", "./models"))
_alias = os.environ.get("MODEL_ALIAS", "production")
_aliases = json.loads((_root / "aliases.json").read_text())["aliases"]
VERSION = _aliases.get(_alias, _alias)
_dir = _root / "versions" / VERSION
_manifest = json.loads((_dir / "manifest.json").read_text())
TZ = ZoneInfo(_manifest["spec"]["timezone"])
LEVELS: dict[str, list[str]] = _manifest["levels"]
CODES = {name: {v: i for i, v in enumerate(lv)} for name, lv in LEVELS.items()}

eta_model = lgb.Booster(model_file=str(_dir / "eta.txt"))
p10_model = lgb.Booster(model_file=str(_dir / "p10.txt"))
p90_model = lgb.Booster(model_file=str(_dir / "p90.txt"))
FEATURES = eta_model.feature_name()


Lat = Annotated[float, Field(ge=-90, le=90)]
Lon = Annotated[float, Field(ge=-180, le=180)]
Level = Annotated[str, Field(min_length=1, max_length=128)]


class Delivery(BaseModel):
    model_config = ConfigDict(extra="forbid")

    order_id: Annotated[str, Field(min_length=1, max_length=128)]
    pickup_lat: Lat
    pickup_lon: Lon
    dropoff_lat: Lat
    dropoff_lon: Lon
    created_at: datetime | Annotated[int, Field(ge=0, le=4_102_444_800)]
    vehicle_type: Level
    weather: Level
    zone: Level
    items_count: Annotated[float, Field(ge=1, le=500)]
    prep_minutes: Annotated[float, Field(ge=0, le=240)] | None = None


class BatchRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    deliveries: Annotated[list[Delivery], Field(min_length=1, max_length=10_000)]


class Prediction(BaseModel):
    order_id: str
    eta_minutes: float
    eta_p10: float
    eta_p90: float
    model_version: str
    request_id: str
    arm: str


class BatchItem(BaseModel):
    order_id: str
    eta_minutes: float
    eta_p10: float
    eta_p90: float
    model_version: str
    arm: str


class BatchResponse(BaseModel):
    predictions: list[BatchItem]
    count: int
    model_version: str
    request_id: str


def utc_and_offset(value: datetime | int) -> tuple[int, int]:
    """Epoch seconds and the offset (s) of the wall clock the event happened on."""
    if isinstance(value, datetime):
        if value.tzinfo is None:
            value = value.replace(tzinfo=TZ)
        off = value.utcoffset()
        return int(value.timestamp()), int(off.total_seconds()) if off else 0
    off = datetime.fromtimestamp(value, UTC).astimezone(TZ).utcoffset()
    return int(value), int(off.total_seconds()) if off else 0


def features(df: pd.DataFrame) -> pd.DataFrame:
    """The model's features, in its column order, as one float32 DataFrame."""
    lat1, lon1 = df["pickup_lat"].to_numpy(float), df["pickup_lon"].to_numpy(float)
    lat2, lon2 = df["dropoff_lat"].to_numpy(float), df["dropoff_lon"].to_numpy(float)
    p1, p2 = lat1 * RAD, lat2 * RAD
    dlam = (lon2 - lon1) * RAD
    a = np.sin((p2 - p1) / 2) ** 2 + np.cos(p1) * np.cos(p2) * np.sin(dlam / 2) ** 2
    y = np.sin(dlam) * np.cos(p2)
    x = np.cos(p1) * np.sin(p2) - np.sin(p1) * np.cos(p2) * np.cos(dlam)
    h = np.hypot(x, y)
    same = h < 1e-15
    hs = np.where(same, 1.0, h)
    dlon = np.mod(lon2 - lon1 + 180.0, 360.0) - 180.0
    t = np.array([utc_and_offset(v) for v in df["created_at"]], dtype=np.int64).reshape(-1, 2)
    local = t[:, 0] + t[:, 1]
    days = local // 86400
    hour = (local - days * 86400) / 3600.0
    dow = (days + 3) % 7
    cols = {
        "pickup_lat": lat1,
        "pickup_lon": lon1,
        "dropoff_lat": lat2,
        "dropoff_lon": lon2,
        "distance_km": 2 * EARTH_RADIUS_KM * np.arcsin(np.minimum(np.sqrt(a), 1.0)),
        "bearing_sin": np.where(same, 0.0, y / hs),
        "bearing_cos": np.where(same, 1.0, x / hs),
        "dlat_km": (lat2 - lat1) * RAD * EARTH_RADIUS_KM,
        "dlon_km": dlon * RAD * EARTH_RADIUS_KM * np.cos((lat1 + lat2) * 0.5 * RAD),
        "hour_sin": np.sin(2 * np.pi * hour / 24),
        "hour_cos": np.cos(2 * np.pi * hour / 24),
        "dow_sin": np.sin(2 * np.pi * dow / 7),
        "dow_cos": np.cos(2 * np.pi * dow / 7),
        "weekend": (dow >= 5).astype(float),
        "items_count": df["items_count"].to_numpy(float),
        "prep_minutes": df["prep_minutes"].to_numpy(float, na_value=np.nan),
    }
    for name, codes in CODES.items():  # unseen levels -> the 'unknown' code
        cols[name] = df[name].map(codes).fillna(len(codes)).to_numpy(float)
    # float32 like the training matrix: float64 values can fall on the other side of a split
    return pd.DataFrame(cols, columns=FEATURES, dtype=np.float32)


def predict_frame(df: pd.DataFrame) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    X = features(df)
    eta = eta_model.predict(X)
    p10 = np.minimum(p10_model.predict(X), eta)
    p90 = np.maximum(p90_model.predict(X), eta)
    return eta, p10, p90


app = FastAPI(title="ETA baseline")

# ``async def`` handlers: the model runs on the event loop, without the thread-pool hop
# FastAPI makes for plain ``def`` handlers (the ``def`` variant used as much or more CPU
# per request here, so this is the stronger baseline).


@app.post("/v1/predict", response_model=Prediction)
async def predict(delivery: Delivery, response: Response) -> Prediction:
    df = pd.DataFrame([delivery.model_dump()])
    eta, p10, p90 = predict_frame(df)
    rid = uuid.uuid4().hex
    response.headers["x-request-id"] = rid
    return Prediction(
        order_id=delivery.order_id,
        eta_minutes=float(eta[0]),
        eta_p10=float(p10[0]),
        eta_p90=float(p90[0]),
        model_version=VERSION,
        request_id=rid,
        arm="production",
    )


@app.post("/v1/predict/batch", response_model=BatchResponse)
async def predict_batch(batch: BatchRequest, response: Response) -> BatchResponse:
    df = pd.DataFrame([d.model_dump() for d in batch.deliveries])
    eta, p10, p90 = predict_frame(df)
    rid = uuid.uuid4().hex
    response.headers["x-request-id"] = rid
    preds = [
        BatchItem(
            order_id=o,
            eta_minutes=e,
            eta_p10=lo,
            eta_p90=hi,
            model_version=VERSION,
            arm="production",
        )
        for o, e, lo, hi in zip(
            df["order_id"], eta.tolist(), p10.tolist(), p90.tolist(), strict=True
        )
    ]
    return BatchResponse(predictions=preds, count=len(preds), model_version=VERSION, request_id=rid)


@app.get("/health/ready")
async def ready() -> dict[str, object]:
    return {"ready": True, "model_version": VERSION}
